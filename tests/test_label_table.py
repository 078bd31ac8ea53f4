"""The label table (native class id ↔ label-map channel): the toy preset's table against the toy
generator, the mapping both ways, unknown ids, validation, and the round trips through configs,
TOML and segmentation-network checkpoints. The trainer, eval, synthesize and serve checks on a
compact-table run live in their own test modules."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from resail.errors import InputError
from resail.pipeline.labels.classes import class_table
from resail.pipeline.labels.spaces import LabelChannels
from resail.pipeline.toy import ROLE_CLASSES, toy_class_ids
from resail.synth.config import TrainConfig, resolve_config
from resail.synth.presets import PRESETS, TOY_LABEL_IDS, NetworkPreset, get_preset
from resail.synth.segnet import SegNet, SegnetTrainConfig, load_segnet, save_segnet

TOY = PRESETS["toy"]


def test_toy_preset_covers_exactly_what_the_toy_generator_draws():
    table = class_table("ade20k")
    drawn = {0} | {table.id_of(names[0]) for names in ROLE_CLASSES.values() if names[0] is not None}
    assert TOY.label_ids == toy_class_ids("ade20k") == tuple(sorted(drawn))
    assert TOY.label_ids[0] == 0 and TOY.semantic_nc == len(drawn) == 23 and TOY.label_nc == 151
    assert toy_class_ids("cityscapes")[0] == 0 and 1 in toy_class_ids("cityscapes")  # the ego vehicle
    with pytest.raises(InputError, match="toy format"):
        toy_class_ids("kitti")
    assert PRESETS["ade20k"].label_ids is None and PRESETS["ade20k"].semantic_nc == 151


def test_toy_label_ids_are_a_constant_equal_to_what_the_generator_draws():
    """The preset module writes the toy table out, so loading a preset never imports the generator."""
    assert TOY_LABEL_IDS == toy_class_ids("ade20k") == TOY.label_ids
    code = "import sys, resail.synth.presets; print([m for m in sys.modules if m.startswith('resail.pipeline')])"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"


def test_mapping_round_trips_and_unknown_ids_are_named():
    ch = LabelChannels.of(TOY)
    native = np.array(TOY.label_ids)
    rng = np.random.default_rng(0)
    label = native[rng.integers(0, len(native), (2, 7, 9))]           # B×H×W native ids
    channels = ch.to_channels(label, "x.png")
    assert channels.dtype == np.int64 and channels.shape == label.shape and channels.max() < TOY.semantic_nc
    np.testing.assert_array_equal(ch.to_native(channels), label)
    np.testing.assert_array_equal(ch.to_channels(native, "x"), np.arange(len(native)))
    assert ch.channel_of([137, 1, 151, -3, 10**6]).tolist() == [22, -1, -1, -1, -1]
    label[0, 0, :3] = [1, 150, 4000]
    with pytest.raises(InputError, match=r"x\.png: class ids 1, 150, 4000 not in the label table of preset 'toy'"):
        ch.to_channels(label, "x.png")
    assert ch.missing([0, 2, 1, 1, 300]) == [1, 300]
    # a preset without a table: channel = native id over 0..label_nc-1
    ade = LabelChannels.of(PRESETS["ade20k"])
    assert ade.identity and len(ade) == 151
    np.testing.assert_array_equal(ade.to_channels(np.arange(151), "x"), np.arange(151))
    with pytest.raises(InputError, match="151"):
        ade.to_channels(np.array([151]), "x")
    # G's channels → another network's channels, through native ids
    np.testing.assert_array_equal(ade.remap_from(ch), native)
    assert (ch.remap_from(ade)[native] == np.arange(len(native))).all() and ch.remap_from(ade)[1] == -1


def test_label_ids_are_validated():
    with pytest.raises(InputError, match="start with 0"):
        get_preset("toy", label_ids=(2, 3))
    with pytest.raises(InputError, match="start with 0"):
        get_preset("toy", label_ids=(0,))
    with pytest.raises(InputError, match="sorted"):
        get_preset("toy", label_ids=(0, 5, 3))
    with pytest.raises(InputError, match="sorted"):
        get_preset("toy", label_ids=(0, 3, 3))
    with pytest.raises(InputError, match="0..150"):
        get_preset("toy", label_ids=(0, 151))
    with pytest.raises(InputError, match=r'label_ids = \[0, "sky"\]: expected a list of integers'):
        get_preset("toy", label_ids=(0, "sky"))
    with pytest.raises(InputError, match="label_ids = 5: expected a list of integers"):
        get_preset("toy", label_ids=5)
    p = get_preset("toy", label_ids=[0, 2, 3])  # a list (TOML, JSON) becomes a tuple
    assert p.label_ids == (0, 2, 3) and p.semantic_nc == 3 and hash(p)
    assert get_preset("cocostuff", dontcare=True, label_ids=[0, 1]).semantic_nc == 3


def test_label_ids_round_trip_through_config_json_and_toml(tmp_path):
    assert NetworkPreset.from_dict(json.loads(json.dumps(TOY.to_dict()))) == TOY
    cfg = resolve_config("toy", n_train=20)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.net.label_ids == TOY.label_ids
    # a config written before label tables (no label_ids key) is an identity table
    old = cfg.to_dict()
    del old["net"]["label_ids"]
    assert TrainConfig.from_dict(old).net.semantic_nc == 151
    toml = tmp_path / "c.toml"
    toml.write_text("[network]\nlabel_ids = [0, 2, 3, 5]\n")
    assert resolve_config("toy", n_train=20, toml=toml).net.semantic_nc == 4
    toml.write_text("[network]\nlabel_ids = [3, 2]\n")
    with pytest.raises(InputError, match="label_ids"):
        resolve_config("toy", n_train=20, toml=toml)


def test_segnet_checkpoint_carries_its_label_table(tmp_path):
    net = SegNet(4, (4, 4), label_ids=(0, 2, 3, 137))
    save_segnet(tmp_path / "s.pt", net, None, 0, SegnetTrainConfig())
    back = load_segnet(tmp_path / "s.pt")
    assert back.label_ids == (0, 2, 3, 137) and back.label_channels() == net.label_channels()
    assert back.label_channels().to_native([3]).tolist() == [137]
    plain = SegNet(5, (4, 4))
    assert "label_ids" not in plain.config() and plain.label_channels().identity and len(plain.label_channels()) == 5
    with pytest.raises(InputError, match="label table"):
        SegNet(7, (4, 4), label_ids=(0, 2, 3))


def test_segnet_features_are_the_pooled_deepest_encoder_output():
    torch.manual_seed(0)
    net = SegNet(3, (4, 6, 8)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        f = net.features(x)
        deepest = x
        for blk in net.encoder:
            deepest = blk(deepest)
    assert f.shape == (2, 8)
    torch.testing.assert_close(f, deepest.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="divisible"):
        net.features(torch.zeros(1, 3, 30, 32))

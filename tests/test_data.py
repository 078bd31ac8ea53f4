"""Training data order, label helpers, config resolution and the recipe's resizes (a tiny toy work dir)."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from builders.work import baked_work
from resail.common import nearest_floor, nearest_pil
from resail.errors import ConfigError, InputError
from resail.synth.config import TrainConfig, format_config, resolve_config
from resail.synth.data import StepBatchSampler, SynthDataset, instance_edges, one_hot, to_tensor


def test_rank_batches_union_to_the_global_batch_and_resume_skips_exactly():
    single = list(StepBatchSampler(10, 4, seed=3, total_steps=7))
    ranks = [list(StepBatchSampler(10, 4, seed=3, total_steps=7, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == 7 and all(len(b) == 4 for b in single)
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch
        assert batch[0][0] == step // 2  # 2 steps per epoch (last partial batch dropped)
    assert list(StepBatchSampler(10, 4, seed=3, total_steps=7, start_step=5)) == single[5:]
    for epoch in range(3):  # every epoch is a permutation: no image twice within it
        idx = [i for b in single[2 * epoch:2 * epoch + 2] for _, i in b]
        assert len(set(idx)) == len(idx)
    with pytest.raises(InputError, match="divisible"):
        StepBatchSampler(10, 3, seed=0, total_steps=1, world_size=2)


def test_one_hot_puts_native_ids_on_their_channel():
    label = torch.tensor([[[0, 5], [150, 5]]])
    m = one_hot(label, 151)
    assert m.shape == (1, 151, 2, 2) and torch.equal(m.sum(1), torch.ones(1, 2, 2))
    assert m[0, 150, 1, 0] == 1 and m[0, 5, 0, 1] == 1 and m[0, 0, 0, 0] == 1


def test_nearest_resize_and_instance_edges():
    a = np.arange(4, dtype=np.int32).reshape(2, 2) + 1000
    assert nearest_floor(a, 4, 4).tolist() == [[1000, 1000, 1001, 1001]] * 2 + [[1002, 1002, 1003, 1003]] * 2
    inst = np.zeros((4, 4), np.int32)
    inst[1:3, 1:3] = 1
    e = instance_edges(inst, (4, 4))
    assert e[0, 0] == 0 and e[1, 1] == 1 and e[0, 1] == 1
    assert instance_edges(None, (3, 3)).sum() == 0


def test_config_precedence_preset_toml_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('batch_size = 2\nlr_G = 3e-4\n[network]\nngf = 8\n')
    cfg = resolve_config("toy", n_train=20, toml=toml, overrides={"lr_G": 5e-5, "norm": "spade", "epochs": 4})
    assert cfg.batch_size == 2 and cfg.lr_G == 5e-5 and cfg.net.ngf == 8 and cfg.net.norm == "spade"
    assert (cfg.niter, cfg.niter_decay) == (2, 2) and cfg.total_steps == 40 and cfg.decay_start == 20
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    ade = resolve_config("ade20k", n_train=80)
    assert (ade.batch_size, ade.load_size, ade.niter, ade.niter_decay, ade.vgg, ade.seg_loss) == (8, (286, 286), 100, 100, True, False)
    city = resolve_config("cityscapes", n_train=30)
    assert city.preprocess == "fixed" and city.load_size == (512, 256) and not city.seg_loss
    assert any("no --segnet" in n for n in city.notes)
    assert resolve_config("cityscapes", n_train=30, overrides={"segnet": "s.pt"}).seg_loss
    toml.write_text("batchsize = 2\n")
    with pytest.raises(InputError, match="batchsize"):
        resolve_config("toy", n_train=20, toml=toml)
    with pytest.raises(ConfigError, match="batch_size 4: the data has only 3 training images"):
        resolve_config("toy", n_train=3)
    with pytest.raises(InputError, match="choose one"):
        resolve_config("toy", n_train=20, overrides={"steps": 5, "epochs": 2})


# ---------------------------------------------------------------- the recipe: resizes, config


TINY96 = dict(ngf=4, norm_hidden=4, ndf=4, width=96, height=96, segnet_channels=(4,) * 5)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Toy ADE20K images at 192×160 (larger than the 104² load size), train guidance baked at 96²."""
    return baked_work(tmp_path_factory.mktemp("data"), n_train=4, n_val=1, size=(192, 160), guidance_size=96,
                      seed=2, splits=("train",), k=3)


def recipe_config(recipe: str, **overrides):
    flags = dict(recipe=recipe, batch_size=2, load_size=(104, 104), workers=0, steps=1, **overrides)
    return resolve_config("toy", n_train=4, overrides=flags, network=TINY96)


@pytest.mark.parametrize("recipe", ["resail", "official"])
def test_recipe_chooses_the_photo_and_label_resize(work, recipe):
    ds = SynthDataset(work, "train", recipe_config(recipe), train=False, with_distorted=False)
    sample = ds.reader.load(ds.records[1])
    if recipe == "official":
        photo = np.array(Image.fromarray(sample.image).resize((96, 96), Image.BICUBIC))
        label = np.asarray(Image.fromarray(sample.label_map.astype(np.int32)).resize((96, 96), Image.NEAREST))
    else:
        photo = cv2.resize(sample.image, (96, 96), interpolation=cv2.INTER_AREA)
        label = nearest_floor(sample.label_map, 96, 96)
    item = ds[1]
    assert torch.equal(item["image"], to_tensor(photo))
    assert np.array_equal(item["label"].numpy(), ds.channels.to_channels(label.astype(np.int64), "label"))
    ds.close()


@pytest.mark.parametrize("recipe, origin, rule", [("resail", "resail", nearest_floor), ("official", "resail", nearest_pil),
                                                   ("resail", "spade", nearest_pil)])
def test_user_label_maps_are_resized_with_the_runs_recipe(recipe, origin, rule):
    """synthesize, serve and the editor resize a user's map as the run's trainer resized its data
    (an imported generator: as its authors' loader did, PIL's rule)."""
    from types import SimpleNamespace

    from resail.synth.inference import LoadedRun

    label = np.random.default_rng(0).integers(0, 150, (83, 121)).astype(np.int32)
    run = SimpleNamespace(size=(64, 48), config=SimpleNamespace(recipe=recipe, origin=origin))
    got = LoadedRun.at_size(run, label)
    assert got.dtype == np.int64 and np.array_equal(got, rule(label, 48, 64))
    assert not np.array_equal(nearest_floor(label, 48, 64), nearest_pil(label, 48, 64))  # the recipes differ here


@pytest.mark.parametrize("recipe", ["resail", "official"])
def test_undistorted_gt_lies_on_the_photo_crop(work, recipe):
    """With every distortion off, the distorted GT is the photo's own segments, resized by the
    recipe's resize, cropped and flipped with the photo: it matches the photo inside them (up to
    rounding; along segment borders each segment's resize blends with black, as official). A
    photo flipped the other way would differ by ~0.3 on average."""
    cfg = recipe_config(recipe, p_color=0.0, p_resolution=0.0, p_shape=0.0)
    ds = SynthDataset(work, "train", cfg)
    for key in [(0, 0), (1, 2), (3, 3)]:
        item = ds[key]
        lit = (item["distorted"] > -1).any(0)
        assert lit.float().mean() > 0.5
        diff = (item["distorted"] - item["image"]).abs().mean(0)[lit]
        assert diff.median() < 0.01 and diff.mean() < 0.1, (key, float(diff.median()), float(diff.mean()))
    ds.close()


def test_cli_recipe_reaches_config_json(work):
    from resail.cli import main

    argv = ["train", str(work), "--preset", "toy", "--name", "official", "--recipe", "official", "--dry-run",
            "--steps", "1", "--batch-size", "2", "-q"]
    assert main(argv) == 0
    saved = json.loads((work / "runs" / "official" / "config.json").read_text())
    assert saved["recipe"] == "official" and saved["amp"] == "off"
    assert TrainConfig.from_dict(saved).recipe == "official"


def test_recipe_in_the_config_round_trip_and_rules(tmp_path):
    official = recipe_config("official")
    assert official.recipe == "official" and official.amp == "off"  # fp32, as the official run
    assert TrainConfig.from_dict(official.to_dict()) == official
    assert TrainConfig.from_dict(json.loads(json.dumps(official.to_dict()))) == official
    assert recipe_config("resail").recipe == "resail" and recipe_config("resail").amp == "auto"
    assert "recipe official" in format_config(official)
    old = recipe_config("resail").to_dict()
    del old["recipe"]  # a config.json written before the field: the project's own recipe
    assert TrainConfig.from_dict(old).recipe == "resail"
    with pytest.raises(InputError, match='recipe = "paper": expected one of'):
        recipe_config("paper")
    with pytest.raises(InputError, match="fp32"):
        recipe_config("official", amp="bf16")
    ade = resolve_config("ade20k", n_train=80, overrides={"recipe": "official", "segnet": "s.pt"})
    assert not ade.seg_loss and ade.segnet is None and any("no segmentation loss" in n for n in ade.notes)
    assert resolve_config("ade20k", n_train=80, overrides={"segnet": "s.pt"}).seg_loss  # resail: on with --segnet
    with pytest.raises(InputError, match="official ADE20K run had no"):
        resolve_config("ade20k", n_train=80, overrides={"recipe": "official", "segnet": "s.pt", "seg_loss": True})
    city = resolve_config("cityscapes", n_train=30, overrides={"recipe": "official", "segnet": "s.pt"})
    assert city.seg_loss  # the official Cityscapes run had it

"""Every training-config value is checked against its field's type and range, wherever it comes
from (a TOML file, a saved config.json, code), with one line naming the source, key and value."""

import dataclasses
import json

import pytest

from resail.errors import InputError
from resail.synth.config import TRAIN_PRESETS, TRAIN_RULES, TRAIN_SCHEMA, TrainConfig, read_toml, resolve_config
from resail.synth.presets import NETWORK_RULES, NETWORK_SCHEMA, PRESETS, NetworkPreset, get_preset


def toml_error(tmp_path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        resolve_config("toy", n_train=20, toml=path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


@pytest.mark.parametrize("text, expected", [
    # bool: only true / false
    ('flip = "no"', 'flip = "no": expected true or false'),
    ("ema = 1", "ema = 1: expected true or false"),
    # int: no bool, float or string
    ('batch_size = "8"', 'batch_size = "8": expected an integer ≥ 1'),
    ("batch_size = true", "batch_size = true: expected an integer ≥ 1"),
    ("batch_size = 8.0", "batch_size = 8.0: expected an integer ≥ 1"),
    # float: a finite number, no bool or string
    ('lr_G = "fast"', 'lr_G = "fast": expected a number > 0'),
    ("lambda_vgg = false", "lambda_vgg = false: expected a number ≥ 0"),
    ("lr_D = inf", "lr_D = inf: expected a number > 0"),
    # enum
    ('amp = "fp8"', 'amp = "fp8": expected one of "auto", "off", "bf16", "fp16"'),
    ('recipe = "paper"', 'recipe = "paper": expected one of "resail", "official"'),
    ('preprocess = "crop"', 'preprocess = "crop": expected one of "resize_crop", "fixed"'),
    ('color_ref = 1', 'color_ref = 1: expected one of "topk", "class"'),
    # lists: length and element types
    ("load_size = [300]", "load_size = [300]: expected a list of 2 integers ≥ 1"),
    ('load_size = [300, "a"]', 'load_size = [300, "a"]: expected a list of 2 integers ≥ 1'),
    ("load_size = 300", "load_size = 300: expected a list of 2 integers ≥ 1"),
    # ranges
    ("batch_size = 0", "batch_size = 0: expected an integer ≥ 1"),
    ("workers = -1", "workers = -1: expected an integer ≥ 0"),
    ("lr_G = 0", "lr_G = 0: expected a number > 0"),
    ("beta2 = 1.0", "beta2 = 1.0: expected a number in [0, 1)"),
    ("ema_decay = 1.5", "ema_decay = 1.5: expected a number in [0, 1]"),
    ("p_shape = -0.1", "p_shape = -0.1: expected a number in [0, 1]"),
    ("lambda_seg = -1", "lambda_seg = -1: expected a number ≥ 0"),
    ("checkpoint_every = 0", "checkpoint_every = 0: expected an integer ≥ 1"),
    ("keep_checkpoints = 0", "keep_checkpoints = 0: expected an integer ≥ 1"),
    ("n_sample = 0", "n_sample = 0: expected an integer ≥ 1"),
    ("niter = -1", "niter = -1: expected an integer ≥ 0"),
    ("steps = 0", "steps = 0: expected an integer ≥ 1"),
    ("epochs = 0", "epochs = 0: expected an integer ≥ 1"),
    ("seed = 4294967296", "seed = 4294967296: expected an integer in [0, 4294967295]"),
    # the [network] table
    ("[network]\nngf = 0", "network.ngf = 0: expected an integer ≥ 1"),
    ('[network]\nwidth = "128"', 'network.width = "128": expected an integer ≥ 1'),
    ("[network]\nn_layers_D = 1", "network.n_layers_D = 1: expected an integer ≥ 2"),
    ('[network]\nnorm = "batch"', 'network.norm = "batch": expected one of "resail", "spade", "clade", "clade-icpe"'),
    ('[network]\nupsampling = "many"', 'network.upsampling = "many": expected one of "few", "normal", "more", "most"'),
    ("[network]\ndontcare = 0", "network.dontcare = 0: expected true or false"),
    ("[network]\nsegnet_channels = [16, 0]", "network.segnet_channels = [16, 0]: expected a list of integers ≥ 1"),
    ("[network]\nlabel_ids = [0, 2.5]", "network.label_ids = [0, 2.5]: expected a list of integers"),
    ("network = 3", "network = 3: expected a [network] table"),
])
def test_toml_values_are_checked(tmp_path, text, expected):
    assert toml_error(tmp_path, text) == expected


def test_preset_is_no_toml_key(tmp_path):
    assert "unknown keys ['preset']" in toml_error(tmp_path, 'preset = "toy"')


def test_segnet_train_reads_the_same_checked_network_table(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text("[network]\nlabel_ids = [0, 1, 2]\n")
    assert read_toml(path)["network"] == {"label_ids": [0, 1, 2]}
    path.write_text('[network]\nlabel_ids = ["sky"]\n')
    with pytest.raises(InputError, match=r'net.toml: network.label_ids = \["sky"\]: expected a list of integers$'):
        read_toml(path)


def test_valid_toml_resolves_as_before(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('batch_size = 2\nflip = false\nlr_G = 1\nload_size = [150, 140]\nepochs = 4\namp = "off"\n'
                    "[network]\nngf = 8\nsegnet_channels = [8, 8, 8, 8, 8]\n")
    cfg = resolve_config("toy", n_train=20, toml=path)
    flags = resolve_config("toy", n_train=20, overrides=dict(batch_size=2, flip=False, lr_G=1e-0, load_size=(150, 140),
                                                             epochs=4, amp="off", ngf=8),
                           network=dict(segnet_channels=(8,) * 5))
    assert cfg == flags and cfg.load_size == (150, 140) and cfg.net.segnet_channels == (8,) * 5
    assert isinstance(cfg.lr_G, float) and cfg.flip is False  # whole numbers for float fields become floats
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def saved(**changes) -> dict:
    d = resolve_config("toy", n_train=20).to_dict()
    net = changes.pop("net", {})
    return {**d, **changes, "net": {**d["net"], **net} if isinstance(net, dict) else net}


@pytest.mark.parametrize("changes, expected", [
    (dict(lr_G="fast"), 'lr_G = "fast": expected a number > 0'),
    (dict(flip="no"), 'flip = "no": expected true or false'),
    (dict(batch_size=None), "batch_size = null: expected an integer ≥ 1"),  # not optional
    (dict(steps=0), "steps = 0: expected an integer ≥ 1"),
    (dict(channels_last="yes"), 'channels_last = "yes": expected true or false'),
    (dict(segnet=3), "segnet = 3: expected a string"),
    (dict(notes=[1]), "notes = [1]: expected a list of strings"),
    (dict(history=[3]), "history = [3]: expected a list of tables"),
    (dict(total_steps=-4), "total_steps = -4: expected an integer ≥ 0"),
    (dict(net={"ngf": 0}), "net.ngf = 0: expected an integer ≥ 1"),
    (dict(net={"label_ids": "all"}), 'net.label_ids = "all": expected a list of integers'),
    (dict(net=[]), "net = []: expected a table of network fields"),
])
def test_saved_config_values_are_checked(changes, expected):
    with pytest.raises(InputError) as e:
        TrainConfig.from_dict(saved(**changes), source="runs/r/config.json")
    assert str(e.value) == f"runs/r/config.json: {expected}"


def test_optional_fields_take_null_in_a_saved_config():
    d = saved(steps=None, channels_last=None, segnet=None, vgg_weights=None, net={"label_ids": None})
    cfg = TrainConfig.from_dict(d)
    assert cfg.steps is cfg.channels_last is cfg.segnet is cfg.net.label_ids is None
    assert TrainConfig.from_dict(saved(steps=12, channels_last=True)).steps == 12
    with pytest.raises(InputError, match=r"^training config: unknown fields \['lr'\]$"):
        TrainConfig.from_dict({**d, "lr": 1})


def test_values_from_code_are_checked_too():
    with pytest.raises(InputError, match=r"^batch_size = 0: expected an integer ≥ 1$"):
        resolve_config("toy", n_train=20, overrides={"batch_size": 0})
    with pytest.raises(InputError, match=r"^epochs = 0: expected an integer ≥ 1$"):
        resolve_config("toy", n_train=20, overrides={"epochs": 0})
    with pytest.raises(InputError, match=r"^preset 'toy': ngf = 0: expected an integer ≥ 1$"):
        resolve_config("toy", n_train=20, network={"ngf": 0})
    cfg = resolve_config("toy", n_train=20)
    with pytest.raises(InputError, match=r"^ema_decay = 2: expected a number in \[0, 1\]$"):
        dataclasses.replace(cfg, ema_decay=2)
    with pytest.raises(InputError, match="num_D = 0"):
        get_preset("ade20k", num_D=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_passes_the_checker(name):
    NETWORK_SCHEMA.check(dataclasses.asdict(PRESETS[name]))
    TRAIN_SCHEMA.check(TRAIN_PRESETS[name])
    cfg = resolve_config(name, n_train=1000)
    TRAIN_SCHEMA.check({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_rule_tables_name_fields():
    assert set(TRAIN_RULES) <= set(TRAIN_SCHEMA.kinds)
    assert set(NETWORK_RULES) <= {f.name for f in dataclasses.fields(NetworkPreset)}

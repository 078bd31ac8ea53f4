"""Training configuration: a dataset preset, then a TOML file, then command-line flags, resolved once.

`resolve_config` returns one frozen `TrainConfig` holding the network (`NetworkPreset`) and every
training setting, with the schedule already turned into step counts for the work directory's
number of training images. The trainer reads nothing else; `config.json` in the run folder is
`TrainConfig.to_dict()`, and `--resume` refuses a run whose saved config differs in a field that
changes the model or the data (`RESUME_FREE` lists the ones that may change between sessions).

`--resume` starts from the run's saved config (`resolve_resumed`), so only the flags given change
anything. A new schedule length (`--steps`, `--epochs`) extends or shortens the run: the
learning-rate schedule is a pure function of (step, total), so it is simply recomputed over the
new total, and the trainer appends the change to `history` (in config.json and every checkpoint).

Per-dataset training settings follow the official code (docs/method.md §5.4): batch is the global
batch over all processes; epochs are `niter` at constant lr then `niter_decay` of linear decay.

`recipe` names the choices where this project departs from the official run on purpose
(docs/deviations.md): `resail` (default) keeps them; `official` restores the official ones that
a config can express: void counted as a class in the segmentation loss, no segmentation loss on
ADE20K, PIL bicubic photo and PIL nearest label resizing, fp32 (no autocast).

Every value is checked against its field's type and `TRAIN_RULES` (synth/presets.py's `Schema`):
in `read_toml` and `from_dict`, naming the file, and again whenever a `TrainConfig` is built.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..choices import COLOR_REFS
from ..errors import ConfigError, InputError
from .baselines.authors import SOURCES, baseline_network
from .presets import AT_LEAST_1, NETWORK_SCHEMA, NON_NEGATIVE, POSITIVE, NetworkPreset, Range, Schema, get_preset, show

PREPROCESS = ("resize_crop", "fixed")
AMP = ("auto", "off", "bf16", "fp16")
RECIPES = ("resail", "official")
# Where a run's generator comes from: trained here, or `resail model import --from SOURCE`.
ORIGINS = ("resail", *SOURCES)

# Training fields of each preset; the network side lives in synth/presets.py.
TRAIN_PRESETS: dict[str, dict] = {
    "ade20k": dict(batch_size=8, load_size=(286, 286), seg_loss=False),
    "ade20k-outdoor": dict(batch_size=2, load_size=(286, 286), seg_loss=True),
    "cityscapes": dict(batch_size=3, preprocess="fixed", load_size=(512, 256), seg_loss=True),
    "cocostuff": dict(batch_size=3, load_size=(286, 286), seg_loss=True),
    # Learns visibly on the toy data within minutes on a CPU: no VGG (weights need a download),
    # no seg loss (needs a trained SegNet), few epochs, frequent samples.
    "toy": dict(batch_size=4, load_size=(144, 144), seg_loss=False, vgg=False, niter=4, niter_decay=4,
                log_every=10, sample_every=100, checkpoint_every=200),
    "toy64": dict(batch_size=4, load_size=(72, 72), seg_loss=False, vgg=False, niter=4, niter_decay=4,
                  log_every=10, sample_every=100, checkpoint_every=200),
}

# Fields that may change on --resume without changing the model or the data: where and how fast
# it runs, what it writes, the precision, and the schedule's length (recorded in `history`).
SCHEDULE_LENGTH = frozenset({"steps", "niter", "niter_decay", "total_steps", "decay_start"})
RESUME_FREE = frozenset({"workers", "device", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                         "tensorboard", "vgg_weights", "segnet", "n_sample", "amp", "channels_last", "notes",
                         "history"}) | SCHEDULE_LENGTH


# Range or choices of each field (its annotation gives the type); `epochs` is the one key that is no field.
TRAIN_RULES = {
    "recipe": RECIPES, "origin": ORIGINS, "preprocess": PREPROCESS, "color_ref": COLOR_REFS, "amp": AMP,
    "batch_size": AT_LEAST_1, "load_size": AT_LEAST_1, "workers": NON_NEGATIVE, "epochs": AT_LEAST_1,
    "steps": AT_LEAST_1, "lr_G": POSITIVE, "lr_D": POSITIVE, "beta1": Range(0, 1, hi_open=True),
    "beta2": Range(0, 1, hi_open=True), "seed": Range(0, 2**32 - 1),
    **dict.fromkeys(("p_color", "p_resolution", "p_shape", "ema_decay"), Range(0, 1)),
    **dict.fromkeys(("niter", "niter_decay", "n_train", "total_steps", "decay_start"), NON_NEGATIVE),
    **dict.fromkeys(("lambda_feat", "lambda_vgg", "lambda_seg"), NON_NEGATIVE),
    **dict.fromkeys(("log_every", "sample_every", "n_sample", "checkpoint_every", "keep_checkpoints"), AT_LEAST_1),
}


@dataclass(frozen=True)
class TrainConfig:
    net: NetworkPreset
    preset: str = "toy"
    name: str = "run"
    recipe: str = "resail"                  # or "official": the official run's choices (docs/deviations.md)
    origin: str = "resail"                  # or the authors' code an imported G comes from (docs/baselines.md)
    # data
    batch_size: int = 4                     # global batch (all processes together)
    preprocess: str = "resize_crop"         # resize to load_size, random crop to net size; or 'fixed' resize
    load_size: tuple[int, int] = (286, 286)  # (W, H) before the random crop
    flip: bool = True
    color_ref: str = "topk"                 # colour reference of the distorted GT (docs/method.md §4.1)
    p_color: float = 1.0
    p_resolution: float = 1.0
    p_shape: float = 1.0
    instance_edges: bool = False            # also load an instance edge map (the official code never uses it)
    workers: int = 2
    # schedule
    niter: int = 100                        # epochs at constant lr
    niter_decay: int = 100                  # epochs of linear decay to 0
    steps: int | None = None                # total steps instead of epochs (decay over the same share)
    n_train: int = 0                        # training images the schedule was resolved for
    total_steps: int = 0
    decay_start: int = 0
    lr_G: float = 1e-4
    lr_D: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    # losses
    retrieval_loss: bool = True
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_seg: float = 5.0
    vgg: bool = True
    vgg_weights: str | None = None
    seg_loss: bool = False
    segnet: str | None = None
    # model averaging, precision, devices
    ema: bool = True
    ema_decay: float = 0.999
    amp: str = "auto"                       # bf16 autocast on GPUs, off on CPUs
    channels_last: bool | None = None       # NHWC activations and weights; None = on GPUs only
    device: str = "auto"
    seed: int = 0
    # logging and checkpoints
    log_every: int = 50
    sample_every: int = 1000
    n_sample: int = 4
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    tensorboard: bool = True
    notes: tuple[str, ...] = field(default=(), compare=False)
    # schedule changes of --resume, oldest first: {"step", "steps_before", "steps_after", "decay_start"}
    history: tuple[dict, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        TRAIN_SCHEMA.check_instance(self)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_train // self.batch_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["net"] = self.net.to_dict()
        d["load_size"] = list(self.load_size)
        d["notes"] = list(self.notes)
        d["history"] = [dict(h) for h in self.history]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "training config") -> "TrainConfig":
        """`to_dict`'s inverse, for a saved config.json (`source` names it in errors)."""
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"{source}: unknown fields {sorted(unknown)}")
        TRAIN_SCHEMA.check(d, source)
        if not isinstance(d.get("net"), dict):
            raise InputError(f"{source}: net = {show(d.get('net'))}: expected a table of network fields")
        d["net"] = NetworkPreset.from_dict(d["net"], source, prefix="net.")
        d["history"] = tuple(dict(h) for h in d.get("history", ()))
        return cls(**d)

    def resume_key(self) -> dict:
        """The fields a resumed run must share with the run it continues."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_FREE}


TRAIN_SCHEMA = Schema.of(TrainConfig, TRAIN_RULES, epochs=int)
# The keys of a TOML file (and of flags): the preset comes from --preset, the rest is derived.
_DERIVED = {"net", "preset", "origin", "notes", "n_train", "total_steps", "decay_start", "history"}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - _DERIVED | {"epochs"}
_NET_FIELDS = {f.name for f in dataclasses.fields(NetworkPreset)} - {"name"}


def read_toml(path: str | Path) -> dict:
    """A training TOML file: training fields at the top level, network fields under [network]."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid TOML config ({e})") from e
    source = str(path)
    net = data.pop("network", {})
    if not isinstance(net, dict):
        raise InputError(f"{source}: network = {show(net)}: expected a [network] table")
    bad = sorted(set(data) - _TRAIN_FIELDS) + [f"network.{k}" for k in sorted(set(net) - _NET_FIELDS)]
    if bad:
        raise InputError(f"{source}: unknown keys {bad}; training keys are {sorted(_TRAIN_FIELDS)}, "
                         f"[network] keys are {sorted(_NET_FIELDS)}")
    TRAIN_SCHEMA.check(data, source)
    NETWORK_SCHEMA.check(net, source, prefix="network.")
    return {**data, "network": net}


def resolve_config(preset: str, *, n_train: int, toml: str | Path | None = None, overrides: dict | None = None,
                   network: dict | None = None, data_network: dict | None = None) -> TrainConfig:
    """preset ← what the data needs (`data_network`: the label table a toy preset takes on other
    data, synth/data.py `data_label_table`) ← TOML file ← flags (`overrides`, None values ignored;
    `network` for NetworkPreset fields), with the schedule resolved for `n_train` training images."""
    fields = dict(TRAIN_PRESETS.get(preset, {}))
    if preset not in TRAIN_PRESETS:
        get_preset(preset)  # raises the unknown-preset error
    net_fields: dict = dict(data_network or {})
    explicit: dict = {}
    if toml is not None:
        data = read_toml(toml)
        net_fields.update(data.pop("network"))
        explicit.update(data)
    for k, v in (overrides or {}).items():
        if v is not None:
            (net_fields if k in _NET_FIELDS else explicit)[k] = v
    fields.update(explicit)
    TRAIN_SCHEMA.check(fields)  # values from code; a TOML file's are checked (and named) by read_toml
    notes = []
    if "seg_loss" not in explicit:  # the preset's choice bends to what is available
        if explicit.get("segnet") is not None and not _official_ade20k(fields.get("recipe"), preset):
            fields["seg_loss"] = True
        elif fields.get("seg_loss"):
            fields["seg_loss"] = False
            notes.append("segmentation loss off: no --segnet given (train one with `resail segnet train`)")
    net_fields.update({k: v for k, v in (network or {}).items() if v is not None})
    net = get_preset(preset, **net_fields)
    if "edges" not in net_fields:  # a CLADE norm takes the edge map where its authors feed it
        net = baseline_network(net)
    fields.setdefault("load_size", (net.width, net.height))
    epochs = fields.pop("epochs", None)
    if epochs is not None:  # --epochs N keeps the preset's constant/decay proportion
        if fields.get("steps") is not None:
            raise ConfigError("epochs", f"epochs {epochs} with steps {fields['steps']}: choose one")
        fields["niter"], fields["niter_decay"] = split_epochs(
            epochs, fields.get("niter", TrainConfig.niter), fields.get("niter_decay", TrainConfig.niter_decay))
    cfg = TrainConfig(net=net, preset=preset, **fields)
    cfg = _check_and_finish(cfg, n_train, notes)
    return cfg


def resolve_resumed(saved: TrainConfig, *, n_train: int, preset: str | None = None, toml: str | Path | None = None,
                    overrides: dict | None = None, network: dict | None = None) -> TrainConfig:
    """The config of `--resume`: the run's saved settings, then the TOML file and the flags given
    now (None values ignored). A given `steps` or `epochs` replaces the saved schedule length;
    the trainer refuses any change outside RESUME_FREE against the checkpoint."""
    if preset is not None and preset != saved.preset:
        raise ConfigError("preset", f"preset {preset}: run {saved.name!r} was trained with preset {saved.preset!r}; "
                                    "give none to resume it, or start a new run under another name")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    net_given = {k: v for k, v in (network or {}).items() if v is not None}
    if toml is not None:
        data = read_toml(toml)
        net_given = {**data.pop("network"), **net_given}
        given = {**data, **given}
    for k in [k for k in given if k in _NET_FIELDS]:
        net_given[k] = given.pop(k)
    fields = {k: getattr(saved, k) for k in _TRAIN_FIELDS - {"epochs"}}
    if "steps" in given or "epochs" in given:
        fields.pop("steps")
    net = {k: getattr(saved.net, k) for k in _NET_FIELDS}
    cfg = resolve_config(saved.preset, n_train=n_train, overrides={**fields, **given}, network={**net, **net_given})
    return dataclasses.replace(cfg, history=saved.history)


def split_epochs(epochs: int, niter: int, niter_decay: int) -> tuple[int, int]:
    """`--epochs N` as (constant, decay) epochs in the preset's proportion."""
    const = round(epochs * niter / max(1, niter + niter_decay))
    return const, epochs - const


def _official_ade20k(recipe: str | None, preset: str) -> bool:
    return recipe == "official" and preset == "ade20k"


def _check_recipe(cfg: TrainConfig, notes: list[str]) -> TrainConfig:
    """The official recipe trains in fp32 and, on ADE20K, without the segmentation loss (its
    seg-loss path raised for ADE20K, docs/method.md §8.6)."""
    if cfg.recipe != "official":
        return cfg
    if cfg.amp in ("bf16", "fp16"):
        raise ConfigError("amp", f"amp {cfg.amp} with recipe official: the official run trains in fp32; leave amp "
                                 "unset or use recipe resail")
    if _official_ade20k(cfg.recipe, cfg.preset) and cfg.seg_loss:
        raise ConfigError("seg_loss", "seg_loss with recipe official on ade20k: the official ADE20K run had no "
                                      "segmentation loss; leave it unset or use recipe resail")
    if _official_ade20k(cfg.recipe, cfg.preset) and cfg.segnet is not None:
        notes.append("--segnet unused: the official ADE20K run had no segmentation loss (recipe official)")
        cfg = dataclasses.replace(cfg, segnet=None)
    return dataclasses.replace(cfg, amp="off")


def _check_and_finish(cfg: TrainConfig, n_train: int, notes: list[str]) -> TrainConfig:
    """Checks across fields (each field's own type and range the schema checked), then the
    schedule in steps."""
    net = cfg.net
    cfg = _check_recipe(cfg, notes)
    lw, lh = cfg.load_size
    if cfg.preprocess == "resize_crop" and (lw < net.width or lh < net.height):
        raise ConfigError("load_size", f"load_size {lw}x{lh} is smaller than the crop {net.width}x{net.height}")
    if cfg.preprocess == "fixed" and (lw, lh) != (net.width, net.height):
        cfg = dataclasses.replace(cfg, load_size=(net.width, net.height))
    if n_train < cfg.batch_size:
        raise ConfigError("batch_size", f"batch_size {cfg.batch_size}: the data has only {n_train} training "
                                        "images; lower it")
    if cfg.vgg_weights is not None and not cfg.vgg:
        raise ConfigError("vgg_weights", f"vgg_weights {cfg.vgg_weights} with the VGG loss off: choose one")
    if not cfg.vgg:
        notes.append("VGG perceptual loss off" + (" (toy preset default)" if cfg.preset.startswith("toy") else ""))
    if cfg.seg_loss and cfg.segnet is None:
        raise ConfigError("segnet", "the segmentation loss needs a trained segmentation network: give its "
                                    "checkpoint (from `resail segnet train`) or turn seg_loss off")
    if not cfg.seg_loss and cfg.segnet is not None:
        notes.append("--segnet given but the segmentation loss is off (pass --seg-loss to use it)")
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    if cfg.steps is not None:
        total = cfg.steps
        decay_start = round(total * cfg.niter / max(1, cfg.niter + cfg.niter_decay))
    else:
        total = (cfg.niter + cfg.niter_decay) * steps_per_epoch
        decay_start = cfg.niter * steps_per_epoch
    if total < 1:
        raise ConfigError("epochs", "the schedule has no steps: raise epochs or give steps")
    return dataclasses.replace(cfg, n_train=n_train, total_steps=total, decay_start=decay_start,
                               notes=tuple(cfg.notes) + tuple(notes))


def format_config(cfg: TrainConfig) -> str:
    """The resolved config in one short block."""
    n = cfg.net
    lines = [
        f"run {cfg.name!r}: preset {cfg.preset}, recipe {cfg.recipe}, {n.width}x{n.height}, norm {n.norm}, "
        f"ngf {n.ngf}, ndf {n.ndf}, "
        f"{n.semantic_nc} label channels" + (" (channel = native id)" if n.label_ids is None else
                                             f" (label table of native ids {n.label_ids[1]}..{n.label_ids[-1]})")
        + (" + instance edge map" if n.edges else ""),
        f"  data: {cfg.n_train} images, batch {cfg.batch_size}, {cfg.preprocess} (load {cfg.load_size[0]}x"
        f"{cfg.load_size[1]}), flip {cfg.flip}, colour ref {cfg.color_ref}, distortion p colour/res/shape "
        f"{cfg.p_color:g}/{cfg.p_resolution:g}/{cfg.p_shape:g}, workers {cfg.workers}",
        f"  schedule: {cfg.total_steps} steps ({cfg.steps_per_epoch}/epoch), lr G {cfg.lr_G:g} D {cfg.lr_D:g} "
        f"Adam({cfg.beta1:g}, {cfg.beta2:g}), linear decay from step {cfg.decay_start}",
        f"  losses: GAN + FM x{cfg.lambda_feat:g}"
        + (f" + VGG x{cfg.lambda_vgg:g}" if cfg.vgg else "")
        + (f" + seg x{cfg.lambda_seg:g} ({cfg.segnet})" if cfg.seg_loss else "")
        + ("; retrieval path GAN" + (" + seg" if cfg.seg_loss else "") if cfg.retrieval_loss
           else "; no retrieval loss"),
        f"  EMA {cfg.ema_decay if cfg.ema else 'off'}, amp {cfg.amp}, channels_last "
        f"{'auto' if cfg.channels_last is None else cfg.channels_last}, device {cfg.device}, seed {cfg.seed}; "
        f"log/sample/checkpoint every {cfg.log_every}/{cfg.sample_every}/{cfg.checkpoint_every} steps",
    ]
    lines += [f"  note: {s}" for s in cfg.notes]
    lines += [f"  extended at step {h['step']}: {h['steps_before']} -> {h['steps_after']} steps" for h in cfg.history]
    return "\n".join(lines)

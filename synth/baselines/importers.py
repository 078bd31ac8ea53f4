"""`resail model import`: a generator in its authors' layout → a resail run that `resail eval`,
`resail synthesize` and `resail serve` use unchanged.

The file is what each repository's `util.save_network` writes, `torch.save(netG.state_dict())`
(SPADE's `latest_net_G.pth`, CLADE's `best_net_G.pth`, the official RESAIL code's
`*_net_G.pth`), read with `torch.load(weights_only=True)`; a `module.` prefix (a network saved
inside DataParallel) is dropped. Their generator is resail's skeleton (synth/generator.py) with
other names, so the import is a renaming:

  spectral norm   `conv_0.weight_orig`, `weight_u`, `weight_v` (torch's hook) → torch's
                  parametrization (`parametrizations.weight.original`, `.0._u`, `.0._v`); with
                  the same u, v an eval-mode forward divides by the same σ
  SPADE norm      `param_free_norm` (synchronized BatchNorm buffers) → `bn`; `mlp_shared.0` →
                  `shared`; `mlp_gamma` → `gamma`; `mlp_beta` → `beta`
  CLADE norm      `class_specified_affine.weight`/`.bias` → `class_gamma`/`class_beta`;
                  `.dist_conv_w`/`.dist_conv_b` → `dist_gamma`/`dist_beta`; `inst_conv` kept
  RESAIL norm     `mlp_shared.0`, `mlp_gamma`, `mlp_beta` → `coarse_*`; `conv_s` → `adain_conv`;
                  `conv_s2` → `adain_fc`; `conv1..3` → `fine_0..2`; `conv_gamma`/`conv_beta` →
                  `fine_gamma`/`fine_beta`; `blending_gamma`/`_beta` ([1]) → `mix_gamma`/`_beta` ([])

and the tensors that read label channels (`fc`, SPADE's `mlp_shared.0`, RESAIL's `mlp_shared.0`
and `conv_s`, CLADE's class tables) are re-indexed from the authors' channel order to resail's
(synth/baselines/authors.py), so the run reads resail's one-hot and computes the authors'
function. What the file does not say is read off its tensors (ngf from `fc`, the label and edge
channels, the hidden width, 'most' upsampling from `up_4`) and reported; the image size and
'normal' vs 'more' are the authors' defaults for the work dir's dataset unless given. Every key
of the file is mapped or refused, with one line naming it; the only key that may be absent is
BatchNorm's `num_batches_tracked`, which inference never reads (it is then set to 0 and said so).

The run: `WORK/runs/NAME/config.json` (its `origin` names the source), a snapshot in the
project's format at step 0, and `import.json` last, recording the file's SHA-256, what was
inferred and how the label channels were mapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...artifacts import write_json_atomic
from ...errors import ConfigError, InputError
from ...workdir import WorkDir, check_run_name
from ..checkpoint import SNAPSHOT_FORMAT, checkpoint_path, list_checkpoints, write_checkpoint
from ..config import TrainConfig
from ..generator import Generator, build_generator
from ..presets import UPSAMPLING, NetworkPreset, get_preset
from .authors import AUTHORS_SIZE, AUTHORS_UPSAMPLING, SOURCES, dataset_preset, label_layout, void_last

NUM_BATCHES_TRACKED = "num_batches_tracked"
SN_KEYS = {"parametrizations.weight.original": "weight_orig", "parametrizations.weight.0._u": "weight_u",
           "parametrizations.weight.0._v": "weight_v"}
# resail's norm submodules → the authors' names, per source
NORM_KEYS = {
    "spade": {"bn": "param_free_norm", "shared": "mlp_shared.0", "gamma": "mlp_gamma", "beta": "mlp_beta"},
    "clade": {"bn": "param_free_norm", "class_gamma": "class_specified_affine.weight",
              "class_beta": "class_specified_affine.bias", "dist_gamma": "class_specified_affine.dist_conv_w",
              "dist_beta": "class_specified_affine.dist_conv_b", "inst_conv": "inst_conv"},
    "resail-official": {"bn": "param_free_norm", "coarse_shared": "mlp_shared.0", "coarse_gamma": "mlp_gamma",
                        "coarse_beta": "mlp_beta", "adain_conv": "conv_s", "adain_fc": "conv_s2", "fine_0": "conv1",
                        "fine_1": "conv2", "fine_2": "conv3", "fine_gamma": "conv_gamma", "fine_beta": "conv_beta",
                        "mix_gamma": "blending_gamma", "mix_beta": "blending_beta"},
}
NORM_KEYS["clade-icpe"] = NORM_KEYS["clade"]
NORM_OF = {"spade": "spade", "clade": "clade", "clade-icpe": "clade-icpe", "resail-official": "resail"}
# resail keys whose tensor reads label channels, and along which dimension: 1 = the label input
# (the edge map last), 0 = CLADE's class tables (no edge map)
LABEL_DIMS = {"fc.weight": 1, "shared.weight": 1, "coarse_shared.weight": 1, "adain_conv.weight": 1,
              "class_gamma": 0, "class_beta": 0}
FAMILY_SIGNS = (("clade-icpe", "dist_conv_w"), ("clade", "class_specified_affine"),
                ("resail-official", "blending_gamma"), ("spade", "mlp_gamma"))


@dataclass(frozen=True)
class ImportConfig:
    source: str                         # SOURCES
    path: Path                          # the authors' generator file
    work: Path
    name: str
    crop_size: int | None = None        # the authors' --crop_size (image width) [default: theirs for the dataset]
    aspect_ratio: float | None = None   # --aspect_ratio, width / height [default: theirs]
    upsampling: str | None = None       # --num_upsampling_layers [default: theirs; 'most' when up_4 exists]
    ngf: int | None = None              # --ngf, checked against the file (it is read off fc)
    no_instance: bool | None = None     # --no_instance, checked against the file (the edge channel)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError("source", f"source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.upsampling is not None and self.upsampling not in AUTHORS_UPSAMPLING:
            raise ConfigError("upsampling", f"upsampling {self.upsampling!r}: choose one of "
                                            f"{', '.join(AUTHORS_UPSAMPLING)} (the authors' generators)")
        check_run_name(self.name)


@dataclass
class ImportResult:
    run_dir: Path
    snapshot: Path
    config: TrainConfig
    inferred: dict = field(default_factory=dict)   # what was read off the file's tensors
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the file


def read_generator_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`: a bare dict of tensors, a `module.` prefix dropped; one-line errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many types for a truncated or foreign file
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise InputError(f"{path}: not a readable torch weight file ({type(e).__name__}: {first}); expected a "
                         "generator's state dict as its authors' code saves it (latest_net_G.pth)") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = f" with keys {list(state)[:5]}" if isinstance(state, dict) else ""
        raise InputError(f"{path}: expected a bare state dict of tensors (torch.save(netG.state_dict())); got a "
                         f"{type(state).__name__}{keys}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _family(state: dict, path: Path) -> str:
    for family, sign in FAMILY_SIGNS:
        if any(sign in k for k in state):
            return family
    raise InputError(f"{path}: no SPADE, CLADE or RESAIL normalisation keys (mlp_gamma, class_specified_affine, "
                     f"blending_gamma); first keys: {', '.join(list(state)[:3])}")


# ---------------------------------------------------------------- what the tensors say


@dataclass(frozen=True)
class Layout:
    """How the file's label input is laid out: its channel count, resail's channel → its channel,
    and whether the edge map follows."""
    channels: int                       # the authors' label channels (without the edge map)
    index: torch.Tensor                 # for resail's label channel r, the authors' channel
    edges: bool

    def input_index(self) -> torch.Tensor:
        """The same for the whole label input (the edge channel last)."""
        return torch.cat([self.index, torch.tensor([self.channels])]) if self.edges else self.index


def _label_layout(state: dict, cfg: ImportConfig, net: NetworkPreset, dataset: str) -> tuple[Layout, list[str]]:
    """The file's label layout, checked against the dataset's: (layout, notes)."""
    path, n_in = cfg.path, int(state["fc.weight"].shape[1])
    want = net.semantic_nc              # resail's label channels for the dataset
    where = f"{path}: fc.weight takes {n_in} input channels"
    notes = []
    if cfg.source.startswith("clade"):
        table = next(v for k, v in state.items() if k.endswith("class_specified_affine.weight"))
        channels, edges = int(table.shape[0]), any(".inst_conv." in k for k in state)
        if channels != want or n_in != channels + edges:
            raise InputError(f"{where} and its class tables {channels} classes; {dataset} in CLADE's layout has "
                             f"{want} ({label_layout(cfg.source, dataset)}), + 1 with the instance edge map")
    elif cfg.source == "spade":
        channels, edges = want, n_in == want + 1
        if n_in not in (want, want + 1):
            raise InputError(f"{where}; {dataset} in SPADE's layout has {want} label channels "
                             f"({label_layout(cfg.source, dataset)}), + 1 with the instance edge map")
    else:  # the official RESAIL code: no edge map; COCO-Stuff trained with one channel never set
        channels, edges = n_in, False
        if n_in != want and not (dataset == "cocostuff" and n_in == want + 1):
            raise InputError(f"{where}; {dataset} in the official RESAIL layout has {want} label channels "
                             f"({label_layout(cfg.source, dataset)}) and no instance edge map")
        if n_in == want + 1:
            notes.append(f"{n_in} label channels: the official COCO-Stuff training config (label_nc 183 with a "
                         "don't-care channel); channel 182 is never set and its weights are dropped")
    index = torch.arange(want)
    if void_last(cfg.source, dataset):  # void is the authors' last label channel, class r their r - 1
        index = torch.cat([torch.tensor([channels - 1]), torch.arange(want - 1)])
    return Layout(channels, index, edges), notes


def _hidden(state: dict, source: str, default: int, path: Path) -> int:
    """The SPADE / RESAIL branches' hidden width (128 in the authors' code); CLADE has none."""
    names = {"spade": ("mlp_shared.0.weight",), "resail-official": ("mlp_shared.0.weight", "conv1.weight")}
    widths = {int(v.shape[0]) for k, v in state.items() for n in names.get(source, ()) if k.endswith("norm_0." + n)}
    if len(widths) > 1:
        raise InputError(f"{path}: the norms' hidden widths differ ({sorted(widths)}); resail's RESAIL module "
                         "uses one width for its coarse and fine branches")
    return widths.pop() if widths else default


def _size(cfg: ImportConfig, dataset: str, most: bool) -> tuple[int, int, str]:
    """(width, height, upsampling) of the authors' run: their defaults for the dataset, or the flags."""
    width, height, upsampling = AUTHORS_SIZE[dataset]
    upsampling = cfg.upsampling or ("most" if most else upsampling)
    if most != (upsampling == "most"):
        has = "has an up_4 block (only 'most' has one)" if most else "has no up_4 block (only 'most' has one)"
        raise ConfigError("upsampling", f"upsampling {upsampling}: {cfg.path} {has}")
    crop = cfg.crop_size or width
    aspect = cfg.aspect_ratio or width / height
    k = 2 ** UPSAMPLING[upsampling]
    sw = crop // k
    sh = round(sw / aspect)  # SPADE's compute_latent_vector_size
    if sw * k != crop or sh < 1:
        raise ConfigError("crop_size", f"crop_size {crop}: {upsampling!r} upsampling needs a multiple of {k} with at "
                                       f"least {k / aspect:g} px of height (the authors' generator would not make "
                                       "that size)")
    return crop, sh * k, upsampling


def infer_network(state: dict, cfg: ImportConfig, dataset: str) -> tuple[NetworkPreset, Layout, dict, list[str]]:
    """The resail network of the file: (preset, label layout, what was inferred, notes)."""
    path, found = cfg.path, _family(state, cfg.path)
    if found != cfg.source and not (cfg.source == "clade-icpe" and found == "clade"):
        raise ConfigError("source", f"{path}: holds a {found} generator (keys like "
                                    f"{next(k for k in state if dict(FAMILY_SIGNS)[found] in k)}); its source is "
                                    f"{found}")
    if cfg.source == "clade-icpe" and found == "clade":
        raise ConfigError("source", f"{path}: a CLADE generator without the positional-encoding convs (dist_conv_w); "
                                    "its source is clade")
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 4:
        what = "fc.weight is missing" if fc is None else "fc is a linear layer (a --use_vae generator, z input)"
        raise InputError(f"{path}: {what}; resail imports the generators that start from the label map")
    ngf, rest = divmod(int(fc.shape[0]), 16)
    if rest:
        raise InputError(f"{path}: fc.weight has {fc.shape[0]} output channels, not 16·ngf")
    preset_name = dataset_preset(dataset, str(cfg.work))
    width, height, upsampling = _size(cfg, dataset, any(k.startswith("up_4.") for k in state))
    base = get_preset(preset_name)
    layout, notes = _label_layout(state, cfg, base, dataset)
    hidden = _hidden(state, cfg.source, base.norm_hidden, path)
    depth = next(d for d in range(len(base.segnet_channels), 0, -1) if not (width % 2**d or height % 2**d))
    net = dataclasses.replace(base, width=width, height=height, upsampling=upsampling, ngf=ngf,
                              norm=NORM_OF[cfg.source], norm_hidden=hidden, edges=layout.edges,
                              segnet_channels=base.segnet_channels[:depth])  # no segnet of its own: unused
    _check_given(cfg, ngf, layout.edges, int(fc.shape[1]))
    inferred = {"ngf": ngf, "label_channels": layout.channels, "instance_edge_map": layout.edges,
                "norm_hidden": hidden if cfg.source in ("spade", "resail-official") else None,
                "upsampling": upsampling, "size": [width, height],
                "size_from": "flags" if cfg.crop_size or cfg.aspect_ratio else f"the authors' {dataset} default"}
    return net, layout, inferred, notes


def _check_given(cfg: ImportConfig, ngf: int, edges: bool, n_in: int) -> None:
    """The authors' options given as flags must agree with what the tensors say."""
    if cfg.ngf is not None and cfg.ngf != ngf:
        raise ConfigError("ngf", f"ngf {cfg.ngf}: {cfg.path} has ngf {ngf} (fc.weight has {16 * ngf} output "
                                 "channels)")
    if cfg.no_instance is not None and cfg.no_instance == edges:
        raise ConfigError("no_instance", f"no_instance {cfg.no_instance}: {cfg.path} was trained "
                                         f"{'with' if edges else 'without'} the instance edge map (fc.weight takes "
                                         f"{n_in} input channels); leave it unset")


# ---------------------------------------------------------------- the renaming


def authors_key(key: str, source: str) -> str:
    """resail's state-dict key → the authors' key for the same tensor."""
    for ours, theirs in SN_KEYS.items():
        if key.endswith("." + ours):
            key = key[: -len(ours)] + theirs
    parts = key.split(".")
    if len(parts) > 2 and parts[1] in ("norm_0", "norm_1", "norm_s"):
        sub = NORM_KEYS[source].get(parts[2])
        if sub is not None:
            parts = parts[:2] + sub.split(".") + parts[3:]
    return ".".join(parts)


def _label_dim(key: str) -> int | None:
    for suffix, dim in LABEL_DIMS.items():
        if key == suffix or key.endswith("." + suffix):
            return dim
    return None


def convert(state: dict, G: Generator, cfg: ImportConfig, layout: Layout) -> tuple[dict, list[str]]:
    """The file's tensors under resail's keys, label channels in resail's order; every key of the
    file used, each problem one line naming a key. Returns (state dict, notes)."""
    target = G.state_dict()
    ours = {authors_key(k, cfg.source): k for k in target}
    notes = []
    unexpected = [k for k in state if k not in ours]
    if unexpected:
        raise InputError(f"{cfg.path}: {len(unexpected)} key(s) that a {cfg.source} generator of this shape does not "
                         f"have, first {unexpected[0]} {list(state[unexpected[0]].shape)}; check the source and the "
                         "work dir's dataset")
    missing = [k for k in ours if k not in state and not k.endswith(NUM_BATCHES_TRACKED)]
    if missing:
        raise InputError(f"{cfg.path}: {len(missing)} key(s) missing, first {missing[0]} (resail {ours[missing[0]]}); "
                         "the file is not a whole generator of this layout")
    out = {}
    for theirs, key in ours.items():
        if theirs not in state:
            out[key] = torch.zeros_like(target[key])
            continue
        t = _to_ours(key, state[theirs], target[key], layout, theirs, cfg.path)
        out[key] = t.to(target[key].dtype)
    absent = [k for k in ours if k not in state]
    if absent:
        notes.append(f"{len(absent)} BatchNorm num_batches_tracked buffer(s) absent from the file (older torch): set "
                     "to 0; inference never reads them")
    return out, notes


def _to_ours(key: str, t: torch.Tensor, like: torch.Tensor, layout: Layout, theirs: str, path: Path) -> torch.Tensor:
    """One authors' tensor in resail's form, or an InputError naming its key."""
    dim = _label_dim(key)
    if dim is not None:  # the label input (dim 1, the edge map last) or the class tables (dim 0)
        index = layout.input_index() if dim == 1 else layout.index
        want = layout.channels + (layout.edges if dim == 1 else 0)
        if t.dim() != like.dim() or t.shape[dim] != want:
            raise InputError(f"{path}: {theirs} is {list(t.shape)}, but the file's label input has {want} channels "
                             f"along dimension {dim}; the file is not one generator of one layout")
        t = t.index_select(dim, index)
    if key.endswith(("mix_gamma", "mix_beta")) and t.shape == (1,):
        t = t.reshape(())
    if tuple(t.shape) != tuple(like.shape):
        raise InputError(f"{path}: {theirs} is {list(t.shape)} where this generator needs {list(like.shape)} "
                         f"(resail {key}); check the source, the upsampling and the work dir's dataset")
    return t


# ---------------------------------------------------------------- the run


def import_generator(cfg: ImportConfig) -> ImportResult:
    """Read, check and map the authors' file; write WORK/runs/NAME (config, snapshot, import.json)."""
    wd = WorkDir(cfg.work)
    dataset = wd.require_segments()["params"]["dataset"]
    state = read_generator_file(cfg.path)
    net, layout, inferred, notes = infer_network(state, cfg, dataset)
    G = build_generator(net)
    converted, more = convert(state, G, cfg, layout)
    G.load_state_dict(converted)
    notes += more
    run_cfg = TrainConfig(net=net, preset=net.name, name=cfg.name, origin=cfg.source, n_train=0,
                          notes=(f"imported from {cfg.path} ({cfg.source})",))
    run_dir = wd.run(cfg.name)
    with wd.lock(f"run-{cfg.name}", f"run {cfg.name!r}"):
        if list_checkpoints(run_dir, "snapshot") or list_checkpoints(run_dir, "state"):
            raise InputError(f"{run_dir} already holds checkpoints; import under another run name (or delete the "
                             "run)")
        write_json_atomic(run_dir / "config.json", run_cfg.to_dict())
        snapshot = checkpoint_path(run_dir, "snapshot", 0)
        write_checkpoint(snapshot, {"format": SNAPSHOT_FORMAT, "config": run_cfg.to_dict(), "step": 0,
                                    "G_ema": G.state_dict()}, rerun="rerun `resail model import`")
        write_json_atomic(run_dir / "import.json", {
            "source": cfg.source, "file": str(cfg.path), "sha256": _sha256(cfg.path), "tensors": len(state),
            "parameters": sum(p.numel() for p in G.parameters()), "dataset": dataset,
            "label_layout": label_layout(cfg.source, dataset),
            "label_channels": {"authors": layout.channels, "resail": net.semantic_nc,
                               "authors_channel_of_resail_channel": layout.index.tolist()},
            "inferred": inferred, "notes": notes, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return ImportResult(run_dir, snapshot, run_cfg, inferred, notes)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(result: ImportResult) -> str:
    """What the import read and did, for the CLI."""
    i, net = result.inferred, result.config.net
    lines = [f"imported {result.config.origin} generator -> {result.run_dir} ({net.norm} norm, "
             f"{net.width}x{net.height}, {i['upsampling']} upsampling from {i['size_from']})",
             f"  read off the tensors: ngf {i['ngf']}, {i['label_channels']} label channels, instance edge map "
             f"{'yes' if i['instance_edge_map'] else 'no'}" + (f", hidden width {i['norm_hidden']}"
                                                               if i['norm_hidden'] else "")]
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)

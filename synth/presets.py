"""Network presets: the sizes of G, D and the segmentation network per dataset.

The full presets reproduce the official configurations (docs/method.md §5.4, §6): ngf = ndf = 64,
two discriminator scales of four layers, RESAIL modules with 128 hidden channels, and the
OASIS U-Net widths for the segmentation network. `toy` shrinks every width so that one G+D
training step runs well under a second on a CPU.

Channel convention of the one-hot label map: by default channel = the dataset's native class id,
channel 0 = void / don't-care (ADE20K "other", Cityscapes "unlabeled", COCO-Stuff 255 mapped to 0
by the readers). Hence ADE20K 150 classes → 151 channels, COCO-Stuff 182 → 183, and Cityscapes
keeps SPADE's 35 channels (labelIds 0..33 need 34). A preset with a label table (`label_ids`)
has one channel per listed native id instead, channel c ↔ native id label_ids[c], channel 0 =
void (labels/spaces.py): `toy` lists the 22 ADE20K classes the toy generator draws, so its label
map has 23 channels rather than 151. The seg loss ignores channel 0 where the trainer says so.
That list is a constant here, not computed from the toy generator, so that loading a preset never
imports the generator; tests/test_label_table.py checks that the two agree. With `edges`, G and D
also take SPADE's instance edge map as one channel after the label map (`input_nc`); the
segmentation network still predicts the `semantic_nc` label channels.

`NetworkPreset` is a frozen dataclass; the trainer extends it (subclass or a wrapping config)
with its training fields. `dataclasses.replace(preset, ngf=16)` makes a variant.

Config values come from TOML files, saved config.json files and code, so each field is checked
against its type (the annotation: `flip = "no"` is not a bool) and its range or choices (a rule
table, `NETWORK_RULES` here, `TRAIN_RULES` in synth/config.py) by one checker, `Schema`, whose
one-line errors name the source, key, value and what was expected. Each dataclass checks itself
on construction, and readers check first to name their file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass

from ..errors import InputError

UPSAMPLING = {"few": 4, "normal": 5, "more": 6, "most": 7}
# The generator's normalisation: RESAIL's module, or a baseline (SPADE; CLADE and CLADE-ICPE,
# synth/baselines/clade.py). Only RESAIL's reads the retrieval guidance; CLADE-ICPE reads the
# intra-class positional maps (synth/baselines/icpe.py).
NORMS = ("resail", "spade", "clade", "clade-icpe")


@dataclass(frozen=True)
class Range:
    """An interval of numbers (`v in Range(0, 1, hi_open=True)`); str() is how a message states it."""
    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v) -> bool:
        return (self.lo < v if self.lo_open else self.lo <= v) and (v < self.hi if self.hi_open else v <= self.hi)

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '≥'} {self.lo}"
        return f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"


AT_LEAST_1, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, lo_open=True)
_NOUNS = {bool: ("true or false", "true or false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"), dict: ("a table", "tables")}


def show(value) -> str:
    """A value as TOML or JSON writes it: "no", true, [1, 2], inf."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _unwrap(kind) -> tuple[object, bool]:
    """(the kind without None, whether None is allowed) of an annotation such as `int | None`."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(kind) if a is not type(None)), True
    return kind, False


def _fits(value, kind, rule) -> bool:
    kind, optional = _unwrap(kind)
    if value is None:
        return optional
    if typing.get_origin(kind) is tuple:  # a TOML / JSON list, or a tuple from code
        args = typing.get_args(kind)
        return (isinstance(value, (list, tuple)) and (args[-1] is ... or len(value) == len(args))
                and all(_fits(v, args[0], rule) for v in value))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    return ok and (rule is None or value in rule)


def _expected(kind, rule, plural: bool = False) -> str:
    kind, _ = _unwrap(kind)
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        return f"a list of {'' if args[-1] is ... else f'{len(args)} '}{_expected(args[0], rule, plural=True)}"
    if rule is not None and not isinstance(rule, Range):
        return "one of " + ", ".join(show(choice) for choice in rule)
    return _NOUNS[kind][plural] + (f" {rule}" if rule is not None else "")


@dataclass(frozen=True)
class Schema:
    """Each field's kind (its annotation: bool, int, float, str, tuple[...], `| None`) and, in
    `rules`, its `Range` or its choices (a tuple, or a dict's keys)."""
    kinds: dict
    rules: dict

    @classmethod
    def of(cls, config: type, rules: dict, **extra_kinds) -> "Schema":
        """The schema of a dataclass (nested dataclasses are their own); `extra_kinds` for keys
        that are no field (e.g. `epochs`)."""
        hints = typing.get_type_hints(config)
        fields = [f.name for f in dataclasses.fields(config) if not dataclasses.is_dataclass(hints[f.name])]
        return cls({**{k: hints[k] for k in fields}, **extra_kinds}, rules)

    def check(self, values: dict, source: str | None = None, prefix: str = "") -> None:
        """Refuse the first of `values` (key → value; keys outside the schema are skipped) that does
        not fit: `SOURCE: PREFIXkey = value: expected …`."""
        for key, value in values.items():
            if key in self.kinds and not _fits(value, self.kinds[key], self.rules.get(key)):
                raise InputError(f"{source + ': ' if source else ''}{prefix}{key} = {show(value)}: "
                                 f"expected {_expected(self.kinds[key], self.rules.get(key))}")

    def check_instance(self, config, source: str | None = None) -> None:
        """Check a frozen dataclass's fields, then store lists (TOML, JSON) as tuples and whole
        numbers given for float fields as floats."""
        values = {k: getattr(config, k) for k in self.kinds if hasattr(config, k)}
        self.check(values, source)
        for key, value in values.items():
            if isinstance(value, list):
                object.__setattr__(config, key, tuple(value))
            elif _unwrap(self.kinds[key])[0] is float and isinstance(value, int):
                object.__setattr__(config, key, float(value))


# The ADE20K ids the toy generator can draw (`pipeline.toy.toy_class_ids("ade20k")`), void 0 first.
TOY_LABEL_IDS = (0, 2, 3, 5, 7, 9, 10, 12, 13, 15, 17, 18, 21, 22, 44, 53, 70, 81, 84, 94, 127, 128, 137)


@dataclass(frozen=True)
class NetworkPreset:
    name: str
    label_nc: int                 # native class ids 0..label_nc-1 (0 = void)
    dontcare: bool = False        # one extra channel for "don't care" (COCO-Stuff's 255 in SPADE)
    width: int = 256              # W of the generated image
    height: int = 256             # H of the generated image
    upsampling: str = "normal"    # 'normal' (5 ×2 ups), 'more' (6: an extra up between the middle blocks),
                                  # 'most' (7: SPADE's, 'more' and a last block up_4 at ngf/2)
                                  # or 'few' (4: no up between head_0 and G_middle_0; this project's, for toy64)
    ngf: int = 64                 # G widths: 16·ngf at the bottom down to ngf before the RGB conv
    norm: str = "resail"          # 'resail' (§6.1), or a baseline: 'spade', 'clade', 'clade-icpe' (NORMS)
    norm_hidden: int = 128        # hidden width of the RESAIL/SPADE branches (AdaIN vectors are 2×)
    ndf: int = 64
    n_layers_D: int = 4
    num_D: int = 2
    segnet_channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512)  # U-Net encoder widths
    label_ids: tuple[int, ...] | None = None  # channel c ↔ native id label_ids[c]; None: channel = native id
    edges: bool = False           # G and D also take SPADE's instance edge map, one channel after the label map

    def __post_init__(self) -> None:
        NETWORK_SCHEMA.check_instance(self, f"preset {self.name!r}")
        self._check_label_ids()
        n_up = UPSAMPLING[self.upsampling]
        if self.width % 2**n_up:
            raise InputError(f"preset {self.name!r}: width {self.width} is not a multiple of 2^{n_up} "
                             f"({self.upsampling!r} upsampling)")
        sh, sw = self.start_size
        if sh * 2**n_up != self.height:
            raise InputError(f"preset {self.name!r}: height {self.height} is not reachable from a "
                             f"{sh}×{sw} start with {n_up} ×2 ups; use a height that is a multiple of 2^{n_up}")
        if self.norm == "resail" and min(sh, sw) < 3:
            raise InputError(f"preset {self.name!r}: {self.width}x{self.height} starts G at {sh}×{sw}, but the "
                             "RESAIL AdaIN branch needs at least 3×3; use a larger size or 'normal' upsampling")
        depth = len(self.segnet_channels)
        if self.width % 2**depth or self.height % 2**depth:
            raise InputError(f"preset {self.name!r}: {self.width}x{self.height} is not divisible by 2^{depth} "
                             f"(segmentation U-Net of {depth} levels)")

    def _check_label_ids(self) -> None:
        if self.label_ids is None:
            return
        ids = self.label_ids  # a tuple of ints: the schema checked and froze it
        if len(ids) < 2 or ids[0] != 0:
            raise InputError(f"preset {self.name!r}: label_ids must start with 0 (void, channel 0) and list at least "
                             f"one class, got {list(ids[:5])}{' …' if len(ids) > 5 else ''}")
        if any(b <= a for a, b in zip(ids, ids[1:])):
            raise InputError(f"preset {self.name!r}: label_ids must be sorted and without repeats")
        if ids[-1] >= self.label_nc:
            raise InputError(f"preset {self.name!r}: label_ids go up to {ids[-1]}, but the dataset's native ids "
                             f"are 0..{self.label_nc - 1} (label_nc {self.label_nc})")

    @property
    def semantic_nc(self) -> int:
        """Channels of the one-hot label map fed to G, D and out of the segmentation network."""
        n = self.label_nc if self.label_ids is None else len(self.label_ids)
        return n + int(self.dontcare)

    @property
    def input_nc(self) -> int:
        """Channels of G's and D's label input: the one-hot label map, then the edge map (`edges`)."""
        return self.semantic_nc + int(self.edges)

    @property
    def guided(self) -> bool:
        """Whether G reads the retrieval guidance (RESAIL's norm); the baselines' G ignores it."""
        return self.norm == "resail"

    @property
    def icpe(self) -> bool:
        """Whether G reads CLADE-ICPE's intra-class positional maps."""
        return self.norm == "clade-icpe"

    @property
    def n_up(self) -> int:
        return UPSAMPLING[self.upsampling]

    @property
    def start_size(self) -> tuple[int, int]:
        """(sh, sw): the label map's size at G's input conv; sw = W/2^n_up, sh = round(sw·H/W)."""
        sw = self.width // 2**self.n_up
        return round(sw * self.height / self.width), sw

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["segnet_channels"] = list(self.segnet_channels)
        d["label_ids"] = None if self.label_ids is None else list(self.label_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "network config", prefix: str = "") -> "NetworkPreset":
        """`to_dict`'s inverse, for a saved config (`source` names it in errors)."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"{source}: unknown fields {sorted(prefix + k for k in unknown)}")
        NETWORK_SCHEMA.check(d, source, prefix)
        return cls(**d)


NETWORK_RULES = {"upsampling": UPSAMPLING, "norm": NORMS, "n_layers_D": Range(2), "segnet_channels": AT_LEAST_1,
                 **dict.fromkeys(("label_nc", "width", "height", "ngf", "norm_hidden", "ndf", "num_D"), AT_LEAST_1)}
NETWORK_SCHEMA = Schema.of(NetworkPreset, NETWORK_RULES)


PRESETS: dict[str, NetworkPreset] = {
    p.name: p
    for p in (
        NetworkPreset("ade20k", label_nc=151),
        NetworkPreset("ade20k-outdoor", label_nc=151),
        NetworkPreset("cityscapes", label_nc=35, width=512, height=256, upsampling="more"),
        NetworkPreset("cocostuff", label_nc=183),
        # The toy dataset is written in ADE20K format by default (native ids 0..150); the label
        # table keeps the classes its generator draws (the one-hot convs dominate a toy step).
        NetworkPreset("toy", label_nc=151, width=128, height=128, ngf=16, norm_hidden=16, ndf=16,
                      segnet_channels=(16, 16, 32, 32, 64, 64), label_ids=TOY_LABEL_IDS),
        # The toy preset at 64×64 for CPU ablations and the demo: a quarter of its pixels, G starts at
        # 4×4 ('few' upsampling keeps the RESAIL AdaIN branch's 3×3 minimum), three-layer D, toy's
        # six-level segmentation U-Net (a five-level one did not learn at all here; docs/ablation.md).
        NetworkPreset("toy64", label_nc=151, width=64, height=64, upsampling="few", ngf=16, norm_hidden=16,
                      ndf=16, n_layers_D=3, segnet_channels=(16, 16, 32, 32, 64, 64), label_ids=TOY_LABEL_IDS),
    )
}
DEMO_PRESETS = ("toy64", "toy")  # small enough for `resail demo` to train on a CPU in minutes


def get_preset(name: str, **overrides) -> NetworkPreset:
    """The named preset, with any fields replaced (e.g. `get_preset('toy', norm='spade')`)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return dataclasses.replace(preset, **overrides) if overrides else preset

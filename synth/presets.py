"""Network presets: the sizes of G, D and the segmentation network per dataset.

The full presets reproduce the official configurations (reference §5.4, §6): ngf = ndf = 64,
two discriminator scales of four layers, RESAIL modules with 128 hidden channels, and the
OASIS U-Net widths for the segmentation network. `toy` shrinks every width so that one G+D
training step runs well under a second on a CPU.

Channel convention of the one-hot label map: by default channel = the dataset's native class id,
channel 0 = void / don't-care (ADE20K "other", Cityscapes "unlabeled", COCO-Stuff 255 mapped to 0
by the readers). Hence ADE20K 150 classes → 151 channels, COCO-Stuff 182 → 183, and Cityscapes
keeps SPADE's 35 channels (labelIds 0..33 need 34). A preset with a label table (`label_ids`)
has one channel per listed native id instead, channel c ↔ native id label_ids[c], channel 0 =
void (synth/labels.py): `toy` lists the 22 ADE20K classes the toy generator draws, so its label
map has 23 channels rather than 151. The seg loss ignores channel 0 where the trainer says so.
That list is a constant here, not computed from the toy generator, so that loading a preset never
imports the generator; tests/test_label_table.py checks that the two agree.

`NetworkPreset` is a frozen dataclass; the trainer extends it (subclass or a wrapping config)
with its training fields. `dataclasses.replace(preset, ngf=16)` makes a variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import InputError

UPSAMPLING = {"few": 4, "normal": 5, "more": 6}
NORMS = ("resail", "spade")
# The ADE20K ids the toy generator can draw (`pipeline.toy.toy_class_ids("ade20k")`), void 0 first.
TOY_LABEL_IDS = (0, 2, 3, 5, 7, 9, 10, 12, 13, 15, 17, 18, 21, 22, 44, 53, 70, 81, 84, 94, 127, 128, 137)


@dataclass(frozen=True)
class NetworkPreset:
    name: str
    label_nc: int                 # native class ids 0..label_nc-1 (0 = void)
    dontcare: bool = False        # one extra channel for "don't care" (COCO-Stuff's 255 in SPADE)
    width: int = 256              # W of the generated image
    height: int = 256             # H of the generated image
    upsampling: str = "normal"    # 'normal' (5 ×2 ups), 'more' (6: an extra up between the middle blocks)
                                  # or 'few' (4: no up between head_0 and G_middle_0; this project's, for toy64)
    ngf: int = 64                 # G widths: 16·ngf at the bottom down to ngf before the RGB conv
    norm: str = "resail"          # 'resail' (§6.1) or 'spade' (the baseline / ablation)
    norm_hidden: int = 128        # hidden width of the RESAIL/SPADE branches (AdaIN vectors are 2×)
    ndf: int = 64
    n_layers_D: int = 4
    num_D: int = 2
    segnet_channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512)  # U-Net encoder widths
    label_ids: tuple[int, ...] | None = None  # channel c ↔ native id label_ids[c]; None: channel = native id

    def __post_init__(self) -> None:
        object.__setattr__(self, "segnet_channels", tuple(self.segnet_channels))  # lists from TOML / JSON
        self._check_label_ids()
        if self.upsampling not in UPSAMPLING:
            raise InputError(f"preset {self.name!r}: upsampling {self.upsampling!r} is not one of {sorted(UPSAMPLING)}")
        if self.norm not in NORMS:
            raise InputError(f"preset {self.name!r}: norm {self.norm!r} is not one of {NORMS}")
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
        if self.ngf < 1 or self.ndf < 1 or self.norm_hidden < 1 or self.num_D < 1 or self.n_layers_D < 2:
            raise InputError(f"preset {self.name!r}: widths and layer counts must be positive (n_layers_D ≥ 2)")

    def _check_label_ids(self) -> None:
        if self.label_ids is None:
            return
        ids = self.label_ids
        if not isinstance(ids, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
            raise InputError(f"preset {self.name!r}: label_ids must be a list of native class ids, got {ids!r}")
        ids = tuple(int(v) for v in ids)
        object.__setattr__(self, "label_ids", ids)  # lists from TOML / JSON become a hashable tuple
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
    def from_dict(cls, d: dict) -> "NetworkPreset":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"network config has unknown fields {sorted(unknown)}")
        d = dict(d)
        if "segnet_channels" in d:
            d["segnet_channels"] = tuple(d["segnet_channels"])
        return cls(**d)


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


def get_preset(name: str, **overrides) -> NetworkPreset:
    """The named preset, with any fields replaced (e.g. `get_preset('toy', norm='spade')`)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return dataclasses.replace(preset, **overrides) if overrides else preset

"""The RESAIL generator (docs/method.md §6.2–6.3): a SPADE generator whose norms are RESAIL modules.

G(label_map, guidance) → image in [−1, 1]. No z / VAE: the input is the label map nearest-
downsampled to the start grid (sh×sw) through a 3×3 conv; seven residual blocks with ×2 nearest
upsampling in between bring it to full size (5 ups; 'more' adds one between the middle blocks,
'most' then one more and an eighth block up_4 at ngf/2, as SPADE's; 'few' drops the one between
head_0 and G_middle_0). Every block's norms receive the full-resolution label map and guidance and
resize them themselves.

The same skeleton is SPADE's and CLADE's generator with their norms (`norm` 'spade', 'clade',
'clade-icpe'; synth/baselines/): those ignore the guidance (None is fine), CLADE-ICPE reads the
positional maps `dist`, and with SPADE's instance edge map in the label input (`edges`) a CLADE
norm hands one channel more to the conv after it.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .norms import make_norm, resize_guidance, resize_label_map, spectral_norm
from .presets import UPSAMPLING, NetworkPreset
from .weight_init import init_weights


class ResBlock(nn.Module):
    """out = shortcut + conv_1(lrelu(N1(conv_0(lrelu(N0(x)))))); shortcut = conv_s(Ns(x)) when
    fin ≠ fout, else x. conv_0, conv_1 and conv_s carry spectral norm; the norms do not."""

    def __init__(self, fin: int, fout: int, semantic_nc: int, norm: str = "resail", norm_hidden: int = 128,
                 edges: bool = False):
        super().__init__()
        fmid = min(fin, fout)
        extra = int(edges and norm in ("clade", "clade-icpe"))  # CLADE's edge feature: one more conv input
        self.learned_shortcut = fin != fout
        self.conv_0 = spectral_norm(nn.Conv2d(fin + extra, fmid, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmid + extra, fout, 3, padding=1))
        self.norm_0 = make_norm(norm, fin, semantic_nc, norm_hidden, edges)
        self.norm_1 = make_norm(norm, fmid, semantic_nc, norm_hidden, edges)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin + extra, fout, 1, bias=False))
            self.norm_s = make_norm(norm, fin, semantic_nc, norm_hidden, edges)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor, guidance: torch.Tensor | None,
                dist: torch.Tensor | None = None) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, label_map, guidance, dist)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, label_map, guidance, dist), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, label_map, guidance, dist), 0.2))
        return x_s + dx


class Generator(nn.Module):
    def __init__(self, semantic_nc: int, ngf: int = 64, upsampling: str = "normal",
                 norm: str = "resail", norm_hidden: int = 128, edges: bool = False):
        """`semantic_nc`: label input channels, the edge map included when `edges`."""
        super().__init__()
        if upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling {upsampling!r} is not one of {sorted(UPSAMPLING)}")
        self.n_up = UPSAMPLING[upsampling]
        nf = 16 * ngf

        def block(fin: int, fout: int) -> ResBlock:
            return ResBlock(fin, fout, semantic_nc, norm, norm_hidden, edges)

        self.fc = nn.Conv2d(semantic_nc, nf, 3, padding=1)
        self.head_0 = block(nf, nf)
        self.G_middle_0 = block(nf, nf)
        self.G_middle_1 = block(nf, nf)
        self.up_0 = block(nf, 8 * ngf)
        self.up_1 = block(8 * ngf, 4 * ngf)
        self.up_2 = block(4 * ngf, 2 * ngf)
        self.up_3 = block(2 * ngf, ngf)
        if self.n_up == 7:
            self.up_4 = block(ngf, ngf // 2)
        self.conv_img = nn.Conv2d(ngf // 2 if self.n_up == 7 else ngf, 3, 3, padding=1)

    def start_size(self, height: int, width: int) -> tuple[int, int]:
        k = 2**self.n_up
        if height % k or width % k:
            raise ValueError(f"label map {height}×{width} is not divisible by 2^{self.n_up}")
        return height // k, width // k

    def forward(self, label_map: torch.Tensor, guidance: torch.Tensor | None,
                dist: torch.Tensor | None = None) -> torch.Tensor:
        """label_map B×L×H×W one-hot (+ the edge map), guidance B×3×H×W in [−1, 1] (None for the
        baselines), dist B×2×H×W positional maps (CLADE-ICPE) → B×3×H×W in [−1, 1]."""
        sh, sw = self.start_size(*label_map.shape[-2:])
        # Resize the inputs once per resolution rather than once per norm (three norms share a
        # size in most blocks); nearest/bilinear from full size, exactly what each norm would do.
        pyramid: dict[tuple[int, int], tuple] = {}

        def run(blk: ResBlock, x: torch.Tensor) -> torch.Tensor:
            size = tuple(x.shape[-2:])
            if size not in pyramid:
                pyramid[size] = (resize_label_map(label_map, size),
                                 None if guidance is None else resize_guidance(guidance, size),
                                 None if dist is None else resize_label_map(dist, size))
            return blk(x, *pyramid[size])

        x = self.fc(resize_label_map(label_map, (sh, sw)))  # B×16ngf×sh×sw
        x = run(self.head_0, x)
        x = run(self.G_middle_0, self._up(x) if self.n_up >= 5 else x)
        if self.n_up >= 6:
            x = self._up(x)
        x = run(self.G_middle_1, x)
        for blk in (self.up_0, self.up_1, self.up_2, self.up_3) + ((self.up_4,) if self.n_up == 7 else ()):
            x = run(blk, self._up(x))
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))  # B×3×H×W

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


def build_generator(preset: NetworkPreset, device: torch.device | str | None = None) -> Generator:
    """G for a preset, initialised as the official code (xavier_normal, gain 0.02)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        G = Generator(preset.input_nc, preset.ngf, preset.upsampling, preset.norm, preset.norm_hidden, preset.edges)
    return init_weights(G)

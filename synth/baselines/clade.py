"""CLADE and CLADE-ICPE normalisation (Tan et al., "Efficient Semantic Image Synthesis via
Class-Adaptive Normalization", TPAMI 2021), as the authors' `SPADELight` computes it.

  out = BN(x)·γ[c] + β[c]             c = each pixel's class (argmax of the one-hot label map)

with one learned γ, β vector per class (no "1 +": γ starts uniform in [0, 1), β at 0, as the
authors initialise them). CLADE-ICPE modulates both with the two intra-class positional maps p
(synth/baselines/icpe.py), each through a 1×1 conv to one channel:

  γ ← γ·(1 + conv_γ(p)),  β ← β·(1 + conv_β(p))

With SPADE's instance edge map as the label input's last channel (`edges`), the authors' module
leaves it out of the class lookup and appends a 1×1 conv of it to its output as one more
channel, so every conv after a CLADE norm takes one input channel more (`extra_channels`). Label
map and positional maps are resized to x's size with nearest neighbour, as the authors do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _nearest(t: torch.Tensor, size) -> torch.Tensor:
    return t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="nearest")


class CladeNorm(nn.Module):
    """Class-adaptive normalisation; `icpe` adds the positional modulation, `edges` the edge channel."""

    def __init__(self, channels: int, label_nc: int, *, icpe: bool = False, edges: bool = False):
        super().__init__()
        self.edges = edges
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.class_gamma = nn.Parameter(torch.empty(label_nc, channels).uniform_())
        self.class_beta = nn.Parameter(torch.zeros(label_nc, channels))
        if icpe:
            self.dist_gamma = nn.Conv2d(2, 1, 1)
            self.dist_beta = nn.Conv2d(2, 1, 1)
        if edges:
            self.inst_conv = nn.Conv2d(1, 1, 1)

    @property
    def extra_channels(self) -> int:
        """Channels this norm appends to its output (the edge feature)."""
        return int(self.edges)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor, guidance: torch.Tensor | None = None,
                dist: torch.Tensor | None = None) -> torch.Tensor:
        size = x.shape[-2:]
        m = _nearest(label_map, size)                                   # B×L(+1)×h×w
        if self.edges:
            m, edge = m[:, :-1], m[:, -1:]
        cls = m.argmax(dim=1)                                                   # B×h×w
        gamma = F.embedding(cls, self.class_gamma).permute(0, 3, 1, 2)          # B×C×h×w
        beta = F.embedding(cls, self.class_beta).permute(0, 3, 1, 2)
        if hasattr(self, "dist_gamma"):
            if dist is None:
                raise ValueError("a CLADE-ICPE norm needs the intra-class positional maps (dist)")
            p = _nearest(dist, size)                                    # B×2×h×w, nearest
            gamma = gamma * (1 + self.dist_gamma(p))
            beta = beta * (1 + self.dist_beta(p))
        out = self.bn(x) * gamma + beta
        if self.edges:
            out = torch.cat([out, self.inst_conv(edge)], dim=1)
        return out

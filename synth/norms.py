"""Spatially adaptive normalisation: the RESAIL module (docs/method.md §6.1) and plain SPADE.

They share one interface with the CLADE norms (synth/baselines/clade.py), `norm(x, label_map,
guidance, dist=None)`:
  x          B×C×h×w features,
  label_map  B×L×H×W one-hot label map (any resolution; resized nearest to h×w),
  guidance   B×3×H×W guidance image (any resolution; resized bilinearly to h×w, ignored by SPADE),
  dist       B×2×H×W intra-class positional maps (read by CLADE-ICPE only).
The output is BN(x)·(1 + γ) + β with a parameter-free BatchNorm2d. Under DDP the trainer swaps
it for SyncBatchNorm with `torch.nn.SyncBatchNorm.convert_sync_batchnorm`, as the official
`spectralspadesyncbatch3x3` does. No conv in this module has spectral norm (docs/method.md §8.12).

`spectral_norm` is the spectral normalisation of G's residual blocks, D's middle layers and the
segmentation network: torch's parametrization (same buffers, same state-dict keys, the same
numbers in fp32), except that its power iteration and σ = uᵀWv always run in fp32. Under CUDA
autocast `torch.mv` runs in bf16/fp16, which leaves σ with about three significant digits, and
D's gradients move by several percent for a change of σ that small (docs/deviations.md); the
convolution that uses W/σ still runs in the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from .baselines.clade import CladeNorm


class FP32SpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization, computed with autocast off (in the weight's fp32)."""

    def _power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        if weight_mat.is_meta:  # no values to iterate on (`resail model summary`): skip torch's slow meta ops
            return
        super()._power_method(weight_mat, n_power_iterations)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        device = weight.device.type
        if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
            return super().forward(weight)  # also the meta device (`resail model summary`)
        with torch.autocast(device, enabled=False):
            return super().forward(weight)


def spectral_norm(module: nn.Module) -> nn.Module:
    """`torch.nn.utils.parametrizations.spectral_norm(module)` for a conv or linear layer (the
    same random u, v draws), with σ in fp32 under autocast."""
    parametrize.register_parametrization(module, "weight", FP32SpectralNorm(module.weight))
    return module


def resize_label_map(label_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if label_map.shape[-2:] == size:
        return label_map
    return F.interpolate(label_map, size=size, mode="nearest")


def resize_guidance(guidance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if guidance.shape[-2:] == size:
        return guidance
    return F.interpolate(guidance, size=size, mode="bilinear", align_corners=False)


def conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=padding)


def adain(z: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """scale·IN(z) + bias with image-level B×C vectors; no affine IN, no "+1" on the scale."""
    return F.instance_norm(z, eps=1e-5) * scale[:, :, None, None] + bias[:, :, None, None]


class SpadeNorm(nn.Module):
    """SPADE (Park et al. 2019): γ, β from a 2-layer conv net on the label map."""

    def __init__(self, channels: int, semantic_nc: int, hidden: int = 128):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.shared = conv3x3(semantic_nc, hidden)
        self.gamma = conv3x3(hidden, channels)
        self.beta = conv3x3(hidden, channels)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor, guidance: torch.Tensor | None = None,
                dist: torch.Tensor | None = None) -> torch.Tensor:
        m = resize_label_map(label_map, x.shape[-2:])  # B×L×h×w
        a = F.relu(self.shared(m))
        return self.bn(x) * (1 + self.gamma(a)) + self.beta(a)


class ResailNorm(nn.Module):
    """RESAIL normalisation: SPADE's coarse γ_c, β_c from the label map mixed with fine γ_f, β_f
    computed from the guidance by a conv net whose two AdaIN layers take image-level scale/bias
    vectors from the label map. Learnable sigmoid weights mix the two, starting at 0.5 each."""

    def __init__(self, channels: int, semantic_nc: int, hidden: int = 128):
        super().__init__()
        self.hidden = hidden
        self.bn = nn.BatchNorm2d(channels, affine=False)
        # coarse branch (SPADE)
        self.coarse_shared = conv3x3(semantic_nc, hidden)
        self.coarse_gamma = conv3x3(hidden, channels)
        self.coarse_beta = conv3x3(hidden, channels)
        # AdaIN parameters: image-level vectors c1 (layer 1) and c2 = 1×1 conv of c1 (layer 2)
        self.adain_conv = conv3x3(semantic_nc, 2 * hidden, stride=2, padding=0)
        self.adain_fc = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        # fine branch on the guidance
        self.fine_0 = conv3x3(3, hidden)
        self.fine_1 = conv3x3(hidden, hidden)
        self.fine_2 = conv3x3(hidden, hidden)
        self.fine_gamma = conv3x3(hidden, channels)
        self.fine_beta = conv3x3(hidden, channels)
        # mixing logits: sigmoid(0) = 0.5
        self.mix_gamma = nn.Parameter(torch.zeros(()))
        self.mix_beta = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, label_map: torch.Tensor, guidance: torch.Tensor,
                dist: torch.Tensor | None = None) -> torch.Tensor:
        size = x.shape[-2:]
        m = resize_label_map(label_map, size)  # B×L×h×w
        g = resize_guidance(guidance, size)    # B×3×h×w

        a = F.relu(self.coarse_shared(m))
        gamma_c, beta_c = self.coarse_gamma(a), self.coarse_beta(a)

        c1 = self.adain_conv(m).mean(dim=(2, 3), keepdim=True)  # B×2h×1×1
        c2 = self.adain_fc(c1).flatten(1)                        # B×2h
        c1 = c1.flatten(1)
        k = self.hidden
        f = F.relu(adain(self.fine_0(g), c1[:, :k], c1[:, k:]))
        f = F.relu(adain(self.fine_1(f), c2[:, :k], c2[:, k:]))
        f = self.fine_2(f)
        gamma_f, beta_f = self.fine_gamma(f), self.fine_beta(f)

        alpha_g, alpha_b = torch.sigmoid(self.mix_gamma), torch.sigmoid(self.mix_beta)
        gamma = alpha_g * gamma_f + (1 - alpha_g) * gamma_c
        beta = alpha_b * beta_f + (1 - alpha_b) * beta_c
        return self.bn(x) * (1 + gamma) + beta


def make_norm(kind: str, channels: int, semantic_nc: int, hidden: int = 128, edges: bool = False) -> nn.Module:
    """A norm of `kind` (synth/presets.py NORMS) over `semantic_nc` label input channels, the last of
    them the instance edge map when `edges` (SPADE and RESAIL take it as one more channel, CLADE apart)."""
    if kind == "resail":
        return ResailNorm(channels, semantic_nc, hidden)
    if kind == "spade":
        return SpadeNorm(channels, semantic_nc, hidden)
    if kind in ("clade", "clade-icpe"):
        return CladeNorm(channels, semantic_nc - int(edges), icpe=kind == "clade-icpe", edges=edges)
    raise ValueError(f"unknown norm {kind!r}; expected 'resail', 'spade', 'clade' or 'clade-icpe'")

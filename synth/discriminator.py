"""The two-pathway multi-scale discriminator (SESAME-style, docs/method.md §6.4).

At each scale an image pathway (RGB) and a label pathway (one-hot map) of identical layout run
side by side; the label features, summed over channels into one map, gate the image features:
h = x_img + x_img·Σ_c x_sem[c]; a plain 4×4 conv gives the patch logits.

D(label_map, image) returns one list per scale: [img L1, …, img Ln (before the merge), logits].
Feature matching uses every entry but the last; the GAN losses use the last.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .norms import spectral_norm
from .presets import NetworkPreset
from .weight_init import init_weights

KERNEL, PAD = 4, 2  # pad = ceil((4 - 1) / 2) as in pix2pixHD/SPADE


def pathway(in_nc: int, ndf: int, n_layers: int) -> nn.ModuleList:
    """L1: plain conv stride 2 (no norm, no SN); L2..Ln: SN conv (no bias) + IN + LReLU, stride 2
    except the last (stride 1); widths double up to 512."""
    layers = [nn.Sequential(nn.Conv2d(in_nc, ndf, KERNEL, stride=2, padding=PAD), nn.LeakyReLU(0.2))]
    nf = ndf
    for n in range(1, n_layers):
        nf_prev, nf = nf, min(nf * 2, 512)
        stride = 1 if n == n_layers - 1 else 2
        layers.append(nn.Sequential(
            spectral_norm(nn.Conv2d(nf_prev, nf, KERNEL, stride=stride, padding=PAD, bias=False)),
            nn.InstanceNorm2d(nf, affine=False),
            nn.LeakyReLU(0.2),
        ))
    return nn.ModuleList(layers)


class TwoPathwayDiscriminator(nn.Module):
    """One scale."""

    def __init__(self, semantic_nc: int, ndf: int = 64, n_layers: int = 4):
        super().__init__()
        self.image_path = pathway(3, ndf, n_layers)
        self.label_path = pathway(semantic_nc, ndf, n_layers)
        nf = min(ndf * 2 ** (n_layers - 1), 512)
        self.head = nn.Conv2d(nf, 1, KERNEL, stride=1, padding=PAD)

    def forward(self, label_map: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h_img = image
        for layer in self.image_path:
            h_img = layer(h_img)
            feats.append(h_img)
        h_sem = label_map
        for layer in self.label_path:
            h_sem = layer(h_sem)
        h = h_img + h_img * h_sem.sum(dim=1, keepdim=True)  # B×nf×h×w
        feats.append(self.head(h))                          # B×1×h'×w'
        return feats


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, semantic_nc: int, ndf: int = 64, n_layers: int = 4, num_D: int = 2):
        super().__init__()
        self.scales = nn.ModuleList(TwoPathwayDiscriminator(semantic_nc, ndf, n_layers) for _ in range(num_D))

    def forward(self, label_map: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """label_map B×L×H×W, image B×3×H×W → per scale [features…, logits]."""
        outs = []
        for i, D in enumerate(self.scales):
            if i:
                label_map, image = _downsample(label_map), _downsample(image)
            outs.append(D(label_map, image))
        return outs


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def build_discriminator(preset: NetworkPreset, device: torch.device | str | None = None) -> MultiscaleDiscriminator:
    with torch.device(device) if device is not None else contextlib.nullcontext():
        D = MultiscaleDiscriminator(preset.input_nc, preset.ndf, preset.n_layers_D, preset.num_D)
    return init_weights(D)

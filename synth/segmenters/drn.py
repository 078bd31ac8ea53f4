"""DRN-D-105 for Cityscapes (Yu, Koltun & Funkhouser, CVPR 2017), as fyu/drn evaluates it.

Network (fyu/drn `drn.py` `drn_d_105` inside `segment.py` `DRNSeg`): `base` is the DRN-D trunk
without its classifier — a 7×7 stem, two plain 3×3 conv levels (16, 32 channels; the second strided),
bottleneck levels of 3, 4 (both strided), 23 (dilation 2) and 3 (dilation 4) blocks, then two
3×3 conv levels of 512 channels (dilation 2, then 1): output stride 8. `seg` is a 1×1 conv to the 19
Cityscapes train classes, and `up` a fixed bilinear ConvTranspose2d (kernel 16, stride 8, padding 4,
one group per class) that brings the logits back to 8× their size. Its weights are part of the
published file and are used as loaded.

Inference (`segment.py test`, single scale): the whole image, RGB / 255, normalised with the mean and
std of `datasets/cityscapes/info.json`, no resize; the argmax of the upsampled logits is a trainId
0..18 (the authors take it after a LogSoftmax, which does not move it). The network returns
8·⌈H/8⌉ × 8·⌈W/8⌉ logits; for sizes that are not multiples of 8 (never the case on Cityscapes'
2048×1024) the top-left H×W block, which is aligned with the input, is kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .base import Published, Segmenter, load_published
from .resnet import EXPANSION, bottleneck_layer

NUM_CLASSES = 19
# fyu/drn datasets/cityscapes/info.json (training-set statistics of RGB / 255).
MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)

PUBLISHED = Published(what="a DRN-D-105 Cityscapes state dict", count=543, signature="seg.weight",
                      url="http://go.yf.io/drn-cityscapes-models (drn-d-105_ms_cityscapes.pth)",
                      num_batches_tracked=False)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """One DRN-D conv level: 3×3 conv (padding = dilation), BatchNorm, ReLU (keys `.0`, `.1`)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def drn_d_105_trunk() -> nn.Sequential:
    """The nine levels of DRN-D-105 before its classifier (`base.0` … `base.8`)."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 7, padding=3, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)),
        conv_bn_relu(16, 16),
        conv_bn_relu(16, 32, stride=2),
        bottleneck_layer(32, 64, 3, stride=2),
        bottleneck_layer(64 * EXPANSION, 128, 4, stride=2),
        bottleneck_layer(128 * EXPANSION, 256, 23, dilation=2),
        bottleneck_layer(256 * EXPANSION, 512, 3, dilation=4),
        conv_bn_relu(512 * EXPANSION, 512, dilation=2),
        conv_bn_relu(512, 512),
    )


def bilinear_kernel(size: int) -> Tensor:
    """The size×size bilinear interpolation kernel fyu/drn's `fill_up_weights` writes."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return (ramp[:, None] * ramp[None, :]).float()


class DRNSeg(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.base = drn_d_105_trunk()
        self.seg = nn.Conv2d(512, num_classes, 1)
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, output_padding=0,
                                     groups=num_classes, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_kernel(16).expand_as(self.up.weight))
        self.up.weight.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.seg(self.base(x)))  # B×19×8⌈H/8⌉×8⌈W/8⌉


class DRNSegmenter(Segmenter):
    name = "drn-d-105"

    def _predict(self, rgb: np.ndarray) -> Tensor:
        h, w = rgb.shape[:2]
        logits = self.net(normalize(rgb).to(self.device))
        return logits[0, :, :h, :w].argmax(0)


def normalize(rgb: np.ndarray) -> Tensor:
    """1×3×H×W: RGB / 255 minus the Cityscapes mean, over the std (fyu/drn's ToTensor + Normalize)."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)
    x = x.sub(torch.tensor(MEAN)[:, None, None]).div(torch.tensor(STD)[:, None, None])
    return x[None]


def load_drn(weights: list[Path], device: torch.device) -> DRNSegmenter:
    net = DRNSeg()
    load_published(net, weights[0], PUBLISHED)
    protocol = {
        "segmenter": "drn-d-105", "dataset": "cityscapes", "ids": "Cityscapes trainIds 0..18",
        "source": "fyu/drn segment.py test (single scale)",
        "normalisation": {"input": "RGB / 255", "mean": list(MEAN), "std": list(STD)},
        "scales": [1.0], "resize": "none (full image)",
        "upsampling": "fixed bilinear ConvTranspose2d x8 (up.weight), top-left HxW", "image_decoder": "PIL",
    }
    return DRNSegmenter(net, device, protocol)

"""DeepLab-v2 ResNet-101 for COCO-Stuff 164k (Chen et al., TPAMI 2017), as kazuto1011/deeplab-pytorch
evaluates it (`configs/cocostuff164k.yaml`, `main.py test`, the 100k-iteration MSC checkpoint).

Network (`libs/models/deeplabv2.py`, `resnet.py`): the Caffe-style ResNet-101 — a 7×7/2 conv stem and
a 3×3/2 max-pool with ceil_mode, bottlenecks whose stride sits on the first 1×1 conv (`reduce`),
levels of 3, 4, 23, 3 blocks with strides 1, 2, 1, 1 and dilations 1, 1, 2, 4 (output stride 8) —
then ASPP: four 3×3 convs with bias at rates 6, 12, 18, 24, summed, giving 182 class logits. Every
conv/BN pair is a `_ConvBnReLU` (`conv`, `bn`); the projection shortcut is `shortcut`.

The published file is the state dict of the multi-scale wrapper (`libs/models/msc.py` `MSC`, hence
the `base.` prefix): the network runs on the input and on it bilinearly rescaled by 0.5 and 0.75
(`F.interpolate(scale_factor=p, align_corners=False)`); the two smaller logit maps are upsampled to
the full-scale one and the pixel-wise maximum over the three is the output.

Inference (`main.py test`, no CRF): the image as cv2 reads it (BGR, 0..255, float32) minus the mean
(B 104.008, G 116.669, R 122.675), no resize; the MSC logits are bilinearly upsampled
(align_corners=False) to the image size and the argmax is a COCO-Stuff id 0..181.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Published, Segmenter, load_published

NUM_CLASSES = 182
MEAN_BGR = (104.008, 116.669, 122.675)
ATROUS_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)

PUBLISHED = Published(what="a DeepLab-v2 ResNet-101 MSC COCO-Stuff 164k state dict", count=632,
                      signature="base.aspp.c0.weight",
                      url="https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
                          "deeplabv2_resnet101_msc-cocostuff164k-100000.pth")


class ConvBn(nn.Sequential):
    """conv (no bias) + BatchNorm (eps 1e-5), with a ReLU unless `relu=False` (`_ConvBnReLU`)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, dilation: int, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        if relu:
            self.relu = nn.ReLU()


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, project: bool):
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBn(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = ConvBn(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBn(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBn(cin, cout, 1, stride, 0, 1, relu=False) if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


def res_layer(blocks: int, cin: int, cout: int, stride: int, dilation: int) -> nn.Sequential:
    """`block1` … `blockN`; only the first strides and projects its shortcut."""
    layer = nn.Sequential()
    for i in range(blocks):
        layer.add_module(f"block{i + 1}", Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                     dilation, project=i == 0))
    return layer


class ASPP(nn.Module):
    def __init__(self, cin: int, num_classes: int, rates=ATROUS_RATES):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, num_classes, 3, 1, padding=rate, dilation=rate, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        return sum(stage(x) for stage in self.children())


class DeepLabV2(nn.Sequential):
    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.layer1 = nn.Sequential()
        self.layer1.add_module("conv1", ConvBn(3, 64, 7, 2, 3, 1))
        self.layer1.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.layer2 = res_layer(3, 64, 256, 1, 1)
        self.layer3 = res_layer(4, 256, 512, 2, 1)
        self.layer4 = res_layer(23, 512, 1024, 1, 2)
        self.layer5 = res_layer(3, 1024, 2048, 1, 4)
        self.aspp = ASPP(2048, num_classes)


class MSC(nn.Module):
    """Max over the logits at full scale and at MSC_SCALES, at the full-scale logits' size."""

    def __init__(self, base: nn.Module, scales=MSC_SCALES):
        super().__init__()
        self.base = base
        self.scales = scales

    def forward(self, x: Tensor) -> Tensor:
        logits = self.base(x)
        size = logits.shape[2:]
        pyramid = [logits]
        for p in self.scales:
            scaled = self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False))
            pyramid.append(F.interpolate(scaled, size=size, mode="bilinear", align_corners=False))
        return torch.stack(pyramid).max(dim=0).values


class DeepLabSegmenter(Segmenter):
    name = "deeplabv2-r101"
    decoder = "cv2"

    def _predict(self, rgb: np.ndarray) -> Tensor:
        h, w = rgb.shape[:2]
        logits = self.net(normalize(rgb).to(self.device))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)


def normalize(rgb: np.ndarray) -> Tensor:
    """1×3×H×W float32 BGR 0..255 minus MEAN_BGR (subtracted in float64, then cast, as the authors'
    in-place numpy subtraction does)."""
    bgr = rgb[:, :, ::-1].astype(np.float64) - np.array(MEAN_BGR)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1), dtype=np.float32))[None]


def load_deeplab(weights: list[Path], device: torch.device) -> DeepLabSegmenter:
    net = MSC(DeepLabV2())
    load_published(net, weights[0], PUBLISHED)
    protocol = {
        "segmenter": "deeplabv2-r101", "dataset": "cocostuff", "ids": "COCO-Stuff 0..181",
        "source": "kazuto1011/deeplab-pytorch main.py test, config cocostuff164k, no CRF",
        "normalisation": {"input": "BGR 0..255", "mean_bgr": list(MEAN_BGR), "std": None},
        "scales": [1.0, *MSC_SCALES], "resize": "none (full image); MSC rescales by F.interpolate(scale_factor)",
        "upsampling": "pixel-wise max of the MSC logits, bilinear (align_corners=False) to the image size, argmax",
        "image_decoder": "cv2",
    }
    return DeepLabSegmenter(net, device, protocol)

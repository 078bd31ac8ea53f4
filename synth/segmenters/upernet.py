"""UperNet with a ResNet-101 encoder for ADE20K (Xiao et al., ECCV 2018), as CSAILVision's
semantic-segmentation-pytorch evaluates it (`config/ade20k-resnet101-upernet.yaml`, epoch 50).

Encoder (`mit_semseg/models/resnet.py` `resnet101` wrapped by `models.py` `Resnet`): a deep stem of
three 3×3 convs (64, 64, 128 channels; the first strided) and a 3×3/2 max-pool, then the four
bottleneck levels of ResNet-101 (3, 4, 23, 3 blocks; strides 1, 2, 2, 2) whose four outputs (256,
512, 1024, 2048 channels at strides 4…32) feed the decoder. Decoder (`models.py` `UPerNet`,
fpn_dim 512): a pyramid pooling module on the last map (adaptive average pools 1, 2, 3, 6, each
*upsampled first, then* a 1×1 conv + BN + ReLU, concatenated with the map and fused by a 3×3 conv), a
top-down FPN (1×1 lateral convs, bilinear upsampling, 3×3 output convs), and the fusion of the four
levels at stride 4 into 150 class logits.

Inference (`test.py`/`eval_multipro.py` with `TestDataset`/`ValDataset`): for each short side s in
300, 375, 450, 525, 600, scale = min(s / short side, 1000 / long side); the target height and width
are `int(side · scale)` rounded *up* to a multiple of 32; the uint8 RGB image is resized to it with
PIL bilinear, divided by 255 and normalised with the ImageNet mean/std; the logits are bilinearly
upsampled (align_corners=False) to the image size, soft-maxed, and averaged over the five scales.
The argmax is a 0-based class; +1 gives the ADE20K id 1..150 (0 = "other" is never predicted).
`scales="single"` instead runs once on the image at its own size, without any resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...choices import UPERNET_SCALES
from ...errors import ConfigError
from .base import Published, Segmenter, load_published
from .resnet import bottleneck_layer

NUM_CLASSES = 150
SHORT_SIDES = (300, 375, 450, 525, 600)
MAX_SIDE = 1000
PADDING_CONSTANT = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PPM_SCALES = (1, 2, 3, 6)
FPN_DIM = 512

_URL = "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet101-upernet/"
ENCODER = Published(what="a CSAILVision UperNet ResNet-101 encoder state dict", count=954,
                    signature="conv3.weight", url=_URL + "encoder_epoch_50.pth", sync_bn_extras=True)
DECODER = Published(what="a CSAILVision UperNet ADE20K decoder state dict", count=110,
                    signature="conv_last.1.weight", url=_URL + "decoder_epoch_50.pth", sync_bn_extras=True)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    """conv (no bias) + BatchNorm + ReLU, keys `.0`, `.1` (the authors' `conv3x3_bn_relu`, and the
    1×1 lateral and pooling branches)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ResNet101Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = bottleneck_layer(128, 64, 3)
        self.layer2 = bottleneck_layer(256, 128, 4, stride=2)
        self.layer3 = bottleneck_layer(512, 256, 23, stride=2)
        self.layer4 = bottleneck_layer(1024, 512, 3, stride=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(self.relu(self.bn3(self.conv3(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features  # strides 4, 8, 16, 32


def _resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerNetDecoder(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, fc_dim: int = 2048, fpn_inplanes=(256, 512, 1024, 2048)):
        super().__init__()
        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in PPM_SCALES)
        self.ppm_conv = nn.ModuleList(conv_bn_relu(fc_dim, 512, 1) for _ in PPM_SCALES)
        self.ppm_last_conv = conv_bn_relu(fc_dim + len(PPM_SCALES) * 512, FPN_DIM)
        self.fpn_in = nn.ModuleList(conv_bn_relu(c, FPN_DIM, 1) for c in fpn_inplanes[:-1])
        self.fpn_out = nn.ModuleList(nn.Sequential(conv_bn_relu(FPN_DIM, FPN_DIM)) for _ in fpn_inplanes[:-1])
        self.conv_last = nn.Sequential(conv_bn_relu(len(fpn_inplanes) * FPN_DIM, FPN_DIM),
                                       nn.Conv2d(FPN_DIM, num_classes, 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        top = features[-1]
        pooled = [conv(_resize(pool(top), top.shape[2:])) for pool, conv in zip(self.ppm_pooling, self.ppm_conv)]
        f = self.ppm_last_conv(torch.cat([top, *pooled], 1))
        pyramid = [f]
        for i in reversed(range(len(features) - 1)):
            lateral = self.fpn_in[i](features[i])
            f = lateral + _resize(f, lateral.shape[2:])
            pyramid.append(self.fpn_out[i](f))
        pyramid.reverse()  # strides 4 … 32
        size = pyramid[0].shape[2:]
        fused = torch.cat([pyramid[0], *(_resize(p, size) for p in pyramid[1:])], 1)
        return self.conv_last(fused)  # B×150×H/4×W/4


class UperNet(nn.Module):
    """Encoder + decoder, kept as the two modules of the two published files."""

    def __init__(self):
        super().__init__()
        self.encoder = ResNet101Encoder()
        self.decoder = UPerNetDecoder()

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def round_up(x: int, p: int = PADDING_CONSTANT) -> int:
    """The smallest multiple of p that is ≥ x (the authors' `round2nearest_multiple`)."""
    return ((x - 1) // p + 1) * p


def input_sizes(height: int, width: int, scales: str = "multi") -> list[tuple[int, int]]:
    """The (height, width) the image is resized to for each test scale."""
    if scales == "single":
        return [(height, width)]
    sizes = []
    for short in SHORT_SIDES:
        scale = min(short / float(min(height, width)), MAX_SIDE / float(max(height, width)))
        sizes.append((round_up(int(height * scale)), round_up(int(width * scale))))
    return sizes


class UperNetSegmenter(Segmenter):
    name = "upernet-r101"

    def __init__(self, net: UperNet, device: torch.device, protocol: dict, scales: str):
        super().__init__(net, device, protocol)
        self.scales = scales

    def _predict(self, rgb: np.ndarray) -> Tensor:
        from PIL import Image

        h, w = rgb.shape[:2]
        sizes = input_sizes(h, w, self.scales)
        image = Image.fromarray(rgb)
        scores = torch.zeros(1, NUM_CLASSES, h, w, device=self.device)
        for th, tw in sizes:
            resized = rgb if (th, tw) == (h, w) else np.asarray(image.resize((tw, th), Image.BILINEAR))
            logits = self.net(normalize(resized).to(self.device))
            scores = scores + F.softmax(_resize(logits, (h, w)), dim=1) / len(sizes)
        return scores[0].argmax(0) + 1


def normalize(rgb: np.ndarray) -> Tensor:
    """1×3×H×W: float32 RGB / 255, minus the ImageNet mean, over the std (the authors' img_transform)."""
    x = torch.from_numpy(np.float32(rgb) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])[None]


def load_upernet(weights: list[Path], device: torch.device, scales: str = "multi") -> UperNetSegmenter:
    if scales not in UPERNET_SCALES:
        raise ConfigError("upernet_scales", f"UperNet scales {scales!r}: choose one of {', '.join(UPERNET_SCALES)}")
    if len(weights) != 2:
        raise ConfigError("weights", f"upernet-r101 needs two weight files, the encoder then the decoder "
                         f"(encoder_epoch_50.pth, decoder_epoch_50.pth from {_URL}); got {len(weights)}")
    net = UperNet()
    load_published(net.encoder, weights[0], ENCODER)
    load_published(net.decoder, weights[1], DECODER)
    multi = scales == "multi"
    protocol = {
        "segmenter": "upernet-r101", "dataset": "ade20k", "ids": "ADE20K 1..150 (0 = other, never predicted)",
        "source": "CSAILVision/semantic-segmentation-pytorch eval_multipro.py, config ade20k-resnet101-upernet",
        "normalisation": {"input": "RGB / 255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "scales": {"short_sides": list(SHORT_SIDES), "max_side": MAX_SIDE} if multi else "single (the image's size)",
        "resize": (f"PIL bilinear on the uint8 image, each side rounded up to a multiple of {PADDING_CONSTANT}"
                   if multi else "none"),
        "upsampling": "bilinear (align_corners=False) to the image size, softmax, mean over scales, argmax + 1",
        "image_decoder": "PIL",
    }
    return UperNetSegmenter(net, device, protocol, scales)

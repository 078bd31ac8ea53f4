"""The bottleneck residual block that DRN-D-105 (fyu/drn) and CSAILVision's ResNet-101 encoder share.

Both follow torchvision's ResNet layout: 1×1 reduce, 3×3 with the stride (and, in DRN, a dilation
with equal padding), 1×1 expand ×4, each followed by a BatchNorm; a 1×1 strided conv + BatchNorm
(`downsample.0`, `downsample.1`) projects the shortcut when the shape changes. The attribute names
(`conv1`, `bn1`, …, `downsample`) are those of the authors' state dicts.
"""

from __future__ import annotations

from torch import Tensor, nn

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def bottleneck_layer(inplanes: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """`blocks` bottlenecks; the first carries the stride and, when the shape changes, the projection.
    Every block uses the same dilation (DRN-D's `new_level=False` layers; 1 elsewhere)."""
    downsample = None
    if stride != 1 or inplanes != planes * EXPANSION:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * EXPANSION))
    layers = [Bottleneck(inplanes, planes, stride, dilation, downsample)]
    layers += [Bottleneck(planes * EXPANSION, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

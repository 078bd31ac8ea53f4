"""Losses of RESAIL training (docs/method.md §5.2).

D outputs are what `MultiscaleDiscriminator` returns: one list per scale, [features…, logits].
Every function here returns the *unweighted* term; the trainer multiplies by `LossWeights`
(the paper's λ: FM 10, VGG 10, seg 5), so no weight is applied twice.

  GAN      hinge; on the logits of each scale, averaged over scales
  FM       L1 between fake and detached real D features (all but the logits), summed over the
           layers of a scale and averaged over scales
  VGG      L1 between VGG19 relu1_1..relu5_1 features with layer weights 1/32, 1/16, 1/8, 1/4, 1;
           inputs are the raw [−1, 1] images (no ImageNet normalisation), as the official code
  seg      per-pixel CE of a frozen segmenter on the fake image against the label map, with
           per-batch class balancing w_c = N/(n_c·K) over ALL classes (N valid pixels, n_c pixels
           of class c, K classes present). The official code took the argmax over only the first
           35 channels (docs/method.md §8.7), which sends every ADE20K/COCO class ≥ 35 to class 0; we do
           not. The trainer ignores void (channel 0); the official code counts it as one more
           class, which `--recipe official` restores (`ignore_index=None`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
# torchvision's vgg19().features indices: each slice ends at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
_VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))


@dataclass(frozen=True)
class LossWeights:
    gan: float = 1.0
    feat: float = 10.0   # λ_feat
    vgg: float = 10.0    # λ_vgg
    seg: float = 5.0     # hard-coded in the official code


# ---------------------------------------------------------------- GAN and feature matching


def _logits(outs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [scale[-1] for scale in outs]


def hinge_d_real(outs: list[list[torch.Tensor]]) -> torch.Tensor:
    """D on real images: mean relu(1 − D(x)), averaged over scales."""
    return torch.stack([F.relu(1 - d).mean() for d in _logits(outs)]).mean()


def hinge_d_fake(outs: list[list[torch.Tensor]]) -> torch.Tensor:
    """D on fake images: mean relu(1 + D(x̂)), averaged over scales."""
    return torch.stack([F.relu(1 + d).mean() for d in _logits(outs)]).mean()


def hinge_g(outs: list[list[torch.Tensor]]) -> torch.Tensor:
    """G's adversarial term: −mean D(x̂), averaged over scales."""
    return torch.stack([-d.mean() for d in _logits(outs)]).mean()


def feature_matching(fake_outs: list[list[torch.Tensor]], real_outs: list[list[torch.Tensor]]) -> torch.Tensor:
    """Σ_layers L1(fake, real.detach()) per scale, averaged over scales (× λ_feat by the trainer)."""
    per_scale = [
        sum(F.l1_loss(f, r.detach()) for f, r in zip(fake[:-1], real[:-1]))
        for fake, real in zip(fake_outs, real_outs)
    ]
    return torch.stack(per_scale).mean()


# ---------------------------------------------------------------- VGG perceptual


def default_vgg_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def vgg19_features_to_relu5_1() -> nn.Sequential:
    """VGG19's conv layers up to relu5_1, laid out like torchvision's `vgg19().features[:30]`
    so its state-dict keys load; built without the 120M-parameter classifier."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


def load_vgg19_features(path: str | Path | None = None) -> nn.Sequential:
    """ImageNet VGG19 features from torchvision's checkpoint file (the hub cache by default)."""
    path = Path(path) if path is not None else default_vgg_weights_path()
    if not path.is_file():
        raise InputError(
            f"VGG19 ImageNet weights not found at {path}. Download {VGG19_URL} to "
            f"{default_vgg_weights_path()} (or run `python -c \"import torchvision; "
            "torchvision.models.vgg19(weights='IMAGENET1K_V1')\"` on a machine with network access), "
            "pass --vgg-weights PATH, or train without the perceptual loss with --no-vgg"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable VGG19 checkpoint ({e}); download {VGG19_URL} again") from e
    features = vgg19_features_to_relu5_1()
    wanted = {k.removeprefix("features."): v for k, v in state.items()
              if k.startswith("features.") and int(k.split(".")[1]) < len(features)}
    try:
        features.load_state_dict(wanted)
    except RuntimeError as e:
        raise InputError(f"{path}: does not hold torchvision VGG19 weights ({e})") from e
    return features


class VGGLoss(nn.Module):
    """Σ_i w_i·L1(φ_i(fake), φ_i(real)) over relu1_1..relu5_1; φ frozen, gradients flow to `fake`."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.slices = nn.ModuleList(features[a:b] for a, b in _VGG_SLICES)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def pretrained(cls, path: str | Path | None = None) -> "VGGLoss":
        return cls(load_vgg19_features(path))

    @classmethod
    def random_init(cls) -> "VGGLoss":
        """Untrained VGG19 features: for tests and benchmarks only."""
        return cls(vgg19_features_to_relu5_1())

    def train(self, mode: bool = True) -> "VGGLoss":
        return super().train(False)  # always eval: the features are frozen

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_feats = self._features(real)
        return sum(w * F.l1_loss(f, r) for w, f, r in zip(VGG_LAYER_WEIGHTS, self._features(fake), real_feats))


# ---------------------------------------------------------------- segmentation


def class_balance_weights(target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """Per-class weights w_c = N/(n_c·K) of one batch (0 for absent classes)."""
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    counts = torch.bincount(target[valid].flatten(), minlength=num_classes).float()
    present = counts > 0
    n, k = counts.sum(), present.sum()
    return torch.where(present, n / (counts.clamp(min=1) * k.clamp(min=1)), torch.zeros_like(counts))


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Class-balanced CE: mean over valid pixels p of w_{y(p)}·CE(p). logits B×K×H×W, target B×H×W long."""
    num_classes = logits.shape[1]
    w = class_balance_weights(target, num_classes, ignore_index)
    ii = -100 if ignore_index is None else ignore_index
    ce = F.cross_entropy(logits.float(), target, ignore_index=ii, reduction="none")  # B×H×W
    valid = target != ii
    pixel_w = torch.where(valid, w[target.clamp(0, num_classes - 1)], torch.zeros_like(ce))
    return (ce * pixel_w).sum() / valid.sum().clamp(min=1)


def label_map_to_target(label_map: torch.Tensor) -> torch.Tensor:
    """B×L×H×W one-hot → B×H×W class index over all L channels."""
    return label_map.argmax(dim=1)


class SegmentationLoss(nn.Module):
    """L_seg: a frozen segmenter (eval mode) on the fake image, balanced CE against the label map."""

    def __init__(self, segnet: nn.Module, ignore_index: int | None = None):
        super().__init__()
        self.segnet = segnet.requires_grad_(False).eval()
        self.ignore_index = ignore_index

    def train(self, mode: bool = True) -> "SegmentationLoss":
        return super().train(False)

    def forward(self, fake: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return balanced_cross_entropy(self.segnet(fake), label_map_to_target(label_map), self.ignore_index)

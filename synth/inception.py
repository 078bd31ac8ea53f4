"""InceptionV3 pool3 features for FID, with the layout of the TF-ported FID Inception.

FID papers (RESAIL included, docs/method.md §7) report numbers from pytorch-fid, whose network is the
2015 TensorFlow Inception graph ported to PyTorch. It differs from torchvision's Inception3 in
three places: the 3×3 average pools of the A, C and first E blocks ignore padded pixels
(`count_include_pad=False`), the last E block pools with a max instead of an average, and the
classifier has 1008 outputs. The module names below follow torchvision's (`Conv2d_1a_3x3`,
`Mixed_5b.branch5x5_1.conv`, `fc` …), so `pt_inception-2015-12-05-6726825d.pth` loads into
`FIDInception` as it is, with strict key checking.

Input: B×3×H×W RGB in [0, 1], any size; it is resized to 299×299 (bilinear, align_corners=False,
no antialiasing) and mapped to [−1, 1], as pytorch-fid does. Output: B×2048 pool3 features.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
FEATURE_DIM = 2048
INPUT_SIZE = 299


class ConvBN(nn.Module):
    """conv (no bias) → BatchNorm (eps 1e-3, running statistics) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # The TF graph averages over the real pixels only, so border means are not diluted by zeros.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _row(cin: int, cout: int) -> ConvBN:   # 1×7 kernel
    return ConvBN(cin, cout, (1, 7), padding=(0, 3))


def _col(cin: int, cout: int) -> ConvBN:   # 7×1 kernel
    return ConvBN(cin, cout, (7, 1), padding=(3, 0))


class MixedA(nn.Module):
    """35×35 block: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1 (Mixed_5b … 5d)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class ReductionB(nn.Module):
    """35→17 reduction: stride-2 3×3 | 1×1→3×3→stride-2 3×3 | stride-2 max-pool (Mixed_6a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):
    """17×17 block with factorised 7×7 convs of width c7 (Mixed_6b … 6e)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = _row(c7, c7)
        self.branch7x7_3 = _col(c7, 192)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _col(c7, c7)
        self.branch7x7dbl_3 = _row(c7, c7)
        self.branch7x7dbl_4 = _col(c7, c7)
        self.branch7x7dbl_5 = _row(c7, 192)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            c = conv(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class ReductionD(nn.Module):
    """17→8 reduction: 1×1→stride-2 3×3 | 1×1→1×7→7×1→stride-2 3×3 | stride-2 max-pool (Mixed_7a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _row(192, 192)
        self.branch7x7x3_3 = _col(192, 192)
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """8×8 block with split 1×3 / 3×1 heads; `pool` is 'avg' (Mixed_7b) or 'max' (Mixed_7c)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(pool)
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        s = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """The FID Inception up to pool3: B×3×H×W in [0, 1] → B×2048. `fc` exists only so that the
    published weight file loads strictly; it is never evaluated."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, "avg")
        self.Mixed_7c = MixedE(2048, "max")
        self.fc = nn.Linear(FEATURE_DIM, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1                                                  # B×3×299×299 in [−1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)                               # B×64×73×73
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)  # B×192×35×35
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)                                 # … B×2048×8×8
        return x.mean(dim=(2, 3))                                      # B×2048


def default_weights_path() -> Path:
    """Where torch hub (and pytorch-fid) cache the weight file: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def find_weights(path: str | Path | None = None) -> Path:
    """`path` when given, else the torch hub cache; a clear error saying how to get the file."""
    where = Path(path) if path is not None else default_weights_path()
    if where.is_file():
        return where
    how = (f"download {WEIGHTS_URL} (pytorch-fid's TF-ported Inception, 91 MB) and pass --inception-weights PATH, "
           f"or put it at {default_weights_path()}; or run with --no-fid")
    if path is not None:
        raise InputError(f"--inception-weights {where}: no such file; {how}")
    raise InputError(f"FID needs the Inception weights {WEIGHTS_NAME}, not found at {where}: {how}")


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> FIDInception:
    """The FID Inception with the weights at `path` (or the hub cache), in eval mode, frozen."""
    where = find_weights(path)
    try:
        state = torch.load(where, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{where}: not a readable weight file ({type(e).__name__}: {e}); download it again "
                         f"from {WEIGHTS_URL}") from e
    model = FIDInception()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise InputError(f"{where}: not the FID Inception weights {WEIGHTS_NAME} ({str(e).splitlines()[0]}); "
                         f"download them from {WEIGHTS_URL}") from e
    return model.to(device).eval().requires_grad_(False)


def randomize_(model: FIDInception, seed: int = 0) -> FIDInception:
    """Random weights that keep activations O(1) through all 94 convs (He-normal convs, random BN
    statistics near identity): for tests and timing without the real weight file."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(n, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
                m.bias.zero_()
    return model


@torch.no_grad()
def inception_features(model: nn.Module, images: np.ndarray, batch_size: int = 32,
                       device: torch.device | str = "cpu") -> np.ndarray:
    """N×H×W×3 uint8 RGB → N×2048 float64 pool3 features (the 8-bit images are what FID sees)."""
    out = np.zeros((len(images), FEATURE_DIM), np.float64)
    for a in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[a:a + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)                 # B×3×H×W in [0, 1]
        out[a:a + len(x)] = model(x).double().cpu().numpy()
    return out

"""The metric maths of `resail eval` and `resail segnet train`: Fréchet distance, KID, and one
segmentation convention (confusion matrix, IoU, mIoU, pixel accuracy). Pure functions over
features, logits and label maps; which images and networks they see is the commands' business
(synth/eval.py, synth/segnet.py).

FID, with pytorch-fid's numerics: μ and Σ from `np.cov` (ddof 1); d² = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂
− 2 tr √(Σ₁Σ₂) with `scipy.linalg.sqrtm`, retried with 1e−6 on both diagonals when the root is not
finite; a residual imaginary part is dropped (logged when above 1e−3). KID: unbiased MMD² with the
cubic polynomial kernel (x·y/D + 1)³, mean and std over random subsets.

Segmentation, one convention for every segmenter and both commands (docs/metrics.md):
- one K×K confusion matrix over the whole split, rows = ground truth, columns = prediction
  (`confusion_matrix`); the project's segmentation network takes its argmax over the evaluated
  classes only (`argmax_over`), the classic segmenters over all their classes, as published;
- the scores cover a list of evaluated classes (`segmentation_scores`): a pixel counts when its
  ground truth is one of them; void and any other label are ignored, and a prediction on an
  ignored pixel is nobody's false positive. A prediction outside the list on a counted pixel is a
  miss of the true class;
- IoU_c = TP/(TP + FP + FN) over the split; a class with an empty union (absent from the counted
  ground truth and from the predictions on counted pixels) has no IoU and stays out of the mean;
  mIoU = mean over the classes with a non-empty union (NaN when there is none);
- pixel accuracy = correct / counted pixels; mean accuracy = mean over the classes present in the
  ground truth of TP/(TP + FN).
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import scipy.linalg
import torch

from ..errors import InputError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- FID and KID


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """μ (D) and Σ (D×D, ddof 1) of N×D features."""
    features = np.asarray(features, np.float64)
    if len(features) < 2:
        raise InputError(f"FID needs at least 2 images per side, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (pytorch-fid's numerics, see the module doc)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: μ {mu1.shape} / {mu2.shape}, Σ {sigma1.shape} / {sigma2.shape}")
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        log.warning("FID: √(Σ₁Σ₂) is not finite (singular product); adding %g to the diagonals", eps)
        offset = np.eye(len(mu1)) * eps
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        imag = float(np.abs(np.diagonal(root).imag).max())
        if imag > 1e-3:
            log.warning("FID: √(Σ₁Σ₂) has an imaginary part up to %.3g on its diagonal (too few images for a "
                        "%d-d covariance?); using the real part", imag, len(mu1))
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, n_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> dict:
    """KID: unbiased MMD² with k(x, y) = (x·y/D + 1)³, mean and std over random subsets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise InputError(f"KID needs at least 2 images per side, got {len(real)} real / {len(fake)} generated")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for s in range(n_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[s] = within - 2.0 * kxy.mean()
    return {"mean": float(values.mean()), "std": float(values.std()), "subsets": n_subsets, "subset_size": m}


def feature_distances(real: np.ndarray, fake: np.ndarray, *, kid: bool = True, kid_subset_size: int = 1000,
                      seed: int = 0) -> dict:
    """FID (and KID) between two N×D feature sets from any extractor: Inception pool3 in
    `resail eval`, `SegNet.features` in the toy ablation. {"fid": float, "kid": {...} or None}."""
    fid = frechet_distance(*feature_stats(real), *feature_stats(fake))
    return {"fid": fid, "kid": kernel_inception_distance(real, fake, subset_size=kid_subset_size, seed=seed)
            if kid else None}



# ---------------------------------------------------------------- segmentation


def argmax_over(logits: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """B×H×W: per pixel the channel of the largest logit among `channels` (a sorted 1-D long tensor
    on the logits' device); the other channels never win. Ties go to the lowest channel."""
    return channels[logits.index_select(1, channels).argmax(1)]


def confusion_matrix(pred, target, num_classes: int) -> torch.Tensor:
    """K×K int64 pixel counts, rows = ground truth, columns = prediction (tensors or arrays of any
    shape, on any device). Pixels whose ground truth lies outside 0..K−1 (−1: no class) are not
    counted; predictions must lie in 0..K−1."""
    pred, target = torch.as_tensor(pred).flatten().long(), torch.as_tensor(target).flatten().long()
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predictions outside 0..{num_classes - 1}: map them into the matrix first")
    valid = (target >= 0) & (target < num_classes)
    idx = target[valid] * num_classes + pred[valid]
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf, class_ids: Iterable[int]) -> dict:
    """Scores of a K×K confusion matrix (rows = ground truth, columns = prediction) over the
    evaluated classes `class_ids` (matrix positions), with the module's convention: rows of other
    classes are ignored; IoU is NaN for a class with an empty union, and such classes stay out of
    the means. `iou` lists the classes with a non-empty union."""
    conf = np.asarray(conf, np.float64)
    ids = np.unique(np.asarray(list(class_ids), np.int64))
    counted = conf[ids]                               # the evaluated classes' rows: the counted pixels
    tp = counted[np.arange(len(ids)), ids]
    label_px = counted.sum(axis=1)
    pred_px = counted[:, ids].sum(axis=0)             # predictions on counted pixels only
    union = label_px + pred_px - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(label_px > 0, tp / label_px, np.nan)
    total = counted.sum()
    present = union > 0
    return {
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if (label_px > 0).any() else float("nan"),
        "n_classes": int(present.sum()),
        "n_pixels": int(total),
        "iou": {int(c): float(v) for c, v, p in zip(ids, iou, present) if p},
    }

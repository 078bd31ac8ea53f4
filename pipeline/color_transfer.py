"""Colour transfer of the distorted ground truth: Reinhard's transfer in log-LMS lαβ, as the
official code does it.

A segment's masked pixels take the lαβ mean and standard deviation of a colour reference (a
training segment of the same class: the caller chooses it). The reference may be given as its
`LabStats`, which `GuidanceComposer` caches per training segment: the same references come back
epoch after epoch. The per-pixel work is three small numba kernels (`cache=True`); a numpy
reference of them is in tests/test_distort.py. Nothing here touches the segment store, the index
or torch: it runs in the data-loader workers (pipeline/distort.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

_RGB_TO_LMS = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LMS_TO_RGB = np.array(
    [[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]]
)
_LOG_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_LAB_TO_LOG_LMS = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [1.0, -2.0, 0.0]]) @ np.diag(
    [1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]
)
_EPS = 1e-10


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB in 0..255 (any dtype, shape ...×3) → lαβ (float64, same shape). No /255, natural log."""
    lms = np.asarray(rgb, dtype=np.float64) @ _RGB_TO_LMS.T
    return np.log(np.maximum(lms, _EPS)) @ _LOG_LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """lαβ → RGB in 0..255 as float64, unclipped. Not an exact inverse of `rgb_to_lab`: the
    reference's LMS→RGB matrix is a rounded inverse of its RGB→LMS one (kept as published)."""
    lms = np.exp(np.asarray(lab, dtype=np.float64) @ _LAB_TO_LOG_LMS.T)
    return lms @ _LMS_TO_RGB.T


class LabStats(NamedTuple):
    """lαβ mean and population std (3 each, float64) of a segment's pixels: a colour reference."""

    mean: np.ndarray
    std: np.ndarray


def lab_stats(rgb: np.ndarray, mask: np.ndarray) -> LabStats:
    """Per-channel mean and population std (ddof 0) of lαβ over the masked pixels (uint8 RGB)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("lab_stats: the mask is empty; pass a non-empty segment")
    return LabStats(*_mean_std(_masked_lab(_u8(rgb), mask, _RGB_TO_LMS, _LOG_LMS_TO_LAB)))


def color_transfer(
    src_rgb: np.ndarray, src_mask: np.ndarray, ref: tuple[np.ndarray, np.ndarray] | LabStats
) -> np.ndarray:
    """Give the masked pixels of `src_rgb` the lαβ means and stds of the colour reference `ref`.

    ref is (rgb crop, mask crop), of any size, or its `LabStats`, which a caller that reuses
    references computes once. Returns a uint8 copy of `src_rgb` in which only the masked pixels
    changed (clipped to [0, 255], then truncated, as official). An empty source mask returns an
    unchanged copy; an empty reference mask is a caller error.
    """
    src_mask = np.asarray(src_mask, dtype=bool)
    if src_rgb.shape[:2] != src_mask.shape:
        raise ValueError(f"color_transfer: image/mask shapes differ: src {src_rgb.shape} vs {src_mask.shape}")
    if not isinstance(ref, LabStats):
        ref_rgb, ref_mask = ref[0], np.asarray(ref[1], dtype=bool)
        if ref_rgb.shape[:2] != ref_mask.shape:
            raise ValueError(f"color_transfer: image/mask shapes differ: ref {ref_rgb.shape} vs {ref_mask.shape}")
        if not ref_mask.any():
            raise ValueError("color_transfer: the reference mask is empty; pass a non-empty segment")
        ref = lab_stats(ref_rgb, ref_mask)
    out = _u8(src_rgb).copy()
    if not src_mask.any():
        return out
    _transfer_masked(out, src_mask, ref.mean, ref.std, _RGB_TO_LMS, _LOG_LMS_TO_LAB, _LAB_TO_LOG_LMS, _LMS_TO_RGB)
    return out


@numba.njit(cache=True)
def _transfer_masked(out, mask, ref_mean, ref_std, to_lms, to_lab, to_log_lms, to_rgb):  # pragma: no cover
    """In place: the masked pixels of `out` get the lαβ mean and std (ref_mean, ref_std)."""
    lab = _masked_lab(out, mask, to_lms, to_lab)
    if lab.shape[0] == 0:
        return
    mean, std = _mean_std(lab)
    gain = np.empty(3)
    for c in range(3):
        gain[c] = max(ref_std[c], 1e-10) / max(std[c], 1e-10)
    _write_lab(out, mask, lab, mean, gain, ref_mean, to_log_lms, to_rgb)



@numba.njit(cache=True)
def _masked_lab(rgb, mask, to_lms, to_lab):  # pragma: no cover - jitted
    """lαβ of the masked pixels, row-major order: `rgb_to_lab(rgb[mask])` in one pass."""
    h, w = mask.shape
    lab = np.empty((np.count_nonzero(mask), 3))
    n = 0
    log_lms = np.empty(3)
    for i in range(h):
        for j in range(w):
            if not mask[i, j]:
                continue
            for c in range(3):
                lms = to_lms[c, 0] * rgb[i, j, 0] + to_lms[c, 1] * rgb[i, j, 1] + to_lms[c, 2] * rgb[i, j, 2]
                log_lms[c] = np.log(max(lms, 1e-10))
            for c in range(3):
                lab[n, c] = to_lab[c, 0] * log_lms[0] + to_lab[c, 1] * log_lms[1] + to_lab[c, 2] * log_lms[2]
            n += 1
    return lab


@numba.njit(cache=True)
def _mean_std(values):  # pragma: no cover - jitted
    """Per-column mean and population std (two passes, float64)."""
    n, k = values.shape
    mean = np.zeros(k)
    var = np.zeros(k)
    for i in range(n):
        for c in range(k):
            mean[c] += values[i, c]
    mean /= n
    for i in range(n):
        for c in range(k):
            d = values[i, c] - mean[c]
            var[c] += d * d
    return mean, np.sqrt(var / n)


@numba.njit(cache=True)
def _write_lab(out, mask, lab, src_mean, gain, ref_mean, to_log_lms, to_rgb):  # pragma: no cover
    """out[mask] = uint8(clip(lab_to_rgb((lab − src_mean)·gain + ref_mean), 0, 255))."""
    h, w = mask.shape
    moved = np.empty(3)
    lms = np.empty(3)
    n = 0
    for i in range(h):
        for j in range(w):
            if not mask[i, j]:
                continue
            for c in range(3):
                moved[c] = (lab[n, c] - src_mean[c]) * gain[c] + ref_mean[c]
            for c in range(3):
                lms[c] = np.exp(
                    to_log_lms[c, 0] * moved[0] + to_log_lms[c, 1] * moved[1] + to_log_lms[c, 2] * moved[2]
                )
            for c in range(3):
                value = to_rgb[c, 0] * lms[0] + to_rgb[c, 1] * lms[1] + to_rgb[c, 2] * lms[2]
                out[i, j, c] = np.uint8(min(max(value, 0.0), 255.0))
            n += 1



def _u8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image

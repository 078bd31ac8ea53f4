"""Distorted ground truth: per-segment colour, resolution and shape (TPS) distortion.

During training the generator also sees the real image's own segments, distorted to look like
retrieved ones (method reference §4). This module holds the distortions as pure functions of
their inputs and an explicit `numpy.random.Generator`; choosing the colour reference (top-k
matches or class) and composing the distorted segments belong to the caller, so nothing here
touches the segment store or the index. It runs inside PyTorch data-loader workers on the CPU:
numpy, OpenCV and small numba kernels (`cache=True`), no torch, no per-pixel Python loops.

Order and resolutions, as in the official code (method §4.4): colour transfer and resolution at
the image's original resolution → the photo's resize to the training size → the crop → the TPS
warp at crop resolution, with control points from the query mask in the crop. The resolution
step is then much milder than at the training size (this project's order until issue 20): r ~
U(0.5, 1) at the original resolution cuts frequencies the ×0.56 shrink (ADE20K 512 → 286) would
mostly remove anyway, so the distorted segment keeps 96 % of the upper half of the training
grid's spectrum instead of 52 % (docs/deviations.md, benchmarks/deviations.py). Each segment
works in windows around its bounding box: `distort_appearance` at the original resolution,
`to_canvas` (the photo's resize of that window, placed where the resize of the whole image puts
it), then the warp on the crop (`_warp_on_crop`); `distort_segments` runs them in order. Colour
transfer on the original's pixels is the dearer part: ~1.4× the CPU of the old order at 512×384
(docs/deviations.md).

Design choices (and what they cost):

* **Resolution** uses `cv2.INTER_CUBIC` both ways. PIL's bicubic (official) widens its kernel by
  1/r when it shrinks, i.e. it anti-aliases; OpenCV's is a fixed 4×4 kernel, so the downsampled
  segment aliases slightly more. For r ∈ [0.5, 1] the difference is a fraction of the blur the
  distortion itself adds, and OpenCV needs no PIL round trip. The resampling is applied to the
  segment's bounding box plus an 8-pixel black margin, not to the whole canvas: both kernels
  together spread content by at most 2 + 2/r ≤ 6 px, so the only difference from resampling the
  full canvas is the phase of the low-resolution grid (and ⌊w·r⌋/w instead of ⌊W·r⌋/W as the
  effective factor), which is as random as r itself. `resample_resolution(canvas, r)` without
  a box reproduces the official whole-canvas variant.
* **Shape**: control points as in the official `warp_points`, except that shifts stay floats
  (no integer truncation) and the warp has no half-pixel offset, so an identity warp returns its
  input bit for bit. Moved indices are drawn with replacement by default (official: 1–3 distinct
  points move); a point drawn twice keeps the shift of its last draw, so every shift follows
  U(−range, range)·scale·√area. Because targets are floats, "repeated target points" means two
  targets closer than 1 px (the official integer grid's resolution; closer targets with different
  flows make the spline explode), and "collinear" means an RMS distance from the best-fit line
  below 1e-3 px.
* **TPS evaluation**: the dense backward map q − F(q) is evaluated exactly (float64 sums; φ of
  the integer contour centres from a table of exact values, a float32 logarithm for the shifted
  ones), but only where content can land. A coarse grid (every 8 px) of the exact map marks the
  output cells whose corners' source box, grown by 4 px, meets a cell holding support pixels
  (the mask, grown by the resolution margin); each output row is evaluated between its first
  and last marked pixel and everything else stays black. Inside an 8-px cell the smooth map
  departs from the box of its corners by far less than 4 px; the tests check the result bit for
  bit against the full-canvas evaluation. Cost ≈ (segment area + one cell of border) × 10
  kernel terms per segment instead of H·W × 10. Interpolating the map from a coarse grid was
  measured and rejected: bilinear from every 4th pixel errs by up to 0.65 px, every 2nd 0.25 px.
* **Per-segment cost**: a toy image has ~45 segments, most of them small, so the fixed cost per
  segment matters as much as the pixel work. Each step is one compiled call (segment on black,
  colour transfer, bounding box, degeneracy test, the (K+3)² TPS solve by Gaussian elimination,
  coarse grid + live cells + fine map), the draws of all of an image's segments come from a few
  generator calls (`draw_segments`), and a colour reference may be passed as its `LabStats`,
  which `GuidanceComposer` caches per training segment. This took the distorted ground truth
  from ~1 ms to ~0.65 ms of CPU per segment, everything included (BENCHMARKS.md,
  `benchmarks/distort.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import cv2
import numba
import numpy as np
from PIL import Image

from .compose import Piece

# --- colour: Reinhard transfer in log-LMS lαβ (method reference §4.1) ---------------------------

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
    mask = _as_bool(mask)
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
    src_mask = _as_bool(src_mask)
    if src_rgb.shape[:2] != src_mask.shape:
        raise ValueError(f"color_transfer: image/mask shapes differ: src {src_rgb.shape} vs {src_mask.shape}")
    if not isinstance(ref, LabStats):
        ref_rgb, ref_mask = ref[0], _as_bool(ref[1])
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
def _segment_on_black(image, mask):  # pragma: no cover - jitted
    """image · mask as a new contiguous uint8 array (the segment on a black canvas)."""
    h, w = mask.shape
    out = np.zeros((h, w, 3), np.uint8)
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                for c in range(3):
                    out[i, j, c] = image[i, j, c]
    return out


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


# --- resolution (method reference §4.2) ---------------------------------------------------------

RESOLUTION_MARGIN = 8  # px of black around the bbox: covers both cubic kernels' spread (≤ 6 px)


def resample_resolution(
    canvas: np.ndarray, r: float, box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Down- then up-sample by factor r (bicubic, OpenCV), on the whole canvas or on `box`.

    box = (y0, x0, h, w): only that window is resampled (give it a margin of black around the
    segment, see RESOLUTION_MARGIN); pixels outside it are returned unchanged. The result has the
    input's shape and dtype; an all-black canvas stays black.
    """
    if not 0 < r <= 1:
        raise ValueError(f"resample_resolution: factor r={r} must lie in (0, 1]")
    out = np.array(canvas, copy=True)
    y0, x0, h, w = (0, 0, *canvas.shape[:2]) if box is None else box
    window = out[y0 : y0 + h, x0 : x0 + w]
    if window.size == 0:
        return out
    small = (max(1, int(w * r)), max(1, int(h * r)))  # cv2 sizes are (width, height)
    low = cv2.resize(window, small, interpolation=cv2.INTER_CUBIC)
    window[...] = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).reshape(window.shape)
    return out


# --- shape: thin-plate-spline warp (method reference §4.3) --------------------------------------

_MIN_CONTOUR = 11  # official: no warp when n // 11 == 0
_MIN_SEPARATION = 1.0  # px; closer targets count as repeated
_COLLINEAR_RMS = 1e-3  # px; targets closer than this to one line count as collinear
_REGION_STRIDE = 8  # px; coarse grid that finds the output cells that can receive content
_REGION_PAD = 4.0  # px; safety margin on the coarse grid's source boxes


def contour_points(mask: np.ndarray, n_points: int = 10) -> np.ndarray | None:
    """`n_points` points spread evenly along the largest external contour of `mask`.

    Returns float64 n_points×2 in (x, y) order, or None (no warp) when the mask has no contour or
    its largest contour has fewer than 11 points. Indices are ⌊i·n/n_points⌋, evenly around the
    closed loop. (The official int(linspace(0, n−1, 10)) puts the first and last points on
    neighbouring pixels of the closed contour, so moving either one smears nearby content into
    a streak; spacing around the loop avoids that and otherwise samples the same way.)
    """
    mask = _as_bool(mask)
    box = _bbox(mask)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    # One pixel of context keeps the crop's border pixels what they are in the full mask.
    y0, x0, y1, x1 = max(0, y0 - 1), max(0, x0 - 1), min(mask.shape[0], y1 + 1), min(mask.shape[1], x1 + 1)
    crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x0, y0))
    if not contours:
        return None
    contour = max(contours, key=len).reshape(-1, 2)  # n×2 (x, y); ties keep the first
    n = len(contour)
    if n < _MIN_CONTOUR:
        return None
    idx = np.arange(n_points, dtype=np.int64) * n // n_points
    return contour[idx].astype(np.float64)


_DEGENERATE = (None, "duplicate", "collinear")


def degenerate_targets(points: np.ndarray) -> str | None:
    """Why a TPS through these target points cannot be fitted ("duplicate", "collinear"), or None."""
    points = np.asarray(points, dtype=np.float64)
    return _DEGENERATE[_degenerate_code(points, _MIN_SEPARATION**2, _COLLINEAR_RMS**2)]


@numba.njit(cache=True)
def _degenerate_code(points, min_sep2, collinear2):  # pragma: no cover - jitted
    """0 fine, 1 two targets closer than √min_sep2, 2 mean squared distance from the best-fit
    line (the smallest eigenvalue of the 2×2 covariance) below collinear2."""
    k = points.shape[0]
    for a in range(k):
        for b in range(a + 1, k):
            dx = points[a, 0] - points[b, 0]
            dy = points[a, 1] - points[b, 1]
            if dx * dx + dy * dy < min_sep2:
                return 1
    mx, my = points[:, 0].mean(), points[:, 1].mean()
    sxx = sxy = syy = 0.0
    for a in range(k):
        dx, dy = points[a, 0] - mx, points[a, 1] - my
        sxx += dx * dx
        sxy += dx * dy
        syy += dy * dy
    sxx, sxy, syy = sxx / k, sxy / k, syy / k
    if (sxx + syy) / 2 - np.hypot((sxx - syy) / 2, sxy) < collinear2:
        return 2
    return 0


class ThinPlateSpline(NamedTuple):
    """Flow F(q) = Σ_k weights[k]·φ(|q − centres[k]|²) + [q_x, q_y, 1]·affine, φ(d²) = ½·d²·ln d²."""

    centres: np.ndarray  # K×2 (x, y), float64
    weights: np.ndarray  # K×2
    affine: np.ndarray  # 3×2


def _tps_kernel(d2: np.ndarray) -> np.ndarray:
    """φ(d²) = ½·d²·ln d² with φ(0) = 0 (order-2 polyharmonic, i.e. r²·log r)."""
    return 0.5 * d2 * np.log(np.where(d2 > 0, d2, 1.0))


def fit_tps(src: np.ndarray, dst: np.ndarray) -> ThinPlateSpline:
    """Fit the flow dst − src attached at the destination points (no regularisation, no anchors).

    Raises ValueError for degenerate targets (see `degenerate_targets`) and numpy's LinAlgError
    if the system is singular anyway. The (K+3)² system is solved by Gaussian elimination with
    partial pivoting in one compiled call (LAPACK's per-call overhead dominated at K = 10); a
    zero right-hand side (identity warp) gives exactly zero coefficients.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    reason = degenerate_targets(dst)
    if reason is not None:
        raise ValueError(f"fit_tps: {reason} target points {dst.tolist()}")
    ok, solution = _solve_tps(src, dst)
    if not ok:
        raise np.linalg.LinAlgError(f"fit_tps: singular system for target points {dst.tolist()}")
    k = len(dst)
    return ThinPlateSpline(dst, solution[:k], solution[k:])


@numba.njit(cache=True)
def _solve_tps(src, dst):  # pragma: no cover - jitted
    """Solve [[Φ, P], [Pᵀ, 0]]·[w; a] = [dst − src; 0], P = [dst, 1]. (ok, (K+3)×2 solution)."""
    k = dst.shape[0]
    n = k + 3
    a = np.zeros((n, n))
    b = np.zeros((n, 2))
    for i in range(k):
        for j in range(k):
            dx, dy = dst[i, 0] - dst[j, 0], dst[i, 1] - dst[j, 1]
            d2 = dx * dx + dy * dy
            a[i, j] = 0.5 * d2 * np.log(d2) if d2 > 0 else 0.0
        a[i, k], a[i, k + 1], a[i, k + 2] = dst[i, 0], dst[i, 1], 1.0
        a[k, i], a[k + 1, i], a[k + 2, i] = dst[i, 0], dst[i, 1], 1.0
        b[i, 0], b[i, 1] = dst[i, 0] - src[i, 0], dst[i, 1] - src[i, 1]
    for c in range(n):
        p, best = c, abs(a[c, c])
        for r in range(c + 1, n):
            if abs(a[r, c]) > best:
                p, best = r, abs(a[r, c])
        if best == 0.0:
            return False, b
        if p != c:
            for j in range(n):
                a[c, j], a[p, j] = a[p, j], a[c, j]
            for t in range(2):
                b[c, t], b[p, t] = b[p, t], b[c, t]
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            if f != 0.0:
                for j in range(c, n):
                    a[r, j] -= f * a[c, j]
                for t in range(2):
                    b[r, t] -= f * b[c, t]
    for c in range(n - 1, -1, -1):
        for t in range(2):
            acc = b[c, t]
            for j in range(c + 1, n):
                acc -= a[c, j] * b[j, t]
            b[c, t] = acc / a[c, c]
    return bool(np.all(np.isfinite(b))), b


_OUTSIDE = -1000.0  # a source coordinate far off the canvas: remap reads black there


@numba.njit(cache=True, fastmath=True)
def _tps_source_map(y0, x0, stride, centres, weights, affine, phi_table, live, cell, map_x, map_y):  # pragma: no cover
    """Backward map q − F(q) at the pixels q = (x0 + stride·j, y0 + stride·i) of map_x's shape.

    Only the pixels whose canvas cell live[qy // cell, qx // cell] is set need their map: each
    row is evaluated from its first to its last live pixel, the rest gets _OUTSIDE.
    Most centres are contour pixels, i.e. integer points: for them d² is an integer and φ(d²)
    comes from `phi_table` (exact, float64). Shifted centres take a float32 logarithm, whose
    1e-7 relative error moves the map by far less than 1e-3 px.
    """
    h, w = map_x.shape
    n_table = phi_table.shape[0]
    flow_x = np.empty(w)
    flow_y = np.empty(w)
    for i in range(h):
        qy = y0 + stride * i
        cell_row = min(qy // cell, live.shape[0] - 1)
        j0, j1 = w, 0
        for j in range(w):
            if live[cell_row, min((x0 + stride * j) // cell, live.shape[1] - 1)]:
                j0 = min(j0, j)
                j1 = j + 1
        for j in range(w):
            map_x[i, j] = _OUTSIDE
            map_y[i, j] = _OUTSIDE
        for j in range(j0, j1):
            qx = x0 + stride * j
            flow_x[j] = affine[0, 0] * qx + affine[1, 0] * qy + affine[2, 0]
            flow_y[j] = affine[0, 1] * qx + affine[1, 1] * qy + affine[2, 1]
        for k in range(centres.shape[0]):
            cx = centres[k, 0]
            cy = centres[k, 1]
            wx = weights[k, 0]
            wy = weights[k, 1]
            if cx == np.floor(cx) and cy == np.floor(cy):
                dy = qy - np.int64(cy)
                for j in range(j0, j1):
                    dx = x0 + stride * j - np.int64(cx)
                    d2 = dx * dx + dy * dy
                    if d2 < n_table:
                        phi = phi_table[d2]
                    else:
                        phi = 0.5 * d2 * np.log(np.float32(d2))
                    flow_x[j] += wx * phi
                    flow_y[j] += wy * phi
            else:
                dy = qy - cy
                for j in range(j0, j1):
                    dx = x0 + stride * j - cx
                    d2 = dx * dx + dy * dy
                    if d2 > 0.0:
                        phi = 0.5 * d2 * np.log(np.float32(d2))
                        flow_x[j] += wx * phi
                        flow_y[j] += wy * phi
        for j in range(j0, j1):
            map_x[i, j] = x0 + stride * j - flow_x[j]
            map_y[i, j] = qy - flow_y[j]


_PHI_TABLE = np.zeros(1)
_ALL_LIVE = np.ones((1, 1), np.bool_)


def _phi_table(size: int) -> np.ndarray:
    """φ(n) for the integers n < len(table), len ≥ size; grown (doubling) and kept per process."""
    global _PHI_TABLE
    if len(_PHI_TABLE) < size:
        n = np.arange(1 << max(size - 1, 1).bit_length(), dtype=np.float64)
        _PHI_TABLE = _tps_kernel(n)
    return _PHI_TABLE


def tps_source_map(
    tps: ThinPlateSpline,
    box: tuple[int, int, int, int],
    stride: int = 1,
    dtype=np.float32,
    live: np.ndarray = _ALL_LIVE,
    cell: int = 1 << 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (map_x, map_y) of the output pixels (x0 + stride·j, y0 + stride·i),
    i < h, j < w, for box = (y0, x0, h, w). float32 is what cv2.remap takes. With a `live` grid
    of canvas cells (cell px wide), rows are evaluated only between their first and last live
    pixel; the rest maps far outside the canvas."""
    y0, x0, h, w = box
    map_x = np.empty((h, w), dtype)
    map_y = np.empty((h, w), dtype)
    # The table covers every d² between the box and the centres, so each pixel's value is the
    # same whichever box it is computed in.
    (cx0, cy0), (cx1, cy1) = tps.centres.min(axis=0), tps.centres.max(axis=0)
    span_y = max(cy1, y0 + stride * (h - 1)) - min(cy0, y0)
    span_x = max(cx1, x0 + stride * (w - 1)) - min(cx0, x0)
    table = _phi_table(int(span_y + 1) ** 2 + int(span_x + 1) ** 2 + 1)
    _tps_source_map(y0, x0, stride, tps.centres, tps.weights, tps.affine, table, live, cell, map_x, map_y)
    return map_x, map_y


@numba.njit(cache=True)
def _cell_occupancy(support, cell, grow):  # pragma: no cover - jitted
    """Integral image ((gh+1)×(gw+1)) of the cell×cell cells holding support pixels, each
    occupied cell grown by `grow` cells in every direction."""
    height, width = support.shape
    gh, gw = -(-height // cell), -(-width // cell)
    seen = np.zeros((gh, gw), np.bool_)
    for y in range(height):
        for x in range(width):
            if support[y, x]:
                seen[y // cell, x // cell] = True
    occupied = np.zeros((gh, gw), np.int32)
    for r in range(gh):
        for c in range(gw):
            if seen[r, c]:
                occupied[max(r - grow, 0) : r + grow + 1, max(c - grow, 0) : c + grow + 1] = 1
    integral = np.zeros((gh + 1, gw + 1), np.int32)
    for r in range(gh):
        for c in range(gw):
            integral[r + 1, c + 1] = occupied[r, c] + integral[r, c + 1] + integral[r + 1, c] - integral[r, c]
    return integral


@numba.njit(cache=True)
def _live_cells(sx, sy, integral, cell, pad):  # pragma: no cover - jitted
    """Output cells (between the coarse nodes sx, sy) whose corners' source box, grown by pad,
    meets an occupied cell of the integral image."""
    gh, gw = sx.shape
    oh, ow = integral.shape[0] - 1, integral.shape[1] - 1
    live = np.zeros((gh - 1, gw - 1), np.bool_)
    for i in range(gh - 1):
        for j in range(gw - 1):
            lo_x = min(min(sx[i, j], sx[i + 1, j]), min(sx[i, j + 1], sx[i + 1, j + 1])) - pad
            hi_x = max(max(sx[i, j], sx[i + 1, j]), max(sx[i, j + 1], sx[i + 1, j + 1])) + pad
            lo_y = min(min(sy[i, j], sy[i + 1, j]), min(sy[i, j + 1], sy[i + 1, j + 1])) - pad
            hi_y = max(max(sy[i, j], sy[i + 1, j]), max(sy[i, j + 1], sy[i + 1, j + 1])) + pad
            c0 = int(np.floor(max(lo_x / cell, 0.0)))
            c1 = int(np.floor(min(hi_x / cell, ow - 1.0)))
            r0 = int(np.floor(max(lo_y / cell, 0.0)))
            r1 = int(np.floor(min(hi_y / cell, oh - 1.0)))
            if hi_x < 0 or hi_y < 0 or c0 > c1 or r0 > r1:
                continue
            total = integral[r1 + 1, c1 + 1] - integral[r0, c1 + 1] - integral[r1 + 1, c0] + integral[r0, c0]
            live[i, j] = total > 0
    return live


def _warp_maps(
    tps: ThinPlateSpline, shape: tuple[int, int], support: np.ndarray, margin: int
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Box (y0, x0, h, w) and source maps of the output pixels that can receive content.

    A coarse grid (every _REGION_STRIDE px) of the exact map marks the output cells whose
    source box, grown by _REGION_PAD, meets a cell of the support (grown by margin px); the map
    is then evaluated exactly on those cells' rows. None when no output pixel can."""
    height, width = shape
    s = _REGION_STRIDE
    nodes = (-(-(height - 1) // s) + 1, -(-(width - 1) // s) + 1)  # last node at or past the edge
    # One φ table covering every d² between a centre and the coarse grid, which spans the canvas.
    (cx0, cy0), (cx1, cy1) = tps.centres.min(axis=0), tps.centres.max(axis=0)
    span_y = max(cy1, s * (nodes[0] - 1)) - min(cy0, 0)
    span_x = max(cx1, s * (nodes[1] - 1)) - min(cx0, 0)
    table = _phi_table(int(span_y + 1) ** 2 + int(span_x + 1) ** 2 + 1)
    y0, x0, map_x, map_y = _warp_region(
        tps.centres, tps.weights, tps.affine, table, support, -(-margin // s), s, _REGION_PAD
    )
    if y0 < 0:
        return None
    return (int(y0), int(x0), *map_x.shape), map_x, map_y


@numba.njit(cache=True)
def _warp_region(centres, weights, affine, phi_table, support, grow, stride, pad):  # pragma: no cover
    """`_warp_maps` in one compiled call: (y0, x0, map_x, map_y), y0 = −1 when nothing lands."""
    height, width = support.shape
    nh, nw = -(-(height - 1) // stride) + 1, -(-(width - 1) // stride) + 1
    sx = np.empty((nh, nw))
    sy = np.empty((nh, nw))
    _tps_source_map(0, 0, stride, centres, weights, affine, phi_table, np.ones((1, 1), np.bool_), 1 << 30, sx, sy)
    live = _live_cells(sx, sy, _cell_occupancy(support, stride, grow), stride, pad)
    r0, r1, c0, c1 = live.shape[0], -1, live.shape[1], -1
    for r in range(live.shape[0]):
        for c in range(live.shape[1]):
            if live[r, c]:
                r0, r1, c0, c1 = min(r0, r), max(r1, r), min(c0, c), max(c1, c)
    if r1 < 0:
        return -1, -1, np.empty((0, 0), np.float32), np.empty((0, 0), np.float32)
    y0, y1 = r0 * stride, min(height - 1, (r1 + 1) * stride)
    x0, x1 = c0 * stride, min(width - 1, (c1 + 1) * stride)
    map_x = np.empty((y1 - y0 + 1, x1 - x0 + 1), np.float32)
    map_y = np.empty((y1 - y0 + 1, x1 - x0 + 1), np.float32)
    _tps_source_map(y0, x0, 1, centres, weights, affine, phi_table, live, stride, map_x, map_y)
    return y0, x0, map_x, map_y


def tps_warp(
    content: np.ndarray,
    mask: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    support: np.ndarray | None = None,
    support_margin: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp content (bilinear) and mask (nearest) so that what lies at src[k] appears at dst[k].

    Points are K×2 (x, y). content is H×W or H×W×C, black outside its segment; outside the
    canvas counts as black. support (H×W bool) must hold the mask and every non-zero content
    pixel, or come within support_margin px of them; None computes it exactly. src == dst
    returns the inputs unchanged, bit for bit.
    """
    mask = _as_bool(mask)
    if support is None:
        support = mask | (content.reshape(*mask.shape, -1) != 0).any(axis=-1)
        support_margin = 0
    tps = fit_tps(src, dst)
    out_content = np.zeros_like(content)
    out_mask = np.zeros_like(mask)
    warp = _warp_maps(tps, mask.shape, support, support_margin)
    if warp is None:
        return out_content, out_mask
    (y0, x0, h, w), map_x, map_y = warp
    window = np.s_[y0 : y0 + h, x0 : x0 + w]
    out_content[window] = cv2.remap(
        content, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    ).reshape(out_content[window].shape)
    out_mask[window] = cv2.remap(
        mask.view(np.uint8), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    ).view(bool)
    return out_content, out_mask


class ShapeWarp(NamedTuple):
    content: np.ndarray
    mask: np.ndarray
    warped: bool
    reason: str | None  # why not warped: "no_contour", "short_contour", "duplicate", "collinear", "singular"


def shape_distort(
    content: np.ndarray,
    mask: np.ndarray,
    moved: np.ndarray,
    unit_shifts: np.ndarray,
    *,
    shift_scale: float = 0.22,
    n_points: int = 10,
    support: np.ndarray | None = None,
    support_margin: int = 0,
) -> ShapeWarp:
    """Official shape distortion with explicit draws, and its fallbacks.

    moved: indices (into the n_points contour points) of the points to shift, in draw order;
    unit_shifts: len(moved)×2 draws of U(−range, range) per axis (x, y). A point drawn more than
    once keeps its last shift. Each shift is unit_shift·shift_scale·√area, kept as a float.
    When no warp is possible the inputs come back unchanged with warped=False and the reason.
    """
    mask = _as_bool(mask)
    src = contour_points(mask, n_points)
    if src is None:
        reason = "no_contour" if not mask.any() else "short_contour"
        return ShapeWarp(content, mask, False, reason)
    shifts = np.asarray(unit_shifts, dtype=np.float64) * (shift_scale * np.sqrt(mask.sum()))
    dst = src.copy()
    for index, shift in zip(moved, shifts):  # ≤ n_moved iterations; last draw wins
        dst[index] = src[index] + shift
    reason = degenerate_targets(dst)
    if reason is not None:
        return ShapeWarp(content, mask, False, reason)
    try:
        warped_content, warped_mask = tps_warp(content, mask, src, dst, support, support_margin)
    except np.linalg.LinAlgError:
        return ShapeWarp(content, mask, False, "singular")
    return ShapeWarp(warped_content, warped_mask, True, None)


# --- the whole distortion of one image's segments ------------------------------------------------


@dataclass(frozen=True)
class DistortConfig:
    """Knobs of the distorted ground truth; defaults are the official behaviour."""

    p_color: float = 1.0
    p_resolution: float = 1.0
    p_shape: float = 1.0
    shift_scale: float = 0.22  # shift = U(−shift_range, shift_range)·shift_scale·√area per axis
    shift_range: float = 0.4
    n_points: int = 10
    n_moved: int = 3
    moved_with_replacement: bool = True  # official: 1–3 distinct points move
    res_range: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        for name in ("p_color", "p_resolution", "p_shape"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DistortConfig.{name}={value} must lie in [0, 1]")
        low, high = self.res_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"DistortConfig.res_range={self.res_range} needs 0 < low <= high <= 1")
        if self.n_points < 3:
            raise ValueError(f"DistortConfig.n_points={self.n_points} must be at least 3")
        if self.n_moved < 0 or (not self.moved_with_replacement and self.n_moved > self.n_points):
            raise ValueError(
                f"DistortConfig.n_moved={self.n_moved} must be >= 0, and <= n_points without replacement"
            )
        if self.shift_scale < 0 or self.shift_range < 0:
            raise ValueError("DistortConfig.shift_scale and shift_range must be non-negative")


class SegmentDraws(NamedTuple):
    """Every random number of one segment's distortion (see `draw_segments`)."""

    color: bool
    resolution: bool
    shape: bool
    r: float
    moved: np.ndarray  # n_moved indices into the contour points
    unit_shifts: np.ndarray  # n_moved×2 draws of U(−shift_range, shift_range), (x, y)


def draw_segments(rng: np.random.Generator, cfg: DistortConfig, n: int) -> list[SegmentDraws]:
    """The draws of n segments at once (a handful of generator calls instead of five per segment).

    Every segment gets the same amount of draws whatever its outcome, so what one segment does
    (a fallback, an empty mask) never changes the draws of another."""
    coins = rng.random((n, 3))
    r = rng.uniform(*cfg.res_range, n)
    if cfg.moved_with_replacement:
        moved = rng.integers(0, cfg.n_points, (n, cfg.n_moved))
    else:
        moved = np.argsort(rng.random((n, cfg.n_points)), axis=1)[:, : cfg.n_moved]
    unit_shifts = rng.uniform(-cfg.shift_range, cfg.shift_range, (n, cfg.n_moved, 2))
    probs = np.array([cfg.p_color, cfg.p_resolution, cfg.p_shape])
    flags = (coins < probs).tolist()
    return [SegmentDraws(*flags[i], float(r[i]), moved[i], unit_shifts[i]) for i in range(n)]


class SegmentSource(NamedTuple):
    """One query segment as `distort_segments` takes it: its mask on its bounding box in the
    original image, placed at (y0, x0), and its query box on the canvas (the training size, before
    the crop), (y0, x0, y1, x1): where its query mask was painted in the segment map."""

    y0: int
    x0: int
    mask: np.ndarray  # h×w bool, the bounding box of the segment in the original image
    box: tuple[int, int, int, int]


class Geometry(NamedTuple):
    """Where a segment is distorted (see `_geometry`)."""

    window: tuple[int, int, int, int]  # (y0, x0, y1, x1) at the original resolution: bbox and margins
    spread: int  # px that content may reach past the segment's query mask on the canvas


def _geometry(source: SegmentSource, resolution: bool, shape: tuple[int, int], scale: tuple[float, float]) -> Geometry:
    """The original-resolution window: the bbox with a black margin that covers the resolution
    step's spread (≤ 6 px, see RESOLUTION_MARGIN) and the canvas resize's kernel (≤ 2 canvas px),
    so its border is black for both, widened by a few px until its edges fall (nearly) on edges
    of canvas pixels: resized on its own, the window then gives the canvas pixels the resize of
    the whole image gives (`to_canvas`). On the canvas, content reaches the resolution spread
    times the scale, plus the kernel, plus a pixel each for rounding and for the query mask,
    which the segment map stretched to its rounded box."""
    h, w = source.mask.shape
    blur = RESOLUTION_MARGIN if resolution else 0
    if scale == (1.0, 1.0):
        return Geometry((max(0, source.y0 - blur), max(0, source.x0 - blur), min(shape[0], source.y0 + h + blur),
                         min(shape[1], source.x0 + w + blur)), blur)
    least = blur + math.ceil(2 * max(1.0, 1 / min(scale))) + 1
    (y0, y1), (x0, x1) = (_aligned_edges(a, a + n, least, s, size)
                          for a, n, s, size in ((source.y0, h, scale[0], shape[0]), (source.x0, w, scale[1], shape[1])))
    return Geometry((y0, x0, y1, x1), int(np.ceil(blur * max(scale))) + 4)


def _aligned_edges(start: int, end: int, least: int, scale: float, size: int) -> tuple[int, int]:
    """[start − m, end + m') within [0, size): m, m' ≥ `least`, each the first of the next
    ⌈1/scale⌉ + 1 candidates whose edge, times `scale`, lies closest to a whole number."""
    steps = range(math.ceil(1 / scale) + 2)  # plain Python: called twice per segment, on a few numbers

    def off_grid(edge: int) -> float:
        return abs(edge * scale - round(edge * scale))

    lo = min((start - least - k for k in steps), key=off_grid)
    hi = min((end + least + k for k in steps), key=off_grid)
    return max(0, lo), min(size, hi)


def distort_appearance(
    image: np.ndarray, source: SegmentSource, ref: tuple[np.ndarray, np.ndarray] | LabStats | None,
    draws: SegmentDraws, window: tuple[int, int, int, int],
) -> np.ndarray:
    """Colour and resolution steps of one segment at the original resolution (method §4.1–4.2):
    the segment on black in `window` (y0, x0, y1, x1) of the image, which holds its bounding box,
    colour transferred to `ref` (when drawn and given) and down/up-sampled by r (when drawn)."""
    wy0, wx0, wy1, wx1 = window
    h, w = source.mask.shape
    mask = np.zeros((wy1 - wy0, wx1 - wx0), bool)
    mask[source.y0 - wy0 : source.y0 - wy0 + h, source.x0 - wx0 : source.x0 - wx0 + w] = source.mask
    content = _segment_on_black(image[wy0:wy1, wx0:wx1], mask)
    if draws.color and ref is not None:
        content = color_transfer(content, mask, ref)
    if draws.resolution:
        content = resample_resolution(content, draws.r)
    return content


def to_canvas(
    content: np.ndarray, window: tuple[int, int, int, int], scale: tuple[float, float],
    resize: Callable[[np.ndarray, tuple], np.ndarray],
) -> tuple[np.ndarray, int, int]:
    """An original-resolution window on the canvas: resized by the image's own scale with
    `resize(image, (width, height))`, the photo's resize, and placed where the resize of the whole
    image puts it (edges rounded to whole canvas pixels). Returns (content, y0, x0) on the canvas."""
    y0, x0, y1, x1 = (round(v * s) for v, s in zip(window, scale + scale))
    size = (max(1, x1 - x0), max(1, y1 - y0))
    return resize(content, size), y0, x0


def distort_segments(
    image: np.ndarray,
    sources: Sequence[SegmentSource],
    segment_map: np.ndarray,
    rng: np.random.Generator,
    cfg: DistortConfig = DistortConfig(),
    reference: Callable[[int, float], tuple[np.ndarray, np.ndarray] | LabStats | None] | None = None,
    *,
    canvas: tuple[int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
    resize: Callable[[np.ndarray, tuple], np.ndarray] | None = None,
) -> list[Piece]:
    """Distort the segments of one image, as the official code orders it (method §4.4): colour and
    resolution at the original resolution, the resize to the canvas, the crop, the TPS warp on
    the crop. Returns one `compose.Piece` per segment with pixels in the crop, in index order,
    placed in crop coordinates.

    image: the original H×W×3 uint8. sources[i]: segment i's mask and query box (`SegmentSource`).
    canvas: the (W, H) the image is resized to, with resize(image, (W, H)), the photo's resize
    (default: the image's own size, nothing resized; INTER_AREA). segment_map: the crop (h×w int,
    −1 none) of the canvas segment map, whose top-left pixel is `origin` (y, x) on the canvas: it
    gives each segment's query mask for the warp's control points, as official. reference(i, u)
    gives segment i's colour reference from one uniform draw u — (rgb crop, mask crop), its
    LabStats, or None — and is called only for segments in the crop whose colour step is drawn.
    The thing/stuff flag plays no part here (every segment gets the same steps, as official); the
    compositor uses it.

    Deterministic for the state of `rng`: every segment's distortion draws (`draw_segments`),
    then one uniform per segment for its colour reference, whatever each segment's outcome.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"distort_segments: image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    if segment_map.size and segment_map.max() >= len(sources):
        raise ValueError(f"distort_segments: segment {segment_map.max()} has no source ({len(sources)} given)")
    width, height = canvas or image.shape[1::-1]
    scale = (height / image.shape[0], width / image.shape[1])
    resize = resize or resize_area
    draws = draw_segments(rng, cfg, len(sources))
    u_ref = rng.random(len(sources)).tolist()
    pieces = []
    for i, source in enumerate(sources):
        box = _crop_box(source.box, origin, segment_map.shape)
        if box is None:  # cropped away: nothing of it reaches the crop
            continue
        d = draws[i]
        geo = _geometry(source, d.resolution, image.shape[:2], scale)
        ref = reference(i, u_ref[i]) if d.color and reference is not None else None
        content = distort_appearance(image, source, ref, d, geo.window)
        wy0, wx0 = geo.window[:2]
        if scale != (1.0, 1.0):
            content, wy0, wx0 = to_canvas(content, geo.window, scale, resize)
        pieces.append(_warp_on_crop(i, content, wy0 - origin[0], wx0 - origin[1], box, segment_map, d, cfg,
                                    geo.spread))
    return pieces


def _crop_box(box: tuple[int, int, int, int], origin: tuple[int, int],
              shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """A canvas box (y0, x0, y1, x1) in crop coordinates, clipped to the crop; None when outside."""
    y0, x0 = max(0, box[0] - origin[0]), max(0, box[1] - origin[1])
    y1, x1 = min(shape[0], box[2] - origin[0]), min(shape[1], box[3] - origin[1])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _warp_on_crop(i: int, window: np.ndarray, wy0: int, wx0: int, box: tuple[int, int, int, int],
                  segment_map: np.ndarray, d: SegmentDraws, cfg: DistortConfig, spread: int) -> Piece:
    """Segment i's content (a window at (wy0, wx0) in crop pixels) warped with its query mask in
    the crop. The warp runs in a window around the query box holding the content's spread and
    twice the largest control-point shift, so content lost past it is negligible and the cost
    follows the segment's size."""
    H, W = segment_map.shape
    y0, x0, y1, x1 = box
    reach = cfg.shift_range * cfg.shift_scale
    pad = spread + int(np.ceil(2 * reach * np.sqrt((y1 - y0) * (x1 - x0)))) + 2
    py0, px0, py1, px1 = max(0, y0 - pad), max(0, x0 - pad), min(H, y1 + pad), min(W, x1 + pad)
    content = np.zeros((py1 - py0, px1 - px0, 3), np.uint8)
    sy0, sx0 = max(py0, wy0), max(px0, wx0)
    sy1, sx1 = min(py1, wy0 + window.shape[0]), min(px1, wx0 + window.shape[1])
    if sy0 < sy1 and sx0 < sx1:
        content[sy0 - py0 : sy1 - py0, sx0 - px0 : sx1 - px0] = window[sy0 - wy0 : sy1 - wy0, sx0 - wx0 : sx1 - wx0]
    mask = segment_map[py0:py1, px0:px1] == i
    if d.shape:
        warp = shape_distort(content, mask, d.moved, d.unit_shifts, shift_scale=cfg.shift_scale,
                             n_points=cfg.n_points, support=mask, support_margin=spread)
        if warp.warped:
            content, mask = warp.content, warp.mask
    return Piece(i, py0, px0, content, mask)


# --- resizing to the training size ---------------------------------------------------------------


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The project's photo resize: OpenCV INTER_AREA (area averaging when shrinking), size = (W, H)."""
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def resize_bicubic_pil(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official photo resize: PIL bicubic (its kernel widens by the shrink factor: antialiased)."""
    return np.array(Image.fromarray(image).resize(size, Image.BICUBIC))


# --- helpers -------------------------------------------------------------------------------------


def _u8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), exclusive ends, of the True pixels; None when there are none."""
    y0, x0, y1, x1 = _bbox_kernel(mask)
    return None if y0 < 0 else (y0, x0, y1, x1)


@numba.njit(cache=True)
def _bbox_kernel(mask):  # pragma: no cover - jitted
    h, w = mask.shape
    y0, x0, y1, x1 = -1, w, -1, -1
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                if y0 < 0:
                    y0 = i
                y1 = i + 1
                x0 = min(x0, j)
                x1 = max(x1, j + 1)
    return y0, x0, y1, x1

"""The shape step of the distorted ground truth: a thin-plate-spline warp through points of the
segment's contour, some of them shifted, as the official code draws it.

Design choices (and what they cost):

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

Every step is one compiled call (bounding box, degeneracy test, the (K+3)² solve by Gaussian
elimination, coarse grid + live cells + fine map): a toy image has ~45 segments, most of them
small, so the fixed cost per segment matters as much as the pixel work.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numba
import numpy as np

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
    mask = np.asarray(mask, dtype=bool)
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
    mask = np.asarray(mask, dtype=bool)
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
    mask = np.asarray(mask, dtype=bool)
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


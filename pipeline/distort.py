"""Distorted ground truth: each segment of the real image colour-, resolution- and shape-distorted
to look like a retrieved one, in the official order.

During training the generator also sees the real image's own segments, distorted to look like
retrieved ones. This module orders the three steps and draws their random numbers; the steps are
pure functions of their inputs: colour transfer (pipeline/color_transfer.py), resolution
(`resample_resolution`, here) and the TPS shape warp (pipeline/tps.py). Choosing the colour
reference (top-k matches or class) and composing the distorted segments belong to the caller, so
nothing here touches the segment store or the index. It runs inside PyTorch data-loader workers
on the CPU: numpy, OpenCV and small numba kernels (`cache=True`), no torch, no per-pixel Python
loops.

Order and resolutions, as in the official code: colour transfer and resolution at the image's
original resolution → the photo's resize to the training size (the caller's: the trainer's recipe
picks it, synth/data.py) → the crop → the TPS warp at crop resolution, with control points from
the query mask in the crop. The resolution step is then much milder than at the training size:
r ~ U(0.5, 1) at the original resolution cuts frequencies
the ×0.56 shrink (ADE20K 512 → 286) would mostly remove anyway, so the distorted segment keeps
96 % of the upper half of the training grid's spectrum instead of 52 % (docs/deviations.md,
benchmarks/deviations.py). Each segment works in windows around its bounding box:
`distort_appearance` at the original resolution, `to_canvas` (the photo's resize of that window,
placed where the resize of the whole image puts it), then the warp on the crop (`_warp_on_crop`);
`distort_segments` runs them in order. Colour transfer on the original's pixels is the dearer part
(docs/deviations.md, row 1, has its cost).

* **Resolution** uses `cv2.INTER_CUBIC` both ways. PIL's bicubic (official) widens its kernel by
  1/r when it shrinks, i.e. it anti-aliases; OpenCV's is a fixed 4×4 kernel, so the downsampled
  segment aliases slightly more. For r ∈ [0.5, 1] the difference is a fraction of the blur the
  distortion itself adds, and OpenCV needs no PIL round trip. The resampling is applied to the
  segment's bounding box plus an 8-pixel black margin, not to the whole canvas: both kernels
  together spread content by at most 2 + 2/r ≤ 6 px, so the only difference from resampling the
  full canvas is the phase of the low-resolution grid (and ⌊w·r⌋/w instead of ⌊W·r⌋/W as the
  effective factor), which is as random as r itself. `resample_resolution(canvas, r)` without
  a box reproduces the official whole-canvas variant.
* **Per-segment cost**: a toy image has ~45 segments, most of them small, so the fixed cost per
  segment matters as much as the pixel work. Each step is one compiled call (segment on black,
  colour transfer, the TPS steps), the draws of all of an image's segments come from a few
  generator calls (`draw_segments`), and a colour reference may be passed as its `LabStats`,
  which `GuidanceComposer` caches per training segment (the cost per segment: BENCHMARKS.md,
  `benchmarks/distort.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import cv2
import numba
import numpy as np

from .color_transfer import LabStats, color_transfer
from .compose import Piece
from .tps import shape_distort

# --- resolution -------------------------------------------------------------------------------------

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
    """Colour and resolution steps of one segment at the original resolution:
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
    """Distort the segments of one image, as the official code orders it: colour and
    resolution at the original resolution, the resize to the canvas, the crop, the TPS warp on
    the crop. Returns one `compose.Piece` per segment with pixels in the crop, in index order,
    placed in crop coordinates.

    image: the original H×W×3 uint8. sources[i]: segment i's mask and query box (`SegmentSource`).
    canvas: the (W, H) the image is resized to, with resize(image, (W, H)), the photo's resize,
    which a canvas of another size needs (default: the image's own size, nothing resized).
    segment_map: the crop (h×w int, −1 none) of the canvas segment map, whose top-left pixel is
    `origin` (y, x) on the canvas: it gives each segment's query mask for the warp's control
    points, as official. reference(i, u) gives segment i's colour reference from one uniform draw
    u — (rgb crop, mask crop), its LabStats, or None — and is called only for segments in the crop
    whose colour step is drawn.
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
    if scale != (1.0, 1.0) and resize is None:
        raise ValueError(f"distort_segments: a {width}x{height} canvas for a {image.shape[1]}x{image.shape[0]} "
                         "image needs the photo's resize (`resize`)")
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

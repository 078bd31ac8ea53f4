"""Distorted ground truth: colour transfer, resolution, TPS shape warp, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resail.pipeline import distort as D
from resail.pipeline import tps as T
from resail.pipeline.color_transfer import color_transfer, lab_stats, lab_to_rgb, rgb_to_lab
from resail.pipeline.distort import DistortConfig, SegmentSource, distort_segments, resample_resolution
from resail.pipeline.guidance import resize_area
from resail.pipeline.tps import contour_points, degenerate_targets, fit_tps, shape_distort, tps_source_map, tps_warp
from resail.synth.data import resize_bicubic_pil

H = W = 96


def ellipse(cy=48, cx=44, ay=20, ax=28, shape=(H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1


def textured(rng: np.random.Generator, base, spread=15, shape=(H, W)) -> np.ndarray:
    """Mid-range colours with texture: no channel near 0 or 255, so nothing saturates."""
    image = np.asarray(base, float) + rng.normal(0, spread, (*shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


# --- numpy references of the numba kernels ------------------------------------------------------


def tps_flow_reference(tps: T.ThinPlateSpline, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """F(q) in float64 numpy, q = (xs, ys): ...×2."""
    q = np.stack([xs, ys], axis=-1).astype(np.float64)
    d2 = ((q[..., None, :] - tps.centres) ** 2).sum(axis=-1)  # ...×K
    phi = np.where(d2 > 0, 0.5 * d2 * np.log(np.where(d2 > 0, d2, 1.0)), 0.0)
    return phi @ tps.weights + np.concatenate([q, np.ones((*q.shape[:-1], 1))], axis=-1) @ tps.affine


def color_transfer_reference(src, src_mask, ref, ref_mask):
    src_lab = rgb_to_lab(src[src_mask])
    ref_lab = rgb_to_lab(ref[ref_mask])
    gain = np.maximum(ref_lab.std(0), 1e-10) / np.maximum(src_lab.std(0), 1e-10)
    out = src.copy()
    lab = (src_lab - src_lab.mean(0)) * gain + ref_lab.mean(0)
    out[src_mask] = np.clip(lab_to_rgb(lab), 0, 255).astype(np.uint8)
    return out


def random_warp(rng, mask, cfg=DistortConfig()):
    src = contour_points(mask, cfg.n_points)
    dst = src.copy()
    for k in rng.integers(0, cfg.n_points, cfg.n_moved):
        dst[k] += rng.uniform(-cfg.shift_range, cfg.shift_range, 2) * cfg.shift_scale * np.sqrt(mask.sum())
    return src, dst


# --- colour ---------------------------------------------------------------------------------------


def test_lab_round_trip_is_close():
    rgb = np.random.default_rng(0).uniform(10, 245, (500, 3))
    # The published LMS→RGB matrix is a rounded inverse of RGB→LMS: close, not exact (the
    # blue channel is off by up to 2 levels, green by 0.25, red by 0.15).
    error = np.abs(lab_to_rgb(rgb_to_lab(rgb)) - rgb).max(axis=0)
    assert np.all(error < [0.15, 0.25, 2.0])


def test_color_transfer_matches_reference_stats():
    rng = np.random.default_rng(1)
    src = textured(rng, (90, 140, 110))
    src_mask = ellipse()
    ref = textured(rng, (170, 110, 80), spread=8, shape=(40, 70))  # other size
    ref_mask = ellipse(20, 35, 15, 30, shape=(40, 70))
    out = color_transfer(src, src_mask, (ref, ref_mask))
    mean, std = lab_stats(out, src_mask)
    ref_mean, ref_std = lab_stats(ref, ref_mask)
    assert np.abs(mean - ref_mean).max() < 0.01
    assert np.allclose(std, ref_std, rtol=0.05, atol=2e-3)
    assert np.array_equal(out[~src_mask], src[~src_mask])  # only masked pixels written
    assert out.dtype == np.uint8 and out.shape == src.shape


def test_color_transfer_kernel_matches_numpy_reference():
    rng = np.random.default_rng(2)
    src = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # saturating too: clip + truncate
    ref = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    src_mask, ref_mask = rng.random((H, W)) < 0.6, rng.random((30, 50)) < 0.5
    fast = color_transfer(src, src_mask, (ref, ref_mask)).astype(int)
    slow = color_transfer_reference(src, src_mask, ref, ref_mask).astype(int)
    assert np.abs(fast - slow).max() <= 1  # float rounding may flip a truncation
    assert (fast != slow).mean() < 1e-3


def test_color_transfer_with_reference_statistics_equals_with_reference_crop():
    rng = np.random.default_rng(13)
    src, ref = textured(rng, (90, 140, 110)), textured(rng, (170, 110, 80), shape=(40, 70))
    ref_mask = ellipse(20, 35, 15, 30, shape=(40, 70))
    stats = lab_stats(ref, ref_mask)
    assert np.array_equal(color_transfer(src, ellipse(), stats), color_transfer(src, ellipse(), (ref, ref_mask)))
    with pytest.raises(ValueError, match="mask is empty"):
        lab_stats(ref, np.zeros((40, 70), bool))


def test_color_transfer_empty_masks():
    rng = np.random.default_rng(3)
    src = textured(rng, (100, 100, 100))
    same = color_transfer(src, np.zeros((H, W), bool), (src, ellipse()))
    assert np.array_equal(same, src)
    with pytest.raises(ValueError, match="reference mask is empty"):
        color_transfer(src, ellipse(), (src, np.zeros((H, W), bool)))


# --- resolution -----------------------------------------------------------------------------------


def test_resolution_keeps_shape_dtype_and_black():
    rng = np.random.default_rng(4)
    canvas = textured(rng, (120, 120, 120)) * ellipse()[..., None]
    for r in (0.5, 0.73, 1.0):
        out = resample_resolution(canvas, r)
        assert out.shape == canvas.shape and out.dtype == canvas.dtype
    assert np.array_equal(resample_resolution(canvas, 1.0), canvas)
    black = np.zeros((H, W, 3), np.uint8)
    assert not resample_resolution(black, 0.6).any()
    assert not resample_resolution(black, 0.6, (10, 10, 40, 50)).any()
    with pytest.raises(ValueError):
        resample_resolution(canvas, 0.0)


def test_resolution_box_matches_whole_canvas_up_to_grid_phase():
    rng = np.random.default_rng(5)
    mask = ellipse()
    canvas = textured(rng, (120, 150, 90), spread=5) * mask[..., None]
    y0, x0, y1, x1 = T._bbox(mask)
    m = D.RESOLUTION_MARGIN
    box = (y0 - m, x0 - m, y1 - y0 + 2 * m, x1 - x0 + 2 * m)
    boxed = resample_resolution(canvas, 0.6, box)
    whole = resample_resolution(canvas, 0.6)
    outside = np.ones((H, W), bool)
    outside[box[0] : box[0] + box[2], box[1] : box[1] + box[3]] = False
    assert not boxed[outside].any() and not whole[outside].any()  # the margin holds the blur
    inner = cv2.erode(mask.astype(np.uint8), np.ones((9, 9))) > 0
    assert np.abs(boxed[inner].astype(int) - whole[inner]).mean() < 6


# --- shape ------------------------------------------------------------------------------------------


def test_identity_tps_is_bit_exact():
    rng = np.random.default_rng(6)
    mask = ellipse()
    canvas = textured(rng, (100, 150, 200)) * mask[..., None]
    src = contour_points(mask)
    content, warped_mask = tps_warp(canvas, mask, src, src.copy())
    assert np.array_equal(content, canvas) and np.array_equal(warped_mask, mask)
    result = shape_distort(canvas, mask, np.array([1, 4, 7]), np.zeros((3, 2)))
    assert result.warped
    assert np.array_equal(result.content, canvas) and np.array_equal(result.mask, mask)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(20, 70), st.integers(20, 70))
def test_identity_warp_is_exact_for_any_mask_and_canvas_size(seed, height, width):
    rng = np.random.default_rng(seed)
    mask = cv2.GaussianBlur(rng.random((height, width)), (0, 0), 3) > 0.5  # blobs, holes, edges
    canvas = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) * mask[..., None]
    result = shape_distort(canvas, mask, np.arange(3), np.zeros((3, 2)))
    assert np.array_equal(result.content, canvas) and np.array_equal(result.mask, mask)


@pytest.mark.parametrize("seed", range(6))
def test_moved_control_points_land_where_sent(seed):
    rng = np.random.default_rng(seed)
    mask = ellipse(48 + seed, 44 - seed, 18 + 2 * seed, 26)
    src = contour_points(mask)
    moved = rng.choice(10, 3, replace=False)
    dst = src.copy()
    dst[moved] += rng.uniform(-0.4, 0.4, (3, 2)) * 0.22 * np.sqrt(mask.sum())
    if degenerate_targets(dst):
        pytest.skip("degenerate draw")
    yy, xx = np.mgrid[:H, :W]
    for k in range(10):  # every control point, moved or not
        x, y = src[k]
        dot = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2).astype(np.float32)  # σ = 1 px
        out, _ = tps_warp(dot, mask, src, dst, support=np.ones((H, W), bool))
        nearest = np.round(dst[k]).astype(int)
        assert out[nearest[1], nearest[0]] > 0.5, (k, src[k], dst[k])
        found = np.unravel_index(np.argmax(out), out.shape)
        assert np.hypot(found[1] - dst[k, 0], found[0] - dst[k, 1]) <= 1.0, (k, found, dst[k])


def test_fast_region_warp_equals_full_canvas_warp():
    rng = np.random.default_rng(7)
    for trial in range(12):
        ay, ax = rng.uniform(4, 40, 2)
        mask = ellipse(*rng.uniform(30, 66, 2), ay, ax)
        canvas = textured(rng, (130, 100, 90)) * mask[..., None]
        src, dst = random_warp(rng, mask)
        if degenerate_targets(dst):
            continue
        content, warped_mask = tps_warp(canvas, mask, src, dst)
        map_x, map_y = tps_source_map(fit_tps(src, dst), (0, 0, H, W))
        full = cv2.remap(canvas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        full_mask = cv2.remap(mask.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST) > 0
        assert np.array_equal(content, full), trial
        assert np.array_equal(warped_mask, full_mask), trial


def test_blurred_segment_warp_with_mask_support_equals_full_canvas_warp():
    """distort_segment's path: support = the mask, grown by the resolution step's margin."""
    rng = np.random.default_rng(12)
    for trial in range(8):
        mask = ellipse(*rng.uniform(25, 70, 2), *rng.uniform(3, 30, 2))
        canvas = textured(rng, (200, 180, 160)) * mask[..., None]
        canvas = resample_resolution(canvas, rng.uniform(0.5, 1.0))  # spreads content past the mask
        moved, unit = rng.integers(0, 10, 3), rng.uniform(-0.4, 0.4, (3, 2))
        fast = shape_distort(canvas, mask, moved, unit, support=mask, support_margin=D.RESOLUTION_MARGIN)
        exact = shape_distort(canvas, mask, moved, unit)  # support from the non-zero content
        if not fast.warped:
            continue
        assert np.array_equal(fast.content, exact.content), trial
        assert np.array_equal(fast.mask, exact.mask), trial


def test_source_map_kernel_matches_numpy_reference():
    rng = np.random.default_rng(8)
    mask = ellipse()
    for _ in range(5):
        src, dst = random_warp(rng, mask)
        tps = fit_tps(src, dst)
        map_x, map_y = tps_source_map(tps, (3, 5, 80, 70), dtype=np.float64)
        ys, xs = np.mgrid[3:83, 5:75]
        flow = tps_flow_reference(tps, ys, xs)
        assert np.abs(map_x - (xs - flow[..., 0])).max() < 1e-3
        assert np.abs(map_y - (ys - flow[..., 1])).max() < 1e-3
        # At the destination points the flow is exactly the requested displacement.
        assert np.allclose(tps_flow_reference(tps, dst[:, 1], dst[:, 0]), dst - src, atol=1e-6)


def test_compiled_tps_solve_matches_lapack():
    rng = np.random.default_rng(14)
    mask = ellipse()
    for _ in range(10):
        src, dst = random_warp(rng, mask)
        if degenerate_targets(dst):
            continue
        tps = fit_tps(src, dst)
        k = len(dst)
        system = np.zeros((k + 3, k + 3))
        system[:k, :k] = T._tps_kernel(((dst[:, None] - dst[None]) ** 2).sum(-1))
        system[:k, k:] = np.c_[dst, np.ones(k)]
        system[k:, :k] = system[:k, k:].T
        expected = np.linalg.solve(system, np.r_[dst - src, np.zeros((3, 2))])
        assert np.allclose(np.r_[tps.weights, tps.affine], expected, rtol=1e-9, atol=1e-12)
    square = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    assert not np.any(np.r_[fit_tps(square, square).weights, fit_tps(square, square).affine])  # identity: exact 0


def test_segment_draws_are_independent_of_other_segments_outcomes():
    """Each segment gets the same number of draws, so a fallback in one never shifts another's."""
    image, masks, refs = scene()
    empty = np.zeros_like(masks[0])
    with_empty = distort_masks(image, [empty, masks[1], masks[2]], [None, refs[1], refs[2]],
                               np.random.default_rng(21))
    normal = distort_masks(image, masks, refs, np.random.default_rng(21))
    for (c1, m1), (c2, m2) in zip(with_empty[1:], normal[1:]):
        assert np.array_equal(c1, c2) and np.array_equal(m1, m2)
    assert not with_empty[0][0].any() and not with_empty[0][1].any()


def test_tiny_and_empty_masks_are_not_warped():
    canvas = np.zeros((H, W, 3), np.uint8)
    tiny = np.zeros((H, W), bool)
    tiny[10:12, 10:12] = True  # 4 contour points < 11
    canvas[tiny] = 200
    result = shape_distort(canvas, tiny, np.array([0, 1, 2]), np.full((3, 2), 0.3))
    assert not result.warped and result.reason == "short_contour"
    assert np.array_equal(result.content, canvas) and np.array_equal(result.mask, tiny)
    empty = shape_distort(canvas, np.zeros((H, W), bool), np.array([0]), np.zeros((1, 2)))
    assert not empty.warped and empty.reason == "no_contour"
    assert contour_points(tiny) is None


def test_degenerate_targets():
    line = np.c_[np.linspace(0, 50, 10), np.full(10, 7.0)]
    assert degenerate_targets(line) == "collinear"
    tilted = np.c_[np.linspace(0, 50, 10), np.linspace(3, 30, 10)]
    assert degenerate_targets(tilted) == "collinear"
    spread = np.random.default_rng(9).uniform(0, 90, (10, 2))
    assert degenerate_targets(spread) is None
    close = spread.copy()
    close[4] = close[2] + 0.4
    assert degenerate_targets(close) == "duplicate"
    with pytest.raises(ValueError, match="collinear"):
        fit_tps(line, line)


def test_thin_line_and_shift_onto_neighbour_fall_back():
    canvas = np.zeros((H, W, 3), np.uint8)
    line = np.zeros((H, W), bool)
    line[40, 10:80] = True  # contour runs there and back along one row
    canvas[line] = 150
    result = shape_distort(canvas, line, np.array([0]), np.zeros((1, 2)))
    assert not result.warped and result.reason in ("collinear", "duplicate")
    assert np.array_equal(result.content, canvas)

    mask = ellipse()
    src = contour_points(mask)
    unit = (src[5] - src[3]) / (0.22 * np.sqrt(mask.sum()))  # sends point 3 onto point 5
    result = shape_distort(canvas, mask, np.array([3]), unit[None])
    assert not result.warped and result.reason == "duplicate"


def test_repeated_moved_index_keeps_last_shift():
    mask = ellipse()
    canvas = textured(np.random.default_rng(10), (100, 120, 140)) * mask[..., None]
    twice = shape_distort(canvas, mask, np.array([2, 2]), np.array([[0.3, 0.0], [-0.2, 0.1]]))
    last = shape_distort(canvas, mask, np.array([2]), np.array([[-0.2, 0.1]]))
    assert twice.warped and np.array_equal(twice.content, last.content)


# --- the whole image --------------------------------------------------------------------------------


def sources_of(masks) -> list[SegmentSource]:
    """Segment sources of full-image masks (disjoint), at one resolution: canvas box = bbox."""
    sources = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        y0, x0, y1, x1 = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if ys.size else (0, 0, 1, 1)
        sources.append(SegmentSource(y0, x0, mask[y0:y1, x0:x1], (y0, x0, y1, x1)))
    return sources


def segment_map_of(masks) -> np.ndarray:
    segment_map = np.full(masks[0].shape, -1, np.int32)
    for i, mask in enumerate(masks):
        segment_map[mask] = i
    return segment_map


def on_canvas(pieces, shape, n):
    """Per segment index < n: its piece's (content, mask) pasted on a blank canvas of `shape`."""
    out = [(np.zeros((*shape, 3), np.uint8), np.zeros(shape, bool)) for _ in range(n)]
    for piece in pieces:
        h, w = piece.mask.shape
        content, mask = out[piece.query]
        content[piece.y0:piece.y0 + h, piece.x0:piece.x0 + w] = piece.rgb
        mask[piece.y0:piece.y0 + h, piece.x0:piece.x0 + w] = piece.mask
    return out


def distort_masks(image, masks, refs, rng, cfg=DistortConfig()):
    """`distort_segments` over full-canvas query masks (disjoint), at one resolution and without a
    crop: per segment, its (content, mask) on a full canvas. refs[i] is segment i's colour
    reference, whatever its draw."""
    pieces = distort_segments(image, sources_of(masks), segment_map_of(masks), rng, cfg, lambda i, u: refs[i])
    return on_canvas(pieces, image.shape[:2], len(masks))


def scene(seed: int = 11):
    rng = np.random.default_rng(seed)
    image = textured(rng, (110, 130, 120), spread=25)
    a = ellipse(30, 30, 14, 18)
    b = ellipse(65, 60, 20, 25) & ~a
    c = ~(a | b)
    refs = [(textured(rng, (180, 90, 60), shape=(20, 30)), np.ones((20, 30), bool)),
            None,
            (textured(rng, (60, 90, 180), shape=(50, 40)), ellipse(25, 20, 20, 15, (50, 40)))]
    return image, [a, b, c], refs


def test_same_seed_same_output_other_seed_differs():
    image, masks, refs = scene()
    first = distort_masks(image, masks, refs, np.random.default_rng(42))
    again = distort_masks(image, masks, refs, np.random.default_rng(42))
    other = distort_masks(image, masks, refs, np.random.default_rng(43))
    assert len(first) == 3
    for (c1, m1), (c2, m2) in zip(first, again):
        assert np.array_equal(c1, c2) and np.array_equal(m1, m2)
    assert any(not np.array_equal(c1, c3) for (c1, _), (c3, _) in zip(first, other))
    for content, mask in first:
        assert content.shape == image.shape and content.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == bool


def test_all_probabilities_zero_gives_segment_canvases():
    image, masks, refs = scene()
    cfg = DistortConfig(p_color=0, p_resolution=0, p_shape=0)
    for (content, mask), query in zip(distort_masks(image, masks, refs, np.random.default_rng(0), cfg), masks):
        assert np.array_equal(content, image * query[..., None])
        assert np.array_equal(mask, query)


def test_each_distortion_alone_changes_the_segment():
    image, masks, refs = scene()
    for cfg in (DistortConfig(p_resolution=0, p_shape=0), DistortConfig(p_color=0, p_shape=0),
                DistortConfig(p_color=0, p_resolution=0)):
        content, _ = distort_masks(image, masks[:1], refs[:1], np.random.default_rng(1), cfg)[0]
        assert not np.array_equal(content, image * masks[0][..., None]), cfg


def test_colour_reference_draws_follow_every_distortion_draw():
    """The order the trainer's distorted ground truth depends on: all segments' distortion draws,
    then one uniform per segment, handed to `reference` only where the colour step is drawn."""
    image, masks, _ = scene()
    segment_map = np.where(masks[0], 0, np.where(masks[1], 1, 2)).astype(np.int32)
    cfg = DistortConfig(p_color=0.5)
    for seed in range(4):
        seen = {}

        def reference(i, u, seen=seen):
            seen[i] = u

        distort_segments(image, sources_of(masks), segment_map, np.random.default_rng(seed), cfg, reference)
        rng = np.random.default_rng(seed)
        draws = D.draw_segments(rng, cfg, 3)
        u = rng.random(3)
        assert seen == {i: u[i] for i in range(3) if draws[i].color}


def test_bad_inputs_and_config():
    image, masks, refs = scene()
    segment_map = segment_map_of(masks)
    sources = sources_of(masks)
    with pytest.raises(ValueError, match="no source"):
        distort_segments(image, sources[:2], segment_map, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        distort_segments(image.astype(np.float32), sources, segment_map, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs the photo's resize"):  # the caller's recipe picks it
        distort_segments(image, sources, segment_map, np.random.default_rng(0), canvas=(W // 2, H // 2))
    with pytest.raises(ValueError, match="p_shape"):
        DistortConfig(p_shape=1.5)
    with pytest.raises(ValueError, match="res_range"):
        DistortConfig(res_range=(0.0, 1.0))


# --- resolutions and crop: the official order (docs/method.md §4.4) ---------------------------------------


def stripes(period: float, size: int) -> np.ndarray:
    """size×size grey vertical stripes, cos of `period` px along x, amplitude 60 around 128."""
    row = 128 + 60 * np.cos(2 * np.pi * np.arange(size) / period)
    return np.repeat(np.repeat(row[None, :, None], size, 0), 3, 2).astype(np.uint8)


def stripe_amplitude(image: np.ndarray, period: float) -> float:
    """Amplitude of the stripes of `period` px in `image`, away from its 8-px border."""
    values = image[8:-8, 8:-8, 0].astype(float).mean(axis=0)
    x = np.arange(8, image.shape[1] - 8)
    values -= values.mean()
    return 2 * float(np.hypot((values * np.cos(2 * np.pi * x / period)).mean(),
                              (values * np.sin(2 * np.pi * x / period)).mean()))


@pytest.mark.parametrize("resize", [resize_area, resize_bicubic_pil])
def test_colour_and_resolution_run_at_the_original_resolution_before_the_resize(resize):
    """Stripes of 6 px in a 128² original are 3 px on the 64² canvas. Down/up-sampling by r = 0.5
    at the original resolution keeps them (they lie below 0.5 × its Nyquist frequency); at the
    canvas resolution, after the resize, it would wipe them out (they lie above 0.5 × its)."""
    n = 64
    image = stripes(6, 2 * n)
    source = SegmentSource(0, 0, np.ones((2 * n, 2 * n), bool), (0, 0, n, n))
    cfg = DistortConfig(p_color=0, p_shape=0, res_range=(0.5, 0.5))
    (piece,) = distort_segments(image, [source], np.zeros((n, n), np.int32), np.random.default_rng(0), cfg,
                                canvas=(n, n), resize=resize)
    plain = resize(image, (n, n))
    assert stripe_amplitude(plain, 3) > 40
    assert stripe_amplitude(piece.rgb, 3) > 0.85 * stripe_amplitude(plain, 3)
    assert stripe_amplitude(resample_resolution(plain, 0.5), 3) < 0.1 * stripe_amplitude(plain, 3)  # the old order
    undistorted = distort_segments(image, [source], np.zeros((n, n), np.int32), np.random.default_rng(0),
                                   DistortConfig(p_color=0, p_resolution=0, p_shape=0), canvas=(n, n), resize=resize)
    assert np.array_equal(undistorted[0].rgb, plain)  # a whole-image segment: exactly the photo's resize


@pytest.mark.parametrize("size", [96, 70])
def test_undistorted_segments_are_the_photos_resize_on_the_canvas(size):
    """Undistorted, each segment of a larger original lands where the resize of the whole image
    puts it: inside its (eroded) query mask it is the photo's resize, exactly when the scale is
    1/2, within a fraction of a level at another scale (where its window's edges fall between
    canvas pixels, rounded)."""
    rng = np.random.default_rng(3)
    big = cv2.resize(textured(rng, (120, 140, 100), shape=(48, 48)), (192, 192), interpolation=cv2.INTER_CUBIC)
    masks = [ellipse(91, 101, 50, 60, (192, 192))]
    masks.append(~masks[0])
    small = [cv2.resize(m.view(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).view(bool) for m in masks]
    sources = [s._replace(box=(0, 0, size, size)) for s in sources_of(masks)]  # the whole crop is every box
    cfg = DistortConfig(p_color=0, p_resolution=0, p_shape=0)
    pieces = distort_segments(big, sources, segment_map_of(small), np.random.default_rng(0), cfg, canvas=(size, size),
                              resize=resize_area)
    photo = resize_area(big, (size, size))
    for (content, mask), query in zip(on_canvas(pieces, (size, size), 2), small):
        inner = cv2.erode(query.view(np.uint8), np.ones((5, 5), np.uint8)).view(bool)
        diff = np.abs(content[inner].astype(int) - photo[inner])
        assert np.array_equal(mask, query) and (diff.max() == 0 if size == 96 else diff.mean() < 0.5)


def test_warp_runs_on_the_crop_with_the_cropped_mask():
    """The TPS warp comes after the crop: control points from the query mask as cropped, content
    outside the crop gone, exactly `shape_distort` on the cropped canvas (not the crop of a warp
    of the whole canvas)."""
    oy, ox, h, w = 30, 24, 48, 56
    for seed in range(3):
        image = textured(np.random.default_rng(seed), (120, 110, 100))
        mask = ellipse(40, 40, 22, 30)  # cut by the crop's top and left edges
        segment_map = np.where(mask, 0, -1).astype(np.int32)[oy:oy + h, ox:ox + w]
        cfg = DistortConfig(p_color=0, p_resolution=0)
        pieces = distort_segments(image, sources_of([mask]), segment_map, np.random.default_rng(seed), cfg,
                                  origin=(oy, ox))
        ((content, warped),) = on_canvas(pieces, (h, w), 1)
        d = D.draw_segments(np.random.default_rng(seed), cfg, 1)[0]
        crop = np.s_[oy:oy + h, ox:ox + w]
        expected = shape_distort((image * mask[..., None])[crop], mask[crop], d.moved, d.unit_shifts)
        assert expected.warped and np.array_equal(warped, expected.mask) and np.array_equal(content, expected.content)
        before_crop = shape_distort(image * mask[..., None], mask, d.moved, d.unit_shifts)
        assert not np.array_equal(before_crop.mask[crop], warped)


def test_segments_outside_the_crop_give_no_piece():
    masks = [ellipse(20, 20, 10, 10), ellipse(70, 70, 12, 12)]
    image = textured(np.random.default_rng(0), (100, 100, 100))
    segment_map = segment_map_of(masks)[50:, 50:]
    pieces = distort_segments(image, sources_of(masks), segment_map, np.random.default_rng(0), origin=(50, 50))
    assert [p.query for p in pieces] == [1]

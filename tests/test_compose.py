"""Composition rules on hand-made scenes, and `official` mode against the formula computed independently."""

import numpy as np
import pytest

from resail.pipeline.compose import Piece, compose, stretch_crop

H, W = 8, 10


def scene():
    """Stuff 0 fills the top half, stuff 1 the bottom; things 2 and 3 sit in the bottom half; 4 is unmatched."""
    seg = np.full((H, W), -1, np.int32)
    seg[:4] = 0
    seg[4:] = 1
    seg[5:7, 1:3] = 2
    seg[5:7, 6:8] = 3
    seg[0, 8:] = 4
    is_thing = [False, False, True, True, True]
    return seg, is_thing


def full_piece(q, value, mask):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[mask] = value
    return Piece(q, 0, 0, rgb, mask.copy())


def test_stuff_is_clipped_to_its_own_query_mask():
    seg, is_thing = scene()
    spill = np.ones((H, W), bool)  # a retrieved stuff mask covering everything
    out = compose(seg, is_thing, [full_piece(0, 50, spill)])
    assert (out[:4][seg[:4] == 0] == 50).all()
    assert (out[4:] == 0).all()  # not on stuff 1, not on things


def test_thing_spill_over_stuff_is_kept_and_overwrites_it():
    seg, is_thing = scene()
    stuff = full_piece(1, 30, seg == 1)
    m = np.zeros((H, W), bool)
    m[4:8, 0:4] = True  # thing 2's retrieved mask: larger than its query mask
    out = compose(seg, is_thing, [full_piece(2, 200, m), stuff])
    assert (out[4:8, 0:4] == 200).all()           # own mask and spill over stuff 1
    assert (out[seg == 3] == 0).all()             # thing 3 unmatched: black
    rest = (seg == 1) & ~m
    assert (out[rest] == 30).all()


def test_thing_spill_over_another_thing_is_removed():
    seg, is_thing = scene()
    m2 = np.zeros((H, W), bool)
    m2[5:7, 1:8] = True  # reaches into thing 3's query mask
    p3 = full_piece(3, 90, seg == 3)
    out = compose(seg, is_thing, [full_piece(2, 200, m2), p3, full_piece(1, 30, seg == 1)])
    assert (out[seg == 3] == 90).all()
    assert (out[5:7, 1:6] == 200).all()           # own mask and spill over (matched) stuff 1


def test_unmatched_segments_stay_black():
    seg, is_thing = scene()
    m = np.ones((H, W), bool)
    out = compose(seg, is_thing, [full_piece(2, 200, m)])
    assert (out[seg == 4] == 0).all() and (out[seg == 3] == 0).all() and (out[seg == 0] == 0).all()
    assert (out[seg == 2] == 200).all()
    assert (out[seg == -1] == 200).all()  # unassigned pixels take thing spill


def official_reference(seg, is_thing, pieces):
    """The summed formula of docs/method.md §3.2 on full canvases, written independently of the module."""
    n = len(is_thing)
    P = np.zeros((n, H, W, 3))
    Q = np.zeros((n, H, W))
    M = np.stack([(seg == i).astype(float) for i in range(n)])
    matched = np.zeros(n, bool)
    for p in pieces:
        h, w = p.mask.shape
        P[p.query, p.y0:p.y0 + h, p.x0:p.x0 + w] = p.rgb / 127.5
        Q[p.query, p.y0:p.y0 + h, p.x0:p.x0 + w] = p.mask
        matched[p.query] = True
    F = [i for i in range(n) if matched[i] and is_thing[i]]
    B = [i for i in range(n) if matched[i] and not is_thing[i]]
    g1 = sum((P[i] * M[i][..., None] for i in F + B), np.zeros((H, W, 3)))
    for f in F:
        g1 = g1 + P[f] * (1 - sum((M[j] for j in F if j != f), np.zeros((H, W))))[..., None]
    thing_union = np.clip(sum((Q[j] for j in F), np.zeros((H, W))), 0, 1)
    for b in B:
        g1 = g1 + P[b] * (M[b] * (1 - thing_union))[..., None]
    return np.clip(g1 * 127.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_official_mode_equals_formula(seed):
    rng = np.random.default_rng(seed)
    seg, is_thing = scene()
    pieces = []
    for q in range(4):
        if rng.random() < 0.2:
            continue
        h, w = rng.integers(2, 6, 2)
        y0, x0 = rng.integers(0, H - h), rng.integers(0, W - w)
        mask = rng.random((h, w)) < 0.7
        rgb = (rng.integers(0, 256, (h, w, 3)) * mask[..., None]).astype(np.uint8)
        pieces.append(Piece(q, int(y0), int(x0), rgb, mask))
    out = compose(seg, is_thing, pieces, mode="official")
    ref = official_reference(seg, is_thing, pieces)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_pieces_outside_the_canvas_are_clipped():
    seg, is_thing = scene()
    m = np.ones((4, 4), bool)
    rgb = np.full((4, 4, 3), 77, np.uint8)
    stuff = [full_piece(0, 10, seg == 0), full_piece(1, 20, seg == 1)]
    out = compose(seg, is_thing, stuff + [Piece(2, -2, -2, rgb, m), Piece(3, H - 1, W - 1, rgb, m)])
    assert out.shape == (H, W, 3)
    assert (out[:2, :2] == 77).all() and (out[2:4, 2:4] == 10).all()  # only the on-canvas quarter lands
    assert (out[H - 1, W - 1] == 77).all() and (out[H - 1, W - 2] == 20).all()


def test_stretch_crop_bicubic_image_nearest_mask():
    rgba = np.zeros((4, 2, 4), np.uint8)
    rgba[:2, :, :3] = 255
    rgba[:2, :, 3] = 255
    rgb, mask = stretch_crop(rgba, 8, 6)
    assert rgb.shape == (8, 6, 3) and mask.shape == (8, 6)
    assert mask[:4].all() and not mask[4:].any()


def test_unknown_mode():
    seg, is_thing = scene()
    with pytest.raises(ValueError, match="unknown composition mode"):
        compose(seg, is_thing, [], mode="sum")

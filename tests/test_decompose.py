"""Decomposition against a straightforward numpy/scipy reference on random label maps."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from resail.errors import InputError
from resail.pipeline.datasets import MAJORITY
from resail.pipeline.decompose import decompose, downscale, preserved, thing_lut

THINGS = (2, 3)
EIGHT = np.ones((3, 3), int)


def reference(label, inst, inst_classes, ratio, uncovered_rule):
    """Pixel loops and scipy labelling, written for clarity, not speed."""
    cands = {}
    instanced = set()
    if inst is not None:
        for k in range(1, int(inst.max()) + 1):
            m = inst == k
            if not m.any():
                continue
            c = inst_classes[k]
            if c == MAJORITY:
                c = int(np.bincount(label[m]).argmax())
                if c == 0:
                    continue
            cands.setdefault(c, []).append(m)
            instanced.add(c)
    for c in range(1, int(label.max()) + 1):
        m = label == c
        if not m.any():
            continue
        if c in THINGS and inst is not None:
            if uncovered_rule == "drop" or (uncovered_rule == "drop_if_instanced" and c in instanced):
                continue
            m = m & (inst == 0)
        comp, n = ndimage.label(m, structure=EIGHT)
        cands.setdefault(c, []).extend(comp == j for j in range(1, n + 1))
    out = []
    for c in sorted(cands):
        masks = cands[c]
        areas = [int(m.sum()) for m in masks]
        order = sorted(range(len(masks)), key=lambda i: (-areas[i], -i))
        total, run = sum(areas), 0
        for i in order:
            if run < ratio * total:
                out.append((c, masks[i]))
                run += areas[i]
    return out


def _full(seg, shape):
    m = np.zeros(shape, bool)
    m[seg.y0:seg.y0 + seg.h, seg.x0:seg.x0 + seg.w] = seg.mask
    return m


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), h=st.integers(1, 14), w=st.integers(1, 14), n_cls=st.integers(1, 5),
       with_inst=st.booleans(), majority=st.booleans(),
       uncovered_rule=st.sampled_from(["components", "drop", "drop_if_instanced"]),
       ratio=st.sampled_from([0.5, 0.9, 1.0]))
def test_matches_reference(seed, h, w, n_cls, with_inst, majority, uncovered_rule, ratio):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, n_cls + 1, (h, w)).astype(np.int32)
    inst = classes = None
    if with_inst:
        inst = np.where(rng.random((h, w)) < 0.3, rng.integers(1, 4, (h, w)), 0).astype(np.int32)
        k = int(inst.max())
        if majority:
            classes = np.full(k + 1, MAJORITY, np.int32)
        else:
            # Declared classes that agree with the label map, so the consistency check passes.
            label[inst > 0] = 2 + (inst[inst > 0] % 2)
            classes = np.array([0] + [2 + (i % 2) for i in range(1, k + 1)], np.int32)
    got = decompose(label, inst, classes, thing_lut(THINGS), ratio, uncovered_rule)
    want = reference(label, inst, classes, ratio, uncovered_rule)
    assert [s.class_id for s in got] == [c for c, _ in want]
    for s, (c, m) in zip(got, want):
        assert np.array_equal(_full(s, label.shape), m)
        assert s.area == m.sum() and s.mask.shape == (s.h, s.w) and s.is_thing == (c in THINGS)
        assert s.mask[0].any() and s.mask[-1].any() and s.mask[:, 0].any() and s.mask[:, -1].any()


def test_preserved_walk_keeps_largest_and_crossing_segment():
    assert preserved([10], 0.9) == [0]
    assert preserved([50, 30, 15, 5], 0.9) == [0, 1, 2]   # 80 < 90 before the 15: kept; then 95 ≥ 90
    assert preserved([5, 5, 5, 5], 0.5) == [3, 2]         # ties: reverse insertion order


def test_void_never_a_segment_and_8_connectivity():
    label = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], np.int32)
    segs = decompose(label, None, None, thing_lut(()), 1.0)
    assert len(segs) == 1 and segs[0].area == 2 and (segs[0].h, segs[0].w) == (2, 2)


def test_declared_class_disagreeing_with_label_map_is_an_error():
    label = np.full((4, 4), 1, np.int32)
    inst = np.zeros((4, 4), np.int32)
    inst[:2, :2] = 1
    with pytest.raises(InputError, match="annotated as class 2"):
        decompose(label, inst, np.array([0, 2], np.int32), thing_lut((2,)), where="x.png")
    label[0, 0] = 2
    label[0, 1] = 2
    assert any(s.class_id == 2 for s in decompose(label, inst, np.array([0, 2], np.int32), thing_lut((2,))))


def test_downscale_nearest_labels():
    img = np.zeros((100, 50, 3), np.uint8)
    lab = np.arange(5000, dtype=np.int32).reshape(100, 50) % 7
    i2, l2, n2 = downscale(img, lab, None, 20)
    assert i2.shape == (20, 10, 3) and l2.shape == (20, 10) and set(np.unique(l2)) <= set(range(7)) and n2 is None

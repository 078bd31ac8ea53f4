"""pipeline/guidance.py on a small baked toy work dir: the per-segment match draws, the distorted
ground truth (seeded, composed like the guidance, its colour references' cached statistics) and its
preview grid, and the guidance of a user's label map with a local resample that changes one segment.
The bake stage that uses the same composer: test_bake.py."""

import cv2
import numpy as np
import pytest

from builders.checks import SIDE
from resail.errors import InputError
from resail.index.retrieval import RetrievalIndex
from resail.index.search import SearchConfig
from resail.pipeline.color_transfer import lab_stats
from resail.pipeline.datasets import make_reader
from resail.pipeline.guidance import LabelMapGuidance, choose_ranks, open_composer, preview_distort, query_label_map
from resail.workdir import WorkDir


def test_sample_choice_is_reproducible_and_varies_with_seed():
    ids = np.arange(60).reshape(20, 3)
    ids[0] = -1
    ids[1, 1:] = -1
    sid = np.arange(100, 120)
    a = choose_ranks(ids, sid, "sample", seed=1)
    assert np.array_equal(a, choose_ranks(ids, sid, "sample", seed=1))
    assert not np.array_equal(a, choose_ranks(ids, sid, "sample", seed=2))
    assert a[0] == -1 and a[1] == 0 and ((a[2:] >= 0) & (a[2:] < 3)).all()
    assert (choose_ranks(ids, sid, "top1", seed=0)[1:] == 0).all()
    # per-segment draws: the same segment gets the same rank whatever batch it is in
    assert np.array_equal(choose_ranks(ids[5:], sid[5:], "sample", 1), a[5:])


def test_distorted_gt_is_seeded_and_composed_like_guidance(shared_baked, tmp_path):
    work = shared_baked
    comp = open_composer(work, "train")
    try:
        row = int(comp.ok_images()[0])
        a = comp.distorted_gt(row, np.random.default_rng(5))
        b = comp.distorted_gt(row, np.random.default_rng(5))
        c = comp.distorted_gt(row, np.random.default_rng(6))
        assert a.shape == (SIDE, SIDE, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
        seg_map, rows, _ = comp.segment_map(row)
        stuff_only = np.isin(seg_map, [i for i, r in enumerate(rows) if not comp.is_thing[r]])
        assert a[stuff_only].any()  # stuff keeps (distorted) content inside its own masks
        cls = comp.distorted_gt(row, np.random.default_rng(5), color_ref="class")
        assert cls.shape == a.shape
        # The cached colour-reference statistics are those of the reference crop itself.
        for seg_row in rows[:6]:
            for u in (0.0, 0.37, 0.999):
                for how in ("topk", "class"):
                    crop = comp.color_reference(int(seg_row), u, how)
                    stats = comp.color_reference_stats(int(seg_row), u, how)
                    if crop is None:
                        assert stats is None
                        continue
                    expected = lab_stats(*crop)
                    assert np.array_equal(stats.mean, expected.mean) and np.array_equal(stats.std, expected.std)
    finally:
        comp.close()
    out = preview_distort(work, tmp_path / "grid.png", n=2)
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * SIDE, 3 * SIDE, 3)


def test_label_map_guidance_and_local_resample(shared_baked):
    work = shared_baked
    seg = WorkDir(work).require_segments()
    reader = make_reader("ade20k", seg["params"]["root"])
    sample = reader.load(reader.records("val")[0])
    found = query_label_map(RetrievalIndex(work), sample.label_map, cfg=SearchConfig(k=5))
    g = LabelMapGuidance(work, found.segments, found.result, sample.label_map.shape, size=(SIDE, SIDE))
    try:
        first = g.compose()
        assert first.shape == (SIDE, SIDE, 3) and first.any()
        assert np.array_equal(first, g.compose())
        lm = g.label_map_at_size()
        assert lm.shape == (SIDE, SIDE) and set(np.unique(lm)) <= set(np.unique(sample.label_map)) | {0}
        # resample the largest segment that has several candidates: only its pixels may change
        multi = [i for i in range(len(g.segments)) if (g.ids[i] >= 0).sum() > 1]
        i = max(multi, key=lambda i: (g.segment_map == i).sum())
        for seed in range(20):
            before = g.chosen.copy()
            g.resample([i], seed)
            if g.chosen[i] != before[i]:
                break
        assert g.chosen[i] != before[i]
        assert np.array_equal(np.delete(g.chosen, i), np.delete(before, i))
        after = g.compose()
        changed = np.any(after != first, axis=2)
        if not g.is_thing[i]:
            assert not changed[g.segment_map != i].any()
    finally:
        g.close()


def test_label_map_guidance_refuses_a_map_without_segments(shared_baked):
    work = shared_baked
    index = RetrievalIndex(work)
    void = np.zeros((40, 50), np.int32)
    empty = query_label_map(index, void)
    with pytest.raises(InputError, match="my map: no segment"):
        LabelMapGuidance(work, empty.segments, empty.result, void.shape, size=(SIDE, SIDE), where="my map")


import cv2
import numpy as np
import pytest

from builders.store import write_fake_store
from resail.index.build import build_index
from resail.index.retrieval import RetrievalIndex
from resail.index.search import QueryBatch, SearchConfig, search
from resail.pipeline.store import SegmentStore


def ellipses(rng, n, side=128):
    out = np.zeros((n, side, side), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            c = tuple(int(v) for v in rng.integers(0, side, 2))
            axes = tuple(int(v) for v in rng.integers(8, side // 2, 2))
            cv2.ellipse(out[i], c, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool)


def reference_search(masks, bbox, ids, q, k, skip=(), band_only=True, lam=1.0):
    """Brute force in numpy: score every allowed row, restrict to the size band when it holds ≥ k."""
    qm = masks[q].reshape(-1)
    t = masks.reshape(len(masks), -1)
    xor = (qm[None] != t).sum(1)
    denom = np.maximum(qm.sum(), t.sum(1))
    ratio = np.maximum(bbox[q] / bbox, bbox / bbox[q])
    d = xor / denom + lam * (ratio >= 2)
    allowed = np.ones(len(masks), bool)
    allowed[list(skip)] = False
    in_band = allowed & (ratio < 2)
    if band_only and in_band.sum() >= k:
        allowed = in_band
    rows = np.flatnonzero(allowed)
    order = np.lexsort((ids[rows], d[rows]))[:k]
    return ids[rows][order].tolist(), d[rows][order]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    work = tmp_path_factory.mktemp("work")
    n = 180
    masks = ellipses(rng, n)
    masks[100:104] = masks[7]  # exact duplicates of row 7: ties broken by id
    bbox = np.exp(rng.uniform(np.log(50), np.log(50_000), n)).astype(np.int64)
    bbox[100:104] = bbox[7]
    class_id = np.where(np.arange(n) < 170, 3, 5)  # class 5 is tiny: 10 segments
    class_id[175] = 9  # a class with a single segment
    image_id = [f"img{i // 4:04d}" for i in range(n)]
    seg_ids = np.arange(1000, 1000 + n)[::-1].copy()  # ids run opposite to rows
    write_fake_store(work, masks=masks, class_id=class_id, bbox_area=bbox, image_id=image_id, segment_id=seg_ids)
    return work, masks, bbox, class_id, image_id, seg_ids


def train_queries(store, rows):
    work, masks, bbox, class_id, image_id, seg_ids = store
    with SegmentStore(work, "train") as st:
        return QueryBatch(class_id=class_id[rows], canonical=st.packed_rows("canonical", rows),
                          prefilter=st.packed_rows("prefilter", rows), bbox_area=bbox[rows],
                          segment_id=seg_ids[rows], image_id=[image_id[i] for i in rows])


@pytest.mark.parametrize("ivf", [False, True])
def test_prefilter_rerank_equals_exact_when_kprime_covers_band(store, tmp_path, ivf):
    work, masks, bbox, class_id, image_id, seg_ids = store
    build_index(work, rebuild=True, progress=False, ivf_threshold=50 if ivf else 10**9)
    index = RetrievalIndex(work)
    assert index.shard(3).params.kind == ("ivf" if ivf else "flat")
    rows = np.flatnonzero(class_id == 3)[::5]
    q = train_queries(store, rows)
    k = 10
    # K' below the shard size keeps the prefilter path on; it still covers every size band
    cfg = SearchConfig(k=k, k_prefilter=169, nprobe=10**6)
    got = search(index, q, cfg)
    cls = np.flatnonzero(class_id == 3)
    for j, r in enumerate(rows):
        own = int(np.flatnonzero(cls == r)[0])
        want_ids, want_scores = reference_search(masks[cls], bbox[cls], seg_ids[cls], own, k, skip=[own])
        assert got.segment_id[j].tolist() == want_ids
        assert np.array_equal(got.score[j], want_scores)


def test_kprime_at_least_shard_size_equals_exact(store):
    work, masks, bbox, class_id, image_id, seg_ids = store
    build_index(work, progress=False)
    index = RetrievalIndex(work)
    rows = np.flatnonzero(class_id == 3)[::3]
    q = train_queries(store, rows)
    a = search(index, q, SearchConfig(k=10, k_prefilter=256))
    b = search(index, q, SearchConfig(k=10, exact=True))
    assert np.array_equal(a.segment_id, b.segment_id) and np.array_equal(a.score, b.score)
    cls = np.flatnonzero(class_id == 3)
    for j, r in enumerate(rows):
        i = int(np.flatnonzero(cls == r)[0])
        want_ids, _ = reference_search(masks[cls], bbox[cls], seg_ids[cls], i, 10, skip=[i], band_only=False)
        assert b.segment_id[j].tolist() == want_ids


def test_self_exclusion_and_deterministic_ties(store):
    work, masks, bbox, class_id, image_id, seg_ids = store
    build_index(work, progress=False)
    index = RetrievalIndex(work)
    q = train_queries(store, np.array([7, 100]))
    for cfg in (SearchConfig(k=5, k_prefilter=20), SearchConfig(k=5, exact=True)):
        res = search(index, q, cfg)
        assert seg_ids[7] not in res.segment_id[0] and seg_ids[100] not in res.segment_id[1]
        # the duplicates score 0 and come back in ascending segment id
        dup = sorted(seg_ids[[7, 100, 101, 102, 103]].tolist())
        assert res.segment_id[0][:4].tolist() == [i for i in dup if i != seg_ids[7]]
        assert res.score[0][:4].tolist() == [0.0] * 4
        again = search(index, q, cfg)
        assert np.array_equal(res.segment_id, again.segment_id)


def test_exclude_same_image(store):
    work, masks, bbox, class_id, image_id, seg_ids = store
    build_index(work, progress=False)
    index = RetrievalIndex(work)
    rows = np.array([7, 100, 41])
    q = train_queries(store, rows)
    for exact in (False, True):
        res = search(index, q, SearchConfig(k=10, k_prefilter=40, exclude_same_image=True, exact=exact))
        for j, r in enumerate(rows):
            same = {int(seg_ids[i]) for i in range(len(image_id)) if image_id[i] == image_id[r]}
            assert not same & set(res.segment_id[j].tolist())


def test_tiny_single_and_absent_classes(store):
    work, masks, bbox, class_id, image_id, seg_ids = store
    build_index(work, progress=False)
    index = RetrievalIndex(work)
    tiny = np.flatnonzero(class_id == 5)
    q = train_queries(store, np.array([tiny[0], 175]))
    q.class_id = np.array([5, 9])
    res = search(index, q, SearchConfig(k=20, k_prefilter=64))
    assert (res.segment_id[0] >= 0).sum() == tiny.size - 1 and res.reason[0] == ""
    assert (res.segment_id[1] < 0).all() and "no other" in res.reason[1]
    q.class_id = np.array([42, 5])
    res = search(index, q, SearchConfig(k=3))
    assert (res.segment_id[0] < 0).all() and "class 42" in res.reason[0]
    assert (res.segment_id[1] >= 0).sum() == 3


def test_max_score_marks_poor_matches_none(store):
    work, masks, bbox, class_id, image_id, seg_ids = store
    build_index(work, progress=False)
    index = RetrievalIndex(work)
    q = train_queries(store, np.array([7, 20]))
    full = search(index, q, SearchConfig(k=10))
    cut = float(np.nanmedian(full.score[1]))
    res = search(index, q, SearchConfig(k=10, max_score=cut))
    assert np.array_equal(res.segment_id[1] >= 0, full.score[1] <= cut)
    assert (res.score[0][:4] == 0).all()
    none = search(index, q, SearchConfig(k=10, max_score=-1.0))
    assert (none.segment_id < 0).all() and "max_score" in none.reason[0]

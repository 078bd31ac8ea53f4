import numpy as np

from resail.index.descriptors import pack_masks
from resail.index.score import as_words, popcounts, rerank_topk, scan_topk, score_rows, topk_smallest


def reference_scores(q_mask, q_bbox, masks, bboxes, lam=1.0):
    """The docs/method.md §2.2 score in plain numpy: XOR count / max area + λ·[bbox ratio ≥ 2]."""
    q = q_mask.reshape(-1).astype(np.int64)
    t = masks.reshape(len(masks), -1).astype(np.int64)
    xor = (q[None] != t).sum(1)
    denom = np.maximum(q.sum(), t.sum(1))
    shape = np.where(denom == 0, 0.0, xor / np.maximum(denom, 1).astype(np.float64))
    ratio = np.maximum(q_bbox / bboxes, bboxes / q_bbox)
    return shape + lam * (ratio >= 2)


def reference_topk(scores, ids, k):
    order = np.lexsort((ids, scores))
    return order[:k]


def random_masks(rng, n, side=128):
    density = rng.uniform(0, 1, (n, 1, 1))
    m = rng.random((n, side, side)) < density
    m[0] = False  # an empty mask
    m[1] = True
    return m


def test_kernel_equals_numpy_reference_exactly():
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 64)
    words = as_words(pack_masks(masks))
    areas = popcounts(words)
    assert areas.tolist() == masks.reshape(64, -1).sum(1).tolist()
    bboxes = rng.integers(1, 5000, 64).astype(np.int64)
    bboxes[:4] = [10, 20, 5, 19]  # ratios exactly 2 and just below
    rows = np.arange(64, dtype=np.int64)
    for lam in (1.0, 0.37):
        for qi in range(0, 64, 7):
            got = score_rows(words[qi], areas[qi], bboxes[qi], words, areas, bboxes, rows, lam)
            want = reference_scores(masks[qi], bboxes[qi], masks, bboxes, lam)
            assert np.array_equal(got, want)  # bit for bit


def test_size_term_boundary():
    masks = np.zeros((3, 128, 128), bool)
    masks[:, :10, :10] = True
    words = as_words(pack_masks(masks))
    areas = popcounts(words)
    bboxes = np.array([10, 20, 19], np.int64)
    got = score_rows(words[0], areas[0], bboxes[0], words, areas, bboxes, np.arange(3), 1.0)
    assert got.tolist() == [0.0, 1.0, 0.0]


def test_topk_breaks_ties_by_id():
    scores = np.array([0.5, 0.1, 0.5, 0.1, 0.3, 0.5])
    ids = np.array([9, 7, 3, 2, 8, 1], np.int64)
    assert topk_smallest(scores, ids, 4).tolist() == [3, 1, 4, 5]
    assert topk_smallest(scores, ids, 10).tolist() == reference_topk(scores, ids, 10).tolist()


def test_scan_and_rerank_match_reference_topk():
    rng = np.random.default_rng(1)
    n = 300
    masks = rng.random((n, 128, 128)) < 0.3
    masks[50:60] = masks[5]  # duplicates: ties broken by id
    words = as_words(pack_masks(masks))
    areas = popcounts(words)
    bboxes = rng.integers(100, 400, n).astype(np.int64)
    seg_ids = rng.permutation(10 * n)[:n].astype(np.int64)
    queries = np.array([5, 17, 200], np.int64)
    skip = np.array([[5], [-1], [200]], np.int64)
    q = (words[queries], areas[queries], bboxes[queries])
    rows, scores = scan_topk(*q, words, areas, bboxes, seg_ids, skip, 1.0, 12)
    cands = np.tile(np.arange(n, dtype=np.int64), (3, 1))
    cands[0, 5] = cands[2, 200] = -1
    rows2, scores2 = rerank_topk(*q, words, areas, bboxes, seg_ids, cands, 1.0, 12)
    assert np.array_equal(rows, rows2) and np.array_equal(scores, scores2)
    for j, qi in enumerate(queries):
        ref = reference_scores(masks[qi], bboxes[qi], masks, bboxes)
        keep = np.flatnonzero(np.arange(n) != skip[j, 0])
        want = keep[reference_topk(ref[keep], seg_ids[keep], 12)]
        assert rows[j].tolist() == want.tolist()
        assert np.array_equal(scores[j], ref[want])
    assert 5 not in rows[0] and rows[1][0] == 17


def test_fewer_candidates_than_k_pads():
    masks = np.zeros((2, 128, 128), bool)
    masks[:, :5, :5] = True
    words = as_words(pack_masks(masks))
    areas = popcounts(words)
    bb = np.array([25, 25], np.int64)
    rows, scores = scan_topk(words[:1], areas[:1], bb[:1], words, areas, bb, np.array([4, 3]), np.array([[0]]), 1.0, 5)
    assert rows[0].tolist() == [1, -1, -1, -1, -1] and np.isinf(scores[0, 1:]).all()

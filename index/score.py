"""Exact retrieval score on bit-packed canonical masks (numba kernels).

Score of query s against training candidate t (docs/method.md §2.2; lower is better):

    D(s, t) = |S_s xor S_t| / max(a_s, a_t) + λ · [max(b_s / b_t, b_t / b_s) ≥ 2]

with S the R×R canonical masks, a their popcounts and b the bbox areas in source pixels. Masks
arrive as rows of R·R/8 bytes (`index.descriptors.pack_masks`) and are scanned as uint64 words,
so one 128×128 pair costs 256 XOR+POPCNT instead of 16,384 float multiply-adds. Two empty masks
score shape 0 (the official float code would give NaN; an empty canonical mask only happens for
a thin segment that nearest resampling misses entirely).

Every score is computed in float64 as one division plus one addition, so the tests' numpy
reference reproduces it bit for bit. Ties break by segment id, which makes results deterministic.

The kernels are small pure functions over contiguous typed arrays and compile once per machine
(`cache=True`).
"""

from __future__ import annotations

import numba as nb
import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


def as_words(packed: np.ndarray) -> np.ndarray:
    """N×B uint8 packed rows → N×(B/8) uint64 words (a view when already contiguous)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.shape[-1] % 8:
        raise ValueError(f"packed rows of {packed.shape[-1]} bytes are not a whole number of 64-bit words")
    return packed.view(np.uint64)


@nb.njit(inline="always", cache=True)
def _popcount64(x):
    # The SWAR form; LLVM turns it into one POPCNT instruction on CPUs that have it.
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


@nb.njit(cache=True)
def popcounts(words):
    """Set bits per row of an N×W uint64 array (the canonical area a)."""
    n, w = words.shape
    out = np.empty(n, np.int64)
    for i in range(n):
        s = np.uint64(0)
        for j in range(w):
            s += _popcount64(words[i, j])
        out[i] = np.int64(s)
    return out


@nb.njit(inline="always", cache=True)
def _xor_count(q, words, row):
    s = np.uint64(0)
    for j in range(q.shape[0]):
        s += _popcount64(q[j] ^ words[row, j])
    return np.int64(s)


@nb.njit(inline="always", cache=True)
def _score(xor, a_s, a_t, b_s, b_t, lam):
    denom = max(a_s, a_t)
    shape = 0.0 if denom == 0 else np.float64(xor) / np.float64(denom)
    # max(b_s/b_t, b_t/b_s) >= 2 in exact integer arithmetic
    if max(b_s, b_t) >= 2 * min(b_s, b_t):
        return shape + lam
    return shape


@nb.njit(cache=True)
def score_rows(q, a_s, b_s, words, areas, bbox_areas, rows, lam):
    """Exact D of one query (W uint64 words, area a_s, bbox area b_s) against `rows` of a shard."""
    out = np.empty(rows.shape[0], np.float64)
    for i in range(rows.shape[0]):
        r = rows[i]
        out[i] = _score(_xor_count(q, words, r), a_s, areas[r], b_s, bbox_areas[r], lam)
    return out


@nb.njit(inline="always", cache=True)
def _insert(best_s, best_id, best_row, n, k, s, sid, row):
    """Insert (s, sid) into the ascending top list of length n ≤ k; returns the new length."""
    if n == k and (s > best_s[n - 1] or (s == best_s[n - 1] and sid >= best_id[n - 1])):
        return n
    i = n if n < k else k - 1
    while i > 0 and (best_s[i - 1] > s or (best_s[i - 1] == s and best_id[i - 1] > sid)):
        best_s[i] = best_s[i - 1]
        best_id[i] = best_id[i - 1]
        best_row[i] = best_row[i - 1]
        i -= 1
    best_s[i] = s
    best_id[i] = sid
    best_row[i] = row
    return n + 1 if n < k else n


@nb.njit(cache=True)
def topk_smallest(scores, ids, k):
    """Positions of the k smallest scores, ascending by (score, id); fewer when fewer exist."""
    k = min(k, scores.shape[0])
    best_s = np.empty(k, np.float64)
    best_id = np.empty(k, np.int64)
    best_row = np.empty(k, np.int64)
    n = 0
    for i in range(scores.shape[0]):
        n = _insert(best_s, best_id, best_row, n, k, scores[i], ids[i], i)
    return best_row[:n]


@nb.njit(cache=True)
def rerank_topk(q_words, q_areas, q_bbox, words, areas, bbox_areas, seg_ids, cands, lam, k):
    """Exact top-k of each query over its candidate rows.

    q_words: Q×W uint64; q_areas, q_bbox: Q int64; words: N×W uint64 shard masks; areas,
    bbox_areas, seg_ids: N int64; cands: Q×M int64 shard rows, -1 = no candidate.
    Returns (rows Q×k int64, -1 padded; scores Q×k float64, inf padded), ascending by (score, id).
    """
    nq = q_words.shape[0]
    rows_out = np.full((nq, k), -1, np.int64)
    scores_out = np.full((nq, k), np.inf, np.float64)
    best_id = np.empty(k, np.int64)
    for qi in range(nq):
        q = q_words[qi]
        n = 0
        for c in range(cands.shape[1]):
            r = cands[qi, c]
            if r < 0:
                continue
            s = _score(_xor_count(q, words, r), q_areas[qi], areas[r], q_bbox[qi], bbox_areas[r], lam)
            n = _insert(scores_out[qi], best_id, rows_out[qi], n, k, s, seg_ids[r], r)
    return rows_out, scores_out


@nb.njit(cache=True)
def scan_topk(q_words, q_areas, q_bbox, words, areas, bbox_areas, seg_ids, skip, lam, k):
    """Exact top-k of each query over every row of the shard except those it must skip.

    skip: Q×E int64 rows each query must not return (its own segment, its image's segments),
    -1 padded. Same output as `rerank_topk`. Cost: N·W popcounts per query.
    """
    nq = q_words.shape[0]
    n_rows = words.shape[0]
    rows_out = np.full((nq, k), -1, np.int64)
    scores_out = np.full((nq, k), np.inf, np.float64)
    best_id = np.empty(k, np.int64)
    excluded = np.zeros(n_rows, np.bool_)
    for qi in range(nq):
        for e in range(skip.shape[1]):
            if skip[qi, e] >= 0:
                excluded[skip[qi, e]] = True
        q = q_words[qi]
        n = 0
        for r in range(n_rows):
            if excluded[r]:
                continue
            s = _score(_xor_count(q, words, r), q_areas[qi], areas[r], q_bbox[qi], bbox_areas[r], lam)
            n = _insert(scores_out[qi], best_id, rows_out[qi], n, k, s, seg_ids[r], r)
        for e in range(skip.shape[1]):
            if skip[qi, e] >= 0:
                excluded[skip[qi, e]] = False
    return rows_out, scores_out


@nb.njit(inline="always", cache=True)
def _skipped(skip, qi, row):
    for e in range(skip.shape[1]):
        if skip[qi, e] == row:
            return True
    return False


@nb.njit(cache=True)
def band_candidates(labels, lo, hi, skip, keep, min_in_band):
    """Prefilter hits → rerank candidates: the first `keep` hits of each query in its size band.

    labels: Q×F shard rows from FAISS, nearest first, -1 padded; lo, hi: Q band row ranges;
    skip: Q×E rows never to return (-1 padded). When fewer than `min_in_band` usable hits lie in
    the band, the band is ignored and the first `keep` usable hits are taken (the exact rerank
    then charges them the size term). Returns Q×keep int64, -1 padded.
    """
    nq, f = labels.shape
    out = np.full((nq, keep), -1, np.int64)
    for qi in range(nq):
        n_band = 0
        for j in range(f):
            row = labels[qi, j]
            if row >= lo[qi] and row < hi[qi] and not _skipped(skip, qi, row):
                n_band += 1
        restrict = n_band >= min_in_band
        n = 0
        for j in range(f):
            if n == keep:
                break
            row = labels[qi, j]
            if row < 0 or _skipped(skip, qi, row):
                continue
            if restrict and (row < lo[qi] or row >= hi[qi]):
                continue
            out[qi, n] = row
            n += 1
    return out

"""Batched shape retrieval: FAISS prefilter in the size band, exact numba rerank, top-k.

For every query segment of class c:

1. **Prefilter.** The class shard returns the K' (default 256) training rows nearest in Hamming
   distance between r×r masks, restricted to the query's *size band* (bbox-area ratio < 2) when
   the band holds at least k usable rows. Shard rows are in size order, so the band is one row
   range [lo, hi):
   * flat shards search exactly that slice of their codes (brute-force Hamming k-NN; the cost
     is proportional to the band, never to the class);
   * IVF shards search the *size window* of the query's octave (`index.shards.size_windows`),
     a sub-shard that contains the whole band and is at most ~1.5× larger than it. FAISS binary
     IVF takes no ID selectors, so the window search *over-fetches* K'·|window|/|band| hits
     (×1.25, rounded up to multiples of 64 so queries still batch), probes enough lists to hold
     them, and keeps the first K' hits inside the band;
   * queries whose band holds fewer than k rows search the whole class shard, and when fewer
     than k of the fetched hits lie in the band, all of them go to the rerank (which charges the
     size term). GPU flat shards take the over-fetch path over the whole shard.
2. **Rerank.** The numba kernel scores the candidates exactly at R×R (`index.score`) and keeps
   the top k ascending by (score, segment id).

The query's own segment (by id) and, with `exclude_same_image`, every segment of its source image
never come back. `exact=True` skips the prefilter and scans the whole class with the same
kernel: that is the reference the benchmark measures recall against. When K' ≥ the shard size
the prefilter is skipped too (it would return every row), so both paths agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np

from ..errors import ConfigError
from .retrieval import RetrievalIndex, Shard
from .score import as_words, band_candidates, popcounts, rerank_topk, scan_topk
from .shards import ShardParams, size_bins

OVERFETCH_SLACK = 1.25
NPROBE_SLACK = 2.0
FETCH_STEP = 64
GPU_MAX_K = 2048  # largest k a GPU binary flat index accepts


@dataclass(frozen=True)
class SearchConfig:
    k: int = 10
    k_prefilter: int = 256  # K'
    lam: float = 1.0  # λ, weight of the size term
    exclude_same_image: bool = False
    max_score: float | None = None  # matches scoring above it become "none"
    exact: bool = False  # scan every candidate of the class (validation)
    nprobe: int | None = None  # IVF lists probed; None = the shard's recorded default
    max_fetch: int = 8192  # cap of the over-fetch of IVF/GPU shards

    def __post_init__(self):
        check_k(self.k, self.k_prefilter)


def check_k(k: int, k_prefilter: int) -> None:
    """The error of every retrieval for matches per segment (k) outside 1 ≤ k ≤ K' (`k_prefilter`)."""
    if k < 1:
        raise ConfigError("k", f"k {k}: must be at least 1")
    if k_prefilter < k:
        raise ConfigError("k_prefilter", f"k_prefilter {k_prefilter} must be at least k {k}")


@dataclass
class QueryBatch:
    """Query segments. canonical/prefilter are packed rows as in the segment store."""

    class_id: np.ndarray  # Q int
    canonical: np.ndarray  # Q×(R·R/8) uint8
    prefilter: np.ndarray  # Q×(r·r/8) uint8
    bbox_area: np.ndarray  # Q int
    segment_id: np.ndarray | None = None  # Q int64; -1 (or None) for segments outside the store
    image_id: Sequence[str] | None = None  # Q source image ids, for exclude_same_image

    def __len__(self) -> int:
        return int(np.asarray(self.class_id).shape[0])


@dataclass
class SearchResult:
    segment_id: np.ndarray  # Q×k int64 train segment ids, -1 = none
    score: np.ndarray  # Q×k float64, nan = none
    reason: list[str]  # per query: "" when it has at least one match, else why not

    def matches(self, q: int) -> list[tuple[int, float]]:
        keep = self.segment_id[q] >= 0
        return list(zip(self.segment_id[q][keep].tolist(), self.score[q][keep].tolist()))


def search(index: RetrievalIndex, queries: QueryBatch, cfg: SearchConfig = SearchConfig()) -> SearchResult:
    """Top-k training matches of every query segment, grouped by class internally."""
    nq = len(queries)
    ids = np.full((nq, cfg.k), -1, np.int64)
    scores = np.full((nq, cfg.k), np.nan, np.float64)
    reason = [""] * nq
    class_id = np.asarray(queries.class_id, dtype=np.int64)
    for c in np.unique(class_id).tolist():
        qs = np.flatnonzero(class_id == c)
        if not index.has_class(c):
            for q in qs:
                reason[q] = f"class {c} has no training segments in the index"
            continue
        shard = index.shard(c)
        rows, s = _search_class(shard, queries, qs, index, cfg)
        found = rows >= 0
        ids[qs] = np.where(found, shard.segment_id[np.maximum(rows, 0)], -1)
        scores[qs] = np.where(found, s, np.nan)
    if cfg.max_score is not None:
        above = scores > cfg.max_score  # nan compares False
        ids[above], scores[above] = -1, np.nan
    for q in np.flatnonzero((ids < 0).all(axis=1)):
        if not reason[q]:
            reason[q] = (f"no match scores ≤ max_score {cfg.max_score}" if cfg.max_score is not None
                         else f"class {class_id[q]} has no other training segment")
    return SearchResult(ids, scores, reason)


def _search_class(shard: Shard, queries: QueryBatch, qs: np.ndarray, index: RetrievalIndex, cfg: SearchConfig):
    q_words = as_words(np.asarray(queries.canonical)[qs])
    q_area = popcounts(q_words)
    q_bbox = np.asarray(queries.bbox_area, dtype=np.int64)[qs]
    skip = _skip_rows(shard, queries, qs, index, cfg.exclude_same_image)
    args = (shard.canonical, shard.canon_area, shard.bbox_area, shard.segment_id)
    if cfg.exact or cfg.k_prefilter >= shard.n:
        return scan_topk(q_words, q_area, q_bbox, *args, skip, cfg.lam, cfg.k)
    cands = _prefilter(shard, np.ascontiguousarray(np.asarray(queries.prefilter)[qs]), q_bbox, skip, cfg)
    return rerank_topk(q_words, q_area, q_bbox, *args, cands, cfg.lam, cfg.k)


def _skip_rows(shard: Shard, queries: QueryBatch, qs: np.ndarray, index: RetrievalIndex,
               same_image: bool) -> np.ndarray:
    """Q×E shard rows each query must not return, -1 padded."""
    per_query: list[np.ndarray] = []
    own = np.full(qs.size, -1, np.int64)
    if queries.segment_id is not None:
        own = shard.rows_of_segments(np.asarray(queries.segment_id, dtype=np.int64)[qs])
    for j, q in enumerate(qs):
        rows = own[j : j + 1][own[j : j + 1] >= 0]
        if same_image and queries.image_id is not None:
            rows = np.union1d(rows, shard.rows_of_image(index.table.image_code_of(queries.image_id[q])))
        per_query.append(rows)
    width = max(1, max(r.size for r in per_query))
    skip = np.full((qs.size, width), -1, np.int64)
    for j, rows in enumerate(per_query):
        skip[j, : rows.size] = rows
    return skip


def _prefilter(shard: Shard, codes: np.ndarray, q_bbox: np.ndarray, skip: np.ndarray, cfg: SearchConfig) -> np.ndarray:
    """Q×K' candidate rows (nearest first, -1 padded) for the rerank."""
    n = shard.n
    lo, hi = shard.band(q_bbox)
    n_skip = (skip >= 0).sum(axis=1)
    skip_in_band = ((skip >= lo[:, None]) & (skip < hi[:, None])).sum(axis=1)
    use_band = (hi - lo - skip_in_band) >= cfg.k
    # queries whose band is too small search the whole shard
    lo, hi = np.where(use_band, lo, 0), np.where(use_band, hi, n)
    want = cfg.k_prefilter + n_skip
    if shard.codes is not None and not shard.on_gpu:
        labels = _search_flat_slices(shard.codes, codes, lo, np.minimum(want, hi - lo), hi)
    else:
        windowed = use_band & bool(shard.windows)
        parts = []
        if windowed.any():
            parts.append((windowed, _search_windows(shard, codes[windowed], lo[windowed], hi[windowed],
                                                    want[windowed], q_bbox[windowed], cfg)))
        if (~windowed).any():
            rest = ~windowed
            parts.append((rest, _search_overfetch(shard.index, shard.params, 0, n, codes[rest], lo[rest], hi[rest],
                                                  want[rest], cfg)))
        labels = np.full((codes.shape[0], max(p.shape[1] for _, p in parts)), -1, np.int64)
        for sel, part in parts:
            labels[np.flatnonzero(sel), : part.shape[1]] = part
    return band_candidates(labels, lo, hi, skip, cfg.k_prefilter, cfg.k)


def _search_flat_slices(shard_codes: np.ndarray, codes: np.ndarray, lo: np.ndarray, k_fetch: np.ndarray,
                        hi: np.ndarray) -> np.ndarray:
    """Exact Hamming search of each query over its band's rows only: cost ∝ band size.

    Shard rows are in size order, so the band is the slice [lo, hi) of the flat shard's codes,
    searched with FAISS's brute-force Hamming k-NN (no copy, no selector checks).
    """
    labels = np.full((codes.shape[0], max(1, int(k_fetch.max()))), -1, np.int64)
    for j in range(codes.shape[0]):
        if k_fetch[j] <= 0:
            continue
        _, found = faiss.knn_hamming(codes[j : j + 1], shard_codes[lo[j] : hi[j]], int(k_fetch[j]))
        labels[j, : found.shape[1]] = np.where(found[0] >= 0, found[0] + lo[j], -1)
    return labels


def _search_windows(shard: Shard, codes, lo, hi, want, q_bbox, cfg: SearchConfig) -> np.ndarray:
    """Band queries of an IVF shard: each searches the size window of its octave."""
    octave = size_bins(q_bbox)
    parts = []
    for j in np.unique(octave).tolist():
        sel = np.flatnonzero(octave == j)
        w = shard.windows[j]
        parts.append((sel, _search_overfetch(w.index, w.params, w.start, w.stop, codes[sel], lo[sel], hi[sel],
                                             want[sel], cfg)))
    labels = np.full((codes.shape[0], max(p.shape[1] for _, p in parts)), -1, np.int64)
    for sel, part in parts:
        labels[sel, : part.shape[1]] = part
    return labels


def _search_overfetch(index, params: ShardParams, start: int, stop: int, codes: np.ndarray, lo: np.ndarray,
                      hi: np.ndarray, want: np.ndarray, cfg: SearchConfig) -> np.ndarray:
    """Search an index over shard rows [start, stop) that takes no selector: fetch enough hits
    that about `want` land in each query's band [lo, hi), and return them as shard rows.

    Fetch sizes are rounded up to multiples of 64 so queries still share FAISS calls, and IVF
    indexes probe enough lists to hold what they fetch.
    """
    n = stop - start
    band = np.maximum(np.minimum(hi, stop) - np.maximum(lo, start), 1)
    fetch = np.ceil(want * (n / band) * OVERFETCH_SLACK / FETCH_STEP) * FETCH_STEP
    cap = min(cfg.max_fetch, GPU_MAX_K) if params.kind == "flat" else cfg.max_fetch
    fetch = np.minimum(np.minimum(fetch, cap), n).astype(np.int64)
    labels = np.full((codes.shape[0], int(fetch.max())), -1, np.int64)
    base_nprobe = cfg.nprobe or params.nprobe
    for f in np.unique(fetch).tolist():
        sel = np.flatnonzero(fetch == f)
        if params.kind == "ivf":
            # the probed lists must hold about f rows: nlist/n lists per row, with slack for skew
            nprobe = min(params.nlist, max(base_nprobe, math.ceil(f * params.nlist / n * NPROBE_SLACK)))
            _, found = index.search(codes[sel], int(f), params=faiss.SearchParametersIVF(nprobe=nprobe))
        else:
            _, found = index.search(codes[sel], int(f))
        labels[sel, : found.shape[1]] = np.where(found >= 0, found + start, -1)
    return labels

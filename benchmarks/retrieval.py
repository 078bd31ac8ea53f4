"""Retrieval benchmark: FAISS prefilter + exact rerank vs exact scans, one class at N = 10k and 100k.

Masks are made like real segments: star-shaped polygons, ellipses and unions of 2-4 such blobs,
some with holes, drawn at a random aspect ratio (1:4 to 4:1) and size, cropped to their tight
bbox and resized (legacy nearest) to 128×128 and 32×32. bbox areas are log-uniform over
64 px .. 256k px, independent of the shape, so a size band holds ~1/4 of the class. The 1,000
queries are held-out draws from the same generator.

Methods, all on the same store, same queries, same thread count:
  (a) official-style exact float SSD: ||S_s − S_t||² over 128×128 float32 crops, divided by
      max(a_s, a_t), plus the size term; torch, chunked over candidates (the bit masks are
      unpacked to floats once per chunk, shared by the timed queries). O(N) per query, so it is
      timed on a subset of the queries.
  (b) exact bit-packed scan with the numba kernel (`search(..., exact=True)`).
  (c) FAISS prefilter (K' candidates in the size band) + exact numba rerank (`search(...)`).

Recall of (c) against (b): for each query, the fraction of (b)'s top-k that (c)'s top-k holds,
where a returned id outside (b)'s list still counts when its (exact) score equals (b)'s k-th
score (ties at the cut make several answers equally right). recall@1 is the same with k = 1.

Last output line: one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import faiss
import numpy as np

from resail.benchmarks._common import emit, peak_rss_mb
from resail.common import nearest_torch_legacy
from resail.index.build import build_index
from resail.index.retrieval import RetrievalIndex
from resail.index.search import QueryBatch, SearchConfig, search
from resail.tests.builders.store import write_fake_store
from resail.threads import use

R, r = 128, 32


# ------------------------------------------------------------------ realistic masks


def _blob(rng, canvas, cy, cx, ry, rx):
    """Draw one star-shaped polygon or ellipse centred at (cy, cx) with radii (ry, rx)."""
    if rng.random() < 0.4:
        cv2.ellipse(canvas, (int(cx), int(cy)), (max(1, int(rx)), max(1, int(ry))), float(rng.uniform(0, 180)),
                    0, 360, 1, -1)
        return
    m = int(rng.integers(5, 14))
    ang = np.sort(rng.uniform(0, 2 * np.pi, m))
    rad = rng.uniform(0.45, 1.0, m)
    pts = np.stack([cx + rx * rad * np.cos(ang), cy + ry * rad * np.sin(ang)], 1)
    cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)


def make_segment(rng) -> np.ndarray:
    """One bbox-cropped boolean segment mask shaped like a real one."""
    side = int(rng.integers(24, 200))
    aspect = float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
    h, w = max(8, int(side * np.sqrt(aspect))), max(8, int(side / np.sqrt(aspect)))
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.choice([1, 1, 2, 3, 4]))):
        _blob(rng, canvas, rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w,
              rng.uniform(0.2, 0.5) * h, rng.uniform(0.2, 0.5) * w)
    for _ in range(int(rng.choice([0, 0, 1, 2]))):  # holes
        cv2.ellipse(canvas, (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h)),
                    (max(1, int(rng.uniform(0.03, 0.12) * w)), max(1, int(rng.uniform(0.03, 0.12) * h))),
                    float(rng.uniform(0, 180)), 0, 360, 0, -1)
    mask = canvas.astype(bool)
    if not mask.any():
        mask[h // 2, w // 2] = True
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]


def make_segments(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed canonical (n×2048) and prefilter (n×128) rows and bbox areas of n segments."""
    rng = np.random.default_rng(seed)
    canon = np.empty((n, R * R // 8), np.uint8)
    pre = np.empty((n, r * r // 8), np.uint8)
    for i in range(n):
        crop = make_segment(rng)
        canon[i] = np.packbits(nearest_torch_legacy(crop, R, R))
        pre[i] = np.packbits(nearest_torch_legacy(crop, r, r))
    bbox = np.exp(rng.uniform(np.log(64), np.log(256 * 1024), n)).astype(np.int64)
    return canon, pre, bbox


# ------------------------------------------------------------------ methods


def float_ssd_topk(train_canon, train_bbox, q_canon, q_bbox, k, chunk=1024):
    """(a) official-style exact score with float32 SSD over 128×128 crops, chunked."""
    import torch  # here only: benchmarks/scale.py imports this module for its masks and recall

    n = train_canon.shape[0]
    q = torch.from_numpy(np.unpackbits(q_canon, axis=1).astype(np.float32))  # Q×16384
    q_area = q.sum(1)
    qb = torch.from_numpy(q_bbox.astype(np.float64))
    scores = torch.empty((q.shape[0], n), dtype=torch.float32)
    for s in range(0, n, chunk):
        t = torch.from_numpy(np.unpackbits(train_canon[s : s + chunk], axis=1).astype(np.float32))  # C×16384
        t_area = t.sum(1)
        tb = torch.from_numpy(train_bbox[s : s + chunk].astype(np.float64))
        for i in range(q.shape[0]):
            ssd = ((t - q[i]) ** 2).sum(1)
            shape = ssd / torch.maximum(t_area, q_area[i])
            ratio = torch.maximum(qb[i] / tb, tb / qb[i])
            scores[i, s : s + chunk] = shape + (ratio >= 2).float()
    return torch.topk(scores, k, dim=1, largest=False).values.numpy()


def recall(exact_ids, exact_scores, got_ids, got_scores, k):
    """Mean fraction of the exact top-k found, ties at the exact k-th score counted as found."""
    total = 0.0
    for e_id, e_s, g_id, g_s in zip(exact_ids[:, :k], exact_scores[:, :k], got_ids[:, :k], got_scores[:, :k]):
        valid = e_id >= 0
        if not valid.any():
            total += 1.0
            continue
        kth = e_s[valid][-1]
        exact_set = set(e_id[valid].tolist())
        hits = sum(1 for i, s in zip(g_id.tolist(), g_s.tolist()) if i >= 0 and (i in exact_set or s == kth))
        total += min(hits, int(valid.sum())) / int(valid.sum())
    return total / len(exact_ids)


def run_size(n, data, queries, args, workdir):
    canon, pre, bbox = data
    q_canon, q_pre, q_bbox = queries
    work = Path(workdir) / f"n{n}"
    write_fake_store(work, masks=canon[:n], prefilter=pre[:n], class_id=np.ones(n, np.int32), bbox_area=bbox[:n],
                     crop_side=2)
    t0 = time.perf_counter()
    manifest = build_index(work, progress=False)
    build_s = time.perf_counter() - t0
    index = RetrievalIndex(work)
    shard = index.shard(1)
    nq = q_canon.shape[0]
    batch = QueryBatch(class_id=np.ones(nq, np.int64), canonical=q_canon, prefilter=q_pre, bbox_area=q_bbox)
    k = args.k
    cfg = SearchConfig(k=k, k_prefilter=args.k_prefilter)
    warm = QueryBatch(class_id=np.ones(8, np.int64), canonical=q_canon[:8], prefilter=q_pre[:8], bbox_area=q_bbox[:8])
    search(index, warm, cfg), search(index, warm, SearchConfig(k=k, exact=True))  # compile + touch caches

    t0 = time.perf_counter()
    approx = search(index, batch, cfg)
    c_ms = (time.perf_counter() - t0) * 1000 / nq
    t0 = time.perf_counter()
    exact = search(index, batch, SearchConfig(k=k, exact=True))
    b_ms = (time.perf_counter() - t0) * 1000 / nq

    n_a = min(nq, args.ssd_queries if n <= 20_000 else max(2, args.ssd_queries // 5))
    t0 = time.perf_counter()
    a_scores = float_ssd_topk(canon[:n], bbox[:n], q_canon[:n_a], q_bbox[:n_a], k)
    a_ms = (time.perf_counter() - t0) * 1000 / n_a
    a_agrees = bool(np.allclose(a_scores, exact.score[:n_a], atol=1e-5))

    out = {
        "n": n,
        "index_kind": shard.params.kind,
        "nlist": shard.params.nlist,
        "nprobe": shard.params.nprobe,
        "build_s": round(build_s, 3),
        "index_bytes": int(manifest["bytes"]),
        "ms_per_query": {"a_float_ssd": round(a_ms, 3), "b_exact_bits": round(b_ms, 4),
                         "c_prefilter_rerank": round(c_ms, 4)},
        "a_queries_timed": n_a,
        "a_scores_match_b": a_agrees,
        "speedup_c_vs_a": round(a_ms / c_ms, 1),
        "speedup_c_vs_b": round(b_ms / c_ms, 1),
        "recall_at_1": round(recall(exact.segment_id, exact.score, approx.segment_id, approx.score, 1), 4),
        "recall_at_10": round(recall(exact.segment_id, exact.score, approx.segment_id, approx.score, min(10, k)), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (N = 2k and 5k, 100 queries)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="training segments per run")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--k-prefilter", type=int, default=256)
    ap.add_argument("--ssd-queries", type=int, default=50, help="queries timed for (a) at N ≤ 20k (÷5 above)")
    ap.add_argument("--threads", type=int, default=1, help="threads for FAISS and torch (numba kernels are serial)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder [default: a temp dir]")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([2_000, 5_000] if args.quick else [10_000, 100_000])
    if args.quick:
        args.queries = min(args.queries, 100)
        args.ssd_queries = min(args.ssd_queries, 10)

    use(threads=args.threads)  # FAISS and torch

    t0 = time.perf_counter()
    data = make_segments(max(sizes), args.seed)
    queries = make_segments(args.queries, args.seed + 1)
    gen_s = time.perf_counter() - t0
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
    }
    print(json.dumps({"machine": machine, "generate_s": round(gen_s, 1)}), flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = [run_size(n, data, queries, args, tmp) for n in sizes]
    small, big = results[0], results[-1]
    headline = {
        "bench": "retrieval",
        "n": big["n"],
        "queries": args.queries,
        "k": args.k,
        "k_prefilter": args.k_prefilter,
        "threads": args.threads,
        "recall_at_1": big["recall_at_1"],
        "recall_at_10": big["recall_at_10"],
        "ms_per_query": big["ms_per_query"],
        "speedup_c_vs_a": big["speedup_c_vs_a"],
        "speedup_c_vs_b": big["speedup_c_vs_b"],
        "cost_growth_c": round(big["ms_per_query"]["c_prefilter_rerank"]
                               / small["ms_per_query"]["c_prefilter_rerank"], 2),
        "size_growth": round(big["n"] / small["n"], 2),
        "build_s": big["build_s"],
        "index_bytes": big["index_bytes"],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "loadavg_end": os.getloadavg(),
        "per_size": results,
    }
    emit(headline)


if __name__ == "__main__":
    sys.exit(main())

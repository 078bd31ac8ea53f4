"""Scale: what the offline stages cost at the real datasets' resolution, measured on realistic
synthetic data and extrapolated to the full datasets; and the retrieval index of one class at
COCO-person size and at 1M segments.

Data: `resail data toy --preset {ade20k,cityscapes,cocostuff}-real` (docs/scale.md), generated
once into KEEP/data (default 2,000 + 200 ADE20K-like, 300 + 50 Cityscapes-like, 2,000 + 85
COCO-like images: the real train:val ratios). For each dataset, every offline stage runs from a
fresh work dir with 1 and with 2 jobs, each stage in its own child process:

  segments      `resail index build` stage 1 (decomposition into the segment store)
  index         `resail index build` stage 2 (FAISS shards; one process, jobs do not apply)
  bake_train    `resail guidance bake --split train` at the preset's training size
  bake_val      `resail guidance bake --split val`
  distort       `GuidanceComposer.distorted_gt` (the trainer's per-image work) in 1 / 2 worker
                processes, timed from a barrier as in benchmarks/distort.py

and, with 1 job, on the first half of the images (the half run shows whether a stage's cost per
image grows with the dataset, and gives the growth of its memory per image). Per stage: wall and
CPU seconds (main process and workers), the bytes per image of every artifact, and peak memory:
the main process's RSS (its VmHWM; `getrusage` would report the parent's size, which a child
inherits through fork and exec), the largest worker's and the whole tree's RSS, and the peak
*anonymous* memory (RSS less file-backed pages: the stores are memmapped, and the store pages a
bake touches count in its RSS but are cache) of the main process and the largest worker, sampled
every 50 ms with psutil.

Extrapolation to the full datasets (ADE20K 20,210 + 2,000; Cityscapes 2,975 + 500; COCO-Stuff
118,287 + 5,000) on 2, 16 and 64 cores (docs/scale.md):
  * the parallel part of a stage (decomposition, guidance composition) costs its measured 1-job
    seconds per image, divided by cores × the parallel efficiency from 1 to 2 jobs, held
    constant up to 64 cores (optimistic above one machine's disk);
  * the serial parts (merges, the index build, the bake's retrieval) run in one process; the
    index build and the retrieval are charged per class at the full class size, with the cost
    curves (build seconds and CPU ms/query against class size) of the retrieval part,
    calibrated to the realistic run;
  * two timings: on dedicated cores (each 1-job wall turned into CPU seconds by its stage's
    CPU/wall ratio, efficiency = 1-job CPU / 2-job CPU; the headline) and with this machine's
    walls (efficiency from the 1- and 2-job walls);
  * disk is linear in images (bytes per image of each artifact), the index per class; the two
    artifacts whose size depends on the photos' content are modelled for REAL photos, because
    the toy's procedural textures compress unlike photos: the crops as their exact pixel count
    (from the segment boxes) × the `jpeg` codec's bytes per crop pixel on real photographs
    (benchmarks/crops.py), the guidance cache as its uncompressed size ÷ gzip-1's ratio on real
    photos (both overridable: --crop-bytes-per-pixel, --guidance-ratio); the disk as the
    synthetic run wrote it is reported beside it;
  * peak RAM: workers hold one part at a time (constant); the main process grows linearly
    with the dataset at the rate measured between the half and the whole set.

Retrieval: one class of synthetic realistic masks (benchmarks/retrieval.py) at COCO-person size
(262,465: the person instances of COCO 2017 train, from instances_train2017.json; a figure
recalled, not recounted here) and at 1,000,000 segments (plus 10k and 100k for the cost curve):
build seconds, index bytes, RAM of the build and of the loaded index, ms/query of the prefilter
+ rerank (c) and of the exact scan (b), recall@1/@10 of (c) against (b).

    python benchmarks/scale.py [--keep DIR] [--quick] [--skip-retrieval] [--skip-stages]
                               [--reuse] [--remeasure-retrieval]

With --keep, the measurements are stored in KEEP/measured/ and KEEP/retrieval/results.json;
`--reuse` reports from them (recomputing the extrapolation) instead of measuring again.
Last line: one JSON object: the targets with their values, then every measured figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from resail import threads
from resail.benchmarks._common import TreeUsage, emit, peak_rss_mb

HERE = Path(__file__).resolve()

DATASETS = {  # reader name: preset, measured train/val images, full train/val images
    "ade20k": {"preset": "ade20k-real", "n": (2000, 200), "full": (20210, 2000)},
    "cityscapes": {"preset": "cityscapes-real", "n": (300, 50), "full": (2975, 500)},
    "cocostuff": {"preset": "cocostuff-real", "n": (2000, 85), "full": (118287, 5000)},
}
QUICK_N = {"ade20k": (60, 10), "cityscapes": (12, 4), "cocostuff": (60, 6)}
CORES = (2, 16, 64)
COCO_PERSON = 262_465
RETRIEVAL_SIZES = (10_000, 100_000, COCO_PERSON, 1_000_000)
MASK_CHUNK = 50_000
TARGETS = {"ade20k_2_cores_min": 30, "ade20k_16_cores_min": 5, "cocostuff_2_cores_h": 3, "ade20k_disk_gb": 10,
           "cocostuff_disk_gb": 60, "stage_rss_gb": 8, "retrieval_1m_ms": 1.0, "retrieval_1m_recall1": 0.99}
GB = 1e9
# Content-dependent sizes on real photographs (docs/scale.md): bytes per crop pixel of the `jpeg`
# crop codec (benchmarks/crops.py on scikit-image's six colour photos cropped by 48 ADE20K-like
# label maps: 0.530; raw RGBA is 4) and gzip-1's ratio on the guidance cache (the same photos at
# 256×256: 1.25).
REAL_CROP_BYTES_PER_PIXEL = 0.53
REAL_GUIDANCE_RATIO = 1.25


# ================================================================== child side: one stage


def _stage_segments(a: dict) -> dict:
    from resail.pipeline.segments_stage import SegmentsConfig, build_segments

    m = build_segments(SegmentsConfig(a["dataset"], Path(a["root"]), Path(a["work"]), jobs=a["jobs"]))
    return {"merge_s": m.get("merge_seconds", 0.0), "counts": m["counts"]}


def _stage_index(a: dict) -> dict:
    from resail.index.build import build_index

    m = build_index(Path(a["work"]), progress=False)
    return {"shards": {c: {"n": s["n"], "kind": s["kind"], "build_s": s.get("build_s", 0.0)}
                       for c, s in m["shards"].items()}, "bytes": m.get("bytes", 0)}


def _stage_bake(a: dict) -> dict:
    from resail.pipeline.bake import BakeConfig, bake

    m = bake(BakeConfig(Path(a["work"]), a["split"], jobs=a["jobs"], n_preview=0))
    return {"timings": m["timings"], "images": m["images"], "match_rows": m.get("match_rows")}


def _distort_worker(args) -> tuple[int, float, float]:
    work, rows, barrier = args
    from resail.pipeline.guidance import open_composer

    threads.init_worker()  # as a data-loader worker runs: one thread
    comp = open_composer(Path(work), "train")  # at the bake's (the preset's) training size
    try:
        for row in rows[:2]:  # warm-up: numba caches, first reads
            comp.distorted_gt(int(row), np.random.default_rng([1, int(row)]))
        barrier.wait()
        cpu, wall = time.process_time(), time.perf_counter()
        for row in rows:
            comp.distorted_gt(int(row), np.random.default_rng([0, int(row)]))
        return len(rows), time.process_time() - cpu, time.perf_counter() - wall
    finally:
        comp.close()


def _stage_distort(a: dict) -> dict:
    import multiprocessing as mp

    from resail.pipeline.guidance import open_composer

    comp = open_composer(Path(a["work"]), "train")
    rows = comp.ok_images()[: a["images"]]
    comp.close()
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(a["jobs"])
        with ctx.Pool(a["jobs"]) as pool:
            done = pool.map(_distort_worker, [(a["work"], rows[i::a["jobs"]], barrier) for i in range(a["jobs"])])
    images = sum(d[0] for d in done)
    return {"images": images, "wall_s": max(d[2] for d in done), "cpu_s": sum(d[1] for d in done)}


def _stage_toy(a: dict) -> dict:
    from resail.pipeline.toy import ToyConfig, make_toy_dataset

    cfg = ToyConfig.preset(a["preset"], n_train=a["n_train"], n_val=a["n_val"], n_jobs=a["jobs"])
    root = make_toy_dataset(Path(a["out"]), cfg)
    return {"root": str(root)}


def _stage_retrieval_build(a: dict) -> dict:
    from resail.index.build import build_index

    m = build_index(Path(a["work"]), progress=False)
    shard = m["shards"]["1"]
    return {"bytes": int(m["bytes"]), "kind": shard["kind"], "nlist": shard.get("nlist", 0),
            "nprobe": shard.get("nprobe", 0), "windows": len(shard.get("windows", {}))}


def _stage_retrieval_query(a: dict) -> dict:
    from resail.benchmarks.retrieval import recall
    from resail.index.retrieval import RetrievalIndex
    from resail.index.search import QueryBatch, SearchConfig, search

    q = np.load(a["queries"])
    nq = q["canon"].shape[0]
    index = RetrievalIndex(Path(a["work"]))
    t0 = time.perf_counter()
    index.shard(1)
    load_s = time.perf_counter() - t0
    batch = QueryBatch(np.ones(nq, np.int64), q["canon"], q["pre"], q["bbox"])
    cfg = SearchConfig(k=10, k_prefilter=256)
    warm = QueryBatch(np.ones(8, np.int64), q["canon"][:8], q["pre"][:8], q["bbox"][:8])
    search(index, warm, cfg), search(index, warm, SearchConfig(k=10, exact=True))
    t0, cpu0 = time.perf_counter(), time.process_time()
    approx = search(index, batch, cfg)
    c_ms, c_cpu_ms = ((time.perf_counter() - t0) * 1000 / nq, (time.process_time() - cpu0) * 1000 / nq)
    n_exact = min(nq, a["exact_queries"])
    sub = QueryBatch(np.ones(n_exact, np.int64), q["canon"][:n_exact], q["pre"][:n_exact], q["bbox"][:n_exact])
    t0 = time.perf_counter()
    exact = search(index, sub, SearchConfig(k=10, exact=True))
    b_ms = (time.perf_counter() - t0) * 1000 / n_exact
    ids, sc = approx.segment_id[:n_exact], approx.score[:n_exact]
    return {"load_s": round(load_s, 2), "c_ms_per_query": round(c_ms, 4), "c_cpu_ms_per_query": round(c_cpu_ms, 4),
            "b_ms_per_query": round(b_ms, 3),
            "queries": nq, "exact_queries": n_exact,
            "recall_at_1": round(recall(exact.segment_id, exact.score, ids, sc, 1), 4),
            "recall_at_10": round(recall(exact.segment_id, exact.score, ids, sc, 10), 4)}


def _stage_noop(a: dict) -> dict:
    import resail.index.build  # noqa: F401  (the imports every stage pays for)
    import resail.pipeline.bake  # noqa: F401
    import resail.pipeline.segments_stage  # noqa: F401

    return {}


STAGES = {"segments": _stage_segments, "index": _stage_index, "bake": _stage_bake, "distort": _stage_distort,
          "toy": _stage_toy, "retrieval_build": _stage_retrieval_build, "retrieval_query": _stage_retrieval_query,
          "noop": _stage_noop}


def child_main(spec: str) -> None:
    """Run one stage; print one JSON line with its result, wall seconds and peak RSS (MB)."""
    a = json.loads(spec)
    jobs = a.get("jobs", 1)
    threads.use(jobs if jobs > 1 else 0, alongside=False, threads=a.get("threads", 1))  # see run_stage
    t0, cpu0 = time.perf_counter(), time.process_time()
    with TreeUsage() as use:
        out = STAGES[a["stage"]](a)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    main, mb = peak_rss_mb(), 2**20
    out.update(wall_s=round(wall, 3), cpu_main_s=round(cpu, 2), cpu_workers_s=round(use.children_cpu_s, 2),
               rss_main_mb=round(main, 1), rss_worker_mb=round(use.worker / mb, 1),
               rss_tree_mb=round(max(use.tree / mb, main), 1), anon_main_mb=round(use.anon_main / mb, 1),
               anon_worker_mb=round(use.anon_worker / mb, 1))
    print("RESULT " + json.dumps(out), flush=True)


# ================================================================== parent side


def run_stage(**spec) -> dict:
    """One stage in a fresh child process (its own peak RSS, its own imports)."""
    # One thread a process from the child's first import (the thread policy's variables; the child
    # applies the policy with one CPU, or the retrieval queries' --threads).
    env = {**os.environ, **threads.library_env(1)}
    load = os.getloadavg()[0]
    p = subprocess.run([sys.executable, str(HERE), "--child", json.dumps(spec, default=str)], env=env,
                       capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        sys.exit(f"stage {spec['stage']} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(lines[-1][7:])
    out["load_avg_before"] = round(load, 2)
    print(f"  {spec['stage']:<16} {json.dumps({k: v for k, v in spec.items() if k in ('split', 'jobs', 'n')})} "
          f"{out['wall_s']:.1f}s (CPU {out['cpu_main_s'] + out['cpu_workers_s']:.0f}s) RSS main "
          f"{out['rss_main_mb']:.0f} MB (anon {out['anon_main_mb']:.0f}), worker {out['rss_worker_mb']:.0f} MB "
          f"(anon {out['anon_worker_mb']:.0f}), tree {out['rss_tree_mb']:.0f} MB "
          f"(load {load:.1f})", file=sys.stderr, flush=True)
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def h5_sizes(path: Path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        return {k: int(f[k].id.get_storage_size()) for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def label_stats(dataset: str, root: Path, n: int = 100) -> dict:
    """Classes, instances and pixels per image of the first n train label maps, as the reader sees them."""
    from resail.pipeline.datasets import list_split, make_reader

    reader = make_reader(dataset, root)
    recs = list_split(reader, "train")[:n]
    classes, instances = [], []
    for rec in recs:
        s = reader.load(rec)
        classes.append(len(np.setdiff1d(np.unique(s.label_map), [0])))
        instances.append(0 if s.instance_map is None else int(s.instance_map.max()))
        size = s.label_map.shape
    return {"images": len(recs), "classes_per_image": round(float(np.mean(classes)), 2),
            "instances_per_image": round(float(np.mean(instances)), 2), "size": f"{size[1]}x{size[0]}"}


def offline_stages(name: str, root: Path, work: Path, jobs: int) -> dict:
    """segments, index, bake train, bake val from a fresh work dir, each in its own child."""
    shutil.rmtree(work, ignore_errors=True)
    r = {"segments": run_stage(stage="segments", dataset=name, root=root, work=work, jobs=jobs)}
    r["index"] = run_stage(stage="index", work=work)
    for split in ("train", "val"):
        r[f"bake_{split}"] = run_stage(stage="bake", work=work, split=split, jobs=jobs)
    return r


def measure_dataset(name: str, base: Path, n: tuple[int, int], distort_images: int, jobs_list=(1, 2)) -> dict:
    """Every stage with 1 and 2 jobs on n images, and with 1 job on the first half of them (the
    toy images are a pure function of their index): the half run checks that the cost per image
    does not grow with the dataset and gives each stage's RSS growth per image."""
    info = DATASETS[name]
    data = base / "data" / info["preset"]
    t0 = time.perf_counter()
    toy = run_stage(stage="toy", preset=info["preset"], out=data, n_train=n[0], n_val=n[1], jobs=2)
    root = Path(toy["root"])
    result = {"preset": info["preset"], "n_train": n[0], "n_val": n[1],
              "generate_s": round(time.perf_counter() - t0, 1),
              "labels": label_stats(name, root), "dataset_bytes": du(data), "jobs": {}}
    for jobs in jobs_list:
        r = offline_stages(name, root, base / "work" / f"{name}-j{jobs}", jobs)
        r["distort"] = run_stage(stage="distort", work=base / "work" / f"{name}-j{jobs}", jobs=jobs,
                                 images=distort_images)
        result["jobs"][str(jobs)] = r
    result["artifacts"] = artifact_bytes(base / "work" / f"{name}-j{jobs_list[0]}")
    result["crop_bytes_per_image"] = crop_bytes_per_image(base / "work" / f"{name}-j{jobs_list[0]}")
    half = (max(1, n[0] // 2), max(1, n[1] // 2))
    toy = run_stage(stage="toy", preset=info["preset"], out=base / "data" / f"{info['preset']}-half",
                    n_train=half[0], n_val=half[1], jobs=2)
    result["half"] = {"n_train": half[0], "n_val": half[1],
                      **offline_stages(name, Path(toy["root"]), base / "work" / f"{name}-half", 1)}
    return result


def crop_bytes_per_image(work: Path, sides=(256, 192, 128, 96)) -> dict[int, float]:
    """Bytes per image of the RGBA crops at other `--crop-max-side` values, exactly: a crop's size
    is a function of its bbox (`pipeline.store.crop_size`)."""
    import pyarrow.parquet as pq

    from resail.pipeline.store import crop_size

    t = pq.read_table(work / "segments" / "train.parquet", columns=["bbox_h", "bbox_w", "image_id"])
    hw = list(zip(t["bbox_h"].to_pylist(), t["bbox_w"].to_pylist()))
    n_images = len(set(t["image_id"].to_pylist()))
    return {side: sum(4 * a * b for a, b in (crop_size(h, w, side) for h, w in hw)) / n_images for side in sides}


def artifact_bytes(work: Path) -> dict:
    seg, out = work / "segments", {}
    for split in ("train", "val"):
        for k, v in h5_sizes(seg / f"{split}.h5").items():
            out[f"segments/{split}.h5:{k}"] = v
        out[f"segments/{split}.parquet"] = (seg / f"{split}.parquet").stat().st_size + \
            (seg / f"{split}_images.parquet").stat().st_size
        out[f"guidance/{split}.h5"] = (work / "guidance" / f"{split}.h5").stat().st_size
        out[f"guidance/{split}_matches.parquet"] = (work / "guidance" / f"{split}_matches.parquet").stat().st_size
    out["index"] = du(work / "index")
    return out


# ------------------------------------------------------------------ retrieval


def retrieval_masks(base: Path, n: int, seed: int = 0) -> Path:
    """n synthetic realistic masks (benchmarks/retrieval.py), made in chunks on 2 processes, cached
    as an .npz of canon (packed R×R), pre (packed r×r) and bbox (areas)."""
    from joblib import Parallel, delayed

    from resail.benchmarks.retrieval import make_segments

    path = base / "retrieval" / f"masks_{n}_{seed}.npz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        sizes = [min(MASK_CHUNK, n - s) for s in range(0, n, MASK_CHUNK)]
        parts = Parallel(n_jobs=2)(delayed(make_segments)(m, [seed, i]) for i, m in enumerate(sizes))
        canon, pre, bbox = (np.concatenate([p[j] for p in parts]) for j in range(3))
        np.savez(path.with_suffix(".tmp.npz"), canon=canon, pre=pre, bbox=bbox)
        os.replace(path.with_suffix(".tmp.npz"), path)
    return path


def measure_retrieval(base: Path, sizes, queries: int, exact_queries: int, threads: int) -> list[dict]:
    from resail.tests.builders.store import write_fake_store

    masks = np.load(retrieval_masks(base, max(sizes)))
    qpath = retrieval_masks(base, queries, seed=1)  # held-out draws
    out = []
    for n in sizes:
        work = base / "retrieval" / f"work_{n}"
        shutil.rmtree(work, ignore_errors=True)
        write_fake_store(work, masks=masks["canon"][:n], prefilter=masks["pre"][:n], class_id=np.ones(n, np.int32),
                         bbox_area=masks["bbox"][:n], crop_side=2)
        build = run_stage(stage="retrieval_build", work=work, n=n)
        query = run_stage(stage="retrieval_query", work=work, queries=qpath, exact_queries=exact_queries,
                          threads=threads, n=n)
        out.append({"n": n, "build_s": build["wall_s"], "index_bytes": build["bytes"], "kind": build["kind"],
                    "nlist": build["nlist"], "nprobe": build["nprobe"], "windows": build["windows"],
                    "build_rss_mb": build["rss_main_mb"], "query_rss_mb": query["rss_main_mb"],
                    **{k: query[k] for k in ("load_s", "c_ms_per_query", "c_cpu_ms_per_query", "b_ms_per_query",
                                             "queries", "exact_queries", "recall_at_1", "recall_at_10")}})
        shutil.rmtree(work, ignore_errors=True)
    return out


# ------------------------------------------------------------------ extrapolation


def loglog(xs, ys):
    """Piecewise power law through the points (x, y), extended with the end slopes."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.maximum(np.asarray(ys, float), 1e-9))

    def f(x):
        x = np.log(max(float(x), 1.0))
        if x <= lx[0]:
            return float(np.exp(ly[0]))  # below the smallest measured size: its cost (an upper bound)
        j = min(max(int(np.searchsorted(lx, x)) - 1, 0), len(lx) - 2)
        slope = (ly[j + 1] - ly[j]) / (lx[j + 1] - lx[j])
        return float(np.exp(ly[j] + slope * (x - lx[j])))
    return f


def real_photo_artifacts(name: str, m: dict, crop_bpp: float, guidance_ratio: float) -> dict:
    """The measured artifact bytes with the crops and the guidance caches as real photos would
    make them: crop pixels (exact, from the boxes: `crop_bytes_per_image` counts 4 bytes a pixel;
    the train split's rate for both splits) × `crop_bpp`; the uncompressed cache ÷ `guidance_ratio`."""
    from resail.pipeline.bake import PRESET_SIZE

    W, H = PRESET_SIZE[name]
    pixels = float(m["crop_bytes_per_image"]["256"] if "256" in m["crop_bytes_per_image"]
                   else m["crop_bytes_per_image"][256]) / 4
    out = dict(m["artifacts"])
    for split, n in (("train", m["n_train"]), ("val", m["n_val"])):
        out[f"segments/{split}.h5:crops"] = pixels * crop_bpp * n
        out[f"guidance/{split}.h5"] = W * H * 3 * n / guidance_ratio
    return out


def extrapolate(name: str, m: dict, retrieval: list[dict], crop_bpp: float = REAL_CROP_BYTES_PER_PIXEL,
                guidance_ratio: float = REAL_GUIDANCE_RATIO) -> dict:
    """Hours per stage, disk and peak RAM of the full dataset on 2, 16 and 64 cores."""
    info = DATASETS[name]
    (n_tr, n_va), (f_tr, f_va) = (m["n_train"], m["n_val"]), info["full"]
    j1, j2 = m["jobs"]["1"], m["jobs"]["2"]
    scale = {"train": f_tr / n_tr, "val": f_va / n_va}
    images_m, images_f = n_tr + n_va, f_tr + f_va
    bakes = ("bake_train", "bake_val")

    # class sizes at full scale: the measured train shard sizes times the train scale
    shards = j1["index"]["shards"]
    n_full = {c: s["n"] * scale["train"] for c, s in shards.items()}
    curve = {k: loglog([r["n"] for r in retrieval], [f(r) for r in retrieval]) if retrieval else None
             for k, f in (("build", lambda r: r["build_s"]),
                          ("query", lambda r: r.get("c_cpu_ms_per_query", r["c_ms_per_query"])),
                          ("bytes", lambda r: r["index_bytes"] / r["n"]))}

    def per_class(measured: float, cost, counts: dict, scale_q: float) -> float:
        """A measured cost summed over classes, scaled to the full class sizes by a cost curve."""
        if cost is None:
            return measured * scale_q
        model_m = sum(q * cost(shards[c]["n"]) for c, q in counts.items() if c in shards)
        model_f = sum(q * scale_q * cost(n_full[c]) for c, q in counts.items() if c in n_full)
        return measured * model_f / max(model_m, 1e-9)

    ones = {c: 1 for c in shards}
    queries = j1["queries_per_class"]
    # 1-job seconds at full scale of each part: (seconds, runs in parallel?, stage it belongs to)
    parts = {
        "segments": (j1["segments"]["wall_s"] - j1["segments"]["merge_s"]) * images_f / images_m,
        "segments_merge": j1["segments"]["merge_s"] * images_f / images_m,
        "index": per_class(j1["index"]["wall_s"], curve["build"] and (lambda n: curve["build"](n)), ones, 1.0),
        "bake_retrieve": sum(per_class(j1[b]["timings"]["retrieve_s"], curve["query"], queries[b[5:]], scale[b[5:]])
                             for b in bakes),
        "bake_compose": sum(j1[b]["timings"]["compose_s"] * scale[b[5:]] for b in bakes),
        "bake_merge": sum(j1[b]["timings"]["merge_s"] * scale[b[5:]] for b in bakes),
    }
    parallel = {"segments", "bake_compose"}
    stage_of = {"segments": ("segments",), "segments_merge": ("segments",), "index": ("index",),
                "bake_retrieve": bakes, "bake_compose": bakes, "bake_merge": bakes}

    def total(r: dict, stages, key: str) -> float:
        return sum(r[s][key] for s in stages)

    # wall model: this machine's walls, parallel efficiency from the 1- and 2-job walls
    par_wall = {"segments": (parts["segments"], j1["segments"]["wall_s"] - j1["segments"]["merge_s"],
                             j2["segments"]["wall_s"] - j2["segments"]["merge_s"]),
                "bake_compose": (parts["bake_compose"], sum(j1[b]["timings"]["compose_s"] for b in bakes),
                                 sum(j2[b]["timings"]["compose_s"] for b in bakes))}
    eff_wall = {k: min(1.0, a / b / 2) for k, (_, a, b) in par_wall.items()}
    # CPU model (dedicated cores): a 1-job wall becomes CPU seconds by that stage's CPU/wall ratio;
    # the parallel efficiency is the 1-job CPU over the 2-job CPU (the work parallelism adds)
    rho = {p: total(j1, st, "cpu_main_s") / total(j1, st, "wall_s") for p, st in stage_of.items()}
    eff_cpu = {k: min(1.0, (total(j1, stage_of[k], "cpu_main_s") + total(j1, stage_of[k], "cpu_workers_s"))
                   / (total(j2, stage_of[k], "cpu_main_s") + total(j2, stage_of[k], "cpu_workers_s")))
               for k in parallel}
    d1, d2 = j1["distort"], j2["distort"]
    distort_cpu_s, eff_dist = d1["cpu_s"] / d1["images"], min(1.0, (d1["wall_s"] / d1["images"]) /
                                                               (d2["wall_s"] / d2["images"]) / 2)
    models = {}
    for model in ("cpu", "wall"):
        table = {}
        for cores in CORES:
            hours = {}
            for k, sec in parts.items():
                sec = sec * rho[k] if model == "cpu" else sec
                if k in parallel:
                    sec /= cores * (eff_cpu[k] if model == "cpu" else eff_wall[k])
                hours[k] = sec / 3600
            dist = (distort_cpu_s if model == "cpu" else d1["wall_s"] / d1["images"]) * f_tr
            table[str(cores)] = {"hours": {k: round(v, 4) for k, v in hours.items()},
                                 "total_h": round(sum(hours.values()), 3),
                                 "distort_epoch_h": round(dist / (cores * (1.0 if model == "cpu" else eff_dist)) / 3600,
                                                          4)}
        models[model] = table

    # disk: bytes per image of each artifact, the index per class; crops and guidance for real photos
    def full_disk(art: dict) -> dict:
        disk = {k: v * scale["train" if "/train" in k else "val"] for k, v in art.items() if k != "index"}
        disk["index"] = per_class(art["index"], curve["bytes"] and (lambda n: curve["bytes"](n) * n), ones, 1.0)
        return disk

    disk = full_disk(real_photo_artifacts(name, m, crop_bpp, guidance_ratio))
    disk_as_measured = full_disk(m["artifacts"])

    # RAM: the main process grows by its slope between the half and the whole set (1 job: the main
    # process does all the work); workers hold one part at a time (constant)
    h = m["half"]
    n_half = h["n_train"] + h["n_val"]
    ram = {}
    for stage in ("segments", "index", "bake_train", "bake_val"):
        r = {}
        for kind in ("rss", "anon"):
            main, main_half = j1[stage][f"{kind}_main_mb"], h[stage][f"{kind}_main_mb"]
            slope = max(0.0, (main - main_half) / (images_m - n_half))  # MB per image
            r[kind] = {"half_mb": main_half, "whole_mb": main, "mb_per_1000_images": round(slope * 1000, 1),
                       "full_mb": round(main + slope * (images_f - images_m)),
                       "worker_mb": max(j[stage][f"{kind}_worker_mb"] for j in m["jobs"].values())}
        ram[stage] = r
    peak = {kind: round(max(max(r[kind]["full_mb"], r[kind]["worker_mb"]) for r in ram.values()) / 1024, 2)
            for kind in ("rss", "anon")}
    return {"full_images": [f_tr, f_va], "scale": {k: round(v, 2) for k, v in scale.items()},
            "cpu_per_wall": {k: round(v, 3) for k, v in rho.items()},
            "efficiency_wall": {k: round(v, 3) for k, v in eff_wall.items()} | {"distort": round(eff_dist, 3)},
            "efficiency_cpu": {k: round(v, 3) for k, v in eff_cpu.items()},
            "largest_class_full": round(max(n_full.values())), "cores": models["cpu"], "cores_wall": models["wall"],
            "disk_gb": {k: round(v / GB, 3) for k, v in disk.items()},
            "disk_total_gb": round(sum(disk.values()) / GB, 2),
            "disk_model": {"crop_bytes_per_pixel": crop_bpp, "guidance_ratio": guidance_ratio},
            "disk_total_gb_as_measured": round(sum(disk_as_measured.values()) / GB, 2),
            "ram": ram, "peak_ram_gb_full": peak["anon"], "peak_rss_gb_full": peak["rss"],
            "seconds_per_image_half_vs_whole": linearity(m)}


def linearity(m: dict) -> dict:
    """1-job seconds per image of each stage on the half set and on the whole set."""
    h, j1 = m["half"], m["jobs"]["1"]
    n_h, n_w = {"train": h["n_train"], "val": h["n_val"]}, {"train": m["n_train"], "val": m["n_val"]}
    count = {"segments": lambda n: n["train"] + n["val"], "index": lambda n: n["train"],
             "bake_train": lambda n: n["train"], "bake_val": lambda n: n["val"]}
    return {s: [round(h[s]["wall_s"] / f(n_h), 4), round(j1[s]["wall_s"] / f(n_w), 4)] for s, f in count.items()}


def queries_per_class(work: Path) -> dict[str, dict[str, int]]:
    import pyarrow.parquet as pq

    out = {}
    for split in ("train", "val"):
        c = pq.read_table(work / "segments" / f"{split}.parquet", columns=["class_id"])["class_id"].to_numpy()
        ids, n = np.unique(c, return_counts=True)
        out[split] = {str(int(i)): int(k) for i, k in zip(ids, n)}
    return out


# ------------------------------------------------------------------ report


def print_tables(results: dict, retrieval: list[dict]) -> None:
    print("\n== measured (realistic synthetic data) ==")
    print("| dataset | images (train+val) | jobs | segments img/s | index s | bake train img/s | bake val img/s "
          "| distort img/s | seg. per image | peak anon MB main / worker |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in results.items():
        for jobs, r in m["jobs"].items():
            n_img = m["n_train"] + m["n_val"]
            seg_per_img = sum(c["segments"] for c in r["segments"]["counts"].values()) / n_img
            rss_main = max(r[s]["anon_main_mb"] for s in ("segments", "index", "bake_train", "bake_val"))
            rss_w = max(r[s]["anon_worker_mb"] for s in ("segments", "bake_train", "bake_val"))
            print(f"| {name} | {m['n_train']}+{m['n_val']} | {jobs} | {n_img / r['segments']['wall_s']:.1f} | "
                  f"{r['index']['wall_s']:.1f} | {m['n_train'] / r['bake_train']['wall_s']:.1f} | "
                  f"{m['n_val'] / r['bake_val']['wall_s']:.1f} | "
                  f"{r['distort']['images'] / r['distort']['wall_s']:.1f} | "
                  f"{seg_per_img:.1f} | {rss_main:.0f} / {rss_w:.0f} |")
    print("\n== bytes per image ==")
    for name, m in results.items():
        per = {k: v / (m["n_train"] if "/train" in k else m["n_val"]) for k, v in m["artifacts"].items()
               if k != "index"}
        per["index (per train image)"] = m["artifacts"]["index"] / m["n_train"]
        print(f"{name}: " + ", ".join(f"{k} {v / 1e3:.1f} KB" for k, v in per.items()))
    for model, title in (("cores", "dedicated cores (CPU seconds)"), ("cores_wall", "this shared machine's walls")):
        print(f"\n== extrapolated to the full datasets: {title} ==")
        print("| dataset | cores | segments h | index h | bake retrieve h | bake compose h | merges h | total h "
              "| distort h/epoch | disk GB | peak RAM GB (anon / RSS) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, m in results.items():
            x = m["extrapolated"]
            for cores, t in x[model].items():
                h = t["hours"]
                print(f"| {name} | {cores} | {h['segments']:.3f} | {h['index']:.3f} | {h['bake_retrieve']:.3f} | "
                      f"{h['bake_compose']:.3f} | {h['segments_merge'] + h['bake_merge']:.3f} | {t['total_h']:.3f} | "
                      f"{t['distort_epoch_h']:.3f} | {x['disk_total_gb']:.1f} | {x['peak_ram_gb_full']:.1f} / "
                      f"{x['peak_rss_gb_full']:.1f} |")
    print("\n== main process (1 job), MB: half set / whole set / per 1000 images / full dataset; largest worker ==")
    for name, m in results.items():
        x = m["extrapolated"]
        print(f"{name} (interpreter + imports: {m['baseline_rss_mb']:.0f} MB RSS)")
        for kind in ("anon", "rss"):
            print(f"  {kind}: " + "; ".join(
                f"{s} {r[kind]['half_mb']:.0f} / {r[kind]['whole_mb']:.0f} / {r[kind]['mb_per_1000_images']:.0f} / "
                f"{r[kind]['full_mb']:.0f}, worker {r[kind]['worker_mb']:.0f}" for s, r in x["ram"].items()))
        print("  seconds per image, half set / whole set (1 job): " + ", ".join(
            f"{s} {a:.4f} / {b:.4f}" for s, (a, b) in x["seconds_per_image_half_vs_whole"].items()))
        print(f"  CPU/wall of the 1-job stages: {x['cpu_per_wall']}; parallel efficiency (CPU) {x['efficiency_cpu']}, "
              f"(wall) {x['efficiency_wall']}")
        crops = m["crop_bytes_per_image"]
        print("  raw crops per image at --crop-max-side "
              + ", ".join(f"{k}: {v / 1e3:.0f} KB" for k, v in crops.items()))
        model = x["disk_model"]
        print(f"  disk at full size {x['disk_total_gb']:.1f} GB with real-photo crops ({model['crop_bytes_per_pixel']} "
              f"bytes per crop pixel) and guidance (gzip ratio {model['guidance_ratio']}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in x["disk_gb"].items())
              + f"; as this synthetic run wrote it {x['disk_total_gb_as_measured']:.1f} GB")
    if retrieval:
        print("\n== retrieval, one class ==")
        print("| N | index | build s | index MB | build RSS MB | query RSS MB | (c) CPU ms/q | (c) wall ms/q | "
              "(b) ms/q | recall@1 | recall@10 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in retrieval:
            kind = r["kind"] + (f" nlist {r['nlist']} nprobe {r['nprobe']} + {r['windows']} windows"
                                if r["kind"] == "ivf" else "")
            print(f"| {r['n']:,} | {kind} | {r['build_s']:.1f} | {r['index_bytes'] / 1e6:.1f} | "
                  f"{r['build_rss_mb']:.0f} | "
                  f"{r['query_rss_mb']:.0f} | {r.get('c_cpu_ms_per_query', float('nan')):.3f} | "
                  f"{r['c_ms_per_query']:.3f} | {r['b_ms_per_query']:.1f} | "
                  f"{r['recall_at_1']:.4f} | {r['recall_at_10']:.4f} |")


def targets(results: dict, retrieval: list[dict]) -> dict:
    out = {}
    if "ade20k" in results:
        x = results["ade20k"]["extrapolated"]
        out["ade20k_2_cores_min"] = round(x["cores"]["2"]["total_h"] * 60, 1)
        out["ade20k_16_cores_min"] = round(x["cores"]["16"]["total_h"] * 60, 1)
        out["ade20k_disk_gb"] = x["disk_total_gb"]
    if "cocostuff" in results:
        x = results["cocostuff"]["extrapolated"]
        out["cocostuff_2_cores_h"] = x["cores"]["2"]["total_h"]
        out["cocostuff_disk_gb"] = x["disk_total_gb"]
        out["stage_rss_gb"] = x["peak_ram_gb_full"]
    big = [r for r in retrieval if r["n"] >= 1_000_000]
    if big:
        out["retrieval_1m_ms"] = big[0].get("c_cpu_ms_per_query", big[0]["c_ms_per_query"])
        out["retrieval_1m_recall1"] = big[0]["recall_at_1"]
    met = {k: (v >= TARGETS[k] if k == "retrieval_1m_recall1" else v <= TARGETS[k]) for k, v in out.items()}
    return {"value": out, "target": {k: TARGETS[k] for k in out}, "met": met}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="folder kept between runs (data, masks) [default: temp]")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few images, retrieval at 10k and 30k")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    ap.add_argument("--skip-stages", action="store_true", help="retrieval only")
    ap.add_argument("--skip-retrieval", action="store_true", help="stages only")
    ap.add_argument("--remeasure-retrieval", action="store_true",
                    help="measure retrieval again even when KEEP/retrieval/results.json holds this setup")
    ap.add_argument("--retrieval-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--queries", type=int, default=500, help="retrieval queries timed (c)")
    ap.add_argument("--exact-queries", type=int, default=200, help="of which timed for (b) and recall")
    ap.add_argument("--threads", type=int, default=1,
                    help="FAISS threads of the retrieval queries (1: on a busy machine OpenMP only adds waits)")
    ap.add_argument("--distort-images", type=int, default=60)
    ap.add_argument("--crop-bytes-per-pixel", type=float, default=REAL_CROP_BYTES_PER_PIXEL,
                    help="crop bytes per pixel on real photos, for the disk model (benchmarks/crops.py)")
    ap.add_argument("--guidance-ratio", type=float, default=REAL_GUIDANCE_RATIO,
                    help="the guidance cache's compression ratio on real photos, for the disk model")
    ap.add_argument("--reuse", action="store_true",
                    help="report a dataset from its measurements stored in KEEP/measured/ instead of measuring again")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child_main(args.child)
    base = args.keep or Path(tempfile.mkdtemp(prefix="resail_bench_scale_"))
    base.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps({"machine": machine}), file=sys.stderr)
    sizes = args.retrieval_sizes or ([10_000, 30_000] if args.quick else list(RETRIEVAL_SIZES))
    retrieval = []
    if not args.skip_retrieval:
        setup = {"sizes": sizes, "queries": 200 if args.quick else args.queries,
                 "exact_queries": 50 if args.quick else args.exact_queries, "threads": args.threads}
        cache = base / "retrieval" / "results.json"
        if cache.exists() and not args.remeasure_retrieval and json.loads(cache.read_text())["setup"] == setup:
            retrieval = json.loads(cache.read_text())["results"]
            print(f"retrieval: the results measured earlier in {cache} (--remeasure-retrieval to redo)",
                  file=sys.stderr)
        else:
            print(f"retrieval, one class, N = {sizes}", file=sys.stderr)
            retrieval = measure_retrieval(base, **setup)
            cache.write_text(json.dumps({"setup": setup, "results": retrieval,
                                         "load_avg": [round(x, 2) for x in os.getloadavg()]}))
    results = {}
    if not args.skip_stages:
        baseline = None
        for name in args.datasets.split(","):
            n = QUICK_N[name] if args.quick else DATASETS[name]["n"]
            stored = base / "measured" / f"{name}-{n[0]}-{n[1]}.json"
            if args.reuse and stored.exists():
                m = json.loads(stored.read_text())
                print(f"{name}: the measurements stored in {stored}", file=sys.stderr)
            else:
                baseline = baseline or run_stage(stage="noop")["rss_main_mb"]
                print(f"{name}: {n[0]} + {n[1]} images ({DATASETS[name]['preset']})", file=sys.stderr)
                m = measure_dataset(name, base, n, 20 if args.quick else args.distort_images)
                m["baseline_rss_mb"] = baseline
                m["jobs"]["1"]["queries_per_class"] = queries_per_class(base / "work" / f"{name}-j1")
                stored.parent.mkdir(exist_ok=True)
                stored.write_text(json.dumps(m))
            m["extrapolated"] = extrapolate(name, m, retrieval, args.crop_bytes_per_pixel, args.guidance_ratio)
            results[name] = m
    print_tables(results, retrieval)
    verdict = targets(results, retrieval)
    print("\ntargets: " + ", ".join(f"{k} {v} ({'met' if verdict['met'][k] else 'MISSED'}, target "
                                     f"{verdict['target'][k]})" for k, v in verdict["value"].items()))
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    machine["reused_measurements"] = bool(args.reuse)
    emit({"bench": "scale", "machine": machine, "wall_s": round(time.perf_counter() - t_start, 1),
                      "targets": verdict, "retrieval": retrieval, "datasets": results})


if __name__ == "__main__":
    sys.exit(main())

"""Distorted ground truth throughput on the toy ADE20K set at 256×256, as the trainer builds it.

Builds (or reuses, `--keep DIR`) a toy ADE20K work dir (200 train images, ~45 segments each),
its segment store, index and train matches, then times `GuidanceComposer.distorted_gt`, the call
the trainer's data-loader workers make per image (photo read and resize, segment map, colour
transfer to a top-k reference, resolution, TPS shape warp on every segment, composition):

  (a) 1 worker and 2 worker processes (each loads its own composer, as a DataLoader worker
      does; OpenCV single-threaded), images/s of wall time and images per CPU second;
  (b) a baseline in the same run, 1 worker: the straightforward way (`naive_segment`), each
      segment distorted on the whole 256×256 canvas with numpy/OpenCV calls (numpy lαβ transfer
      with the reference's statistics recomputed, whole-canvas resampling, the TPS map at every
      canvas pixel), then composed. (a)/(b) is the speed-up of the windowed, compiled path.

    python benchmarks/distort.py [--images 100] [--keep DIR]

The machine may be shared: the load average is recorded before and after. The last line is
one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from resail.pipeline.compose import Piece, compose
from resail.pipeline.distort import (
    DistortConfig,
    contour_points,
    degenerate_targets,
    draw_segments,
    fit_tps,
    lab_to_rgb,
    resample_resolution,
    rgb_to_lab,
    tps_source_map,
)
from resail.pipeline.guidance import load_composer
from resail.workdir import WorkDir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared fixture builders (tests/builders)
from builders.work import baked_work  # noqa: E402

SIZE = (256, 256)


def toy_work(base: Path, n_train: int) -> Path:
    """The toy work dir under `base`, train split baked (reused when a `--keep` folder holds one)."""
    if WorkDir(base / "work").matches_table("train").exists():
        return base / "work"
    return baked_work(base, n_train=n_train, n_val=8, size=SIZE, splits=("train",), jobs=2)


def naive_segment(photo, mask, ref, rng, cfg=DistortConfig()):
    """One segment the straightforward way, on the whole canvas with numpy/OpenCV calls: numpy
    lαβ transfer (reference statistics recomputed), whole-canvas resampling, TPS map evaluated
    at every canvas pixel. Same draws and same distortions as `distort_segment`."""
    d = draw_segments(rng, cfg, 1)[0]
    canvas = photo * mask[..., None]
    if d.color and ref is not None:
        src_lab = rgb_to_lab(canvas[mask])
        ref_lab = rgb_to_lab(ref[0][ref[1]])
        gain = np.maximum(ref_lab.std(0), 1e-10) / np.maximum(src_lab.std(0), 1e-10)
        lab = (src_lab - src_lab.mean(0)) * gain + ref_lab.mean(0)
        canvas[mask] = np.clip(lab_to_rgb(lab), 0, 255).astype(np.uint8)
    if d.resolution:
        canvas = resample_resolution(canvas, d.r)
    src = contour_points(mask, cfg.n_points) if d.shape else None
    if src is None:
        return canvas, mask
    dst = src.copy()
    for index, shift in zip(d.moved, d.unit_shifts * cfg.shift_scale * np.sqrt(mask.sum())):
        dst[index] = src[index] + shift
    if degenerate_targets(dst):
        return canvas, mask
    map_x, map_y = tps_source_map(fit_tps(src, dst), (0, 0, *mask.shape))
    warped = cv2.remap(canvas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    warped_mask = cv2.remap(mask.view(np.uint8), map_x, map_y, cv2.INTER_NEAREST).view(bool)
    return warped, warped_mask


def baseline_gt(comp, row: int, rng: np.random.Generator) -> np.ndarray:
    """Every segment distorted with `naive_segment` on the whole canvas, then composed."""
    photo = comp.photo(row)
    seg_map, rows, _ = comp.segment_map(row)
    pieces = []
    for i, r in enumerate(rows):
        content, mask = naive_segment(photo, seg_map == i, comp.color_reference(int(r), rng, "topk"), rng)
        pieces.append(Piece(i, 0, 0, content, mask))
    return compose(seg_map, comp.is_thing[rows], pieces, comp.mode)


_BARRIER = None  # set in each worker: the timed loops start together


def _init(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier
    cv2.setNumThreads(1)


def _run(args) -> tuple[int, float, int, float]:
    """Distort `rows` in this process: (images, CPU seconds, segments, wall seconds), the
    composer's loading and a two-image warm-up left out of the timing; every worker starts its
    timed loop at the same moment (a barrier), so the walls overlap."""
    work, rows, seed, method = args
    comp = load_composer(Path(work), "train", size=SIZE)
    try:
        for row in rows[:2]:  # warm-up: numba kernels loaded from their cache, first reads
            comp.distorted_gt(int(row), np.random.default_rng([seed, int(row), 1]))
        _BARRIER.wait()
        start, wall = time.process_time(), time.perf_counter()
        for row in rows:
            rng = np.random.default_rng([seed, int(row)])
            if method == "windowed":
                comp.distorted_gt(int(row), rng)
            else:
                baseline_gt(comp, int(row), rng)
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
        return len(rows), cpu, int(comp.n_segments[rows].sum()), wall
    finally:
        comp.close()


def rate(work: Path, rows: np.ndarray, workers: int, method: str) -> dict:
    chunks = [(str(work), rows[i::workers], 0, method) for i in range(workers)]
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(workers, ctx, initializer=_init, initargs=(ctx.Barrier(workers),)) as pool:
        done = list(pool.map(_run, chunks))
    images, cpu, segments = (sum(d[i] for d in done) for i in range(3))
    wall = max(d[3] for d in done)  # the workers run side by side; the slower one sets the rate
    return {"images_per_s": round(images / wall, 1), "images_per_cpu_s": round(images / cpu, 1),
            "segments_per_image": round(segments / images, 1), "ms_per_image_cpu": round(1000 * cpu / images, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100, help="images timed per measurement")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep and reuse (default: a temp dir)")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="resail_bench_distort_"))
    work = toy_work(base, args.n_train)
    comp = load_composer(work, "train", size=SIZE)
    rows = comp.ok_images()[: args.images]
    comp.close()
    result = {"bench": "distort", "size": f"{SIZE[0]}x{SIZE[1]}", "images": len(rows), "cpus": os.cpu_count(),
              "load_avg_1min_before": round(os.getloadavg()[0], 2)}
    for workers in (1, 2):
        r = rate(work, rows, workers, "windowed")
        result.update({f"{k}_{workers}w": v for k, v in r.items() if k != "segments_per_image"})
        result["segments_per_image"] = r["segments_per_image"]
        print(f"distorted GT, {workers} worker(s): {r['images_per_s']} images/s "
              f"({r['ms_per_image_cpu']} CPU ms/image)", file=sys.stderr)
    b = rate(work, rows, 1, "baseline")
    result["baseline_images_per_s_1w"] = b["images_per_s"]
    result["speedup_vs_baseline_1w"] = round(result["images_per_s_1w"] / b["images_per_s"], 2)
    print(f"baseline (naive whole-canvas distortion), 1 worker: {b['images_per_s']} images/s",
          file=sys.stderr)
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    if args.keep is None:
        shutil.rmtree(base)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

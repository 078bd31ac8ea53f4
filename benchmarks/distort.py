"""Distorted ground truth throughput on the toy ADE20K set, as the trainer builds it.

Builds (or reuses, `--keep DIR`) a toy ADE20K work dir (200 train images, ~45 segments each, at
`--native` W×H, default 256×256), its segment store, index and train matches, then times
`GuidanceComposer.distorted_gt`, the call the trainer's data-loader workers make per image
(photo read, segment map, colour transfer to a top-k reference and resolution at the original
resolution, the resize to `--load`, the crop to `--crop`, TPS shape warp on every segment in the
crop, composition; the crop offsets drawn first, as the trainer does):

  (a) 1 worker and 2 worker processes (each loads its own composer, as a DataLoader worker
      does; OpenCV single-threaded), images/s of wall time and images per CPU second;
  (b) a baseline in the same run, 1 worker: the straightforward way (`naive_segment`), each
      segment distorted on whole canvases with numpy/OpenCV calls (numpy lαβ transfer with the
      reference's statistics recomputed and whole-image resampling at the original resolution,
      the whole-image resize, the TPS map at every pixel of the crop), then composed. (a)/(b) is
      the speed-up of the windowed, compiled path.

    python benchmarks/distort.py [--images 100] [--keep DIR]                    # 256², no resize
    python benchmarks/distort.py --native 512x384 --load 286 --crop 256        # ADE20K-like

The machine may be shared: the load average is recorded before and after. The last line is
one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from resail.benchmarks._common import finish, machine, scratch
from resail.pipeline.color_transfer import lab_to_rgb, rgb_to_lab
from resail.pipeline.compose import Piece, compose
from resail.pipeline.distort import DistortConfig, draw_segments, resample_resolution
from resail.pipeline.guidance import open_composer
from resail.pipeline.tps import contour_points, degenerate_targets, fit_tps, tps_source_map
from resail.tests.builders.work import baked_work
from resail.threads import init_worker, use
from resail.workdir import WorkDir


def toy_work(base: Path, n_train: int, native: tuple[int, int]) -> Path:
    """The toy work dir under `base`, train split baked (reused when a `--keep` folder holds one)."""
    if WorkDir(base / "work").matches_table("train").exists():
        return base / "work"
    return baked_work(base, n_train=n_train, n_val=8, size=native, splits=("train",), jobs=2)


def naive_segment(image, source, query, ref, d, canvas, crop, cfg=DistortConfig()):
    """One segment the straightforward way, on whole images with numpy/OpenCV calls: numpy lαβ
    transfer (reference statistics recomputed) and resampling of the whole original-resolution
    image, the whole image resized to the canvas and cropped, the TPS map evaluated at every
    pixel of the crop. The same steps in the same order as `distort_segments`."""
    mask = np.zeros(image.shape[:2], bool)
    h, w = source.mask.shape
    mask[source.y0:source.y0 + h, source.x0:source.x0 + w] = source.mask
    content = image * mask[..., None]
    if d.color and ref is not None:
        src_lab = rgb_to_lab(content[mask])
        ref_lab = rgb_to_lab(ref[0][ref[1]])
        gain = np.maximum(ref_lab.std(0), 1e-10) / np.maximum(src_lab.std(0), 1e-10)
        lab = (src_lab - src_lab.mean(0)) * gain + ref_lab.mean(0)
        content[mask] = np.clip(lab_to_rgb(lab), 0, 255).astype(np.uint8)
    if d.resolution:
        content = resample_resolution(content, d.r)
    oy, ox, ch, cw = crop
    content = cv2.resize(content, canvas, interpolation=cv2.INTER_AREA)[oy:oy + ch, ox:ox + cw]
    src = contour_points(query, cfg.n_points) if d.shape else None
    if src is None:
        return content, query
    dst = src.copy()
    for index, shift in zip(d.moved, d.unit_shifts * cfg.shift_scale * np.sqrt(query.sum())):
        dst[index] = src[index] + shift
    if degenerate_targets(dst):
        return content, query
    map_x, map_y = tps_source_map(fit_tps(src, dst), (0, 0, *query.shape))
    warped = cv2.remap(content, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    warped_mask = cv2.remap(query.view(np.uint8), map_x, map_y, cv2.INTER_NEAREST).view(bool)
    return warped, warped_mask


def baseline_gt(comp, row: int, rng: np.random.Generator, crop: tuple[int, int, int, int]) -> np.ndarray:
    """Every segment distorted with `naive_segment` (the same draws as `distorted_gt`), composed."""
    image = comp.original(row)
    seg_map, rows, boxes = comp.segment_map(row)
    oy, ox, ch, cw = crop
    seg_map = seg_map[oy:oy + ch, ox:ox + cw]
    draws = draw_segments(rng, DistortConfig(), len(rows))
    u_ref = rng.random(len(rows))
    pieces = []
    for i, (r, box) in enumerate(zip(rows, boxes)):
        ref = comp.color_reference(int(r), float(u_ref[i]), "topk")
        source = comp.segment_source(int(r), box)
        content, mask = naive_segment(image, source, seg_map == i, ref, draws[i], comp.size, crop)
        pieces.append(Piece(i, 0, 0, content, mask))
    return compose(seg_map, comp.is_thing[rows], pieces, comp.mode)


_BARRIER = None  # set in each worker: the timed loops start together


def _init(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier
    init_worker()  # as a data-loader worker runs: one thread


def _item(comp, row: int, rng: np.random.Generator, crop: int, method: str) -> np.ndarray:
    """One image's distorted GT as the trainer asks for it: the crop offsets drawn first."""
    W, H = comp.size
    oy, ox = int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))
    if method == "windowed":
        return comp.distorted_gt(row, rng, crop=(oy, ox, crop, crop))
    return baseline_gt(comp, row, rng, (oy, ox, crop, crop))


def _run(args) -> tuple[int, float, int, float]:
    """Distort `rows` in this process: (images, CPU seconds, segments, wall seconds), the
    composer's loading and a two-image warm-up left out of the timing; every worker starts its
    timed loop at the same moment (a barrier), so the walls overlap."""
    work, rows, seed, method, load, crop = args
    comp = open_composer(Path(work), "train", size=(load, load))
    try:
        for row in rows[:2]:  # warm-up: numba kernels loaded from their cache, first reads
            _item(comp, int(row), np.random.default_rng([seed, int(row), 1]), crop, method)
        _BARRIER.wait()
        start, wall = time.process_time(), time.perf_counter()
        for row in rows:
            _item(comp, int(row), np.random.default_rng([seed, int(row)]), crop, method)
        cpu, wall = time.process_time() - start, time.perf_counter() - wall
        return len(rows), cpu, int(comp.n_segments[rows].sum()), wall
    finally:
        comp.close()


def rate(work: Path, rows: np.ndarray, workers: int, method: str, load: int, crop: int) -> dict:
    chunks = [(str(work), rows[i::workers], 0, method, load, crop) for i in range(workers)]
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
    ap.add_argument("--native", default="256x256", help="W×H of the toy images (the original resolution)")
    ap.add_argument("--load", type=int, default=256, help="side of the training canvas (the load size)")
    ap.add_argument("--crop", type=int, default=256, help="side of the random crop (the network size)")
    args = ap.parse_args()
    native = tuple(int(v) for v in args.native.lower().split("x"))
    use(2)  # the policy of the trainer beside two data-loader workers: one thread each (init_worker)
    base = scratch(args.keep, "distort")
    work = toy_work(base, args.n_train, native)
    comp = open_composer(work, "train", size=(args.load, args.load))
    rows = comp.ok_images()[: args.images]
    comp.close()
    result = {"bench": "distort", "native": f"{native[0]}x{native[1]}", "load": args.load, "crop": args.crop,
              "images": len(rows), **machine()}
    for workers in (1, 2):
        r = rate(work, rows, workers, "windowed", args.load, args.crop)
        result.update({f"{k}_{workers}w": v for k, v in r.items() if k != "segments_per_image"})
        result["segments_per_image"] = r["segments_per_image"]
        print(f"distorted GT, {workers} worker(s): {r['images_per_s']} images/s "
              f"({r['ms_per_image_cpu']} CPU ms/image)", file=sys.stderr)
    b = rate(work, rows, 1, "baseline", args.load, args.crop)
    result["baseline_images_per_s_1w"] = b["images_per_s"]
    result["speedup_vs_baseline_1w"] = round(result["images_per_s_1w"] / b["images_per_s"], 2)
    print(f"baseline (naive whole-canvas distortion), 1 worker: {b['images_per_s']} images/s",
          file=sys.stderr)
    finish(result, base, args.keep)


if __name__ == "__main__":
    main()

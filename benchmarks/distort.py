"""Distorted ground truth throughput: images/s with all three distortions on every segment.

Synthetic 256×256 scenes: a few stuff polygons tiling the canvas, then 8–15 thing ellipses and
polygons on top (10–20 segments in all), each with a random colour, a gradient and noise. Every
segment gets a colour reference cut from another scene. Timed with 1 and 2 worker processes
(one image per task, as a data loader does); OpenCV runs single-threaded in each worker. Reports
wall-clock images/s and images per CPU second (the machine may be shared: the load average is
recorded before and after). The last line is one JSON object.

    python benchmarks/distort.py [--images 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import cv2
import numpy as np

from resail.pipeline.distort import DistortConfig, distort_segments

SIZE = 256


def make_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured image and its disjoint segment masks (10–20 of them, all non-empty)."""
    labels = np.zeros((SIZE, SIZE), np.int32)
    n_stuff = int(rng.integers(2, 6))
    for k in range(1, n_stuff):  # stuff: half-planes cut by random lines, painted in order
        p = rng.uniform(0, SIZE, 2)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        labels[(xx - p[0]) * np.sin(angle) - (yy - p[1]) * np.cos(angle) > 0] = k
    n_things = int(rng.integers(8, 16))
    for k in range(n_stuff, n_stuff + n_things):
        layer = np.zeros((SIZE, SIZE), np.uint8)
        centre = rng.uniform(16, SIZE - 16, 2)
        if rng.random() < 0.5:
            axes = rng.uniform(5, 45, 2)
            cv2.ellipse(layer, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            radii = rng.uniform(8, 50, len(angles))
            pts = centre + np.c_[np.cos(angles) * radii, np.sin(angles) * radii]
            cv2.fillPoly(layer, [pts.astype(np.int32)], 1)
        labels[layer > 0] = k
    masks = [labels == k for k in np.unique(labels)]
    image = np.zeros((SIZE, SIZE, 3), np.float64)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    for mask in masks:
        colour = rng.uniform(20, 235, 3)
        gradient = rng.uniform(-40, 40, (2, 3))
        image[mask] = colour + yy[mask, None] * gradient[0] + xx[mask, None] * gradient[1]
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return image[box] * mask[box][..., None], mask[box]


def make_tasks(n_images: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    n_scenes = min(n_images, 32)  # scenes repeat; each task still has its own seed
    scenes = [make_scene(rng) for _ in range(n_scenes)]
    tasks = []
    for i in range(n_images):
        image, masks = scenes[i % n_scenes]
        ref_image, ref_masks = scenes[(i + 1) % n_scenes]
        refs = [crop(ref_image, ref_masks[int(rng.integers(len(ref_masks)))]) for _ in masks]
        tasks.append((image, masks, refs, seed * 1_000_003 + i))
    return tasks


_TASKS: list[tuple] = []  # set before the pool forks, so workers inherit the scenes


def _init_worker() -> None:
    cv2.setNumThreads(1)


def distort_task(index: int) -> float:
    """Distort one image; only its CPU seconds travel back (a loader would send the composite)."""
    image, masks, refs, seed = _TASKS[index]
    start = time.process_time()
    distort_segments(image, masks, refs, np.random.default_rng(seed), DistortConfig())
    return time.process_time() - start


def run(tasks: list[tuple], workers: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) over `tasks` with `workers` processes,
    after a warm-up (numba compiled or loaded from its cache)."""
    _TASKS[:] = tasks
    if workers == 1:
        _init_worker()
        distort_task(0)
        start = time.perf_counter()
        cpu = sum(distort_task(index) for index in range(len(tasks)))
        return len(tasks) / (time.perf_counter() - start), len(tasks) / cpu
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        pool.map(distort_task, range(workers * 2), chunksize=1)
        start = time.perf_counter()
        cpu = sum(pool.map(distort_task, range(len(tasks)), chunksize=4))
        return len(tasks) / (time.perf_counter() - start), len(tasks) / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tasks = make_tasks(args.images, args.seed)
    segments = sum(len(task[1]) for task in tasks)
    result = {"bench": "distort", "size": SIZE, "images": len(tasks),
              "segments_per_image": round(segments / len(tasks), 2),
              "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}
    for workers in (1, 2):
        rate, per_cpu_s = run(tasks, workers)
        result[f"images_per_s_{workers}w"] = round(rate, 1)
        result[f"images_per_cpu_s_{workers}w"] = round(per_cpu_s, 1)
        print(f"{workers} worker(s): {rate:.1f} images/s wall ({rate * segments / len(tasks):.0f} "
              f"segments/s), {per_cpu_s:.1f} images per CPU second")
    # On a shared machine the wall rate measures the other users too; CPU seconds per image do
    # not, so twice the 2-worker rate per CPU second is what two idle cores would deliver.
    result["projected_images_per_s_2_idle_cores"] = round(2 * result["images_per_cpu_s_2w"], 1)
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Stage-1 throughput: images/s of `resail index build` (segments) on the toy ADE20K set at 256×256,
with 1 and 2 jobs, and bytes per segment on disk. Target: ≥ 100 images/s on 2 cores, ≥ 1.6× from
1 to 2 jobs. The last output line is one JSON object with the headline figures.

    python benchmarks/decompose.py [--n-train 400] [--out /tmp/resail_bench_decompose]

`--coco`: COCO instance masks instead. Images/s of the COCO-Stuff reader's `load` + `decompose`, in
one process, on the toy `cocostuff-real` set (640×480), with the masks drawn by pycocotools (after)
and by the code before it (cv2.fillPoly and a pure-Python RLE decoder, kept below as the baseline),
alternating in the same run; and the instance-map painting alone, for the set's polygons and for the
same masks as compressed RLE. The ratios are medians of paired CPU times (steadier than best-of on a
shared machine). Target: after ≥ before.

    python benchmarks/decompose.py --coco [--n-train 200] [--repeats 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as coco_mask
from joblib import Parallel, delayed

from resail.benchmarks._common import emit
from resail.errors import InputError
from resail.pipeline import datasets
from resail.pipeline.coco import coco_annotations, coco_instance_map
from resail.pipeline.decompose import decompose, thing_lut
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.pipeline.toy import ToyConfig, make_toy_dataset
from resail.tests.builders.work import toy_dataset
from resail.threads import use
from resail.workdir import WorkDir


def _run(root: Path, work: Path, jobs: int) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process, manifest); with jobs=1 all work is in-process."""
    shutil.rmtree(work, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    m = build_segments(SegmentsConfig("ade20k", root, work, splits=("train",), jobs=jobs))
    return time.perf_counter() - t0, time.process_time() - c0, m


# ---------------------------------------------------------------- --coco: the masks before pycocotools


def baseline_instance_map(annotations, shape: tuple[int, int], where: str) -> np.ndarray:
    """`coco_instance_map` before pycocotools (commit 2b0a41a, pipeline/datasets.py)."""
    h, w = shape
    inst = np.zeros((h, w), np.int32)
    k = 0
    for a in annotations:
        if a["iscrowd"]:
            continue
        seg = a["segmentation"]
        mask = _baseline_rle_decode(seg, where) if isinstance(seg, dict) else _baseline_polygons(seg, h, w)
        if mask.any():
            k += 1
            inst[mask] = k
    return inst


def _baseline_polygons(polygons: list, h: int, w: int) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in polygons if len(p) >= 6]
    if pts:
        cv2.fillPoly(canvas, pts, 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def _baseline_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _baseline_rle_decode(rle: dict, where: str) -> np.ndarray:
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(_baseline_counts(counts) if isinstance(counts, str) else counts, np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise InputError(f"{where}: COCO RLE counts sum to {int(runs.sum())}, not {h}*{w}")
    values = np.zeros(runs.size, bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(w, h).T


def _as_rle(annotations: list[dict], shape: tuple[int, int]) -> list[dict]:
    """The same instances with each non-crowd mask (pycocotools') as a compressed RLE string."""
    out = []
    for a in annotations:
        if not a["iscrowd"]:
            m = coco_instance_map([a], shape, "") > 0
            rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
            a = {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "iscrowd": 0}
        out.append(a)
    return out


def coco_main(args) -> None:
    use(threads=1)  # as a stage-1 worker runs: one image per core
    cfg = ToyConfig.preset("cocostuff-real", n_train=args.n_train, n_val=1, n_jobs=2)
    root = make_toy_dataset(args.out / "cocostuff-real", cfg)
    reader = datasets.make_reader("cocostuff", root)
    recs = datasets.list_split(reader, "train")
    lut = thing_lut(reader.table.thing_ids())
    paint = {"before": baseline_instance_map, "after": coco_instance_map}

    def load_and_decompose(which: str) -> tuple[float, float, int]:
        datasets.coco_instance_map = paint[which]  # what CocoStuffReader.load calls
        t0, c0, n_seg = time.perf_counter(), time.process_time(), 0
        for rec in recs:
            s = reader.load(rec)
            n_seg += len(decompose(s.label_map, s.instance_map, s.instance_classes, lut,
                                   uncovered_rule=reader.uncovered_rule))
        return time.perf_counter() - t0, time.process_time() - c0, n_seg

    shapes = [datasets.read_index_png(r.label_path).shape for r in recs]
    polys = [coco_annotations(r.annotations) for r in recs]
    rles = [_as_rle(a, hw) for a, hw in zip(polys, shapes)]
    n_ann = sum(not a["iscrowd"] for anns in polys for a in anns)

    def paint_only(which: str, anns: list) -> float:
        c0 = time.process_time()
        for a, hw in zip(anns, shapes):
            paint[which](a, hw, "")
        return time.process_time() - c0

    load = os.getloadavg()[0]
    wall, cpu = {w: [] for w in paint}, {w: [] for w in paint}
    segs, only = {}, {(w, k): [] for w in paint for k in ("polygons", "rle")}
    try:
        for i in range(args.repeats):
            for which in (("before", "after") if i % 2 else ("after", "before")):  # alternating, order too
                dt, dc, segs[which] = load_and_decompose(which)
                wall[which].append(dt)
                cpu[which].append(dc)
                only[which, "polygons"].append(paint_only(which, polys))
                only[which, "rle"].append(paint_only(which, rles))
    finally:
        datasets.coco_instance_map = coco_instance_map

    def paired(times: dict, a: str, b: str) -> float:
        """Median over the repeats of time(a) / time(b): steadier than best-of on a shared machine."""
        return float(np.median(np.array(times[a]) / np.array(times[b])))

    n = len(recs)
    ips = {w: n / min(cpu[w]) for w in paint}
    for w in paint:
        print(f"{w:6s}: load + decompose {n / min(wall[w]):.1f} images/s wall, {ips[w]:.1f} per CPU-second "
              f"(best of {args.repeats}: {', '.join(f'{t:.2f}s' for t in cpu[w])} CPU); {segs[w] / n:.1f} segments "
              f"per image; painting alone {n_ann / min(only[w, 'polygons']):.0f} polygon annotations/s, "
              f"{n_ann / min(only[w, 'rle']):.0f} RLE annotations/s")
    speedup = paired(cpu, "before", "after")
    ratio = {k: paired({w: only[w, k] for w in paint}, "before", "after") for k in ("polygons", "rle")}
    print(f"{n} images {cfg.width}×{cfg.height}, {n_ann / n:.1f} non-crowd annotations per image; after/before "
          f"(median of {args.repeats} paired CPU times): load + decompose {speedup:.3f}×, painting polygons "
          f"{ratio['polygons']:.2f}×, painting RLE {ratio['rle']:.2f}×; load average before the runs {load:.2f} "
          f"on {os.cpu_count()} cores")
    emit({
        "bench": "decompose-coco", "dataset": "toy-cocostuff-real-640x480", "n_images": n,
        "annotations_per_image": round(n_ann / n, 1),
        "images_per_cpu_s_before": round(ips["before"], 1), "images_per_cpu_s_after": round(ips["after"], 1),
        "speedup": round(speedup, 3),
        "images_per_s_before": round(n / min(wall["before"]), 1),
        "images_per_s_after": round(n / min(wall["after"]), 1),
        "paint_polygons_speedup": round(ratio["polygons"], 2), "paint_rle_speedup": round(ratio["rle"], 2),
        "segments_per_image_before": round(segs["before"] / n, 1),
        "segments_per_image_after": round(segs["after"] / n, 1),
        "load_avg_before": round(load, 2),
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=None, help="images (default 400; 200 with --coco)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/resail_bench_decompose"))
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per setting (default 2; 8 with --coco)")
    ap.add_argument("--coco", action="store_true", help="COCO instance masks, pycocotools against the code before")
    args = ap.parse_args()
    if args.coco:
        args.n_train, args.repeats = args.n_train or 200, args.repeats or 8
        return coco_main(args)
    args.n_train, args.repeats = args.n_train or 400, args.repeats or 2

    root = toy_dataset(args.out / "toy", n_train=args.n_train, n_val=1, size=256)
    Parallel(n_jobs=2)(delayed(abs)(i) for i in range(4))  # start the worker pool once, as a long run would

    best, cpu = {}, []
    load = os.getloadavg()[0]
    for jobs in (1, 2):
        times = []
        for _ in range(args.repeats):
            dt, dc, m = _run(root, args.out / f"work{jobs}", jobs)
            times.append(dt)
            if jobs == 1:
                cpu.append(dc)
        best[jobs] = min(times)
        print(f"jobs={jobs}: {args.n_train / best[jobs]:.1f} images/s (best of {args.repeats}: "
              f"{', '.join(f'{t:.2f}s' for t in times)}; merge {m['merge_seconds']:.2f}s)")
    wd = WorkDir(args.out / "work2")
    n_seg = m["counts"]["train"]["segments"]
    on_disk = sum(p.stat().st_size for p in wd.segments.glob("train*"))
    h5 = wd.segments_h5("train").stat().st_size
    ips1, ips2 = args.n_train / best[1], args.n_train / best[2]
    print(f"{n_seg} segments ({n_seg / args.n_train:.1f} per image), {on_disk / n_seg:.0f} bytes per segment on disk "
          f"({h5 / n_seg:.0f} in the HDF5 file)")
    print(f"jobs=1 CPU time: {args.n_train / min(cpu):.1f} images per CPU-second (less sensitive to other "
          f"processes than wall time); load average before the runs {load:.2f} on {os.cpu_count()} cores")
    emit({
        "bench": "decompose", "dataset": "toy-ade20k-256", "n_images": args.n_train, "segments": n_seg,
        "images_per_s_1job": round(ips1, 1), "images_per_s_2jobs": round(ips2, 1),
        "speedup_2jobs": round(ips2 / ips1, 2), "images_per_cpu_s_1job": round(args.n_train / min(cpu), 1),
        "bytes_per_segment": round(on_disk / n_seg), "load_avg_before": round(load, 2),
    })


if __name__ == "__main__":
    main()

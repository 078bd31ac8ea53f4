"""Stage-1 throughput: images/s of `resail index build` (segments) on the toy ADE20K set at 256×256,
with 1 and 2 jobs, and bytes per segment on disk. Target: ≥ 100 images/s on 2 cores, ≥ 1.6× from
1 to 2 jobs. The last output line is one JSON object with the headline figures.

    python benchmarks/decompose.py [--n-train 400] [--out /tmp/resail_bench_decompose]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from joblib import Parallel, delayed

from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.workdir import WorkDir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared fixture builders (tests/builders)
from builders.work import toy_dataset  # noqa: E402


def _run(root: Path, work: Path, jobs: int) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process, manifest); with jobs=1 all work is in-process."""
    shutil.rmtree(work, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    m = build_segments(SegmentsConfig("ade20k", root, work, splits=("train",), jobs=jobs))
    return time.perf_counter() - t0, time.process_time() - c0, m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--out", type=Path, default=Path("/tmp/resail_bench_decompose"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

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
    print(json.dumps({
        "bench": "decompose", "dataset": "toy-ade20k-256", "n_images": args.n_train, "segments": n_seg,
        "images_per_s_1job": round(ips1, 1), "images_per_s_2jobs": round(ips2, 1),
        "speedup_2jobs": round(ips2 / ips1, 2), "images_per_cpu_s_1job": round(args.n_train / min(cpu), 1),
        "bytes_per_segment": round(on_disk / n_seg), "load_avg_before": round(load, 2),
    }))


if __name__ == "__main__":
    main()

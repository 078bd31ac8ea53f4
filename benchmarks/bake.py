"""Guidance bake throughput on the toy ADE20K set at 256×256.

`resail guidance bake --split val`, retrieval included, with 1 and 2 jobs (images/s of the
whole stage, from a fresh guidance folder each time). The distorted ground truth the trainer
builds on the fly is timed by benchmarks/distort.py.

    python benchmarks/bake.py [--n-train 200] [--n-val 200]

Last line: one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


from resail.index.build import build_index
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.pipeline.toy import ToyConfig, make_toy_dataset

SIZE = (256, 256)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    args = ap.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="resail_bench_bake_"))
    root = make_toy_dataset(base / "toy", ToyConfig("ade20k", args.n_train, args.n_val, 256, 256, seed=0), progress=False)
    work = base / "work"
    build_segments(SegmentsConfig("ade20k", root, work, jobs=2))
    build_index(work, progress=False)
    bake(BakeConfig(work, "train", size=SIZE, jobs=2, n_preview=0))
    result = {"bench": "bake", "size": f"{SIZE[0]}x{SIZE[1]}", "n_val_images": args.n_val,
              "cpus": os.cpu_count(), "load_avg_1min_before": round(os.getloadavg()[0], 2)}
    for jobs in (1, 2):
        shutil.rmtree(work / "guidance" / "val.h5", ignore_errors=True)
        for p in (work / "guidance").glob("val*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        t0 = time.perf_counter()
        m = bake(BakeConfig(work, "val", size=SIZE, jobs=jobs, n_preview=0))
        dt = time.perf_counter() - t0
        result[f"bake_images_per_s_{jobs}job"] = round(m["images"] / dt, 1)
        result[f"bake_retrieve_s_{jobs}job"] = m["timings"]["retrieve_s"]
        print(f"bake val, {jobs} job(s): {m['images']} images in {dt:.2f}s "
              f"(retrieval {m['timings']['retrieve_s']}s, compose {m['timings']['compose_s']}s)", file=sys.stderr)
    result["bake_speedup_2jobs"] = round(result["bake_images_per_s_2job"] / result["bake_images_per_s_1job"], 2)
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    if args.keep is None:
        shutil.rmtree(base)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

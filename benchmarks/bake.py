"""Guidance bake throughput on the toy ADE20K set at 256×256.

`resail guidance bake --split val`, retrieval included, with 1 and 2 jobs (images/s of the
whole stage, from a fresh guidance folder each time). The distorted ground truth the trainer
builds on the fly is timed by benchmarks/distort.py.

    python benchmarks/bake.py [--n-train 200] [--n-val 200]

Last line: one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from resail.benchmarks._common import finish, machine, scratch
from resail.pipeline.bake import BakeConfig, bake
from resail.tests.builders.work import baked_work
from resail.workdir import WorkDir

SIZE = (256, 256)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    args = ap.parse_args()
    base = scratch(args.keep, "bake")
    work = baked_work(base, n_train=args.n_train, n_val=args.n_val, size=SIZE, splits=("train",), jobs=2)
    result = {"bench": "bake", "size": f"{SIZE[0]}x{SIZE[1]}", "n_val_images": args.n_val, **machine()}
    for jobs in (1, 2):
        for p in WorkDir(work).guidance.glob("val*"):  # the val bake: its link, versions and the names beside it
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        t0 = time.perf_counter()
        m = bake(BakeConfig(work, "val", size=SIZE, jobs=jobs, n_preview=0))
        dt = time.perf_counter() - t0
        result[f"bake_images_per_s_{jobs}job"] = round(m["images"] / dt, 1)
        result[f"bake_retrieve_s_{jobs}job"] = m["timings"]["retrieve_s"]
        print(f"bake val, {jobs} job(s): {m['images']} images in {dt:.2f}s "
              f"(retrieval {m['timings']['retrieve_s']}s, compose {m['timings']['compose_s']}s)", file=sys.stderr)
    result["bake_speedup_2jobs"] = round(result["bake_images_per_s_2job"] / result["bake_images_per_s_1job"], 2)
    finish(result, base, args.keep)


if __name__ == "__main__":
    main()

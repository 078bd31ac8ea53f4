"""`resail eval` wall time per 100 images on the CPU, toy preset (128×128).

A toy ADE20K-format set (val baked at 128×128), a randomly initialised toy-preset G_ema snapshot,
a randomly initialised toy segmentation network and a random-weight FID Inception (the published
weights cannot be downloaded here; timing does not depend on the weight values, so the FID
*values* printed are meaningless). Two evals of the same images: cold (real-image Inception
statistics computed) and warm (read from the cache, as every later eval of a run is). The
Fréchet distance's 2048×2048 `scipy.linalg.sqrtm` is a fixed cost per eval, reported apart.
With `--segmenter` (a classic segmenter), each image costs that segmenter's `predict` twice
(generated and real); its seconds per 100 images on the CPU are `benchmarks/segmenters.py`'s.

    python benchmarks/eval.py [--n-val 100] [--threads 1] [--batch-size 8]

Last line: one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from resail.benchmarks._common import emit
from resail.synth.config import TrainConfig
from resail.synth.eval import EvalConfig, run_eval
from resail.synth.generator import build_generator
from resail.synth.inception import FIDInception, randomize_
from resail.synth.presets import get_preset
from resail.synth.segnet import SegnetTrainConfig, build_segnet, save_segnet
from resail.tests.builders.runs import write_snapshot
from resail.tests.builders.work import baked_work
from resail.threads import use
from resail.workdir import WorkDir


def build_work(base: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    net = get_preset("toy")
    size = (net.width, net.height)
    work = baked_work(base, n_train=n_train, n_val=n_val, size=size, splits=("val",))
    cfg = TrainConfig(net=net, preset="toy", name="bench", batch_size=4, load_size=(144, 144), n_train=n_train)
    torch.manual_seed(0)
    write_snapshot(work, cfg, build_generator(net), step=0)
    save_segnet(WorkDir(work).segnet("toy"), build_segnet(net), None, 0, SegnetTrainConfig())
    weights = base / "inception_random.pth"
    torch.save(randomize_(FIDInception(), seed=0).state_dict(), weights)
    return work, weights


def per_100(m: dict, key: str) -> float:
    return round(m["timings"][key] * 100 / m["n_images"], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--keep", type=Path, default=None, help="Build the work dir here and keep it.")
    args = ap.parse_args()
    use(threads=args.threads)

    base = args.keep or Path(tempfile.mkdtemp(prefix="resail_bench_eval_"))
    try:
        t0 = time.perf_counter()
        work, weights = build_work(base, args.n_train, args.n_val)
        print(f"work dir ({args.n_train} train / {args.n_val} val at 128x128) in {time.perf_counter() - t0:.1f}s")
        runs = {}
        for name in ("cold", "warm"):
            m = run_eval(EvalConfig(work, "bench", inception_weights=weights, batch_size=args.batch_size))
            runs[name] = m
            t = m["timings"]
            print(f"{name}: {m['n_images']} images in {t['total_s']:.1f}s (generate {t['generate_s']:.1f}, "
                  f"write {t['write_s']:.1f}, inception {t['inception_s']:.1f}, segment {t['segment_s']:.1f}, "
                  f"fid/kid {t['fid_s']:.1f}); real stats recomputed: {m['protocol']['fid']['real_stats_recomputed']}")
        cold, warm = runs["cold"], runs["warm"]
        fixed = warm["timings"]["fid_s"]
        result = {
            "bench": "eval", "preset": "toy", "resolution": cold["resolution"], "n_images": cold["n_images"],
            "threads": args.threads, "batch_size": args.batch_size, "device": "cpu",
            "inception_weights": "random (timing only; FID values meaningless)",
            "cold_s_per_100": per_100(cold, "total_s"), "warm_s_per_100": per_100(warm, "total_s"),
            "warm_s_per_100_without_fid_fixed_cost": round((warm["timings"]["total_s"] - fixed) * 100
                                                           / warm["n_images"], 2),
            "fid_kid_fixed_s": round(fixed, 2),
            "generate_s_per_100": per_100(warm, "generate_s"), "inception_fake_s_per_100": per_100(warm, "inception_s"),
            "inception_fake_and_real_s_per_100": per_100(cold, "inception_s"),
            "segment_s_per_100": per_100(warm, "segment_s"), "write_png_s_per_100": per_100(warm, "write_s"),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()

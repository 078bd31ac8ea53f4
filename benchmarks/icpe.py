"""CLADE-ICPE's positional maps: what computing them per image costs, against what a cache would hold.

The maps depend only on the label map, so they could be an offline artifact like the guidance
cache; the CLADE authors store them as `.npy` files at the label map's resolution (2 × H × W
float32). This measures, on the realistic toy presets of benchmarks/scale.py (the real datasets'
image sizes, classes and components per image):

  compute     `icpe_maps` per label map (ms, median and max over the images, 1 thread, after one
              warm-up call that loads the numba kernel), and the same with the resize to the
              network size the loader adds
  cache       bytes per image and per training set (the real datasets' train sizes) of the
              authors' float32 maps, and the time to read one such file back (np.load, warm page
              cache: a lower bound for a disk)

    python benchmarks/icpe.py [--images 12] [--out /tmp/icpe_bench]

Last line: one JSON object (docs/baselines.md quotes it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from resail.benchmarks._common import emit
from resail.pipeline.datasets import make_reader
from resail.pipeline.toy import ToyConfig, make_toy_dataset
from resail.synth.baselines.icpe import icpe_maps, resize_maps, skip_id

TRAIN_IMAGES = {"ade20k": 20_210, "cocostuff": 118_287, "cityscapes": 2_975}
NET_SIZE = {"ade20k": (256, 256), "cocostuff": (256, 256), "cityscapes": (512, 256)}


def measure(preset: str, n: int, out: Path) -> dict:
    cfg = ToyConfig.preset(preset, n_train=1, n_val=n, seed=1)
    reader = make_reader(cfg.fmt, make_toy_dataset(out / preset, cfg))
    labels = [reader.load(r).label_map for r in reader.records("val")]
    skip = skip_id(cfg.fmt)
    icpe_maps(labels[0], skip)  # loads (or compiles) the numba kernel
    compute, with_resize = [], []
    for lab in labels:
        t = time.perf_counter()
        maps = icpe_maps(lab, skip)
        compute.append(time.perf_counter() - t)
        resize_maps(maps, *NET_SIZE[cfg.fmt])
        with_resize.append(time.perf_counter() - t)
    path = out / f"{preset}.npy"
    np.save(path, maps)
    t = time.perf_counter()
    np.load(path)
    read_s = time.perf_counter() - t
    per_image = maps.nbytes
    classes = float(np.mean([len(np.unique(x)) for x in labels]))
    return {"size": list(labels[0].shape[::-1]), "classes_per_image": classes,
            "compute_ms_median": round(1000 * float(np.median(compute)), 1),
            "compute_ms_max": round(1000 * max(compute), 1),
            "with_resize_ms_median": round(1000 * float(np.median(with_resize)), 1),
            "cache_mb_per_image": round(per_image / 2**20, 2),
            "cache_gb_train": round(per_image * TRAIN_IMAGES[cfg.fmt] / 2**30, 1),  # GiB
            "read_ms_warm": round(1000 * read_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("/tmp/icpe_bench"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {p: measure(p, args.images, args.out) for p in ("ade20k-real", "cocostuff-real", "cityscapes-real")}
    for p, r in results.items():
        print(f"{p}: {r['size'][0]}x{r['size'][1]}, {r['classes_per_image']:.1f} classes: {r['compute_ms_median']} ms "
              f"(max {r['compute_ms_max']}), {r['with_resize_ms_median']} ms with the resize; a cache would hold "
              f"{r['cache_mb_per_image']} MB per image, {r['cache_gb_train']} GB for the train split "
              f"(read back warm: {r['read_ms_warm']} ms)")
    emit(results)


if __name__ == "__main__":
    main()

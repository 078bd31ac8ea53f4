"""Crop codecs of the segment store on real photographs: bytes per crop pixel, error, and time.

The toy photos are procedural noise, whose JPEG sizes say nothing about real photos'. This
crops REAL photographs (any colour photos given with --photos; e.g. scikit-image's sample
images: `pip download scikit-image --no-deps -d /tmp/skimg` and unzip its `skimage/data/`)
into segments of a realistic size distribution: the label maps of a dataset (default: the
ADE20K-like realistic set of benchmarks/scale.py) resized (nearest) to each photo's size and
decomposed as stage 1 does, so the crops keep the photo's own resolution. Every segment's crop
(`store.crop_pixels`, `--crop-max-side` 256) is encoded with both codecs (`store.encode_crop`)
and decoded back (`decode_crop`, `decode_mask`):

  bytes per crop pixel   raw (RGBA, 4) and jpeg (the whole blob; its mask part apart), over all
                         crops, so JPEG's per-crop header (~0.6 KB) is charged at the real mix
                         of crop sizes
  error                  |jpeg − raw| per channel value inside the mask (mean, p99, max); the
                         mask must be exact and the outside black (checked, not timed)
  time                   encode and decode per crop (ms, 1 thread), the mask alone too

and the same on the dataset's own (synthetic) photos, for comparison. Grey photos are skipped.

    python benchmarks/crops.py --photos /tmp/skimg/skimage/data/{astronaut,chelsea,coffee}.png \
        [--labels /tmp/h9_scale/data/ade20k-real] [--label-maps 40]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from resail.benchmarks._common import emit
from resail.common import nearest_cv2, read_rgb
from resail.pipeline.datasets import list_split, make_reader
from resail.pipeline.decompose import decompose, thing_lut
from resail.pipeline.store import crop_pixels, decode_crop, decode_mask, encode_crop
from resail.threads import use


def _resize_nearest(a: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    return a if a is None or a.shape[:2] == hw else nearest_cv2(a, *hw)


def measure(photos: list[np.ndarray], samples, reader, crop_max_side: int) -> dict:
    """Both codecs on every segment of every (photo, label map) pair; photo i goes with label maps i, i+P, …"""
    lut = thing_lut(reader.table.thing_ids())
    tot = {"crops": 0, "pixels": 0, "raw": 0, "jpeg": 0, "jpeg_mask": 0}
    t = {"encode_raw": 0.0, "encode_jpeg": 0.0, "decode_raw": 0.0, "decode_jpeg": 0.0, "decode_mask_jpeg": 0.0}
    errors = []
    for i, s in enumerate(samples):
        photo = photos[i % len(photos)] if photos else s.image
        hw = photo.shape[:2]
        label = _resize_nearest(s.label_map, hw)
        inst = _resize_nearest(s.instance_map, hw)
        for seg in decompose(label, inst, s.instance_classes, lut, 0.9, reader.uncovered_rule):
            rgb, mask = crop_pixels(photo, seg, crop_max_side)
            h, w = mask.shape
            t0 = time.perf_counter()
            raw = encode_crop(rgb, mask, "raw")
            t1 = time.perf_counter()
            jpeg = encode_crop(rgb, mask, "jpeg")
            t2 = time.perf_counter()
            rgb_r, _ = decode_crop(raw, h, w, "raw")
            t3 = time.perf_counter()
            rgb_j, mask_j = decode_crop(jpeg, h, w, "jpeg")
            t4 = time.perf_counter()
            decode_mask(jpeg, h, w, "jpeg")
            t5 = time.perf_counter()
            for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                t[k] += dt
            if not (np.array_equal(mask_j, mask) and not rgb_j[~mask].any()):
                raise SystemExit("jpeg crop: the mask is not exact or the outside is not black")
            errors.append(np.abs(rgb_j[mask].astype(np.int16) - rgb_r[mask]).ravel())
            mask_len = int(np.frombuffer(jpeg[:4].tobytes(), "<u4")[0])
            tot["crops"] += 1
            tot["pixels"] += h * w
            tot["raw"] += raw.size
            tot["jpeg"] += jpeg.size
            tot["jpeg_mask"] += 4 + mask_len
    err = np.concatenate(errors) if errors else np.zeros(1)
    px, n = max(tot["pixels"], 1), max(tot["crops"], 1)
    return {
        "images": len(samples), "crops": tot["crops"], "pixels_per_crop": round(px / n),
        "bytes_per_pixel": {"raw": round(tot["raw"] / px, 4), "jpeg": round(tot["jpeg"] / px, 4),
                            "jpeg_mask_part": round(tot["jpeg_mask"] / px, 4)},
        "ratio_raw_to_jpeg": round(tot["raw"] / max(tot["jpeg"], 1), 2),
        "jpeg_bytes_per_crop": round(tot["jpeg"] / n),
        "error_inside_mask": {"mean": round(float(err.mean()), 3), "p99": float(np.percentile(err, 99)),
                              "max": int(err.max())},
        "ms_per_crop": {k: round(v * 1000 / n, 4) for k, v in t.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, nargs="+", required=True, help="real colour photographs")
    ap.add_argument("--labels", type=Path, default=Path("/tmp/h9_scale/data/ade20k-real"),
                    help="a dataset whose label maps give the segments (benchmarks/scale.py's ADE20K-like set)")
    ap.add_argument("--dataset", default="ade20k")
    ap.add_argument("--label-maps", type=int, default=40, help="label maps used (train split, in id order)")
    ap.add_argument("--crop-max-side", type=int, default=256)
    args = ap.parse_args()
    use(threads=1)
    photos = []
    for p in args.photos:
        im = read_rgb(p)
        if (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all():
            print(f"skipping {p}: grey", file=sys.stderr)
            continue
        photos.append(im)
        print(f"{p.name}: {im.shape[1]}x{im.shape[0]}", file=sys.stderr)
    reader = make_reader(args.dataset, args.labels)
    samples = [reader.load(r) for r in list_split(reader, "train")[:args.label_maps]]
    load = os.getloadavg()[0]
    out = {"bench": "crops", "photos": [p.name for p in args.photos], "label_maps": len(samples),
           "crop_max_side": args.crop_max_side, "load_avg_before": round(load, 2),
           "real": measure(photos, samples, reader, args.crop_max_side),
           "synthetic": measure([], samples, reader, args.crop_max_side)}
    out["load_avg_after"] = round(os.getloadavg()[0], 2)
    for k in ("real", "synthetic"):
        r = out[k]
        print(f"{k}: {r['crops']} crops ({r['pixels_per_crop']} px each on average): bytes per pixel raw "
              f"{r['bytes_per_pixel']['raw']}, jpeg {r['bytes_per_pixel']['jpeg']} (mask "
              f"{r['bytes_per_pixel']['jpeg_mask_part']}), ratio {r['ratio_raw_to_jpeg']}x; error inside the mask "
              f"{r['error_inside_mask']}; ms per crop {r['ms_per_crop']}", file=sys.stderr)
    emit(out)


if __name__ == "__main__":
    main()

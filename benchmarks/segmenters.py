"""CPU time of the classic evaluation segmenters, under their authors' protocols, with random weights.

Seconds per 100 images at each dataset's realistic size: DRN-D-105 on a Cityscapes frame
(2048×1024, single scale), UperNet-R101 on an ADE20K image (683×512) with the five test scales and
with one pass at the image size, DeepLab-v2-R101 with MSC on a COCO image (640×480). The time is
that of `Segmenter.predict` (preprocessing, every forward pass, upsampling and argmax), measured on
a few images and scaled to 100; weights are random (the cost does not depend on their values;
denormals are flushed so that decaying random activations cannot slow the arithmetic).

    python benchmarks/segmenters.py [--images 1] [--threads 2] [--only drn-d-105 ...] [--size WxH]

`--size` times the selected segmenters at another image size instead (the fully convolutional
single-scale cases cost in proportion to the pixel count; UperNet's five scales do not depend on it).

The last line of the output is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from resail.benchmarks._common import emit
from resail.synth.segmenters.deeplab import MSC, DeepLabSegmenter, DeepLabV2
from resail.synth.segmenters.drn import DRNSeg, DRNSegmenter
from resail.synth.segmenters.upernet import UperNet, UperNetSegmenter
from resail.threads import use

CPU = torch.device("cpu")
CASES = {  # name: (build the segmenter, (height, width))
    "drn-d-105": (lambda: DRNSegmenter(DRNSeg(), CPU, {}), (1024, 2048)),
    "upernet-r101": (lambda: UperNetSegmenter(UperNet(), CPU, {}, "multi"), (512, 683)),
    "upernet-r101-single": (lambda: UperNetSegmenter(UperNet(), CPU, {}, "single"), (512, 683)),
    "deeplabv2-r101": (lambda: DeepLabSegmenter(MSC(DeepLabV2()), CPU, {}), (480, 640)),
}


def bench(name: str, images: int, size: tuple[int, int] | None = None) -> dict:
    build, (h, w) = CASES[name]
    h, w = size or (h, w)
    segmenter = build()
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(images):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        start = time.perf_counter()
        segmenter.predict(rgb)
        seconds.append(time.perf_counter() - start)
    return {"segmenter": name, "size": f"{w}x{h}", "images": images, "s_per_image": round(float(np.mean(seconds)), 2),
            "s_per_100": round(100 * float(np.mean(seconds)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1, help="Images timed per segmenter.")
    ap.add_argument("--threads", type=int, default=2, help="CPUs for the thread policy (resail/threads.py).")
    ap.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--size", default=None, help="WxH: time every selected segmenter at this image size.")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))[::-1] if args.size else None
    use(threads=args.threads)
    torch.set_flush_denormal(True)
    results = []
    for name in args.only:
        results.append(bench(name, args.images, size))
        print(json.dumps(results[-1]), flush=True)
    emit({"bench": "segmenters", "device": "cpu", "threads": args.threads, "images": args.images,
                      "s_per_100": {f"{r['segmenter']}@{r['size']}": r["s_per_100"] for r in results}})


if __name__ == "__main__":
    main()

"""The classic evaluation segmenters of semantic image synthesis, loaded from their authors' files.

Published mIoU for Cityscapes, ADE20K and COCO-Stuff comes from three networks, each evaluated the
way its authors' code evaluates it; numbers are comparable only under the same protocol:

- `drn-d-105`: Cityscapes trainIds 0..18, from fyu/drn's `drn-d-105_ms_cityscapes.pth`;
- `upernet-r101`: ADE20K ids 1..150 (0 = other), from CSAILVision's `encoder_epoch_50.pth` and
  `decoder_epoch_50.pth` (ade20k-resnet101-upernet);
- `deeplabv2-r101`: COCO-Stuff ids 0..181, from kazuto1011/deeplab-pytorch's
  `deeplabv2_resnet101_msc-cocostuff164k-100000.pth`.

The networks are written here (`drn.py`, `upernet.py`, `deeplab.py`) with the authors' parameter
names and shapes, so the published state dicts load by exact key (`base.py`); each module's
docstring states the inference protocol it reproduces. `torchscript:PATH` takes any other model
under the contract in `torchscript.py`.

    seg = load_segmenter("upernet-r101", [encoder, decoder], device="auto")
    ids = seg.predict(rgb)          # H×W×3 uint8 RGB → H×W uint8 ids in the dataset's id space
    seg.protocol                    # name, scales, normalisation, resize, weight files' sha256 …

On a CPU each image costs seconds to minutes (`benchmarks/segmenters.py`; BENCHMARKS.md, Classic
segmenters), so segmenting a validation set is a GPU job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ...artifacts import write_png_atomic
from ...choices import SEGMENTERS
from ...common import sha256_file
from ...errors import ConfigError, InputError
from ..distributed import resolve_device
from .base import Segmenter
from .deeplab import load_deeplab
from .drn import load_drn
from .torchscript import load_torchscript
from .upernet import load_upernet

log = logging.getLogger(__name__)

TORCHSCRIPT = "torchscript:"

__all__ = ["Segmenter", "load_segmenter", "segment_images"]


def load_segmenter(name: str, weights: Sequence[str | Path] = (), device: str | torch.device = "cpu", *,
                   upernet_scales: str = "multi") -> Segmenter:
    """The segmenter `name` (one of SEGMENTERS, or `torchscript:PATH`) with the authors' weight files,
    in eval mode on `device` (a torch.device, or auto/cpu/cuda/cuda:N)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    files = [Path(w) for w in weights]
    if name.startswith(TORCHSCRIPT):
        if files:
            raise ConfigError("weights", f"{name}: a TorchScript segmenter carries its own weights; give no weight "
                                         "files")
        path = Path(name[len(TORCHSCRIPT):])
        segmenter = load_torchscript(path, device)
        files = [path]
    elif name == "upernet-r101":
        segmenter = load_upernet(files, device, upernet_scales)
    elif name in SEGMENTERS:
        if len(files) != 1:
            raise ConfigError("weights", f"{name} takes one weight file; got {len(files)}")
        segmenter = (load_drn if name == "drn-d-105" else load_deeplab)(files, device)
    else:
        raise ConfigError("segmenter", f"unknown segmenter {name!r}; use one of {', '.join(SEGMENTERS)} or "
                                       "torchscript:PATH")
    segmenter.protocol["weights"] = [{"file": f.name, "sha256": sha256_file(f)} for f in files]
    return segmenter


def segment_images(segmenter: Segmenter, images: Iterable[Path], out: Path, *, progress: bool = True) -> list[Path]:
    """Write `out/<image stem>.png`, the segmenter's single-channel id map of each image at its size."""
    from tqdm import tqdm

    images = list(images)
    stems = [p.stem for p in images]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise InputError(f"several images share the stem {clashes[0]!r}; their outputs would overwrite each other "
                         f"in {out}: segment them into separate output folders")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(images, desc=f"segment ({segmenter.name})", unit="img", disable=not progress):
        ids = segmenter.predict(segmenter.read_image(path))
        written.append(write_png_atomic(out / f"{path.stem}.png", ids))
    log.info("%s: %d label maps in %s", segmenter.name, len(written), out)
    return written

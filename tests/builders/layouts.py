"""The same toy scenes in the other layouts users hold the paper's datasets in.

- `spade_coco`: COCO-Stuff as SPADE's README has users prepare it ({split}_img, {split}_label,
  {split}_inst), the instance maps painted by the convention of SPADE's
  `datasets/coco_generate_instance_map.py` (the stuffthingmap, then each non-crowd polygon
  annotation filled with a counter 0, 1, … in JSON order; crowd RLE neither painted nor counted).
  The fills here are pycocotools' masks, so both layouts hold the same instance pixels.
- `ade_outdoor_folder`: ADE20K-outdoor as a folder in the ADE20K layout holding only the subset.
- `ade_as_folder`: an ADE20K toy dataset in the custom `folder` format (classes.csv, instance ids).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_api

from resail.pipeline.labels.classes import class_table

SPLIT_DIRS = {"train": "training", "val": "validation"}


def spade_instance_map(stuffthing: np.ndarray, annotations: list[dict]) -> np.ndarray:
    """A SPADE-style instance map of one image (uint8), from its stuffthingmap and annotations."""
    h, w = stuffthing.shape
    out = stuffthing.copy()
    count = 0
    for a in annotations:
        if isinstance(a["segmentation"], list):
            rle = mask_api.merge(mask_api.frPyObjects(a["segmentation"], h, w))
            out[mask_api.decode(rle).astype(bool)] = count % 256
            count += 1
    return out


def spade_coco(coco_root: Path, out: Path) -> Path:
    """SPADE's prepared COCO-Stuff folders made from a COCO-Stuff dataset in the official layout."""
    coco_root, out = Path(coco_root), Path(out)
    for split in ("train", "val"):
        doc = json.loads((coco_root / "annotations" / f"instances_{split}2017.json").read_text())
        anns: dict[int, list] = {}
        for a in doc["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        maps = coco_root / "stuffthingmaps_trainval2017" / f"{split}2017"
        for d in ("img", "label", "inst"):
            (out / f"{split}_{d}").mkdir(parents=True, exist_ok=True)
        for img in doc["images"]:
            stem = Path(img["file_name"]).stem
            shutil.copy2(coco_root / f"{split}2017" / img["file_name"], out / f"{split}_img" / img["file_name"])
            shutil.copy2(maps / f"{stem}.png", out / f"{split}_label" / f"{stem}.png")
            label = np.asarray(Image.open(maps / f"{stem}.png"))
            Image.fromarray(spade_instance_map(label, anns.get(img["id"], []))).save(out / f"{split}_inst" / f"{stem}.png")
    return out


def ade_outdoor_folder(ade_root: Path, out: Path, stems: set[str]) -> Path:
    """A folder in the ADE20K layout holding only the images `stems` (as the CLADE authors ship theirs)."""
    ade_root, out = Path(ade_root), Path(out)
    for top, ext in (("images", ".jpg"), ("annotations", ".png"), ("annotations_instance", ".png")):
        for sub in SPLIT_DIRS.values():
            src = ade_root / top / sub
            if not src.is_dir():
                continue
            (out / top / sub).mkdir(parents=True, exist_ok=True)
            for p in src.glob(f"*{ext}"):
                if p.stem in stems:
                    shutil.copy2(p, out / top / sub / p.name)
    return out


def ade_as_folder(ade_root: Path, out: Path) -> Path:
    """An ADE20K-layout dataset in the `folder` format: the ADE class table as classes.csv, its
    photos and label maps, and the instance PNGs' G channel as 16-bit instance ids."""
    ade_root, out = Path(ade_root), Path(out)
    table = class_table("ade20k")
    rows = [f"{c},{n.replace(',', ' ')},{int(t)}" for c, n, t in zip(table.ids, table.names, table.is_thing)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.csv").write_text("id,name,is_thing\n" + "\n".join(rows) + "\n")
    for split, sub in SPLIT_DIRS.items():
        for top in ("images", "labels", "instances"):
            (out / top / split).mkdir(parents=True, exist_ok=True)
        for p in sorted((ade_root / "images" / sub).glob("*.jpg")):
            shutil.copy2(p, out / "images" / split / p.name)
            shutil.copy2(ade_root / "annotations" / sub / f"{p.stem}.png", out / "labels" / split / f"{p.stem}.png")
            inst = np.asarray(Image.open(ade_root / "annotations_instance" / sub / f"{p.stem}.png"))[..., 1]
            Image.fromarray(inst.astype(np.uint16)).save(out / "instances" / split / f"{p.stem}.png")
    return out

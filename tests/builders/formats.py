"""Tiny datasets in the official on-disk formats, drawn by hand for the readers and stage 1.

Unlike the procedural toy generator (`resail data toy`), each writer here fabricates a few small
images with known quirks (an instance-less thing, void pixels, a crowd RLE, 16-bit instance ids)
so that a test can name exactly what the reader must return (each official format: docs/decomposition.md, "Dataset layouts").
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

ADE_THING = 13   # person (Instance100 id 4)
ADE_THING_CAT = 4
ADE_STUFF = (1, 3, 4)  # wall, sky, floor


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)).save(path)


def _jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)


def ade_scene(rng: np.random.Generator, h: int = 40, w: int = 48):
    """(rgb, label, instance RGB) with sky/wall stuff, two persons (instances), a person blob
    without an instance, a little void, and a wall fragment (8-connected to nothing)."""
    label = np.full((h, w), 1, np.uint8)
    label[: h // 3] = 3
    label[h - 6:] = 4
    label[0, 0] = 0
    inst = np.zeros((h, w, 3), np.uint8)
    for k, (y, x) in enumerate([(h // 3 + 2, 4), (h // 3 + 4, w // 2)], start=1):
        label[y:y + 8, x:x + 6] = ADE_THING
        inst[y:y + 8, x:x + 6, 0] = ADE_THING_CAT
        inst[y:y + 8, x:x + 6, 1] = k
    label[2:5, w - 6:w - 3] = ADE_THING  # a person blob without an instance (in the sky)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return rgb, label, inst


def write_ade(root: Path, n_train: int = 3, n_val: int = 2, instances: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for split, sub, n in (("train", "training", n_train), ("val", "validation", n_val)):
        for i in range(1, n + 1):
            stem = f"ADE_{split}_{i:08d}"
            rgb, label, inst = ade_scene(rng)
            _jpg(base / "images" / sub / f"{stem}.jpg", rgb)
            _png(base / "annotations" / sub / f"{stem}.png", label, "L")
            if instances:
                _png(base / "annotations_instance" / sub / f"{stem}.png", inst, "RGB")
    info = resources.files("resail").joinpath("data", "ade20k_objectInfo150.txt").read_bytes()
    (base / "objectInfo150.txt").write_bytes(info)
    (base / "sceneCategories.txt").write_text("ADE_train_00000001 street\n")
    return base


def write_cityscapes(root: Path, n: int = 2, city: str = "aachen", split: str = "train", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h, w = 32, 64
    for i in range(n):
        stem = f"{city}_{i:06d}_000019"
        label = np.full((h, w), 7, np.uint8)        # road
        label[:10] = 23                             # sky
        label[0, :4] = 0                            # unlabeled
        inst = label.astype(np.uint16)
        label[12:20, 4:14] = 26                     # car instance 26000
        inst[12:20, 4:14] = 26000
        label[12:20, 20:30] = 26                    # car instance 26001
        inst[12:20, 20:30] = 26001
        label[22:26, 40:50] = 26                    # a car group: plain id 26
        inst[22:26, 40:50] = 26
        label[14:18, 50:54] = 24                    # a person
        inst[14:18, 50:54] = 24000
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        d = root / "leftImg8bit" / split / city
        g = root / "gtFine" / split / city
        _png(d / f"{stem}_leftImg8bit.png", rgb)
        _png(g / f"{stem}_gtFine_labelIds.png", label, "L")
        g.mkdir(parents=True, exist_ok=True)
        Image.fromarray(inst).save(g / f"{stem}_gtFine_instanceIds.png")  # 16-bit grey
        Image.fromarray(np.zeros((h, w, 4), np.uint8), "RGBA").save(g / f"{stem}_gtFine_color.png")
    return root


def rle_encode_compressed(mask: np.ndarray) -> dict:
    """A COCO compressed RLE string for a mask (the test's own encoder, column-major runs)."""
    flat = mask.T.ravel().astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10) == 0 and x == 0) and not ((c & 0x10) and x == -1)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return {"size": list(mask.shape), "counts": "".join(out)}


def write_coco(root: Path, split: str = "train", layout: str = "stuffthingmaps_trainval2017", seed: int = 0) -> Path:
    """Two images: a person polygon, a crowd RLE of people, stuff around, and void (255)."""
    rng = np.random.default_rng(seed)
    h, w = 30, 40
    images, anns = [], []
    img_dir = root / f"{split}2017"
    map_dir = img_dir if layout == "next" else root / layout / f"{split}2017"
    for k, stem in enumerate(["000000000009", "000000000025"]):
        label = np.full((h, w), 124, np.uint8)       # stuff: 125 (grass) - 1
        label[:8] = 156                              # sky-other (157) - 1
        label[-2:, -2:] = 255
        label[10:20, 5:15] = 0                       # person (category 1)
        crowd = np.zeros((h, w), bool)
        crowd[22:27, 20:35] = True
        label[crowd] = 0
        _jpg(img_dir / f"{stem}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        _png(map_dir / f"{stem}.png", label, "L")
        images.append({"id": k + 1, "file_name": f"{stem}.jpg", "width": w, "height": h})
        anns.append({"id": 10 * k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": [[5, 10, 15, 10, 15, 20, 5, 20]], "area": 100, "bbox": [5, 10, 10, 10]})
        anns.append({"id": 10 * k + 2, "image_id": k + 1, "category_id": 1, "iscrowd": 1,
                     "segmentation": rle_encode_compressed(crowd), "area": int(crowd.sum()), "bbox": [20, 22, 15, 5]})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    person = {"id": 1, "name": "person", "supercategory": "person"}
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [person]}))
    return root


def write_folder(root: Path, n: int = 2, split: str = "train", instances: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h, w = 24, 30
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text("id,name,is_thing\n1,ground,0\n2,tree,1\n5,rock,0\n")
    for i in range(n):
        stem = f"img{i:03d}"
        label = np.ones((h, w), np.uint8)
        label[:5] = 5
        label[10:15, 3:8] = 2
        label[10:15, 20:25] = 2
        label[0, 0] = 0
        inst = np.zeros((h, w), np.uint16)
        inst[10:15, 3:8] = 300  # 16-bit instance id
        _png(root / "images" / split / f"{stem}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        _png(root / "labels" / split / f"{stem}.png", label, "L")
        if instances:
            (root / "instances" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(inst).save(root / "instances" / split / f"{stem}.png")
    return root

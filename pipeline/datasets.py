"""Dataset readers: list the images of a split, then load one image with its label map and instances.

Every reader turns a dataset's official on-disk format into one shape (`Sample`):
- `image`: H×W×3 uint8 RGB;
- `label_map`: H×W int32 of native class ids, void = 0 (COCO-Stuff PNG 255 → 0, value v → v+1);
- `instance_map`: H×W int32 of compact instance ids 1..K (0 = no instance), or None when the
  dataset has no instance annotations;
- `instance_classes`: int32 array of length K+1; entry k is instance k's native class, or
  `MAJORITY` (-1) when the class is the majority label under its mask (COCO-Stuff, folder).

Listing (`records(split)`) is cheap and runs in the main process; `load(record)` reads the files
and runs in the workers, so readers are small picklable objects. Every problem with the data
raises `InputError` naming the file and the fix. Layouts and choices: docs/decomposition.md.

Nothing is dropped silently: a label map without its photo is listed like any image (with no
image path) and fails to load with a message naming it, so stage 1 stops or, with `--on-error
skip`, counts it as skipped; `--image-list` names that match no image are reported
(`unmatched_list_names`). Photos decode to 8-bit RGB whatever their mode (`photo_rgb`: 16-bit
grey is scaled, not clipped to white; palette images go through their palette), and any image
above `MAX_PIXELS` is refused before it is decoded (a decompression bomb costs nothing).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import re
import warnings
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError
from .classes import DATASETS, ClassTable, ade20k_instance_mapping, class_table

log = logging.getLogger("resail")

MAJORITY = -1
SPLITS = ("train", "val")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MAX_PIXELS = 2**27  # 134 Mpx (e.g. 16384×8192): far above any dataset's photos, far below a bomb's


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split, as listed; `annotations` carries the image's COCO instance annotations
    as the JSON text of their list (`coco_annotations` parses it in the worker that loads it)."""

    image_id: str
    split: str
    image_path: str
    label_path: str
    instance_path: str = ""
    annotations: bytes = b""


@dataclass
class Sample:
    image_id: str
    image: np.ndarray                        # H×W×3 uint8
    label_map: np.ndarray                    # H×W int32, void 0
    instance_map: np.ndarray | None          # H×W int32, 0 = none, else 1..K
    instance_classes: np.ndarray | None      # (K+1,) int32, native class or MAJORITY
    record: ImageRecord = field(repr=False, default=None)


# ---------------------------------------------------------------- file decoding


def photo_rgb(im: Image.Image) -> np.ndarray:
    """H×W×3 uint8 RGB of a decoded photo of any mode. 16-bit grey ("I;16…", or "I" holding
    0..65535) is scaled to 8 bits (v/257, rounded): Pillow's `convert("RGB")` would clip it to
    white. Palette, grey, CMYK and alpha modes go through Pillow's conversion."""
    if im.mode.startswith("I"):
        grey = np.round(np.clip(np.asarray(im, np.float64), 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, np.float64), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _check_pixels(im: Image.Image, path: str | Path) -> None:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise InputError(f"{path}: {w}x{h} pixels is above the {MAX_PIXELS:,}-pixel limit (a decompression bomb, "
                         "or a photo far larger than training needs); downscale or remove it")


def _read_error(path: str | Path, e: Exception, what: str) -> InputError:
    if isinstance(e, Image.DecompressionBombError):
        return InputError(f"{path}: too many pixels ({e}); downscale or remove it")
    if isinstance(e, OSError) and e.errno is not None:  # a link loop, a folder, no permission
        return InputError(f"{path}: cannot read ({e.strerror}); fix or remove it")
    return InputError(f"{path}: corrupt or truncated {what} ({e}); re-download or remove it")


@contextlib.contextmanager
def _decoded(path: str | Path) -> Iterator[Image.Image]:
    """The decoded image at `path`, after checking its header's size against `MAX_PIXELS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # `_check_pixels` decides
        with Image.open(path) as im:
            _check_pixels(im, path)
            im.load()
            yield im


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB (`photo_rgb`); missing, huge, truncated or corrupt files raise InputError."""
    try:
        with _decoded(path) as im:
            return photo_rgb(im)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: image file is missing; restore it or remove it from the dataset") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _read_error(path, e, "image") from None


def read_index_png(path: str | Path, channels: int = 1) -> np.ndarray:
    """A label/instance PNG as int32: H×W for 8/16-bit grey or palette files, H×W×3 when channels=3."""
    try:
        with _decoded(path) as im:
            if channels == 3:
                if im.mode != "RGB":
                    raise InputError(f"{path}: expected an RGB instance PNG, found mode {im.mode}; "
                                     "use the official annotations_instance files")
                return np.asarray(im).astype(np.int32)
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise InputError(f"{path}: expected a single-channel (grey or palette) PNG of class ids, "
                                 f"found mode {im.mode}; convert it to class ids, not colours")
            # 16-bit PNGs open as "I" or "I;16" depending on Pillow: read values, never colours.
            return np.asarray(im).astype(np.int32)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file is missing; restore it or remove its image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _read_error(path, e, "PNG") from None


def _check_same_size(image: np.ndarray, other: np.ndarray, image_path: str, other_path: str) -> None:
    if image.shape[:2] != other.shape[:2]:
        raise InputError(f"{other_path}: size {other.shape[1]}x{other.shape[0]} does not match image "
                         f"{image_path} ({image.shape[1]}x{image.shape[0]}); fix or remove the pair")


def check_label_ids(label_map: np.ndarray, table: ClassTable, path: str, allowed_extra: tuple = ()) -> None:
    present = np.flatnonzero(np.bincount(label_map.ravel()))
    valid = set(table.ids) | {0} | set(allowed_extra)
    bad = [int(v) for v in present if int(v) not in valid]
    if bad:
        raise InputError(f"{path}: label ids {bad[:8]} are not in the {table.dataset} class table; "
                         "check --dataset or fix the label map")


def compact_instances(raw: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber raw instance values (where `keep`) to 1..K in ascending raw order; returns (map, raw values)."""
    values = np.unique(raw[keep])
    inst = np.zeros(raw.shape, np.int32)
    if values.size:
        inst[keep] = np.searchsorted(values, raw[keep]).astype(np.int32) + 1
    return inst, values


# ---------------------------------------------------------------- readers


class Reader:
    """Base class: `records(split)` lists a split; `load(record)` reads one image."""

    dataset: str = ""
    # What happens to thing-class pixels that no instance covers, in the official code:
    # "drop", "drop_if_instanced" (COCO: dropped only when the class has an instance in the image)
    # or "components". `--uncovered-things components` overrides it.
    uncovered_official: str = "components"
    has_instances: bool = False

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: dataset root folder is missing; pass the folder with --root")

    @property
    def table(self) -> ClassTable:
        return class_table(self.dataset)

    def records(self, split: str) -> list[ImageRecord]:
        raise NotImplementedError

    def extra_inputs(self, split: str) -> list[Path]:
        """Files besides each image's own that the split's output depends on."""
        return []

    def unmatched_list_names(self) -> list[str]:
        """Names of the reader's image list that match no image of the dataset (none without a list)."""
        return []

    def load(self, record: ImageRecord) -> Sample:
        raise NotImplementedError

    def _image_and_label(self, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        """The photo and its native-id label map, checked for size and class ids."""
        image = read_photo(record)
        label = read_index_png(record.label_path)
        _check_same_size(image, label, record.image_path, record.label_path)
        check_label_ids(label, self.table, record.label_path)
        return image, label

    def _need_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise InputError(f"{path}: {what} folder is missing; check --root and the dataset layout "
                             "(docs/decomposition.md)")
        return path


def _files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and not p.name.startswith("."))


def read_photo(record: ImageRecord) -> np.ndarray:
    """The record's photo (`read_rgb`); a label listed without one (`image_path` empty) is an error naming it."""
    if not record.image_path:
        raise InputError(f"{record.label_path}: label map without a photo (no image {record.image_id!r} in the "
                         "split's image folder); add the photo or remove the label")
    return read_rgb(record.image_path)


def orphan_labels(labels: list[Path], suffix: str, images: list[ImageRecord]) -> dict[str, Path]:
    """Label files (named stem + `suffix`) whose stem no listed image has: stem → path."""
    have = {r.image_id for r in images}
    found = {p.name[: -len(suffix)]: p for p in labels if p.name.endswith(suffix)}
    return {stem: p for stem, p in found.items() if stem not in have}


class ADE20KReader(Reader):
    """ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/…/*.png (mode L, 0..150),
    optional annotations_instance/…/*.png (RGB: R = Instance100 category, G = instance id)."""

    dataset = "ade20k"
    uncovered_official = "drop"
    FOLDERS = {"train": "training", "val": "validation"}

    def __init__(self, root: str | Path, image_list: str | Path | None = None):
        super().__init__(root)
        if (self.root / "ADEChallengeData2016").is_dir():
            self.root = self.root / "ADEChallengeData2016"
        self.image_list = None
        if image_list is not None:
            self.image_list = read_image_list(image_list)
        self.has_instances = (self.root / "annotations_instance").is_dir()
        if not self.has_instances:
            log.warning("%s has no annotations_instance/ folder: thing classes fall back to 8-connected "
                        "components (add the Places Challenge 2017 instance PNGs for instance masks)", self.root)

    def records(self, split: str) -> list[ImageRecord]:
        sub = self.FOLDERS[split]
        images = self._need_dir(self.root / "images" / sub, "ADE20K images")
        labels = self._need_dir(self.root / "annotations" / sub, "ADE20K annotations")
        inst_dir = self.root / "annotations_instance" / sub
        out = []
        for p in _files(images, IMAGE_EXTS):
            if self.image_list is not None and p.stem not in self.image_list:
                continue
            inst = str(inst_dir / f"{p.stem}.png") if self.has_instances else ""
            out.append(ImageRecord(p.stem, split, str(p), str(labels / f"{p.stem}.png"), inst))
        for stem, p in orphan_labels(_files(labels, (".png",)), ".png", out).items():
            if self.image_list is None or stem in self.image_list:
                inst = str(inst_dir / f"{stem}.png") if self.has_instances else ""
                out.append(ImageRecord(stem, split, "", str(p), inst))
        return out

    def unmatched_list_names(self) -> list[str]:
        if self.image_list is None:
            return []
        stems = set()
        for sub in self.FOLDERS.values():
            if (self.root / "images" / sub).is_dir():
                stems |= {p.stem for p in _files(self.root / "images" / sub, IMAGE_EXTS)}
        return sorted(self.image_list - stems)

    def load(self, record: ImageRecord) -> Sample:
        image, label = self._image_and_label(record)
        if not record.instance_path:
            return Sample(record.image_id, image, label, None, None, record)
        raw = read_index_png(record.instance_path, channels=3)
        _check_same_size(image, raw, record.image_path, record.instance_path)
        inst, values = compact_instances(raw[..., 1], raw[..., 1] > 0)
        # An instance's category is R at its first pixel (raster order), mapped to the 150 classes.
        ids, first = np.unique(inst.ravel(), return_index=True)
        cats = raw[..., 0].ravel()[first[ids > 0]]
        mapping = ade20k_instance_mapping()
        classes = np.zeros(values.size + 1, np.int32)
        for k, cat in enumerate(cats, start=1):
            if int(cat) not in mapping:
                raise InputError(f"{record.instance_path}: instance {int(values[k - 1])} has category "
                                 f"R={int(cat)}, not an Instance100 id of categoryMapping.txt; fix the file")
            classes[k] = mapping[int(cat)]
        return Sample(record.image_id, image, label, inst, classes, record)


def read_image_list(path: str | Path) -> frozenset[str]:
    """Basenames (with or without extension), one a line; blank lines and # comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: --image-list file is missing; pass a text file of image basenames")
    names = set()
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(Path(line).stem if Path(line).suffix.lower() in IMAGE_EXTS + (".png",) else line)
    if not names:
        raise InputError(f"{p}: --image-list is empty; list one image basename per line")
    return frozenset(names)


class ADE20KOutdoorReader(ADE20KReader):
    """ADE20K restricted to the basenames of `--image-list` (no official list exists)."""

    dataset = "ade20k-outdoor"

    def __init__(self, root: str | Path, image_list: str | Path | None = None):
        if image_list is None:
            raise InputError("ade20k-outdoor needs --image-list FILE (image basenames, one a line); "
                             "no official ADE20K-outdoor list exists")
        super().__init__(root, image_list)


class CityscapesReader(Reader):
    """leftImg8bit/{split}/{city}/*_leftImg8bit.png with gtFine/{split}/{city}/*_gtFine_{labelIds,instanceIds}.png."""

    dataset = "cityscapes"
    uncovered_official = "components"  # group pixels ("car group") become components
    has_instances = True

    def records(self, split: str) -> list[ImageRecord]:
        images = self._need_dir(self.root / "leftImg8bit" / split, "Cityscapes leftImg8bit")
        gt = self._need_dir(self.root / "gtFine" / split, "Cityscapes gtFine")
        out = []
        for p in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = p.name[: -len("_leftImg8bit.png")]
            city = p.parent.name
            out.append(ImageRecord(stem, split, str(p), str(gt / city / f"{stem}_gtFine_labelIds.png"),
                                   str(gt / city / f"{stem}_gtFine_instanceIds.png")))
        labels = sorted(gt.glob("*/*_gtFine_labelIds.png"))
        for stem, p in orphan_labels(labels, "_gtFine_labelIds.png", out).items():
            out.append(ImageRecord(stem, split, "", str(p), str(p.parent / f"{stem}_gtFine_instanceIds.png")))
        return out

    def load(self, record: ImageRecord) -> Sample:
        image, label = self._image_and_label(record)
        raw = read_index_png(record.instance_path)
        _check_same_size(image, raw, record.image_path, record.instance_path)
        # value >= 1000: instance k of class value // 1000; below: a plain class id (stuff, groups).
        inst, values = compact_instances(raw, raw >= 1000)
        classes = np.concatenate([[0], values // 1000]).astype(np.int32)
        bad = [int(c) for c in classes[1:] if int(c) not in self.table]
        if bad:
            raise InputError(f"{record.instance_path}: instance classes {bad[:8]} are not Cityscapes label ids; "
                             "fix the instanceIds file")
        return Sample(record.image_id, image, label, inst, classes, record)


class CocoStuffReader(Reader):
    """COCO 2017 images, stuffthingmaps PNGs (v → class v+1, 255 → void) and instances_{split}2017.json."""

    dataset = "cocostuff"
    uncovered_official = "drop_if_instanced"
    MAP_DIRS = ("stuffthingmaps_trainval2017/{s}2017", "stuffthingmaps/{s}2017", "{s}2017")

    def _map_dir(self, split: str) -> Path:
        for pattern in self.MAP_DIRS:
            d = self.root / pattern.format(s=split)
            if d.is_dir() and any(d.glob("*.png")):
                return d
        tried = ", ".join(str(self.root / p.format(s=split)) for p in self.MAP_DIRS)
        raise InputError(f"COCO-Stuff stuffthingmaps for {split}2017 not found (tried {tried}); "
                         "unzip stuffthingmaps_trainval2017.zip under --root")

    def records(self, split: str) -> list[ImageRecord]:
        images = self._need_dir(self.root / f"{split}2017", "COCO images")
        maps = self._map_dir(split)
        by_stem = self._annotations(split)
        self.has_instances = by_stem is not None
        by_stem = by_stem or {}
        out = [ImageRecord(p.stem, split, str(p), str(maps / f"{p.stem}.png"), "", by_stem.get(p.stem, b""))
               for p in _files(images, (".jpg", ".jpeg"))]
        for stem, p in orphan_labels(_files(maps, (".png",)), ".png", out).items():
            out.append(ImageRecord(stem, split, "", str(p), "", by_stem.get(stem, b"")))
        return out

    def extra_inputs(self, split: str) -> list[Path]:
        path = self.root / "annotations" / f"instances_{split}2017.json"
        return [path] if path.is_file() else []

    def _annotations(self, split: str) -> dict[str, bytes] | None:
        path = self.root / "annotations" / f"instances_{split}2017.json"
        if not path.is_file():
            log.warning("%s is missing: COCO-Stuff things fall back to connected components "
                        "(unzip annotations_trainval2017.zip under --root for instance masks)", path)
            return None
        try:
            return coco_annotation_texts(path.read_text())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: unreadable COCO instances JSON ({e}); re-download it") from None

    def load(self, record: ImageRecord) -> Sample:
        image = read_photo(record)
        raw = read_index_png(record.label_path)
        _check_same_size(image, raw, record.image_path, record.label_path)
        bad = np.flatnonzero(np.bincount(raw.ravel(), minlength=256)[182:255])
        if bad.size or raw.max() > 255:
            raise InputError(f"{record.label_path}: stuffthingmap values outside 0..181 and 255; "
                             "check --dataset or fix the label map")
        label = np.where(raw == 255, 0, raw + 1).astype(np.int32)
        if not self.has_instances:
            return Sample(record.image_id, image, label, None, None, record)
        inst = coco_instance_map(coco_annotations(record.annotations), label.shape, record.label_path)
        k = int(inst.max())
        return Sample(record.image_id, image, label, inst, np.full(k + 1, MAJORITY, np.int32), record)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _after_space(text: str, pos: int) -> int:
    return _JSON_SPACE.match(text, pos).end()


def _expect(text: str, pos: int, chars: str) -> str:
    c = text[pos:pos + 1]
    if not c or c not in chars:
        raise ValueError(f"expected {' or '.join(map(repr, chars))} at character {pos}")
    return c


def coco_annotation_texts(text: str) -> dict[str, bytes]:
    """Each image's annotations in a COCO instances JSON, as the JSON text of their list (UTF-8,
    file order), keyed by the image's file stem.

    `json.loads` of the whole file would hold every annotation as Python objects, ~7× the file
    (~3 GB for COCO train2017), in the main process for the whole stage (docs/scale.md). This
    walks the top-level object instead, decodes the annotations one at a time only to read their
    image id, and keeps their text: the records weigh about the file's size, and each worker
    parses the few it loads (`coco_annotations`), to the same objects."""
    dec = json.JSONDecoder()
    stems, spans = None, None
    _expect(text, pos := _after_space(text, 0), "{")
    pos = _after_space(text, pos + 1)
    while text[pos:pos + 1] != "}":
        key, pos = dec.raw_decode(text, pos)
        _expect(text, pos := _after_space(text, pos), ":")
        pos = _after_space(text, pos + 1)
        if key == "annotations":
            spans, pos = _annotation_spans(text, pos, dec)
        else:
            value, pos = dec.raw_decode(text, pos)
            if key == "images":
                stems = {img["id"]: Path(img["file_name"]).stem for img in value}
        if _expect(text, pos := _after_space(text, pos), ",}") == ",":
            pos = _after_space(text, pos + 1)
    if stems is None or spans is None:
        raise KeyError("images" if stems is None else "annotations")
    ids, starts, ends = spans
    order = sorted(range(len(ids)), key=ids.__getitem__)  # stable: file order within an image
    by_stem: dict[str, bytes] = {}
    a = 0
    while a < len(order):
        b = a
        while b < len(order) and ids[order[b]] == ids[order[a]]:
            b += 1
        by_stem[stems[ids[order[a]]]] = f"[{','.join(text[starts[k]:ends[k]] for k in order[a:b])}]".encode()
        a = b
    return by_stem


def _annotation_spans(text: str, pos: int, dec: json.JSONDecoder) -> tuple[tuple[list, array, array], int]:
    """(image ids, start and end characters) of the annotations of the array at `pos`; and the
    position after it."""
    ids, starts, ends = [], array("q"), array("q")
    _expect(text, pos, "[")
    pos = _after_space(text, pos + 1)
    while text[pos:pos + 1] != "]":
        a, end = dec.raw_decode(text, pos)
        _instance_fields(a)  # what a worker reads: a bad entry fails now, while listing, naming the file
        ids.append(a["image_id"])
        starts.append(pos)
        ends.append(end)
        if _expect(text, pos := _after_space(text, end), ",]") == ",":
            pos = _after_space(text, pos + 1)
    return (ids, starts, ends), pos + 1


def _instance_fields(a: dict) -> dict:
    return {"segmentation": a["segmentation"], "iscrowd": int(a.get("iscrowd", 0))}


def coco_annotations(text: bytes) -> list[dict]:
    """An image's annotations (`coco_annotation_texts`) as `coco_instance_map` takes them."""
    return [_instance_fields(a) for a in (json.loads(text) if text else ())]


def coco_instance_map(annotations, shape: tuple[int, int], where: str) -> np.ndarray:
    """Paint non-crowd COCO annotations in JSON order (later ones overwrite) as instance ids 1..K.

    Crowd annotations are skipped, as in the official code; their pixels fall to the
    uncovered-thing rule. Non-crowd RLE segmentations are decoded and painted like polygons.
    """
    h, w = shape
    inst = np.zeros((h, w), np.int32)
    k = 0
    for a in annotations:
        if a["iscrowd"]:
            continue
        seg = a["segmentation"]
        if isinstance(seg, dict):
            mask = rle_decode(seg, where)
            if mask.shape != (h, w):
                raise InputError(f"{where}: an RLE instance has size {mask.shape}, the label map {(h, w)}; "
                                 "the JSON does not belong to this image")
        else:
            mask = polygons_to_mask(seg, h, w)
        if mask.any():
            k += 1
            inst[mask] = k
    return inst


def polygons_to_mask(polygons: list, h: int, w: int) -> np.ndarray:
    """Rasterise COCO polygons [x1,y1,x2,y2,…] with cv2.fillPoly (even-odd over the list).

    Vertices are rounded to whole pixels and the fill includes the boundary, so a mask is about
    half a pixel wider on each side than pycocotools' rasterisation (documented choice).
    """
    canvas = np.zeros((h, w), np.uint8)
    pts = [np.round(np.asarray(p, np.float64).reshape(-1, 2)).astype(np.int32) for p in polygons if len(p) >= 6]
    if pts:
        cv2.fillPoly(canvas, pts, 1, lineType=cv2.LINE_8)
    return canvas.astype(bool)


def rle_counts_from_string(s: str) -> list[int]:
    """Decode the compressed COCO RLE string: 5-bit groups, continuation bit 0x20, sign bit 0x10,
    and from the third count on a delta against the count two places back."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict, where: str = "RLE") -> np.ndarray:
    """COCO RLE ({'size': [h, w], 'counts': list or compressed str}) → h×w bool (column-major runs)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        runs = np.asarray(rle_counts_from_string(counts) if isinstance(counts, str) else counts, np.int64)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"{where}: malformed COCO RLE ({e}); fix the instances JSON") from None
    if (runs < 0).any() or runs.sum() != h * w:
        raise InputError(f"{where}: COCO RLE counts sum to {int(runs.sum())}, not {h}*{w}; fix the instances JSON")
    values = np.zeros(runs.size, bool)
    values[1::2] = True  # runs alternate, starting with zeros
    return np.repeat(values, runs).reshape(w, h).T


class FolderReader(Reader):
    """A custom dataset: images/{split}/*, labels/{split}/*.png (class ids, 0 = void), optional
    instances/{split}/*.png (instance ids, 0 = none; class = majority label) and classes.csv."""

    dataset = "folder"
    uncovered_official = "components"

    def __init__(self, root: str | Path):
        super().__init__(root)
        self._table = read_classes_csv(self.root / "classes.csv")
        self.has_instances = (self.root / "instances").is_dir()

    @property
    def table(self) -> ClassTable:
        return self._table

    def extra_inputs(self, split: str) -> list[Path]:
        return [self.root / "classes.csv"]

    def records(self, split: str) -> list[ImageRecord]:
        images = self._need_dir(self.root / "images" / split, "folder images")
        labels = self._need_dir(self.root / "labels" / split, "folder labels")
        inst = self.root / "instances" / split
        out = [ImageRecord(p.stem, split, str(p), str(labels / f"{p.stem}.png"),
                           str(inst / f"{p.stem}.png") if self.has_instances else "")
               for p in _files(images, IMAGE_EXTS)]
        for stem, p in orphan_labels(_files(labels, (".png",)), ".png", out).items():
            out.append(ImageRecord(stem, split, "", str(p), str(inst / f"{stem}.png") if self.has_instances else ""))
        return out

    def load(self, record: ImageRecord) -> Sample:
        image, label = self._image_and_label(record)
        if not record.instance_path:
            return Sample(record.image_id, image, label, None, None, record)
        raw = read_index_png(record.instance_path)
        _check_same_size(image, raw, record.image_path, record.instance_path)
        inst, values = compact_instances(raw, raw > 0)
        return Sample(record.image_id, image, label, inst, np.full(values.size + 1, MAJORITY, np.int32), record)


def read_classes_csv(path: Path) -> ClassTable:
    """`classes.csv` of a folder dataset: columns id,name,is_thing (1/0/true/false); id 0 is void."""
    if not path.is_file():
        raise InputError(f"{path}: classes.csv is missing; write one with columns id,name,is_thing")
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
        entries = sorted((int(r["id"]), r["name"].strip(), r["is_thing"].strip().lower() in ("1", "true", "yes"))
                         for r in rows if int(r["id"]) != 0)
    except (KeyError, ValueError, AttributeError) as e:
        raise InputError(f"{path}: cannot parse ({e}); expected columns id,name,is_thing with integer ids") from None
    if not entries or len({e[0] for e in entries}) != len(entries):
        raise InputError(f"{path}: needs at least one class and unique ids")
    ids = [e[0] for e in entries]
    rng = np.random.default_rng(0)
    colors = tuple(tuple(int(v) for v in rng.integers(30, 256, 3)) for _ in ids)
    return ClassTable("folder", tuple(ids), tuple(e[1] for e in entries), tuple(e[2] for e in entries), 0, colors)


# ---------------------------------------------------------------- factory


def make_reader(dataset: str, root: str | Path, image_list: str | Path | None = None) -> Reader:
    """The reader of a dataset preset (ade20k, ade20k-outdoor, cityscapes, cocostuff, folder)."""
    if image_list is not None and dataset not in ("ade20k", "ade20k-outdoor"):
        raise InputError(f"--image-list applies to ade20k and ade20k-outdoor, not {dataset}")
    if dataset == "ade20k":
        return ADE20KReader(root, image_list)
    if dataset == "ade20k-outdoor":
        return ADE20KOutdoorReader(root, image_list)
    if dataset == "cityscapes":
        return CityscapesReader(root)
    if dataset == "cocostuff":
        return CocoStuffReader(root)
    if dataset == "folder":
        return FolderReader(root)
    raise InputError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")


def list_split(reader: Reader, split: str) -> list[ImageRecord]:
    """The split's records sorted by image id; an empty split is an error naming the folder."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    recs = sorted(reader.records(split), key=lambda r: r.image_id)
    if not recs:
        raise InputError(f"{reader.root}: split {split!r} of {reader.dataset} has no images; "
                         "check --root, --image-list or pass --splits without it")
    dup = [a.image_id for a, b in zip(recs, recs[1:]) if a.image_id == b.image_id]
    if dup:
        raise InputError(f"{reader.root}: image id {dup[0]!r} appears twice in split {split}; image ids must be unique")
    for r in recs:
        try:
            r.image_id.encode("utf-8")
        except UnicodeEncodeError:  # bytes the file system could not decode: the tables store UTF-8
            raw = (r.image_path or r.label_path).encode("utf-8", "surrogateescape")
            shown = raw.decode("utf-8", "backslashreplace")
            raise InputError(f"{shown}: the file name is not valid UTF-8; rename the file (and its label)") from None
    return recs



def records_for_ids(params: dict, split: str, ids: list[str]) -> tuple[Reader, list[ImageRecord]]:
    """The reader of a work dir's dataset (its segments-stage `params`) and the records of `ids`,
    in that order; a clear error when the dataset no longer holds one of them."""
    reader = make_reader(params["dataset"], params["root"], params.get("image_list"))
    records = {r.image_id: r for r in list_split(reader, split)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise InputError(f"{params['root']}: {len(missing)} {split} images of the segment store are gone "
                         f"(e.g. {missing[0]!r}); rebuild the work directory with `resail index build --rebuild`")
    return reader, [records[i] for i in ids]

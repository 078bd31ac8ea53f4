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
(`unmatched_list_names`). Photos decode to 8-bit RGB whatever their mode (`common.read_rgb`:
16-bit grey is scaled, not clipped to white; palette images go through their palette), and any
image above `common.MAX_PIXELS` is refused before it is decoded (a decompression bomb costs nothing).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..choices import COCO_LAYOUTS, DATASETS, SPLITS
from ..common import decoded_image, read_errors, read_rgb
from ..errors import ConfigError, InputError
from .coco import coco_annotation_texts, coco_annotations, coco_instance_map
from .labels.classes import ClassTable, ade20k_instance_mapping, class_table

log = logging.getLogger("resail")

MAJORITY = -1
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


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


def read_index_png(path: str | Path, channels: int = 1) -> np.ndarray:
    """A label/instance PNG as int32: H×W for 8/16-bit grey or palette files, H×W×3 when channels=3."""
    with read_errors(path, "PNG", "annotation file is missing; restore it or remove its image"):
        with decoded_image(path) as im:
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
    # What happens to thing-class pixels that no instance covers in the official code: one of
    # decompose.UNCOVERED_RULES ("drop_if_instanced": COCO drops them only when the class has an
    # instance in the image). `uncovered_things="components"` overrides it.
    uncovered_rule: str = "components"
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
    uncovered_rule = "drop"
    FOLDERS = {"train": "training", "val": "validation"}

    def __init__(self, root: str | Path, image_list: str | Path | None = None):
        super().__init__(root)
        if not (self.root / "images").is_dir():  # the folder above the dataset (ADEChallengeData2016/, …)
            inside = [d for d in sorted(self.root.iterdir()) if (d / "images").is_dir()] if self.root.is_dir() else []
            if len(inside) == 1:
                self.root = inside[0]
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
    """ADE20K-outdoor, which has no official image list, in either form its users hold it: the
    ADE20K folder with `--image-list` (the basenames of the subset), or a folder in the ADE20K
    layout that holds only the subset's images (as the CLADE authors distribute theirs)."""

    dataset = "ade20k-outdoor"


class CityscapesReader(Reader):
    """leftImg8bit/{split}/{city}/*_leftImg8bit.png with gtFine/{split}/{city}/*_gtFine_{labelIds,instanceIds}.png."""

    dataset = "cityscapes"
    uncovered_rule = "components"  # group pixels ("car group") become components
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
    """COCO-Stuff in one of two layouts (`choices.COCO_LAYOUTS`), with the same label maps (stuffthingmaps PNGs,
    v → class v+1, 255 → void):

    - `coco`, the official downloads: `{split}2017/*.jpg`, the stuffthingmaps and
      `annotations/instances_{split}2017.json` (instance masks painted from the JSON, `coco.py`);
    - `spade`, the folders SPADE's README has users prepare (and CLADE, OASIS and RESAIL reuse):
      `{split}_img/`, `{split}_label/` (the stuffthingmaps) and `{split}_inst/`, whose instance maps
      SPADE's `coco_generate_instance_map.py` wrote (`spade_instances` splits them).

    `layout=None` picks the one found under the root."""

    dataset = "cocostuff"
    uncovered_rule = "drop_if_instanced"
    MAP_DIRS = ("stuffthingmaps_trainval2017/{s}2017", "stuffthingmaps/{s}2017", "{s}2017")

    def __init__(self, root: str | Path, layout: str | None = None):
        super().__init__(root)
        if layout is None:
            spade = any((self.root / f"{s}_label").is_dir() for s in SPLITS)
            layout = "spade" if spade and not any((self.root / f"{s}2017").is_dir() for s in SPLITS) else "coco"
        if layout not in COCO_LAYOUTS:
            raise ConfigError("layout", f"COCO-Stuff layout {layout!r}: choose one of {', '.join(COCO_LAYOUTS)}")
        self.layout = layout
        if layout == "spade":
            self.has_instances = any((self.root / f"{s}_inst").is_dir() for s in SPLITS)

    def _map_dir(self, split: str) -> Path:
        for pattern in self.MAP_DIRS:
            d = self.root / pattern.format(s=split)
            if d.is_dir() and any(d.glob("*.png")):
                return d
        tried = ", ".join(str(self.root / p.format(s=split)) for p in self.MAP_DIRS)
        raise InputError(f"COCO-Stuff stuffthingmaps for {split}2017 not found (tried {tried}); "
                         "unzip stuffthingmaps_trainval2017.zip under --root, or point --root at SPADE's "
                         "prepared folders ({split}_img, {split}_label, {split}_inst)")

    def records(self, split: str) -> list[ImageRecord]:
        if self.layout == "spade":
            return self._spade_records(split)
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

    def _spade_records(self, split: str) -> list[ImageRecord]:
        images = self._need_dir(self.root / f"{split}_img", "SPADE-layout COCO-Stuff images")
        labels = self._need_dir(self.root / f"{split}_label", "SPADE-layout COCO-Stuff labels")
        inst = self.root / f"{split}_inst"
        if not inst.is_dir():
            log.warning("%s is missing: COCO-Stuff things fall back to connected components (write it with "
                        "SPADE's datasets/coco_generate_instance_map.py)", inst)
        inst_path = (lambda stem: str(inst / f"{stem}.png")) if inst.is_dir() else (lambda stem: "")
        out = [ImageRecord(p.stem, split, str(p), str(labels / f"{p.stem}.png"), inst_path(p.stem))
               for p in _files(images, IMAGE_EXTS)]
        for stem, p in orphan_labels(_files(labels, (".png",)), ".png", out).items():
            out.append(ImageRecord(stem, split, "", str(p), inst_path(stem)))
        return out

    def extra_inputs(self, split: str) -> list[Path]:
        path = self.root / "annotations" / f"instances_{split}2017.json"
        return [path] if self.layout == "coco" and path.is_file() else []

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
        if self.layout == "spade":
            if not record.instance_path:
                return Sample(record.image_id, image, label, None, None, record)
            painted = read_index_png(record.instance_path)
            _check_same_size(image, painted, record.image_path, record.instance_path)
            inst = spade_instances(raw, painted, self.table.thing_ids())
        elif self.has_instances:
            json_path = self.root / "annotations" / f"instances_{record.split}2017.json"
            inst = coco_instance_map(coco_annotations(record.annotations), label.shape,
                                     f"{json_path} (image {record.image_id})")
        else:
            return Sample(record.image_id, image, label, None, None, record)
        k = int(inst.max())
        return Sample(record.image_id, image, label, inst, np.full(k + 1, MAJORITY, np.int32), record)


def spade_instances(stuffthing: np.ndarray, painted: np.ndarray, thing_ids) -> np.ndarray:
    """Instance ids 1..K (0 = none) from an instance map written by SPADE's
    `coco_generate_instance_map.py`, given the image's stuffthingmap (raw PNG values).

    That script copies the stuffthingmap, then paints each non-crowd annotation's polygons with a
    counter 0, 1, 2, … (one per annotation, in JSON order; crowd RLE annotations are neither painted
    nor counted). So a pixel whose value differs from its label was painted by counter `value`;
    a pixel equal to its label was either not painted or painted by a counter that happens to equal
    the label value (instance 0 on a person, whose value is 0, is common). Such a thing pixel of
    value c is taken as counter c's when that counter may exist (c ≤ k + 1, k the highest counter
    painted elsewhere: counters run without gaps, and the next one may be hidden this way too) and
    is not an instance of another class (the majority thing label of its unambiguous pixels);
    otherwise as unpainted, which then follows the dataset's uncovered-thing rule.
    docs/decomposition.md lists what this cannot recover."""
    raw = stuffthing.astype(np.int64)
    value = painted.astype(np.int64)
    sure = value != raw
    key = np.where(sure, value, -1)
    kmax = int(value[sure].max()) if sure.any() else -1
    thing_value = np.zeros(256, bool)
    thing_value[[c - 1 for c in thing_ids if 0 < c <= 256]] = True   # native id c ↔ PNG value c − 1
    on_things = sure & thing_value[np.clip(raw, 0, 255)]
    hist = np.zeros((kmax + 2, 256), np.int64)
    np.add.at(hist, (value[on_things], raw[on_things]), 1)
    counted = hist.sum(axis=1) > 0
    own = ~counted                                 # counter c: no sure thing pixel, or mostly class value c
    own[counted] = hist[counted].argmax(axis=1) == np.flatnonzero(counted)
    ambiguous = ~sure & thing_value[np.clip(raw, 0, 255)] & (raw <= kmax + 1)
    ambiguous[ambiguous] = own[raw[ambiguous]]
    key[ambiguous] = raw[ambiguous]
    inst, _ = compact_instances(key, key >= 0)
    return inst


class FolderReader(Reader):
    """A custom dataset: images/{split}/*, labels/{split}/*.png (class ids, 0 = void), optional
    instances/{split}/*.png (instance ids, 0 = none; class = majority label) and classes.csv."""

    dataset = "folder"
    uncovered_rule = "components"

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


READERS: dict[str, type[Reader]] = {"ade20k": ADE20KReader, "ade20k-outdoor": ADE20KOutdoorReader,
                                     "cityscapes": CityscapesReader, "cocostuff": CocoStuffReader,
                                     "folder": FolderReader}


def make_reader(dataset: str, root: str | Path, image_list: str | Path | None = None,
                layout: str | None = None) -> Reader:
    """The reader of a dataset preset (ade20k, ade20k-outdoor, cityscapes, cocostuff, folder);
    `layout` chooses between the layouts a dataset comes in (COCO-Stuff: `coco` or `spade`),
    None = the one found under `root`."""
    if image_list is not None and dataset not in ("ade20k", "ade20k-outdoor"):
        raise ConfigError("image_list", f"an image list applies to ade20k and ade20k-outdoor, not {dataset}")
    if layout is not None and dataset != "cocostuff":
        raise ConfigError("layout", f"layout {layout!r} applies to cocostuff, not {dataset}")
    if dataset not in READERS:
        raise ConfigError("dataset", f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset in ("ade20k", "ade20k-outdoor"):
        return READERS[dataset](root, image_list)
    if dataset == "cocostuff":
        return CocoStuffReader(root, layout)
    return READERS[dataset](root)


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



def reader_of(params: dict) -> Reader:
    """The reader of a work dir's dataset, from its segments-stage `params`. No image list: the
    params hold only its fingerprint, and the store's image ids already say which images it chose."""
    return make_reader(params["dataset"], params["root"], layout=params.get("layout"))


def records_for_ids(params: dict, split: str, ids: list[str]) -> tuple[Reader, list[ImageRecord]]:
    """The reader of a work dir's dataset (its segments-stage `params`) and the records of `ids`,
    in that order; a clear error when the dataset no longer holds one of them."""
    reader = reader_of(params)
    records = {r.image_id: r for r in list_split(reader, split)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise InputError(f"{params['root']}: {len(missing)} {split} images of the segment store are gone "
                         f"(e.g. {missing[0]!r}); rebuild the work directory with `resail index build --rebuild`")
    return reader, [records[i] for i in ids]

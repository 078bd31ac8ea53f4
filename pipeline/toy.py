"""Procedural toy datasets written in exactly the official on-disk format of a real dataset.

One scene grammar (`toy_scene.py`) paints every image onto a dataset-free canvas of abstract
roles and objects; a small per-format writer maps roles to the dataset's native class ids *by
name* (through the shipped class tables) and encodes objects the way that dataset encodes
instances (docs/decomposition.md, "Dataset layouts"):

- ade20k:     OUT/ADEChallengeData2016/{images,annotations,annotations_instance}/{training,validation}/
              ADE_{train,val}_%08d.{jpg,png}, objectInfo150.txt, sceneCategories.txt
- cityscapes: OUT/leftImg8bit/{train,val}/{city}/…_leftImg8bit.png and OUT/gtFine/{train,val}/{city}/
              …_gtFine_{labelIds,instanceIds,color}.png
- cocostuff:  OUT/{train2017,val2017}/<12-digit id>.jpg, OUT/stuffthingmaps_trainval2017/{train2017,val2017}/
              <id>.png, OUT/annotations/instances_{train,val}2017.json

Each image is a pure function of (seed, split, index), so the same config writes byte-identical
files whatever `n_jobs` is or whichever backend runs the workers.

The *realistic presets* (`PRESETS`, `resail data toy --preset cityscapes-real`) write images at the
real dataset's size with a scene density tuned so that the label maps carry about the real
dataset's classes and instances per image; docs/scale.md gives the figures aimed at, their
sources, and what the presets reach. They exist to measure what the offline stages cost at real
scale (benchmarks/scale.py), not to train on. `OUT/toy_manifest.json` is written first as incomplete and rewritten
last as complete; a complete manifest with the same config makes a rerun a no-op.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..artifacts import write_bytes_atomic, write_json_atomic
from ..choices import SPLITS, TOY_FORMATS, TOY_PRESETS
from ..errors import ConfigError, InputError
from .labels.classes import ade20k_instance_mapping, class_table
from .runner import execute
from .toy_scene import MAX_WINDOWS, ROLES, Density, compose_scene

MANIFEST = "toy_manifest.json"

# role -> class name in (ADE20K short name, Cityscapes label name, COCO-Stuff name).
# None: the grammar never draws this role in that format (parks are not Cityscapes scenes).
# Cityscapes has no window or door class: they are parts painted inside the building.
ROLE_CLASSES: dict[str, tuple[str | None, str | None, str | None]] = {
    "sky": ("sky", "sky", "sky-other"),
    "mountain": ("mountain", "vegetation", "mountain"),
    "building": ("building", "building", "building-other"),
    "window": ("windowpane", "building", "window-other"),
    "door": ("door", "building", "door-stuff"),
    "road": ("road", "road", "road"),
    "sidewalk": ("sidewalk", "sidewalk", "pavement"),
    "grass": ("grass", "terrain", "grass"),
    "path": ("path", None, "dirt"),
    "water": ("water", None, "water-other"),
    "tree": ("tree", "vegetation", "tree"),
    "plant": ("plant", "vegetation", "bush"),
    "pole": ("pole", "pole", "structural-other"),
    "traffic_light": ("traffic light", "traffic light", "traffic light"),
    "sign": ("signboard", "traffic sign", "stop sign"),
    "car": ("car", "car", "car"),
    "bus": ("bus", "bus", "bus"),
    "truck": ("truck", "truck", "truck"),
    "bicycle": ("bicycle", "bicycle", "bicycle"),
    "person": ("person", "person", "person"),
    "dog": ("animal", None, "dog"),
    "bench": ("bench", "static", "bench"),
    "ego_vehicle": (None, "ego vehicle", None),
}
# COCO supercategories of the thing classes the grammar can draw (COCO 2017 category list).
COCO_SUPERCATEGORY = {
    "person": "person", "bicycle": "vehicle", "car": "vehicle", "bus": "vehicle", "truck": "vehicle",
    "traffic light": "outdoor", "stop sign": "outdoor", "bench": "outdoor", "dog": "animal",
}
CITIES = {"train": ("aachen", "bremen", "hamburg"), "val": ("frankfurt", "lindau", "munster")}
ADE_DIRS = {"train": "training", "val": "validation"}
COCO_FIRST_ID = {"train": 1, "val": 1_000_001}   # disjoint image ids, as in COCO
JPEG_QUALITY = 90
# Realistic presets: the real dataset's image size and a density tuned to its instances per image
# (docs/scale.md), one per name of `choices.TOY_PRESETS`. Each sets these ToyConfig fields; n_train and
# n_val stay the caller's.
PRESETS = {
    "ade20k-real": {"fmt": "ade20k", "width": 683, "height": 512, "objects": 1.0, "max_windows": 4},
    "cityscapes-real": {"fmt": "cityscapes", "width": 2048, "height": 1024, "objects": 3.5, "max_windows": 80},
    "cocostuff-real": {"fmt": "cocostuff", "width": 640, "height": 480, "objects": 1.3, "max_windows": 4},
}


@dataclass(frozen=True)
class ToyConfig:
    fmt: str = "ade20k"
    n_train: int = 200
    n_val: int = 40
    width: int = 256
    height: int = 256
    seed: int = 0
    objects: float = 1.0   # scene density (toy_scene.Density): scales every object count range
    max_windows: int = MAX_WINDOWS
    n_jobs: int = 1        # parallel image workers; never changes the output

    def __post_init__(self) -> None:
        if self.fmt not in TOY_FORMATS:
            raise ConfigError("fmt", f"toy format {self.fmt!r}: choose one of {', '.join(TOY_FORMATS)}")
        for name in ("n_train", "n_val"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"{name} {getattr(self, name)}: a toy dataset needs at least one image per "
                                        "split")
        if self.width < 32 or self.height < 32:
            raise ConfigError("size", f"toy image size {self.width}x{self.height} is too small: use at least 32x32")
        if not 0.0 < self.objects <= 10.0 or self.max_windows < 0:
            raise ConfigError("objects", f"toy density objects={self.objects}, max_windows={self.max_windows}: "
                                         "need 0 < objects ≤ 10 and max_windows ≥ 0")

    @classmethod
    def preset(cls, name: str, **overrides) -> ToyConfig:
        """The config of a realistic preset (`PRESETS`), with `overrides` (n_train, n_val, seed, …)."""
        if name not in TOY_PRESETS:
            raise ConfigError("preset", f"toy preset {name!r}: choose one of {', '.join(TOY_PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def density(self) -> Density:
        return Density(self.objects, self.max_windows)

    def params(self) -> dict:
        """Everything that determines the output (not n_jobs). The density appears only when it
        differs from the default, so a default dataset's manifest is what it always was."""
        p = asdict(self)
        del p["n_jobs"]
        if self.density() == Density():
            del p["objects"], p["max_windows"]
        return p

    def count(self, split: str) -> int:
        return self.n_train if split == "train" else self.n_val


# ------------------------------------------------------------------ role -> native class tables


@dataclass(frozen=True)
class _Spec:
    label: np.ndarray        # role index -> value written in the label PNG
    native: np.ndarray       # role index -> native class id (0 = void)
    instanced: np.ndarray    # role index -> the format gives this class per-object instances
    extra: dict


def _coco_annotated() -> set[int]:
    text = resources.files("resail").joinpath("data", "cocostuff_classes.csv").read_text(encoding="utf-8")
    return {int(r["cocostuff_id"]) for r in csv.DictReader(text.splitlines())
            if r["has_coco_instance_annotations"] == "true"}


@functools.cache
def role_spec(fmt: str) -> _Spec:
    """Per-role lookup tables of one format, from class names resolved in the shipped tables."""
    col = TOY_FORMATS.index(fmt)
    table = class_table(fmt)
    native = np.zeros(len(ROLES), np.int32)
    valid = np.zeros(len(ROLES), bool)
    valid[0] = True                                   # void
    for role, names in ROLE_CLASSES.items():
        if names[col] is not None:
            native[ROLES.index(role)] = table.id_of(names[col])
            valid[ROLES.index(role)] = True
    if fmt == "ade20k":
        to_instance100 = {v: k for k, v in ade20k_instance_mapping().items()}
        inst100 = np.array([to_instance100.get(int(c), 0) for c in native], np.uint8)
        return _Spec(native.astype(np.uint8), native, inst100 > 0, {"valid": valid, "instance100": inst100})
    if fmt == "cityscapes":
        instanced = np.array([c > 0 and table.thing(int(c)) for c in native])
        rgba = np.concatenate([table.palette(256), np.full((256, 1), 255, np.uint8)], 1)
        return _Spec(native.astype(np.uint8), native, instanced, {"valid": valid, "rgba": rgba})
    annotated = _coco_annotated()
    instanced = np.array([c > 0 and table.thing(int(c)) for c in native])
    bad = [table.name(int(c)) for c, i in zip(native, instanced) if i and int(c) not in annotated]
    if bad:
        raise AssertionError(f"toy grammar uses COCO things without segmentations: {bad}")
    label = np.where(native > 0, native - 1, 255).astype(np.uint8)
    return _Spec(label, native, instanced, {"valid": valid})


def toy_class_ids(fmt: str = "ade20k") -> tuple[int, ...]:
    """The native class ids (as the format's reader returns them, void 0 first) that the toy
    grammar can put in a label map of format `fmt`: the label table of the `toy` network preset."""
    if fmt not in TOY_FORMATS:
        raise ConfigError("fmt", f"toy format {fmt!r}: choose one of {', '.join(TOY_FORMATS)}")
    spec = role_spec(fmt)
    return tuple(sorted({0} | {int(c) for c in spec.native[spec.extra["valid"]]}))


def coco_categories() -> list[dict]:
    spec, table = role_spec("cocostuff"), class_table("cocostuff")
    ids = sorted({int(c) for c, i in zip(spec.native, spec.instanced) if i})
    return [{"supercategory": COCO_SUPERCATEGORY[table.name(c)], "id": c, "name": table.name(c)} for c in ids]


def _visible_objects(canvas) -> list[int]:
    """Object indices with at least one visible pixel, in drawing order (far to near)."""
    ids = np.unique(canvas.obj)
    return [int(k) for k in ids if k > 0]


# ------------------------------------------------------------------ file writing


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _save(path: Path, img: Image.Image) -> None:
    """Atomic enough for a toy: temp name in the same folder, then os.replace (no fsync)."""
    data = _encode(img, "JPEG" if path.suffix == ".jpg" else "PNG")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _check_roles(canvas, spec: _Spec, fmt: str) -> None:
    bad = ~spec.extra["valid"][canvas.role]
    if bad.any():
        raise AssertionError(f"toy grammar drew role {ROLES[int(canvas.role[bad][0])]!r}, which {fmt} cannot encode")


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major mask, starting with a 0-run."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a mask, one per 4-connected component: its outer boundary traced along pixel
    corners (pixel (x, y) is the square [x, x+1]×[y, y+1], the convention pycocotools draws with).

    Vertices are integer corners, collinear ones merged. Through `pycocotools.mask` (`frPyObjects`,
    `merge`, `decode`: `COCO.annToMask`) the polygons paint the mask exactly, except that COCO
    polygons have no holes: a component's holes are painted filled. Pixels touching only at a corner
    are separate components, and a component's holes (the background it encloses, 4-connected) are
    filled before tracing, so each boundary is a simple polygon that never touches itself.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return []
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.uint8)
    n, labels, boxes, _ = cv2.connectedComponentsWithStats(crop, connectivity=4)
    polys = []
    for k in range(1, n):
        x, y, bw, bh = boxes[k, :4]
        part = np.pad(labels[y:y + bh, x:x + bw] == k, 1).astype(np.uint8)   # with a 1-pixel margin
        x0, y0 = cols[0] + x - 1, rows[0] + y - 1                          # the margin's corner
        solid = cv2.connectedComponents(1 - part, connectivity=4)[1] != 1   # 1: the margin's region
        h, w = solid.shape
        # unit edges with the solid on their right (clockwise on screen) between corners x + y*(w+1):
        # for each side of a solid pixel whose neighbour there is not solid, (its first, last corner)
        src, dst = [], []
        for (dy, dx), (ax, ay), (bx, by) in (((-1, 0), (0, 0), (1, 0)), ((0, 1), (1, 0), (1, 1)),
                                             ((1, 0), (1, 1), (0, 1)), ((0, -1), (0, 1), (0, 0))):
            py, px = np.nonzero(solid & ~np.roll(solid, (-dy, -dx), (0, 1)))  # margin: no wrap-around
            src.append(px + ax + (py + ay) * (w + 1))
            dst.append(px + bx + (py + by) * (w + 1))
        src = np.concatenate(src)
        nxt = np.zeros((h + 1) * (w + 1), np.int64)
        nxt[src] = np.concatenate(dst)                    # a simple boundary leaves each corner once
        ring = [int(src[0])]
        for _ in range(len(src) - 1):
            ring.append(int(nxt[ring[-1]]))
        ring = np.array(ring)
        pts = np.stack([ring % (w + 1) + x0, ring // (w + 1) + y0], 1)
        step = np.roll(pts, -1, 0) - pts
        pts = pts[np.any(step != np.roll(step, 1, 0), 1)]  # keep the corners where the boundary turns
        polys.append([float(v) for v in pts.ravel()])
    return polys


def _ade_paths(root: Path, split: str, index: int) -> tuple[str, Path, Path, Path]:
    stem = f"ADE_{split}_{index + 1:08d}"
    d = ADE_DIRS[split]
    return (stem, root / "images" / d / f"{stem}.jpg", root / "annotations" / d / f"{stem}.png",
            root / "annotations_instance" / d / f"{stem}.png")


def _write_ade(root: Path, split: str, index: int, canvas, photo: np.ndarray) -> dict:
    spec = role_spec("ade20k")
    stem, p_img, p_lab, p_inst = _ade_paths(root, split, index)
    n_obj = len(canvas.objects)
    r_of, g_of = np.zeros(n_obj, np.uint8), np.zeros(n_obj, np.uint8)
    g = 0
    for k in _visible_objects(canvas):
        r = spec.extra["instance100"][ROLES.index(canvas.objects[k][0])]
        if r:
            g += 1
            r_of[k], g_of[k] = r, g
    inst = np.stack([r_of[canvas.obj], g_of[canvas.obj], np.zeros_like(r_of[canvas.obj])], -1)
    _save(p_img, Image.fromarray(photo, "RGB"))
    _save(p_lab, Image.fromarray(spec.label[canvas.role], "L"))
    _save(p_inst, Image.fromarray(inst, "RGB"))
    return {"stem": stem, "instances": g}


def _cs_stem(split: str, index: int) -> tuple[str, str]:
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"


def _write_cityscapes(root: Path, split: str, index: int, canvas, photo: np.ndarray) -> dict:
    spec = role_spec("cityscapes")
    city, stem = _cs_stem(split, index)
    label_ids = spec.label[canvas.role]
    value_of = np.zeros(len(canvas.objects), np.int32)
    per_class: dict[int, int] = {}
    n_inst = n_group = 0
    for k in _visible_objects(canvas):
        role, group = canvas.objects[k]
        r = ROLES.index(role)
        cid = int(spec.native[r])
        if spec.instanced[r] and not group:
            value_of[k] = cid * 1000 + per_class.get(cid, 0)
            per_class[cid] = per_class.get(cid, 0) + 1
            n_inst += 1
        else:
            value_of[k] = cid
            n_group += int(group)
    instance_ids = np.where(canvas.obj > 0, value_of[canvas.obj], label_ids).astype(np.uint16)
    gt = root / "gtFine" / split / city
    _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", Image.fromarray(photo, "RGB"))
    _save(gt / f"{stem}_gtFine_labelIds.png", Image.fromarray(label_ids, "L"))
    _save(gt / f"{stem}_gtFine_instanceIds.png", Image.fromarray(instance_ids))
    _save(gt / f"{stem}_gtFine_color.png", Image.fromarray(spec.extra["rgba"][label_ids], "RGBA"))
    return {"stem": stem, "instances": n_inst, "groups": n_group}


def _coco_annotations(canvas, spec: _Spec) -> list[dict]:
    anns = []
    for k in _visible_objects(canvas):
        role, group = canvas.objects[k]
        r = ROLES.index(role)
        if not spec.instanced[r]:
            continue
        mask = canvas.obj == k
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
        seg = rle_encode(mask) if group else mask_polygons(mask)
        anns.append({"segmentation": seg, "area": float(mask.sum()), "iscrowd": int(group),
                     "bbox": bbox, "category_id": int(spec.native[r])})
    return anns


def _write_cocostuff(root: Path, split: str, index: int, canvas, photo: np.ndarray) -> dict:
    spec = role_spec("cocostuff")
    image_id = COCO_FIRST_ID[split] + index
    name = f"{image_id:012d}"
    _save(root / f"{split}2017" / f"{name}.jpg", Image.fromarray(photo, "RGB"))
    _save(root / "stuffthingmaps_trainval2017" / f"{split}2017" / f"{name}.png",
          Image.fromarray(spec.label[canvas.role], "L"))
    image = {"id": image_id, "file_name": f"{name}.jpg", "width": canvas.w, "height": canvas.h}
    anns = _coco_annotations(canvas, spec)
    for a in anns:
        a["image_id"] = image_id
    return {"image": image, "annotations": anns, "instances": len(anns)}


WRITERS = {"ade20k": _write_ade, "cityscapes": _write_cityscapes, "cocostuff": _write_cocostuff}
# Top-level entries of OUT each format owns (removed when a different config is rewritten).
ENTRIES = {
    "ade20k": ("ADEChallengeData2016",),
    "cityscapes": ("leftImg8bit", "gtFine"),
    "cocostuff": ("train2017", "val2017", "stuffthingmaps_trainval2017", "annotations"),
}


def dataset_root(out: Path, fmt: str) -> Path:
    """The folder a dataset reader takes as --root."""
    return out / "ADEChallengeData2016" if fmt == "ade20k" else out


def render_image(cfg: ToyConfig, split: str, index: int) -> tuple:
    """(canvas, photo, scene kind) of one image: a pure function of (seed, split, index)."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    kind = "street" if cfg.fmt == "cityscapes" or rng.random() < 0.6 else "park"
    canvas, photo = compose_scene(rng, cfg.height, cfg.width, kind, ego=cfg.fmt == "cityscapes",
                                  force_group=index == 0, density=cfg.density())
    return canvas, photo, kind


def _make_one(cfg: ToyConfig, root: Path, split: str, index: int) -> dict:
    canvas, photo, kind = render_image(cfg, split, index)
    _check_roles(canvas, role_spec(cfg.fmt), cfg.fmt)
    meta = WRITERS[cfg.fmt](root, split, index, canvas, photo)
    meta["scene"] = kind
    return meta


# ------------------------------------------------------------------ driver


def _make_dirs(root: Path, cfg: ToyConfig) -> None:
    for split in SPLITS:
        if cfg.fmt == "ade20k":
            for top in ("images", "annotations", "annotations_instance"):
                (root / top / ADE_DIRS[split]).mkdir(parents=True, exist_ok=True)
        elif cfg.fmt == "cityscapes":
            for city in CITIES[split][:cfg.count(split)]:
                (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        else:
            (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
            (root / "stuffthingmaps_trainval2017" / f"{split}2017").mkdir(parents=True, exist_ok=True)
            (root / "annotations").mkdir(parents=True, exist_ok=True)


def _prepare_out(out: Path, cfg: ToyConfig) -> bool:
    """True when OUT already holds this exact dataset; otherwise clear our old files, if any."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{manifest}: unreadable toy manifest ({e}); delete {out} and rerun") from e
        if old.get("complete") and old.get("params") == cfg.params():
            return True
        for entry in old.get("entries", []):
            if entry in sum(ENTRIES.values(), ()):
                shutil.rmtree(out / entry, ignore_errors=True)
    else:
        clash = [e for e in ENTRIES[cfg.fmt] if (out / e).exists()]
        if clash:
            raise InputError(f"{out} already holds {', '.join(clash)} but no {MANIFEST}: "
                             "choose an empty or new folder for the toy dataset")
    return False


def _run_split(cfg: ToyConfig, root: Path, split: str, progress: bool) -> list[dict]:
    """Write every image of a split (one task each, through the stage runner); their metadata in order."""
    n = cfg.count(split)
    metas = []
    with tqdm(total=n, desc=f"toy {cfg.fmt} {split}", unit="img", disable=not progress) as bar:
        for meta in execute(_make_one, ((cfg, root, split, i) for i in range(n)), jobs=cfg.n_jobs):
            metas.append(meta)
            bar.update()
    return metas


def _finish_split(cfg: ToyConfig, root: Path, split: str, metas: list[dict]) -> None:
    if cfg.fmt != "cocostuff":
        return
    images, annotations = [], []
    for meta in metas:
        images.append(meta["image"])
        for a in meta["annotations"]:
            annotations.append({"id": len(annotations) + 1, **a})
    doc = {"info": {"description": "resail toy dataset (procedural)", "version": "1.0", "year": 2017},
           "licenses": [], "images": images, "annotations": annotations, "categories": coco_categories()}
    write_bytes_atomic(root / "annotations" / f"instances_{split}2017.json",
                       json.dumps(doc, separators=(",", ":")).encode())


def _finish_ade(root: Path, metas: dict[str, list[dict]]) -> None:
    info = resources.files("resail").joinpath("data", "ade20k_objectInfo150.txt").read_bytes()
    write_bytes_atomic(root / "objectInfo150.txt", info)
    lines = [f"{m['stem']} {m['scene']}\n" for split in SPLITS for m in metas[split]]
    write_bytes_atomic(root / "sceneCategories.txt", "".join(lines).encode())


def make_toy_dataset(out: Path, cfg: ToyConfig, progress: bool = False) -> Path:
    """Write the toy dataset of `cfg` under `out`; returns the root a dataset reader takes."""
    out = Path(out)
    root = dataset_root(out, cfg.fmt)
    if _prepare_out(out, cfg):
        return root
    out.mkdir(parents=True, exist_ok=True)
    base = {"params": cfg.params(), "entries": list(ENTRIES[cfg.fmt]), "root": str(root.relative_to(out))}
    write_json_atomic(out / MANIFEST, {**base, "complete": False})
    _make_dirs(root, cfg)
    metas = {}
    for split in SPLITS:
        metas[split] = _run_split(cfg, root, split, progress)
        _finish_split(cfg, root, split, metas[split])
    if cfg.fmt == "ade20k":
        _finish_ade(root, metas)
    counts = {split: {"images": len(m), "instances": sum(x["instances"] for x in m),
                      "scenes": {k: sum(x["scene"] == k for x in m) for k in ("street", "park")}}
              for split, m in metas.items()}
    write_json_atomic(out / MANIFEST, {**base, "complete": True, "counts": counts})
    return root

"""The toy datasets are written in exactly the official on-disk formats (docs/decomposition.md, "Dataset layouts").

Every check reads the files back from disk, the way a dataset reader will.
"""

import csv
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_api

from resail.cli import cli
from resail.errors import InputError
from resail.pipeline.labels.classes import ade20k_instance_mapping, class_table
from resail.pipeline.toy import MANIFEST, ToyConfig, make_toy_dataset, mask_polygons, rle_encode, role_spec

N_TRAIN, N_VAL = 6, 3
SIZES = {"ade20k": (64, 64), "cityscapes": (128, 64), "cocostuff": (64, 64)}
COCO_REMOVED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91}   # thing ids without segmentations


def _cfg(fmt, **kw):
    w, h = SIZES[fmt]
    return ToyConfig(**{"fmt": fmt, "n_train": N_TRAIN, "n_val": N_VAL, "width": w, "height": h, "seed": 7, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small dataset per format, built once for the module."""
    base = tmp_path_factory.mktemp("toy")
    return {fmt: make_toy_dataset(base / fmt, _cfg(fmt)) for fmt in SIZES}


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the PNG IHDR chunk."""
    raw = path.read_bytes()[:26]
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return raw[24], raw[25]


def _hash_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rle_decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.repeat(np.arange(len(rle["counts"])) % 2, rle["counts"]).astype(bool)
    assert values.size == h * w
    return values.reshape(w, h).T


def _coco_paint(polys: list, h: int, w: int) -> np.ndarray:
    """The mask COCO polygons paint as the project's reader (and `COCO.annToMask`) draws them."""
    if not polys:
        return np.zeros((h, w), bool)
    return mask_api.decode(mask_api.merge(mask_api.frPyObjects(polys, h, w))).astype(bool)


# ------------------------------------------------------------------ ADE20K


def test_ade20k_layout(built):
    root = built["ade20k"]
    assert root.name == "ADEChallengeData2016"
    for split, d, n in (("train", "training", N_TRAIN), ("val", "validation", N_VAL)):
        stems = [f"ADE_{split}_{i:08d}" for i in range(1, n + 1)]
        assert sorted(p.stem for p in (root / "images" / d).iterdir()) == stems
        for top, ext in (("images", ".jpg"), ("annotations", ".png"), ("annotations_instance", ".png")):
            assert sorted(p.name for p in (root / top / d).iterdir()) == [s + ext for s in stems]
    shipped = resources.files("resail").joinpath("data", "ade20k_objectInfo150.txt").read_bytes()
    assert (root / "objectInfo150.txt").read_bytes() == shipped
    lines = (root / "sceneCategories.txt").read_text().splitlines()
    assert len(lines) == N_TRAIN + N_VAL
    assert lines[0].startswith("ADE_train_00000001 ") and lines[N_TRAIN].startswith("ADE_val_00000001 ")
    assert all(re.fullmatch(r"ADE_(train|val)_\d{8} (street|park)", ln) for ln in lines)


def test_ade20k_encodings(built):
    root = built["ade20k"]
    to150 = ade20k_instance_mapping()
    ade = class_table("ade20k")
    tree, plant, grass, sidewalk = (ade.id_of(n) for n in ("tree", "plant", "grass", "sidewalk"))
    n_instances, classes, seen_uninstanced, split_stuff = [], set(), set(), 0
    for img_path in sorted((root / "images").rglob("*.jpg")):
        d = img_path.parent.name
        photo = Image.open(img_path)
        label_img = Image.open(root / "annotations" / d / (img_path.stem + ".png"))
        inst_img = Image.open(root / "annotations_instance" / d / (img_path.stem + ".png"))
        assert photo.format == "JPEG" and photo.mode == "RGB" and photo.size == SIZES["ade20k"]
        assert label_img.mode == "L" and inst_img.mode == "RGB"
        assert label_img.size == inst_img.size == photo.size
        label, inst = np.array(label_img), np.array(inst_img)
        assert inst.dtype == np.uint8 and label.max() <= 150
        r, g, b = inst[..., 0], inst[..., 1], inst[..., 2]
        assert not b.any()
        assert np.array_equal(r > 0, g > 0)
        ids = np.unique(g[g > 0])
        assert list(ids) == list(range(1, len(ids) + 1))       # G unique per instance, 1..n
        for k in ids:
            region = g == k
            cats = np.unique(r[region])
            assert len(cats) == 1                               # R uniform within an instance
            assert np.all(label[region] == to150[int(cats[0])])  # R maps to the 150-class under it
        n_instances.append(len(ids))
        classes |= set(np.unique(label).tolist())
        seen_uninstanced |= set(np.unique(label[g == 0]).tolist()) & {tree, plant}
        for stuff in (grass, sidewalk):
            n_parts = cv2.connectedComponents((label == stuff).astype(np.uint8), connectivity=8)[0] - 1
            split_stuff += n_parts >= 2
    assert np.mean(n_instances) >= 3
    assert len(classes) >= 8
    assert seen_uninstanced, "tree/plant (things without instance annotations) never drawn"
    assert split_stuff >= 2, "stuff classes never split into several components"


# ------------------------------------------------------------------ Cityscapes


def _cs_rows():
    text = resources.files("resail").joinpath("data", "cityscapes_labels.csv").read_text()
    return [r for r in csv.DictReader(text.splitlines()) if int(r["id"]) >= 0]


def test_cityscapes_layout_and_encodings(built):
    root = built["cityscapes"]
    rows = _cs_rows()
    has_inst = {int(r["id"]) for r in rows if r["hasInstances"] == "True"}
    colour = {int(r["id"]): (int(r["color_r"]), int(r["color_g"]), int(r["color_b"])) for r in rows}
    group_pixels, n_instances = 0, []
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        images = sorted((root / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))
        assert len(images) == n
        for p in images:
            city = p.parent.name
            assert city in (("aachen", "bremen", "hamburg") if split == "train" else ("frankfurt", "lindau", "munster"))
            assert re.fullmatch(rf"{city}_\d{{6}}_\d{{6}}_leftImg8bit\.png", p.name)
            stem = p.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / city
            photo = Image.open(p)
            assert photo.format == "PNG" and photo.mode == "RGB" and photo.size == SIZES["cityscapes"]
            label_path, inst_path = gt / f"{stem}_gtFine_labelIds.png", gt / f"{stem}_gtFine_instanceIds.png"
            assert Image.open(label_path).mode == "L" and _png_header(label_path) == (8, 0)
            assert _png_header(inst_path) == (16, 0)
            assert Image.open(inst_path).mode in ("I", "I;16")
            color_img = Image.open(gt / f"{stem}_gtFine_color.png")
            assert color_img.mode == "RGBA"
            label = np.array(Image.open(label_path))
            inst = np.array(Image.open(inst_path)).astype(np.int32)
            assert label.max() <= 33
            big = inst >= 1000
            assert np.array_equal(inst[~big], label[~big])
            assert np.array_equal(inst[big] // 1000, label[big])
            assert set(np.unique(inst[big] // 1000).tolist()) <= has_inst
            for cid in np.unique(inst[big] // 1000):
                ks = sorted(v % 1000 for v in np.unique(inst[inst // 1000 == cid]))
                assert ks == list(range(len(ks)))               # k counts from 0
            group_pixels += int(np.isin(inst, list(has_inst)).sum())
            n_instances.append(len(np.unique(inst[big])))
            expected = np.array([colour[int(v)] + (255,) for v in range(34)], np.uint8)[label]
            assert np.array_equal(np.array(color_img), expected)
    assert group_pixels > 0, "no cargroup/persongroup region (plain id of an instance class)"
    assert np.mean(n_instances) >= 2


# ------------------------------------------------------------------ COCO-Stuff


def test_cocostuff_layout_and_json(built):
    root = built["cocostuff"]
    table = class_table("cocostuff")
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        doc = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        assert {"images", "annotations", "categories"} <= doc.keys()
        files = sorted(p.name for p in (root / f"{split}2017").iterdir())
        assert len(files) == n and all(re.fullmatch(r"\d{12}\.jpg", f) for f in files)
        assert sorted(im["file_name"] for im in doc["images"]) == files
        maps = sorted(p.name for p in (root / "stuffthingmaps_trainval2017" / f"{split}2017").iterdir())
        assert maps == [f.replace(".jpg", ".png") for f in files]
        cats = {c["id"]: c for c in doc["categories"]}
        for c in cats.values():
            assert set(c) == {"id", "name", "supercategory"} and c["name"] == table.name(c["id"])
            assert table.thing(c["id"]) and c["id"] not in COCO_REMOVED
        ann_ids = [a["id"] for a in doc["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        crowds, agreement = 0, []
        for im in doc["images"]:
            photo = Image.open(root / f"{split}2017" / im["file_name"])
            assert photo.mode == "RGB" and photo.size == (im["width"], im["height"])
            stem = im["file_name"].replace(".jpg", ".png")
            lab_img = Image.open(root / "stuffthingmaps_trainval2017" / f"{split}2017" / stem)
            assert lab_img.mode == "L"
            lab = np.array(lab_img)
            assert set(np.unique(lab).tolist()) <= set(range(182)) | {255}
            covered = np.zeros(lab.shape, bool)
            for a in (a for a in doc["annotations"] if a["image_id"] == im["id"]):
                assert a["category_id"] in cats and a["area"] > 0 and a["iscrowd"] in (0, 1)
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
                if a["iscrowd"]:
                    crowds += 1
                    assert a["segmentation"]["size"] == [im["height"], im["width"]]
                    mask = _rle_decode(a["segmentation"])
                else:
                    for poly in a["segmentation"]:
                        assert len(poly) >= 8 and len(poly) % 2 == 0
                    mask = _coco_paint(a["segmentation"], *lab.shape)
                agree = np.mean(lab[mask] == a["category_id"] - 1)
                # a polygon is an outer contour: it also covers occluders inside it, so "mostly"
                assert agree >= (1.0 if a["iscrowd"] else 0.25), (a["category_id"], agree)
                agreement.append(agree)
                assert a["area"] == mask.sum() if a["iscrowd"] else 0 < a["area"] <= mask.sum()
                covered |= mask
            things = lab < 91
            assert np.all(covered[things])                      # every thing pixel is annotated
        assert crowds >= 1, f"{split}: no crowd annotation"
        assert np.mean(agreement) >= 0.85


# ------------------------------------------------------------------ determinism, reruns, errors


def test_same_seed_same_bytes_any_n_jobs(tmp_path):
    cfg = _cfg("ade20k", n_train=4, n_val=2)
    a = make_toy_dataset(tmp_path / "a", cfg)
    b = make_toy_dataset(tmp_path / "b", ToyConfig(**{**cfg.__dict__, "n_jobs": 2}))
    c = make_toy_dataset(tmp_path / "c", ToyConfig(**{**cfg.__dict__, "seed": 8}))
    ha, hb, hc = _hash_tree(a.parent), _hash_tree(b.parent), _hash_tree(c.parent)
    assert ha == hb
    photos = [k for k in ha if k.endswith(".jpg")]
    assert photos and all(ha[k] != hc[k] for k in photos)


@pytest.mark.parametrize("fmt", ["cityscapes", "cocostuff"])
def test_same_seed_same_bytes_other_formats(tmp_path, fmt):
    cfg = _cfg(fmt, n_train=3, n_val=1)
    a, b = make_toy_dataset(tmp_path / "a", cfg), make_toy_dataset(tmp_path / "b", cfg)
    assert _hash_tree(a) == _hash_tree(b)


def test_rerun_is_noop_and_new_config_rebuilds(tmp_path):
    out = tmp_path / "toy"
    cfg = _cfg("ade20k", n_train=4, n_val=1)
    root = make_toy_dataset(out, cfg)
    first = root / "images" / "training" / "ADE_train_00000004.jpg"
    mtime = first.stat().st_mtime_ns
    assert make_toy_dataset(out, cfg) == root and first.stat().st_mtime_ns == mtime
    make_toy_dataset(out, ToyConfig(**{**cfg.__dict__, "n_train": 2}))
    assert not first.exists()                                    # the old, larger dataset is gone
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["counts"]["train"]["images"] == 2


def test_refuses_foreign_folder_and_bad_config(tmp_path):
    (tmp_path / "gtFine").mkdir()
    with pytest.raises(InputError, match="gtFine"):
        make_toy_dataset(tmp_path, _cfg("cityscapes", n_train=1, n_val=1))
    for bad in ({"fmt": "kitti"}, {"n_val": 0}, {"width": 8}):
        with pytest.raises(InputError):
            ToyConfig(**{"fmt": "ade20k", **bad})


def test_role_tables_resolve_by_name():
    for fmt in ("ade20k", "cityscapes", "cocostuff"):
        spec = role_spec(fmt)
        assert spec.native.shape == spec.label.shape
    ade = role_spec("ade20k")
    assert not ade.instanced[list(ade.native).index(class_table("ade20k").id_of("tree"))]


def test_rle_and_polygons_round_trip():
    mask = np.zeros((9, 7), bool)
    mask[2:6, 1:4] = True
    mask[7, 5] = True                                            # a one-pixel component
    rle = rle_encode(mask)
    assert sum(rle["counts"]) == 63 and rle["size"] == [9, 7]
    assert np.array_equal(_rle_decode(rle), mask)
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]
    assert mask_polygons(mask) == [[1, 2, 4, 2, 4, 6, 1, 6], [5, 7, 6, 7, 6, 8, 5, 8]]   # pixel corners
    assert np.array_equal(_coco_paint(mask_polygons(mask), 9, 7), mask)
    assert mask_polygons(np.zeros((3, 3), bool)) == []
    assert mask_polygons(np.ones((3, 4), bool)) == [[0, 0, 4, 0, 4, 3, 0, 3]]


def _holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the outside of the image."""
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    return ~mask & (cv2.connectedComponents(outside, connectivity=4)[1][1:-1, 1:-1] != 1)


def _random_mask(rng, kind: str) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(1, 13 if kind == "checker" else 33, 2))
    m = np.zeros((h, w), np.uint8)
    if kind == "blobs":
        for _ in range(rng.integers(1, 4)):
            cv2.ellipse(m, (int(rng.integers(-3, w + 3)), int(rng.integers(-3, h + 3))),
                        (int(rng.integers(1, 12)), int(rng.integers(1, 12))), float(rng.uniform(0, 180)),
                        0, 360, 1, -1)
    elif kind == "lines":                                # 8-connected lines step diagonally: corner contacts
        for _ in range(rng.integers(1, 4)):
            p, q = (tuple(int(v) for v in rng.integers(-2, max(h, w) + 2, 2)) for _ in range(2))
            cv2.line(m, p, q, 1, 1, lineType=int(rng.choice([4, 8])))
    elif kind == "staircase":
        step = int(rng.integers(1, 4))
        for i in range(0, max(h, w), step):
            m[i:i + step, i:i + int(rng.integers(1, 3)) * step] = 1
        m = m[:, ::-1] if rng.random() < 0.5 else m
    elif kind == "checker":                              # pixels touching only at corners
        m[:] = (np.add.outer(np.arange(h), np.arange(w)) % 2) & (rng.random((h, w)) < rng.uniform(0.2, 0.9))
    else:                                                # "noise": many components, some with holes
        m[:] = rng.random((h, w)) < rng.uniform(0.2, 0.8)
    return m.astype(bool)


@pytest.mark.parametrize("kind", ["blobs", "lines", "staircase", "checker", "noise"])
def test_mask_polygons_paint_the_mask_through_pycocotools(kind):
    rng = np.random.default_rng(["blobs", "lines", "staircase", "checker", "noise"].index(kind))
    exact = 0
    for _ in range(60):
        mask = _random_mask(rng, kind)
        if rng.random() < 0.3:                           # reach the image border
            mask[rng.integers(mask.shape[0])] = True
        if rng.random() < 0.3:                           # or keep off some of it
            mask = np.pad(mask, rng.integers(0, 3, (2, 2)))
        polys = mask_polygons(mask)
        assert len(polys) == cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)[0] - 1
        for poly in polys:
            pts = np.array(poly).reshape(-1, 2)
            assert len(pts) >= 4 and np.all(pts == np.round(pts))
            assert len({tuple(p) for p in pts}) == len(pts)             # never touches itself
            steps = np.roll(pts, -1, 0) - pts
            assert np.all((steps == 0).sum(1) == 1)                      # axis-aligned edges,
            assert np.all((steps[:, 0] == 0) != (np.roll(steps[:, 0], 1) == 0))   # turning at every vertex
        painted, holes = _coco_paint(polys, *mask.shape), _holes(mask)
        if not holes.any():
            assert np.array_equal(painted, mask), (mask.astype(int), polys)
            exact += 1
        else:                                            # COCO polygons have no holes: at most they fill them
            assert np.all(painted[mask]) and not np.any(painted & ~mask & ~holes)
    assert exact >= 10


def test_mask_polygons_corner_contacts_and_pinched_holes():
    diagonal = np.eye(3, dtype=bool)
    assert mask_polygons(diagonal) == [[0, 0, 1, 0, 1, 1, 0, 1], [1, 1, 2, 1, 2, 2, 1, 2], [2, 2, 3, 2, 3, 3, 2, 3]]
    assert np.array_equal(_coco_paint(mask_polygons(diagonal), 3, 3), diagonal)
    # a ring closed only by a corner contact: the pixel it encloses is a hole, filled as COCO must
    pinched = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0]], bool)
    assert mask_polygons(pinched) == [[0, 0, 3, 0, 3, 2, 2, 2, 2, 3, 0, 3]]
    assert np.array_equal(_coco_paint(mask_polygons(pinched), 3, 3), pinched | _holes(pinched))


def test_cli_writes_dataset(tmp_path):
    res = CliRunner().invoke(cli, ["--quiet", "data", "toy", str(tmp_path / "t"), "--format", "cocostuff",
                                   "--n-train", "2", "--n-val", "1", "--size", "48x40", "--jobs", "2"])
    assert res.exit_code == 0, res.output
    lab = Image.open(next((tmp_path / "t" / "stuffthingmaps_trainval2017" / "val2017").iterdir()))
    assert lab.size == (48, 40)


# ------------------------------------------------------------------ realistic presets and density


def test_realistic_presets_and_density():
    from resail.cli import TOY_PRESETS
    from resail.pipeline.toy import PRESETS, render_image

    assert set(PRESETS) == set(TOY_PRESETS)
    cfg = ToyConfig.preset("cityscapes-real", n_train=3, n_val=1)
    assert (cfg.fmt, cfg.width, cfg.height, cfg.n_train) == ("cityscapes", 2048, 1024, 3)
    with pytest.raises(InputError, match="toy preset"):
        ToyConfig.preset("kitti-real")
    for bad in ({"objects": 0.0}, {"max_windows": -1}):
        with pytest.raises(InputError, match="density"):
            ToyConfig(**bad)
    # the default density leaves the manifest's parameters as they always were
    assert "objects" not in ToyConfig().params() and ToyConfig(objects=2.0).params()["objects"] == 2.0

    def objects(**density):
        c = ToyConfig(width=128, height=96, **density)
        return sum(len(np.unique(render_image(c, "train", i)[0].obj)) for i in range(6))

    assert objects(objects=0.5, max_windows=0) < objects() < objects(objects=3.0)


def test_cli_realistic_preset(tmp_path):
    args = ["--quiet", "data", "toy", "--n-train", "1", "--n-val", "1"]
    res = CliRunner().invoke(cli, [*args, str(tmp_path / "t"), "--format", "cocostuff", "--realistic",
                                   "--size", "64x48"])
    assert res.exit_code == 0, res.output
    params = json.loads((tmp_path / "t" / MANIFEST).read_text())["params"]
    assert (params["fmt"], params["width"], params["objects"]) == ("cocostuff", 64, 1.3)
    res = CliRunner().invoke(cli, [*args, str(tmp_path / "u"), "--format", "cityscapes", "--preset", "ade20k-real"])
    assert res.exit_code == 2 and "does not match" in res.output

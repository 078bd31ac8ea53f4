"""COCO instances: the streamed JSON, and masks exactly as pycocotools' `COCO.annToMask` draws them."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from pycocotools.coco import COCO

from builders.formats import rle_encode_compressed, write_coco
from resail.errors import InputError
from resail.pipeline.coco import coco_annotation_texts, coco_annotations, coco_instance_map
from resail.pipeline.datasets import MAJORITY, list_split, make_reader

H, W = 24, 32
# pycocotools' decode under numpy 2 (the reference annToMask; coco_instance_map silences its own)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")


def ann_to_mask(segs: list, h: int = H, w: int = W) -> list[np.ndarray]:
    """The reference: each segmentation through a real `COCO` object's annToMask, as bool."""
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": h, "width": w}], "categories": [{"id": 1, "name": "x"}],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": s}
                                    for i, s in enumerate(segs)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return [coco.annToMask(coco.anns[i + 1]).astype(bool) for i in range(len(segs))]


def painted(seg, h: int = H, w: int = W) -> np.ndarray:
    """One annotation's mask as `coco_instance_map` paints it."""
    return coco_instance_map([{"segmentation": seg, "iscrowd": 0}], (h, w), "x.png") > 0


def _star(rng, cx, cy, r0, r1, n):
    """A polygon around (cx, cy): sorted angles, radii in [r0, r1] (concave when they vary)."""
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(r0, r1, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()


def _thin(rng, width):
    """A bar `width` px wide (≤ 3) at a random angle, as a 4-vertex polygon."""
    x0, y0 = rng.uniform(0, W), rng.uniform(0, H)
    a, length = rng.uniform(0, np.pi), rng.uniform(3, 25)
    d = np.array([np.cos(a), np.sin(a)]) * length
    n = np.array([-np.sin(a), np.cos(a)]) * width
    p = np.array([x0, y0])
    return np.concatenate([p, p + d, p + d + n, p + n]).tolist()


SHAPES = {
    "random": lambda rng: [rng.uniform(0, [W, H] * 5, 10).tolist()],     # self-intersecting too
    "convex": lambda rng: [_star(rng, rng.uniform(5, W - 5), rng.uniform(5, H - 5), 4, 4, 12)],
    "concave": lambda rng: [_star(rng, rng.uniform(5, W - 5), rng.uniform(5, H - 5), 1, 9, 9)],
    "thin": lambda rng: [_thin(rng, rng.uniform(0.3, 3))],
    "tiny": lambda rng: [(rng.uniform(0, [W, H] * 3, 6) % 3 + rng.integers(0, 20)).tolist()],
    "integer": lambda rng: [rng.integers(0, [W, H] * 4, 8).astype(float).tolist()],
    "one-decimal": lambda rng: [np.round(rng.uniform(-3, [W + 3, H + 3] * 6, 12), 1).tolist()],  # 5x+0.5 ties
    "multi-part": lambda rng: [_star(rng, 7, 7, 2, 5, 7), _star(rng, 24, 16, 2, 5, 6), _thin(rng, 1.5)],
    "overlapping": lambda rng: [_star(rng, 12, 12, 3, 8, 8), _star(rng, 16, 12, 3, 8, 8)],
    "outside": lambda rng: [_star(rng, rng.choice([0, W]), rng.choice([0, H]), 5, 12, 8)],
}


@pytest.mark.parametrize("kind", SHAPES)
def test_polygons_match_ann_to_mask(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    segs = [SHAPES[kind](rng) for _ in range(40)]
    want = ann_to_mask(segs)
    for seg, m in zip(segs, want):
        assert np.array_equal(painted(seg), m), seg
    assert sum(m.any() for m in want) > 20   # the shapes paint something


def test_instance_maps_match_ann_to_mask_painted_in_order():
    """Whole images of every kind of shape and RLE, wherever they lie: each id's pixels are exactly
    annToMask's, later annotations over earlier ones."""
    rng = np.random.default_rng(7)
    kinds = list(SHAPES)
    for _ in range(30):
        segs = [SHAPES[kinds[i]](rng) for i in rng.integers(0, len(kinds), 8)]
        segs[3] = coco_mask.encode(np.asfortranarray((rng.random((H, W)) < 0.1).astype(np.uint8)))
        want = np.zeros((H, W), np.int32)
        k = 0
        for m in ann_to_mask(segs):
            if m.any():
                k += 1
                want[m] = k
        got = coco_instance_map([{"segmentation": s, "iscrowd": 0} for s in segs], (H, W), "x")
        assert np.array_equal(got, want)


def test_overlapping_parts_are_a_union():
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    seg = [square, [x + 5 for x in square]]
    m = painted(seg)
    assert np.array_equal(m, ann_to_mask([seg])[0]) and m[7, 7]   # even-odd would leave the overlap empty
    assert m.sum() == 2 * 100 - 25


def test_parts_of_fewer_than_three_vertices_paint_nothing():
    square = [1, 1, 9, 1, 9, 9, 1, 9]
    assert np.array_equal(painted([square, [2, 2, 20, 20]]), ann_to_mask([[square, [2, 2, 20, 20]]])[0])
    assert np.array_equal(painted([[2, 2, 20, 20], square]), painted([square]))  # pycocotools fails on this order
    for seg in ([], [[]], [[3, 3, 8, 8]], [[1, 2]]):
        assert not painted(seg).any()


def test_rle_uncompressed_and_compressed_match_ann_to_mask():
    rng = np.random.default_rng(3)
    masks = [rng.random((H, W)) < p for p in (0.0, 0.05, 0.4, 0.95, 1.0)]
    masks.append(np.zeros((H, W), bool))
    masks[-1][H - 1, W - 1] = True
    for m in masks:
        f = np.asfortranarray(m.astype(np.uint8))
        compressed = coco_mask.encode(f)
        flat = m.ravel(order="F")
        edges = np.flatnonzero(np.diff(flat)) + 1
        counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        uncompressed = {"size": [H, W], "counts": [0] * bool(flat[0]) + counts}
        for seg in (uncompressed, compressed, {"size": [H, W], "counts": compressed["counts"].decode()},
                    rle_encode_compressed(m)):
            assert np.array_equal(painted(seg), m)
        assert np.array_equal(ann_to_mask([uncompressed])[0], m)
    runs = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major: 0, then two 1s, then three 0s
    assert painted(runs, 2, 3).tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.parametrize("seg, match", [
    ({"size": [2, 3], "counts": [1, 2]}, "sum to 3, not 2"),
    ({"size": [2, 3], "counts": [1, 2, 9]}, "sum to 12"),
    ({"size": [2, 3], "counts": [1, -2, 7]}, "negative run"),
    ({"size": [2, 3], "counts": "1N"}, "negative run"),
    ({"size": [2, 3], "counts": [1.5, 4.5]}, "malformed COCO RLE"),
    ({"size": [3, 2], "counts": [6]}, r"size \(3, 2\), the label map \(2, 3\)"),
    ({"size": [2, 3], "counts": "1"}, "sum to 1, not 2"),
    ({"size": [2, 3], "counts": "7"}, "sum to 7, not"),   # a valid string must still sum to h*w ...
    ({"size": [2, 3], "counts": "0o"}, "malformed COCO RLE"),   # ... and end its last number
    ({"size": [2, 3], "counts": "0 "}, "malformed COCO RLE"),
    ({"counts": [6]}, "malformed COCO RLE"),
    ([[0, 0, 2, 0, 2, 2, 1]], "not an even count of numbers"),
    ([[0, 0, 2, 0, 2, 2], [1, 1, 2]], "not an even count of numbers"),
    ([[0, 0, 2, 0, 2, float("nan")]], "not a finite number"),
    ([[0, 0, 2, 0, 2, 2], [float("inf"), 0, 2, 0, 2, 2]], "not a finite number"),
    ([["a", 0, 2, 0, 2, 2]], "not a finite number"),
    ([{"x": 1}], "not an even count of numbers"),
    ([[0, 0, 2, 0, 2, 1e12]], r"outside \[-3, 6\]"),
    ([[0, 0, -4, 0, 2, 2]], r"outside \[-3, 6\]"),
    ("0 0 2 0 2 2", "neither polygons nor RLE"),
])
def test_malformed_segmentations_are_one_clear_error(seg, match):
    with pytest.raises(InputError, match=match) as e:
        coco_instance_map([{"segmentation": seg, "iscrowd": 0}], (2, 3), "000000000009.png")
    assert str(e.value).startswith("000000000009.png: ") and "\n" not in str(e.value)
    coco_instance_map([{"segmentation": seg, "iscrowd": 1}], (2, 3), "x")   # a crowd one is never read


def test_compressed_rle_deltas_and_long_runs():
    for m in (np.ones((300, 700), bool), np.eye(50, 70, dtype=bool), np.zeros((1, 1), bool)):
        seg = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
        assert np.array_equal(painted(seg, *m.shape), m)
    seg = {"size": [2, 3], "counts": "131N"}   # 1, 3, 1, then 'N' = -2 against the 3 two back: runs 1, 3, 1, 1
    assert painted(seg, 2, 3).ravel(order="F").tolist() == [False, True, True, True, False, True]


def test_painting_order_ids_and_crowd():
    square = lambda x, y, s: [[x, y, x + s, y, x + s, y + s, x, y + s]]  # noqa: E731
    crowd = coco_mask.encode(np.asfortranarray(np.ones((H, W), np.uint8)))
    anns = [{"segmentation": square(0, 0, 10), "iscrowd": 0},
            {"segmentation": crowd, "iscrowd": 1},                     # skipped
            {"segmentation": square(5, 5, 10), "iscrowd": 0},          # overwrites the first
            {"segmentation": [[4, 4, 8, 8, 12, 12]], "iscrowd": 0},    # no area: no id
            {"segmentation": square(40, 40, 5), "iscrowd": 0},         # outside the image: no id
            {"segmentation": {"size": [H, W], "counts": [H * 20 + 2, 3, H * W - H * 20 - 5]}, "iscrowd": 0}]
    inst = coco_instance_map(anns, (H, W), "x")
    want = np.zeros((H, W), np.int32)
    masks = ann_to_mask([a["segmentation"] for a in anns])
    for k, i in enumerate((0, 2, 5), start=1):
        want[masks[i]] = k
    assert np.array_equal(inst, want) and inst.dtype == np.int32
    assert inst[2, 2] == 1 and inst[7, 7] == 2 and inst[3, 20] == 3 and inst.max() == 3
    assert not coco_instance_map([a for a in anns if a["iscrowd"]], (H, W), "x").any()


def _coco_doc():
    poly = lambda x, y: [[x, y, x + 4, y, x + 4, y + 4, x, y + 4]]  # noqa: E731
    return {"info": {"note": "é ünïcode, [brackets] and {braces}"},
            "annotations": [{"id": 1, "image_id": 7, "segmentation": poly(0, 0), "iscrowd": 0},
                            {"id": 2, "image_id": 3, "segmentation": {"size": [2, 3], "counts": [1, 2, 3]}},
                            {"id": 3, "image_id": 7, "segmentation": poly(2, 2), "iscrowd": 1, "bbox": [1, 2]}],
            "images": [{"id": 3, "file_name": "b.jpg"}, {"id": 7, "file_name": "a.jpg"}, {"id": 9, "file_name": "c.jpg"}],
            "categories": []}


@pytest.mark.parametrize("indent", [None, 2])
def test_coco_annotation_texts_parse_to_what_json_loads_gives(indent):
    """The compact per-image texts, parsed by the worker, equal the whole file parsed at once."""
    doc = _coco_doc()
    texts = coco_annotation_texts(json.dumps(doc, indent=indent, ensure_ascii=False))
    assert set(texts) == {"a", "b"} and all(isinstance(t, bytes) for t in texts.values())
    stems = {img["id"]: Path(img["file_name"]).stem for img in doc["images"]}
    for stem, text in texts.items():
        want = [{"segmentation": a["segmentation"], "iscrowd": int(a.get("iscrowd", 0))}
                for a in doc["annotations"] if stems[a["image_id"]] == stem]
        assert coco_annotations(text) == want
    assert coco_annotations(b"") == []


@pytest.mark.parametrize("layout", ["stuffthingmaps_trainval2017", "stuffthingmaps", "next"])
def test_cocostuff_layouts_offset_void_and_crowd(tmp_path, layout):
    write_coco(tmp_path, layout=layout)
    r = make_reader("cocostuff", tmp_path)
    recs = list_split(r, "train")
    assert [x.image_id for x in recs] == ["000000000009", "000000000025"]
    s = r.load(recs[0])
    assert s.label_map[0, 0] == 157 and s.label_map[-1, -1] == 0 and s.label_map[12, 7] == 1
    assert s.instance_map.max() == 1 and s.instance_classes[1] == MAJORITY   # the crowd RLE is skipped
    # the polygon (5,10)-(15,20) covers pixels 5..14 × 10..19, as annToMask draws it
    assert s.instance_map[24, 25] == 0 and (s.instance_map == 1).sum() == 10 * 10
    assert (s.instance_map[10:20, 5:15] == 1).all()

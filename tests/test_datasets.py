"""Readers on tiny fixtures in the official formats, including their quirks, and bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.formats import ADE_THING, rle_encode_compressed, write_ade, write_cityscapes, write_coco, write_folder
from resail.errors import InputError
from resail.pipeline.classes import class_table, parse_category_mapping
from resail.pipeline.datasets import (
    MAJORITY,
    coco_annotation_texts,
    coco_annotations,
    coco_instance_map,
    list_split,
    make_reader,
    polygons_to_mask,
    rle_decode,
)


def test_ade20k_reader_instances_via_category_mapping(tmp_path):
    write_ade(tmp_path)
    r = make_reader("ade20k", tmp_path)          # finds ADEChallengeData2016/ below the root
    recs = list_split(r, "train")
    assert [x.image_id for x in recs] == [f"ADE_train_{i:08d}" for i in (1, 2, 3)]
    s = r.load(recs[0])
    assert s.image.dtype == np.uint8 and s.image.shape == (40, 48, 3)
    assert s.label_map.dtype == np.int32 and set(np.unique(s.label_map)) == {0, 1, 3, 4, ADE_THING}
    assert s.instance_map.max() == 2 and list(s.instance_classes[1:]) == [ADE_THING, ADE_THING]
    assert list_split(r, "val")[0].image_id == "ADE_val_00000001"


def test_ade20k_quirks_double_tabs_and_trailing_spaces():
    text = "Instacne100\tSceneParse150\tFullADE20K\n1\t\t8\t\t165\n4\t\t13\t\t1831\n"
    assert parse_category_mapping(text) == {1: 8, 4: 13}
    names = class_table("ade20k").names
    assert all(n == n.strip() for n in names) and class_table("ade20k").name(8) == "bed"


def test_ade20k_without_instances_warns_once(tmp_path, caplog):
    write_ade(tmp_path, instances=False)
    with caplog.at_level(logging.WARNING, logger="resail"):
        r = make_reader("ade20k", tmp_path)
        for rec in list_split(r, "train"):
            assert r.load(rec).instance_map is None
    assert sum("annotations_instance" in m for m in caplog.messages) == 1


def test_ade20k_outdoor_needs_and_applies_image_list(tmp_path):
    write_ade(tmp_path)
    with pytest.raises(InputError, match="--image-list"):
        make_reader("ade20k-outdoor", tmp_path)
    lst = tmp_path / "outdoor.txt"
    lst.write_text("# outdoor\nADE_train_00000002.jpg\nADE_val_00000001\n")
    r = make_reader("ade20k-outdoor", tmp_path, lst)
    assert [x.image_id for x in list_split(r, "train")] == ["ADE_train_00000002"]
    assert [x.image_id for x in list_split(r, "val")] == ["ADE_val_00000001"]


def test_cityscapes_16bit_instances_and_groups(tmp_path):
    write_cityscapes(tmp_path, city="aachen")
    write_cityscapes(tmp_path, city="zurich", n=1)
    with Image.open(next((tmp_path / "gtFine").rglob("*instanceIds.png"))) as im:
        assert im.mode.startswith("I")
    r = make_reader("cityscapes", tmp_path)
    recs = list_split(r, "train")
    assert len(recs) == 3 and recs[-1].image_id == "zurich_000000_000019"
    s = r.load(recs[0])
    assert list(s.instance_classes[1:]) == [24, 26, 26]   # 24000, 26000, 26001; the group (26) is no instance
    assert s.instance_map[22, 45] == 0 and s.label_map[22, 45] == 26


@pytest.mark.parametrize("layout", ["stuffthingmaps_trainval2017", "stuffthingmaps", "next"])
def test_cocostuff_layouts_offset_void_and_crowd(tmp_path, layout):
    write_coco(tmp_path, layout=layout)
    r = make_reader("cocostuff", tmp_path)
    recs = list_split(r, "train")
    assert [x.image_id for x in recs] == ["000000000009", "000000000025"]
    s = r.load(recs[0])
    assert s.label_map[0, 0] == 157 and s.label_map[-1, -1] == 0 and s.label_map[12, 7] == 1
    assert s.instance_map.max() == 1 and s.instance_classes[1] == MAJORITY   # the crowd RLE is skipped
    assert s.instance_map[24, 25] == 0 and (s.instance_map == 1).sum() == 11 * 11  # boundary-inclusive fill


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


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("images"), "images"),
    (lambda d: d.pop("annotations"), "annotations"),
    (lambda d: d["annotations"][0].pop("segmentation"), "segmentation"),
    (lambda d: d["annotations"][0].update(image_id=99), "99"),
])
def test_coco_reader_bad_instances_json_is_one_clear_error(tmp_path, edit, match):
    write_coco(tmp_path)
    path = tmp_path / "annotations/instances_train2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"].append({"id": 5, "image_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]]})
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"instances_train2017.json: unreadable.*{match}"):
        list_split(make_reader("cocostuff", tmp_path), "train")
    path.write_text(json.dumps(doc)[:-5])
    with pytest.raises(InputError, match="unreadable COCO instances JSON"):
        list_split(make_reader("cocostuff", tmp_path), "train")


def test_coco_rle_compressed_and_uncompressed(tmp_path):
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = rng.random((17, 23)) < 0.4
        assert np.array_equal(rle_decode(rle_encode_compressed(m)), m)
    runs = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major: 0, then two 1s, then three 0s
    assert rle_decode(runs).tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(InputError, match="RLE"):
        rle_decode({"size": [2, 3], "counts": [1, 2]})


def test_coco_polygon_and_overlap_order():
    m = polygons_to_mask([[0, 0, 4, 0, 4, 3, 0, 3]], 6, 6)
    assert m.sum() == 5 * 4 and m[:4, :5].all()
    anns = [{"segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "iscrowd": 0},
            {"segmentation": [[3, 3, 6, 3, 6, 6, 3, 6]], "iscrowd": 0}]
    inst = coco_instance_map(anns, (8, 8), "x")
    assert inst[3, 3] == 2 and inst[0, 0] == 1   # later annotations overwrite earlier ones


def test_folder_reader(tmp_path):
    write_folder(tmp_path)
    r = make_reader("folder", tmp_path)
    assert r.table.ids == (1, 2, 5) and r.table.thing(2)
    s = r.load(list_split(r, "train")[0])
    assert s.instance_map.max() == 1 and s.instance_classes[1] == MAJORITY


# ---------------------------------------------------------------- bad input


def test_missing_folder_and_empty_split(tmp_path):
    with pytest.raises(InputError, match="missing"):
        make_reader("ade20k", tmp_path / "nope")
    write_ade(tmp_path, n_val=0)
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016/annotations/validation").mkdir(parents=True)
    r = make_reader("ade20k", tmp_path)
    with pytest.raises(InputError, match="no images"):
        list_split(r, "val")
    with pytest.raises(InputError, match="leftImg8bit"):
        list_split(make_reader("cityscapes", tmp_path), "train")


def test_size_mismatch_truncated_and_foreign_ids(tmp_path):
    base = write_ade(tmp_path)
    r = make_reader("ade20k", tmp_path)
    recs = list_split(r, "train")
    Image.fromarray(np.ones((10, 10), np.uint8)).save(recs[0].label_path)
    with pytest.raises(InputError, match="does not match image"):
        r.load(recs[0])
    data = Path(recs[1].image_path).read_bytes()
    Path(recs[1].image_path).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        r.load(recs[1])
    lab = np.array(Image.open(recs[2].label_path))
    lab[0, 0] = 200
    Image.fromarray(lab).save(recs[2].label_path)
    with pytest.raises(InputError, match=r"label ids \[200\]"):
        r.load(recs[2])
    png = Path(base / "annotations/validation/ADE_val_00000001.png")
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(InputError, match="ADE_val_00000001.png"):
        r.load(list_split(r, "val")[0])

"""Readers on tiny fixtures in the official formats, including their quirks, and bad input (a file name
that is not UTF-8 among them)."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.formats import ADE_THING, write_ade, write_cityscapes, write_coco, write_folder
from resail.errors import InputError
from resail.pipeline.datasets import MAJORITY, list_split, make_reader
from resail.pipeline.labels.classes import class_table, parse_category_mapping


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


def test_ade20k_outdoor_from_an_image_list_or_a_folder_of_the_subset(tmp_path):
    write_ade(tmp_path)
    # a folder in the ADE20K layout that holds only the subset: every image in it (found one level down)
    whole = make_reader("ade20k-outdoor", tmp_path)
    assert len(list_split(whole, "train")) == 3 and whole.root.name == "ADEChallengeData2016"
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


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
    root = write_folder(tmp_path / "f", n=1, instances=False)
    bad = os.fsdecode(b"img\xff")
    for sub in ("images", "labels"):
        shutil.copy(root / sub / "train/img000.png", root / sub / "train" / f"{bad}.png")
    from resail.pipeline.datasets import list_split

    with pytest.raises(InputError, match=r"img\\xff.png: the file name is not valid UTF-8"):
        list_split(make_reader("folder", root), "train")


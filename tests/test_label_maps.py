"""Label maps as users have them (labels/files.py): class ids in each dataset's id spaces,
Cityscapes labelIds vs trainIds and their one ambiguity, colour maps in the palettes both ways,
unknown colours, the evaluation id spaces against the shipped tables, and the one size rule that
synthesize, serve and index query share."""

import csv
import io
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from resail.errors import InputError
from resail.pipeline.labels.classes import ade20k_palette150, class_table
from resail.pipeline.labels.files import (
    MAX_SIDE,
    LabelSizeError,
    aspect_note,
    encode_label_map,
    read_instance_map,
    read_label_map,
)
from resail.pipeline.labels.spaces import eval_id_space


def png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def cityscapes_rows() -> list[dict]:
    text = resources.files("resail").joinpath("data", "cityscapes_labels.csv").read_text()
    return list(csv.DictReader(text.splitlines()))


def scene(ids: list[int], h: int = 16, w: int = 24) -> np.ndarray:
    """Vertical stripes of `ids`, every id on at least one column."""
    return np.asarray(ids, np.int64)[np.arange(w) * len(ids) // w][None].repeat(h, 0)


CITY = class_table("cityscapes").ids
ADE = class_table("ade20k").ids
COCO = class_table("cocostuff").ids


# ---------------------------------------------------------------- class ids


def test_cityscapes_labelids_and_trainids_are_told_apart_and_the_ambiguous_case_is_refused():
    label_ids = scene([0, 7, 8, 11, 23, 26, 33]).astype(np.uint8)
    got = read_label_map(png(label_ids), "cityscapes", class_ids=CITY)
    assert got.format == "ids" and "labelIds" in got.how
    np.testing.assert_array_equal(got.label_map, label_ids)

    # trainIds: every evaluated class maps back to its labelId (checked against the shipped table), 255 → void
    train_to_label = {int(r["trainId"]): int(r["id"]) for r in cityscapes_rows() if 0 <= int(r["trainId"]) < 255}
    train = scene([255, *range(19)]).astype(np.uint8)
    got = read_label_map(png(train), "cityscapes", class_ids=CITY)
    assert got.format == "trainids"
    want = np.vectorize(lambda t: train_to_label.get(int(t), 0))(train)
    np.testing.assert_array_equal(got.label_map, want)

    ambiguous = scene([0, 1, 2, 13]).astype(np.uint8)  # road, sidewalk, building, car — or four labelIds
    with pytest.raises(InputError, match="name its label format: ids \\(labelIds\\) or trainids"):
        read_label_map(png(ambiguous), "cityscapes", class_ids=CITY)
    as_train = read_label_map(png(ambiguous), "cityscapes", "trainids", class_ids=CITY)
    np.testing.assert_array_equal(np.unique(as_train.label_map), [7, 8, 11, 26])
    np.testing.assert_array_equal(read_label_map(png(ambiguous), "cityscapes", "ids").label_map, ambiguous)

    mixed = scene([255, 26]).astype(np.uint8)
    with pytest.raises(InputError, match="one id space"):
        read_label_map(png(mixed), "cityscapes")
    with pytest.raises(InputError, match="not Cityscapes trainIds"):
        read_label_map(png(scene([0, 26]).astype(np.uint8)), "cityscapes", "trainids")
    with pytest.raises(InputError, match="only Cityscapes has trainIds"):
        read_label_map(png(scene([0, 1]).astype(np.uint8)), "ade20k", "trainids")


def test_cocostuff_ids_are_stuffthingmap_values_both_ways_and_unknown_ids_are_named():
    native = scene([0, 1, 92, 182])
    stuffthing = encode_label_map(native, "cocostuff")
    np.testing.assert_array_equal(np.unique(stuffthing), [0, 91, 181, 255])   # value = native − 1, void = 255
    got = read_label_map(png(stuffthing), "cocostuff", class_ids=COCO)
    np.testing.assert_array_equal(got.label_map, native)
    with pytest.raises(InputError, match=r"values \[200\] are not COCO-Stuff"):
        read_label_map(png(scene([0, 200]).astype(np.uint8)), "cocostuff")
    with pytest.raises(InputError, match=r"class ids \[151\] are not in the ade20k class table"):
        read_label_map(png(scene([1, 151]).astype(np.uint8)), "ade20k", class_ids=ADE)


def test_image_modes_16_bit_palette_indexed_and_grey_rgb():
    ids = scene([0, 3, 300, 1000]).astype(np.uint16)    # a folder dataset's ids above 255
    got = read_label_map(png(ids), "folder", class_ids=[3, 300, 1000])
    np.testing.assert_array_equal(got.label_map, ids)
    assert encode_label_map(got.label_map, "folder").dtype == np.uint16

    ade = scene([0, 1, 7, 150]).astype(np.uint8)
    indexed = Image.fromarray(ade, mode="L").convert("P")                # indexed: the index is the id
    buf = io.BytesIO()
    indexed.save(buf, format="PNG")
    np.testing.assert_array_equal(read_label_map(buf.getvalue(), "ade20k", class_ids=ADE).label_map, ade)
    grey = read_label_map(png(np.dstack([ade] * 3)), "ade20k", class_ids=ADE)   # ids saved as RGB
    assert grey.format == "ids"
    np.testing.assert_array_equal(grey.label_map, ade)
    with pytest.raises(InputError, match="not colours"):
        read_label_map(png(ade), "ade20k", "color")


# ---------------------------------------------------------------- colours


@pytest.mark.parametrize("dataset, ids", [
    ("ade20k", [0, 1, 2, 7, 49, 150]),
    ("cityscapes", [0, 5, 7, 11, 17, 23, 26, 33]),   # not 1..4 nor 18: they share colours with 0 and 17
    ("cocostuff", [0, 1, 12, 92, 182]),
])
def test_palette_detection_both_ways(dataset, ids):
    native = scene(ids)
    table = class_table(dataset)
    color = encode_label_map(native, dataset, "color")
    assert color.shape == (*native.shape, 3)
    np.testing.assert_array_equal(color[0, -1], table.palette(256)[ids[-1]])   # the project's palette
    got = read_label_map(png(color), dataset, class_ids=table.ids)           # auto: recognised as colours
    assert got.format == "color"
    np.testing.assert_array_equal(got.label_map, native)
    # ... and written back as ids, read as ids: the same map
    back = read_label_map(png(encode_label_map(got.label_map, dataset, "ids")), dataset, "ids", class_ids=table.ids)
    np.testing.assert_array_equal(back.label_map, native)
    # RGBA (Cityscapes' _color.png is RGBA): alpha is dropped
    rgba = np.dstack([color, np.full(native.shape, 255, np.uint8)])
    np.testing.assert_array_equal(read_label_map(png(rgba), dataset, "color").label_map, native)


def test_cityscapes_official_colours_and_shared_colours_decode_to_the_lowest_id():
    rows = {int(r["id"]): (int(r["color_r"]), int(r["color_g"]), int(r["color_b"])) for r in cityscapes_rows()}
    rgb = np.array([[rows[26], rows[2], rows[18], rows[-1], rows[7]]], np.uint8).repeat(8, 0).repeat(2, 1)
    got = read_label_map(png(rgb), "cityscapes").label_map
    np.testing.assert_array_equal(got[0, ::2], [26, 0, 17, 26, 7])  # border→unlabeled, polegroup→pole, plate→car


def test_the_common_ade20k_palette_is_read_too():
    pal = ade20k_palette150()
    ids = [1, 7, 49, 150]
    rgb = np.array([[pal[c] for c in ids] + [(0, 0, 0)]], np.uint8).repeat(8, 0).repeat(2, 1)
    got = read_label_map(png(rgb), "ade20k", class_ids=ADE)
    assert got.format == "color" and "color150" in got.how
    np.testing.assert_array_equal(got.label_map[0, ::2], [1, 7, 7, 150, 0])   # 49 shares road's colour


def test_unknown_colours_are_listed_by_pixel_count():
    native = scene([1, 2, 3], h=10, w=30)
    color = encode_label_map(native, "ade20k", "color")
    strays = [(1, 2, 3), (9, 9, 9), (250, 0, 1), (4, 4, 200), (77, 1, 1), (66, 6, 6)]
    for i, c in enumerate(strays):   # stray i covers 6 − i pixels
        color[i, :6 - i] = c
    with pytest.raises(InputError) as e:
        read_label_map(png(color), "ade20k", class_ids=ADE, where="user.png")
    msg = str(e.value)
    assert msg.startswith("user.png: 6 colour(s) are not in the ade20k palette: (1,2,3) on 6 px, (9,9,9) on 5 px")
    assert "(77,1,1) on 2 px and 1 more" in msg and "(66,6,6)" not in msg
    with pytest.raises(InputError, match="not class ids"):
        read_label_map(png(color), "ade20k", "ids")
    with pytest.raises(InputError, match="no such file"):
        read_label_map("/nonexistent/label.png", "ade20k")
    with pytest.raises(InputError, match="corrupt or truncated"):
        read_label_map(png(color)[:60], "ade20k")


# ---------------------------------------------------------------- size


def test_instance_maps_are_read_by_the_label_reader(tmp_path):
    """Instance ids as written (16-bit ones too), checked against the label map's size; a colour
    PNG is refused."""
    label = np.zeros((12, 20), np.uint8)
    inst = np.arange(240, dtype=np.uint16).reshape(12, 20) * 200   # ids up to 47,800
    Image.fromarray(inst).save(tmp_path / "inst.png")
    np.testing.assert_array_equal(read_instance_map(tmp_path / "inst.png", label, "l.png"), inst)
    with pytest.raises(InputError, match="must match pixel for pixel"):
        read_instance_map(tmp_path / "inst.png", label[:, :10], "l.png")
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="rgb.png: an instance map of mode RGB; write a single-channel PNG"):
        read_instance_map(tmp_path / "rgb.png", label, "l.png")


def test_one_size_rule():
    with pytest.raises(LabelSizeError, match="at least 8 px") as small:
        read_label_map(png(np.zeros((4, 64), np.uint8)), "ade20k")
    assert not small.value.too_large
    with pytest.raises(LabelSizeError, match="the limit is 64 px a side") as big:
        read_label_map(png(np.zeros((8, 65), np.uint8)), "ade20k", max_side=64)
    assert big.value.too_large and MAX_SIDE == 4096
    assert aspect_note((96, 96), (96, 96)) == "" and aspect_note((100, 99), (96, 96)) == ""   # within 2 %
    note = aspect_note((96, 192), (96, 96), "map.png")
    assert note.startswith("map.png is 192x96 and the run makes 96x96") and "stretches" in note


# ---------------------------------------------------------------- evaluation id spaces


def test_eval_id_spaces_follow_the_shipped_tables():
    city = eval_id_space("cityscapes")
    rows = cityscapes_rows()
    label_ids = np.array([int(r["id"]) for r in rows if int(r["id"]) >= 0])
    want = [int(r["trainId"]) if int(r["trainId"]) < 255 else -1 for r in rows if int(r["id"]) >= 0]
    np.testing.assert_array_equal(city.from_native(label_ids), want)
    assert city.ids == tuple(range(19)) and city.names[0] == "road" and city.names[18] == "bicycle"

    ade = eval_id_space("ade20k-outdoor")
    np.testing.assert_array_equal(ade.from_native([0, 1, 150, 151]), [-1, 1, 150, -1])
    assert ade.ids == tuple(range(1, 151)) and ade.names[0] == "wall"

    coco = eval_id_space("cocostuff")
    np.testing.assert_array_equal(coco.from_native([0, 1, 182]), [-1, 0, 181])   # native − 1, void ignored
    assert coco.ids == tuple(range(182)) and coco.names[0] == "person"

    folder = eval_id_space("folder", [3, 9], {3: "a", 9: "b"})
    np.testing.assert_array_equal(folder.from_native([0, 3, 9, 4]), [-1, 3, 9, -1])


def test_label_maps_and_index_query_do_not_import_torch():
    code = ("import sys, resail.cli, resail.pipeline.labels.files, resail.pipeline.guidance, resail.index.query; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the three commands


@pytest.mark.usefixtures("one_thread")
def test_synthesize_serve_and_index_query_share_the_size_rule(shared_tiny_run, tmp_path, capsys):
    """A map of another aspect ratio is accepted everywhere (stretched to the model size, and said
    so where there is a model); one under 8 px a side is refused everywhere with the same words."""
    from resail.cli import main
    from resail.pipeline.datasets import make_reader
    from resail.synth.serve import ServeConfig, Synthesizer, UploadError
    from resail.synth.synthesize import SynthesizeConfig, synthesize

    work = shared_tiny_run.work
    reader = make_reader("ade20k", shared_tiny_run.root)
    label = reader.load(reader.records("val")[0]).label_map.astype(np.uint8)     # 96×96, the model size
    wide, small = np.repeat(label, 2, axis=1), label[:4]                         # 192×96; 96×4
    (tmp_path / "wide.png").write_bytes(png(wide))
    (tmp_path / "small.png").write_bytes(png(small))
    refused = "small.png: label map is 96x4; it needs at least 8 px a side"

    res = synthesize(SynthesizeConfig(work, "tiny", tmp_path / "wide.png", tmp_path / "o.png", k=2))
    assert res.image.shape == (96, 96, 3) and len(res.notes) == 1 and "stretches its aspect ratio 2.00" in res.notes[0]
    with pytest.raises(InputError, match=refused):
        synthesize(SynthesizeConfig(work, "tiny", tmp_path / "small.png", tmp_path / "o.png", k=2))

    synth = Synthesizer(ServeConfig(work, "tiny", k=2))
    try:
        state = synth.state(synth.generate(png(wide)))
        assert len(state["notes"]) == 1 and "stretches its aspect ratio 2.00" in state["notes"][0]
        assert synth.editor_label_map(label, synth.read_label_png(png(label)))["notes"] == []
        with pytest.raises(UploadError, match="uploaded label map: label map is 96x4; it needs at least 8 px") as e:
            synth.generate(png(small))
        assert e.value.status == 422
    finally:
        synth.close()

    assert main(["index", "query", str(work), "--label", str(tmp_path / "wide.png"), "--k", "2", "--quiet"]) == 0
    assert "segment 0" in capsys.readouterr().out
    assert main(["index", "query", str(work), "--label", str(tmp_path / "small.png"), "--quiet"]) == 1
    assert refused in capsys.readouterr().err

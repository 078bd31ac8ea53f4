"""Every dataset reader through every command, on tiny toy data of its format.

One chain per format, as a user with that dataset on disk would type it: `index build` → `guidance
bake` train and val → `segnet train` → `train` (2 steps) → `eval` → `synthesize` → `index query`,
then one `serve` generate in process. The formats: ADE20K, ADE20K-outdoor (an image list, and a
folder holding only the subset), Cityscapes, COCO-Stuff as downloaded and as SPADE prepares it,
and the custom folder format. The toy presets take their label table from the work directory's
classes on every dataset but ADE20K (whose toy table is fixed), so this also checks that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.layouts import ade_as_folder, ade_outdoor_folder, spade_coco
from builders.work import toy_dataset
from resail.cli import main
from resail.pipeline.datasets import list_split, make_reader
from resail.pipeline.guidance import decompose_label_map
from resail.pipeline.labels.files import read_store_label_map
from resail.synth.serve import ServeConfig, Synthesizer

SIZE = 64
OUTDOOR = {"ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000004", "ADE_train_00000005",
           "ADE_val_00000001", "ADE_val_00000002"}


@pytest.fixture(scope="module")
def toy_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("formats")
    ade = toy_dataset(base / "ade", n_train=6, n_val=2, size=SIZE, seed=1)
    coco = toy_dataset(base / "coco", n_train=4, n_val=2, size=SIZE, seed=2, fmt="cocostuff")
    cityscapes = toy_dataset(base / "cityscapes", n_train=4, n_val=2, size=(2 * SIZE, SIZE), seed=3, fmt="cityscapes")
    (base / "outdoor.txt").write_text("# the outdoor subset\n" + "\n".join(sorted(OUTDOOR)) + "\n")
    return {
        "ade20k": ade, "cityscapes": cityscapes, "cocostuff": coco, "list": base / "outdoor.txt",
        "outdoor": ade_outdoor_folder(ade, base / "ADEData2016_outdoor", OUTDOOR),
        "spade": spade_coco(coco, base / "coco_spade"), "folder": ade_as_folder(ade, base / "folder"),
    }


# name → (dataset, root key, extra index-build flags)
CASES = {
    "ade20k": ("ade20k", "ade20k", []),
    "ade20k-outdoor-list": ("ade20k-outdoor", "ade20k", ["--image-list", "list"]),
    "ade20k-outdoor-folder": ("ade20k-outdoor", "outdoor", []),
    "cityscapes": ("cityscapes", "cityscapes", []),
    "cocostuff": ("cocostuff", "cocostuff", []),
    "cocostuff-spade": ("cocostuff", "spade", []),
    "folder": ("folder", "folder", []),
}


def run(*args) -> None:
    assert main([str(a) for a in args] + ["--quiet"]) == 0, f"resail {' '.join(map(str, args))} failed"


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_on_every_format(case, toy_roots, tmp_path, one_thread, capsys):
    dataset, root_key, extra = CASES[case]
    root, work = toy_roots[root_key], tmp_path / "work"
    extra = [toy_roots[v] if v in toy_roots else v for v in extra]
    run("index", "build", "--dataset", dataset, "--root", root, "--work", work, *extra)
    if case.startswith("ade20k-outdoor"):
        chosen = {r.image_id for s in ("train", "val") for r in list_split(make_reader("ade20k", toy_roots["ade20k"]), s)
                  if r.image_id in OUTDOOR}
        stored = {i for s in ("train", "val") for i in _image_ids(work, s)}
        assert stored == chosen == OUTDOOR
    for split in ("train", "val"):
        run("guidance", "bake", work, "--split", split, "--size", f"{SIZE}x{SIZE}", "--previews", 0)
    run("segnet", "train", work, "--preset", "toy64", "--steps", 1, "--batch-size", 2, "--workers", 0)
    run("train", work, "--preset", "toy64", "--name", "r", "--steps", 2, "--batch-size", 2, "--workers", 0)
    run("eval", work, "--run", "r", "--no-fid", "--workers", 0, "--batch-size", 2, "--grid", 0)
    metrics = json.loads((work / "eval" / "r" / "metrics.json").read_text())
    assert metrics["n_images"] == len(_image_ids(work, "val")) and 0 <= metrics["segmentation"]["real"]["miou"] <= 1

    val = list_split(make_reader(dataset, root), "val")[0]
    out = tmp_path / "out.png"
    run("synthesize", work, "--run", "r", "--label", val.label_path, "--out", out, "--seed", 1)
    assert np.asarray(Image.open(out)).shape == (SIZE, SIZE, 3)
    capsys.readouterr()
    run("index", "query", work, "--label", val.label_path, "--k", 2)
    printed = capsys.readouterr().out
    native = read_store_label_map(work, Path(val.label_path)).label_map
    _, segments = decompose_label_map(work, native)
    assert segments and printed.count("\nsegment ") + printed.startswith("segment ") == len(segments)

    synth = Synthesizer(ServeConfig(work, "r", k=2))
    try:
        session = synth.generate(Path(val.label_path).read_bytes(), seed=0)
        assert session.synthesis.image.shape == session.synthesis.guidance.shape == (SIZE, SIZE, 3)
        assert len(session.synthesis.choices()) == len(segments)
    finally:
        synth.close()


def _image_ids(work: Path, split: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(work / "segments" / f"{split}_images.parquet", columns=["image_id"])["image_id"].to_pylist()


@pytest.mark.parametrize("flags", [[], ["--preserved-ratio", 0.3, "--uncovered-things", "components", "--max-side", 48]])
def test_a_users_label_map_is_cut_by_the_stores_rules(flags, toy_roots, tmp_path, capsys):
    """A val image given as a user's label map + instance map (index query, synthesize and serve
    decompose it this way) yields exactly the segments the store holds for it, under the default
    and under non-default stage-1 parameters."""
    import pyarrow.parquet as pq

    from resail.pipeline.labels.files import read_instance_map

    work = tmp_path / "work"
    run("index", "build", "--dataset", "folder", "--root", toy_roots["folder"], "--work", work, *flags)
    store = pq.read_table(work / "segments" / "val.parquet")
    val = list_split(make_reader("folder", toy_roots["folder"]), "val")[0]
    rows = np.asarray(store["image_id"].to_pylist()) == val.image_id
    columns = ("class_id", "bbox_y0", "bbox_x0", "bbox_h", "bbox_w", "area")
    want = list(zip(*(store[c].to_numpy()[rows].tolist() for c in columns)))
    native = read_store_label_map(work, Path(val.label_path), "ids").label_map
    _, segments = decompose_label_map(work, native, read_instance_map(val.instance_path, native, val.label_path))
    got = [(s.class_id, s.y0, s.x0, s.h, s.w, s.area) for s in segments]
    assert got == want and got
    # the same segments through the command a user types
    run("index", "query", work, "--label", val.label_path, "--instance", val.instance_path, "--k", 1)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("segment ")]
    assert [tuple(int(f.split("=")[1]) for f in line.split()[-5:]) for line in printed] == [g[1:] for g in got]


def test_spade_prepared_coco_reads_the_segments_of_the_coco_layout(toy_roots):
    """The same scenes read from COCO-Stuff as downloaded and from SPADE's prepared folders
    (instance counters painted over the label values): each instance of the COCO layout is one
    instance of the SPADE layout, which holds the same pixels plus, at most, pixels of its class
    that no annotation paints (crowd regions, unannotated pixels: the one ambiguity of that
    encoding, docs/decomposition.md); stuff segments are identical, and images without such
    pixels decompose identically."""
    from resail.pipeline.decompose import DecompositionRules, thing_lut

    raw, spade = make_reader("cocostuff", toy_roots["cocostuff"]), make_reader("cocostuff", toy_roots["spade"])
    assert (raw.layout, spade.layout) == ("coco", "spade")
    rules, lut = DecompositionRules("cocostuff"), thing_lut(raw.table.thing_ids())
    key = lambda s: (s.class_id, s.y0, s.x0, s.h, s.w, s.mask.tobytes())  # noqa: E731
    identical = total = 0
    for split in ("train", "val"):
        for a, b in zip(list_split(raw, split), list_split(spade, split), strict=True):
            assert a.image_id == b.image_id
            sa, sb = raw.load(a), spade.load(b)
            assert np.array_equal(sa.label_map, sb.label_map) and np.array_equal(sa.image, sb.image)
            unpainted = (sa.instance_map == 0) & lut[sa.label_map]
            for k in range(1, int(sa.instance_map.max()) + 1):
                mine = sa.instance_map == k
                (theirs,) = np.unique(sb.instance_map[mine])
                grown = (sb.instance_map == theirs) & ~mine
                assert theirs > 0 and not (grown & ~unpainted).any(), (a.image_id, k)
                assert (sa.label_map[grown] == np.bincount(sa.label_map[mine]).argmax()).all()
            assert not ((sb.instance_map > 0) & (sa.instance_map == 0) & ~unpainted).any()
            seg_a = rules.apply(sa.label_map, sa.instance_map, sa.instance_classes, lut)[3]
            seg_b = rules.apply(sb.label_map, sb.instance_map, sb.instance_classes, lut)[3]
            assert {key(s) for s in seg_a if not s.is_thing} == {key(s) for s in seg_b if not s.is_thing}
            if not unpainted.any():
                assert sorted(map(key, seg_a)) == sorted(map(key, seg_b)), a.image_id
            identical += len({key(s) for s in seg_a} & {key(s) for s in seg_b})
            total += len(seg_a)
    assert identical / total > 0.9

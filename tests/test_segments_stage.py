"""Stage 1 runner: resume after a crash, sharding, jobs, skip-when-done, bad input and stats; a corrupt
photo that fails a rebuild and keeps the store, 16-bit photos stored as themselves, a changed parameter
that asks for --rebuild, and nothing dropped silently (labels without photos, unmatched image lists)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.checks import SIDE, one_error_line, small_baked_work
from builders.formats import write_ade, write_folder
from builders.work import index_work, toy_dataset
from resail.cli import main
from resail.errors import InputError, StageError
from resail.index.retrieval import RetrievalIndex
from resail.pipeline import segments_stage
from resail.pipeline.runner import shard_range
from resail.pipeline.segments_stage import SegmentsConfig, build_segments, segment_stats
from resail.workdir import WorkDir

OUTPUTS = ("train.h5", "train.parquet", "train_images.parquet", "val.h5", "val.parquet", "val_images.parquet")


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    write_ade(root, n_train=11, n_val=5)
    return root


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(segments_stage, "PART_IMAGES", 3)


def _bytes(work):
    return {n: (Path(work) / "segments" / n).read_bytes() for n in OUTPUTS}


@pytest.fixture(scope="module")
def reference(ade, tmp_path_factory):
    work = tmp_path_factory.mktemp("ref")
    segments_stage.PART_IMAGES, old = 3, segments_stage.PART_IMAGES
    try:
        build_segments(SegmentsConfig("ade20k", ade, work))
    finally:
        segments_stage.PART_IMAGES = old
    return _bytes(work)


def test_shard_boundaries_are_exact():
    assert [shard_range(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_crash_then_resume_is_byte_identical(ade, tmp_path, reference):
    calls = []

    def crash(split, a, b):
        calls.append((split, a, b))
        if len(calls) == 3:
            raise RuntimeError("injected crash")

    cfg = SegmentsConfig("ade20k", ade, tmp_path)
    with pytest.raises(RuntimeError, match="injected"):
        build_segments(cfg, on_part=crash)
    assert not (tmp_path / "segments/manifest.json").exists()
    resumed = []
    build_segments(cfg, on_part=lambda *a: resumed.append(a))
    assert resumed[0] == ("train", 9, 11)          # the three finished parts were not redone
    assert _bytes(tmp_path) == reference
    assert not (tmp_path / "segments/parts").exists() and not (tmp_path / "segments.new").exists()


def test_jobs_and_shards_do_not_change_the_output(ade, tmp_path, reference):
    build_segments(SegmentsConfig("ade20k", ade, tmp_path / "j2", jobs=2))
    assert _bytes(tmp_path / "j2") == reference
    w = tmp_path / "sh"
    assert build_segments(SegmentsConfig("ade20k", ade, w, shard=(1, 3))) is None
    with pytest.raises(StageError, match="0/3, 2/3"):
        build_segments(SegmentsConfig("ade20k", ade, w, merge=True))
    build_segments(SegmentsConfig("ade20k", ade, w, shard=(0, 3)))
    build_segments(SegmentsConfig("ade20k", ade, w, shard=(2, 3), merge=True))
    assert _bytes(w) == reference
    # without --shard and --merge: the missing shards of the count already started, then the merge
    w2, seen = tmp_path / "rest", []
    build_segments(SegmentsConfig("ade20k", ade, w2, shard=(0, 2)))
    build_segments(SegmentsConfig("ade20k", ade, w2), on_part=lambda *a: seen.append(a))
    assert seen == [("train", 5, 8), ("train", 8, 11), ("val", 2, 5)]
    assert _bytes(w2) == reference


def test_up_to_date_other_params_and_rebuild(ade, tmp_path, caplog):
    cfg = SegmentsConfig("ade20k", ade, tmp_path)
    build_segments(cfg)
    mtime = (tmp_path / "segments/train.h5").stat().st_mtime_ns
    build_segments(cfg)
    assert (tmp_path / "segments/train.h5").stat().st_mtime_ns == mtime
    other = SegmentsConfig("ade20k", ade, tmp_path, preserved_ratio=0.5)
    with pytest.raises(StageError, match="preserved_ratio.*--rebuild"):
        build_segments(other)
    m = build_segments(SegmentsConfig("ade20k", ade, tmp_path, preserved_ratio=0.5, rebuild=True))
    assert m["params"]["preserved_ratio"] == 0.5


def test_bad_image_fails_or_is_skipped_and_counted(tmp_path, capsys):
    root = write_ade(tmp_path / "ade", n_train=4, n_val=1)
    bad = root / "annotations/training/ADE_train_00000002.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(bad)
    with pytest.raises(InputError, match="ADE_train_00000002.png.*does not match"):
        build_segments(SegmentsConfig("ade20k", root, tmp_path / "w"))
    m = build_segments(SegmentsConfig("ade20k", root, tmp_path / "w", on_error="skip"))
    assert m["counts"]["train"]["images_skipped"] == 1 and m["counts"]["train"]["images_ok"] == 3
    st = segment_stats(tmp_path / "w")
    assert st["skipped"]["train"][0]["image_id"] == "ADE_train_00000002"
    assert main(["index", "stats", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "person" in out and "skipped in train" in out and "does not match" in out


def test_cli_build_and_one_line_errors(ade, tmp_path, capsys):
    assert main(["-q", "index", "build", "--dataset", "ade20k", "--root", str(ade), "--work", str(tmp_path),
                 "--splits", "val", "--jobs", "1"]) == 0
    assert "val" in capsys.readouterr().out
    assert main(["index", "build", "--dataset", "cityscapes", "--root", str(ade), "--work", str(tmp_path / "c"),
                 "--image-list", str(tmp_path / "segments" / "manifest.json")]) == 2  # a usage error of the flag
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "Error: Invalid value for '--image-list': an image list applies to ade20k and ade20k-outdoor, not " \
                  "cityscapes"
    assert main(["index", "build", "--dataset", "ade20k", "--root", str(ade), "--work", str(tmp_path),
                 "--shard", "3/2"]) == 2


def test_a_killed_merge_leaves_nothing_behind_in_the_store(ade, tmp_path, reference):
    """A merge killed mid-write leaves a temporary file in segments.new/; the next merge drops it,
    so the store that replaces segments/ holds only its own files, byte-identical."""
    assert build_segments(SegmentsConfig("ade20k", ade, tmp_path, shard=(0, 1))) is None
    leftover = tmp_path / "segments.new" / ".train.h5.k1ll3d.tmp"
    leftover.write_bytes(b"half a merge")
    m = build_segments(SegmentsConfig("ade20k", ade, tmp_path, merge=True))
    assert sorted(p.name for p in (tmp_path / "segments").iterdir()) == sorted([*OUTPUTS, "manifest.json"])
    assert sorted(m["files"]) == sorted(OUTPUTS) and _bytes(tmp_path) == reference
    assert not (tmp_path / "segments.new").exists()


def test_a_corrupt_photo_fails_the_rebuild_and_keeps_the_store(tmp_path, capsys):
    base = tmp_path / "w"
    work = small_baked_work(base)
    wd = WorkDir(work)
    good = {p: p.read_bytes() for p in sorted(wd.segments.iterdir())}
    jpg = sorted((base / "toy/ADEChallengeData2016/images/training").glob("*.jpg"))[2]
    jpg.write_bytes(jpg.read_bytes()[:200])
    root = base / "toy/ADEChallengeData2016"
    assert main(["index", "build", "--dataset", "ade20k", "--root", str(root), "--work", str(work)]) == 1
    line = one_error_line(capsys)
    assert jpg.name in line and "corrupt or truncated image" in line
    assert {p: p.read_bytes() for p in sorted(wd.segments.iterdir())} == good
    wd.require_guidance("train")  # the whole previous chain still holds
    RetrievalIndex(work).shard(RetrievalIndex(work).classes[0])
    assert main(["-q", "index", "build", "--dataset", "ade20k", "--root", str(root), "--work", str(work),
                 "--on-error", "skip"]) == 0
    assert wd.require_segments()["counts"]["train"]["images_skipped"] == 1


def test_a_sixteen_bit_photo_is_stored_as_itself_not_white(tmp_path):
    root = write_folder(tmp_path / "f", n=2, instances=False)
    write_folder(tmp_path / "f", n=1, split="val", instances=False)
    photo = root / "images/train/img000.png"
    grey16 = (np.random.default_rng(0).integers(0, 256, (24, 30)) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(photo)
    build_segments(SegmentsConfig("folder", root, tmp_path / "w", crop_codec="raw"))  # lossless, to compare values
    from resail.pipeline.store import SegmentStore

    with SegmentStore(tmp_path / "w", "train") as store:
        first = int(np.flatnonzero(np.asarray(store.table["image_id"].to_pylist()) == "img000")[0])
        crop, mask = store.crop(first)
        y0, x0 = store.table["bbox_y0"][first].as_py(), store.table["bbox_x0"][first].as_py()
    want = (grey16 // 257).astype(np.uint8)[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
    assert np.array_equal(crop[..., 0][mask], want[mask]) and not (crop[mask] == 255).all()


def test_a_changed_store_parameter_asks_for_rebuild(tmp_path, capsys):
    root = toy_dataset(tmp_path / "toy", n_train=4, n_val=2, size=SIDE, seed=2)
    work = index_work(root, tmp_path / "work")
    assert main(["index", "build", "--dataset", "ade20k", "--root", str(root), "--work", str(work),
                 "--preserved-ratio", "0.5"]) == 1
    assert "preserved_ratio 0.9 → 0.5); rerun with --rebuild" in one_error_line(capsys)


def test_a_label_without_its_photo_fails_or_is_counted_as_skipped(tmp_path, capsys):
    root = write_ade(tmp_path / "ade", n_train=3, n_val=1)
    orphan = root / "annotations/training/ADE_train_00000009.png"
    shutil.copy(root / "annotations/training/ADE_train_00000001.png", orphan)
    args = ["index", "build", "--dataset", "ade20k", "--root", str(root), "--work", str(tmp_path / "w")]
    assert main(args) == 1
    line = one_error_line(capsys)
    assert "ADE_train_00000009.png: label map without a photo" in line
    assert main(["-q", *args, "--on-error", "skip"]) == 0
    m = WorkDir(tmp_path / "w").require_segments()
    assert m["counts"]["train"]["images_skipped"] == 1 and m["skipped"]["train"][0]["image_id"] == "ADE_train_00000009"


def test_image_list_names_that_match_no_image_are_reported(tmp_path, capsys):
    root = write_ade(tmp_path / "ade", n_train=3, n_val=1)
    listing = tmp_path / "list.txt"
    listing.write_text("ADE_train_00000001\nADE_val_00000001\nADE_train_typo\n")
    args = ["index", "build", "--dataset", "ade20k-outdoor", "--root", str(root), "--work", str(tmp_path / "w"),
            "--image-list", str(listing)]
    assert main(args) == 1
    assert "list.txt: 1 names match no image of train or val (e.g. 'ADE_train_typo')" in one_error_line(capsys)
    assert main(["-q", *args, "--on-error", "skip"]) == 0
    assert WorkDir(tmp_path / "w").require_segments()["image_list_unmatched"] == ["ADE_train_typo"]

"""Stage 1 runner: resume after a crash, sharding, jobs, skip-when-done, bad input and stats."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.formats import write_ade
from resail.cli import main
from resail.errors import InputError, StageError
from resail.pipeline import segments_stage
from resail.pipeline.runner import shard_range
from resail.pipeline.segments_stage import SegmentsConfig, build_segments, segment_stats

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

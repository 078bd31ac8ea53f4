"""The hostile cases of issue 15, one test (or a few) per numbered case, on tiny toy work dirs.

Each case is what a hostile but realistic user did and what went wrong; each test does the same
and checks the one-line answer, the exit code and that nothing complete was lost. Cases that live
in other stages' test files are named at the end of this docstring.

1  stale guidance after a dataset edit and `index build`      test_1_*
2  an interrupted or disk-full re-bake                         test_2_*
3  a failing rebuild keeps the previous store                  test_3_*
4  16-bit, palette and oversized photos                        test_4_*
5  a changed bake parameter asks for --rebuild                 test_5_*
6  two writers of one stage or run                             test_6_*
7  labels without photos, unmatched --image-list names         test_7_*
8  --device cuda without CUDA, --device tpu                    test_8_*
9  raw tracebacks: seeds, truncated files, full disks, --size  test_9_*
10 query on void/absent classes, --name ../x, --k 0, umask      test_10_*
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builders.formats import write_ade, write_folder
from builders.work import baked_work, copy_work, index_work, toy_dataset
from resail import artifacts, lifecycle
from resail.artifacts import atomic_path
from resail.cli import main
from resail.common import read_rgb
from resail.errors import BusyError, DiskFullError, InputError, StageError
from resail.index.build import build_index
from resail.index.retrieval import RetrievalIndex
from resail.lifecycle import StageLock
from resail.pipeline import bake as bake_mod
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.datasets import make_reader
from resail.pipeline.guidance import open_composer
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.workdir import WorkDir

SIZE = 64


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> Path:
    """A toy work dir (6 train, 2 val images at 64×64), both splits baked with k=5; read-only."""
    return baked_work(tmp_path_factory.mktemp("hostile"), n_train=6, n_val=2, size=SIZE, seed=1, k=5)


@pytest.fixture
def work(baked, tmp_path) -> Path:
    """A private copy of `baked` (same mtimes, so its manifests still hold)."""
    return copy_work(baked, tmp_path / "work")


def one_error_line(capsys) -> str:
    """The one `error:` line on stderr (info logs may come before it), from a typed error: never the
    generic line of an unexpected exception."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "rerun with --debug for the traceback" not in lines[0], lines
    return lines[0]


def rebuild_store(work: Path) -> None:
    """`resail index build` again, on the dataset the store was built from."""
    build_segments(SegmentsConfig("ade20k", Path(WorkDir(work).segments_manifest()["params"]["root"]), work))
    build_index(work, progress=False)


def edit_one_label(root: Path) -> None:
    """Paint a corner of the first training label map wall (class 1), off its instances."""
    ade = root / "ADEChallengeData2016"
    path = sorted((ade / "annotations/training").glob("*.png"))[0]
    label = np.array(Image.open(path))
    free = np.asarray(Image.open(ade / "annotations_instance/training" / path.name))[..., 1] == 0
    corner = np.zeros_like(free)
    corner[:16, :16] = True
    label[corner & free] = 1
    Image.fromarray(label).save(path)


# ---------------------------------------------------------------- 1: stale guidance


def test_1_guidance_of_a_rebuilt_store_is_refused_by_every_consumer(tmp_path, capsys, caplog):
    base = tmp_path / "w"
    work = baked_work(base, n_train=6, n_val=2, size=SIZE, seed=1, k=5)
    wd = WorkDir(work)
    wd.claim_run("r", resuming=False).release()  # what `resail train --name r` records
    edit_one_label(base / "toy")
    rebuild_store(work)  # "dataset files changed; rebuilding": segments and index are new
    with caplog.at_level("WARNING", "resail"):
        wd.check_run_lineage("r")  # eval, synthesize and serve with run r
    assert "run 'r' was trained on another segment store" in caplog.text
    for split in ("train", "val"):
        with pytest.raises(StageError, match=rf"{split} guidance was baked from another segment store.*"
                                             rf"resail guidance bake {work} --split {split}"):
            wd.require_guidance(split)
    with pytest.raises(StageError, match="guidance bake"):
        open_composer(work, "train")  # the trainer's and eval's data, preview-distort
    assert main(["guidance", "preview-distort", str(work), "--out", str(tmp_path / "p.png")]) == 1
    assert "rerun `resail guidance bake" in one_error_line(capsys)
    assert main(["train", str(work), "--preset", "toy", "--dry-run"]) == 1
    assert "rerun `resail guidance bake" in one_error_line(capsys)
    # the bake itself sees the new store and bakes again, without --rebuild
    m = bake(BakeConfig(work, "train", k=5, size=(SIZE, SIZE), n_preview=0))
    assert wd.require_guidance("train")["fingerprint"] == m["fingerprint"]
    assert m["upstream"] == {"segments": wd.require_segments()["fingerprint"], "index": wd.require_index()["fingerprint"]}


def test_1_a_rebuilt_index_alone_makes_the_guidance_stale(work):
    build_index(work, progress=False, rebuild=True)
    with pytest.raises(StageError, match="another segment store or index"):
        WorkDir(work).require_guidance("train")


# ---------------------------------------------------------------- 2: interrupted re-bake


def test_2_an_interrupted_rebake_leaves_the_previous_bake_whole(work, monkeypatch):
    wd = WorkDir(work)
    before = {p: p.read_bytes() for p in (wd.matches_table("val"), wd.guidance_h5("val"))}

    def killed(*args):
        raise KeyboardInterrupt  # SIGINT/SIGTERM while composing, after the new matches were written

    monkeypatch.setattr(bake_mod, "_bake_part", killed)
    with pytest.raises(KeyboardInterrupt):
        bake(BakeConfig(work, "val", k=3, size=(SIZE, SIZE), n_preview=0, rebuild=True))
    assert wd.matches_table("val", wd.guidance_staging("val")).exists()  # the new matches wait in staging
    assert {p: p.read_bytes() for p in before} == before
    m = wd.require_guidance("val")
    assert m["params"]["k"] == 5 and pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 4
    # the next plain bake is up to date (the bake it reports is whole); the rebuild resumes and commits
    assert bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0))["fingerprint"] == m["fingerprint"]
    monkeypatch.undo()
    m3 = bake(BakeConfig(work, "val", k=3, size=(SIZE, SIZE), n_preview=0, rebuild=True))
    assert wd.require_guidance("val")["params"]["k"] == 3 == m3["params"]["k"]
    assert pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 2
    assert not wd.guidance_staging("val").exists()


KILLED_BAKE = """
import sys, time
from pathlib import Path
from resail.pipeline import bake as bake_mod

def stuck(*args):
    print("composing", flush=True)
    time.sleep(600)

bake_mod._bake_part = stuck
bake_mod.bake(bake_mod.BakeConfig(Path(sys.argv[1]), "val", k=3, size=(64, 64), n_preview=0, rebuild=True))
"""


def test_2_a_rebake_killed_with_sigkill_leaves_the_previous_bake_and_no_lock(work):
    import signal

    wd = WorkDir(work)
    before = wd.require_guidance("val")
    p = subprocess.Popen([sys.executable, "-c", KILLED_BAKE, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "composing"  # the new matches are written, the lock is held
        with pytest.raises(BusyError, match=f"pid {p.pid}"):
            bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert wd.require_guidance("val") == before
    assert bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0)) == before  # up to date, lock free


def test_2_a_rebake_on_a_full_disk_says_so_and_keeps_the_previous_cache(work, monkeypatch, capsys):
    wd = WorkDir(work)
    before = wd.guidance_h5("val").read_bytes()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFullError, match="val guidance cache needs about .* MiB but only 0 MiB are free"):
        bake(BakeConfig(work, "val", k=3, size=(SIZE, SIZE), n_preview=0, rebuild=True))
    monkeypatch.undo()

    def full(parts, ranges, out, *args):  # the disk fills while HDF5 writes the merged cache
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bake_mod, "_merge", full)
    assert main(["guidance", "bake", str(work), "--split", "val", "--k", "3", "--size", f"{SIZE}x{SIZE}",
                 "--rebuild"]) == 1
    line = one_error_line(capsys)
    assert "val.h5: the disk is full" in line and "nothing was replaced" in line
    assert wd.guidance_h5("val").read_bytes() == before and wd.require_guidance("val")["params"]["k"] == 5
    assert not list(wd.guidance_staging("val").glob(".*.tmp"))


def test_2_a_bake_killed_before_it_was_published_is_published_by_the_next_bake(work, monkeypatch):
    """Killed between sealing the new bake (guidance/val@N) and switching the link to it: readers keep
    the previous bake whole, and the next bake of the same parameters publishes the sealed one."""
    wd = WorkDir(work)
    before = wd.require_guidance("val")

    def killed(*folders):
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        bake(BakeConfig(work, "val", k=3, size=(SIZE, SIZE), n_preview=0, rebuild=True))
    monkeypatch.undo()
    assert wd.require_guidance("val") == before and pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 4
    sealed = wd.versions("guidance-val").newest()
    mtime = (sealed / "val.h5").stat().st_mtime_ns
    m = bake(BakeConfig(work, "val", k=3, size=(SIZE, SIZE), n_preview=0))  # up to date: published, not redone
    assert m["params"]["k"] == 3 and wd.require_guidance("val")["fingerprint"] == m["fingerprint"]
    assert wd.guidance_h5("val").resolve() == sealed / "val.h5" and (sealed / "val.h5").stat().st_mtime_ns == mtime
    assert pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 2


# ---------------------------------------------------------------- 3: a failing rebuild


def test_3_a_corrupt_photo_fails_the_rebuild_and_keeps_the_store(tmp_path, capsys):
    base = tmp_path / "w"
    work = baked_work(base, n_train=6, n_val=2, size=SIZE, seed=1, k=5)
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


def test_3_an_index_build_killed_before_it_published_is_finished(work, monkeypatch):
    """`index build` publishes the new store with the index built from it: killed before that
    (both sealed, as segments@N and index@N), it leaves the previous pair in use, and the next
    build publishes the sealed pair without rebuilding it."""
    wd = WorkDir(work)
    before = {"segments": wd.require_segments(), "index": wd.require_index()}
    edit_one_label(Path(before["segments"]["params"]["root"]).parent)
    monkeypatch.setattr(lifecycle, "publish", lambda *folders: (_ for _ in ()).throw(KeyboardInterrupt))
    root = before["segments"]["params"]["root"]
    assert main(["-q", "index", "build", "--dataset", "ade20k", "--root", root, "--work", str(work)]) != 0
    monkeypatch.undo()
    assert {"segments": wd.require_segments(), "index": wd.require_index()} == before
    sealed = {k: wd.versions(k).newest() for k in before}
    assert all(sealed[k] != wd.versions(k).current() for k in before)
    assert main(["-q", "index", "build", "--dataset", "ade20k", "--root", root, "--work", str(work)]) == 0
    assert {k: wd.versions(k).current() for k in before} == sealed
    assert wd.require_index()["upstream"]["segments"] == wd.require_segments()["fingerprint"] != \
        before["segments"]["fingerprint"]
    assert not wd.segments_staging.exists() and not wd.index_staging.exists()


# ---------------------------------------------------------------- 4: photos of any mode, bounded size


def test_4_sixteen_bit_grey_and_palette_photos_decode_to_their_8bit_values(tmp_path):
    grey16 = (np.arange(24 * 30, dtype=np.uint32).reshape(24, 30) * 90).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 30, 3)
    assert np.array_equal(rgb[..., 0], np.round(grey16 / 257).astype(np.uint8)) and rgb.min() == 0 and rgb.max() < 255
    pal = Image.fromarray(np.arange(24 * 30).reshape(24, 30).astype(np.uint8) % 4, "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * 756)
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0, :4].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]


def test_4_a_sixteen_bit_photo_is_stored_as_itself_not_white(tmp_path):
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


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width×height pixels (no pixel data): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_4_an_oversized_image_is_refused_before_decoding(tmp_path):
    from resail.pipeline.datasets import read_index_png

    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 12_000, 12_000)  # above resail's limit, below Pillow's own
    with pytest.raises(InputError, match=r"bomb.png: 12000x12000 pixels is above the .*-pixel limit"):
        read_rgb(bomb)
    with pytest.raises(InputError, match=r"bomb.png: 12000x12000 pixels"):
        read_index_png(bomb)
    png_header_only(bomb, 100_000, 100_000)  # Pillow refuses it as it opens it
    with pytest.raises(InputError, match="bomb.png: too many pixels"):
        read_rgb(bomb)


# ---------------------------------------------------------------- 5: a changed parameter


def test_5_a_changed_bake_parameter_asks_for_rebuild(work, capsys):
    wd = WorkDir(work)
    before = wd.require_guidance("val")
    assert main(["guidance", "bake", str(work), "--split", "val", "--k", "10", "--size", f"{SIZE}x{SIZE}"]) == 1
    line = one_error_line(capsys)
    assert "the val guidance was baked with other parameters (k 5 → 10); rerun with --rebuild" in line
    assert wd.require_guidance("val") == before
    assert main(["-q", "guidance", "bake", str(work), "--split", "val", "--k", "10", "--size", f"{SIZE}x{SIZE}",
                 "--rebuild"]) == 0
    assert wd.require_guidance("val")["params"]["k"] == 10


def test_5_a_changed_store_parameter_asks_for_rebuild(tmp_path, capsys):
    root = toy_dataset(tmp_path / "toy", n_train=4, n_val=2, size=SIZE, seed=2)
    work = index_work(root, tmp_path / "work")
    assert main(["index", "build", "--dataset", "ade20k", "--root", str(root), "--work", str(work),
                 "--preserved-ratio", "0.5"]) == 1
    assert "preserved_ratio 0.9 → 0.5); rerun with --rebuild" in one_error_line(capsys)


# ---------------------------------------------------------------- 6: one writer per stage or run

HOLD = """
import sys
from pathlib import Path
from resail.lifecycle import stage_lock
shard = tuple(int(v) for v in sys.argv[3].split("/")) if sys.argv[3] != "-" else None
with stage_lock(Path(sys.argv[1]), sys.argv[2], "a test holder", shard=shard, merge=shard is None):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(folder: Path, name: str, shard: str = "-"):
    """Another process holding the stage lock `folder/NAME.lock` (a shard job's with `shard` I/N)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name, shard], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def test_6_a_second_bake_of_a_split_fails_at_once_naming_the_first(work, capsys):
    wd = WorkDir(work)
    with held_elsewhere(wd.locks, "guidance-val") as pid:
        assert main(["guidance", "bake", str(work), "--split", "val", "--k", "5", "--size", f"{SIZE}x{SIZE}"]) == 1
        line = one_error_line(capsys)
        assert f"the val guidance of {work} is being written by another process (pid {pid} on " in line
        assert "wait for it to finish" in line and "--rebuild" not in line
        bake(BakeConfig(work, "train", k=5, size=(SIZE, SIZE), n_preview=0))  # the other split is free


def test_6_index_build_and_a_run_have_one_writer(work, capsys):
    wd = WorkDir(work)
    m = wd.require_segments()
    with held_elsewhere(wd.locks, "index") as pid:
        assert main(["index", "build", "--dataset", "ade20k", "--root", m["params"]["root"], "--work",
                     str(work)]) == 1
        assert f"pid {pid}" in one_error_line(capsys)
    with held_elsewhere(wd.locks, "run-toy") as pid:
        with pytest.raises(BusyError, match=f"run 'toy' of {work} is being written by another process \\(pid {pid}"):
            wd.claim_run("toy", resuming=False)
    lock = wd.claim_run("toy", resuming=False)  # free again once the holder is gone
    lineage = json.loads(wd.run_lineage("toy").read_text())
    assert lineage["guidance"]["fingerprint"] == wd.require_guidance("train")["fingerprint"]
    lock.release()


def test_6_shard_jobs_share_a_stage_and_a_merge_waits_for_them(work):
    wd = WorkDir(work)
    with held_elsewhere(wd.locks, "guidance-val", shard="0/2") as pid:
        bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0, shard=(1, 2)))  # another shard: fine
        with pytest.raises(BusyError, match=rf"shard 0/2 .*pid {pid}"):
            bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0, shard=(0, 2)))
        with pytest.raises(BusyError, match=rf"pid {pid} .*guidance-val 0/2"):
            bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0, merge=True))


def taken_elsewhere(folder: Path, name: str) -> subprocess.CompletedProcess:
    """Another process trying the lock `folder/NAME.lock` and letting it go at once."""
    return subprocess.run([sys.executable, "-c", HOLD, str(folder), name, "-"], input="", capture_output=True,
                          text=True, timeout=60)


def test_6_locks_are_reentrant_in_one_process_and_released(tmp_path):
    a = StageLock(tmp_path / "x.lock", "x").acquire()
    b = StageLock(tmp_path / "x.lock", "x").acquire()
    a.release()
    other = taken_elsewhere(tmp_path, "x")
    assert other.returncode != 0 and f"being written by another process (pid {os.getpid()} on" in other.stderr
    b.release()
    assert taken_elsewhere(tmp_path, "x").returncode == 0


def test_6_resuming_a_run_on_other_guidance_is_refused(work):
    wd = WorkDir(work)
    wd.claim_run("r", resuming=False).release()
    wd.claim_run("r", resuming=True).release()  # same guidance: fine
    bake(BakeConfig(work, "train", k=3, size=(SIZE, SIZE), n_preview=0, rebuild=True))
    with pytest.raises(StageError, match="run 'r' was trained on guidance that .* no longer holds"):
        wd.claim_run("r", resuming=True)


# ---------------------------------------------------------------- 7: nothing dropped silently


def test_7_a_label_without_its_photo_fails_or_is_counted_as_skipped(tmp_path, capsys):
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


def test_7_image_list_names_that_match_no_image_are_reported(tmp_path, capsys):
    root = write_ade(tmp_path / "ade", n_train=3, n_val=1)
    listing = tmp_path / "list.txt"
    listing.write_text("ADE_train_00000001\nADE_val_00000001\nADE_train_typo\n")
    args = ["index", "build", "--dataset", "ade20k-outdoor", "--root", str(root), "--work", str(tmp_path / "w"),
            "--image-list", str(listing)]
    assert main(args) == 1
    assert "list.txt: 1 names match no image of train or val (e.g. 'ADE_train_typo')" in one_error_line(capsys)
    assert main(["-q", *args, "--on-error", "skip"]) == 0
    assert WorkDir(tmp_path / "w").require_segments()["image_list_unmatched"] == ["ADE_train_typo"]


def test_7_a_file_name_that_is_not_utf8_is_named(tmp_path):
    root = write_folder(tmp_path / "f", n=1, instances=False)
    bad = os.fsdecode(b"img\xff")
    for sub in ("images", "labels"):
        shutil.copy(root / sub / "train/img000.png", root / sub / "train" / f"{bad}.png")
    from resail.pipeline.datasets import list_split

    with pytest.raises(InputError, match=r"img\\xff.png: the file name is not valid UTF-8"):
        list_split(make_reader("folder", root), "train")


# ---------------------------------------------------------------- 8: devices


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device,message", [("cuda", "CUDA is not available"), ("tpu", "not a torch device")])
def test_8_an_unusable_device_is_one_line_for_every_inference_command(shared_tiny_run, tmp_path, capsys, device,
                                                                      message):
    work = shared_tiny_run.work
    label = tmp_path / "l.png"
    Image.fromarray(np.ones((SIZE, SIZE), np.uint8)).save(label)
    for argv in (["synthesize", str(work), "--run", "tiny", "--label", str(label), "--out", str(tmp_path / "o.png")],
                 ["eval", str(work), "--run", "tiny", "--no-fid", "--no-seg"]):
        code = main([*argv, "--device", device])
        if device == "tpu":  # no device at all: a usage error of the flag (exit 2)
            assert code == 2 and capsys.readouterr().err.splitlines()[-1] == \
                "Error: Invalid value for '--device': device 'tpu': not a torch device; use auto, cpu, cuda or cuda:N"
            continue
        assert code == 1
        line = one_error_line(capsys)
        assert message in line and "corrupt" not in line


# ---------------------------------------------------------------- 9: one line, never a traceback


@pytest.mark.parametrize("argv", [
    ["data", "toy", "OUT", "--seed", "-1"],
    ["data", "toy", "OUT", "--seed", str(2**40)],
    ["data", "toy", "OUT", "--size", "100000x100000"],
    ["guidance", "bake", "WORK", "--split", "val", "--seed", "-1"],
    ["guidance", "preview-distort", "WORK", "--out", "x.png", "--seed", "-5"],
    ["train", "WORK", "--preset", "toy", "--seed", "-1"],
    ["synthesize", "WORK", "--run", "tiny", "--label", "L", "--out", "o.png", "--seed", "-1"],
])
def test_9_out_of_range_values_are_usage_errors(argv, tmp_path, capsys):
    (tmp_path / "L").write_bytes(b"")
    named = {"OUT": str(tmp_path / "o"), "WORK": str(tmp_path), "L": str(tmp_path / "L")}
    assert main([named.get(a, a) for a in argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_9_a_truncated_guidance_cache_is_refused_and_baked_again(work, capsys):
    wd = WorkDir(work)
    h5 = wd.guidance_h5("val")
    h5.write_bytes(h5.read_bytes()[:1000])
    with pytest.raises(StageError, match=r"val.h5: 1000 bytes, but the stage wrote \d+ .*rerun `resail guidance bake"):
        wd.require_guidance("val")
    assert main(["-q", "guidance", "bake", str(work), "--split", "val", "--k", "5", "--size", f"{SIZE}x{SIZE}"]) == 0
    with h5py.File(wd.guidance_h5("val")) as f:
        assert f["guidance"].shape[0] == 2


@pytest.mark.parametrize("victim", ["train.parquet", "train.h5", "val_images.parquet"])
def test_9_a_truncated_or_deleted_store_file_is_refused_and_rebuilt(work, victim):
    wd = WorkDir(work)
    path = wd.segments / victim
    if victim == "val_images.parquet":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StageError, match=f"{victim}: .*the segment store is damaged; rerun `resail index build"):
        wd.require_segments()
    with pytest.raises(StageError, match="segment store is damaged"):
        RetrievalIndex(work)
    rebuild_store(work)  # not "up to date": the store is rebuilt
    wd.require_index()


def test_9_a_full_disk_during_index_build_is_one_line_and_keeps_the_index(work, monkeypatch, capsys):
    wd = WorkDir(work)
    before = wd.require_index()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", no_space)
    m = wd.require_segments()
    assert main(["index", "build", "--dataset", "ade20k", "--root", m["params"]["root"], "--work", str(work),
                 "--rebuild"]) == 1
    line = one_error_line(capsys)
    assert "the disk is full" in line and "nothing was replaced" in line
    monkeypatch.undo()
    assert wd.require_index() == before and wd.require_guidance("val")


def test_9_a_checkpoint_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    import torch

    from resail.synth.checkpoint import write_checkpoint

    target = tmp_path / "state-00000010.pt"
    target.write_bytes(b"previous")

    def zip_writer_fails(obj, path):  # what torch.save raises when the disk fills
        Path(path).write_bytes(b"part")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", zip_writer_fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(DiskFullError, match="state-00000010.pt: disk full while writing a checkpoint; the previous "
                                            "checkpoints are intact. Free space and rerun with --resume"):
        write_checkpoint(target, {"step": 10})
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == [target.name]
    monkeypatch.undo()
    with pytest.raises(DiskFullError, match="bytes.bin: the disk is full"):  # ENOSPC from any plain write
        with atomic_path(tmp_path / "bytes.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------- 10: smaller ones


def test_10_index_query_on_void_and_on_classes_absent_from_training(baked, tmp_path, capsys):
    void = tmp_path / "void.png"
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(void)
    assert main(["index", "query", str(baked), "--label", str(void)]) == 1
    assert "no segment to query (only void pixels?)" in one_error_line(capsys)
    present = RetrievalIndex(baked).classes
    absent = next(c for c in range(1, 151) if c not in present)
    label = np.full((SIZE, SIZE), present[0], np.uint8)
    label[: SIZE // 2] = absent
    Image.fromarray(label).save(tmp_path / "l.png")
    assert main(["index", "query", str(baked), "--label", str(tmp_path / "l.png")]) == 0
    out = capsys.readouterr()
    assert f"none (class {absent} has no training segments" in out.out
    assert f"classes [{absent}] have no training segments" in out.err


@pytest.mark.parametrize("argv", [
    ["train", "WORK", "--preset", "toy", "--name", "../../x"],
    ["eval", "WORK", "--run", "../x"],
    ["synthesize", "WORK", "--run", "a/b", "--label", "L", "--out", "o.png"],
    ["serve", "WORK", "--run", ".."],
    ["guidance", "bake", "WORK", "--split", "val", "--k", "0"],
    ["guidance", "bake", "WORK", "--split", "val", "--k", "20", "--k-prefilter", "10"],
])
def test_10_paths_and_out_of_range_flags_are_usage_errors(argv, tmp_path, capsys):
    (tmp_path / "L").write_bytes(b"")
    argv = [str(tmp_path) if a == "WORK" else str(tmp_path / "L") if a == "L" else a for a in argv]
    assert main(argv) == 2
    assert not (tmp_path.parent / "x").exists()


def test_10_artifacts_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        work = baked_work(tmp_path, n_train=4, n_val=2, size=SIZE, seed=2, k=3)
    finally:
        os.umask(old)
    files = [p for p in Path(work).rglob("*") if p.is_file() and "locks" not in p.parts]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o640"}


def test_9_serve_answers_an_out_of_range_seed_with_a_400(shared_serve_work):
    import io

    from starlette.testclient import TestClient

    from resail.synth.serve import ServeConfig, Synthesizer, create_app

    work, label = shared_serve_work
    body = io.BytesIO()
    Image.fromarray(label).save(body, format="PNG")
    synth = Synthesizer(ServeConfig(work, "tiny", k=5))
    try:
        with TestClient(create_app(synth)) as client:
            for seed in (-1, 2**40):
                r = client.post("/api/generate", content=body.getvalue(), params={"seed": seed},
                                headers={"content-type": "image/png"})
                assert r.status_code == 400 and f"seed={seed}: choose 0..4294967295" in r.json()["error"]
            assert client.get("/api/info").status_code == 200
    finally:
        synth.close()


def test_10_serve_on_a_busy_port_fails_before_saying_open(shared_serve_work, capsys):
    import socket

    work, _ = shared_serve_work
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(work), "--run", "tiny", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert "open http://" not in captured.out
    assert f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)" in captured.err

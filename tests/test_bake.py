"""The bake stage end to end on a tiny toy work dir: matches table, cache, previews, choice, editing, errors;
guidance of a rebuilt store or index refused by every consumer; re-bakes interrupted, killed or on a full
disk that keep the previous bake whole; a changed parameter that asks for --rebuild; one writer per split
and shard jobs that share it; a truncated cache baked again. The composer it uses: test_guidance.py."""


import errno
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders.checks import SIDE, edit_one_label, held_elsewhere, one_error_line, rebuild_store, small_baked_work
from builders.work import toy_work
from resail import lifecycle
from resail.artifacts import atomic_path
from resail.cli import main
from resail.errors import BusyError, ConfigError, DiskFullError, StageError
from resail.index.build import build_index
from resail.pipeline import bake as bake_mod
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.guidance import (
    GuidanceComposer,
    choose_ranks,
    dense_matches,
    open_composer,
)
from resail.pipeline.store import SegmentStore
from resail.workdir import WorkDir

SIZE = (96, 96)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return toy_work(tmp_path_factory.mktemp("bake"), n_train=10, n_val=4, size=96, seed=3)


def test_bake_val_writes_contract_tables_cache_and_previews(work):
    m = bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2))
    g = work / "guidance"
    matches = pq.read_table(g / "val_matches.parquet")
    assert matches.schema.names == ["segment_id", "rank", "match_id", "score"]
    assert str(matches.schema.field("rank").type) == "int16" and str(matches.schema.field("score").type) == "float"
    val = pq.read_table(work / "segments" / "val.parquet")
    train = pq.read_table(work / "segments" / "train.parquet")
    assert set(matches["segment_id"].to_pylist()) <= set(val["segment_id"].to_pylist())
    assert set(matches["match_id"].to_pylist()) <= set(train["segment_id"].to_pylist())
    # ranks are contiguous from 0 and scores ascend within a query
    for sid in set(matches["segment_id"].to_pylist()[:20]):
        rows = matches.filter(pq.ParquetFile(g / "val_matches.parquet").read().column("segment_id").to_numpy() == sid)
        assert rows["rank"].to_pylist() == list(range(rows.num_rows))
        assert rows["score"].to_pylist() == sorted(rows["score"].to_pylist())
    with h5py.File(g / "val.h5") as f:
        assert f["guidance"].shape == (4, SIZE[1], SIZE[0], 3) and f["guidance"].dtype == np.uint8
        assert f["guidance"][...].max() > 0
        # lossless, one image per chunk: every image reads back as composed
        assert f["guidance"].compression == "gzip" and f["guidance"].chunks == (1, SIZE[1], SIZE[0], 3)
        comp = open_composer(work, "val")
        try:
            for i, row in enumerate(comp.ok_images()):
                assert np.array_equal(f["guidance"][i], comp.compose(int(row)))
        finally:
            comp.close()
        assert [s.decode() for s in f["image_id"][...]] == pq.read_table(
            work / "segments" / "val_images.parquet")["image_id"].to_pylist()
    assert len(list((g / "val_preview").glob("*.png"))) == 2
    assert m["images"] == 4 and (g / "val_manifest.json").exists()
    assert not (g / "val.new").exists() and sorted(m["files"]) == ["val.h5", "val_matches.parquet"]


def test_train_queries_never_retrieve_themselves(work):
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0))
    t = pq.read_table(work / "guidance" / "train_matches.parquet")
    assert t.num_rows > 0
    assert not np.any(t["segment_id"].to_numpy() == t["match_id"].to_numpy())


def test_unchanged_bake_is_skipped_and_changed_parameter_needs_rebuild(work):
    cfg = BakeConfig(work, "val", k=5, size=SIZE, n_preview=2)
    first = bake(cfg)
    assert bake(cfg)["written_at"] == first["written_at"]
    with pytest.raises(StageError, match=r"compose_mode \"clean\" → \"official\".*--rebuild"):
        bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2, compose_mode="official"))
    assert WorkDir(work).require_guidance("val")["fingerprint"] == first["fingerprint"]  # untouched
    other = bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2, compose_mode="official", rebuild=True))
    assert other["params"]["compose_mode"] == "official"
    assert WorkDir(work).require_guidance("val")["fingerprint"] == other["fingerprint"]
    bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2, rebuild=True))  # back to the bake the others read


def test_local_edit_changes_only_the_chosen_segment(work):
    bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=0))
    comp = GuidanceComposer(work, "val", SIZE)
    try:
        matches = pq.read_table(work / "guidance" / "val_matches.parquet")
        comp.ids, _ = dense_matches(matches, comp.segment_id, 5)
        comp.chosen = choose_ranks(comp.ids, comp.segment_id, "top1", 0)
        row = int(comp.ok_images()[0])
        base = comp.compose(row)
        with h5py.File(work / "guidance" / "val.h5") as f:
            assert np.array_equal(base, f["guidance"][0])
        seg_map, rows, _ = comp.segment_map(row)
        # pick a stuff segment with at least two candidates and swap in its second match
        cand = [i for i, r in enumerate(rows) if not comp.is_thing[r] and comp.ids[r, 1] >= 0]
        i = max(cand, key=lambda i: (seg_map == i).sum())
        r = rows[i]
        edited = comp.compose(row, {int(comp.segment_id[r]): int(comp.ids[r, 1])})
        changed = np.any(edited != base, axis=2)
        assert changed.any()
        assert not changed[seg_map != i].any()  # every other segment keeps its guidance
        black = comp.compose(row, {int(comp.segment_id[r]): -1})
        assert (black[seg_map == i] == 0).all()
    finally:
        comp.close()


def test_interrupted_bake_resumes_to_the_same_cache(work, monkeypatch):
    cfg = BakeConfig(work, "train", k=3, size=SIZE, n_preview=0, rebuild=True)
    monkeypatch.setattr(bake_mod, "PART_IMAGES", 4)
    real = bake_mod._bake_part
    calls = []

    def crash_on_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash")
        return real(*args)

    monkeypatch.setattr(bake_mod, "_bake_part", crash_on_second)
    with pytest.raises(RuntimeError, match="injected"):
        bake(cfg)
    parts = list(WorkDir(work).guidance_parts("train").glob("part-*.h5"))
    assert len(parts) == 1
    monkeypatch.setattr(bake_mod, "_bake_part", real)
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0))
    with h5py.File(work / "guidance" / "train.h5") as f:
        resumed = f["guidance"][...]
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0, rebuild=True))
    with h5py.File(work / "guidance" / "train.h5") as f:
        assert np.array_equal(resumed, f["guidance"][...])


def test_bad_input(work, tmp_path):
    with pytest.raises(ConfigError, match="k 0: must be at least 1") as e:
        BakeConfig(work, "val", k=0)
    assert e.value.name == "k"
    with pytest.raises(ConfigError, match="k_prefilter 256 must be at least k 300") as e:
        BakeConfig(work, "val", k=300)
    assert e.value.name == "k_prefilter"
    with pytest.raises(StageError, match="resail index build"):
        bake(BakeConfig(tmp_path, "val"))
    only_segments = tmp_path / "w"
    (only_segments / "segments").mkdir(parents=True)
    for f in (work / "segments").iterdir():
        (only_segments / "segments" / f.name).symlink_to(f)
    with pytest.raises(StageError, match="index"):
        bake(BakeConfig(only_segments, "val"))
    no_val = tmp_path / "noval"
    (no_val / "segments").mkdir(parents=True)
    for f in (work / "segments").iterdir():
        if not f.name.startswith("val"):
            (no_val / "segments" / f.name).symlink_to(f)
    (no_val / "index").symlink_to(work / "index")
    with pytest.raises(StageError, match="val.h5: missing.*index build"):
        bake(BakeConfig(no_val, "val"))


def test_shards_merge_like_one_run(work, monkeypatch):
    """--shard I/N computes contiguous image ranges and never merges; --merge names the shards that
    have not finished; a run without either flag finishes the missing shards (same N) and merges."""
    monkeypatch.setattr(bake_mod, "PART_IMAGES", 2)
    opts = dict(k=3, size=SIZE, n_preview=0, choose="sample", seed=11)
    wd = WorkDir(work)
    bake(BakeConfig(work, "train", rebuild=True, **opts))
    with h5py.File(wd.guidance_h5("train")) as f:
        reference = f["guidance"][...], f["image_id"][...].tolist()
    wd.guidance_h5("train").unlink()
    (wd.guidance / wd.guidance_manifest_name("train")).unlink()

    with pytest.raises(StageError, match="no shard has finished"):
        bake(BakeConfig(work, "train", merge=True, **opts))
    m = bake(BakeConfig(work, "train", shard=(1, 3), **opts))
    assert m["complete"] is False and not wd.guidance_h5("train").exists()
    n = len(reference[1])
    assert sorted(p.name for p in wd.guidance_parts("train").glob("part-*")) == [
        f"part-{a:08d}-{min(a + 2, n * 2 // 3):08d}.h5" for a in range(n // 3, n * 2 // 3, 2)]
    with pytest.raises(StageError, match=r"shards 0/3, 2/3 have not finished"):
        bake(BakeConfig(work, "train", merge=True, **opts))
    bake(BakeConfig(work, "train", shard=(0, 3), **opts))

    computed = []
    real = bake_mod._bake_part
    monkeypatch.setattr(bake_mod, "_bake_part", lambda *a: computed.append(a[2].tolist()) or real(*a))
    bake(BakeConfig(work, "train", **opts))  # no flag: the missing shard 2/3, then the merge
    with SegmentStore(work, "train") as store:
        rows = np.flatnonzero(np.asarray(store.images["status"].to_pylist()) == "ok")
    assert sum(computed, []) == rows[n * 2 // 3:].tolist()
    with h5py.File(wd.guidance_h5("train")) as f:
        assert np.array_equal(f["guidance"][...], reference[0]) and f["image_id"][...].tolist() == reference[1]
    assert not wd.guidance_parts("train").exists()


def test_guidance_of_a_rebuilt_store_is_refused_by_every_consumer(tmp_path, capsys, caplog):
    base = tmp_path / "w"
    work = small_baked_work(base)
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
    m = bake(BakeConfig(work, "train", k=5, size=(SIDE, SIDE), n_preview=0))
    assert wd.require_guidance("train")["fingerprint"] == m["fingerprint"]
    assert m["upstream"] == {"segments": wd.require_segments()["fingerprint"], "index": wd.require_index()["fingerprint"]}


def test_a_rebuilt_index_alone_makes_the_guidance_stale(baked_copy):
    work = baked_copy
    build_index(work, progress=False, rebuild=True)
    with pytest.raises(StageError, match="another segment store or index"):
        WorkDir(work).require_guidance("train")


def test_an_interrupted_rebake_leaves_the_previous_bake_whole(baked_copy, monkeypatch):
    work = baked_copy
    wd = WorkDir(work)
    before = {p: p.read_bytes() for p in (wd.matches_table("val"), wd.guidance_h5("val"))}

    def killed(*args):
        raise KeyboardInterrupt  # SIGINT/SIGTERM while composing, after the new matches were written

    monkeypatch.setattr(bake_mod, "_bake_part", killed)
    with pytest.raises(KeyboardInterrupt):
        bake(BakeConfig(work, "val", k=3, size=(SIDE, SIDE), n_preview=0, rebuild=True))
    assert wd.matches_table("val", wd.guidance_staging("val")).exists()  # the new matches wait in staging
    assert {p: p.read_bytes() for p in before} == before
    m = wd.require_guidance("val")
    assert m["params"]["k"] == 5 and pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 4
    # the next plain bake is up to date (the bake it reports is whole); the rebuild resumes and commits
    assert bake(BakeConfig(work, "val", k=5, size=(SIDE, SIDE), n_preview=0))["fingerprint"] == m["fingerprint"]
    monkeypatch.undo()
    m3 = bake(BakeConfig(work, "val", k=3, size=(SIDE, SIDE), n_preview=0, rebuild=True))
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


def test_a_rebake_killed_with_sigkill_leaves_the_previous_bake_and_no_lock(baked_copy):
    work = baked_copy
    import signal

    wd = WorkDir(work)
    before = wd.require_guidance("val")
    p = subprocess.Popen([sys.executable, "-c", KILLED_BAKE, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "composing"  # the new matches are written, the lock is held
        with pytest.raises(BusyError, match=f"pid {p.pid}"):
            bake(BakeConfig(work, "val", k=5, size=(SIDE, SIDE), n_preview=0))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert wd.require_guidance("val") == before
    assert bake(BakeConfig(work, "val", k=5, size=(SIDE, SIDE), n_preview=0)) == before  # up to date, lock free


def test_a_rebake_on_a_full_disk_says_so_and_keeps_the_previous_cache(baked_copy, monkeypatch, capsys):
    work = baked_copy
    wd = WorkDir(work)
    before = wd.guidance_h5("val").read_bytes()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DiskFullError, match="val guidance cache needs about .* MiB but only 0 MiB are free"):
        bake(BakeConfig(work, "val", k=3, size=(SIDE, SIDE), n_preview=0, rebuild=True))
    monkeypatch.undo()

    def full(parts, ranges, out, *args):  # the disk fills while HDF5 writes the merged cache
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bake_mod, "_merge", full)
    assert main(["guidance", "bake", str(work), "--split", "val", "--k", "3", "--size", f"{SIDE}x{SIDE}",
                 "--rebuild"]) == 1
    line = one_error_line(capsys)
    assert "val.h5: the disk is full" in line and "nothing was replaced" in line
    assert wd.guidance_h5("val").read_bytes() == before and wd.require_guidance("val")["params"]["k"] == 5
    assert not list(wd.guidance_staging("val").glob(".*.tmp"))


def test_a_bake_killed_before_it_was_published_is_published_by_the_next_bake(baked_copy, monkeypatch):
    """Killed between sealing the new bake (guidance/val@N) and switching the link to it: readers keep
    the previous bake whole, and the next bake of the same parameters publishes the sealed one."""
    work = baked_copy
    wd = WorkDir(work)
    before = wd.require_guidance("val")

    def killed(*folders):
        raise KeyboardInterrupt

    monkeypatch.setattr(lifecycle, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        bake(BakeConfig(work, "val", k=3, size=(SIDE, SIDE), n_preview=0, rebuild=True))
    monkeypatch.undo()
    assert wd.require_guidance("val") == before and pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 4
    sealed = wd.versions("guidance-val").newest()
    mtime = (sealed / "val.h5").stat().st_mtime_ns
    m = bake(BakeConfig(work, "val", k=3, size=(SIDE, SIDE), n_preview=0))  # up to date: published, not redone
    assert m["params"]["k"] == 3 and wd.require_guidance("val")["fingerprint"] == m["fingerprint"]
    assert wd.guidance_h5("val").resolve() == sealed / "val.h5" and (sealed / "val.h5").stat().st_mtime_ns == mtime
    assert pq.read_table(wd.matches_table("val"))["rank"].to_numpy().max() == 2


def test_a_changed_bake_parameter_asks_for_rebuild(baked_copy, capsys):
    work = baked_copy
    wd = WorkDir(work)
    before = wd.require_guidance("val")
    assert main(["guidance", "bake", str(work), "--split", "val", "--k", "10", "--size", f"{SIDE}x{SIDE}"]) == 1
    line = one_error_line(capsys)
    assert "the val guidance was baked with other parameters (k 5 → 10); rerun with --rebuild" in line
    assert wd.require_guidance("val") == before
    assert main(["-q", "guidance", "bake", str(work), "--split", "val", "--k", "10", "--size", f"{SIDE}x{SIDE}",
                 "--rebuild"]) == 0
    assert wd.require_guidance("val")["params"]["k"] == 10


def test_a_second_bake_of_a_split_fails_at_once_naming_the_first(baked_copy, capsys):
    work = baked_copy
    wd = WorkDir(work)
    with held_elsewhere(wd.locks, "guidance-val") as pid:
        assert main(["guidance", "bake", str(work), "--split", "val", "--k", "5", "--size", f"{SIDE}x{SIDE}"]) == 1
        line = one_error_line(capsys)
        assert f"the val guidance of {work} is being written by another process (pid {pid} on " in line
        assert "wait for it to finish" in line and "--rebuild" not in line
        bake(BakeConfig(work, "train", k=5, size=(SIDE, SIDE), n_preview=0))  # the other split is free


def test_shard_jobs_share_a_stage_and_a_merge_waits_for_them(baked_copy):
    work = baked_copy
    wd = WorkDir(work)
    with held_elsewhere(wd.locks, "guidance-val", shard="0/2") as pid:
        bake(BakeConfig(work, "val", k=5, size=(SIDE, SIDE), n_preview=0, shard=(1, 2)))  # another shard: fine
        with pytest.raises(BusyError, match=rf"shard 0/2 .*pid {pid}"):
            bake(BakeConfig(work, "val", k=5, size=(SIDE, SIDE), n_preview=0, shard=(0, 2)))
        with pytest.raises(BusyError, match=rf"pid {pid} .*guidance-val 0/2"):
            bake(BakeConfig(work, "val", k=5, size=(SIDE, SIDE), n_preview=0, merge=True))


def test_a_truncated_guidance_cache_is_refused_and_baked_again(baked_copy, capsys):
    work = baked_copy
    wd = WorkDir(work)
    h5 = wd.guidance_h5("val")
    h5.write_bytes(h5.read_bytes()[:1000])
    with pytest.raises(StageError, match=r"val.h5: 1000 bytes, but the stage wrote \d+ .*rerun `resail guidance bake"):
        wd.require_guidance("val")
    assert main(["-q", "guidance", "bake", str(work), "--split", "val", "--k", "5", "--size", f"{SIDE}x{SIDE}"]) == 0
    with h5py.File(wd.guidance_h5("val")) as f:
        assert f["guidance"].shape[0] == 2


"""`resail index build`'s index: shards and manifest, skip-when-done, a changed or damaged store or shard
named in one line; a build killed before it published, finished by the next one; one writer at a time;
a full disk that keeps the previous index. `resail index query`: test_query.py."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from builders.checks import edit_one_label, held_elsewhere, one_error_line
from builders.store import write_fake_store
from resail import artifacts, lifecycle
from resail.cli import main
from resail.errors import StageError
from resail.index.build import build_index
from resail.index.retrieval import RetrievalIndex
from resail.workdir import WorkDir


def make_store(work, seed=0, n=60):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 128, 128), bool)
    for i in range(n):
        y, x = rng.integers(0, 100, 2)
        masks[i, y : y + rng.integers(5, 28), x : x + rng.integers(5, 28)] = True
    class_id = np.where(np.arange(n) < n - 10, 1, 12)
    write_fake_store(work, masks=masks, class_id=class_id, bbox_area=rng.integers(100, 1000, n))


def test_build_writes_shards_and_manifest_then_skips(tmp_path):
    make_store(tmp_path)
    m = build_index(tmp_path, progress=False, ivf_threshold=40)
    names = sorted(p.name for p in (tmp_path / "index").glob("*.faiss"))
    windows = [f"c0001.w{int(j):02d}.faiss" for j in m["shards"]["1"]["windows"]]
    assert windows and names == sorted(["c0001.faiss", "c0012.faiss", *windows])
    assert m["shards"]["1"]["kind"] == "ivf" and m["shards"]["1"]["nlist"] > 0 and m["shards"]["12"]["kind"] == "flat"
    assert m["shards"]["12"]["windows"] == {}
    assert m["params"]["R"] == 128 and m["params"]["r"] == 32 and m["counts"]["segments"] == 60
    assert m["bytes"] == sum(p.stat().st_size for p in (tmp_path / "index").glob("*.faiss"))
    mtime = (tmp_path / "index" / "c0001.faiss").stat().st_mtime_ns
    again = build_index(tmp_path, progress=False, ivf_threshold=40)
    assert again["written_at"] == m["written_at"]
    assert (tmp_path / "index" / "c0001.faiss").stat().st_mtime_ns == mtime
    m = build_index(tmp_path, progress=False, ivf_threshold=1000)  # no flag sets it: another value rebuilds
    assert m["shards"]["1"]["kind"] == "flat" and m["upstream"]["segments"] == WorkDir(tmp_path).require_segments()[
        "fingerprint"]
    assert sorted(p.name for p in (tmp_path / "index").glob("*.faiss")) == ["c0001.faiss", "c0012.faiss"]
    assert sorted(m["files"]) == ["c0001.faiss", "c0012.faiss"]
    assert not list((tmp_path / "index").glob(".*tmp")) and not (tmp_path / "index.new").exists()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="no finished segment store.*index build"):
        build_index(tmp_path, progress=False)
    with pytest.raises(StageError, match="index build"):
        RetrievalIndex(tmp_path)


def test_changed_store_needs_rebuild(tmp_path):
    make_store(tmp_path)
    build_index(tmp_path, progress=False)
    make_store(tmp_path, seed=1)
    with pytest.raises(StageError, match="another segment store.*rerun `resail index build"):
        RetrievalIndex(tmp_path)
    build_index(tmp_path, progress=False)  # the new fingerprint triggers a rebuild by itself
    RetrievalIndex(tmp_path).shard(1)


def test_shard_manifest_mismatch_is_a_clear_error(tmp_path):
    make_store(tmp_path)
    build_index(tmp_path, progress=False)
    path = tmp_path / "index" / "manifest.json"
    m = json.loads(path.read_text())
    m["shards"]["1"]["n"] += 1
    path.write_text(json.dumps(m))
    index = RetrievalIndex(tmp_path)
    with pytest.raises(StageError, match="c0001.faiss.*--rebuild"):
        index.shard(1)
    m["shards"]["1"]["n"] -= 1
    m["shards"]["1"]["order_hash"] = "0" * 16
    path.write_text(json.dumps(m))
    with pytest.raises(StageError, match="does not match.*--rebuild"):
        RetrievalIndex(tmp_path).shard(1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "window", "same size"])
def test_corrupt_shard_file_is_a_clear_error(tmp_path, damage):
    make_store(tmp_path)
    build_index(tmp_path, progress=False, ivf_threshold=40)
    shard = tmp_path / "index" / "c0001.faiss"
    if damage == "window":
        shard, damage = sorted((tmp_path / "index").glob("c0001.w*.faiss"))[0], "garbage"
    if damage == "garbage":
        shard.write_bytes(b"not a faiss index" * 10)
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "missing":
        shard.unlink()
    else:  # bytes damaged behind the manifest's back (size and mtime kept): caught as the shard loads
        st = shard.stat()
        shard.write_bytes(b"x" * st.st_size)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
        index = RetrievalIndex(tmp_path)
        with pytest.raises(StageError, match="c0001.faiss: corrupt shard file.*--rebuild"):
            index.shard(1)
        index.shard(12)  # other shards still load
    if damage != "same size":
        with pytest.raises(StageError, match=f"{shard.name}.*index is damaged.*--rebuild"):
            RetrievalIndex(tmp_path)
        build_index(tmp_path, progress=False, ivf_threshold=40)  # a damaged index is rebuilt by itself
    else:
        build_index(tmp_path, progress=False, ivf_threshold=40, rebuild=True)
    assert RetrievalIndex(tmp_path).shard(1).n == 50


def test_an_index_build_killed_before_it_published_is_finished(baked_copy, monkeypatch):
    """`index build` publishes the new store with the index built from it: killed before that
    (both sealed, as segments@N and index@N), it leaves the previous pair in use, and the next
    build publishes the sealed pair without rebuilding it."""
    work = baked_copy
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


def test_a_second_index_build_fails_at_once_naming_the_first(baked_copy, capsys):
    work = baked_copy
    wd = WorkDir(work)
    m = wd.require_segments()
    with held_elsewhere(wd.locks, "index") as pid:
        assert main(["index", "build", "--dataset", "ade20k", "--root", m["params"]["root"], "--work",
                     str(work)]) == 1
        assert f"pid {pid}" in one_error_line(capsys)


def test_a_full_disk_during_index_build_is_one_line_and_keeps_the_index(baked_copy, monkeypatch, capsys):
    work = baked_copy
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


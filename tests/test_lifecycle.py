"""The stage lifecycle (lifecycle.py): locks that forked workers never hold, versions published by
one link switch, pins that keep what a reader reads, recovery; and readers looping while `index
build` and `guidance bake` publish new versions, without one error and without mixing versions; stage
locks reentrant within a process and released for the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders.checks import taken_elsewhere
from builders.work import baked_work
from resail.artifacts import write_manifest
from resail.cli import main
from resail.errors import BusyError
from resail.index.retrieval import RetrievalIndex
from resail.lifecycle import Stage, StageLock, Versions, open_versions, stage_lock
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.guidance import open_composer, open_guidance
from resail.pipeline.store import SegmentStore
from resail.workdir import WorkDir

# Takes the lock, forks a child that keeps the lock file's descriptor (as a data-loader worker
# does), prints both pids and waits.
FORKING_HOLDER = """
import os, sys, time
from resail.lifecycle import StageLock
lock = StageLock(sys.argv[1], "a test holder").acquire()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(os.getpid(), child, flush=True)
sys.stdin.read()
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_writer_frees_its_lock_at_once_though_its_forked_child_lives(tmp_path):
    path = tmp_path / "run-x.lock"
    p = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    parent, child = map(int, p.stdout.readline().split())
    try:
        with pytest.raises(BusyError, match=f"pid {parent} on "):  # a live holder is refused, by name
            StageLock(path, "x").acquire()
        p.kill()
        p.wait(timeout=60)
        lock = StageLock(path, "x").acquire()  # the child still has the file open, and holds nothing
        assert alive(child)
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def _try_elsewhere(path: Path) -> str:
    """Another process trying the lock `path` exclusively: "taken", or its error."""
    code = f"from resail.lifecycle import StageLock\nStageLock({str(path)!r}, 'x').acquire()\nprint('taken')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def test_naming_the_holder_does_not_drop_this_process_s_lock(tmp_path):
    """A process drops its POSIX locks on a file when it closes any descriptor of it: the holder
    record is read through the held descriptor."""
    path = tmp_path / "x.lock"
    lock = StageLock(path, "x").acquire()
    assert lock.holders().startswith(f"pid {os.getpid()} on ")
    assert "being written by another process" in _try_elsewhere(path)
    lock.release()
    assert _try_elsewhere(path).strip() == "taken"


def _finish(versions: Versions, value: int) -> None:
    versions.staging.mkdir(parents=True, exist_ok=True)
    (versions.staging / "data.txt").write_text(str(value))
    write_manifest(versions.staging, "demo", {"value": value}, files=["data.txt"])


def _commit(tmp_path: Path, value: int, **kw) -> Path:
    versions = Versions(tmp_path / "out", tmp_path / "locks", "out")
    with Stage(versions, stage_lock(tmp_path / "locks", "out", "demo"), stage="demo", what="demo") as st:
        _finish(versions, value)
        return st.commit(**kw)


def test_a_commit_is_one_link_switch_and_old_versions_go_once_unread(tmp_path):
    versions = Versions(tmp_path / "out", tmp_path / "locks", "out")
    assert _commit(tmp_path, 1) == tmp_path / "out@1" and os.readlink(tmp_path / "out") == "out@1"
    [reader] = open_versions(tmp_path / "locks", [versions])  # pins out@1
    assert _commit(tmp_path, 2) == tmp_path / "out@2"
    assert (tmp_path / "out" / "data.txt").read_text() == "2" and (reader.folder / "data.txt").read_text() == "1"
    assert versions.numbers() == [1, 2]  # out@1 is pinned: kept
    reader.close()
    _commit(tmp_path, 3)
    assert versions.numbers() == [3] and not list(tmp_path.glob(".out@*"))
    assert sorted(p.name for p in (tmp_path / "locks").glob("out@*.pin")) == ["out@3.pin"]


def test_a_sealed_version_waits_for_its_publish_and_a_plain_folder_becomes_version_0(tmp_path):
    legacy = tmp_path / "out"
    legacy.mkdir()
    (legacy / "data.txt").write_text("0")  # what an older resail left: a plain folder
    versions = Versions(legacy, tmp_path / "locks", "out")
    assert versions.current() == legacy == versions.newest()
    _commit(tmp_path, 1, publish_now=False)
    assert versions.current() == legacy and versions.newest() == tmp_path / "out@1"
    with Stage(versions, stage_lock(tmp_path / "locks", "out", "demo"), stage="demo", what="demo") as st:
        assert st.up_to_date({"value": 1}) and not st.up_to_date({"value": 1}, upstream={"x": "y"})
        with pytest.raises(Exception, match=r"out: demo was built with other parameters \(value 1 → 2\)"):
            st.up_to_date({"value": 2})
        st.publish()
    assert os.readlink(legacy) == "out@1" and versions.numbers() == [1]  # out@0 (the old folder) collected


def test_a_finished_staging_folder_a_killed_writer_left_is_sealed(tmp_path):
    versions = Versions(tmp_path / "out", tmp_path / "locks", "out")
    _commit(tmp_path, 1)
    _finish(versions, 2)  # killed after writing the manifest, before sealing
    with Stage(versions, stage_lock(tmp_path / "locks", "out", "demo"), stage="demo", what="demo") as st:
        assert not versions.staging.exists() and st.manifest["params"] == {"value": 2}
        assert st.up_to_date({"value": 2})
        st.publish()
    assert (tmp_path / "out" / "data.txt").read_text() == "2"


# ---------------------------------------------------------------- readers during swaps

SIZE = 64
# Rebuilds the store and index (published together, as `resail index build` does), then re-bakes
# the val split alternately with k=3 and k=5, printing a line after each publish.
WRITER = """
import sys
from resail.cli import main
work, root, what, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(rounds):
    if what == "index":
        argv = ["index", "build", "--dataset", "ade20k", "--root", root, "--work", work, "--rebuild"]
    else:
        argv = ["guidance", "bake", work, "--split", "val", "--k", str(3 + 2 * (i % 2)), "--size", "64x64",
                "--previews", "1", "--rebuild"]
    assert main(["-q", *argv]) == 0
    print("published", flush=True)
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return baked_work(tmp_path_factory.mktemp("lifecycle"), n_train=6, n_val=2, size=SIZE, seed=4, splits=("val",),
                      k=5)


def _read_index(work: Path) -> str:
    """What `index query` and the bake read: the index, every shard (each checked against the
    store's rows as it loads), the store's crops. Returns the index version's fingerprint."""
    index = RetrievalIndex(work)
    for c in index.classes:
        index.shard(c)
    with SegmentStore(index.work, "train") as store:
        store.crop(0)
        np.asarray(store.canonical_packed()[:4])
    return index.manifest["fingerprint"]


def _read_guidance(work: Path) -> str:
    """What training and eval read: the cache, the matches and the composer, all of one bake."""
    with WorkDir(work).snapshot(guidance=("val",)) as snap:
        k = snap.require_guidance("val")["params"]["k"]
        with open_guidance(snap, "val") as f:
            assert f.attrs["k"] == k and f["guidance"][0].any()
        assert pq.read_table(snap.matches_table("val"))["rank"].to_numpy().max() == k - 1
        comp = open_composer(snap, "val")
        try:
            assert comp.ids.shape[1] == k
            comp.compose(0)
        finally:
            comp.close()
        return snap.guidance_manifest("val")["fingerprint"]


@pytest.mark.parametrize("what,read", [("index", _read_index), ("bake", _read_guidance)])
def test_readers_looping_while_versions_are_published_never_fail(work, what, read):
    root = WorkDir(work).segments_manifest()["params"]["root"]
    bake(BakeConfig(work, "val", k=5, size=(SIZE, SIZE), n_preview=0))  # current with the index (or baked again)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(work), root, what, "3"], stdout=subprocess.PIPE,
                              text=True)
    seen, reads, published = set(), 0, 0
    try:
        while writer.poll() is None:
            seen.add(read(work))  # any exception fails the test
            reads += 1
    finally:
        writer.wait(timeout=300)
    published = writer.stdout.read().count("published")
    assert writer.returncode == 0 and published == 3
    assert reads > 10 and len(seen) >= 2, (reads, seen)  # the loop read across publishes


def test_a_reader_keeps_reading_its_version_after_a_publish(work):
    """An open store keeps its files (pinned), whatever `index build` publishes meanwhile."""
    rebuild = ["-q", "index", "build", "--dataset", "ade20k", "--root", WorkDir(work).segments_manifest()["params"][
        "root"], "--work", str(work), "--rebuild"]
    with SegmentStore(work, "train") as store:
        before = store.folder
        crops = [store.crop(i)[0].copy() for i in range(3)]
        assert main(rebuild) == 0  # in this process: its own pin counts like any reader's
        assert WorkDir(work).versions("segments").current() != before and before.is_dir()
        assert all(np.array_equal(store.crop(i)[0], c) for i, c in enumerate(crops))
    assert before.exists()  # unpinned now: the next writer deletes it
    assert main(rebuild) == 0
    assert not before.exists()


def test_guidance_keeps_its_file_names_beside_the_split_link(work):
    wd = WorkDir(work)
    g = wd.guidance
    assert os.readlink(g / "val").startswith("val@")
    for name in ("val_matches.parquet", "val.h5", "val_manifest.json"):
        assert os.readlink(g / name) == f"val/{name}" and (g / name).is_file()
    with h5py.File(g / "val.h5") as f:
        assert f["guidance"].shape[0] == 2


def test_locks_are_reentrant_in_one_process_and_released(tmp_path):
    a = StageLock(tmp_path / "x.lock", "x").acquire()
    b = StageLock(tmp_path / "x.lock", "x").acquire()
    a.release()
    other = taken_elsewhere(tmp_path, "x")
    assert other.returncode != 0 and f"being written by another process (pid {os.getpid()} on" in other.stderr
    b.release()
    assert taken_elsewhere(tmp_path, "x").returncode == 0


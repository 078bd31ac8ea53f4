"""The dask backend of the stage runner: a local cluster of 2 worker processes writes the same bytes
as `--jobs 1` (toy data, segment store, guidance cache); killed workers never leave a part that
passes for finished, and the stage completes (dask reruns the task) or stops with one line and a
rerun completes; an unreachable scheduler and a missing dask each give one line."""

import hashlib
import os
import signal
import sys
from pathlib import Path

import h5py
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from builders.work import toy_dataset
from resail.cli import main
from resail.errors import ConfigError, InputError, StageError
from resail.index.build import build_index
from resail.pipeline import bake as bake_mod
from resail.pipeline import runner, segments_stage
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.runner import parallel_backend
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.workdir import WorkDir

SIZE = 64
OUTPUTS = [f"segments/{s}{x}" for s in ("train", "val") for x in (".h5", ".parquet", "_images.parquet")] + [
    "guidance/val.h5", "guidance/val_matches.parquet"]


def _digests(root: Path, names) -> dict[str, str]:
    """File bytes; for the matches table its rows (its metadata carries the inputs' fingerprints,
    which name files by mtime, so two work dirs never share those bytes)."""
    out = {}
    for n in names:
        if n.endswith("_matches.parquet"):
            data = repr(pq.read_table(root / n).replace_schema_metadata(None).to_pydict()).encode()
        else:
            data = (root / n).read_bytes()
        out[n] = hashlib.sha256(data).hexdigest()
    return out


def _tree(root: Path) -> dict[str, str]:
    return _digests(root, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    """Parts of 3 images, so a 16-image split is 6 tasks spread over the workers."""
    monkeypatch.setattr(segments_stage, "PART_IMAGES", 3)
    monkeypatch.setattr(bake_mod, "PART_IMAGES", 3)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy"), n_train=16, n_val=6, size=SIZE, seed=5)


def _stages(root: Path, work: Path, **flags) -> Path:
    build_segments(SegmentsConfig("ade20k", root, work, **flags))
    build_index(work, progress=False)
    bake(BakeConfig(work, "val", k=3, size=(SIZE, SIZE), n_preview=0, **flags))
    return work


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    segments_stage.PART_IMAGES, bake_mod.PART_IMAGES, old = 3, 3, (segments_stage.PART_IMAGES, bake_mod.PART_IMAGES)
    try:
        work = _stages(toy, tmp_path_factory.mktemp("ref") / "work", jobs=1)
    finally:
        segments_stage.PART_IMAGES, bake_mod.PART_IMAGES = old
    return _digests(work, OUTPUTS)


def test_stages_on_a_dask_cluster_write_the_same_bytes_as_one_job(toy, reference, cluster, tmp_path):
    with parallel_backend("dask", cluster.scheduler_address):
        work = _stages(toy, tmp_path / "work")
    assert _digests(work, OUTPUTS) == reference


def test_toy_data_on_a_local_cluster_is_byte_identical(tmp_path):
    args = ["data", "toy", "--n-train", "6", "--n-val", "3", "--size", "64x48", "-q"]
    assert main([*args, str(tmp_path / "one")]) == 0
    assert main([*args, str(tmp_path / "dask"), "--backend", "dask", "--jobs", "2"]) == 0
    assert _tree(tmp_path / "one") == _tree(tmp_path / "dask")


def _kill_workers_once(cluster, killed: list):
    """An `on_part` hook: after the first finished part, SIGKILL every worker process (mid-task)."""
    def hook(split, a, b):
        if not killed:
            with Client(cluster.scheduler_address) as client:
                pids = client.run(os.getpid)
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids.values())
    return hook


def _parts_are_whole(work: Path) -> None:
    """Every file under a part's final name is a complete HDF5 part of this job (a killed writer
    leaves at most a `.name.*.tmp` file, which nothing takes for a part)."""
    keys = set()
    paths = list(WorkDir(work).segment_parts.glob("*/[0-9]*.h5"))
    for path in paths:
        with h5py.File(path, "r") as f:
            keys.add(f.attrs["key"])
            assert f["segments"].shape[0] == f["canonical"].shape[0]
    assert paths and len(keys) == 1


def test_killed_workers_are_retried_and_a_failed_stage_resumes(toy, reference, cluster, tmp_path):
    # default retries: the killed tasks run again on the restarted workers and the stage completes
    killed: list = []
    with parallel_backend("dask", cluster.scheduler_address):
        build_segments(SegmentsConfig("ade20k", toy, tmp_path / "a"), on_part=_kill_workers_once(cluster, killed))
    assert killed
    build_index(tmp_path / "a", progress=False)
    bake(BakeConfig(tmp_path / "a", "val", k=3, size=(SIZE, SIZE), n_preview=0))
    assert _digests(tmp_path / "a", OUTPUTS) == reference

    # no retries allowed: the stage stops with one line; the parts on disk are whole; a rerun completes
    scheduler, allowed = cluster.scheduler, cluster.scheduler.allowed_failures
    scheduler.allowed_failures = 0
    killed.clear()
    try:
        with pytest.raises(StageError, match="a dask worker died .* rerun the same command"):
            with parallel_backend("dask", cluster.scheduler_address):
                build_segments(SegmentsConfig("ade20k", toy, tmp_path / "b"),
                               on_part=_kill_workers_once(cluster, killed))
    finally:
        scheduler.allowed_failures = allowed
    assert WorkDir(tmp_path / "b").segments_manifest() is None
    _parts_are_whole(tmp_path / "b")
    with parallel_backend("dask", jobs=2):  # the rerun, as a new command: a local cluster of its own
        _stages(toy, tmp_path / "b")
    assert _digests(tmp_path / "b", OUTPUTS) == reference


def test_unreachable_scheduler_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT_S", 1)
    code = main(["data", "toy", str(tmp_path / "t"), "--n-train", "2", "--n-val", "1", "--backend", "dask",
                 "--scheduler", "tcp://127.0.0.1:9"])
    info, err = capsys.readouterr().err.strip().rsplit("\n", 1)
    assert code == 1 and info.startswith("threads: ") and "\n" not in info  # the thread policy's info line
    assert err.startswith("error: dask scheduler tcp://127.0.0.1:9: cannot connect")
    assert not (tmp_path / "t").exists()


def test_missing_dask_and_bad_flags_are_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    with pytest.raises(InputError, match=r"pip install 'resail\[dask\]'"):
        with parallel_backend("dask"):
            pass
    with pytest.raises(ConfigError, match="a scheduler address goes with the dask backend") as e:
        with parallel_backend("loky", "tcp://somewhere:8786"):
            pass
    assert e.value.name == "scheduler"

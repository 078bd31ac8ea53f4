"""synth/checkpoint.py on its own, with tiny dicts and no training: a run's checkpoints listed in step
order and pruned to the newest few, foreign and missing files refused in one line, a full disk that
keeps the previous file, and the RNG states a resume restores."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resail.errors import DiskFullError, InputError
from resail.synth.checkpoint import (
    SNAPSHOT_FORMAT,
    find_snapshot,
    list_checkpoints,
    read_checkpoint,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
    write_checkpoint,
)
from resail.workdir import WorkDir


def test_a_run_keeps_its_newest_checkpoints_of_each_kind_in_step_order(tmp_path):
    for step in (2, 10, 1):  # step 1 comes last: it is the oldest, so it is the one dropped
        save_run_checkpoint(tmp_path, step, {"name": "r"}, {"w": torch.full((1,), float(step))}, {"rng": {}}, keep=2)
    (tmp_path / "checkpoints" / "state-latest.pt").write_bytes(b"")  # not a checkpoint name: never listed
    for kind in ("state", "snapshot"):
        assert [p.name for p in list_checkpoints(tmp_path, kind)] == [f"{kind}-00000002.pt", f"{kind}-00000010.pt"]
    snap = read_checkpoint(list_checkpoints(tmp_path, "snapshot")[-1], SNAPSHOT_FORMAT)
    assert snap["step"] == 10 and snap["G_ema"]["w"].item() == 10.0
    assert list_checkpoints(tmp_path / "nothing", "state") == []


def test_foreign_truncated_and_missing_files_are_one_line_each(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "someone-else/1"}, foreign)
    with pytest.raises(InputError, match=r"foreign.pt: not a resail .*checkpoint \(expected format .resail-snapshot/1.\)"):
        read_checkpoint(foreign, SNAPSHOT_FORMAT)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(foreign.read_bytes()[:40])
    with pytest.raises(InputError, match=r"truncated.pt: unreadable or corrupt resail-snapshot checkpoint .*; fix it"):
        read_checkpoint(truncated, SNAPSHOT_FORMAT, corrupt_fix="fix it")
    with pytest.raises(InputError, match=r"missing.pt: no such generator checkpoint; train first"):
        read_checkpoint(tmp_path / "missing.pt", SNAPSHOT_FORMAT, what="generator", missing_fix="train first")


def test_find_snapshot_names_the_runs_there_are(tmp_path):
    wd = WorkDir(tmp_path)
    (wd.run("a") / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match=r"no generator snapshot; train with `resail train` first"):
        find_snapshot(tmp_path, "a")
    with pytest.raises(InputError, match=r"runs/b: no such run; runs here: a"):
        find_snapshot(tmp_path, "b")
    save_run_checkpoint(wd.run("a"), 3, {}, {}, {}, keep=1)
    assert find_snapshot(tmp_path, "a").name == "snapshot-00000003.pt"
    assert find_snapshot(tmp_path, "b", checkpoint="given.pt") == Path("given.pt")  # an explicit file wins


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    write_checkpoint(tmp_path / "rng.pt", {"format": "rng/1", "rng": rng_state()})
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(read_checkpoint(tmp_path / "rng.pt", "rng/1")["rng"])  # the load is weights_only=True
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_a_checkpoint_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
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

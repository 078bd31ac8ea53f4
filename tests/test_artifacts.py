"""artifacts.py: atomic writes that leave the previous file or nothing, a full disk as one line, the
manifest's file records that catch a truncated or touched artifact, and the modes stages write."""

import errno
import os
from pathlib import Path

import pytest

from builders.checks import SIDE
from builders.work import baked_work
from resail.artifacts import atomic_path, check_files, param_changes, read_manifest, write_bytes_atomic, write_manifest
from resail.errors import DiskFullError, StageError


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    write_bytes_atomic(target, b"previous")
    with pytest.raises(ValueError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("boom")
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(DiskFullError, match="bytes.bin: the disk is full .*nothing was replaced"):
        with atomic_path(tmp_path / "bytes.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")  # ENOSPC from any plain write
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_the_manifest_catches_a_missing_truncated_or_touched_file(tmp_path):
    for name in ("a.bin", "b.bin"):
        write_bytes_atomic(tmp_path / name, b"12345")
    m = write_manifest(tmp_path, "demo", {"k": 5}, files=["a.bin", "b.bin"])
    assert read_manifest(tmp_path) == m
    check_files(tmp_path, m, "rerun it")
    os.utime(tmp_path / "b.bin", ns=(0, 0))
    with pytest.raises(StageError, match=r"b.bin: modified after the stage wrote it; rerun it"):
        check_files(tmp_path, m, "rerun it")
    (tmp_path / "a.bin").write_bytes(b"12")
    with pytest.raises(StageError, match=r"a.bin: 2 bytes, but the stage wrote 5 \(truncated or replaced\)"):
        check_files(tmp_path, m, "rerun it")
    (tmp_path / "a.bin").unlink()
    with pytest.raises(StageError, match=r"a.bin: missing, though the stage's manifest lists it"):
        check_files(tmp_path, m, "rerun it")
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StageError, match="not a stage manifest; rerun the stage with --rebuild"):
        read_manifest(tmp_path)
    assert param_changes({"k": 10, "seed": 0}, {"k": 5, "seed": 0, "size": [64, 64]}) == "k 10 → 5, size null → [64, 64]"


def test_artifacts_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        work = baked_work(tmp_path, n_train=4, n_val=2, size=SIDE, seed=2, k=3)
    finally:
        os.umask(old)
    files = [p for p in Path(work).rglob("*") if p.is_file() and "locks" not in p.parts]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {"0o640"}

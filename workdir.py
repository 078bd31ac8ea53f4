"""The work-directory layout (DESIGN.md, "Data flow and artifacts"), named in one place, and the
checks of the artifact chain every consumer reads through.

One work directory holds every artifact of one dataset. Every module asks `WorkDir` for a path
instead of assembling it, and asks it for the "run `resail …` first" error when a stage's output
is missing or stale, so the layout and the advice live here only:

    WORK/segments/{split}.parquet, {split}.h5, {split}_images.parquet, manifest.json
    WORK/segments.new/          a rebuild of the store (and its parts/) until it replaces segments/
    WORK/index/c{class:04d}.faiss, manifest.json          (index.new/ while rebuilt)
    WORK/guidance/{split}_matches.parquet, {split}.h5, {split}_preview/, {split}_manifest.json
    WORK/guidance/{split}.new/  a bake (matches, parts/, cache, previews) until it replaces the split's files
    WORK/segnet/{name}.pt
    WORK/runs/NAME/   config.json, lineage.json, stats.jsonl, samples/, checkpoints/
    WORK/eval/NAME/   metrics.json, images, grids
    WORK/locks/       index.lock, guidance-{split}.lock, run-NAME.lock (artifacts.StageLock)

The chain (artifacts.py, "Manifests and lineage"): segments ← dataset files + parameters;
index ← segments; guidance of a split ← segments + index + parameters; a run ← the train
guidance (`runs/NAME/lineage.json`). `require_segments`, `require_index` and
`require_guidance` check every link up to the store (manifest fingerprints, and the size and
mtime of the files each manifest lists) and raise one StageError naming the command to rerun;
consumers call them and never read a stage's files unchecked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .artifacts import (
    MANIFEST,
    StageLock,
    check_files,
    read_manifest,
    stage_lock,
    staging_dir,
    swap_interrupted,
    write_json_atomic,
)
from .errors import InputError, StageError

log = logging.getLogger("resail")

SPLITS = ("train", "val")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INDEX_LOCK = "index"  # `resail index build` writes the segment store and the index under one lock


def check_run_name(name: str) -> str:
    """A run name is one path component of letters, digits, '.', '_' or '-' (no '..', no '/')."""
    if not isinstance(name, str) or not _RUN_NAME.match(name) or ".." in name:
        raise InputError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only "
                         "(one folder name under WORK/runs, not a path)")
    return name


@dataclass(frozen=True)
class WorkDir:
    """The paths of one work directory; nothing is created or read until asked."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    # -- stage 1: the segment store ------------------------------------------------------------
    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def segments_staging(self) -> Path:
        """Where a (re)build of the store is written until it replaces `segments/`."""
        return staging_dir(self.segments)

    # Each file of a split is named here once; `folder` is the store's staging copy while it is built.
    def segments_table(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.segments) / f"{split}.parquet"

    def segments_h5(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.segments) / f"{split}.h5"

    def images_table(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.segments) / f"{split}_images.parquet"

    @property
    def segment_parts(self) -> Path:
        return self.segments_staging / "parts"

    def segments_manifest(self) -> dict | None:
        return read_manifest(self.segments)

    def index_build_command(self, manifest: dict | None = None) -> str:
        """`resail index build …` for this work dir, with the dataset and root the store was built from."""
        p = (manifest or {}).get("params", {})
        return (f"resail index build --dataset {p.get('dataset', '…')} --root {p.get('root', '…')} "
                f"--work {self.root}")

    def require_segments(self) -> dict:
        """The finished segment store's manifest, its files checked; or the error that says what to run."""
        m = self.segments_manifest()
        if m is None:
            if swap_interrupted(self.segments):
                raise StageError(f"{self.segments}: a rebuild was interrupted while it replaced the segment store; "
                                 f"rerun `{self.index_build_command()}` to finish it")
            raise StageError(f"{self.segments}: no finished segment store; run `{self.index_build_command()}` first")
        check_files(self.segments, m, f"the segment store is damaged; rerun `{self.index_build_command(m)}` "
                                      "to rebuild it")
        return m

    # -- stage 2: the retrieval index ----------------------------------------------------------
    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def index_staging(self) -> Path:
        return staging_dir(self.index)

    def index_shard(self, class_id: int) -> Path:
        return self.index / f"c{int(class_id):04d}.faiss"

    def index_manifest(self) -> dict | None:
        return read_manifest(self.index)

    def require_index(self, *, check_shards: bool = True) -> dict:
        """The finished index's manifest, checked against the current segment store (and, with
        `check_shards`, its shard files against their records); or the error naming what to run."""
        seg = self.require_segments()
        cmd = self.index_build_command(seg)
        m = self.index_manifest()
        if m is None:
            what = "a rebuild was interrupted while it replaced the index" if swap_interrupted(self.index) \
                else "no finished retrieval index"
            raise StageError(f"{self.index}: {what}; run `{cmd}` first")
        if m.get("stage") != "index":
            raise StageError(f"{self.index}/{MANIFEST} is not an index manifest; rerun `{cmd} --rebuild`")
        if (m.get("upstream") or {}).get("segments") != seg["fingerprint"]:
            raise StageError(f"{self.index}: built from another segment store than {self.segments} holds now "
                             f"(rebuilt since); rerun `{cmd}` to rebuild the index")
        if check_shards:
            check_files(self.index, m, f"the index is damaged; rerun `{cmd} --rebuild`")
        return m

    # -- guidance bake -------------------------------------------------------------------------
    @property
    def guidance(self) -> Path:
        return self.root / "guidance"

    # `folder` is the split's staging folder while a bake writes it.
    def matches_table(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.guidance) / f"{split}_matches.parquet"

    def guidance_h5(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.guidance) / f"{split}.h5"

    def guidance_staging(self, split: str) -> Path:
        """Where a bake of `split` is written (matches, parts, cache, previews) until it replaces the split's files."""
        return self.guidance / f"{split}.new"

    def guidance_parts(self, split: str) -> Path:
        return self.guidance_staging(split) / "parts"

    def guidance_preview(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.guidance) / f"{split}_preview"

    @staticmethod
    def guidance_manifest_name(split: str) -> str:
        return f"{split}_manifest.json"

    def guidance_manifest(self, split: str) -> dict | None:
        return read_manifest(self.guidance, self.guidance_manifest_name(split))

    def bake_command(self, split: str) -> str:
        return f"resail guidance bake {self.root} --split {split}"

    def require_guidance(self, split: str) -> dict:
        """The split's bake manifest, checked against the current index and segment store and its
        files against their records; or the error naming the command to rerun."""
        idx = self.require_index(check_shards=False)
        seg = self.segments_manifest()
        m = self.guidance_manifest(split)
        fix = f"`{self.bake_command(split)}`"
        if m is None:
            if (self.guidance_staging(split) / self.guidance_manifest_name(split)).exists():
                raise StageError(f"{self.guidance}: a bake of split {split!r} was interrupted while it replaced the "
                                 f"previous one; rerun {fix} to finish it")
            raise StageError(f"{self.guidance}: split {split!r} is not baked; run {fix} first")
        up = m.get("upstream") or {}
        if up.get("segments") != seg["fingerprint"] or up.get("index") != idx["fingerprint"]:
            raise StageError(f"{self.guidance}: the {split} guidance was baked from another segment store or index "
                             f"than this work dir holds now (rebuilt since); rerun {fix}")
        check_files(self.guidance, m, f"the {split} guidance is damaged; rerun {fix}")
        return m

    # -- one writer per stage or run -----------------------------------------------------------
    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def lock(self, name: str, what: str, *, shard: tuple[int, int] | None = None, merge: bool = True):
        """A context manager holding the stage lock `locks/NAME.lock` (see `artifacts.stage_lock`)."""
        return stage_lock(self.locks, name, f"{what} of {self.root}", shard=shard, merge=merge)

    # -- segmentation network, runs, evaluation ------------------------------------------------
    @property
    def segnet_dir(self) -> Path:
        return self.root / "segnet"

    def segnet(self, name: str) -> Path:
        return self.segnet_dir / f"{name}.pt"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, name: str) -> Path:
        return self.runs / check_run_name(name)

    def require_run(self, name: str) -> Path:
        path = self.run(name)
        if not path.is_dir():
            raise InputError(f"{path}: no such run; train one with `resail train {self.root} --name {name}` first")
        return path

    def run_lineage(self, name: str) -> Path:
        return self.run(name) / "lineage.json"

    def claim_run(self, name: str, *, resuming: bool) -> StageLock:
        """Take run NAME's lock for this training process (held until the returned lock is released)
        and record what it trains on in `runs/NAME/lineage.json`: the train guidance (checked
        through the chain) and the store and index it came from. A resumed run must find the same
        guidance (same store, index and bake parameters, hence the same bytes)."""
        lock = StageLock(self.locks / f"run-{check_run_name(name)}.lock", f"run {name!r} of {self.root}").acquire()
        try:
            g = self.require_guidance("train")
            lineage = {"segments": g["upstream"]["segments"], "index": g["upstream"]["index"],
                       "guidance": {"fingerprint": g["fingerprint"], "params": g["params"]}}
            path = self.run_lineage(name)
            old = _read_json(path)
            same = old is not None and all(old.get(k) == lineage[k] for k in ("segments", "index")) \
                and (old.get("guidance") or {}).get("params") == g["params"]
            if resuming and old is not None and not same:
                raise StageError(f"{path}: run {name!r} was trained on guidance that {self.guidance} no longer holds "
                                 "(the store, index or bake changed since); train a new run with another --name")
            write_json_atomic(path, lineage)
        except BaseException:
            lock.release()
            raise
        return lock

    def check_run_lineage(self, name: str) -> None:
        """Warn when run NAME was trained on another segment store than the work dir holds now
        (its class statistics and retrieval pool changed); generating with it still works."""
        old = _read_json(self.run_lineage(name))
        seg = self.segments_manifest()
        if old is not None and seg is not None and old.get("segments") != seg.get("fingerprint"):
            log.warning("run %r was trained on another segment store than %s holds now (rebuilt since); "
                        "its retrieval pool and guidance differ from training", name, self.segments)

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / check_run_name(name)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


__all__ = ["MANIFEST", "SPLITS", "WorkDir", "check_run_name"]

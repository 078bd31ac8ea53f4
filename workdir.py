"""The work-directory layout (docs/architecture.md, "Stage lifecycle"), named in one place, the
checks of the artifact chain every consumer reads through, and the pinned snapshots readers read.

One work directory holds every artifact of one dataset. Every module asks `WorkDir` for a path
instead of assembling it, and asks it for the "run `resail …` first" error when a stage's output
is missing or stale, so the layout and the advice live here only:

    WORK/segments -> segments@N/   {split}.parquet, {split}.h5, {split}_images.parquet, manifest.json
    WORK/segments.new/             a rebuild of the store (and its parts/) until it is published
    WORK/index -> index@N/         c{class:04d}.faiss, manifest.json          (index.new/ while rebuilt)
    WORK/guidance/{split} -> {split}@N/   {split}_matches.parquet, {split}.h5, {split}_preview/,
                                          {split}_manifest.json     ({split}.new/ while baked)
    WORK/segnet/{name}.pt
    WORK/runs/NAME/                config.json, lineage.json, stats.jsonl, samples/, checkpoints/
    WORK/eval/NAME -> NAME@N/      metrics.json, images, grids                 (NAME@new/ while written)
    WORK/locks/                    index.lock, guidance-{split}.lock, run-NAME.lock, eval-NAME.lock,
                                   publish.lock, and one NAME@N.pin per version (lifecycle.py)

Each stage folder is a link to its current version (lifecycle.py, "Versions"). A reader reads
through a snapshot (`snapshot()`): a `WorkDir` bound to the versions current when it was taken,
pinned until `close()`, so its paths and manifests stay those of one version whatever is
published meanwhile. Readers (`SegmentStore`, `RetrievalIndex`, the guidance readers) take their
own snapshot when handed a plain work dir and share theirs with what they open.

The chain (artifacts.py, "Manifests and lineage"): segments ← dataset files + parameters;
index ← segments; guidance of a split ← segments + index + parameters; a run ← the train
guidance (`runs/NAME/lineage.json`). `require_segments`, `require_index` and
`require_guidance` check every link up to the store (manifest fingerprints, and the size and
mtime of the files each manifest lists) in one snapshot and raise one StageError naming the
command to rerun; consumers call them and never read a stage's files unchecked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable

from .artifacts import MANIFEST, check_files, write_json_atomic
from .choices import SPLITS
from .errors import InputError, StageError
from .lifecycle import Stage, StageLock, Version, Versions, open_versions, stage_lock

log = logging.getLogger("resail")

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INDEX_LOCK = "index"  # `resail index build` writes the segment store and the index under one lock


def check_run_name(name: str) -> str:
    """A run name is one path component of letters, digits, '.', '_' or '-' (no '..', no '/')."""
    if not isinstance(name, str) or not _RUN_NAME.match(name) or ".." in name:
        raise InputError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only "
                         "(one folder name under WORK/runs, not a path)")
    return name


class WorkDir:
    """The paths of one work directory; nothing is created or read until asked.

    A snapshot (`snapshot()`) is a WorkDir bound to pinned versions: its file paths and manifests
    are those versions'. `WorkDir(snapshot)` shares the binding (and not the pins, which stay the
    snapshot's); a snapshot pickled to another process keeps its paths, read under the pins of
    the process that took it."""

    def __init__(self, root: str | os.PathLike, *, view: dict[str, Version] | None = None):
        if isinstance(root, WorkDir):
            view = {**root._view, **(view or {})}
            root = root.root
        self.root = Path(root)
        self._view: dict[str, Version] = dict(view or {})
        self._owned: list[Version] = []

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r}{', pinned ' + ', '.join(self._view) if self._view else ''})"

    def __eq__(self, other) -> bool:
        return isinstance(other, WorkDir) and other.root == self.root and other._view.keys() == self._view.keys() \
            and all(other._view[k].folder == v.folder for k, v in self._view.items())

    def __hash__(self) -> int:
        return hash(self.root)

    def __getstate__(self) -> dict:
        return {"root": self.root, "_view": self._view, "_owned": []}

    # -- versions and snapshots ----------------------------------------------------------------
    def versions(self, key: str) -> Versions:
        """The versions of stage folder `key`: segments, index, guidance-{split} or eval-{run}."""
        if key in ("segments", "index"):
            return Versions(self.root / key, self.locks, key)
        kind, _, name = key.partition("-")
        if kind == "guidance" and name in SPLITS:  # the files keep their names beside the link: guidance/val.h5
            files = (f"{name}_matches.parquet", f"{name}.h5", f"{name}_preview", self.guidance_manifest_name(name))
            return Versions(self.guidance / name, self.locks, key, self.guidance_manifest_name(name), aliases=files,
                            legacy=self.guidance)
        if kind == "eval":
            folder = self.root / "eval" / check_run_name(name)
            return Versions(folder, self.locks, key, "metrics.json", staging=folder.with_name(f"{name}@new"))
        raise ValueError(f"no stage folder {key!r}")

    def stage(self, key: str, lock: str, what: str, *, stage: str, verb: str = "built",
              shard: tuple[int, int] | None = None, merge: bool = True, rebuild: bool = False,
              drop: Iterable[str] = ()) -> Stage:
        """One run of a stage writing folder `key` under `locks/LOCK.lock` (lifecycle.Stage)."""
        return Stage(self.versions(key), self.lock(lock, what, shard=shard, merge=merge), stage=stage, what=what,
                     verb=verb, exclusive=shard is None or merge, rebuild=rebuild, drop=drop)

    def snapshot(self, *, index: bool = False, guidance: Iterable[str] = ()) -> "WorkDir":
        """This work dir bound to the current segment store (and index, and guidance of the
        `guidance` splits), pinned until `close()`; versions this one already binds are kept."""
        guidance = tuple(guidance)
        keys = ["segments", *(["index"] if index or guidance else []), *(f"guidance-{s}" for s in guidance)]
        todo = [k for k in keys if k not in self._view]
        opened = open_versions(self.locks, [self.versions(k) for k in todo]) if todo else []
        snap = WorkDir(self, view={k: v or Version(self.versions(k).final, None) for k, v in zip(todo, opened)})
        snap._owned = [v for v in opened if v is not None]
        return snap

    def at_newest(self, key: str) -> "WorkDir":
        """This work dir bound, unpinned, to the newest version of `key` (one that waits to be
        published included): what a writer holding the lock that publishes `key` builds on."""
        v = self.versions(key)
        newest = v.newest()
        return WorkDir(self, view={key: Version(newest or v.final, v.manifest_of(newest))})

    def pins(self, key: str) -> bool:
        """Whether this WorkDir is bound to a version of `key`."""
        return key in self._view

    def folder(self, key: str) -> Path:
        """The folder readers read for `key`: the bound version, else the stage's link."""
        v = self._view.get(key)
        return v.folder if v is not None else self.versions(key).final

    def _manifest(self, key: str) -> dict | None:
        v = self._view.get(key)
        return v.manifest if v is not None else self.versions(key).manifest_of(self.versions(key).final)

    def close(self) -> None:
        """Release the pins this snapshot took."""
        for v in self._owned:
            v.close()
        self._owned = []

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _interrupted(self, key: str) -> bool:
        """Whether `key` has no current version because a build was killed before publishing its first one."""
        v = self.versions(key)
        return v.current() is None and (bool(v.numbers()) or (v.staging / v.manifest).exists())

    # -- stage 1: the segment store ------------------------------------------------------------
    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def segments_staging(self) -> Path:
        """Where a (re)build of the store is written until it is published."""
        return self.versions("segments").staging

    # Each file of a split is named here once; `folder` is the store's staging copy while it is built.
    def segments_table(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.folder("segments")) / f"{split}.parquet"

    def segments_h5(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.folder("segments")) / f"{split}.h5"

    def images_table(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.folder("segments")) / f"{split}_images.parquet"

    @property
    def segment_parts(self) -> Path:
        return self.segments_staging / "parts"

    def segments_manifest(self) -> dict | None:
        return self._manifest("segments")

    def index_build_command(self, manifest: dict | None = None) -> str:
        """`resail index build …` for this work dir, with the dataset and root the store was built from."""
        p = (manifest or {}).get("params", {})
        return (f"resail index build --dataset {p.get('dataset', '…')} --root {p.get('root', '…')} "
                f"--work {self.root}")

    def require_segments(self) -> dict:
        """The finished segment store's manifest, its files checked; or the error that says what to run."""
        with self.snapshot() as s:
            return s._check_segments()

    def _check_segments(self) -> dict:
        m = self.segments_manifest()
        if m is None:
            if self._interrupted("segments"):
                raise StageError(f"{self.segments}: a build was interrupted before it published the segment store; "
                                 f"rerun `{self.index_build_command()}` to finish it")
            raise StageError(f"{self.segments}: no finished segment store; run `{self.index_build_command()}` first")
        check_files(self.folder("segments"), m, f"the segment store is damaged; rerun "
                                                f"`{self.index_build_command(m)}` to rebuild it")
        return m

    # -- stage 2: the retrieval index ----------------------------------------------------------
    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def index_staging(self) -> Path:
        return self.versions("index").staging

    def index_shard(self, class_id: int) -> Path:
        return self.folder("index") / f"c{int(class_id):04d}.faiss"

    def index_manifest(self) -> dict | None:
        return self._manifest("index")

    def require_index(self, *, check_shards: bool = True) -> dict:
        """The finished index's manifest, checked against the segment store of the same snapshot (and,
        with `check_shards`, its shard files against their records); or the error naming what to run."""
        with self.snapshot(index=True) as s:
            return s._check_index(check_shards)

    def _check_index(self, check_shards: bool) -> dict:
        seg = self._check_segments()
        cmd = self.index_build_command(seg)
        m = self.index_manifest()
        if m is None:
            what = "a build was interrupted before it published the index" if self._interrupted("index") \
                else "no finished retrieval index"
            raise StageError(f"{self.index}: {what}; run `{cmd}` first")
        if m.get("stage") != "index":
            raise StageError(f"{self.index}/{MANIFEST} is not an index manifest; rerun `{cmd} --rebuild`")
        if (m.get("upstream") or {}).get("segments") != seg["fingerprint"]:
            raise StageError(f"{self.index}: built from another segment store than {self.segments} holds now "
                             f"(rebuilt since); rerun `{cmd}` to rebuild the index")
        if check_shards:
            check_files(self.folder("index"), m, f"the index is damaged; rerun `{cmd} --rebuild`")
        return m

    # -- guidance bake -------------------------------------------------------------------------
    @property
    def guidance(self) -> Path:
        return self.root / "guidance"

    def guidance_dir(self, split: str) -> Path:
        """The link to the split's current bake."""
        return self.guidance / split

    # `folder` is the split's staging folder while a bake writes it.
    def matches_table(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.folder(f"guidance-{split}")) / f"{split}_matches.parquet"

    def guidance_h5(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.folder(f"guidance-{split}")) / f"{split}.h5"

    def guidance_staging(self, split: str) -> Path:
        """Where a bake of `split` is written (matches, parts, cache, previews) until it is published."""
        return self.versions(f"guidance-{split}").staging

    def guidance_parts(self, split: str) -> Path:
        return self.guidance_staging(split) / "parts"

    def guidance_preview(self, split: str, folder: Path | None = None) -> Path:
        return (folder or self.folder(f"guidance-{split}")) / f"{split}_preview"

    @staticmethod
    def guidance_manifest_name(split: str) -> str:
        return f"{split}_manifest.json"

    def guidance_manifest(self, split: str) -> dict | None:
        return self._manifest(f"guidance-{split}")

    def bake_command(self, split: str) -> str:
        return f"resail guidance bake {self.root} --split {split}"

    def require_guidance(self, split: str) -> dict:
        """The split's bake manifest, checked against the index and segment store of the same snapshot
        and its files against their records; or the error naming the command to rerun."""
        with self.snapshot(guidance=(split,)) as s:
            return s._check_guidance(split)

    def _check_guidance(self, split: str) -> dict:
        idx = self._check_index(check_shards=False)
        seg = self.segments_manifest()
        m = self.guidance_manifest(split)
        fix = f"`{self.bake_command(split)}`"
        if m is None:
            if self._interrupted(f"guidance-{split}"):
                raise StageError(f"{self.guidance}: a bake of split {split!r} was interrupted before it was "
                                 f"published; rerun {fix} to finish it")
            raise StageError(f"{self.guidance}: split {split!r} is not baked; run {fix} first")
        up = m.get("upstream") or {}
        if up.get("segments") != seg["fingerprint"] or up.get("index") != idx["fingerprint"]:
            raise StageError(f"{self.guidance}: the {split} guidance was baked from another segment store or index "
                             f"than this work dir holds now (rebuilt since); rerun {fix}")
        check_files(self.folder(f"guidance-{split}"), m, f"the {split} guidance is damaged; rerun {fix}")
        return m

    # -- one writer per stage or run -----------------------------------------------------------
    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def lock(self, name: str, what: str, *, shard: tuple[int, int] | None = None, merge: bool = True):
        """A context manager holding the stage lock `locks/NAME.lock` (see `lifecycle.stage_lock`)."""
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

    def lock_run(self, name: str) -> StageLock:
        """Run NAME's lock, taken (`locks/run-NAME.lock`): one process writes a run at a time."""
        return StageLock(self.locks / f"run-{check_run_name(name)}.lock", f"run {name!r} of {self.root}").acquire()

    def claim_run(self, name: str, *, resuming: bool) -> StageLock:
        """Take run NAME's lock for this training process (held until the returned lock is released)
        and record what it trains on in `runs/NAME/lineage.json`, the run's manifest: the train
        guidance (checked through the chain) and the store and index it came from. A resumed run
        must find the same guidance (same store, index and bake parameters, hence the same bytes).
        A run is written in place (checkpoints, stats), so of the stage lifecycle it takes the
        lock and the check against its manifest; its checkpoints are its resumable parts."""
        lock = self.lock_run(name)
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


__all__ = ["MANIFEST", "WorkDir", "check_run_name"]

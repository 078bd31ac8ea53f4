"""The work-directory layout (DESIGN.md, "Data flow and artifacts"), named in one place.

One work directory holds every artifact of one dataset. Every module asks `WorkDir` for a path
instead of assembling it, and asks it for the "run `resail …` first" error when a stage's output
is missing, so the layout and the advice live here only:

    WORK/segments/{split}.parquet, {split}.h5, {split}_images.parquet, manifest.json, parts/
    WORK/index/c{class:04d}.faiss, manifest.json
    WORK/guidance/{split}_matches.parquet, {split}.h5, {split}_preview/, {split}_manifest.json
    WORK/segnet/{name}.pt
    WORK/runs/NAME/   config.json, stats.jsonl, samples/, checkpoints/
    WORK/eval/NAME/   metrics.json, images, grids
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .artifacts import MANIFEST, read_manifest
from .errors import InputError, StageError

SPLITS = ("train", "val")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_run_name(name: str) -> str:
    """A run name is one path component of letters, digits, '.', '_' or '-' (no '..', no '/')."""
    if not _RUN_NAME.match(name) or ".." in name:
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

    def segments_table(self, split: str) -> Path:
        return self.segments / f"{split}.parquet"

    def segments_h5(self, split: str) -> Path:
        return self.segments / f"{split}.h5"

    def images_table(self, split: str) -> Path:
        return self.segments / f"{split}_images.parquet"

    @property
    def segment_parts(self) -> Path:
        return self.segments / "parts"

    def segments_manifest(self) -> dict | None:
        return read_manifest(self.segments)

    def require_segments(self) -> dict:
        """The finished segment store's manifest, or the error that says how to build it."""
        m = self.segments_manifest()
        if m is None:
            raise StageError(f"{self.segments}: no finished segment store; run `resail index build {self.root} "
                             "--dataset … --root …` first")
        return m

    # -- stage 2: the retrieval index ----------------------------------------------------------
    @property
    def index(self) -> Path:
        return self.root / "index"

    def index_shard(self, class_id: int) -> Path:
        return self.index / f"c{int(class_id):04d}.faiss"

    def index_manifest(self) -> dict | None:
        return read_manifest(self.index)

    def require_index(self) -> dict:
        m = self.index_manifest()
        if m is None:
            raise StageError(f"{self.index}: no finished retrieval index; run `resail index build {self.root} "
                             "--dataset … --root …` first")
        return m

    # -- guidance bake -------------------------------------------------------------------------
    @property
    def guidance(self) -> Path:
        return self.root / "guidance"

    def matches_table(self, split: str) -> Path:
        return self.guidance / f"{split}_matches.parquet"

    def guidance_h5(self, split: str) -> Path:
        return self.guidance / f"{split}.h5"

    def guidance_parts(self, split: str) -> Path:
        return self.guidance / f"{split}.parts"

    def guidance_preview(self, split: str) -> Path:
        return self.guidance / f"{split}_preview"

    @staticmethod
    def guidance_manifest_name(split: str) -> str:
        return f"{split}_manifest.json"

    def guidance_manifest(self, split: str) -> dict | None:
        return read_manifest(self.guidance, self.guidance_manifest_name(split))

    def require_guidance(self, split: str) -> dict:
        m = self.guidance_manifest(split)
        if m is None or not self.guidance_h5(split).exists():
            raise StageError(f"{self.guidance}: split {split!r} is not baked; run `resail guidance bake "
                             f"{self.root} --split {split}` first")
        return m

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

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / check_run_name(name)


__all__ = ["MANIFEST", "SPLITS", "WorkDir", "check_run_name"]

"""The toy chain every end-to-end test and benchmark starts from: toy data → segments → index → bake.

Each step is the library call its CLI command makes (`resail data toy`, `resail index build`,
`resail guidance bake`), with progress bars and bake previews off, so a fixture reads as the
commands a user would type. `toy_work` and `baked_work` put the dataset in BASE/toy and the work
directory in BASE/work; a caller that needs other folders chains the three steps itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from resail.choices import SPLITS
from resail.index.build import build_index
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.pipeline.toy import ToyConfig, make_toy_dataset

Size = int | tuple[int, int]  # a side, or (W, H)


def _wh(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def toy_dataset(out: Path, *, n_train: int, n_val: int, size: Size = 256, seed: int = 0,
                fmt: str = "ade20k") -> Path:
    """`resail data toy OUT`: a toy dataset in `fmt`'s official layout; returns the root its reader takes."""
    width, height = _wh(size)
    return make_toy_dataset(Path(out), ToyConfig(fmt=fmt, n_train=n_train, n_val=n_val, width=width,
                                                 height=height, seed=seed))


def index_work(root: Path, work: Path, *, fmt: str = "ade20k", jobs: int = 1) -> Path:
    """`resail index build WORK`: the segment store and the retrieval index of a dataset; returns WORK."""
    build_segments(SegmentsConfig(dataset=fmt, root=Path(root), work=Path(work), jobs=jobs))
    build_index(Path(work), progress=False)
    return Path(work)


def bake_splits(work: Path, splits: tuple[str, ...] = SPLITS, *, size: Size, jobs: int = 1, **options) -> Path:
    """`resail guidance bake WORK --split S` for each split, at `size`, without previews; `options`
    are further `BakeConfig` fields (k, compose_mode, …). Returns WORK."""
    for split in splits:
        bake(BakeConfig(Path(work), split, size=_wh(size), jobs=jobs, n_preview=0, **options))
    return Path(work)


def toy_work(base: Path, *, n_train: int, n_val: int, size: Size, seed: int = 0, jobs: int = 1) -> Path:
    """A toy ADE20K-format dataset in BASE/toy, segmented and indexed in BASE/work (not baked)."""
    root = toy_dataset(Path(base) / "toy", n_train=n_train, n_val=n_val, size=size, seed=seed)
    return index_work(root, Path(base) / "work", jobs=jobs)


def baked_work(base: Path, *, n_train: int, n_val: int, size: Size, seed: int = 0, splits: tuple[str, ...] = SPLITS,
               guidance_size: Size | None = None, jobs: int = 1, **bake_options) -> Path:
    """`toy_work`, then the guidance of `splits` baked at `guidance_size` (default: the image size)."""
    work = toy_work(base, n_train=n_train, n_val=n_val, size=size, seed=seed, jobs=jobs)
    return bake_splits(work, splits, size=guidance_size or size, jobs=jobs, **bake_options)


def copy_work(work: Path, dst: Path) -> Path:
    """A private copy of a shared work dir, for a test that writes into it. The copy keeps every
    file's modification time, so its manifests still match their inputs (a file's fingerprint is
    its name, size and mtime), and the stage folders' links to their versions (lifecycle.py)."""
    return Path(shutil.copytree(work, dst, symlinks=True))

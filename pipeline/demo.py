"""`resail demo`: the whole pipeline on the built-in toy dataset, stage by stage.

Each stage is the same library call its CLI command makes; the demo only chooses small settings
and reports where every output went. Stages that are not built yet are listed as such at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..index.build import build_index
from .bake import BakeConfig, bake, preview_distort
from .segments_stage import SegmentsConfig, build_segments
from .toy import ToyConfig, make_toy_dataset

NOT_YET_BUILT = ("train (issue #8)", "eval and synthesize (issue #9)")
GUIDANCE_SIZE = (128, 128)  # the `toy` training preset's resolution


def run_demo(out: Path, *, n_train: int = 200, n_val: int = 40, seed: int = 0, jobs: int = 1,
             progress: bool = True) -> Iterator[tuple[str, str]]:
    """Run every built stage on a toy ADE20K-format dataset under `out`; yield (stage, output path)."""
    out = Path(out)
    root = make_toy_dataset(out / "toy_ade20k", ToyConfig(fmt="ade20k", n_train=n_train, n_val=n_val,
                                                          width=256, height=256, seed=seed), progress=progress)
    yield "toy dataset (ADE20K format)", str(root)
    work = out / "work"
    build_segments(SegmentsConfig(dataset="ade20k", root=root, work=work, jobs=jobs), progress=progress)
    yield "index build, stage 1: segment store", str(work / "segments")
    build_index(work, progress=progress)
    yield "index build, stage 2: FAISS shards", str(work / "index")
    for split in ("train", "val"):
        bake(BakeConfig(work, split, size=GUIDANCE_SIZE, jobs=jobs), progress=progress)
        yield f"guidance bake --split {split}", str(work / "guidance" / f"{split}.h5")
        yield f"guidance previews ({split})", str(work / "guidance" / f"{split}_preview")
    grid = preview_distort(work, out / "distortion_preview.png", n=6, seed=seed, size=GUIDANCE_SIZE)
    yield "guidance preview-distort", str(grid)
    for stage in NOT_YET_BUILT:
        yield stage, "not built yet"

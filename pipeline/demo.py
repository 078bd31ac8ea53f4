"""`resail demo`: the whole pipeline on the built-in toy dataset, stage by stage.

Each stage is the same library call its CLI command makes; the demo only chooses small settings
and reports where every output went. Stages that are not built yet are listed as such at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .toy import ToyConfig, make_toy_dataset

NOT_YET_BUILT = ("train (issue #8)", "eval and synthesize (issue #9)")


def run_demo(out: Path, *, n_train: int = 200, n_val: int = 40, seed: int = 0,
             progress: bool = True) -> Iterator[tuple[str, str]]:
    """Run every built stage on a toy ADE20K-format dataset under `out`; yield (stage, output path)."""
    out = Path(out)
    root = make_toy_dataset(out / "toy_ade20k", ToyConfig(fmt="ade20k", n_train=n_train, n_val=n_val,
                                                          width=256, height=256, seed=seed), progress=progress)
    yield "toy dataset (ADE20K format)", str(root)
    for stage in NOT_YET_BUILT:
        yield stage, "not built yet"

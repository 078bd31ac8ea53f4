"""What the tests that break things on purpose share: a small baked work dir, the one error line a
command printed, another process holding a stage lock, and a dataset edit with the rebuild it needs.

Each such test does what a hostile but realistic user did (edit the dataset, kill a bake, fill the
disk, start a second writer) and checks the one-line answer, the exit code and that nothing
complete was lost.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from resail.index.build import build_index
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.workdir import WorkDir

from .work import baked_work

SIDE = 64  # the side of `small_baked_work`'s images, and of the label maps tests query it with


def small_baked_work(base: Path) -> Path:
    """A toy ADE20K work dir (6 train, 2 val images at 64×64; dataset in BASE/toy), both splits baked with k=5."""
    return baked_work(base, n_train=6, n_val=2, size=SIDE, seed=1, k=5)


def one_error_line(capsys) -> str:
    """The one `error:` line on stderr (info logs may come before it), from a typed error: never the
    generic line of an unexpected exception."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "rerun with --debug for the traceback" not in lines[0], lines
    return lines[0]


def rebuild_store(work: Path) -> None:
    """`resail index build` again, on the dataset the store was built from."""
    build_segments(SegmentsConfig("ade20k", Path(WorkDir(work).segments_manifest()["params"]["root"]), work))
    build_index(work, progress=False)


def edit_one_label(root: Path) -> None:
    """Paint a corner of the first training label map wall (class 1), off its instances."""
    ade = root / "ADEChallengeData2016"
    path = sorted((ade / "annotations/training").glob("*.png"))[0]
    label = np.array(Image.open(path))
    free = np.asarray(Image.open(ade / "annotations_instance/training" / path.name))[..., 1] == 0
    corner = np.zeros_like(free)
    corner[:16, :16] = True
    label[corner & free] = 1
    Image.fromarray(label).save(path)


HOLD = """
import sys
from pathlib import Path
from resail.lifecycle import stage_lock
shard = tuple(int(v) for v in sys.argv[3].split("/")) if sys.argv[3] != "-" else None
with stage_lock(Path(sys.argv[1]), sys.argv[2], "a test holder", shard=shard, merge=shard is None):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(folder: Path, name: str, shard: str = "-"):
    """Another process holding the stage lock `folder/NAME.lock` (a shard job's with `shard` I/N)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name, shard], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        p.stdin.close()
        p.wait(timeout=60)


def taken_elsewhere(folder: Path, name: str) -> subprocess.CompletedProcess:
    """Another process trying the lock `folder/NAME.lock` and letting it go at once."""
    return subprocess.run([sys.executable, "-c", HOLD, str(folder), name, "-"], input="", capture_output=True,
                          text=True, timeout=60)

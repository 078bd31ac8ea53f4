"""Thread policy: `resail train` on a quiet machine and beside one busy process, before and after.

Each run is the command a user types, `resail train WORK --preset toy64 --steps 8` (the default
two data-loader workers), in a fresh process, timed wall to wall (start-up included), in four
cells measured in the same invocation:
  old  RESAIL_THREADS=off: no policy, every library at its own default (torch: one intra-op
       thread per core in the trainer, beside the workers), the behaviour before threads.py;
  new  the thread policy (threads.py): the CPUs this process may use, one thread per data-loader
       worker, the rest to the trainer;
each quiet, and busy: beside one competing busy process (`yes > /dev/null`, started before and
killed after the run). The headline is each mode's busy wall time over its quiet wall time; the
target for the policy is at most 2.5× (a fair share of 2 cores with one competitor is 2×).

The toy data (`resail data toy` → index → guidance baked at 64×64; 16 train, 4 val images) is
built once in OUT. The cells run in the order old quiet, new quiet, old busy, new busy, `--repeats`
times; each figure is the median over repeats. The machine's load average is recorded before
every run: other users' processes count as competitors too.

    python benchmarks/threads.py [--out DIR] [--steps 8] [--repeats 1] [--workers N]

The last line of the output is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resail.benchmarks._common import emit
from resail.tests.builders.work import bake_splits, index_work, toy_dataset
from resail.threads import ENV, available_cpus, use
from resail.workdir import WorkDir

PRESET = "toy64"
MODES = {"old": "off", "new": None}  # RESAIL_THREADS per mode (None: unset, the policy)
TARGET = 2.5                         # busy / quiet wall time with the policy


def toy_work(out: Path) -> Path:
    """16 train and 4 val toy images, indexed and baked at toy64's 64×64 (reused when present)."""
    work = out / "work"
    if not WorkDir(work).guidance_h5("val").exists():
        root = toy_dataset(out / "toy", n_train=16, n_val=4, size=128)
        bake_splits(index_work(root, work), size=(64, 64))
    return work


def train_once(work: Path, mode: str, busy: bool, args, log_dir: Path) -> dict:
    """One `resail train` in a fresh process; wall time and the policy line it printed."""
    name = f"threads-{mode}-{'busy' if busy else 'quiet'}"
    shutil.rmtree(WorkDir(work).run(name), ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if MODES[mode] is not None:
        env[ENV] = MODES[mode]
    cmd = [sys.executable, "-m", "resail.cli", "train", str(work), "--preset", PRESET, "--steps", str(args.steps),
           "--name", name]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    load = os.getloadavg()[0]
    competitor = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
    try:
        t0 = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    (log_dir / f"{name}.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}); see {log_dir / (name + '.log')}")
    policy = next((line for line in run.stderr.splitlines() if line.startswith("threads: ")), "")
    print(f"{mode} {'busy ' if busy else 'quiet'}: {wall:6.1f} s (load average before {load:.2f}) {policy}",
          flush=True)
    return {"wall_s": wall, "load_before": round(load, 2), "policy": policy}


def machine() -> dict:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    cpus, source = available_cpus()
    return {"cpu": model, "cpus": cpus, "cpus_from": source, "python": platform.python_version()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="Folder of the toy work dir and the logs [default: temp].")
    ap.add_argument("--steps", type=int, default=8, help="Training steps per run.")
    ap.add_argument("--repeats", type=int, default=1, help="Runs per cell; each figure is their median.")
    ap.add_argument("--workers", type=int, default=None, help="Data-loader workers [default: the trainer's, 2].")
    args = ap.parse_args()
    use()  # this process builds the toy data under the policy too
    out = args.out or Path(tempfile.mkdtemp(prefix="resail-bench-threads-"))
    work = toy_work(out)
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cells = {(m, b): [] for b in (False, True) for m in MODES}
    for _ in range(args.repeats):
        for mode, busy in cells:
            cells[mode, busy].append(train_once(work, mode, busy, args, log_dir))
    wall = {k: statistics.median(r["wall_s"] for r in runs) for k, runs in cells.items()}
    result = {"bench": "threads", "preset": PRESET, "steps": args.steps, "repeats": args.repeats,
              "workers": args.workers if args.workers is not None else 2, **machine(),
              "quiet_s": {m: round(wall[m, False], 1) for m in MODES},
              "busy_s": {m: round(wall[m, True], 1) for m in MODES},
              "slowdown": {m: round(wall[m, True] / wall[m, False], 2) for m in MODES},
              "load_before": {f"{m}_{'busy' if b else 'quiet'}": [r["load_before"] for r in runs]
                              for (m, b), runs in cells.items()},
              "policy": cells["new", False][0]["policy"]}
    result["target_met"] = result["slowdown"]["new"] <= TARGET
    print(f"busy / quiet: old {result['slowdown']['old']}×, new {result['slowdown']['new']}× (target ≤ {TARGET}×)")
    emit(result)


if __name__ == "__main__":
    main()

"""What the benchmark scripts share: a scratch folder, the machine's load around a measurement,
the peak memory of this process and of its process tree, and the one JSON object every
script prints as its last line.

A benchmark runs as `python benchmarks/NAME.py …` (BENCHMARKS.md has each command). It imports
this module and the test suite's fixture builders through the `resail` package
(`resail.benchmarks._common`, `resail.tests.builders`), so no script edits `sys.path`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import threading
from pathlib import Path


def scratch(keep: Path | None, name: str) -> Path:
    """The folder a benchmark builds its data in: `keep` (its `--keep DIR`), else a new temp dir."""
    return keep or Path(tempfile.mkdtemp(prefix=f"resail_bench_{name}_"))


def load_avg() -> float:
    """The 1-minute load average: figures taken on a busy machine say so."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict:
    """The fields every result opens with: the CPUs this machine has and its load before the run."""
    return {"cpus": os.cpu_count(), "load_avg_1min_before": load_avg()}


def finish(result: dict, base: Path, keep: Path | None) -> None:
    """Close a measurement: the load after it, the scratch folder removed unless kept, the JSON line."""
    result["load_avg_1min_after"] = load_avg()
    if keep is None:
        shutil.rmtree(base)
    emit(result)


def emit(result: dict) -> None:
    """The last line of every benchmark: one JSON object with its figures (BENCHMARKS.md quotes it)."""
    print(json.dumps(result), flush=True)


def peak_rss_mb() -> float:
    """Peak RSS of this process since its exec (VmHWM), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeUsage:
    """Sampled every `period` s (psutil): the peak RSS of this process's children (the largest one)
    and of the whole tree, the peak *anonymous* memory (RSS less file-backed and shared pages: what
    a stage needs, whereas memmapped store pages it touched are reclaimable cache) of this process
    and of its largest child, and the CPU seconds of the children (last reading of each)."""

    def __init__(self, period: float = 0.05):
        import psutil  # with dask[distributed], in the dev extras; only the benchmarks that sample need it

        self._psutil = psutil
        self.me, self.period = psutil.Process(), period
        self.worker = self.tree = self.anon_main = self.anon_worker = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            rss = []
            for child in self.me.children(recursive=True):
                try:
                    with child.oneshot():
                        m, t = child.memory_info(), child.cpu_times()
                except self._psutil.Error:  # exited between the listing and the read
                    continue
                rss.append(m.rss)
                self.anon_worker = max(self.anon_worker, m.rss - m.shared)
                self._cpu[child.pid] = t.user + t.system
            m = self.me.memory_info()
            self.worker = max([self.worker, *rss])
            self.tree = max(self.tree, m.rss + sum(rss))
            self.anon_main = max(self.anon_main, m.rss - m.shared)

    @property
    def children_cpu_s(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self) -> TreeUsage:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

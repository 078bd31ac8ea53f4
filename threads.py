"""One thread policy for every command: how many threads this process and its worker processes run.

Left alone, every library sizes its thread pool by the cores it counts and sees neither a cgroup's
CPU quota nor the workers beside it: `resail train` ran one torch thread per core next to two
data-loader workers, and OpenMP threads, which wait for each other at every parallel region, slow
down many times over once one of them loses its core to another process (BENCHMARKS.md, "Thread
policy", has the figures with and without this policy).

The policy counts the CPUs this process may really use (`available_cpus`: the affinity mask,
lowered by a cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us` quota rounded to the nearest CPU,
shared among torchrun's local ranks), or takes `--threads N` (`RESAIL_THREADS=N`), and splits
them between the main process and its workers (`split`):
- workers *alongside* a computing main process (data loaders feeding a trainer): one thread each,
  the rest to the main process (at least one);
- workers while the main process waits (a stage's parts): the CPUs shared among the workers, and
  all of them to the main process for the merges, the index build and the retrieval around them.

`apply` sets the main process's count on torch (intra- and inter-op), OpenCV and FAISS, and in
the OpenMP/MKL/OpenBLAS/numba/OpenCV variables, which size the pools of the libraries this process
loads later and of child processes that are not told otherwise. Workers are told: joblib's get
`worker_threads()` as their inner thread limit (pipeline/runner.py), and `init_worker` (every
stage task, every data loader's `worker_init_fn`) applies the per-worker count that `apply` left
in RESAIL_WORKER_THREADS. `RESAIL_THREADS=off` applies nothing: every library keeps its own
default, the behaviour before the policy (benchmarks/threads.py measures both).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

log = logging.getLogger("resail")

ENV = "RESAIL_THREADS"                # N: the CPUs to share (as --threads N); off: no policy
WORKER_ENV = "RESAIL_WORKER_THREADS"  # the per-worker count, left by `apply` for `init_worker`
# Read when a library loads: in this process for the libraries not loaded yet, and in child processes.
LIBRARY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
               "OPENCV_FOR_THREADS_NUM")
_logged: dict = {"policy": None}      # the last split logged, so that a command prints it once


@dataclass(frozen=True)
class ThreadPolicy:
    cpus: int         # CPUs shared by this process and its workers
    source: str       # where the count came from
    workers: int      # worker processes
    main: int         # threads of the main process
    per_worker: int   # threads of each worker

    def describe(self) -> str:
        line = f"threads: {self.cpus} CPU{'s' * (self.cpus != 1)} ({self.source}); main process {self.main}"
        if self.workers:
            line += f", {self.workers} worker{'s' * (self.workers != 1)} × {self.per_worker}"
        return line + " (--threads N to change)"


# ---------------------------------------------------------------- how many CPUs


def round_cpus(quota: float) -> int:
    """A fractional CPU quota as threads: to the nearest CPU (a thread is worth half a CPU or more), at least 1."""
    return max(1, math.floor(quota + 0.5))


def available_cpus(root: Path = Path("/")) -> tuple[int, str]:
    """The CPUs this process may use and where the count came from: its affinity mask, lowered by
    the tightest cgroup CPU quota on its path. `root` is where /proc and /sys are (tests fabricate them)."""
    if hasattr(os, "sched_getaffinity"):
        n, source = len(os.sched_getaffinity(0)), "CPU affinity"
    else:
        n, source = os.cpu_count() or 1, "os.cpu_count"
    quota = cgroup_quota(root)
    if quota is not None and round_cpus(quota[0]) < n:
        n, source = round_cpus(quota[0]), f"cgroup quota {quota[0]:g} CPUs in {quota[1]}"
    return n, source


def cgroup_quota(root: Path = Path("/")) -> tuple[float, str] | None:
    """The tightest CPU quota on this process's cgroup path (its own folder and every parent up to
    the hierarchy's mount), in CPUs, with the file that sets it; None when nothing limits it."""
    best = None
    for version, folder, top in _cgroup_folders(root):
        for d in [folder, *(p for p in folder.parents if p == top or top in p.parents)]:
            found = _quota_v2(d) if version == 2 else _quota_v1(d)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], "/" + str(found[1].relative_to(root)))
    return best


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_mounts(root: Path) -> list[tuple[int, str, str, set[str]]]:
    """(version, mount root, mount point, options) of every cgroup hierarchy in /proc/self/mountinfo."""
    mounts = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            mounts.append((2 if tail[0] == "cgroup2" else 1, fields[3], fields[4], set(tail[2].split(","))))
    return mounts


def _cgroup_folders(root: Path) -> list[tuple[int, Path, Path]]:
    """(version, this process's cgroup folder, the hierarchy's mount point) for the v2 hierarchy and
    v1's cpu controller, from /proc/self/cgroup and the mounts."""
    mounts = _cgroup_mounts(root)
    found = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            version, mount = 2, next((m for m in mounts if m[0] == 2), None)
        elif "cpu" in controllers.split(","):
            version, mount = 1, next((m for m in mounts if m[0] == 1 and "cpu" in m[3]), None)
        else:
            continue
        if mount is None:
            continue
        _, mount_root, mount_point, _ = mount
        top = root / mount_point.lstrip("/")
        # The path is relative to the hierarchy's root; a container's mount shows only its own subtree.
        inside = path == mount_root or path.startswith(mount_root.rstrip("/") + "/")
        found.append((version, top / path[len(mount_root):].lstrip("/") if inside else top, top))
    return found


def _quota_v2(folder: Path) -> tuple[float, Path] | None:
    path = folder / "cpu.max"
    parts = (_read(path) or "").split()
    if len(parts) == 2 and parts[0] != "max":
        try:
            return int(parts[0]) / int(parts[1]), path
        except (ValueError, ZeroDivisionError):
            return None
    return None


def _quota_v1(folder: Path) -> tuple[float, Path] | None:
    path = folder / "cpu.cfs_quota_us"
    try:
        quota, period = int(_read(path) or "-1"), int(_read(folder / "cpu.cfs_period_us") or "0")
    except ValueError:
        return None
    return (quota / period, path) if quota > 0 and period > 0 else None


# ---------------------------------------------------------------- the split


def split(cpus: int, workers: int, alongside: bool) -> tuple[int, int]:
    """(main process threads, threads per worker) for `workers` worker processes on `cpus` CPUs (see
    the module docstring). No workers: the main process has every CPU."""
    if workers <= 0:
        return cpus, cpus
    if alongside:
        return max(1, cpus - workers), 1
    return cpus, max(1, cpus // workers)


def requested(threads: int | None = None) -> int | str | None:
    """The override: `--threads` when given, else RESAIL_THREADS (a count, or "off"); None when neither is set."""
    if threads is not None:
        return threads
    value = os.environ.get(ENV, "").strip().lower()
    if not value:
        return None
    if value == "off":
        return "off"
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"{ENV}={os.environ[ENV]!r}: give a positive number of CPUs to use, or off for the "
                         "libraries' own defaults")
    return int(value)


def plan(workers: int = 0, *, alongside: bool = True, threads: int | None = None,
         root: Path = Path("/")) -> ThreadPolicy:
    """The policy for this process and `workers` worker processes; `threads` overrides the CPU count."""
    if threads is not None:
        cpus, source = threads, "--threads"
    else:
        cpus, source = available_cpus(root)
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # torchrun's processes on this node
        if ranks > 1:
            cpus, source = max(1, cpus // ranks), f"{source}, shared by {ranks} local ranks"
    main, per_worker = split(cpus, workers, alongside)
    return ThreadPolicy(cpus, source, workers, main, per_worker)


# ---------------------------------------------------------------- applying it


def library_env(n: int) -> dict[str, str]:
    """The library variables for `n` threads (numba refuses more threads than cores): for a child
    process that should start with them, before its first import."""
    return {var: str(min(n, os.cpu_count() or n) if var == "NUMBA_NUM_THREADS" else n) for var in LIBRARY_ENV}


def _export(n: int) -> None:
    """`n` threads for the libraries this process loads from now on, and for its child processes."""
    os.environ.update(library_env(n))


def _set_loaded(n: int) -> None:
    """`n` threads in the pools of torch, OpenCV and FAISS where they are loaded already."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        if torch.get_num_interop_threads() != n:
            try:
                torch.set_num_interop_threads(n)
            except RuntimeError:  # torch allows it once, before any inter-op work; then its pool stays
                log.debug("threads: torch's inter-op pool has started; it keeps %d threads",
                          torch.get_num_interop_threads())
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)


def apply(policy: ThreadPolicy) -> None:
    """Set `policy` in this process (see the module docstring); log it when the split changed."""
    _export(policy.main)
    os.environ[WORKER_ENV] = str(policy.per_worker)
    _set_loaded(policy.main)
    if _logged["policy"] != policy:
        log.info(policy.describe())
        _logged["policy"] = policy


def use(workers: int = 0, *, alongside: bool = True, threads: int | None = None) -> ThreadPolicy | None:
    """Plan and apply the policy for a command with `workers` worker processes, `threads` (--threads)
    overriding the CPU count. Under RESAIL_THREADS=off it changes nothing and returns None."""
    wanted = requested(threads)
    if wanted == "off":
        os.environ.pop(WORKER_ENV, None)
        if _logged["policy"] != "off":
            log.info("threads: policy off (%s=off): every library keeps its own default", ENV)
            _logged["policy"] = "off"
        return None
    policy = plan(workers, alongside=alongside, threads=wanted)
    apply(policy)
    return policy


def worker_threads() -> int | None:
    """The per-worker count `apply` left for this process's workers; None where no policy was applied."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def init_worker(worker_id: int | None = None) -> None:
    """In a worker process: take the per-worker count (a data loader's `worker_init_fn`; the runner
    calls it before every stage task). Does nothing where no policy was applied."""
    n = worker_threads()
    if n is not None:
        _export(n)
        _set_loaded(n)

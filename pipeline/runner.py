"""The stage runner: parts, shards, resume and the merge check, shared by every stage.

A stage cuts its N items (images) into *shards*, contiguous ranges [N·i//n, N·(i+1)//n) (the
boundaries of faiss `contrib`), and each shard into *parts* of at most `part_size` consecutive
items. One task computes one part and writes one HDF5 part file atomically, carrying the job's
key in `attrs["key"]`: a rerun skips the parts written with the same key and recomputes the
others, so an interrupted stage resumes where it stopped. Once every part of shard i of n is
written, the runner writes the shard's marker `shard-{i:05d}-of-{n:05d}.json` beside the parts;
the merge check reads the markers to learn n and names the shards that have not finished.

Flags, with the same meaning for every stage (`resail index build`, `resail guidance bake`):
- `--shard I/N`: compute the missing parts of shard I of N, then stop (no merge);
- `--merge`: compute nothing; check that every shard has finished, then merge;
- both: compute shard I, then merge (the last job of an array);
- neither: compute every missing part — of every shard of the count already started, else of
  the single shard 0/1 — then merge.
A stage's output never depends on the sharding or on `jobs`: parts are merged in item order.

Tasks run through joblib with the backend named by `backend` (loky: one worker process each),
with a tqdm bar. `jobs=1` runs them inline in this process, which keeps tracebacks and test hooks
simple. A task in a worker first takes the thread policy's per-worker count (`threads.init_worker`;
joblib's workers also get it as their inner thread limit), so `jobs` workers share the command's
CPUs instead of each sizing its pools by the whole machine (threads.py).

**Dask.** `parallel_backend("dask", scheduler)` (the `--backend dask [--scheduler ADDRESS]` of
every parallel command) connects a `distributed.Client` to the scheduler at ADDRESS, or starts a
local cluster of `jobs` single-threaded worker processes when no address is given, and sends
every task of the enclosed stage to that client: one task per part, spread over the whole
cluster, whatever `jobs` says. Nothing else changes: parts are written atomically by the workers
and carry the job's key, results come back in part order, so the artifacts are byte-identical to
a `--jobs 1` run. A worker that dies mid-task leaves no part file behind (a part exists only once
complete); dask reruns the task on another worker, and when it gives up (`KilledWorker`) the
stage stops with one line, and rerunning the same command recomputes only the missing parts.
dask is an optional extra (`pip install 'resail[dask]'`).

The tasks go to `Client.submit` rather than through joblib's dask backend
(`joblib.parallel_config(backend="dask")`): joblib 1.6 learns a task's end only from a callback
that its dask backend never calls for a task dask itself failed, so a `KilledWorker` there waits
forever instead of stopping the stage (tests/test_dask.py kills the workers to check this).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import h5py
from joblib import Parallel, delayed, parallel_config
from tqdm import tqdm

from ..artifacts import write_json_atomic
from ..choices import BACKENDS
from ..errors import ConfigError, InputError, StageError
from ..threads import init_worker, worker_threads

BACKEND = "loky"
CONNECT_TIMEOUT_S = 10          # an unreachable scheduler fails after this long, with one line
DASK_MISSING = "the dask backend needs dask.distributed, which is not installed: pip install 'resail[dask]'"
_session: dict[str, Any] = {"client": None}  # the dask client of the enclosing `parallel_backend`


def shard_range(n_items: int, i: int, n: int) -> tuple[int, int]:
    """Items [a, b) of shard i of n: boundaries n_items·i//n, so shards differ by at most one item."""
    return n_items * i // n, n_items * (i + 1) // n


def part_ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """Consecutive ranges of at most `size` items covering [start, stop)."""
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def part_current(path: Path, key: str) -> bool:
    """True when `path` is a readable HDF5 part written for `key`."""
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("key") == key
    except OSError:
        return False


@dataclass(frozen=True)
class Parts:
    """The part files of one job: `folder/pattern.format(a=…, b=…)` for each part [a, b)."""

    folder: Path
    n_items: int
    part_size: int
    key: str
    pattern: str  # e.g. "part-{a:08d}-{b:08d}.h5"

    def path(self, a: int, b: int) -> Path:
        return self.folder / self.pattern.format(a=a, b=b)

    def of_shard(self, i: int, n: int) -> list[tuple[int, int]]:
        return part_ranges(*shard_range(self.n_items, i, n), self.part_size)

    def done(self, a: int, b: int) -> bool:
        return part_current(self.path(a, b), self.key)

    def marker(self, i: int, n: int) -> Path:
        return self.folder / f"shard-{i:05d}-of-{n:05d}.json"

    def finished_shards(self) -> dict[int, set[int]]:
        """Shard count → indices of the shards whose marker carries this job's key."""
        found: dict[int, set[int]] = {}
        for path in self.folder.glob("shard-*-of-*.json"):
            m = json.loads(path.read_text())
            if m.get("key") == self.key:
                found.setdefault(int(m["of"]), set()).add(int(m["shard"]))
        return found


def execute(fn: Callable, calls: Iterable[tuple], *, jobs: int = 1, backend: str = BACKEND) -> Iterator[Any]:
    """`fn(*args)` for each args of `calls`, results in order; in worker processes when jobs > 1,
    on the cluster's workers inside `parallel_backend("dask")`."""
    if _session["client"] is not None:
        return _on_dask(_session["client"], fn, calls)
    if jobs == 1:
        return (fn(*args) for args in calls)
    with parallel_config(backend=backend, inner_max_num_threads=worker_threads()):
        return Parallel(n_jobs=jobs, return_as="generator")(delayed(_in_worker)(fn, *args) for args in calls)


def _in_worker(fn: Callable, *args) -> Any:
    """A task in a worker process: the thread policy's per-worker count, then the task."""
    init_worker()
    return fn(*args)


def _on_dask(client, fn: Callable, calls: Iterable[tuple]) -> Iterator[Any]:
    """Every call as one task of the cluster; results in order. The remaining tasks are cancelled
    when the caller stops early or a task fails."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    futures = [client.submit(_in_worker, fn, *args, pure=False) for args in calls]
    try:
        for future in futures:
            yield future.result()
    except KilledWorker as e:
        raise StageError(f"a dask worker died while computing a part ({e.args[0] if e.args else e}); the parts "
                         "already written are complete and kept: rerun the same command to compute the rest") from e
    except CommClosedError as e:
        raise StageError(f"lost the connection to the dask scheduler ({e}); the parts already written are "
                         "complete and kept: rerun the same command to compute the rest") from e
    finally:
        if not all(f.done() for f in futures):  # stopped early: drop the tasks nobody will read
            client.cancel(futures)


@contextmanager
def parallel_backend(backend: str = BACKEND, scheduler: str | None = None, jobs: int = 1) -> Iterator[None]:
    """Run the stage tasks of the enclosed code on `backend` (see the module docstring).

    dask: connect to `scheduler` (an address such as tcp://host:8786), or start a local cluster
    of `jobs` worker processes when it is None; both are closed on exit."""
    if backend not in BACKENDS:
        raise ConfigError("backend", f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "dask":
        if scheduler is not None:
            raise ConfigError("scheduler", f"scheduler {scheduler}: a scheduler address goes with the dask backend")
        yield
        return
    with _dask_client(scheduler, jobs) as client:
        _session["client"] = client
        try:
            yield
        finally:
            _session["client"] = None


@contextmanager
def _dask_client(scheduler: str | None, jobs: int) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise InputError(DASK_MISSING) from e
    if not logging.getLogger("resail").isEnabledFor(logging.DEBUG):  # dask's INFO chatter only with --debug
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler is None:
        with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else f"{type(e).__name__} after {CONNECT_TIMEOUT_S} s"
        raise InputError(f"dask scheduler {scheduler}: cannot connect ({why}); start one with "
                         "`dask scheduler` or check the address") from e
    with client:
        yield client


def run_shard(parts: Parts, i: int, n: int, fn: Callable, args_of: Callable[[int, int], tuple], *,
              jobs: int = 1, backend: str = BACKEND, progress: bool = False, desc: str = "",
              on_result: Callable[[int, int, Any], dict | None] | None = None) -> None:
    """Compute the missing parts of shard i of n, then write the shard's marker.

    `fn(*args_of(a, b))` computes part [a, b) and writes `parts.path(a, b)`; the arguments are
    built here, so only the part's share of the inputs travels to a worker. `on_result(a, b,
    result)` sees each part as it finishes, in order; a dict it returns goes to the bar's postfix."""
    todo = [(a, b) for a, b in parts.of_shard(i, n) if not parts.done(a, b)]
    parts.folder.mkdir(parents=True, exist_ok=True)
    a0, b0 = shard_range(parts.n_items, i, n)
    bar = tqdm(total=b0 - a0, initial=(b0 - a0) - sum(b - a for a, b in todo), unit="img", disable=not progress,
               desc=desc + (f" shard {i}/{n}" if n > 1 else ""))
    with bar:
        for (a, b), result in zip(todo, execute(fn, (args_of(a, b) for a, b in todo), jobs=jobs, backend=backend)):
            bar.update(b - a)
            postfix = on_result(a, b, result) if on_result is not None else None
            if postfix:
                bar.set_postfix(**postfix)
    write_json_atomic(parts.marker(i, n), {"key": parts.key, "shard": i, "of": n, "items": [a0, b0]})


def shards_to_run(parts: Parts, shard: tuple[int, int] | None, merge: bool) -> list[tuple[int, int]]:
    """The (i, n) shards this invocation computes (see the module docstring for the flags)."""
    if shard is not None:
        return [shard]
    if merge:
        return []
    counts = parts.finished_shards()
    if len(counts) > 1:
        raise StageError(f"{parts.folder}: shards were run with different counts {sorted(counts)}; "
                         "rerun every --shard I/N with one N, or --rebuild")
    n = next(iter(counts), 1)
    return [(i, n) for i in range(n)]


def finished_parts(parts: Parts) -> list[tuple[int, int]]:
    """Every part of the job in item order, after checking that every shard has finished."""
    counts = parts.finished_shards()
    if len(counts) != 1:
        what = "no shard has finished" if not counts else f"shards were run with different counts {sorted(counts)}"
        raise StageError(f"{parts.folder}: cannot merge: {what}; run every --shard I/N (one N) first, "
                         "or run without --shard and --merge")
    n = next(iter(counts))
    ranges = {i: parts.of_shard(i, n) for i in range(n)}
    missing = [i for i in range(n) if i not in counts[n] or not all(parts.done(a, b) for a, b in ranges[i])]
    if missing:
        listed = ", ".join(f"{i}/{n}" for i in missing[:10]) + (" …" if len(missing) > 10 else "")
        what = f"shard {listed} has" if len(missing) == 1 else f"shards {listed} have"
        raise StageError(f"{parts.folder}: cannot merge: {what} not finished; run the missing --shard I/N, "
                         "then --merge")
    return [r for i in range(n) for r in ranges[i]]


def run_job(parts: Parts, fn: Callable, args_of: Callable[[int, int], tuple], *, shard: tuple[int, int] | None,
            merge: bool, **run_kwargs) -> list[tuple[int, int]] | None:
    """Compute the shards the flags ask for; return every part in order when a merge follows, else None."""
    for i, n in shards_to_run(parts, shard, merge):
        run_shard(parts, i, n, fn, args_of, **run_kwargs)
    if shard is not None and not merge:
        return None
    return finished_parts(parts)


def check_shard(shard: Sequence[int] | None) -> None:
    """The error every stage gives for a bad shard (I, N)."""
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ConfigError("shard", f"shard {shard[0]}/{shard[1]}: need 0 ≤ I < N")

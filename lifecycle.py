"""The stage lifecycle, one API for every stage, run and evaluation: lock, recover, check, stage, commit;
and readers that see one whole version of what they read.

Locks. One process writes a stage, a run or an evaluation at a time. `StageLock` holds a POSIX
record lock (`fcntl.lockf`) on `WORK/locks/NAME.lock`, which the kernel drops when the process
dies and which a fork does not pass on: the data-loader and joblib workers a writer forks never
hold its lock, so a writer killed with SIGKILL frees it at once, however long its workers take
to notice. (An `flock` lock belongs to the open file, which every forked child shares.) The
holder (pid, host, command, start time) is written into the file, so a second writer fails at
once with one line naming the first. Shard jobs of one stage (`--shard I/N`) each hold the stage
lock shared and their own shard lock exclusively; anything that merges holds the stage lock
exclusively. Locks are reentrant within a process. A process drops its POSIX locks on a file when
it closes *any* descriptor of that file, so it opens each lock file once (`StageLock._held`) and
reads a held file through that descriptor. On network file systems locks are only as good as the
server's lock support.

Versions. A stage's output folder FINAL is a symbolic link to a version folder FINAL@N. A writer
builds FINAL.new (staging), writes its manifest there last, renames the folder to the next
FINAL@N (`seal`) and switches the link with one `os.replace` (`publish`). Readers resolve links
while holding `locks/publish.lock` shared and pin the versions they found (a shared `flock` on
`locks/NAME@N.pin`, held until they close; forked workers share it); a publish holds it
exclusively for its link switches alone, so the links a reader resolves together were current
together (the store and the index that `index build` publishes at once). A reader therefore
reads one complete version, old or new, however long it reads and whatever is published
meanwhile. A writer deletes every version that is neither the current nor the newest one once no
reader pins it (`collect`); a version a reader keeps open stays on disk until a writer runs after
it closed.

One run of a stage (`Stage`): take the lock; recover (a staging folder whose manifest was
written is sealed; FINAL as a plain folder, from an older resail, becomes a version when the next
version is published); `up_to_date` compares the newest version's manifest with the parameters
(a change asks for --rebuild, or rebuilds when no flag sets them), the inputs and upstream
fingerprints (a change rebuilds) and its files (damage rebuilds); build in `staging`; `commit`
(seal, publish, collect). A newer version than the current one is one whose publish is still to
come (a crash between the two steps, or `commit(publish=False)`, which `index build` uses to
publish the store with its index); the next writer compares with it and publishes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .artifacts import MANIFEST, check_files, param_changes, read_manifest
from .errors import BusyError, StageError

log = logging.getLogger("resail")

PUBLISH_LOCK = "publish.lock"


# ---------------------------------------------------------------- one writer per stage


class StageLock:
    """An advisory lock on `path` for writing `what` (e.g. "the segment store of WORK").

    `acquire()` takes it exclusively (or shared) without waiting, or raises `BusyError` naming
    the holder; `release()` (or leaving the `with` block, or dropping the object) gives it back.
    The same process may take a lock it already holds (reentrant)."""

    _held: dict[str, list] = {}  # resolved path → [fd, count, shared, pid]: this process's locks

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self._key = str(self.path.resolve())
        self._acquired = False

    def acquire(self, *, shared: bool = False) -> "StageLock":
        entry = _own_entry(self._key)
        if entry is not None:
            if entry[2] and not shared:
                self._lock(entry[0], shared=False)
                entry[2] = False
                _write_holder(entry[0])
            entry[1] += 1
        else:
            fd = self._open()
            try:
                self._lock(fd, shared)
            except BaseException:
                os.close(fd)
                raise
            if not shared:
                _write_holder(fd)
            self._held[self._key] = [fd, 1, shared, os.getpid()]
        self._acquired = True
        return self

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        entry = _own_entry(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self._key]
            os.close(entry[0])  # closing drops the process's lock

    def __enter__(self) -> "StageLock":
        return self if self._acquired else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise StageError(f"{self.path}: cannot create the lock file ({e.strerror}); check that "
                             f"{self.path.parent.parent} is writable") from None

    def _lock(self, fd: int, shared: bool) -> None:
        try:
            fcntl.lockf(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another process holds it
            raise BusyError(f"{self.what} is being written by another process ({self.holders()}); wait for it "
                            f"to finish or stop it, then rerun (lock file {self.path})") from None

    def holders(self) -> str:
        """Who holds the lock: the shard jobs holding `NAME.shard-*.lock` beside it, else the
        holder recorded in the lock file."""
        found = [_describe(p) for p in sorted(self.path.parent.glob(f"{self.path.stem}.shard-*.lock"))
                 if _locked_elsewhere(p)]
        return "; ".join(found) if found else _describe(self.path)


def _own_entry(key: str) -> list | None:
    """This process's entry for a lock file; one a fork copied from the parent holds no lock."""
    entry = StageLock._held.get(key)
    if entry is not None and entry[3] != os.getpid():
        del StageLock._held[key]
        return None
    return entry


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _read_lock_file(path: Path) -> bytes:
    """A lock file's bytes, through this process's descriptor when it holds the lock (closing
    another descriptor of the file would drop the lock)."""
    entry = _own_entry(str(path.resolve()))
    if entry is not None:
        return os.pread(entry[0], 4096, 0)
    return path.read_bytes()


def _locked_elsewhere(path: Path) -> bool:
    """Whether another process holds `path` exclusively (never true of this process's own locks)."""
    if _own_entry(str(path.resolve())) is not None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except (BlockingIOError, PermissionError):
        return True
    finally:
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        h = json.loads(_read_lock_file(path))
        return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def stage_lock(folder: str | os.PathLike, name: str, what: str, *,
               shard: tuple[int, int] | None = None, merge: bool = True) -> Iterator[None]:
    """Hold the lock `folder/NAME.lock` while writing `what`: exclusively, or, for a shard-only
    run (`shard` without `merge`), shared with the other shards plus `NAME.shard-I-of-N.lock`."""
    main = StageLock(Path(folder) / f"{name}.lock", what)
    if shard is None or merge:
        with main.acquire():
            yield
        return
    i, n = shard
    own = StageLock(Path(folder) / f"{name}.shard-{i:05d}-of-{n:05d}.lock", f"shard {i}/{n} of {what}")
    with own.acquire(), main.acquire(shared=True):
        yield


# ---------------------------------------------------------------- versions behind a link


@contextlib.contextmanager
def _publish_lock(locks: Path, *, exclusive: bool) -> Iterator[None]:
    """`locks/publish.lock`, held exclusively by a publish and shared by readers resolving links.
    A reader that cannot open it (a read-only work dir, nothing published yet) goes without."""
    path = locks / PUBLISH_LOCK
    try:
        if exclusive:
            locks.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)  # waits: held for link switches only
        yield
    finally:
        os.close(fd)


@dataclass
class Version:
    """The version of a stage's folder a reader resolved: `folder` stays as it is while the pin is
    held (until `close()`). `manifest` is None when the folder holds no finished stage."""

    folder: Path
    manifest: dict | None
    _pin: int | None = field(default=None, repr=False)
    _pid: int = field(default_factory=os.getpid, repr=False)

    def close(self) -> None:
        """Drop the pin (a plain close: an explicit unlock would also unpin the forked workers)."""
        if self._pin is not None and self._pid == os.getpid():
            os.close(self._pin)
        self._pin = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit `os` may be gone; the kernel closes the descriptor anyway
            pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pin": None}  # another process reads under its parent's pin


class Versions:
    """The versions of one stage folder `final` (a link to `final@N`), its staging folder, and
    pins and publish lock in `locks`; `name` names its pin files; `manifest` is the file a
    finished version holds. `aliases` are entries of a version that also appear beside `final`
    under their own names, as links through `final` (they never change, so they follow it);
    `legacy` is a folder where an older resail wrote the stage's files directly (read as the
    current version while `final` does not exist)."""

    def __init__(self, final: Path, locks: Path, name: str, manifest: str = MANIFEST, staging: Path | None = None,
                 aliases: Iterable[str] = (), legacy: Path | None = None):
        self.final, self.locks, self.name, self.manifest = Path(final), Path(locks), name, manifest
        self.staging = staging or self.final.with_name(self.final.name + ".new")
        self.aliases, self.legacy = tuple(aliases), legacy

    def path(self, n: int) -> Path:
        return self.final.with_name(f"{self.final.name}@{n}")

    def _pin_path(self, n: int) -> Path:
        return self.locks / f"{self.name}@{n}.pin"

    def numbers(self) -> list[int]:
        """The version numbers present, ascending."""
        prefix = self.final.name + "@"
        if not self.final.parent.is_dir():
            return []
        return sorted(int(p.name[len(prefix):]) for p in self.final.parent.iterdir()
                      if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and p.is_dir())

    def current(self) -> Path | None:
        """The folder `final` names now: a version, `final` itself when it is a plain folder, the
        legacy folder, or None."""
        try:
            return self.final.parent / os.readlink(self.final)
        except FileNotFoundError:
            legacy = None if self.legacy is None else self.legacy / self.manifest
            return self.legacy if legacy is not None and legacy.is_file() and not legacy.is_symlink() else None
        except OSError:  # not a link
            return self.final if self.final.is_dir() else None

    def newest(self) -> Path | None:
        """The newest finished version (one still to be published, or the current one)."""
        numbers = self.numbers()
        return self.path(numbers[-1]) if numbers else self.current()

    def manifest_of(self, folder: Path | None) -> dict | None:
        return None if folder is None else read_manifest(folder, self.manifest)

    # -- writer side: call these holding the stage's lock
    def recover(self, drop: Iterable[str] = ()) -> None:
        """Seal a staging folder a killed writer finished (its manifest written) but did not seal."""
        if (self.staging / self.manifest).exists():
            self.seal(drop)

    def seal(self, drop: Iterable[str] = ()) -> Path:
        """Rename the finished staging folder to the next version, less its work files `drop`."""
        for name in drop:
            p = self.staging / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        n = max(self.numbers(), default=0) + 1
        self.locks.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self._pin_path(n), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))  # before readers can
        os.rename(self.staging, self.path(n))
        return self.path(n)

    def _link(self, folder: Path) -> None:
        """Point `final` at `folder` (one atomic replace); a plain `final` first becomes version 0."""
        if self.current() == folder:
            return
        if self.final.is_dir() and not self.final.is_symlink():
            os.rename(self.final, self.path(0))
        _replace_with_link(self.final, folder.name)
        for name in self.aliases:
            alias, target = self.final.parent / name, f"{self.final.name}/{name}"
            if not (alias.is_symlink() and os.readlink(alias) == target):
                if alias.is_dir() and not alias.is_symlink():
                    shutil.rmtree(alias)  # a legacy folder of the same name
                _replace_with_link(alias, target)

    def collect(self) -> None:
        """Delete the versions that are neither current nor newest and that no reader pins. Each is
        renamed aside under the publish lock (no reader is resolving then, so none can pin it
        after the check) and removed after it."""
        keep = {self.current(), self.newest()}
        doomed = []
        with _publish_lock(self.locks, exclusive=True):
            for n in self.numbers():
                if self.path(n) in keep:
                    continue
                fd = os.open(self._pin_path(n), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a reader still reads it
                aside = self.final.with_name(f".{self.final.name}@{n}.deleting")
                os.rename(self.path(n), aside)
                self._pin_path(n).unlink()
                os.close(fd)
                doomed.append(aside)
        for aside in [*doomed, *self.final.parent.glob(f".{self.final.name}@*.deleting")]:
            shutil.rmtree(aside, ignore_errors=True)

    # -- reader side
    def _open(self) -> Version | None:
        """Resolve and pin the current version (call under the publish lock, shared)."""
        folder = self.current()
        if folder is None:
            return None
        pin, n = None, self._number(folder)
        if n is not None:  # a version (a plain or legacy folder has no pin)
            try:
                pin = os.open(self._pin_path(n), os.O_RDONLY | os.O_CLOEXEC)
                fcntl.flock(pin, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a collect runs under the lock we exclude
            except OSError:
                if pin is not None:
                    os.close(pin)
                pin = None  # no pin file (a read-only work dir): read unpinned
        return Version(folder, self.manifest_of(folder), pin)

    def _number(self, folder: Path) -> int | None:
        prefix = self.final.name + "@"
        tail = folder.name[len(prefix):] if folder.name.startswith(prefix) else ""
        return int(tail) if tail.isdigit() and folder.parent == self.final.parent else None


def _replace_with_link(path: Path, target: str) -> None:
    """Make `path` a symbolic link to `target` in one atomic replace."""
    tmp = path.with_name(f".{path.name}.link-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def open_versions(locks: Path, items: Iterable[Versions]) -> list[Version | None]:
    """Pin the current version of each of `items`, all resolved at one instant; None for a stage
    that has no folder. Close each returned `Version` when done reading it."""
    with _publish_lock(Path(locks), exclusive=False):
        return [v._open() for v in items]


def publish(*folders: tuple[Versions, Path]) -> None:
    """Point each `final` at its version folder, together: readers resolve either all old or all new links."""
    if not folders:
        return
    with _publish_lock(folders[0][0].locks, exclusive=True):
        for versions, folder in folders:
            versions._link(folder)


# ---------------------------------------------------------------- one run of a stage


class Stage:
    """One run of a stage over `versions`: `with Stage(...) as st:` takes the lock (shared for a
    shard-only run, which neither recovers nor commits), recovers, and offers the newest
    version's manifest, the up-to-date check, the staging folder and the commit.

    `lock` is the held-while-writing lock (e.g. `WorkDir.lock(...)`); `stage` the name its
    manifests carry; `what` says what the folder holds, for messages ("the val guidance"), and
    `verb` how it was made ("built", "baked"); `drop` names the staging folder's work files
    (parts, resume state), deleted when it is sealed."""

    def __init__(self, versions: Versions, lock, *, stage: str, what: str, verb: str = "built",
                 exclusive: bool = True, rebuild: bool = False, drop: Iterable[str] = ()):
        self.versions, self._lock, self.stage, self.what, self.verb = versions, lock, stage, what, verb
        self.exclusive, self.rebuild, self.drop = exclusive, rebuild, tuple(drop)

    def __enter__(self) -> "Stage":
        self._lock.__enter__()
        try:
            if self.exclusive:
                self.versions.recover(self.drop)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.__exit__(*exc)

    @property
    def staging(self) -> Path:
        return self.versions.staging

    @property
    def newest(self) -> Path | None:
        return self.versions.newest()

    @property
    def manifest(self) -> dict | None:
        """The newest finished version's manifest (None when there is none)."""
        return self.versions.manifest_of(self.newest)

    def up_to_date(self, params: dict, *, upstream: dict | None = None, inputs: dict | None = None,
                   ask_rebuild: bool = True) -> bool:
        """Whether the newest version still holds: made by this stage with `params` (else, with
        `ask_rebuild`, a StageError asking for --rebuild; without, a rebuild), from `upstream` and
        `inputs` (the fingerprints it was made from, when given) and with its files as written."""
        m, final = self.manifest, self.versions.final
        if m is None or self.rebuild:
            return False
        if m.get("stage") != self.stage or m.get("params") != params:
            if ask_rebuild:
                raise StageError(f"{final}: {self.what} was {self.verb} with other parameters "
                                 f"({param_changes(m.get('params') or {}, params)}); rerun with --rebuild to replace "
                                 "it (the current one stays usable until the new one is complete)")
            log.info("%s: the parameters changed since it was %s; rebuilding", final, self.verb)
            return False
        for name, want in (("upstream", upstream), ("inputs", inputs)):
            if want is not None and m.get(name) != want:
                log.warning("%s: %s changed since it was %s; rebuilding", final,
                            "its input files" if name == "inputs" else "what it was made from", self.verb)
                return False
        try:
            check_files(self.newest, m, "rebuilding")
        except StageError as e:
            log.warning("%s", e)
            return False
        return True

    def restart(self) -> None:
        """Discard the staging folder (its parts and resume state), to build afresh."""
        if self.staging.exists():
            shutil.rmtree(self.staging)

    def commit(self, *, publish_now: bool = True, with_: Iterable[Versions] = ()) -> Path:
        """Seal the staging folder (its manifest written there last) as the newest version, then
        (`publish_now`) publish it and collect; returns the new version's folder."""
        folder = self.versions.seal(self.drop)
        if publish_now:
            self.publish(with_=with_)
        return folder

    def publish(self, *, with_: Iterable[Versions] = ()) -> None:
        """Publish the newest version, with the newest of each of `with_` (published first, at
        the same instant), then delete what no reader needs."""
        items = [*with_, self.versions]
        publish(*[(v, v.newest()) for v in items if v.newest() is not None])
        for v in items:
            v.collect()

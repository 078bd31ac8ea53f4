"""Atomic artifact writes and stage manifests with lineage (the stage lifecycle built on them: lifecycle.py).

Writes. Every file is written to a temporary name in its final folder and moved into place with
`os.replace`, so a crash never leaves a half-written file under a final name. `mkstemp` creates
the temporary file 0600; it gets the mode a plain `open` would have given (0666 less the umask)
before the move, so artifacts are as readable as the user's other files (a group on a cluster).
A full disk (ENOSPC, EDQUOT, or torch's zip writer failing on a full disk) becomes one
`DiskFullError` naming the file: the temporary file is removed and the previous file is intact.

Manifests and lineage. A stage writes its manifest last. Besides its parameters it records
`upstream`, the fingerprints of the manifests it was made from, and `files`, the size and mtime
of every file it wrote. Its own `fingerprint` identifies this one build (a hash of parameters,
upstream, files and the time of writing), so a rebuild, even with the same parameters, makes
every downstream manifest stale. A consumer checks a chain with manifests and `os.stat` only
(`check_files`, a few microseconds a file), never by rehashing gigabytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .common import short_hash
from .errors import DiskFullError, ResailError, StageError

MANIFEST = "manifest.json"
LOW_SPACE = 16 * 2**20  # below this many free bytes, a failed write is taken for a full disk
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


# ---------------------------------------------------------------- writes


def current_umask() -> int:
    """The process umask, read from /proc where it exists (setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_disk_full(exc: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether `exc` (or an exception it was raised from) comes from a full disk or quota.

    h5py reports ENOSPC in its message, not its errno; torch's zip writer only says "file write
    failed", so that counts when `folder` has (almost) no free space left."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if any(t in str(seen) for t in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None and "write failed" in str(exc):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < LOW_SPACE
    return False


def disk_full_error(path: str | os.PathLike, exc: BaseException) -> DiskFullError:
    return DiskFullError(f"{path}: the disk is full ({exc.__class__.__name__} while writing); free space and rerun "
                         "the same command (nothing was replaced: the previous file, if any, is intact)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path` (mode 0666 less the
    umask), on error delete it. A full disk raises `DiskFullError` naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from e
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        full = not isinstance(e, ResailError) and is_disk_full(e, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, e) from e
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an H×W (grey or class ids, uint8/uint16) or H×W×3 RGB uint8 image."""
    import cv2

    image = np.ascontiguousarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise ResailError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    return png.tobytes()


def write_png_atomic(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write `image` (see `encode_png`) as a PNG file at `path`, atomically; return the path."""
    write_bytes_atomic(path, encode_png(image))
    return Path(path)


def ensure_free_space(folder: str | os.PathLike, nbytes: int, what: str) -> None:
    """A `DiskFullError` before writing `what` (about `nbytes`) when `folder`'s disk lacks the room:
    HDF5 handles a full disk badly (tracebacks, at worst a crash), so big merges check first."""
    free = shutil.disk_usage(folder).free
    if free < nbytes + LOW_SPACE:
        raise DiskFullError(f"{folder}: {what} needs about {(nbytes + LOW_SPACE) / 2**20:.0f} MiB but only "
                            f"{free / 2**20:.0f} MiB are free; free space and rerun the same command "
                            "(nothing was replaced)")


def remove_temporaries(folder: str | os.PathLike, prefix: str = ".") -> None:
    """Delete the temporary files (`.NAME.*.tmp`) killed writers left in `folder`; writers call it
    under their stage lock, so no live write owns one."""
    for p in Path(folder).glob(f"{prefix}*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------- manifests and lineage


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-able object (parameters, input listings)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return short_hash(blob)


def file_fingerprint(path: str | os.PathLike) -> str:
    """Hash of a file's size and modification time: cheap, and changes whenever the file does."""
    st = Path(path).stat()
    return fingerprint([Path(path).name, st.st_size, st.st_mtime_ns])


def file_record(path: str | os.PathLike) -> dict:
    """What a manifest records of a file it lists: its size and modification time."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_files(folder: str | os.PathLike, manifest: dict, fix: str) -> None:
    """StageError naming the first file the manifest lists (`files`, relative to `folder`) that is
    missing or whose size or mtime changed since the stage wrote it; `fix` says what to rerun."""
    for name, rec in (manifest.get("files") or {}).items():
        p = Path(folder) / name
        try:
            st = p.stat()
        except FileNotFoundError:
            raise StageError(f"{p}: missing, though the stage's manifest lists it; {fix}") from None
        except OSError as e:
            raise StageError(f"{p}: unreadable ({e.strerror}); {fix}") from None
        if st.st_size != rec["size"]:
            raise StageError(f"{p}: {st.st_size} bytes, but the stage wrote {rec['size']} (truncated or "
                             f"replaced); {fix}")
        if st.st_mtime_ns != rec["mtime_ns"]:
            raise StageError(f"{p}: modified after the stage wrote it; {fix}")


def read_manifest(folder: str | os.PathLike, name: str = MANIFEST) -> dict | None:
    """The stage manifest `name` in `folder`, or None when the stage has not finished there."""
    p = Path(folder) / name
    if not p.exists():
        return None
    try:
        manifest = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise StageError(f"{p}: unreadable manifest ({e}); rerun the stage with --rebuild") from e
    if not isinstance(manifest, dict):
        raise StageError(f"{p}: not a stage manifest; rerun the stage with --rebuild")
    return manifest


def write_manifest(folder: str | os.PathLike, stage: str, params: dict, *, name: str = MANIFEST,
                   upstream: dict[str, str] | None = None, files: Iterable[str] = (), **fields: Any) -> dict:
    """Write the stage manifest last, once every artifact of the stage is in place. `upstream`
    maps the stages it was made from to their manifests' fingerprints; `files` names (relative
    to `folder`) the files it wrote, whose size and mtime are recorded."""
    from . import __version__

    upstream = dict(upstream or {})
    records = {str(f): file_record(Path(folder) / f) for f in files}
    identity = {"stage": stage, "params": params, "upstream": upstream, "files": records, "time_ns": time.time_ns()}
    manifest = {
        "stage": stage,
        "code_version": __version__,
        "params": params,
        "upstream": upstream,
        "files": records,
        "fingerprint": fingerprint(identity),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    write_json_atomic(Path(folder) / name, manifest)
    return manifest


def param_changes(old: dict, new: dict) -> str:
    """`k 10 → 5, seed 0 → 1`: the parameters that differ, for a "use --rebuild" message."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {json.dumps(old.get(k))} → {json.dumps(new.get(k))}" for k in keys)

"""Atomic artifact writes and stage manifests, shared by every stage.

Every file is written to a temporary name in its final folder and moved into place with
`os.replace`, so a crash never leaves a half-written file under a final name. A stage writes its
`manifest.json` last: a stage is finished only when its manifest exists and matches the inputs
and parameters it was asked to build with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import ResailError, StageError

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-able object (parameters, input listings)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> str:
    """Hash of a file's size and modification time: cheap, and changes whenever the file does."""
    st = Path(path).stat()
    return fingerprint([Path(path).name, st.st_size, st.st_mtime_ns])


def read_manifest(folder: str | os.PathLike, name: str = MANIFEST) -> dict | None:
    """The stage manifest `name` in `folder`, or None when the stage has not finished there."""
    p = Path(folder) / name
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StageError(f"{p}: unreadable manifest ({e}); delete the folder or rerun the stage with --rebuild") from e


def write_manifest(folder: str | os.PathLike, stage: str, params: dict, *, name: str = MANIFEST,
                   **fields: Any) -> dict:
    """Write the stage manifest last, once every artifact of the stage is in place."""
    from . import __version__

    manifest = {
        "stage": stage,
        "code_version": __version__,
        "params": params,
        "fingerprint": fingerprint({"stage": stage, "params": params}),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    write_json_atomic(Path(folder) / name, manifest)
    return manifest

"""Small operations every layer shares: the nearest-neighbour resize rules, reading a photo, hashing.

Resize rules. Nearest-neighbour resampling has no single definition: each library picks, for
output pixel i of N, an input pixel of n by its own formula. The floor-style formulas disagree on
a few columns for some size pairs, PIL's pixel-centre rule on most columns of most pairs
(docs/metrics.md: which site uses which, and how often they differ). resail reproduces several
on purpose: the official RESAIL code resized masks with torch's legacy
`interpolate(mode="nearest")` and label maps with PIL, and stored artifacts were cut with the
rules below. Each rule is one named function, called by name wherever it is used:

| rule | source index of output pixel i | equals |
|---|---|---|
| `nearest_torch_legacy` | ⌊i · s⌋, s = n/N, both in float32 | torch `F.interpolate(mode="nearest")` |
| `nearest_floor` | ⌊i·n/N⌋ in integers (exact) | the legacy rule without rounding |
| `nearest_floor_f64` | ⌊i · (n/N)⌋ in float64 | torch's legacy rule at any power-of-two N |
| `nearest_pil` | ⌊(i + ½) · n/N⌋, summed as PIL sums | PIL `Image.NEAREST`, cv2 `INTER_NEAREST_EXACT` |
| `nearest_cv2` | ⌊i · (1/(N/n))⌋ in float64 | cv2 `INTER_NEAREST` |

All clamp to n − 1 and take any array whose first two axes are H×W (bool masks, int32 ids, RGB),
returning a new H'×W' array; tests/test_common.py checks each against its reference library.

Photos. `read_rgb` is the one image-file reader: any Pillow mode to 8-bit RGB (`photo_rgb`),
files above `MAX_PIXELS` refused before they are decoded, or OpenCV's decoder for the segmenters
whose authors read with it; every failure is one `InputError` naming the file.

Hashes. `sha256_file` (whole files, streamed: weight files, image lists) and `short_hash` (16 hex
digits of bytes: fingerprints, row orders).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .errors import InputError

MAX_PIXELS = 2**27  # 134 Mpx (e.g. 16384×8192): far above any dataset's photos, far below a bomb's
DECODERS = ("pil", "cv2")


# ---------------------------------------------------------------- nearest-neighbour resize rules


def _torch_legacy(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)  # torch computes the scale and the product in float32
    return np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)


def _floor(n_in: int, n_out: int) -> np.ndarray:
    return np.arange(n_out, dtype=np.int64) * n_in // n_out


def _floor_f64(n_in: int, n_out: int) -> np.ndarray:
    return np.floor(np.arange(n_out, dtype=np.float64) * (n_in / n_out)).astype(np.int64)


def _pil(n_in: int, n_out: int) -> np.ndarray:
    # PIL's affine scaler starts at the first pixel centre and adds the step once per pixel: the
    # running sum, not (i + ½)·s, gives its indices bit for bit.
    step = n_in / n_out
    return np.cumsum(np.r_[0.5 * step, np.full(n_out - 1, step)]).astype(np.int64)


def _cv2(n_in: int, n_out: int) -> np.ndarray:
    inverse = 1.0 / (n_out / n_in)  # cv2's resizeNN: ifx = 1/fx with fx = dsize/ssize, in double
    return np.floor(np.arange(n_out, dtype=np.float64) * inverse).astype(np.int64)


_RULES: dict[str, Callable[[int, int], np.ndarray]] = {
    "torch_legacy": _torch_legacy, "floor": _floor, "floor_f64": _floor_f64, "pil": _pil, "cv2": _cv2}


@functools.lru_cache(maxsize=8192)
def source_indices(rule: str, n_in: int, n_out: int) -> np.ndarray:
    """The input index of each of n_out output samples under `rule` (read-only, cached: stage 1
    resizes thousands of masks between few distinct sizes)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"nearest resize from {n_in} to {n_out} samples: both must be at least 1")
    idx = np.minimum(_RULES[rule](n_in, n_out), n_in - 1)
    idx.flags.writeable = False
    return idx


def _resize(a: np.ndarray, height: int, width: int, rule: str) -> np.ndarray:
    h, w = a.shape[:2]
    # two 1-D takes: C-contiguous, and 3-8x faster than one 2-D fancy index on masks and label maps
    return a.take(source_indices(rule, h, height), axis=0).take(source_indices(rule, w, width), axis=1)


def nearest_torch_legacy(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's legacy nearest (`F.interpolate(mode="nearest")`), which the official RESAIL code
    resized masks with: the retrieval descriptors' canonical and prefilter masks."""
    return _resize(a, height, width, "torch_legacy")


def nearest_floor(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """⌊i·n/N⌋ in exact integer arithmetic, any id exact: label maps for G, D and the segmentation
    network under `--recipe resail` (training, eval, synthesize, serve)."""
    return _resize(a, height, width, "floor")


def nearest_floor_f64(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """⌊i·(n/N)⌋ in float64: the segment store's crop masks, capped at `crop_max_side`. It is the
    legacy formula in double precision and differs from torch's float32 on some size pairs; kept
    so that stores built before stay byte-identical to new ones."""
    return _resize(a, height, width, "floor_f64")


def nearest_pil(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL's NEAREST (pixel centres), identical to cv2 INTER_NEAREST_EXACT: label maps under
    `--recipe official`, and label and instance maps capped at `--max-side` in stage 1."""
    return _resize(a, height, width, "pil")


def nearest_cv2(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2's INTER_NEAREST: masks pasted into the guidance (retrieved crops stretched to the query
    boxes, segments painted into the segment map) and the query preview's thumbnails."""
    return _resize(a, height, width, "cv2")


# ---------------------------------------------------------------- photos


def photo_rgb(im: Image.Image) -> np.ndarray:
    """H×W×3 uint8 RGB of a decoded photo of any mode. 16-bit grey ("I;16…", or "I" holding
    0..65535) is scaled to 8 bits (v/257, rounded): Pillow's `convert("RGB")` would clip it to
    white. Palette, grey, CMYK and alpha modes go through Pillow's conversion."""
    if im.mode.startswith("I"):
        grey = np.round(np.clip(np.asarray(im, np.float64), 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, np.float64), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _check_pixels(im: Image.Image, path: str | Path) -> None:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise InputError(f"{path}: {w}x{h} pixels is above the {MAX_PIXELS:,}-pixel limit (a decompression bomb, "
                         "or a photo far larger than training needs); downscale or remove it")


@contextlib.contextmanager
def read_errors(path: str | Path, what: str, missing: str) -> Iterator[None]:
    """What goes wrong while Pillow reads the file at `path`, as one-line InputErrors: `missing` is
    the line's tail when the file is gone, `what` names the kind of file ("image", "PNG", …)."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: too many pixels ({e}); downscale or remove it") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # a link loop, a folder, no permission
            raise InputError(f"{path}: cannot read ({e.strerror}); fix or remove it") from None
        raise InputError(f"{path}: corrupt or truncated {what} ({e}); re-download or remove it") from None


@contextlib.contextmanager
def decoded_image(path: str | Path) -> Iterator[Image.Image]:
    """The decoded image at `path`, after checking its header's size against `MAX_PIXELS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # `_check_pixels` decides
        with Image.open(path) as im:
            _check_pixels(im, path)
            im.load()
            yield im


def read_rgb(path: str | Path, decoder: str = "pil") -> np.ndarray:
    """An image file as H×W×3 uint8 RGB. `pil`: Pillow, any mode through `photo_rgb`; `cv2`:
    `cv2.imread(IMREAD_COLOR)`, BGR flipped to RGB (the decoder some segmenters' authors read
    with; the two JPEG decoders may differ by one grey level on some pixels, PNGs decode
    identically). Missing, huge, truncated or corrupt files raise InputError."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    if decoder == "cv2":
        return _read_rgb_cv2(path)
    with read_errors(path, "image", "image file is missing; restore it or remove it from the dataset"):
        with decoded_image(path) as im:
            return photo_rgb(im)


def _read_rgb_cv2(path: str | Path) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise InputError(f"{path}: image file is missing; restore it or remove it from the dataset")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: corrupt, truncated or not an image OpenCV reads; re-download or remove it")
    return np.ascontiguousarray(bgr[:, :, ::-1])


# ---------------------------------------------------------------- hashes


def short_hash(data: bytes) -> str:
    """The first 16 hex digits of the SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()[:16]


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 (64 hex digits) of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

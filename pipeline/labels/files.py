"""Label-map files as users have them, read into native class ids by one function for `resail
synthesize`, `resail serve` and `resail index query` (with their instance maps), and written back
in either form.

Native ids are the segment store's (labels/classes.py): ADE20K 0..150, Cityscapes labelIds
0..33, COCO-Stuff 1..182, folder datasets their own; 0 is void. Users hold label maps in other
forms, so `read_label_map(source, dataset, fmt)` takes:

| `fmt`      | ADE20K          | Cityscapes                  | COCO-Stuff                            | folder     |
|------------|-----------------|-----------------------------|---------------------------------------|------------|
| `ids`      | 0..150, 0 other | labelIds 0..33              | stuffthingmap values 0..181, 255 void | native ids |
| `trainids` | –               | trainIds 0..18, 255 ignored | –                                     | –          |
| `color`    | RGB palette     | RGB, the official colours   | RGB palette                           | RGB palette |

`ids` is always the dataset's own label-file format, so a file `--label-out-format ids` wrote reads
back. For COCO-Stuff that is the stuffthingmap PNGs' values, 0..181 with 255 unlabeled (what the
dataset ships and SPADE reads), while the store's native id is value + 1 (1..182, void 0):
`ids` converts both ways (labels/spaces.py). Native 1..182 files (OASIS's shift) are not an id space here: 182 is
refused as a stuffthingmap value, smaller ones would read one class off. `auto` (the default)
decides from the pixels:

1. A single-channel PNG (8/16-bit grey, or palette-indexed: the index is the id, as in COCO-Stuff's
   indexed stuffthingmaps) holds class ids. Only Cityscapes has two id spaces, and they overlap:
   a 255 means trainIds (labelIds stop at 33), a value in 19..33 means labelIds (trainIds stop at
   18), both together are refused. A map whose values all lie in 0..18 reads validly both ways
   (trainId 0 is road, labelId 0 unlabeled): such a map is refused with a request for
   `--label-format ids` or `trainids` rather than guessed, since a wrong guess gives another scene
   without any error.
2. An RGB(A) PNG is a colour map when every colour is in a palette of the dataset (alpha is
   dropped, as in Cityscapes' RGBA `_color.png`). Otherwise a grey one (R = G = B everywhere) is a
   class-id map saved as RGB and is read as 1; any other is refused, listing up to five colours
   missing from the palette with their pixel counts.

Palettes. Each dataset has one palette the project paints with: the class table's colours
(Cityscapes: the official ones; ADE20K and COCO-Stuff: fixed colours of the project, which `resail
serve` shows and `--label-out-format color` writes), black being void; a folder dataset gets stable
colours per id. ADE20K colour maps are also read in the 150-colour palette most tools use
(CSAILVision's `color150`, mmsegmentation, ControlNet; `data/ade20k_palette150.csv`); the two
share no colour. A colour several ids share decodes to the lowest: Cityscapes black → 0
unlabeled (ids 1..4 are black too), (153,153,153) → 17 pole (not 18 polegroup), (0,0,142) → 26 car
(not license plate); color150's (140,140,140) → 7 road (not 49 skyscraper). A colour map therefore
cannot carry Cityscapes ids 1..4 and 18.

Size. One rule everywhere: any map from MIN_SIDE to MAX_SIDE pixels a side is accepted (the limit
is checked from the header, before decoding); a command with a model resizes it to the model size
with nearest neighbour, exactly as the trainer resizes the dataset's own maps, and says so
(`aspect_note`) when that changes the aspect ratio by more than 2 %, since the scene is then
stretched. Refusing other aspect ratios would refuse ADE20K's own maps, which the ADE20K presets
train on stretched to a square. `index query` has no model size, so only the bounds apply there.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ...choices import LABEL_FORMATS, LABEL_OUT_FORMATS
from ...errors import ConfigError, InputError
from ...workdir import WorkDir
from .classes import ade20k_palette150, class_table, palette_lut, spread_colors
from .spaces import ADE20K, cityscapes_space_of, ids_to_native, native_to_ids

MIN_SIDE = 8
MAX_SIDE = 4096
ASPECT_TOLERANCE = 0.02
LISTED_COLORS = 5
ID_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


class LabelSizeError(InputError):
    """A label map outside MIN_SIDE..max_side pixels a side; `too_large` tells the two apart."""

    def __init__(self, message: str, too_large: bool):
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class LabelMapFile:
    label_map: np.ndarray  # H×W int32 native class ids, 0 = void
    format: str            # how it was read: ids, trainids or color
    how: str               # one phrase saying what `auto` saw, for logs and answers


# ---------------------------------------------------------------- size


def check_label_size(width: int, height: int, where: str, max_side: int = MAX_SIDE) -> None:
    """LabelSizeError unless both sides lie in MIN_SIDE..max_side."""
    if width > max_side or height > max_side:
        raise LabelSizeError(f"{where}: label map is {width}x{height}; the limit is {max_side} px a side: "
                             "downscale it with nearest neighbour", too_large=True)
    if min(width, height) < MIN_SIDE:
        raise LabelSizeError(f"{where}: label map is {width}x{height}; it needs at least {MIN_SIDE} px a side",
                             too_large=False)


def aspect_note(label_hw: tuple[int, int], size: tuple[int, int], where: str = "label map") -> str:
    """What resizing an H×W label map to the model's (W, H) does to it, when it stretches the scene
    by more than ASPECT_TOLERANCE; "" otherwise."""
    h, w = label_hw[:2]
    W, H = size
    if abs((w / h) / (W / H) - 1) <= ASPECT_TOLERANCE:
        return ""
    return (f"{where} is {w}x{h} and the run makes {W}x{H}: it is resized with nearest neighbour, as the trainer "
            f"resizes the dataset's maps, which stretches its aspect ratio {w / h:.2f} to {W / H:.2f}; crop or pad "
            "it to the run's aspect ratio to avoid that")


# ---------------------------------------------------------------- colour maps


def _keys(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 → H×W int64 colour keys (r << 16 | g << 8 | b)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]


@functools.cache
def _read_palettes(dataset: str, class_ids: tuple[int, ...]) -> tuple[tuple[str, dict[int, int]], ...]:
    """(name, colour key → native id) of each palette a colour map of `dataset` may use."""
    def decoder(colors: dict[int, tuple[int, int, int]]) -> dict[int, int]:
        table = {0: 0}  # black is void; shared colours decode to the lowest id
        for c in sorted(colors):
            r, g, b = colors[c]
            table.setdefault(r << 16 | g << 8 | b, c)
        return table

    try:
        table = class_table(dataset)
        own = dict(zip(table.ids, table.colors))
    except InputError:
        lut = spread_colors(max(class_ids, default=0) + 1)
        own = {c: tuple(int(v) for v in lut[c]) for c in class_ids if c > 0}
    palettes = [(f"the {dataset} palette", decoder(own))]
    if dataset in ADE20K:
        palettes.append(("the common ADE20K palette (color150)", decoder(ade20k_palette150())))
    return tuple(palettes)


def decode_colors(rgb: np.ndarray, dataset: str, class_ids: Sequence[int] = (), where: str = "label map"
                  ) -> tuple[np.ndarray | None, str]:
    """H×W×3 colours → (H×W int32 native ids, the palette's name), or (None, why not) when some
    colour is in none of the dataset's palettes; the reason lists the commonest missing ones."""
    keys, inverse, counts = np.unique(_keys(rgb).ravel(), return_inverse=True, return_counts=True)
    best = None  # the palette missing the fewest pixels names the colours in the message
    for name, table in _read_palettes(dataset, tuple(sorted(int(c) for c in class_ids))):
        ids = np.array([table.get(int(k), -1) for k in keys], np.int64)
        missing_px = int(counts[ids < 0].sum())
        if missing_px == 0:
            return ids[inverse].reshape(rgb.shape[:2]).astype(np.int32), name
        if best is None or missing_px < best[0]:
            best = (missing_px, name, np.flatnonzero(ids < 0))
    _, name, missing = best
    missing = missing[np.argsort(-counts[missing], kind="stable")]
    shown = ", ".join(f"({k >> 16},{k >> 8 & 255},{k & 255}) on {int(counts[i]):,} px"
                      for i, k in ((i, int(keys[i])) for i in missing[:LISTED_COLORS]))
    more = f" and {len(missing) - LISTED_COLORS} more" if len(missing) > LISTED_COLORS else ""
    return None, (f"{where}: {len(missing)} colour(s) are not in {name}: {shown}{more}; paint with the dataset's "
                  "palette (the one `resail serve` shows), or write a single-channel PNG of class ids")


# ---------------------------------------------------------------- checks


def _check_known(native: np.ndarray, dataset: str, class_ids: Sequence[int], where: str, fmt: str) -> None:
    known = np.asarray(sorted({0, *(int(c) for c in class_ids)}), np.int64)
    present = np.unique(native)
    unknown = present[~np.isin(present, known)]
    if unknown.size:
        listed = unknown[:12].tolist()
        raise InputError(f"{where}: class ids {listed}{' …' if unknown.size > 12 else ''} are not in the {dataset} "
                         f"class table (read as {fmt}); write the dataset's class ids (0 = void), or name "
                         "another id space as its label format")


# ---------------------------------------------------------------- the one reader


def _open(source: str | Path | bytes, where: str, max_side: int) -> tuple[np.ndarray, str]:
    """(pixels, PIL mode): H×W int32 ids for single-channel modes, H×W×3 uint8 for colour ones."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            check_label_size(*im.size, where, max_side)
            im.load()
            if im.mode in ID_MODES:
                # 16-bit PNGs open as "I" or "I;16" depending on Pillow: read values, never colours.
                return np.asarray(im).astype(np.int32), im.mode
            if im.mode == "LA":
                return np.asarray(im)[..., 0].astype(np.int32), im.mode
            if im.mode in ("RGB", "RGBA"):
                return np.ascontiguousarray(np.asarray(im)[..., :3]), im.mode
            raise InputError(f"{where}: a PNG of mode {im.mode}; a label map is a single-channel PNG of class ids "
                             "or an RGB colour map")
    except FileNotFoundError:
        raise InputError(f"{where}: no such file") from None
    except Image.DecompressionBombError as e:
        raise LabelSizeError(f"{where}: {e}", too_large=True) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{where}: corrupt or truncated PNG ({e}); save it again as a PNG") from None


def _palette_rgb(source: str | Path | bytes) -> np.ndarray:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return np.asarray(im.convert("RGB"))


def read_label_map(source: str | Path | bytes, dataset: str, fmt: str = "auto", *, class_ids: Sequence[int] = (),
                   where: str | None = None, max_side: int = MAX_SIDE) -> LabelMapFile:
    """A label-map PNG (a path, or the file's bytes) in format `fmt` → native ids, checked against
    `class_ids` (the dataset's classes; 0 = void is always allowed) when given."""
    where = where or ("label map" if isinstance(source, bytes) else str(source))
    if fmt not in LABEL_FORMATS:
        raise ConfigError("label_format", f"label format {fmt!r}: choose one of {', '.join(LABEL_FORMATS)}")
    if fmt == "trainids" and dataset != "cityscapes":
        raise ConfigError("label_format", f"label format trainids: only Cityscapes has trainIds; write {dataset} "
                                          "maps as ids or color")
    pixels, mode = _open(source, where, max_side)
    if fmt == "color" and mode == "P":
        pixels = _palette_rgb(source)
    return decode_label_pixels(pixels, dataset, fmt, class_ids=class_ids, where=where)


def read_store_label_map(work: str | Path, source: str | Path | bytes, fmt: str = "auto", **kwargs) -> LabelMapFile:
    """`read_label_map` with the dataset and class table of WORK's segment store."""
    manifest = WorkDir(work).require_segments()
    return read_label_map(source, manifest["params"]["dataset"], fmt, class_ids=manifest["classes"]["ids"], **kwargs)


def read_instance_map(path: str | Path, label_map: np.ndarray, label_where: str) -> np.ndarray:
    """An instance PNG (one id per thing instance, 0 = none; 8 or 16 bit, or palette-indexed) that
    must match `label_map` pixel for pixel, read by the same opener as the label map."""
    inst, mode = _open(path, str(path), MAX_SIDE)
    if mode not in ID_MODES:
        raise InputError(f"{path}: an instance map of mode {mode}; write a single-channel PNG of instance ids "
                         "(0 = none)")
    if inst.shape != label_map.shape[:2]:
        raise InputError(f"{path}: instance map is {inst.shape[1]}x{inst.shape[0]} but the label map {label_where} is "
                         f"{label_map.shape[1]}x{label_map.shape[0]}; they must match pixel for pixel")
    return inst


def decode_label_pixels(pixels: np.ndarray, dataset: str, fmt: str = "auto", *, class_ids: Sequence[int] = (),
                        where: str = "label map") -> LabelMapFile:
    """`read_label_map` on decoded pixels: H×W ids or H×W×3 colours."""
    how = "the dataset's class ids"
    if pixels.ndim == 3:
        grey = bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
        if fmt in ("auto", "color"):
            native, why = decode_colors(pixels, dataset, class_ids, where)
            if native is not None:
                if class_ids:
                    _check_known(native, dataset, class_ids, where, "color")
                return LabelMapFile(native, "color", f"colours of {why}")
            if fmt == "color" or not grey:
                raise InputError(why)
        elif not grey:
            raise InputError(f"{where}: an RGB image with colours, not class ids; read it as label format color "
                             "(or auto)")
        pixels, how = pixels[..., 0].astype(np.int32), "class ids saved as grey RGB"
    elif fmt == "color":
        raise InputError(f"{where}: a single-channel image holds class ids, not colours; read it as label "
                         "format ids (or auto)")
    if fmt == "auto":
        fmt, how = cityscapes_space_of(pixels, where) if dataset == "cityscapes" else ("ids", how)
    native = ids_to_native(pixels, dataset, fmt, where)
    if class_ids:
        _check_known(native, dataset, class_ids, where, fmt)
    return LabelMapFile(native, fmt, how)


# ---------------------------------------------------------------- writing


def encode_label_map(native: np.ndarray, dataset: str, fmt: str = "ids") -> np.ndarray:
    """Native ids → the image to save as PNG: `ids` in the dataset's label-file format (uint8, or
    uint16 when ids exceed 255), `color` as H×W×3 RGB in the palette the project paints with."""
    native = np.asarray(native, np.int64)
    if fmt == "color":
        return palette_lut(dataset, int(native.max(initial=0)) + 1)[native]
    if fmt != "ids":
        raise ConfigError("label_out_format", f"label output format {fmt!r}: choose one of "
                                              f"{', '.join(LABEL_OUT_FORMATS)}")
    return native_to_ids(native, dataset)

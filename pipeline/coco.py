"""COCO instances: the JSON of `instances_{split}2017.json` streamed per image, and each image's
instance masks painted from its annotations.

`coco_annotation_texts` walks the file once in the main process and keeps each image's annotations
as JSON text (a worker parses the few it loads); `coco_instance_map` paints an image's non-crowd
annotations as instance ids, each mask drawn by the COCO API (pycocotools) exactly as
`COCO.annToMask` draws it: the field's standard masks, which a rasteriser of our own would miss by
up to half a pixel around every polygon and on the whole of thin ones.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from array import array
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask

from ..errors import InputError

_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _after_space(text: str, pos: int) -> int:
    return _JSON_SPACE.match(text, pos).end()


def _expect(text: str, pos: int, chars: str) -> str:
    c = text[pos:pos + 1]
    if not c or c not in chars:
        raise ValueError(f"expected {' or '.join(map(repr, chars))} at character {pos}")
    return c


def coco_annotation_texts(text: str) -> dict[str, bytes]:
    """Each image's annotations in a COCO instances JSON, as the JSON text of their list (UTF-8,
    file order), keyed by the image's file stem.

    `json.loads` of the whole file would hold every annotation as Python objects, ~7× the file
    (~3 GB for COCO train2017), in the main process for the whole stage (docs/scale.md). This
    walks the top-level object instead, decodes the annotations one at a time only to read their
    image id, and keeps their text: the records weigh about the file's size, and each worker
    parses the few it loads (`coco_annotations`), to the same objects."""
    dec = json.JSONDecoder()
    stems, spans = None, None
    _expect(text, pos := _after_space(text, 0), "{")
    pos = _after_space(text, pos + 1)
    while text[pos:pos + 1] != "}":
        key, pos = dec.raw_decode(text, pos)
        _expect(text, pos := _after_space(text, pos), ":")
        pos = _after_space(text, pos + 1)
        if key == "annotations":
            spans, pos = _annotation_spans(text, pos, dec)
        else:
            value, pos = dec.raw_decode(text, pos)
            if key == "images":
                stems = {img["id"]: Path(img["file_name"]).stem for img in value}
        if _expect(text, pos := _after_space(text, pos), ",}") == ",":
            pos = _after_space(text, pos + 1)
    if stems is None or spans is None:
        raise KeyError("images" if stems is None else "annotations")
    ids, starts, ends = spans
    order = sorted(range(len(ids)), key=ids.__getitem__)  # stable: file order within an image
    by_stem: dict[str, bytes] = {}
    a = 0
    while a < len(order):
        b = a
        while b < len(order) and ids[order[b]] == ids[order[a]]:
            b += 1
        by_stem[stems[ids[order[a]]]] = f"[{','.join(text[starts[k]:ends[k]] for k in order[a:b])}]".encode()
        a = b
    return by_stem


def _annotation_spans(text: str, pos: int, dec: json.JSONDecoder) -> tuple[tuple[list, array, array], int]:
    """(image ids, start and end characters) of the annotations of the array at `pos`; and the
    position after it."""
    ids, starts, ends = [], array("q"), array("q")
    _expect(text, pos, "[")
    pos = _after_space(text, pos + 1)
    while text[pos:pos + 1] != "]":
        a, end = dec.raw_decode(text, pos)
        _instance_fields(a)  # what a worker reads: a bad entry fails now, while listing, naming the file
        ids.append(a["image_id"])
        starts.append(pos)
        ends.append(end)
        if _expect(text, pos := _after_space(text, end), ",]") == ",":
            pos = _after_space(text, pos + 1)
    return (ids, starts, ends), pos + 1


def _instance_fields(a: dict) -> dict:
    return {"segmentation": a["segmentation"], "iscrowd": int(a.get("iscrowd", 0))}


def coco_annotations(text: bytes) -> list[dict]:
    """An image's annotations (`coco_annotation_texts`) as `coco_instance_map` takes them."""
    return [_instance_fields(a) for a in (json.loads(text) if text else ())]


def coco_instance_map(annotations, shape: tuple[int, int], where: str) -> np.ndarray:
    """Paint non-crowd COCO annotations in JSON order (later ones overwrite) as instance ids 1..K;
    an annotation that paints nothing gets no id.

    Each mask is `COCO.annToMask`'s: polygon parts through `frPyObjects` and their union (`merge`),
    an uncompressed RLE through `frPyObjects`, a compressed one as it is, then `decode`. Crowd
    annotations are skipped, as in the official RESAIL code: their pixels fall to the dataset's
    uncovered-thing rule.

    Malformed segmentations, where pycocotools would fail or silently draw garbage:
    - a polygon part of fewer than 6 numbers (< 3 vertices) paints nothing, as pycocotools does with
      it anywhere but first (first, its type dispatch takes the list for boxes and fails); an
      annotation with no part of 3+ vertices, `[]` included, paints nothing;
    - refused with a one-line InputError naming `where`: a part of an odd count of numbers
      (pycocotools drops the last), of non-numbers, of non-finite numbers, or reaching far outside
      the image (beyond [-max(h, w), 2·max(h, w)], where pycocotools' integers overflow); an RLE whose
      size is not the label map's, whose counts are not non-negative integers summing to h*w
      (pycocotools would decode memory past the runs), or whose compressed string does not parse.

    Only the frame that holds a mask is decoded (`_annotation_rle`, `_without_leading_columns`),
    the same pixels at a fraction of the cost of decoding the whole image per annotation.
    """
    h, w = shape
    inst = np.zeros((h, w), np.int32)
    k = 0
    with warnings.catch_warnings():  # pycocotools' decode under numpy 2: a DeprecationWarning per call
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        for a in annotations:
            if a["iscrowd"]:
                continue
            rle = _annotation_rle(a["segmentation"], h, w, where)
            if rle is None or not coco_mask.area(rle):
                continue
            k += 1
            x0, rle = _without_leading_columns(rle)
            fh, fw = rle["size"]
            inst[:fh, x0:x0 + fw].T[coco_mask.decode(rle).T.view(bool)] = k  # .T: in the mask's column order
    return inst


def _annotation_rle(seg, h: int, w: int, where: str) -> dict | None:
    """`COCO.annToRLE` of a checked segmentation (None: no polygon part of 3+ vertices); for
    polygons, only its top-left corner that holds them: pycocotools' rasteriser draws the same
    pixels in any smaller frame, and decoding the smaller frame is the time saved."""
    if isinstance(seg, dict):
        return _checked_rle(seg, h, w, where)
    if not isinstance(seg, list):
        raise InputError(f"{where}: a COCO segmentation is a {type(seg).__name__}, neither polygons nor RLE; "
                         "fix the instances JSON")
    if any(not isinstance(p, list) or len(p) % 2 for p in seg):
        raise InputError(f"{where}: a COCO polygon is not an even count of numbers x1,y1,x2,y2,…; "
                         "fix the instances JSON")
    parts = [p for p in seg if len(p) >= 6]
    if not parts:
        return None
    reach = max(h, w)
    lo, x_hi, y_hi = 0.0, -math.inf, -math.inf
    for p in parts:
        try:
            finite = math.isfinite(sum(p))
        except TypeError:
            finite = False
        if not finite:
            raise InputError(f"{where}: a COCO polygon has a coordinate that is not a finite number; "
                             "fix the instances JSON")
        lo, x_hi, y_hi = min(lo, min(p)), max(x_hi, max(p[0::2])), max(y_hi, max(p[1::2]))
    if lo < -reach or max(x_hi, y_hi) > 2 * reach:  # pycocotools would overflow, or allocate the perimeter
        raise InputError(f"{where}: a COCO polygon has a coordinate outside [{-reach}, {2 * reach}], far outside "
                         f"the {w}×{h} image; fix the instances JSON")
    rles = coco_mask.frPyObjects(parts, min(h, max(1, int(y_hi) + 3)), min(w, max(1, int(x_hi) + 3)))
    return coco_mask.merge(rles) if len(rles) > 1 else rles[0]  # merge of one part: the part


def _without_leading_columns(rle: dict) -> tuple[int, dict]:
    """(x0, the RLE without its first x0 columns), x0 the whole columns its first run of zeros
    covers: the first count, which no later count is a delta against, is all that changes."""
    counts = rle["counts"]
    counts = counts.encode("ascii") if isinstance(counts, str) else counts
    h, w = rle["size"]
    first, end = _number(counts, 0)
    x0 = min(first // h, w - 1)
    if not x0:
        return 0, rle
    return x0, {"size": [h, w - x0], "counts": _number_text(first - x0 * h) + counts[end:]}


def _number(s: bytes, pos: int) -> tuple[int, int]:
    """The number of a compressed COCO RLE string at `pos`, and the position after it: 6-bit
    characters from '0', 5 bits each (low first), 0x20 continues it, 0x10 in its last makes it
    negative."""
    x = k = 0
    while True:
        c = s[pos + k] - 48
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if not c & 0x20:
            return (x - (1 << (5 * k)) if c & 0x10 else x), pos + k


def _number_text(x: int) -> bytes:
    """`_number`'s inverse, for x ≥ 0."""
    out = bytearray()
    while True:
        c, x = x & 0x1F, x >> 5
        if not x and not c & 0x10:
            out.append(c + 48)
            return bytes(out)
        out.append(c + 48 + 0x20)


def _checked_rle(seg: dict, h: int, w: int, where: str) -> dict:
    """The RLE as annToRLE uses it (uncompressed counts through frPyObjects), once its size and counts
    are checked: pycocotools does neither."""
    try:
        size, counts = [int(v) for v in seg["size"]], seg["counts"]
        if isinstance(counts, list):
            runs = np.asarray(counts)
            if runs.ndim != 1 or (runs.size and runs.dtype.kind not in "iu"):
                raise ValueError("counts are not a list of integers")
        else:
            runs = _string_runs(counts.encode("ascii") if isinstance(counts, str) else bytes(counts))
    except (KeyError, TypeError, ValueError, OverflowError, UnicodeError) as e:
        raise InputError(f"{where}: malformed COCO RLE ({e}); fix the instances JSON") from None
    if size != [h, w]:
        raise InputError(f"{where}: an RLE instance has size {tuple(size)}, the label map {(h, w)}; "
                         "the JSON does not belong to this image")
    if (runs < 0).any():
        raise InputError(f"{where}: COCO RLE counts have a negative run; fix the instances JSON")
    if int(runs.sum()) != h * w:
        raise InputError(f"{where}: COCO RLE counts sum to {int(runs.sum())}, not {h}*{w}; fix the instances JSON")
    if isinstance(counts, list):
        return coco_mask.frPyObjects({"size": size, "counts": counts}, h, w)
    return {"size": size, "counts": counts}


def _string_runs(s: bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string, to check them before pycocotools decodes it:
    6-bit characters from '0', each 5 bits of a number (low first), 0x20 continues it, 0x10 in its
    last character makes it negative; from the third run on, a delta against the run two before."""
    c = np.frombuffer(s, np.uint8).astype(np.int64) - 48
    if not c.size:
        return c
    if ((c < 0) | (c > 63)).any() or c[-1] & 0x20:
        raise ValueError("not a compressed RLE string")
    last = np.flatnonzero((c & 0x20) == 0)
    first = np.concatenate([[0], last[:-1] + 1])
    digit = np.arange(c.size) - np.repeat(first, last - first + 1)
    if digit.max() > 11:
        raise ValueError("a run length overflows")
    x = np.add.reduceat((c & 0x1F) << (5 * digit), first)
    neg = (c[last] & 0x10) != 0
    x[neg] -= np.int64(1) << (5 * (digit[last][neg] + 1))
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])  # odd runs: deltas from the second one on
    runs[2::2] = np.cumsum(x[2::2])  # even runs: from the third
    return runs

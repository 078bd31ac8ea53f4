"""Guidance composition: paste per-segment content into one image (docs/design.md, docs/method.md §3).

Shared by the retrieval guidance (retrieved crops stretched to the query boxes) and the
distorted ground truth (the image's own segments after distortion). Everything happens at the
canvas resolution (the training size), on the bbox window of each piece, so the cost grows with
the pasted area, not with the number of segments times the image size.

Inputs:
- `segment_map`: H×W int32, the index of the query segment owning each pixel, −1 for none;
- `query_is_thing`: per query index, whether it is a thing;
- `pieces`: the content to paste, one per matched query. A piece's window may extend past its
  query box (a warped segment spills) and past the canvas (it is clipped).

Modes:
- `clean` (default): black canvas; stuff content inside its own query mask only; thing content
  wherever its own (retrieved or warped) mask lands, except on other things' query masks and on
  unmatched segments, overwriting stuff; unmatched segments stay black. Values stay in [0, 255].
- `official`: the official summed formula (docs/method.md §3.2), G + 1 = Σ P'·M + Σ_things P'·(1 − other
  things' M) + Σ_stuff P'·M·(1 − ∪ things' Q), in [−1, 1] units, clipped to uint8 (as the
  official disk cache did).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numba
import numpy as np

from ..choices import COMPOSE_MODES
from ..common import nearest_cv2


@dataclass(frozen=True)
class Piece:
    """Content for one query segment: `rgb` (h×w×3 uint8) and its own mask (h×w bool) placed at (y0, x0)."""

    query: int
    y0: int
    x0: int
    rgb: np.ndarray
    mask: np.ndarray


def stretch_crop(rgba: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Stretch a stored RGBA crop to h×w: bicubic image, nearest mask (aspect ratio not kept)."""
    rgb = cv2.resize(np.ascontiguousarray(rgba[..., :3]), (w, h), interpolation=cv2.INTER_CUBIC)
    mask = nearest_cv2(rgba[..., 3], h, w) > 127
    return rgb, mask


def _window(piece: Piece, shape: tuple[int, int]):
    """Canvas slices and piece slices of the part of `piece` that lies on the canvas (None if none)."""
    H, W = shape
    h, w = piece.mask.shape
    y0, x0 = max(piece.y0, 0), max(piece.x0, 0)
    y1, x1 = min(piece.y0 + h, H), min(piece.x0 + w, W)
    if y0 >= y1 or x0 >= x1:
        return None
    canvas = (slice(y0, y1), slice(x0, x1))
    local = (slice(y0 - piece.y0, y1 - piece.y0), slice(x0 - piece.x0, x1 - piece.x0))
    return canvas, local


def compose(segment_map: np.ndarray, query_is_thing: Sequence[bool], pieces: Sequence[Piece],
            mode: str = "clean") -> np.ndarray:
    """Compose the guidance image (H×W×3 uint8) from `pieces` over the query `segment_map`."""
    if mode not in COMPOSE_MODES:
        raise ValueError(f"unknown composition mode {mode!r}: choose one of {', '.join(COMPOSE_MODES)}")
    is_thing = np.asarray(query_is_thing, dtype=bool)
    if mode == "official":
        return _compose_official(segment_map, is_thing, pieces)
    return _compose_clean(segment_map, is_thing, pieces)


def _compose_clean(segment_map, is_thing, pieces):
    H, W = segment_map.shape
    out = np.zeros((H, W, 3), np.uint8)
    matched = np.zeros(len(is_thing) + 1, bool)  # last slot: index −1 (no segment)
    for p in pieces:
        matched[p.query] = True
    # A thing may paint a pixel unless it belongs to another thing's query or to an unmatched one.
    owner_blocks_things = is_thing | ~matched[:-1]
    # Stuff first, then things on top, each in the order given.
    for p in sorted(pieces, key=lambda p: bool(is_thing[p.query])):
        _paint_clean(out, segment_map, p.y0, p.x0, p.rgb, p.mask, p.query, bool(is_thing[p.query]),
                     owner_blocks_things)
    return out


@numba.njit(cache=True)
def _paint_clean(out, segment_map, y0, x0, rgb, mask, query, thing, owner_blocks_things):  # pragma: no cover
    """Paint one piece: stuff where its mask meets its own query; a thing where its mask lands,
    except on the query of another thing or of an unmatched segment. Clipped to the canvas."""
    H, W = segment_map.shape
    h, w = mask.shape
    for i in range(max(0, -y0), min(h, H - y0)):
        for j in range(max(0, -x0), min(w, W - x0)):
            if not mask[i, j]:
                continue
            owner = segment_map[y0 + i, x0 + j]
            if thing:
                if owner >= 0 and owner != query and owner_blocks_things[owner]:
                    continue
            elif owner != query:
                continue
            for c in range(3):
                out[y0 + i, x0 + j, c] = rgb[i, j, c]


def _compose_official(segment_map, is_thing, pieces):
    H, W = segment_map.shape
    acc = np.zeros((H, W, 3), np.float32)  # G + 1, in units where uint8 255 ↔ 2
    thing_q = np.zeros((H, W), bool)        # ∪ of the things' own (retrieved/warped) masks
    matched_thing = np.zeros(len(is_thing), bool)
    for p in pieces:
        if is_thing[p.query]:
            matched_thing[p.query] = True
            win = _window(p, (H, W))
            if win is not None:
                thing_q[win[0]] |= p.mask[win[1]]
    owner_is_matched_thing = np.append(matched_thing, False)[segment_map]  # index −1 → False
    for p in pieces:
        win = _window(p, (H, W))
        if win is None:
            continue
        cwin, lwin = win
        # P' = P + 1 ∈ [0, 2] is the pasted canvas itself, black outside the crop's own mask up to
        # the bicubic stretch's bleed, as in the official code (no extra masking by Q).
        content = p.rgb[lwin].astype(np.float32) / 127.5
        own = segment_map[cwin] == p.query
        if is_thing[p.query]:
            weight = own + (1.0 - (owner_is_matched_thing[cwin] & ~own))
        else:
            weight = own * (1.0 + ~thing_q[cwin])
        acc[cwin] += content * weight[..., None]
    return np.clip(acc * 127.5, 0, 255).astype(np.uint8)

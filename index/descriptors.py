"""Mask descriptors shared by the segment store and the retrieval index.

A segment's *canonical mask* is its tight-bbox crop resized to R×R with torch's legacy nearest
sampling (`common.nearest_torch_legacy`, the rule the official code used), aspect ratio not
preserved. The *prefilter mask* is the same at r×r.
Both are stored bit-packed: rows of R·R/8 bytes, `np.packbits` over the row-major flattened
mask, big bit order. At R = 128 a mask is 2,048 bytes; at r = 32 it is 128 bytes, which is
exactly a 1,024-bit FAISS binary vector whose Hamming distance is the XOR count.
"""

from __future__ import annotations

import numpy as np

from ..common import nearest_torch_legacy

R_CANONICAL = 128
R_PREFILTER = 32


def crop_to_bbox(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The tight-bbox crop of a non-empty 2-D mask and its box (y0, x0, h, w)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return mask[y0:y1, x0:x1], (int(y0), int(x0), int(y1 - y0), int(x1 - x0))


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """N×S×S boolean masks → N×(S·S/8) uint8 bit-packed rows (S·S must be a multiple of 8)."""
    masks = np.asarray(masks, dtype=bool)
    return np.packbits(masks.reshape(masks.shape[0], -1), axis=1)


def unpack_masks(packed: np.ndarray, side: int) -> np.ndarray:
    """Inverse of `pack_masks`: N×(side·side/8) uint8 → N×side×side bool."""
    packed = np.asarray(packed, dtype=np.uint8)
    bits = np.unpackbits(packed, axis=1, count=side * side)
    return bits.reshape(packed.shape[0], side, side).astype(bool)


def descriptors(bbox_crop: np.ndarray, R: int = R_CANONICAL, r: int = R_PREFILTER) -> tuple[np.ndarray, np.ndarray]:
    """Packed canonical (R×R) and prefilter (r×r) rows of one segment's bbox-cropped mask."""
    canon = nearest_torch_legacy(bbox_crop, R, R)
    pre = nearest_torch_legacy(bbox_crop, r, r)
    return pack_masks(canon[None])[0], pack_masks(pre[None])[0]

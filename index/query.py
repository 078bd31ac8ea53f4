"""`resail index query`: retrieve training matches for segments that are not in the store.

The segments come decomposed (a user's label map goes through `pipeline.guidance.query_label_map`,
which decomposes it with the store's class table and calls `query_segments`); this module only
describes them to the index, searches, and reports: `format_matches` prints, `write_preview`
draws a mosaic of the matches' crops read through the segment store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import write_png_atomic
from ..common import nearest_cv2
from ..errors import InputError
from ..pipeline.store import SegmentStore
from .descriptors import descriptors
from .retrieval import RetrievalIndex
from .search import QueryBatch, SearchConfig, SearchResult, search

CELL = 96  # preview cell side in pixels


@dataclass
class LabelMapMatches:
    segments: list  # decomposed segments (class_id, is_thing, y0, x0, h, w, area, mask), in order
    result: SearchResult
    label_hw: tuple[int, int]  # (H, W) of the label map as decomposed (the store's max side applied)


def query_segments(index: RetrievalIndex, segments: list, cfg: SearchConfig = SearchConfig()) -> SearchResult:
    """Top-k training matches of segments that are not in the store (bbox-cropped masks)."""
    n = len(segments)
    canon = np.zeros((n, index.R * index.R // 8), np.uint8)
    pre = np.zeros((n, index.r * index.r // 8), np.uint8)
    for i, seg in enumerate(segments):
        canon[i], pre[i] = descriptors(seg.mask, index.R, index.r)
    batch = QueryBatch(
        class_id=np.array([s.class_id for s in segments], np.int64),
        canonical=canon,
        prefilter=pre,
        bbox_area=np.array([s.h * s.w for s in segments], np.int64),
    )
    return search(index, batch, cfg)


def check_queryable(index: RetrievalIndex, m: LabelMapMatches, where: str) -> list[int]:
    """The classes of `m`'s segments without training segments in the index (their segments
    match nothing: black guidance, as in a bake); an InputError when the map has no segment."""
    if not m.segments:
        raise InputError(f"{where}: no segment to query (only void pixels?); label at least one region")
    return sorted({int(s.class_id) for s in m.segments if not index.has_class(s.class_id)})


def format_matches(m: LabelMapMatches, class_names: dict[int, str] | None = None) -> str:
    """One block per segment: its class and bbox, then `segment_id:score` of its matches."""
    names = class_names or {}
    lines = []
    for i, seg in enumerate(m.segments):
        head = (f"segment {i}: class {seg.class_id} {names.get(seg.class_id, '')} "
                f"bbox y={seg.y0} x={seg.x0} h={seg.h} w={seg.w} area={seg.area}")
        found = m.result.matches(i)
        body = "  ".join(f"{sid}:{s:.4f}" for sid, s in found) if found else f"none ({m.result.reason[i]})"
        lines.append(f"{head}\n  {body}")
    return "\n".join(lines)


def write_preview(index: RetrievalIndex, m: LabelMapMatches, out: Path, n_matches: int = 5) -> Path:
    """A mosaic: per segment one row, its query mask then the crops of its best matches."""
    n_cols = 1 + n_matches
    rows = max(1, len(m.segments))
    canvas = np.zeros((rows * CELL, n_cols * CELL, 3), np.uint8)
    row_of = _rows_of_segment_ids(index)
    with SegmentStore(index.work, "train") as store:
        for i, seg in enumerate(m.segments):
            canvas[i * CELL:(i + 1) * CELL, :CELL] = _fit(np.repeat(seg.mask[..., None] * np.uint8(255), 3, 2))
            for j, sid in enumerate(m.result.segment_id[i][:n_matches].tolist()):
                if sid < 0:
                    continue
                rgb, _ = store.crop(row_of[sid])
                canvas[i * CELL:(i + 1) * CELL, (j + 1) * CELL:(j + 2) * CELL] = _fit(rgb)
    return write_png_atomic(out, canvas)


def _rows_of_segment_ids(index: RetrievalIndex) -> dict[int, int]:
    return {int(s): r for r, s in enumerate(index.table.segment_id.tolist())}


def _fit(img: np.ndarray) -> np.ndarray:
    """Letterbox an H×W×3 image into a CELL×CELL cell, keeping its aspect ratio."""
    h, w = img.shape[:2]
    s = CELL / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = nearest_cv2(img, nh, nw)
    cell = np.zeros((CELL, CELL, 3), np.uint8)
    y, x = (CELL - nh) // 2, (CELL - nw) // 2
    cell[y:y + nh, x:x + nw] = small
    return cell

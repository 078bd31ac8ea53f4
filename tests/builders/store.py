"""Segment stores fabricated from arrays, for retrieval tests and `benchmarks/retrieval.py`.

The real store is written by stage 1 (`pipeline/store.py`) from decomposed images. Retrieval
tests and the retrieval benchmark need stores with chosen masks and sizes, so this writes the
same files (docs/segment-store.md format) straight from arrays: `segments/{split}.parquet`,
`segments/{split}.h5` and `segments/manifest.json`. Crops are small grey RGBA renderings of the
canonical masks.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from resail.artifacts import atomic_path, write_manifest
from resail.common import nearest_floor_f64, nearest_torch_legacy
from resail.index.descriptors import pack_masks, unpack_masks
from resail.index.score import as_words, popcounts
from resail.workdir import WorkDir


def write_fake_store(
    work: Path,
    *,
    masks: np.ndarray,
    class_id: np.ndarray,
    bbox_area: np.ndarray,
    prefilter: np.ndarray | None = None,
    image_id: list[str] | None = None,
    segment_id: np.ndarray | None = None,
    split: str = "train",
    R: int = 128,
    r: int = 32,
    crop_side: int = 8,
    chunk: int = 4096,
) -> Path:
    """Write a store of N segments from N×R×R canonical masks (bool) or N×(R·R/8) packed rows.

    The prefilter rows are derived from the canonical masks unless given (packed).
    """
    masks = np.asarray(masks)
    canonical = masks if masks.dtype == np.uint8 and masks.ndim == 2 else pack_masks(masks)
    n = canonical.shape[0]
    if prefilter is None:
        prefilter = np.zeros((n, r * r // 8), np.uint8)
        for s in range(0, n, chunk):
            full = unpack_masks(canonical[s : s + chunk], R)
            prefilter[s : s + chunk] = pack_masks(np.stack([nearest_torch_legacy(m, r, r) for m in full]))
    crop_bytes = np.zeros(n * crop_side * crop_side * 4, np.uint8)
    for s in range(0, n, chunk):
        small = np.stack([nearest_floor_f64(m, crop_side, crop_side) for m in unpack_masks(canonical[s : s + chunk], R)])
        crops = np.repeat(small[..., None], 4, axis=3).astype(np.uint8) * 200  # grey RGB, A = 200 inside
        crop_bytes[s * crop_side * crop_side * 4 : (s + len(small)) * crop_side * crop_side * 4] = crops.ravel()
    segment_id = np.arange(n, dtype=np.int64) if segment_id is None else np.asarray(segment_id, np.int64)
    image_id = [f"img{i:06d}" for i in range(n)] if image_id is None else list(image_id)
    bbox_area = np.asarray(bbox_area, np.int64)
    side = np.maximum(1, np.sqrt(bbox_area)).astype(np.int32)
    wd = WorkDir(work)
    table = pa.table({
        "segment_id": segment_id,
        "image_id": pa.array(image_id, pa.string()),
        "split": pa.array([split] * n, pa.string()),
        "class_id": np.asarray(class_id, np.int32),
        "is_thing": np.zeros(n, bool),
        "bbox_y0": np.zeros(n, np.int32),
        "bbox_x0": np.zeros(n, np.int32),
        "bbox_h": side,
        "bbox_w": np.maximum(1, bbox_area // side).astype(np.int32),
        "area": bbox_area // 2,
        "bbox_area": bbox_area,
        "canon_area": popcounts(as_words(canonical)).astype(np.int32),
        "crop_offset": np.arange(n, dtype=np.int64) * crop_side * crop_side * 4,
        "crop_h": np.full(n, crop_side, np.int32),
        "crop_w": np.full(n, crop_side, np.int32),
    })
    with atomic_path(wd.segments_table(split)) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(wd.segments_h5(split)) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("canonical", data=canonical)
            f.create_dataset("prefilter", data=prefilter)
            f.create_dataset("crops", data=crop_bytes)
            f.attrs.update(R=R, r=r, crop_max_side=crop_side, dataset="fake", split=split)
    write_manifest(wd.segments, "segments", {"fake": True, "n": int(n)}, counts={split: int(n)})
    return wd.segments

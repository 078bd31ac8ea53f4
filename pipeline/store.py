"""The segment store (`WORK/segments/`, format in docs/segment-store.md): writer and streamed reader.

Workers encode each image's segments (`encode_segments`) and write one *part* per chunk of
images (`write_part`, an HDF5 file moved into place atomically). `merge_parts` streams the parts
of a split, in image order, into the final `{split}.h5`, `{split}.parquet` and
`{split}_images.parquet`, assigning segment ids. `SegmentStore` is the one reader of a finished
split, for every stage and consumer (the index build, the bake, the trainer): it never loads a
split into RAM: the packed mask matrices and the flat `crops` bytes are contiguous, uncompressed
HDF5 datasets, served as read-only memmaps, and table columns are read on demand.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import atomic_path
from ..errors import StageError
from ..index.descriptors import R_CANONICAL, R_PREFILTER, nearest_indices, pack_masks, unpack_masks
from ..workdir import WorkDir
from .decompose import Segment

SEGMENT_SCHEMA = pa.schema([
    ("segment_id", pa.int64()), ("image_id", pa.string()), ("split", pa.string()),
    ("class_id", pa.int32()), ("is_thing", pa.bool_()),
    ("bbox_y0", pa.int32()), ("bbox_x0", pa.int32()), ("bbox_h", pa.int32()), ("bbox_w", pa.int32()),
    ("area", pa.int64()), ("bbox_area", pa.int64()), ("canon_area", pa.int32()),
    ("crop_offset", pa.int64()), ("crop_h", pa.int32()), ("crop_w", pa.int32()),
    ("image_h", pa.int32()), ("image_w", pa.int32()),
])
IMAGE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("image_path", pa.string()),
    ("label_path", pa.string()), ("instance_path", pa.string()), ("height", pa.int32()),
    ("width", pa.int32()), ("n_segments", pa.int32()), ("first_segment_row", pa.int64()),
    ("status", pa.string()), ("reason", pa.string()),
])
IMAGE_STR = ("image_id", "image_path", "label_path", "instance_path", "status", "reason")
IMAGE_INT = ("height", "width", "n_segments")
_READ_BLOCK = 65_536  # rows per contiguous read of `SegmentStore.packed_rows`
SEG_COLUMNS = ("class_id", "is_thing", "y0", "x0", "h", "w", "area", "canon_area", "crop_h", "crop_w", "image_row")


@dataclass
class Encoded:
    """The stored form of one image's segments."""

    canonical: np.ndarray   # n×(R·R/8) uint8
    prefilter: np.ndarray   # n×(r·r/8) uint8
    canon_area: np.ndarray  # n int32
    crop_hw: np.ndarray     # n×2 int32
    crops: np.ndarray       # flat uint8, the RGBA crops back to back


def crop_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    if max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


@functools.lru_cache(maxsize=4096)
def _indices(n_in: int, n_out: int) -> np.ndarray:
    return nearest_indices(n_in, n_out)


def _resize_nearest(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """`index.descriptors.resize_mask_nearest` with its index vectors cached (same rule, same result)."""
    return mask[_indices(mask.shape[0], out_h)][:, _indices(mask.shape[1], out_w)]  # 5x faster than 2-D fancy


def rgba_crop(image: np.ndarray, seg: Segment, max_side: int) -> np.ndarray:
    """The segment's bbox crop as RGBA: RGB of image·mask, A = 255 inside the mask; longest side ≤ max_side."""
    rgb = image[seg.y0:seg.y0 + seg.h, seg.x0:seg.x0 + seg.w]
    mask = seg.mask
    ch, cw = crop_size(seg.h, seg.w, max_side)
    if (ch, cw) != (seg.h, seg.w):
        # Resize the unmasked pixels (INTER_AREA) and re-mask, so no black bleeds into the edge.
        rgb = cv2.resize(np.ascontiguousarray(rgb), (cw, ch), interpolation=cv2.INTER_AREA)
        mask = _resize_nearest(mask, ch, cw)
    m = np.ascontiguousarray(mask).view(np.uint8)
    return cv2.merge([cv2.bitwise_and(rgb, rgb, mask=m), m * np.uint8(255)])


def encode_segments(image: np.ndarray, segments: list[Segment], R: int = R_CANONICAL, r: int = R_PREFILTER,
                    crop_max_side: int = 256) -> Encoded:
    n = len(segments)
    canon = np.zeros((n, R, R), bool)
    pre = np.zeros((n, r, r), bool)
    crops, hw = [], np.zeros((n, 2), np.int32)
    for i, seg in enumerate(segments):
        canon[i] = _resize_nearest(seg.mask, R, R)
        pre[i] = _resize_nearest(seg.mask, r, r)
        c = rgba_crop(image, seg, crop_max_side)
        hw[i] = c.shape[:2]
        crops.append(c.ravel())
    return Encoded(pack_masks(canon), pack_masks(pre), canon.sum(axis=(1, 2), dtype=np.int64).astype(np.int32), hw,
                   np.concatenate(crops) if crops else np.zeros(0, np.uint8))


# ---------------------------------------------------------------- parts


def _h5_create(f: h5py.File, name: str, data: np.ndarray) -> None:
    f.create_dataset(name, data=data, track_times=False)


def write_part(path: str | Path, images: list[dict], segments: dict[str, np.ndarray],
               canonical: np.ndarray, prefilter: np.ndarray, crops: np.ndarray, attrs: dict) -> None:
    """One chunk of images with their encoded segments, written atomically.

    Few datasets on purpose (creating one costs milliseconds): the per-segment integers share one
    n×k matrix and the image rows travel as a JSON byte string.
    """
    meta = np.zeros((len(segments["class_id"]), len(SEG_COLUMNS)), np.int64)
    for j, k in enumerate(SEG_COLUMNS):
        meta[:, j] = segments[k]
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            _h5_create(f, "images_json", np.frombuffer(json.dumps(images).encode(), np.uint8))
            _h5_create(f, "segments", meta)
            _h5_create(f, "canonical", canonical)
            _h5_create(f, "prefilter", prefilter)
            _h5_create(f, "crops", crops)


def read_part_meta(path: str | Path) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(attrs, image columns, segment columns) of a part; masks and crops stay on disk."""
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        rows = json.loads(f["images_json"][...].tobytes())
        meta = f["segments"][...]
        crop_bytes = f["crops"].shape[0]
    images = {k: np.array([r[k] for r in rows], dtype=object if k in IMAGE_STR else np.int64)
              for k in IMAGE_STR + IMAGE_INT}
    segs = {k: meta[:, j] for j, k in enumerate(SEG_COLUMNS)}
    segs["crop_bytes"] = crop_bytes
    return attrs, images, segs


# ---------------------------------------------------------------- merge


def merge_parts(parts: list[Path], work: WorkDir, split: str, first_segment_id: int, h5_attrs: dict,
                R: int = R_CANONICAL, r: int = R_PREFILTER, folder: Path | None = None) -> int:
    """Stream the parts of one split (in image order) into the store files, in `folder` (the
    store's staging copy) or the store itself; returns the segment count."""
    metas = [read_part_meta(p) for p in parts]
    n_seg = sum(len(m[2]["class_id"]) for m in metas)
    n_crop = sum(int(m[2]["crop_bytes"]) for m in metas)
    with atomic_path(work.segments_h5(split, folder)) as tmp:
        with h5py.File(tmp, "w", track_order=False) as f:
            for k, v in h5_attrs.items():
                f.attrs[k] = v
            canon = f.create_dataset("canonical", (n_seg, R * R // 8), np.uint8, track_times=False)
            pre = f.create_dataset("prefilter", (n_seg, r * r // 8), np.uint8, track_times=False)
            # Contiguous and uncompressed: a crop is one memmapped byte range (the bake reads crops
            # at random), and the merge is a plain copy. lzf would halve the size but cost a
            # single-threaded recompression here and a chunk decompression per crop read.
            crops = f.create_dataset("crops", (n_crop,), np.uint8, track_times=False)
            row = off = 0
            for p, (_, _, segs) in zip(parts, metas):
                n = len(segs["class_id"])
                with h5py.File(p, "r") as part:
                    canon[row:row + n] = part["canonical"][...]
                    pre[row:row + n] = part["prefilter"][...]
                    nb = int(segs["crop_bytes"])
                    if nb:
                        crops[off:off + nb] = part["crops"][...]
                row += n
                off += int(segs["crop_bytes"])
    _write_tables(metas, work, split, first_segment_id, folder)
    return n_seg


def _write_tables(metas, work: WorkDir, split: str, first_segment_id: int, folder: Path | None) -> None:
    cat = lambda key, group: np.concatenate([m[group][key] for m in metas])  # noqa: E731
    img = {k: cat(k, 1) for k in IMAGE_STR + IMAGE_INT}
    seg = {k: cat(k, 2) for k in SEG_COLUMNS}
    n_img, n_seg = len(img["image_id"]), len(seg["class_id"])
    # Part-local image rows → split-wide rows.
    img_base = np.cumsum([0] + [len(m[1]["image_id"]) for m in metas[:-1]])
    seg_img = np.concatenate([m[2]["image_row"] + b for m, b in zip(metas, img_base)]).astype(np.int64)
    first_row = np.concatenate([[0], np.cumsum(img["n_segments"])[:-1]]).astype(np.int64)
    bbox = np.stack([seg[k] for k in ("y0", "x0", "h", "w")], axis=1).astype(np.int32)
    hw = np.stack([seg["crop_h"], seg["crop_w"]], axis=1).astype(np.int32)
    crop_bytes = hw[:, 0].astype(np.int64) * hw[:, 1] * 4
    table = pa.Table.from_arrays([
        np.arange(first_segment_id, first_segment_id + n_seg, dtype=np.int64),
        pa.array(img["image_id"][seg_img] if n_seg else [], pa.string()),
        pa.array([split] * n_seg, pa.string()),
        seg["class_id"].astype(np.int32), seg["is_thing"].astype(bool),
        bbox[:, 0], bbox[:, 1], bbox[:, 2], bbox[:, 3],
        seg["area"].astype(np.int64), bbox[:, 2].astype(np.int64) * bbox[:, 3],
        seg["canon_area"].astype(np.int32),
        np.concatenate([[0], np.cumsum(crop_bytes)[:-1]]).astype(np.int64) if n_seg else np.zeros(0, np.int64),
        hw[:, 0], hw[:, 1],
        img["height"][seg_img].astype(np.int32), img["width"][seg_img].astype(np.int32),
    ], schema=SEGMENT_SCHEMA)
    images = pa.Table.from_arrays([
        pa.array(img["image_id"], pa.string()), pa.array([split] * n_img, pa.string()),
        pa.array(img["image_path"], pa.string()), pa.array(img["label_path"], pa.string()),
        pa.array(img["instance_path"], pa.string()), img["height"].astype(np.int32), img["width"].astype(np.int32),
        img["n_segments"].astype(np.int32), first_row,
        pa.array(img["status"], pa.string()), pa.array(img["reason"], pa.string()),
    ], schema=IMAGE_SCHEMA)
    for path, t in ((work.segments_table(split, folder), table), (work.images_table(split, folder), images)):
        with atomic_path(path) as tmp:
            pq.write_table(t, tmp)


# ---------------------------------------------------------------- reader


class SegmentStore:
    """Read access to one finished split of `WORK/segments/`.

    `table` is the segment table (pyarrow); `images` the per-image table. Mask rows come as
    bit-packed uint8 matrices (`canonical_packed`, `prefilter_packed`: read-only memmaps of the
    HDF5 file, nothing is read until touched) or unpacked for a row slice (`canonical_masks`).
    `crop(row)` reads one segment's crop. Use as a context manager, or call `close()`.
    """

    def __init__(self, work: str | os.PathLike, split: str):
        wd = WorkDir(work)
        wd.require_segments()
        self.folder = wd.segments
        self.split = split
        self.h5_path = wd.segments_h5(split)
        self.table_path = wd.segments_table(split)
        self.images_path = wd.images_table(split)
        if not self.table_path.exists() or not self.h5_path.exists():
            raise StageError(f"{self.folder}: the segment store has no split {split!r}; run `resail index build "
                             f"{wd.root} --splits …` with it")
        self._h5: h5py.File | None = None

    def __enter__(self) -> "SegmentStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = h5py.File(self.h5_path, "r")
        return self._h5

    @functools.cached_property
    def table(self) -> pa.Table:
        return pq.read_table(self.table_path)

    @functools.cached_property
    def images(self) -> pa.Table:
        return pq.read_table(self.images_path)

    @functools.cached_property
    def schema(self) -> pa.Schema:
        return pq.read_schema(self.table_path)

    def columns(self, names: list[str]) -> pa.Table:
        """Only these columns of the segment table (an index build needs five of seventeen)."""
        return pq.read_table(self.table_path, columns=names)

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 65536):
        """Stream the segment table in record batches (for splits too large to hold as a table)."""
        yield from pq.ParquetFile(self.table_path).iter_batches(batch_size=batch_size, columns=columns)

    def __len__(self) -> int:
        return pq.ParquetFile(self.table_path).metadata.num_rows

    @property
    def R(self) -> int:
        return int(self.h5.attrs["R"])

    @property
    def r(self) -> int:
        return int(self.h5.attrs["r"])

    def _packed(self, name: str) -> np.ndarray:
        """A contiguous dataset as a read-only memmap (nothing is read until touched)."""
        ds = self.h5[name]
        offset = ds.id.get_offset()
        if offset is None or ds.chunks is not None or ds.shape[0] == 0:
            return ds  # empty or chunked: h5py reads slices on demand
        return np.memmap(self.h5_path, dtype=np.uint8, mode="r", offset=offset, shape=ds.shape)

    def canonical_packed(self) -> np.ndarray:
        """N×(R·R/8) uint8 bit-packed canonical masks (memmap)."""
        return self._packed("canonical")

    def prefilter_packed(self) -> np.ndarray:
        """N×(r·r/8) uint8 bit-packed prefilter masks (memmap)."""
        return self._packed("prefilter")

    def packed_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows (any order, no repeats) of the packed mask matrix `name` ("canonical", "prefilter").

        Dense runs are read as slices (one contiguous read of ≤ 65,536 rows); sparse ones (a class
        whose rows are scattered over the store) as point selections, so a class never costs a read
        of the whole file.
        """
        rows = np.asarray(rows, dtype=np.int64)
        ds = self.h5[name]
        out = np.empty((rows.size, ds.shape[1]), dtype=ds.dtype)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        start = 0
        while start < sorted_rows.size:
            lo = sorted_rows[start]
            stop = int(np.searchsorted(sorted_rows, lo + _READ_BLOCK, side="left"))
            span = int(sorted_rows[stop - 1] - lo + 1)
            if (stop - start) * 8 >= span:
                out[order[start:stop]] = ds[lo : lo + span][sorted_rows[start:stop] - lo]
            else:
                out[order[start:stop]] = ds[sorted_rows[start:stop]]
            start = stop
        return out

    def canonical_masks(self, rows: slice) -> np.ndarray:
        return unpack_masks(self.h5["canonical"][rows], self.R)

    def prefilter_masks(self, rows: slice) -> np.ndarray:
        return unpack_masks(self.h5["prefilter"][rows], self.r)

    @functools.cached_property
    def _crops(self) -> np.ndarray:
        return self._packed("crops")

    @functools.cached_property
    def _crop_index(self) -> np.ndarray:
        cols = self.table.select(["crop_offset", "crop_h", "crop_w"])
        return np.stack([c.to_numpy() for c in cols.columns], axis=1).astype(np.int64)

    def crop(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB h×w×3 uint8, mask h×w bool) of the segment at `row` (crop size, not bbox size)."""
        off, h, w = (int(v) for v in self._crop_index[row])
        rgba = np.asarray(self._crops[off:off + h * w * 4]).reshape(h, w, 4)
        return rgba[..., :3], rgba[..., 3] > 0

"""The segment store (`WORK/segments/`, format in docs/segment-store.md): writer and streamed reader.

Workers encode each image's segments (`encode_segments`) and write one *part* per chunk of
images (`write_part`, an HDF5 file moved into place atomically). `merge_parts` streams the parts
of a split, in image order, into the final `{split}.h5`, `{split}.parquet` and
`{split}_images.parquet`, assigning segment ids. `SegmentStore` is the one reader of a finished
split, for every stage and consumer (the index build, the bake, the trainer): it never loads a
split into RAM: the packed mask matrices and the flat `crops` bytes are contiguous, uncompressed
HDF5 datasets, served as read-only memmaps, and table columns are read on demand.

Crop codecs (`--crop-codec`, the h5 attribute `crop_codec`; docs/segment-store.md). The crops are
most of a store's bytes, so by default each is stored as one `jpeg` blob: a 4-byte little-endian
length, the mask bit-packed (`np.packbits`, row-major) and zlib-compressed, then the RGB as a JPEG
of quality 95, 4:4:4. The mask is exact; the JPEG holds the masked RGB (black outside, as `raw`
stores it: ~12 % fewer bytes than the unmasked box on real photos), and decoding zeroes the
outside again with the exact mask, so the outside stays black. On real photos that is 0.53 bytes
per crop pixel against 4 for `raw` (benchmarks/crops.py), at a mean absolute error of 1.7 levels
inside the mask (max 29), for a JPEG decode per `crop(row)`; `crop_mask(row)` decodes the mask
alone. `raw` keeps the lossless RGBA bytes of the stores written before the codecs (A = 255
inside the mask). Every crop is one byte range of the flat `crops` dataset either way
(`crop_offset`, `crop_nbytes`); a store written before the codecs has neither the attribute nor
`crop_nbytes` and reads as `raw`, which is what it holds.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import atomic_path
from ..choices import CROP_CODECS
from ..common import nearest_floor_f64, nearest_torch_legacy
from ..errors import StageError
from ..index.descriptors import R_CANONICAL, R_PREFILTER, pack_masks, unpack_masks
from ..workdir import WorkDir
from .decompose import Segment

SEGMENT_SCHEMA = pa.schema([
    ("segment_id", pa.int64()), ("image_id", pa.string()), ("split", pa.string()),
    ("class_id", pa.int32()), ("is_thing", pa.bool_()),
    ("bbox_y0", pa.int32()), ("bbox_x0", pa.int32()), ("bbox_h", pa.int32()), ("bbox_w", pa.int32()),
    ("area", pa.int64()), ("bbox_area", pa.int64()), ("canon_area", pa.int32()),
    ("crop_offset", pa.int64()), ("crop_nbytes", pa.int32()), ("crop_h", pa.int32()), ("crop_w", pa.int32()),
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
SEG_COLUMNS = ("class_id", "is_thing", "y0", "x0", "h", "w", "area", "canon_area", "crop_h", "crop_w",
               "crop_nbytes", "image_row")
JPEG_QUALITY = 95
# 4:4:4 chroma: 4:2:0 would average the black outside into the segment's edge pixels (errors up to
# ~100 grey levels there on real photos, 2.2 mean) for 22 % fewer bytes; 4:4:4 keeps the edge
# (max ~30, mean ~1.5-1.7). Huffman optimisation would save ~9 % more but triple the encode time.
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
               cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
_MASK_LEN = np.dtype("<u4")  # the jpeg blob's header: byte length of the compressed mask that follows


@dataclass
class Encoded:
    """The stored form of one image's segments."""

    canonical: np.ndarray   # n×(R·R/8) uint8
    prefilter: np.ndarray   # n×(r·r/8) uint8
    canon_area: np.ndarray  # n int32
    crop_hw: np.ndarray     # n×2 int32
    crop_nbytes: np.ndarray  # n int32, the byte length of each encoded crop
    crops: np.ndarray       # flat uint8, the encoded crops back to back


def crop_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    if max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def crop_pixels(image: np.ndarray, seg: Segment, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The segment's bbox crop (RGB, unmasked) and its mask; longest side ≤ max_side."""
    rgb = image[seg.y0:seg.y0 + seg.h, seg.x0:seg.x0 + seg.w]
    mask = seg.mask
    ch, cw = crop_size(seg.h, seg.w, max_side)
    if (ch, cw) != (seg.h, seg.w):
        # Resize the unmasked pixels (INTER_AREA) and re-mask, so no black bleeds into the edge.
        rgb = cv2.resize(np.ascontiguousarray(rgb), (cw, ch), interpolation=cv2.INTER_AREA)
        mask = nearest_floor_f64(mask, ch, cw)
    return rgb, np.ascontiguousarray(mask)


def rgba_crop(image: np.ndarray, seg: Segment, max_side: int) -> np.ndarray:
    """The segment's bbox crop as RGBA: RGB of image·mask, A = 255 inside the mask; longest side ≤ max_side."""
    rgb, mask = crop_pixels(image, seg, max_side)
    return encode_crop(rgb, mask, "raw").reshape(*mask.shape, 4)


def encode_crop(rgb: np.ndarray, mask: np.ndarray, codec: str) -> np.ndarray:
    """One crop (h×w×3 RGB, h×w bool mask) as its stored bytes (flat uint8) in `codec`."""
    m = np.ascontiguousarray(mask).view(np.uint8)
    masked = cv2.bitwise_and(rgb, rgb, mask=m)
    if codec == "raw":
        return cv2.merge([masked, m * np.uint8(255)]).ravel()
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(masked, cv2.COLOR_RGB2BGR), JPEG_PARAMS)
    if not ok:
        raise StageError(f"could not encode a {rgb.shape} crop as JPEG")
    bits = zlib.compress(np.packbits(mask).tobytes(), 6)
    return np.concatenate([np.frombuffer(np.array(len(bits), _MASK_LEN).tobytes() + bits, np.uint8), jpeg.ravel()])


def _jpeg_start(blob: np.ndarray) -> int:
    """Where the JPEG of a `jpeg` blob starts (after the length header and the compressed mask)."""
    return _MASK_LEN.itemsize + int(np.frombuffer(blob[:_MASK_LEN.itemsize].tobytes(), _MASK_LEN)[0])


def decode_mask(blob: np.ndarray, h: int, w: int, codec: str) -> np.ndarray:
    """The h×w bool mask of a stored crop (no JPEG decoded)."""
    if codec == "raw":
        return np.asarray(blob).reshape(h, w, 4)[..., 3] > 0
    bits = np.frombuffer(zlib.decompress(blob[_MASK_LEN.itemsize:_jpeg_start(blob)].tobytes()), np.uint8)
    return np.unpackbits(bits, count=h * w).reshape(h, w).view(bool)


def decode_crop(blob: np.ndarray, h: int, w: int, codec: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB h×w×3 uint8, mask h×w bool) of a stored crop; RGB is black outside the mask."""
    if codec == "raw":
        rgba = np.asarray(blob).reshape(h, w, 4)
        return rgba[..., :3], rgba[..., 3] > 0
    mask = decode_mask(blob, h, w, codec)
    bgr = cv2.imdecode(np.asarray(blob[_jpeg_start(blob):]), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[:2] != (h, w):
        raise StageError(f"a stored {h}x{w} JPEG crop does not decode; rebuild the store with `resail index build "
                         "--rebuild`")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.bitwise_and(rgb, rgb, mask=mask.view(np.uint8)), mask


def encode_segments(image: np.ndarray, segments: list[Segment], R: int = R_CANONICAL, r: int = R_PREFILTER,
                    crop_max_side: int = 256, crop_codec: str = "jpeg") -> Encoded:
    n = len(segments)
    canon = np.zeros((n, R, R), bool)
    pre = np.zeros((n, r, r), bool)
    crops, hw = [], np.zeros((n, 2), np.int32)
    for i, seg in enumerate(segments):
        canon[i] = nearest_torch_legacy(seg.mask, R, R)  # = index.descriptors.descriptors, unpacked
        pre[i] = nearest_torch_legacy(seg.mask, r, r)
        rgb, mask = crop_pixels(image, seg, crop_max_side)
        hw[i] = mask.shape
        crops.append(encode_crop(rgb, mask, crop_codec))
    return Encoded(pack_masks(canon), pack_masks(pre), canon.sum(axis=(1, 2), dtype=np.int64).astype(np.int32), hw,
                   np.array([c.size for c in crops], np.int32),
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
    crop_bytes = seg["crop_nbytes"].astype(np.int64)
    table = pa.Table.from_arrays([
        np.arange(first_segment_id, first_segment_id + n_seg, dtype=np.int64),
        pa.array(img["image_id"][seg_img] if n_seg else [], pa.string()),
        pa.array([split] * n_seg, pa.string()),
        seg["class_id"].astype(np.int32), seg["is_thing"].astype(bool),
        bbox[:, 0], bbox[:, 1], bbox[:, 2], bbox[:, 3],
        seg["area"].astype(np.int64), bbox[:, 2].astype(np.int64) * bbox[:, 3],
        seg["canon_area"].astype(np.int32),
        np.concatenate([[0], np.cumsum(crop_bytes)[:-1]]).astype(np.int64) if n_seg else np.zeros(0, np.int64),
        crop_bytes.astype(np.int32), hw[:, 0], hw[:, 1],
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

    It reads one version of the store, whatever is published while it is open: the version
    `work` is bound to (a `WorkDir.snapshot()`), else the current one, pinned until `close()`.
    """

    def __init__(self, work: str | os.PathLike, split: str):
        wd = WorkDir(work)
        self._snapshot = None if wd.pins("segments") else wd.snapshot()
        wd = self._snapshot or wd
        try:
            wd.require_segments()
        except BaseException:
            self.close()
            raise
        self.work = wd
        self.folder = wd.folder("segments")
        self.split = split
        self.h5_path = wd.segments_h5(split)
        self.table_path = wd.segments_table(split)
        self.images_path = wd.images_table(split)
        self._h5: h5py.File | None = None
        if not self.table_path.exists() or not self.h5_path.exists():
            self.close()
            raise StageError(f"{wd.segments}: the segment store has no split {split!r}; run `resail index build "
                             f"{wd.root} --splits …` with it")

    def __enter__(self) -> "SegmentStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_h5", None) is not None:
            self._h5.close()
            self._h5 = None
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

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
    def crop_codec(self) -> str:
        """How the crops are stored: `jpeg` or `raw` (a store without the attribute predates codecs: raw)."""
        codec = self.h5.attrs.get("crop_codec", "raw")
        codec = codec.decode() if isinstance(codec, bytes) else str(codec)
        if codec not in CROP_CODECS:
            raise StageError(f"{self.h5_path}: unknown crop codec {codec!r} (written by a newer resail?); rebuild the "
                             "store with `resail index build --rebuild`")
        return codec

    @functools.cached_property
    def _crops(self) -> np.ndarray:
        return self._packed("crops")

    @functools.cached_property
    def _crop_index(self) -> np.ndarray:
        """N×4 int64: offset, byte length, h, w of every crop (the length computed for a pre-codec store)."""
        names = ["crop_offset", "crop_h", "crop_w"]
        has_nbytes = "crop_nbytes" in self.schema.names
        cols = self.columns(names + ["crop_nbytes"] if has_nbytes else names)
        off, h, w = (cols[c].to_numpy().astype(np.int64) for c in names)
        nbytes = cols["crop_nbytes"].to_numpy().astype(np.int64) if has_nbytes else h * w * 4
        return np.stack([off, nbytes, h, w], axis=1)

    def _blob(self, row: int) -> tuple[np.ndarray, int, int]:
        off, n, h, w = (int(v) for v in self._crop_index[row])
        return self._crops[off:off + n], h, w

    def crop(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB h×w×3 uint8, mask h×w bool) of the segment at `row` (crop size, not bbox size);
        RGB is black outside the mask. With `raw` both are read-only views of the store."""
        blob, h, w = self._blob(row)
        return decode_crop(blob, h, w, self.crop_codec)

    def crop_mask(self, row: int) -> np.ndarray:
        """The h×w bool mask of `crop(row)` alone (no JPEG decoded: what the segment maps need)."""
        blob, h, w = self._blob(row)
        return decode_mask(blob, h, w, self.crop_codec)

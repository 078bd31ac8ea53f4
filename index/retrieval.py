"""The built retrieval index of a work directory, as searches load it: `RetrievalIndex`.

What `index build` (index/build.py) writes and every search reads: the retrieval columns of the
train split, read through the segment store's one reader (`pipeline.store.SegmentStore`, the only
thing index/ takes from pipeline/); the shard layout (one class's segments in size order, its
order hash in the manifest); and the shards themselves, loaded lazily one class at a time and
checked against the manifest as they load. `RetrievalIndex` opens an index only through
`WorkDir.require_index`, which checks the chain index ← segment store, so a stale index is an
error that says to rebuild, never a silent mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..choices import FAISS_DEVICES
from ..common import short_hash
from ..errors import ConfigError, StageError
from ..pipeline.store import SegmentStore
from ..workdir import WorkDir
from .score import as_words, popcounts
from .shards import ShardParams, gpu_available, read_shard, shard_path, to_gpu

REBUILD_HINT = "rerun `resail index build` with --rebuild"
_COLUMNS = ["segment_id", "image_id", "class_id", "bbox_area", "canon_area"]


# ------------------------------------------------------------------ segment store access


@dataclass
class StoreTable:
    """The columns of one split's segment table that retrieval needs, row order = h5 row order."""

    work: WorkDir  # the store's version when bound (a snapshot), else the current one
    split: str
    segment_id: np.ndarray  # int64
    image_code: np.ndarray  # int64, index into image_names
    image_names: np.ndarray  # str, one per distinct image
    class_id: np.ndarray  # int64
    bbox_area: np.ndarray  # int64
    canon_area: np.ndarray | None  # int64, or None when the store lacks the column
    R: int
    r: int
    _image_lookup: dict = field(default=None, repr=False)

    def image_code_of(self, image_id: str) -> int:
        if self._image_lookup is None:
            self._image_lookup = {name: i for i, name in enumerate(self.image_names.tolist())}
        return self._image_lookup.get(image_id, -1)

    def store(self) -> SegmentStore:
        return SegmentStore(self.work, self.split)


def read_store_table(work: Path | WorkDir, split: str = "train") -> StoreTable:
    """The retrieval columns of a split, read through the segment store's reader."""
    work = WorkDir(work)
    with SegmentStore(work, split) as store:
        if "bbox_area" not in store.schema.names:
            raise StageError(f"{store.table_path} has no bbox_area column; rebuild the segment store")
        table = store.columns([c for c in _COLUMNS if c in store.schema.names])
        R, r, n_h5 = store.R, store.r, store.canonical_packed().shape[0]
    if n_h5 != table.num_rows:
        raise StageError(f"{store.h5_path} holds {n_h5} masks but {store.table_path} {table.num_rows} rows; "
                         "rebuild the segment store")
    images = table.column("image_id").combine_chunks().dictionary_encode()
    return StoreTable(
        work=work,
        split=split,
        segment_id=table.column("segment_id").to_numpy().astype(np.int64),
        image_code=images.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        image_names=np.asarray(images.dictionary.to_pylist(), dtype=object),
        class_id=table.column("class_id").to_numpy().astype(np.int64),
        bbox_area=table.column("bbox_area").to_numpy().astype(np.int64),
        canon_area=table.column("canon_area").to_numpy().astype(np.int64) if "canon_area" in table.column_names
        else None,
        R=R,
        r=r,
    )


def size_order(bbox_area: np.ndarray, segment_id: np.ndarray) -> np.ndarray:
    """Row order of a shard: by bbox area, then segment id."""
    return np.lexsort((segment_id, bbox_area))


def order_hash(segment_ids: np.ndarray) -> str:
    return short_hash(np.ascontiguousarray(segment_ids, dtype=np.int64).tobytes())


# ------------------------------------------------------------------ the loaded shards


@dataclass
class Window:
    """A size-window sub-shard: FAISS labels are rows start.. of the class shard."""

    start: int
    stop: int
    index: object
    params: ShardParams


@dataclass
class Shard:
    """One class's training segments in size order, with its FAISS index and rerank arrays."""

    class_id: int
    index: object  # faiss.IndexBinary (CPU or GPU)
    params: ShardParams
    segment_id: np.ndarray  # N int64, size order
    image_code: np.ndarray  # N int64
    bbox_area: np.ndarray  # N int64, ascending
    canon_area: np.ndarray  # N int64
    canonical: np.ndarray  # N×W uint64 packed canonical masks
    codes: np.ndarray | None = None  # N×(r·r/8) uint8 prefilter rows of a flat shard (for band slices)
    windows: dict[int, Window] = field(default_factory=dict)  # size windows of an IVF shard, by octave
    on_gpu: bool = False
    _id_sort: np.ndarray | None = field(default=None, repr=False)
    _image_sort: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.segment_id.size)

    def rows_of_segments(self, segment_ids: np.ndarray) -> np.ndarray:
        """Shard row of each segment id, -1 where the segment is not in this shard."""
        segment_ids = np.asarray(segment_ids, dtype=np.int64)
        if self._id_sort is None:
            self._id_sort = np.argsort(self.segment_id, kind="stable")
        sorted_ids = self.segment_id[self._id_sort]
        pos = np.searchsorted(sorted_ids, segment_ids).clip(0, self.n - 1)
        return np.where(sorted_ids[pos] == segment_ids, self._id_sort[pos], -1)

    def rows_of_image(self, image_code: int) -> np.ndarray:
        """Shard rows whose segment comes from the given image."""
        if image_code < 0:
            return np.empty(0, np.int64)
        if self._image_sort is None:
            self._image_sort = np.argsort(self.image_code, kind="stable")
        codes = self.image_code[self._image_sort]
        lo, hi = np.searchsorted(codes, image_code, "left"), np.searchsorted(codes, image_code, "right")
        return self._image_sort[lo:hi]

    def band(self, bbox_area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row range [lo, hi) of the size band of each query: 2·b_t > b_s and 2·b_s > b_t."""
        b = np.asarray(bbox_area, dtype=np.int64)
        lo = np.searchsorted(self.bbox_area, b // 2, side="right")  # b_t > b_s / 2
        hi = np.searchsorted(self.bbox_area, 2 * b, side="left")  # b_t < 2·b_s
        return lo.astype(np.int64), hi.astype(np.int64)


class RetrievalIndex:
    """The built index of a work directory. Shards load lazily, one class at a time, and each is
    checked against the manifest (row count, kind, bits, size-order hash) as it loads."""

    def __init__(self, work: Path | WorkDir, *, device: str = "cpu"):
        wd = WorkDir(work)
        # One version of the index and of its store, pinned while this object lives (shards load lazily).
        self.work = wd if wd.pins("index") else wd.snapshot(index=True)
        self.folder = self.work.folder("index")
        manifest = self.work.require_index()  # the chain: index ← segment store, every file as written
        self.manifest = manifest
        self.R = int(manifest["params"]["R"])
        self.r = int(manifest["params"]["r"])
        self.table = read_store_table(self.work)
        if (self.table.R, self.table.r) != (self.R, self.r):
            raise StageError(f"{self.folder}: index built at R={self.R}, r={self.r} but the store has "
                             f"R={self.table.R}, r={self.table.r}; {REBUILD_HINT}")
        self.device = device
        self._gpu = None
        if device not in FAISS_DEVICES:
            raise ConfigError("device", f"FAISS device {device!r}: choose one of {', '.join(FAISS_DEVICES)}")
        if device == "cuda":
            if not gpu_available():
                raise StageError("FAISS on cuda needs faiss-gpu and a visible GPU; install faiss-gpu or use the cpu")
            import faiss

            self._gpu = faiss.StandardGpuResources()
        self._shards: dict[int, Shard] = {}

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in self.manifest["shards"])

    def has_class(self, class_id: int) -> bool:
        return str(int(class_id)) in self.manifest["shards"]

    def shard(self, class_id: int) -> Shard:
        class_id = int(class_id)
        if class_id not in self._shards:
            self._shards[class_id] = self._load(class_id)
        return self._shards[class_id]

    def release(self, class_id: int) -> None:
        """Drop a loaded shard (its canonical masks, 2 KB per training segment, are the bulk of a
        loaded index); a later `shard(class_id)` loads it again."""
        self._shards.pop(int(class_id), None)

    def _load(self, class_id: int) -> Shard:
        entry = self.manifest["shards"].get(str(class_id))
        if entry is None:
            raise KeyError(class_id)
        path = shard_path(self.folder, class_id)
        if not path.exists():
            raise StageError(f"{path}: shard listed in the manifest is missing; {REBUILD_HINT}")
        index = read_shard(path, n_expected=entry["n"], d_expected=self.r * self.r, kind=entry["kind"])
        t = self.table
        rows = np.flatnonzero(t.class_id == class_id)
        rows = rows[size_order(t.bbox_area[rows], t.segment_id[rows])]
        if rows.size != entry["n"] or order_hash(t.segment_id[rows]) != entry["order_hash"]:
            raise StageError(f"{path}: shard does not match the segment store's class {class_id} rows; {REBUILD_HINT}")
        with t.store() as store:
            canonical = as_words(store.packed_rows("canonical", rows))
        canon_area = t.canon_area[rows] if t.canon_area is not None else popcounts(canonical)
        windows = {
            int(j): Window(w["start"], w["stop"],
                           read_shard(shard_path(self.folder, class_id, int(j)), n_expected=w["n"],
                                      d_expected=self.r * self.r, kind=w["kind"]),
                           ShardParams(w["kind"], w.get("nlist", 0), w.get("nprobe", 0)))
            for j, w in entry.get("windows", {}).items()
        }
        codes = _flat_codes(index) if entry["kind"] == "flat" else None
        on_gpu = False
        if self._gpu is not None and entry["kind"] == "flat":
            index, on_gpu = to_gpu(index, self._gpu), True
        return Shard(
            class_id=class_id,
            index=index,
            params=ShardParams(entry["kind"], entry.get("nlist", 0), entry.get("nprobe", 0)),
            segment_id=t.segment_id[rows],
            image_code=t.image_code[rows],
            bbox_area=t.bbox_area[rows],
            canon_area=np.ascontiguousarray(canon_area, dtype=np.int64),
            canonical=canonical,
            codes=codes,
            windows=windows,
            on_gpu=on_gpu,
        )


def _flat_codes(index) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)

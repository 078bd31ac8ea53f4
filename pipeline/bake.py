"""`resail guidance bake`: retrieve every segment of a split, compose its guidance images, cache them.

Outputs in `WORK/guidance/`:
- `{split}_matches.parquet`: the long matches table (DESIGN.md contract: segment_id, rank,
  match_id, score), one row per (query, rank); a query with no candidate has no rows;
- `{split}.h5`: `guidance` (N×H×W×3 uint8, one chunk per image) and `image_id` (N strings), at the
  dataset preset's training size;
- `{split}_preview/*.png`: rows of colourised label | guidance | photo;
- `{split}_manifest.json`, written last.

The work is split into parts of `PART_IMAGES` images, each written atomically to
`{split}.parts/`; an interrupted bake resumes from the parts already there, `--shard i/n`
composes only its share of the parts, and the merge checks that every part is present.

`GuidanceComposer` is the per-image composition, shared with `resail synthesize`'s local editing:
`compose(row, overrides)` recomposes one image with another choice for some segments while every
other segment keeps its baked choice.
"""

from __future__ import annotations

import logging
import shutil
import time
import errno
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from joblib import Parallel, delayed
from tqdm import tqdm

from ..errors import InputError, StageError
from ..index.build import RetrievalIndex
from ..index.search import QueryBatch, SearchConfig, search
from ..artifacts import atomic_path, fingerprint, read_manifest, write_bytes_atomic, write_manifest
from .classes import ClassTable
from .compose import MODES, Piece, compose, stretch_crop
from .store import SegmentStore

log = logging.getLogger(__name__)

STAGE = "guidance"
PART_IMAGES = 64
SEARCH_BATCH = 8192
CHOICES = ("top1", "sample")
# Training size (W, H) of each dataset preset (reference §5.4); the toy data uses the ADE20K reader.
PRESET_SIZE = {"ade20k": (256, 256), "ade20k-outdoor": (256, 256), "cityscapes": (512, 256),
               "cocostuff": (256, 256), "folder": (256, 256)}
MATCHES_SCHEMA = pa.schema([("segment_id", pa.int64()), ("rank", pa.int16()),
                            ("match_id", pa.int64()), ("score", pa.float32())])


@dataclass(frozen=True)
class BakeConfig:
    work: Path
    split: str
    k: int = 10
    choose: str = "top1"
    seed: int = 0
    compose_mode: str = "clean"
    size: tuple[int, int] | None = None  # (W, H); None = the dataset preset's training size
    k_prefilter: int = 256
    max_score: float | None = None
    exclude_same_image: bool = False
    jobs: int = 1
    shard: tuple[int, int] | None = None  # (i, n): compose only parts i::n, then stop before merging
    n_preview: int = 6
    rebuild: bool = False

    def __post_init__(self):
        if self.split not in ("train", "val"):
            raise InputError(f"--split {self.split!r}: choose train or val")
        if not 1 <= self.k <= self.k_prefilter:
            raise InputError(f"--k {self.k}: must be between 1 and the prefilter size {self.k_prefilter}")
        if self.choose not in CHOICES:
            raise InputError(f"--choose {self.choose!r}: choose one of {', '.join(CHOICES)}")
        if self.compose_mode not in MODES:
            raise InputError(f"--compose {self.compose_mode!r}: choose one of {', '.join(MODES)}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise InputError(f"--shard {self.shard[0]}/{self.shard[1]}: need 0 ≤ i < n")

    def search_params(self) -> dict:
        return {"k": self.k, "k_prefilter": self.k_prefilter, "max_score": self.max_score,
                "exclude_same_image": self.exclude_same_image}

    def compose_params(self, size: tuple[int, int]) -> dict:
        return {"choose": self.choose, "seed": self.seed, "compose_mode": self.compose_mode,
                "size": list(size)}


# ---------------------------------------------------------------- retrieval


def _inputs_key(work: Path) -> dict:
    seg = read_manifest(work / "segments")
    idx = read_manifest(work / "index")
    if seg is None:
        raise StageError(f"{work / 'segments'}: no segment store; run `resail index build` first")
    if idx is None:
        raise StageError(f"{work / 'index'}: no retrieval index; run `resail index build` first")
    return {"segments": seg.get("fingerprint"), "index": idx.get("fingerprint"),
            "dataset": seg.get("params", {}).get("dataset")}


def retrieve_split(work: Path, split: str, cfg: BakeConfig, progress: bool = False) -> pa.Table:
    """Top-k training matches of every segment of `split`, as the long matches table."""
    index = RetrievalIndex(work)
    search_cfg = SearchConfig(k=cfg.k, k_prefilter=cfg.k_prefilter, max_score=cfg.max_score,
                              exclude_same_image=cfg.exclude_same_image)
    with SegmentStore(work, split) as store:
        t = store.table
        class_id = t["class_id"].to_numpy()
        bbox_area = t["bbox_area"].to_numpy()
        segment_id = t["segment_id"].to_numpy()
        image_id = np.asarray(t["image_id"].to_pylist(), dtype=object)
        canonical, prefilter = store.canonical_packed(), store.prefilter_packed()
        out = {"segment_id": [], "rank": [], "match_id": [], "score": []}
        bar = tqdm(total=len(t), desc=f"retrieve {split}", unit="seg", disable=not progress)
        for a in range(0, len(t), SEARCH_BATCH):
            b = min(a + SEARCH_BATCH, len(t))
            q = QueryBatch(class_id[a:b], np.asarray(canonical[a:b]), np.asarray(prefilter[a:b]),
                           bbox_area[a:b], segment_id[a:b], image_id[a:b])
            res = search(index, q, search_cfg)
            qi, rank = np.nonzero(res.segment_id >= 0)
            out["segment_id"].append(segment_id[a:b][qi])
            out["rank"].append(rank.astype(np.int16))
            out["match_id"].append(res.segment_id[qi, rank])
            out["score"].append(res.score[qi, rank].astype(np.float32))
            bar.update(b - a)
        bar.close()
    cols = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in MATCHES_SCHEMA], schema=MATCHES_SCHEMA)


def dense_matches(matches: pa.Table, segment_id: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The long matches table as Q×k arrays (match id −1 / score nan = none), rows = `segment_id` order."""
    ids = np.full((len(segment_id), k), -1, np.int64)
    scores = np.full((len(segment_id), k), np.nan, np.float32)
    q = np.searchsorted(segment_id, matches["segment_id"].to_numpy())
    rank = matches["rank"].to_numpy().astype(np.int64)
    ids[q, rank] = matches["match_id"].to_numpy()
    scores[q, rank] = matches["score"].to_numpy()
    return ids, scores


def _uniform(seed: int, keys: np.ndarray) -> np.ndarray:
    """A reproducible U[0, 1) per key (splitmix64 of seed and key): independent of order and sharding."""
    with np.errstate(over="ignore"):
        z = (np.asarray(keys, np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def choose_ranks(ids: np.ndarray, segment_id: np.ndarray, choose: str, seed: int) -> np.ndarray:
    """The rank used for each query: 0 (`top1`) or uniform among its available matches (`sample`); −1 = none."""
    available = (ids >= 0).sum(axis=1)
    if choose == "top1":
        return np.where(available > 0, 0, -1)
    u = _uniform(seed, segment_id)
    return np.where(available > 0, np.minimum((u * available).astype(np.int64), available - 1), -1)


# ---------------------------------------------------------------- composition


def retrieved_pieces(train: SegmentStore, train_segment_id: np.ndarray, boxes, matches) -> list[Piece]:
    """One piece per query with a match (train segment id ≥ 0): its crop stretched to the query box."""
    pieces = []
    for i, match in enumerate(matches):
        if match < 0:
            continue
        train_row = int(np.searchsorted(train_segment_id, match))
        if train_row >= len(train_segment_id) or train_segment_id[train_row] != match:
            raise InputError(f"segment {match} is not a training segment of {train.folder.parent}")
        y0, x0, y1, x1 = boxes[i]
        rgb, mask = train.crop(train_row)
        rgb_s, mask_s = stretch_crop(np.dstack([rgb, mask.astype(np.uint8) * 255]), y1 - y0, x1 - x0)
        pieces.append(Piece(i, y0, x0, rgb_s, mask_s))
    return pieces


def target_boxes(bbox: np.ndarray, image_hw: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Source-pixel boxes (y0, x0, h, w) → (y0, x0, y1, x1) at the target size (W, H), at least 1 px."""
    W, H = size
    sy, sx = H / image_hw[0], W / image_hw[1]
    boxes = []
    for y0, x0, h, w in bbox:
        ty0, tx0 = int(round(y0 * sy)), int(round(x0 * sx))
        ty1, tx1 = max(ty0 + 1, int(round((y0 + h) * sy))), max(tx0 + 1, int(round((x0 + w) * sx)))
        boxes.append((min(ty0, H - 1), min(tx0, W - 1), min(ty1, H), min(tx1, W)))
    return boxes


def paint_segment_map(size: tuple[int, int], boxes, masks, is_thing, area) -> np.ndarray:
    """H×W map of segment index (−1 none) from bbox-cropped masks resized (nearest) into their
    target boxes. Stuff first, then things, larger before smaller: small things win shared pixels."""
    W, H = size
    seg_map = np.full((H, W), -1, np.int32)
    order = sorted(range(len(boxes)), key=lambda i: (bool(is_thing[i]), -int(area[i])))
    for i in order:
        y0, x0, y1, x1 = boxes[i]
        m = cv2.resize(masks(i).astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST) > 0
        seg_map[y0:y1, x0:x1][m] = i
    return seg_map


@dataclass
class GuidanceComposer:
    """Composes the guidance of any image of a split from the stores and a matches table."""

    work: Path
    split: str
    size: tuple[int, int]  # (W, H)
    mode: str = "clean"
    ids: np.ndarray = field(default=None, repr=False)     # Q×k match ids, rows = split table rows
    chosen: np.ndarray = field(default=None, repr=False)  # Q chosen rank (−1 = none)

    def __post_init__(self):
        self.store = SegmentStore(self.work, self.split)
        self.train = self.store if self.split == "train" else SegmentStore(self.work, "train")
        t = self.store.table
        self.segment_id = t["segment_id"].to_numpy()
        self.class_id = t["class_id"].to_numpy()
        self.is_thing = t["is_thing"].to_numpy(zero_copy_only=False)
        self.bbox = np.stack([t[c].to_numpy() for c in ("bbox_y0", "bbox_x0", "bbox_h", "bbox_w")], 1)
        self.area = t["area"].to_numpy()
        im = self.store.images
        self.image_id = im["image_id"].to_pylist()
        self.image_hw = np.stack([im["height"].to_numpy(), im["width"].to_numpy()], 1)
        self.first_row = im["first_segment_row"].to_numpy()
        self.n_segments = im["n_segments"].to_numpy()
        self.status = im["status"].to_pylist()
        self.image_path = im["image_path"].to_pylist()
        self.train_segment_id = self.train.table["segment_id"].to_numpy()

    def close(self) -> None:
        self.store.close()
        if self.train is not self.store:
            self.train.close()

    def ok_images(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.status) == "ok")

    def segment_map(self, image_row: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
        """Query segments of an image at the target size: (H×W map of local index, rows, boxes)."""
        a = int(self.first_row[image_row])
        rows = np.arange(a, a + int(self.n_segments[image_row]))
        boxes = target_boxes(self.bbox[rows], tuple(self.image_hw[image_row]), self.size)
        seg_map = paint_segment_map(self.size, boxes, lambda i: self.store.crop(int(rows[i]))[1],
                                    self.is_thing[rows], self.area[rows])
        return seg_map, rows, boxes

    def compose(self, image_row: int, overrides: dict[int, int] | None = None) -> np.ndarray:
        """Guidance of one image (H×W×3 uint8). `overrides` maps segment ids to the train segment
        id to paste there instead of the baked choice (−1: leave it black)."""
        seg_map, rows, boxes = self.segment_map(image_row)
        overrides = overrides or {}
        matches = []
        for row in rows:
            sid = int(self.segment_id[row])
            rank = int(self.chosen[row])
            matches.append(int(overrides[sid]) if sid in overrides else int(self.ids[row, rank]) if rank >= 0 else -1)
        pieces = retrieved_pieces(self.train, self.train_segment_id, boxes, matches)
        return compose(seg_map, self.is_thing[rows], pieces, self.mode)

    def photo(self, image_row: int) -> np.ndarray:
        """The real image at the target size (H×W×3 uint8)."""
        from .datasets import read_rgb

        W, H = self.size
        return cv2.resize(read_rgb(self.image_path[image_row]), (W, H), interpolation=cv2.INTER_AREA)

    def color_reference(self, row: int, rng: np.random.Generator | float, color_ref: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rgb, mask) crop of the colour reference of segment `row`: a random entry among its top-k
        matches (`topk`, the official behaviour) or among all training segments of its class
        (`class`). `rng` may be a generator or one uniform draw in [0, 1)."""
        train_row = self._reference_row(row, rng, color_ref)
        return None if train_row < 0 else self.train.crop(train_row)

    def color_reference_stats(self, row: int, u: float, color_ref: str):
        """LabStats of the reference `color_reference(row, u, color_ref)` returns, or None; cached
        per training segment (the same references come back again and again over epochs) in a
        zero-initialised table whose pages the OS commits only as they are touched."""
        from .distort import LabStats, lab_stats

        train_row = self._reference_row(row, u, color_ref)
        if train_row < 0:
            return None
        if not hasattr(self, "_ref_stats"):
            self._ref_stats = np.zeros((len(self.train_segment_id), 6))
            self._ref_known = np.zeros(len(self.train_segment_id), bool)
        stats = self._ref_stats[train_row]
        if not self._ref_known[train_row]:
            stats[:3], stats[3:] = lab_stats(*self.train.crop(train_row))
            self._ref_known[train_row] = True
        return LabStats(stats[:3], stats[3:])

    def _reference_row(self, row: int, rng: np.random.Generator | float, color_ref: str) -> int:
        """Training-store row of the colour reference of segment `row`, −1 when it has none."""
        if color_ref == "topk":
            cands = self.ids[row][self.ids[row] >= 0]
        else:
            cands = self._train_rows_of_class(int(self.class_id[row]))
        if not len(cands):
            return -1
        u = rng.random() if isinstance(rng, np.random.Generator) else float(rng)
        pick = int(cands[min(int(u * len(cands)), len(cands) - 1)])
        return int(np.searchsorted(self.train_segment_id, pick)) if color_ref == "topk" else pick

    def _train_rows_of_class(self, class_id: int) -> np.ndarray:
        if not hasattr(self, "_class_rows"):
            cls = self.train.table["class_id"].to_numpy()
            order = np.argsort(cls, kind="stable")
            bounds = np.searchsorted(cls[order], np.unique(cls), side="left").tolist() + [len(cls)]
            self._class_rows = {int(c): order[a:b] for c, a, b in zip(np.unique(cls), bounds[:-1], bounds[1:])}
        return self._class_rows.get(class_id, np.zeros(0, np.int64))

    def distorted_gt(self, image_row: int, rng: np.random.Generator, distort_cfg=None,
                     color_ref: str = "topk", photo: np.ndarray | None = None) -> np.ndarray:
        """Distorted ground truth of one image (H×W×3 uint8): its own segments after colour,
        resolution and shape distortion (method §4), composed with the same rules as the guidance.
        Segments without a colour reference are still distorted in resolution and shape.
        Deterministic for the state of `rng`: all segments' distortion draws, then one draw per
        segment for its colour reference."""
        from .distort import RESOLUTION_MARGIN, DistortConfig, distort_segment, draw_segments

        distort_cfg = distort_cfg or DistortConfig()
        photo = self.photo(image_row) if photo is None else photo
        seg_map, rows, boxes = self.segment_map(image_row)
        H, W = seg_map.shape
        draws = draw_segments(rng, distort_cfg, len(rows))
        u_ref = rng.random(len(rows)).tolist()
        reach = distort_cfg.shift_range * distort_cfg.shift_scale
        pieces = []
        for i, row in enumerate(rows.tolist()):
            # Distort inside a window around the query box, not the whole canvas: the cost then
            # follows the segment's size. The margin holds the resolution blur and twice the
            # largest control-point shift, so content lost past it is negligible.
            y0, x0, y1, x1 = boxes[i]
            pad = RESOLUTION_MARGIN + int(np.ceil(2 * reach * np.sqrt((y1 - y0) * (x1 - x0)))) + 2
            wy0, wx0, wy1, wx1 = max(0, y0 - pad), max(0, x0 - pad), min(H, y1 + pad), min(W, x1 + pad)
            mask = seg_map[wy0:wy1, wx0:wx1] == i
            ref = self.color_reference_stats(row, u_ref[i], color_ref) if draws[i].color else None
            content, warped = distort_segment(photo[wy0:wy1, wx0:wx1], mask, ref, None, distort_cfg, draws=draws[i])
            pieces.append(Piece(i, wy0, wx0, content, warped))
        return compose(seg_map, self.is_thing[rows], pieces, self.mode)

    def label_preview(self, image_row: int, table: ClassTable) -> np.ndarray:
        seg_map, rows, _ = self.segment_map(image_row)
        lut = table.palette(65536)
        classes = np.append(self.class_id[rows], 0)  # index −1 → void colour
        return lut[classes[seg_map]]


class LabelMapGuidance:
    """Retrieval guidance for a label map that is not in the store (a user's own), with per-segment
    choice: `compose()` pastes each segment's chosen match; `resample(ids, seed)` draws other
    matches for some segments only, every other segment keeping its choice (local editing)."""

    def __init__(self, work: Path, label_map: np.ndarray, instance_map: np.ndarray | None = None, *,
                 size: tuple[int, int], k: int = 10, k_prefilter: int = 256, max_score: float | None = None,
                 mode: str = "clean", preserved_ratio: float = 0.9, where: str = "label map",
                 index: RetrievalIndex | None = None):
        from ..index.query import decompose_label_map, query_segments

        self.work, self.size, self.mode = Path(work), tuple(size), mode
        index = index or RetrievalIndex(self.work)  # a server passes its own, loaded once
        self.segments = decompose_label_map(self.work, label_map, instance_map, preserved_ratio, where)
        if not self.segments:
            raise InputError(f"{where}: no segment to synthesise (only void pixels?)")
        res = query_segments(index, self.segments, SearchConfig(k=k, k_prefilter=k_prefilter, max_score=max_score))
        self.ids, self.scores, self.reason = res.segment_id, res.score, res.reason
        self.chosen = np.where((self.ids >= 0).any(axis=1), 0, -1)
        self.train = SegmentStore(self.work, "train")
        self.train_segment_id = self.train.table["segment_id"].to_numpy()
        segs = self.segments
        self.is_thing = np.array([s.is_thing for s in segs], bool)
        self.class_id = np.array([s.class_id for s in segs], np.int64)
        self.boxes = target_boxes(np.array([[s.y0, s.x0, s.h, s.w] for s in segs]), label_map.shape, self.size)
        self.segment_map = paint_segment_map(self.size, self.boxes, lambda i: segs[i].mask, self.is_thing,
                                             [s.area for s in segs])

    def close(self) -> None:
        self.train.close()

    def resample(self, segments: list[int] | np.ndarray, seed: int) -> None:
        """Draw another match, uniformly among the rest of the top-k, for the given segment indices
        only (a segment with a single candidate keeps it)."""
        segments = np.asarray(segments, np.int64)
        if segments.size and (segments.min() < 0 or segments.max() >= len(self.segments)):
            raise InputError(f"segment index out of range 0..{len(self.segments) - 1}: {segments.tolist()}")
        # A new match whenever the segment has another one: draw among the other candidates.
        available = (self.ids[segments] >= 0).sum(axis=1)
        current = self.chosen[segments]
        others = np.maximum(available - 1, 1)
        r = np.minimum((_uniform(seed, segments) * others).astype(np.int64), others - 1)
        r = np.where((available > 1) & (r >= current), r + 1, r)
        self.chosen[segments] = np.where(available > 0, r, -1)

    def matches(self) -> list[int]:
        return [int(self.ids[i, r]) if r >= 0 else -1 for i, r in enumerate(self.chosen)]

    def compose(self) -> np.ndarray:
        """The guidance image (H×W×3 uint8) with the current choice of every segment."""
        pieces = retrieved_pieces(self.train, self.train_segment_id, self.boxes, self.matches())
        return compose(self.segment_map, self.is_thing, pieces, self.mode)

    def label_map_at_size(self) -> np.ndarray:
        """The label map at the target size (native ids, void 0), consistent with the guidance."""
        return np.append(self.class_id, 0)[self.segment_map]


def _open_composer(cfg: BakeConfig, size: tuple[int, int]) -> GuidanceComposer:
    matches = pq.read_table(cfg.work / "guidance" / f"{cfg.split}_matches.parquet")
    comp = GuidanceComposer(cfg.work, cfg.split, size, cfg.compose_mode)
    comp.ids, _ = dense_matches(matches, comp.segment_id, cfg.k)
    comp.chosen = choose_ranks(comp.ids, comp.segment_id, cfg.choose, cfg.seed)
    return comp


def load_composer(work: Path, split: str, *, size: tuple[int, int] | None = None,
                  choose: str | None = None, seed: int | None = None) -> GuidanceComposer:
    """A composer over a baked split, with the bake's matches, choice rule, mode and size
    (each overridable). Needs `resail guidance bake WORK --split SPLIT` to have run."""
    work = Path(work)
    m = read_manifest(work / "guidance", f"{split}_manifest.json")
    if m is None:
        raise StageError(f"{work / 'guidance'}: split {split!r} is not baked; run `resail guidance bake {work} "
                         f"--split {split}` first")
    p = m["params"]
    cfg = BakeConfig(work, split, k=p["k"], k_prefilter=p["k_prefilter"], choose=choose or p["choose"],
                     seed=p["seed"] if seed is None else seed, compose_mode=p["compose_mode"])
    return _open_composer(cfg, tuple(size or p["size"]))


def preview_distort(work: Path, out: Path, *, n: int = 8, seed: int = 0, color_ref: str = "topk",
                    size: tuple[int, int] | None = None) -> Path:
    """A PNG grid, one row per training image: real | distorted ground truth | retrieval guidance."""
    comp = load_composer(work, "train", size=size)
    try:
        rng = np.random.default_rng(seed)
        rows = []
        for image_row in comp.ok_images()[:n]:
            photo = comp.photo(int(image_row))
            rows.append(np.concatenate([photo, comp.distorted_gt(int(image_row), rng, color_ref=color_ref, photo=photo),
                                        comp.compose(int(image_row))], axis=1))
    finally:
        comp.close()
    if not rows:
        raise StageError(f"{work}: the train split has no image to preview")
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    write_bytes_atomic(out, png.tobytes())
    return Path(out)


def _bake_part(cfg: BakeConfig, size: tuple[int, int], image_rows: np.ndarray, path: Path, key: str) -> int:
    comp = _open_composer(cfg, size)
    try:
        W, H = size
        images = np.zeros((len(image_rows), H, W, 3), np.uint8)
        for j, row in enumerate(image_rows):
            images[j] = comp.compose(int(row))
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("guidance", data=images)
                f.create_dataset("image_row", data=np.asarray(image_rows, np.int64))
                f.attrs["key"] = key
        return len(image_rows)
    finally:
        comp.close()


# ---------------------------------------------------------------- the stage


def bake(cfg: BakeConfig, *, progress: bool = False) -> dict:
    """Run the bake stage for one split; returns its manifest (or the existing one when up to date)."""
    work = Path(cfg.work)
    inputs = _inputs_key(work)
    SegmentStore(work, cfg.split).close()  # a clear error when the split is absent
    size = cfg.size or PRESET_SIZE.get(inputs["dataset"] or "", (256, 256))
    out_dir = work / "guidance"
    manifest_name = f"{cfg.split}_manifest.json"
    params = {"split": cfg.split, **cfg.search_params(), **cfg.compose_params(size), "inputs": inputs}
    done = read_manifest(out_dir, manifest_name)
    if done is not None and done.get("fingerprint") == fingerprint({"stage": STAGE, "params": params}) \
            and not cfg.rebuild:
        log.info("guidance %s is up to date: %s", cfg.split, out_dir)
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.perf_counter()
    matches_path = out_dir / f"{cfg.split}_matches.parquet"
    search_key = fingerprint({"search": cfg.search_params(), "inputs": inputs})
    if cfg.rebuild or not _matches_current(matches_path, search_key):
        table = retrieve_split(work, cfg.split, cfg, progress)
        table = table.replace_schema_metadata({"resail_key": search_key})
        with atomic_path(matches_path) as tmp:
            pq.write_table(table, tmp)
    timings["retrieve_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    key = fingerprint(params)
    parts_dir = out_dir / f"{cfg.split}.parts"
    if cfg.rebuild and parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(exist_ok=True)
    with SegmentStore(work, cfg.split) as store:
        status = np.asarray(store.images["status"].to_pylist())
    ok_rows = np.flatnonzero(status == "ok")
    parts = [(a, min(a + PART_IMAGES, len(ok_rows))) for a in range(0, len(ok_rows), PART_IMAGES)]
    mine = parts if cfg.shard is None else parts[cfg.shard[0]::cfg.shard[1]]
    todo = [(a, b) for a, b in mine if not _part_current(_part_path(parts_dir, a, b), key)]
    if todo:
        bar = tqdm(total=sum(b - a for a, b in todo), desc=f"compose {cfg.split}", unit="img",
                   disable=not progress)
        runner = Parallel(n_jobs=cfg.jobs, return_as="generator_unordered") if cfg.jobs != 1 else None
        calls = [delayed(_bake_part)(cfg, size, ok_rows[a:b], _part_path(parts_dir, a, b), key) for a, b in todo]
        for n in (runner(calls) if runner else (c[0](*c[1], **c[2]) for c in calls)):
            bar.update(n)
        bar.close()
    timings["compose_s"] = round(time.perf_counter() - t0, 3)
    if cfg.shard is not None:
        return {"stage": STAGE, "shard": list(cfg.shard), "parts": len(mine), "complete": False}

    missing = [p for p in parts if not _part_current(_part_path(parts_dir, *p), key)]
    if missing:
        raise StageError(f"{parts_dir}: {len(missing)} of {len(parts)} parts are missing; run the missing "
                         "--shard jobs (or bake without --shard) before merging")
    t0 = time.perf_counter()
    try:
        _merge(parts_dir, parts, out_dir / f"{cfg.split}.h5", size, ok_rows, cfg)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise StageError(f"{out_dir / (cfg.split + '.h5')}: disk full while writing the guidance cache; free "
                         "space and rerun (the previous cache, if any, is intact)") from e
    timings["merge_s"] = round(time.perf_counter() - t0, 3)
    previews = write_previews(cfg, size, ok_rows[:cfg.n_preview], inputs["dataset"])
    shutil.rmtree(parts_dir)
    counts = _match_counts(matches_path)
    return write_manifest(out_dir, STAGE, params, name=manifest_name, images=int(len(ok_rows)),
                          previews=len(previews), timings=timings, **counts)


def _matches_current(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    meta = pq.read_schema(path).metadata or {}
    return meta.get(b"resail_key", b"").decode() == key


def _part_path(parts_dir: Path, a: int, b: int) -> Path:
    return parts_dir / f"part-{a:08d}-{b:08d}.h5"


def _part_current(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("key") == key
    except OSError:
        return False


def _merge(parts_dir: Path, parts, out: Path, size, ok_rows, cfg: BakeConfig) -> None:
    W, H = size
    with SegmentStore(cfg.work, cfg.split) as store:
        all_ids = store.images["image_id"].to_pylist()
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("guidance", shape=(len(ok_rows), H, W, 3), dtype=np.uint8,
                              chunks=(1, H, W, 3) if len(ok_rows) else None)
        f.create_dataset("image_id", data=np.asarray([all_ids[r] for r in ok_rows], dtype=object),
                         dtype=h5py.string_dtype())
        for a, b in parts:
            with h5py.File(_part_path(parts_dir, a, b), "r") as p:
                ds[a:b] = p["guidance"][...]
        f.attrs.update({"width": W, "height": H, "compose_mode": cfg.compose_mode, "choose": cfg.choose,
                        "seed": cfg.seed, "k": cfg.k, "split": cfg.split})


def _match_counts(path: Path) -> dict:
    t = pq.read_table(path, columns=["segment_id", "rank"])
    return {"matched_segments": int((t["rank"].to_numpy() == 0).sum()), "match_rows": t.num_rows}


def write_previews(cfg: BakeConfig, size, image_rows, dataset: str | None) -> list[Path]:
    """A few PNG rows (colourised label | guidance | real photo) for a person to judge at a glance."""
    from .classes import class_table
    from .datasets import read_rgb

    if not len(image_rows):
        return []
    table = class_table(dataset if dataset in ("ade20k", "ade20k-outdoor", "cityscapes", "cocostuff") else "ade20k")
    out_dir = cfg.work / "guidance" / f"{cfg.split}_preview"
    out_dir.mkdir(exist_ok=True)
    comp = _open_composer(cfg, size)
    written = []
    try:
        W, H = size
        for row in image_rows:
            photo = cv2.resize(read_rgb(comp.image_path[row]), (W, H), interpolation=cv2.INTER_AREA)
            strip = np.concatenate([comp.label_preview(int(row), table), comp.compose(int(row)), photo], axis=1)
            path = out_dir / f"{comp.image_id[row]}.png"
            ok, png = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
            write_bytes_atomic(path, png.tobytes())
            written.append(path)
    finally:
        comp.close()
    return written


def open_guidance(work: Path, split: str) -> h5py.File:
    """The baked guidance cache of a split (read-only), or a clear error naming the missing stage."""
    path = Path(work) / "guidance" / f"{split}.h5"
    if read_manifest(path.parent, f"{split}_manifest.json") is None or not path.exists():
        raise StageError(f"{path}: no baked guidance for split {split!r}; run `resail guidance bake {work} --split {split}`")
    return h5py.File(path, "r")


"""Composition-level guidance: retrieved and distorted segments pasted into one image per label map.

Three consumers, one set of rules (README.md, "Guidance composition"):
- the bake stage (`bake.py`) composes the guidance of every image of a split with
  `GuidanceComposer` and caches it;
- the training data (`synth/data.py`) opens that cache (`open_guidance`) and builds the distorted
  ground truth of an image with the same composer (`open_composer`, `distorted_gt`);
- synthesis and serving compose the guidance of a user's own label map (`LabelMapGuidance`),
  segment by segment, so one segment's match can change while the others keep theirs.

Seeds: every random choice of a match is a pure function of (seed, key) (`_uniform`), so it never
depends on order, sharding or what was drawn before. The bake keys its draws by segment id
(`choose_ranks`); a user's label map by segment index, and its n-th redraw (resample, variant)
after a start with seed S uses seed S + n (`redraw_seed`), the one rule `resail synthesize` and
`resail serve` share.

Everything here takes explicit parameters (work directory, split, size, mode, the matches) rather
than a stage config, and imports neither FAISS nor joblib: the training data loader imports this
module in every worker. Retrieval for a new label map goes through the index, which the caller
loads once: `query_label_map` (decompose + search) imports the query module only when called,
and `LabelMapGuidance` receives its result, never the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import write_png_atomic
from ..common import nearest_cv2, read_rgb
from ..errors import InputError, StageError
from ..workdir import WorkDir
from .color_transfer import LabStats, lab_stats
from .compose import Piece, compose, stretch_crop
from .decompose import DecompositionRules, Segment, thing_lut
from .distort import DistortConfig, SegmentSource, distort_segments
from .store import SegmentStore

if TYPE_CHECKING:
    from ..index.query import LabelMapMatches
    from ..index.retrieval import RetrievalIndex
    from ..index.search import SearchConfig, SearchResult

SEED_MAX = 2**32 - 1  # seeds of the match draws (`_uniform`) and of numpy: 0..2³²−1


# ---------------------------------------------------------------- matches → one choice per segment


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


def redraw_seed(seed: int | None, draw: int) -> int:
    """The seed of the `draw`-th redraw (1, 2, …) of a label map started with `seed` (None: 0)."""
    return (seed or 0) + draw


def choose_ranks(ids: np.ndarray, segment_id: np.ndarray, choose: str, seed: int) -> np.ndarray:
    """The rank used for each query: 0 (`top1`) or uniform among its available matches (`sample`); −1 = none."""
    available = (ids >= 0).sum(axis=1)
    if choose == "top1":
        return np.where(available > 0, 0, -1)
    u = _uniform(seed, segment_id)
    return np.where(available > 0, np.minimum((u * available).astype(np.int64), available - 1), -1)


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The project's photo resize: OpenCV INTER_AREA (area averaging when shrinking), size = (W, H)."""
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


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
    """H×W map of segment index (−1 none) from bbox-cropped bool masks resized (cv2's nearest) into
    their target boxes. Stuff first, then things, larger before smaller: small things win shared pixels."""
    W, H = size
    seg_map = np.full((H, W), -1, np.int32)
    order = sorted(range(len(boxes)), key=lambda i: (bool(is_thing[i]), -int(area[i])))
    for i in order:
        y0, x0, y1, x1 = boxes[i]
        m = nearest_cv2(masks(i), y1 - y0, x1 - x0)
        seg_map[y0:y1, x0:x1][m] = i
    return seg_map


@dataclass
class GuidanceComposer:
    """Composes the guidance of any image of a split from the stores and a matches table. It
    reads one version of the store: `work`'s when it is a snapshot, else the current one, pinned
    until `close()`."""

    work: Path | WorkDir
    split: str
    size: tuple[int, int]  # (W, H)
    mode: str = "clean"
    ids: np.ndarray = field(default=None, repr=False)     # Q×k match ids, rows = split table rows
    chosen: np.ndarray = field(default=None, repr=False)  # Q chosen rank (−1 = none)

    def __post_init__(self):
        wd = WorkDir(self.work)
        self._snapshot = None if wd.pins("segments") else wd.snapshot()  # one version for both stores
        self.work = self._snapshot or wd
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
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

    def ok_images(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.status) == "ok")

    def segment_map(self, image_row: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]]]:
        """Query segments of an image at the target size: (H×W map of local index, rows, boxes)."""
        a = int(self.first_row[image_row])
        rows = np.arange(a, a + int(self.n_segments[image_row]))
        boxes = target_boxes(self.bbox[rows], tuple(self.image_hw[image_row]), self.size)
        seg_map = paint_segment_map(self.size, boxes, lambda i: self.store.crop_mask(int(rows[i])),
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
        W, H = self.size
        return cv2.resize(read_rgb(self.image_path[image_row]), (W, H), interpolation=cv2.INTER_AREA)

    def color_reference(self, row: int, rng: np.random.Generator | float,
                        color_ref: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rgb, mask) crop of the colour reference of segment `row`: a random entry among its top-k
        matches (`topk`, the official behaviour) or among all training segments of its class
        (`class`). `rng` may be a generator or one uniform draw in [0, 1)."""
        train_row = self._reference_row(row, rng, color_ref)
        return None if train_row < 0 else self.train.crop(train_row)

    def color_reference_stats(self, row: int, u: float, color_ref: str) -> LabStats | None:
        """LabStats of the reference `color_reference(row, u, color_ref)` returns, or None; cached
        per training segment (the same references come back again and again over epochs) in a
        zero-initialised table whose pages the OS commits only as they are touched."""
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

    def original(self, image_row: int, image: np.ndarray | None = None) -> np.ndarray:
        """The photo at the segment store's resolution (that of its bounding boxes): `image` as read
        (the file when None), shrunk with INTER_AREA as the store's `max_side` did if it differs."""
        image = read_rgb(self.image_path[image_row]) if image is None else image
        h, w = (int(v) for v in self.image_hw[image_row])
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return image

    def distorted_gt(self, image_row: int, rng: np.random.Generator, distort_cfg: DistortConfig | None = None,
                     color_ref: str = "topk", image: np.ndarray | None = None,
                     crop: tuple[int, int, int, int] | None = None, resize=None) -> np.ndarray:
        """Distorted ground truth of one image, in the official order (docs/method.md §4.4): its own
        segments colour- and resolution-distorted at the original resolution, resized to the
        target size with the photo's `resize(image, (W, H))` (default INTER_AREA), cropped to
        `crop` = (y0, x0, h, w) of the target canvas (default: all of it), TPS-warped on the crop
        and composed there with the same rules as the guidance: h×w×3 uint8. `image` is the photo
        as read (the file when None). Segments without a colour reference are still distorted in
        resolution and shape. Deterministic for the state of `rng`."""
        image = self.original(image_row, image)
        seg_map, rows, boxes = self.segment_map(image_row)
        W, H = self.size
        oy, ox, h, w = crop or (0, 0, H, W)
        seg_map = seg_map[oy:oy + h, ox:ox + w]
        sources = [self.segment_source(int(row), box) for row, box in zip(rows, boxes)]
        pieces = distort_segments(image, sources, seg_map, rng, distort_cfg or DistortConfig(),
                                  lambda i, u: self.color_reference_stats(int(rows[i]), u, color_ref),
                                  canvas=self.size, origin=(oy, ox), resize=resize or resize_area)
        return compose(seg_map, self.is_thing[rows], pieces, self.mode)

    def segment_source(self, row: int, box: tuple[int, int, int, int]) -> SegmentSource:
        """Segment `row`'s mask on its bounding box at the store's resolution, and its target box."""
        y0, x0, h, w = (int(v) for v in self.bbox[row])
        mask = self.store.crop_mask(row)
        if mask.shape != (h, w):  # a stored crop is capped at crop_max_side: back to the box, nearest
            mask = nearest_cv2(mask, h, w)
        return SegmentSource(y0, x0, mask, box)

    def label_preview(self, image_row: int, palette: np.ndarray) -> np.ndarray:
        """The image's segments at the target size, coloured by class with `palette` (id → RGB)."""
        seg_map, rows, _ = self.segment_map(image_row)
        classes = np.append(self.class_id[rows], 0)  # index −1 → void colour
        return palette[classes[seg_map]]


def open_composer(work: Path | WorkDir, split: str, *, size: tuple[int, int] | None = None, mode: str | None = None,
                  k: int | None = None, choose: str | None = None, seed: int | None = None,
                  matches: Path | None = None) -> GuidanceComposer:
    """A composer over `split` with the top-k of a matches table and one chosen rank per segment.

    What is left None is the bake's: its size (W, H), composition mode, k, choice rule, seed and
    matches table, all of one snapshot (`work`'s, or one it takes and closes with the composer),
    which needs `resail guidance bake WORK --split SPLIT` to have run. A caller that gives every
    parameter and the `matches` table's path (the bake itself, on its staging copy) reads no bake."""
    given = {"size": size, "mode": mode, "k": k, "choose": choose, "seed": seed}
    if matches is not None and None not in given.values():
        return _open_composer(work, split, matches, **given)
    wd = WorkDir(work)
    snap = None if wd.pins(f"guidance-{split}") else wd.snapshot(guidance=(split,))
    try:
        p = (snap or wd).require_guidance(split)["params"]
        baked = {"size": p["size"], "mode": p["compose_mode"], "k": p["k"], "choose": p["choose"], "seed": p["seed"]}
        chosen = {n: baked[n] if v is None else v for n, v in given.items()}
        comp = _open_composer(snap or wd, split, matches, **chosen)
    except BaseException:
        if snap is not None:
            snap.close()
        raise
    if snap is not None:
        comp._snapshot = snap  # closed with the composer
    return comp


def _open_composer(work: Path | WorkDir, split: str, matches: Path | None, *, size: tuple[int, int], mode: str,
                   k: int, choose: str, seed: int) -> GuidanceComposer:
    comp = GuidanceComposer(work, split, tuple(size), mode)
    try:
        table = pq.read_table(matches or comp.work.matches_table(split))
    except BaseException:
        comp.close()
        raise
    comp.ids, _ = dense_matches(table, comp.segment_id, k)
    comp.chosen = choose_ranks(comp.ids, comp.segment_id, choose, seed)
    return comp


def open_guidance(work: Path | WorkDir, split: str) -> h5py.File:
    """The baked guidance cache of a split (read-only), or a clear error naming the missing stage.
    The file is the one of `work`'s snapshot, or of the current bake: an open file outlives its version."""
    with WorkDir(work).snapshot(guidance=(split,)) as wd:
        wd.require_guidance(split)
        return h5py.File(wd.guidance_h5(split), "r")


def preview_distort(work: Path, out: Path, *, n: int = 8, seed: int = 0, color_ref: str = "topk",
                    size: tuple[int, int] | None = None) -> Path:
    """A PNG grid, one row per training image: real | distorted ground truth | retrieval guidance."""
    comp = open_composer(work, "train", size=size)
    try:
        rng = np.random.default_rng(seed)
        rows = []
        for image_row in comp.ok_images()[:n]:
            photo = comp.photo(int(image_row))
            rows.append(np.concatenate([photo, comp.distorted_gt(int(image_row), rng, color_ref=color_ref),
                                        comp.compose(int(image_row))], axis=1))
    finally:
        comp.close()
    if not rows:
        raise StageError(f"{work}: the train split has no image to preview")
    return write_png_atomic(out, np.concatenate(rows, axis=0))


# ---------------------------------------------------------------- a user's own label map


def decompose_label_map(work: Path, label_map: np.ndarray, instance_map: np.ndarray | None = None,
                        where: str = "label map") -> tuple[np.ndarray, list[Segment]]:
    """(the label map as decomposed, its segments): a native-id label map (and optional
    instance-id map, 0 = none, each instance's class its majority label) decomposed with the work
    dir's class table and the rules its segment store was built with (`DecompositionRules`)."""
    manifest = WorkDir(work).require_segments()
    classes = manifest["classes"]
    lut = thing_lut([c for c, t in zip(classes["ids"], classes["is_thing"]) if t])
    _, label_map, _, segments = DecompositionRules.of(manifest["params"]).apply(label_map, instance_map, None, lut,
                                                                                 where=where)
    return label_map, segments


def query_label_map(index: RetrievalIndex, label_map: np.ndarray, instance_map: np.ndarray | None = None,
                    cfg: SearchConfig | None = None, *, where: str = "label map") -> LabelMapMatches:
    """Decompose a label map as the store was decomposed and retrieve the top-k training segments
    of each segment from `index` (loaded once by the caller)."""
    from ..index.query import LabelMapMatches, query_segments  # FAISS: only where retrieval runs
    from ..index.search import SearchConfig

    decomposed, segments = decompose_label_map(index.work, label_map, instance_map, where)
    return LabelMapMatches(segments, query_segments(index, segments, cfg or SearchConfig()), decomposed.shape[:2])


class LabelMapGuidance:
    """Retrieval guidance for a label map that is not in the store (a user's own), with per-segment
    choice: `compose()` pastes each segment's chosen match; `redraw(ids)` draws other matches for
    some segments only, every other segment keeping its choice (local editing).

    It receives the label map's decomposed `segments` and their search `result` (see
    `query_label_map`); `label_hw` is the label map's (H, W), `size` the target (W, H). Without a
    `seed` every segment starts on its best match; with one, every segment starts on a match drawn
    with that seed among its other candidates (`resample`)."""

    def __init__(self, work: Path | WorkDir, segments: list[Segment], result: SearchResult,
                 label_hw: tuple[int, int], *, size: tuple[int, int], mode: str = "clean", seed: int | None = None,
                 where: str = "label map"):
        if not segments:
            raise InputError(f"{where}: no segment to synthesise (only void pixels?)")
        self.work, self.size, self.mode = WorkDir(work), tuple(size), mode  # the index's snapshot, when given
        self.segments = segments
        self.ids, self.scores, self.reason = result.segment_id, result.score, result.reason
        self.chosen = np.where((self.ids >= 0).any(axis=1), 0, -1)
        self.train = SegmentStore(self.work, "train")
        self.train_segment_id = self.train.table["segment_id"].to_numpy()
        self.is_thing = np.array([s.is_thing for s in segments], bool)
        self.class_id = np.array([s.class_id for s in segments], np.int64)
        self.boxes = target_boxes(np.array([[s.y0, s.x0, s.h, s.w] for s in segments]), tuple(label_hw[:2]),
                                  self.size)
        self.segment_map = paint_segment_map(self.size, self.boxes, lambda i: segments[i].mask, self.is_thing,
                                             [s.area for s in segments])
        self.seed, self.draws = seed, 0  # draws: redraws so far, which number the next one's seed
        if seed is not None:
            self.resample(np.arange(len(segments)), seed)

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

    def redraw(self, segments: list[int] | np.ndarray, seed: int | None = None) -> None:
        """`resample` the given segments as the label map's next redraw: with seed
        `redraw_seed(self.seed, n)` for the n-th, unless `seed` is given (it still counts as one)."""
        self.draws += 1
        self.resample(segments, redraw_seed(self.seed, self.draws) if seed is None else seed)

    def matches(self) -> list[int]:
        return [int(self.ids[i, r]) if r >= 0 else -1 for i, r in enumerate(self.chosen)]

    def compose(self) -> np.ndarray:
        """The guidance image (H×W×3 uint8) with the current choice of every segment."""
        pieces = retrieved_pieces(self.train, self.train_segment_id, self.boxes, self.matches())
        return compose(self.segment_map, self.is_thing, pieces, self.mode)

    def label_map_at_size(self) -> np.ndarray:
        """The label map at the target size (native ids, void 0), consistent with the guidance."""
        return np.append(self.class_id, 0)[self.segment_map]

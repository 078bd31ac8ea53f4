"""`resail guidance bake`: retrieve every segment of a split, compose its guidance images, cache them.

Outputs in `WORK/guidance/`:
- `{split}_matches.parquet`: the long matches table (docs/design.md contract: segment_id, rank,
  match_id, score), one row per (query, rank); a query with no candidate has no rows;
- `{split}.h5`: `guidance` (N×H×W×3 uint8, one gzip-compressed chunk per image) and `image_id` (N
  strings), at the dataset preset's training size;
- `{split}_preview/*.png`: rows of colourised label | guidance | photo;
- `{split}_manifest.json`, written last.

The retrieval runs once per split, batched over the whole split. The composition runs through
the stage runner (`runner.py`): parts of `PART_IMAGES` images (fewer for large sizes, so a part
holds at most `PART_BYTES`), each written atomically to `{split}.new/parts/`, sharded by `--shard
I/N` over contiguous image ranges and merged by `--merge` (or by a run without either flag) once
every shard has finished. The composition itself — the rules, the choice of match per segment —
lives in `guidance.py`, which the trainer shares.

Lineage and replacement. The manifest records the fingerprints of the segment store and index
the bake read (`upstream`) and the size and mtime of the matches table and the cache. A bake is
up to date when its parameters, its upstream and its files all still hold; a changed parameter
asks for `--rebuild`; a rebuilt store or index, or a damaged file, bakes again. The lifecycle is
lifecycle.py's (`WorkDir.stage`): everything is written in `guidance/{split}.new/`, sealed as
`guidance/{split}@N` once its manifest is written there, and published by switching the link
`guidance/{split}`, so a killed or failed bake leaves the previous one usable and a reader sees
one whole bake. The bake reads one snapshot of the store and index (its workers too), so an
`index build` publishing meanwhile cannot mix two stores into one bake. One process bakes a split
at a time (`WORK/locks/guidance-{split}.lock`, shared by the jobs of a sharded bake).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ..artifacts import atomic_path, ensure_free_space, fingerprint, write_manifest, write_png_atomic
from ..choices import CHOOSE, COMPOSE_MODES, SPLITS
from ..errors import ConfigError
from ..index.retrieval import RetrievalIndex
from ..index.search import QueryBatch, SearchConfig, check_k, search
from ..lifecycle import Stage
from ..workdir import WorkDir
from .guidance import SEED_MAX, GuidanceComposer, open_composer
from .labels.classes import palette_lut
from .runner import Parts, check_shard, run_job
from .store import SegmentStore

log = logging.getLogger(__name__)

STAGE = "guidance"
PART_IMAGES = 64
PART_BYTES = 2**28  # a part's images stay in memory until written: at most 256 MiB (64 images up to ~1k×1k)
SEARCH_BATCH = 8192
# Training size (W, H) of each dataset preset (docs/method.md §5.4); the toy data uses the ADE20K reader.
PRESET_SIZE = {"ade20k": (256, 256), "ade20k-outdoor": (256, 256), "cityscapes": (512, 256),
               "cocostuff": (256, 256), "folder": (256, 256)}
# The guidance cache, lossless: gzip level 1 on one chunk per image. Measured on a 300-image
# ADE20K-like bake (benchmarks/scale.py's data, 256×256): 1.90× smaller (lzf 1.49×, gzip 4 1.92×),
# 9 ms per image to write, 2.8 ms to read one image at random (lzf 2.2, none 0.2) — nothing
# beside the trainer's distorted ground truth (~80 ms per image). On real photos at 256×256 the
# ratio is 1.25× (lzf 1.11×). No shuffle filter: it reorders the bytes of multi-byte elements and
# does nothing to uint8.
GUIDANCE_COMPRESSION = {"compression": "gzip", "compression_opts": 1}
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
    shard: tuple[int, int] | None = None  # (i, n): compose only shard i of n (runner.py)
    merge: bool = False                   # merge once every shard has finished (alone: merge only)
    n_preview: int = 6
    rebuild: bool = False

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError("split", f"split {self.split!r}: choose one of {', '.join(SPLITS)}")
        check_k(self.k, self.k_prefilter)
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError("seed", f"seed {self.seed}: must be between 0 and {SEED_MAX}")
        if self.choose not in CHOOSE:
            raise ConfigError("choose", f"choose {self.choose!r}: choose one of {', '.join(CHOOSE)}")
        if self.compose_mode not in COMPOSE_MODES:
            raise ConfigError("compose_mode", f"compose_mode {self.compose_mode!r}: choose one of "
                                              f"{', '.join(COMPOSE_MODES)}")
        check_shard(self.shard)

    def search_params(self) -> dict:
        return {"k": self.k, "k_prefilter": self.k_prefilter, "max_score": self.max_score,
                "exclude_same_image": self.exclude_same_image}

    def compose_params(self, size: tuple[int, int]) -> dict:
        return {"choose": self.choose, "seed": self.seed, "compose_mode": self.compose_mode,
                "size": list(size)}


# ---------------------------------------------------------------- retrieval


def retrieve_split(work: Path | WorkDir, split: str, cfg: BakeConfig, progress: bool = False) -> pa.Table:
    """Top-k training matches of every segment of `split`, as the long matches table.

    The queries go class by class, in batches of at most SEARCH_BATCH, and each class's shard is
    released once its queries are done: the process holds one class's canonical masks at a time,
    not the whole train split's (2 KB per training segment, ~5 GB on COCO-Stuff; docs/scale.md).
    A query's matches do not depend on its batch, and the rows come out in segment order."""
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
        ids = np.full((len(t), cfg.k), -1, np.int64)
        scores = np.zeros((len(t), cfg.k), np.float32)
        order = np.argsort(class_id, kind="stable")
        starts = np.flatnonzero(np.diff(class_id[order], prepend=-1)).tolist() + [len(t)]
        bar = tqdm(total=len(t), desc=f"retrieve {split}", unit="seg", disable=not progress)
        for lo, hi in zip(starts[:-1], starts[1:]):
            for a in range(lo, hi, SEARCH_BATCH):
                rows = order[a:min(a + SEARCH_BATCH, hi)]
                q = QueryBatch(class_id[rows], np.asarray(canonical[rows]), np.asarray(prefilter[rows]),
                               bbox_area[rows], segment_id[rows], image_id[rows])
                res = search(index, q, search_cfg)
                ids[rows], scores[rows] = res.segment_id, res.score
                bar.update(len(rows))
            index.release(class_id[order[lo]])
        bar.close()
    qi, rank = np.nonzero(ids >= 0)
    cols = {"segment_id": segment_id[qi], "rank": rank.astype(np.int16), "match_id": ids[qi, rank],
            "score": scores[qi, rank]}
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) for f in MATCHES_SCHEMA], schema=MATCHES_SCHEMA)


# ---------------------------------------------------------------- composition


def _composer(wd: WorkDir, cfg: BakeConfig, size: tuple[int, int], matches: Path) -> GuidanceComposer:
    return open_composer(wd, cfg.split, size=size, mode=cfg.compose_mode, k=cfg.k, choose=cfg.choose, seed=cfg.seed,
                         matches=matches)


def part_images(size: tuple[int, int]) -> int:
    """Images per part: `PART_IMAGES`, fewer when that many would exceed `PART_BYTES` in memory."""
    W, H = size
    return max(1, min(PART_IMAGES, PART_BYTES // (W * H * 3)))


def _bake_part(cfg: BakeConfig, size: tuple[int, int], image_rows: np.ndarray, path: Path, key: str,
               matches: Path, wd: WorkDir) -> int:
    comp = _composer(wd, cfg, size, matches)
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
    """Run the bake stage for one split; returns its manifest (or the existing one when up to date),
    or a `complete: False` summary after a `--shard` run without `--merge`."""
    wd = WorkDir(cfg.work)
    wd.require_segments()  # first: a folder that is no work directory gets no lock file either
    with wd.stage(f"guidance-{cfg.split}", f"guidance-{cfg.split}", f"the {cfg.split} guidance", stage=STAGE,
                  verb="baked", shard=cfg.shard, merge=cfg.merge, rebuild=cfg.rebuild) as st, \
            wd.snapshot(index=True) as chain:  # the store and index it reads, pinned while it bakes
        idx = chain.require_index()  # the chain it reads: index ← segment store, every file as written
        seg = chain.segments_manifest()
        upstream = {"segments": seg["fingerprint"], "index": idx["fingerprint"]}
        SegmentStore(chain, cfg.split).close()  # a clear error when the split is absent
        dataset = seg.get("params", {}).get("dataset")
        size = cfg.size or PRESET_SIZE.get(dataset or "", (256, 256))
        params = {"split": cfg.split, **cfg.search_params(), **cfg.compose_params(size)}
        if st.up_to_date(params, upstream=upstream):
            log.info("guidance %s is up to date: %s", cfg.split, wd.guidance_dir(cfg.split))
            if st.exclusive:
                st.publish()
            return st.manifest
        return _bake(st, chain, cfg, size, params, upstream, dataset, progress)


def _bake(st: Stage, wd: WorkDir, cfg: BakeConfig, size: tuple[int, int], params: dict, upstream: dict,
          dataset: str | None, progress: bool) -> dict:
    """Retrieve, compose and merge into the split's staging folder, then commit it. `wd` is the
    snapshot of the store and index the bake reads."""
    staging = st.staging
    if cfg.rebuild and cfg.shard is None and not cfg.merge:
        st.restart()  # start afresh; the finished bake stays until replaced
    staging.mkdir(parents=True, exist_ok=True)
    timings = {}

    t0 = time.perf_counter()
    matches_path = wd.matches_table(cfg.split, staging)
    search_key = fingerprint({"search": cfg.search_params(), "upstream": upstream})
    if not _matches_current(matches_path, search_key):
        published = WorkDir(wd.root).matches_table(cfg.split)
        if not cfg.rebuild and _matches_current(published, search_key):
            _link_or_copy(published, matches_path)  # only the composition changed
        else:
            table = retrieve_split(wd, cfg.split, cfg, progress)
            table = table.replace_schema_metadata({"resail_key": search_key})
            with atomic_path(matches_path) as tmp:
                pq.write_table(table, tmp)
    timings["retrieve_s"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    key = fingerprint({"params": params, "upstream": upstream})
    with SegmentStore(wd, cfg.split) as store:
        status = np.asarray(store.images["status"].to_pylist())
    ok_rows = np.flatnonzero(status == "ok")
    parts = Parts(wd.guidance_parts(cfg.split), len(ok_rows), part_images(size), key, "part-{a:08d}-{b:08d}.h5")
    ranges = run_job(parts, _bake_part,
                     lambda a, b: (cfg, size, ok_rows[a:b], parts.path(a, b), key, matches_path, wd),
                     shard=cfg.shard, merge=cfg.merge, jobs=cfg.jobs, progress=progress, desc=f"compose {cfg.split}")
    timings["compose_s"] = round(time.perf_counter() - t0, 3)
    if ranges is None:
        return {"stage": STAGE, "shard": list(cfg.shard), "parts": len(parts.of_shard(*cfg.shard)),
                "complete": False}

    t0 = time.perf_counter()
    h5_path = wd.guidance_h5(cfg.split, staging)
    W, H = size
    ensure_free_space(staging, len(ok_rows) * W * H * 3, f"the {cfg.split} guidance cache")
    _merge(parts, ranges, h5_path, size, ok_rows, cfg, wd)
    timings["merge_s"] = round(time.perf_counter() - t0, 3)
    previews = write_previews(cfg, size, ok_rows[:cfg.n_preview], dataset, wd.guidance_preview(cfg.split, staging),
                              matches_path, wd)
    shutil.rmtree(parts.folder)
    manifest = write_manifest(staging, STAGE, params, name=wd.guidance_manifest_name(cfg.split), upstream=upstream,
                              files=[matches_path.name, h5_path.name], images=int(len(ok_rows)),
                              previews=len(previews), timings=timings, **_match_counts(matches_path))
    st.commit()
    return manifest


def _link_or_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def _matches_current(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # a damaged table (pyarrow's ArrowInvalid is a ValueError)
        return False
    return meta.get(b"resail_key", b"").decode() == key


def _merge(parts: Parts, ranges, out: Path, size, ok_rows, cfg: BakeConfig, wd: WorkDir) -> None:
    W, H = size
    with SegmentStore(wd, cfg.split) as store:
        all_ids = store.images["image_id"].to_pylist()
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("guidance", shape=(len(ok_rows), H, W, 3), dtype=np.uint8,
                              **({"chunks": (1, H, W, 3), **GUIDANCE_COMPRESSION} if len(ok_rows) else {}))
        f.create_dataset("image_id", data=np.asarray([all_ids[r] for r in ok_rows], dtype=object),
                         dtype=h5py.string_dtype())
        for a, b in ranges:
            with h5py.File(parts.path(a, b), "r") as p:
                ds[a:b] = p["guidance"][...]
        f.attrs.update({"width": W, "height": H, "compose_mode": cfg.compose_mode, "choose": cfg.choose,
                        "seed": cfg.seed, "k": cfg.k, "split": cfg.split})


def _match_counts(path: Path) -> dict:
    t = pq.read_table(path, columns=["segment_id", "rank"])
    return {"matched_segments": int((t["rank"].to_numpy() == 0).sum()), "match_rows": t.num_rows}


def write_previews(cfg: BakeConfig, size, image_rows, dataset: str | None, out_dir: Path,
                   matches: Path, work: Path | WorkDir | None = None) -> list[Path]:
    """A few PNG rows (colourised label | guidance | real photo) in `out_dir`, for a person to judge at a glance."""
    if not len(image_rows):
        return []
    palette = palette_lut(dataset, 65536)
    out_dir.mkdir(exist_ok=True)
    comp = _composer(WorkDir(work or cfg.work), cfg, size, matches)
    written = []
    try:
        for row in image_rows:
            panels = [comp.label_preview(int(row), palette), comp.compose(int(row)), comp.photo(int(row))]
            strip = np.concatenate(panels, axis=1)
            written.append(write_png_atomic(out_dir / f"{comp.image_id[row]}.png", strip))
    finally:
        comp.close()
    return written

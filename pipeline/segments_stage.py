"""Stage 1 of `resail index build`: decompose every image of the splits into the segment store.

The stage runner (`runner.py`) cuts each split's images (by sorted image id) into parts of
`PART_IMAGES` consecutive images; each part is decoded, decomposed and encoded by one task, which
writes `segments.new/parts/{split}/{start:08d}-{stop:08d}.h5` atomically. `--shard I/N` computes the
images [K·I//N, K·(I+1)//N) of every split of K images; the merge checks that every shard of every
split has finished, streams the parts into `{split}.h5` / `{split}.parquet` /
`{split}_images.parquet` (segment ids: train rows first, then val), writes `manifest.json` last
and deletes the parts. Rerunning after a crash skips the parts already written; parts and outputs
never depend on `--jobs` or `--shard`, so the result is byte-identical to an uninterrupted run.

The stage lifecycle is lifecycle.py's (`WorkDir.stage`): parts and merged files are written in
`segments.new/`, sealed as the next version `segments@N` once its manifest is written and
published by switching the link `segments`, so a failed or killed rebuild (a corrupt image, a
full disk) leaves the previous store, and the index and guidance made from it, usable, and a
reader never sees a half-replaced store. `resail index build` publishes the new store together
with the index built from it (`publish=False` here, index.build.build_index). The manifest
records the dataset files' fingerprints (`inputs`: size and mtime of every image, label and
instance file) and the size and mtime of every file written: an edited dataset rebuilds the
store, a changed parameter asks for `--rebuild`, a damaged store file rebuilds it. `resail index
build` holds `WORK/locks/index.lock` while it writes (shared by the jobs of a sharded build, each
also holding its shard's lock).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from ..artifacts import (
    ensure_free_space,
    file_fingerprint,
    fingerprint,
    param_changes,
    remove_temporaries,
    write_json_atomic,
    write_manifest,
)
from ..choices import CROP_CODECS, ON_ERROR, SPLITS
from ..common import sha256_file
from ..errors import ConfigError, InputError, StageError
from ..index.descriptors import R_CANONICAL, R_PREFILTER
from ..workdir import INDEX_LOCK, WorkDir
from .datasets import ImageRecord, Reader, list_split, make_reader
from .decompose import DecompositionRules, thing_lut
from .runner import Parts, check_shard, run_job
from .store import SegmentStore, encode_segments, merge_parts, write_part

log = logging.getLogger("resail")

STAGE = "segments"
PART_IMAGES = 32
FULL_ADE20K = 20_000  # ADE20K has 20,210 training images; its outdoor subset about half
WORK_FILES = ("parts", "state.json")  # the staging folder's resume state, dropped when it replaces the store


@dataclass(frozen=True)
class SegmentsConfig:
    dataset: str
    root: Path
    work: Path
    splits: tuple[str, ...] = SPLITS
    jobs: int = 1
    shard: tuple[int, int] | None = None   # (i, n): this run owns shard i of n
    merge: bool = False                    # merge finished shards (alone: merge only)
    preserved_ratio: float = 0.9
    max_side: int | None = None
    crop_max_side: int = 256
    crop_codec: str = "jpeg"
    image_list: Path | None = None
    layout: str | None = None              # COCO-Stuff: "coco" or "spade"; None = the one found under root
    on_error: str = "fail"
    rebuild: bool = False
    uncovered_things: str = "official"

    def __post_init__(self):
        _ = self.rules  # checks preserved_ratio, uncovered_things and max_side
        if self.on_error not in ON_ERROR:
            raise ConfigError("on_error", f"on_error {self.on_error!r}: choose one of {', '.join(ON_ERROR)}")
        check_shard(self.shard)
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ConfigError("splits", f"splits {','.join(self.splits)}: choose from {', '.join(SPLITS)}")
        if self.crop_max_side < 1:
            raise ConfigError("crop_max_side", f"crop_max_side {self.crop_max_side} must be positive")
        if self.crop_codec not in CROP_CODECS:
            raise ConfigError("crop_codec", f"crop_codec {self.crop_codec!r}: choose one of {', '.join(CROP_CODECS)}")

    @property
    def rules(self) -> DecompositionRules:
        return DecompositionRules(self.dataset, self.preserved_ratio, self.uncovered_things, self.max_side)

    def params(self, reader: Reader | None = None) -> dict:
        """What the output depends on (not jobs, shard, merge, rebuild or on_error); with the
        `reader`, the layout it found (COCO-Stuff's is recorded, so that later stages reopen it)."""
        layout = getattr(reader, "layout", None) if reader is not None else self.layout
        return ({"layout": layout} if layout is not None else {}) | {
            "dataset": self.dataset, "root": str(Path(self.root).resolve()),
            "splits": [s for s in SPLITS if s in self.splits], "preserved_ratio": self.preserved_ratio,
            "max_side": self.max_side, "crop_max_side": self.crop_max_side, "crop_codec": self.crop_codec,
            "image_list": _file_sha(self.image_list), "uncovered_things": self.uncovered_things,
            "R": R_CANONICAL, "r": R_PREFILTER, "part_images": PART_IMAGES,
        }


@dataclass(frozen=True)
class _Job:
    """What a worker needs besides the reader and its records (picklable)."""

    rules: DecompositionRules
    crop_max_side: int
    crop_codec: str
    on_error: str
    attrs: dict


def _file_sha(path: Path | None) -> str | None:
    return None if path is None else sha256_file(path)[:16]


def _inputs_fingerprint(records: list[ImageRecord], extra: list[Path]) -> str:
    """Size + mtime of every file of the split (and of `extra`): changes whenever the data does."""
    files = []
    for r in records:
        for p in (r.image_path, r.label_path, r.instance_path):
            try:
                files.append(file_fingerprint(p) if p else "")
            except OSError as e:  # missing, a link loop, no permission: the load names it
                files.append(f"{e.__class__.__name__}:{Path(p).name}")
    return fingerprint([[r.image_id for r in records], files, [file_fingerprint(p) for p in extra]])


# ---------------------------------------------------------------- worker


def process_part(reader: Reader, records: list[ImageRecord], job: _Job, path: str) -> tuple[int, int, int]:
    """Decompose and encode a run of images; write them as one part. Returns (images, segments, skipped).
    OpenCV's threads are the thread policy's (threads.py): one image per core when `jobs` fills the CPUs."""
    lut = thing_lut(reader.table.thing_ids())
    images, cols, canon, pre, crops = [], {k: [] for k in ("class_id", "is_thing", "bbox", "area")}, [], [], []
    canon_area, crop_hw, crop_nbytes, image_row = [], [], [], []
    for rec in records:
        row = {"image_id": rec.image_id, "image_path": rec.image_path, "label_path": rec.label_path,
               "instance_path": rec.instance_path, "height": 0, "width": 0, "n_segments": 0,
               "status": "ok", "reason": ""}
        try:
            s = reader.load(rec)
            image, label, inst, segs = job.rules.apply(s.label_map, s.instance_map, s.instance_classes, lut,
                                                       s.image, where=rec.instance_path or rec.label_path)
        except InputError as e:
            if job.on_error == "fail":
                raise
            row.update(status="skipped", reason=str(e))
            images.append(row)
            continue
        enc = encode_segments(image, segs, R_CANONICAL, R_PREFILTER, job.crop_max_side, job.crop_codec)
        row.update(height=label.shape[0], width=label.shape[1], n_segments=len(segs))
        cols["class_id"] += [sg.class_id for sg in segs]
        cols["is_thing"] += [sg.is_thing for sg in segs]
        cols["bbox"] += [(sg.y0, sg.x0, sg.h, sg.w) for sg in segs]
        cols["area"] += [sg.area for sg in segs]
        image_row += [len(images)] * len(segs)
        canon.append(enc.canonical)
        pre.append(enc.prefilter)
        crops.append(enc.crops)
        canon_area.append(enc.canon_area)
        crop_hw.append(enc.crop_hw)
        crop_nbytes.append(enc.crop_nbytes)
        images.append(row)
    hw = np.concatenate(crop_hw) if crop_hw else np.zeros((0, 2), np.int32)
    bbox = np.asarray(cols["bbox"], np.int64).reshape(-1, 4)
    arrays = {
        "class_id": np.asarray(cols["class_id"], np.int64), "is_thing": np.asarray(cols["is_thing"], np.int64),
        "y0": bbox[:, 0], "x0": bbox[:, 1], "h": bbox[:, 2], "w": bbox[:, 3],
        "area": np.asarray(cols["area"], np.int64),
        "canon_area": np.concatenate(canon_area) if canon_area else np.zeros(0, np.int64),
        "crop_h": hw[:, 0], "crop_w": hw[:, 1],
        "crop_nbytes": np.concatenate(crop_nbytes) if crop_nbytes else np.zeros(0, np.int64),
        "image_row": np.asarray(image_row, np.int64),
    }
    write_part(path, images, arrays,
               np.concatenate(canon) if canon else np.zeros((0, R_CANONICAL ** 2 // 8), np.uint8),
               np.concatenate(pre) if pre else np.zeros((0, R_PREFILTER ** 2 // 8), np.uint8),
               np.concatenate(crops) if crops else np.zeros(0, np.uint8), job.attrs)
    skipped = sum(r["status"] != "ok" for r in images)
    return len(records), len(arrays["class_id"]), skipped


# ---------------------------------------------------------------- stage


def build_segments(cfg: SegmentsConfig, *, progress: bool = False,
                   on_part: Callable[[str, int, int], None] | None = None, publish: bool = True) -> dict | None:
    """Run stage 1. Returns the manifest, or None when only a shard was run (no merge yet).

    `on_part(split, start, stop)` is called after each part is written (tests inject crashes here).
    `publish=False` seals a new store without publishing it: `index build` publishes it with its index.
    """
    t0 = time.perf_counter()
    reader = make_reader(cfg.dataset, cfg.root, cfg.image_list, cfg.layout)
    wd = WorkDir(cfg.work)
    params = cfg.params(reader)
    records = {s: list_split(reader, s) for s in SPLITS if s in cfg.splits}
    unlisted = _check_image_list(reader, cfg)
    if cfg.dataset == "ade20k-outdoor" and cfg.image_list is None and len(records.get("train", ())) >= FULL_ADE20K:
        log.warning("segments: ade20k-outdoor without --image-list reads every image under %s (%d train "
                    "images): that is the whole of ADE20K; pass the outdoor subset's --image-list, or a "
                    "folder holding only its images", reader.root, len(records["train"]))
    inputs = {s: _inputs_fingerprint(r, reader.extra_inputs(s)) for s, r in records.items()}
    key = fingerprint({"params": params, "inputs": inputs})

    with wd.stage("segments", INDEX_LOCK, "the segment store", stage=STAGE, shard=cfg.shard, merge=cfg.merge,
                  rebuild=cfg.rebuild, drop=WORK_FILES) as st:
        if st.up_to_date(params, inputs=inputs):
            log.info("segments: up to date in %s (use --rebuild to redo)", wd.segments)
            if publish and st.exclusive:
                st.publish()
            return st.manifest
        if cfg.rebuild and cfg.shard is None and not cfg.merge:
            st.restart()  # start afresh; the finished store stays until replaced
        _check_parts(wd, params, key, cfg.rebuild)

        job = _Job(cfg.rules, cfg.crop_max_side, cfg.crop_codec, cfg.on_error, {"key": key, "dataset": cfg.dataset})
        parts = {split: _run_split(reader, wd, split, recs, job, key, cfg, progress, on_part)
                 for split, recs in records.items()}
        if any(p is None for p in parts.values()):
            log.info("segments: shard %d/%d done; run with --merge once every shard has finished", *cfg.shard)
            return None
        manifest = _merge(reader, records, parts, wd, params, inputs, cfg, unlisted)
        st.commit(publish_now=publish)
    log.info("segments: %s in %.1fs -> %s", ", ".join(
        f"{s} {c['segments']} segments from {c['images_ok']} images" for s, c in manifest["counts"].items()),
        time.perf_counter() - t0, wd.segments)
    return manifest


def _check_image_list(reader: Reader, cfg: SegmentsConfig) -> list[str]:
    """Names of `--image-list` that match no image of the dataset: an error, or with
    `--on-error skip` a warning (recorded in the manifest)."""
    unlisted = reader.unmatched_list_names()
    if not unlisted:
        return []
    what = (f"{cfg.image_list}: {len(unlisted)} names match no image of train or val "
            f"(e.g. {unlisted[0]!r}); fix the list")
    if cfg.on_error == "fail":
        raise InputError(what + ", or pass --on-error skip to ignore them")
    log.warning("segments: %s", what)
    return unlisted


def _check_parts(wd: WorkDir, params: dict, key: str, rebuild: bool) -> None:
    """Resume only parts of the same parameters and inputs; other parameters need --rebuild."""
    state = wd.segments_staging / "state.json"
    if state.exists():
        try:
            old = json.loads(state.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("params") != params and not rebuild:
            raise StageError(f"{wd.segments_staging} holds an unfinished build with other parameters "
                             f"({param_changes(old.get('params') or {}, params)}); rerun with --rebuild to discard "
                             "it, or use another --work")
        if old.get("key") != key:
            if old.get("params") == params:
                log.warning("segments: the dataset files changed since the unfinished build; discarding its parts")
            shutil.rmtree(wd.segments_staging)
    if not state.exists():
        write_json_atomic(state, {"params": params, "key": key})


def _run_split(reader: Reader, wd: WorkDir, split: str, recs: list[ImageRecord], job: _Job, key: str,
               cfg: SegmentsConfig, progress: bool, on_part) -> list[Path] | None:
    """Run the shards of one split the flags ask for; every part file in order when a merge follows."""
    parts = Parts(wd.segment_parts / split, len(recs), PART_IMAGES, key, "{a:08d}-{b:08d}.h5")
    stats = np.zeros(3, np.int64)

    def finished(a: int, b: int, result) -> dict:
        stats[:] += result
        if on_part is not None:
            on_part(split, a, b)
        return {"segments": int(stats[1]), "skipped": int(stats[2])}

    ranges = run_job(parts, process_part, lambda a, b: (reader, recs[a:b], job, str(parts.path(a, b))),
                     shard=cfg.shard, merge=cfg.merge, jobs=cfg.jobs, progress=progress, desc=f"segments {split}",
                     on_result=finished)
    return None if ranges is None else [parts.path(a, b) for a, b in ranges]


def _merge(reader, records, parts, wd: WorkDir, params, inputs, cfg, unlisted: list[str]) -> dict:
    """Merge every split's parts into the staging folder and write its manifest there, last."""
    t0 = time.perf_counter()
    out = wd.segments_staging
    remove_temporaries(out)  # a killed merge's half-written files would otherwise move in with the store
    # The merge copies the parts: check for room first (HDF5 copes badly with a full disk).
    ensure_free_space(out, sum(p.stat().st_size for ps in parts.values() for p in ps), "the segment store merge")
    counts, skipped, first_id, files = {}, {}, 0, []
    for split, recs in records.items():
        attrs = {"R": R_CANONICAL, "r": R_PREFILTER, "crop_max_side": cfg.crop_max_side,
                 "crop_codec": cfg.crop_codec, "dataset": cfg.dataset, "split": split}
        n_seg = merge_parts(parts[split], wd, split, first_id, attrs, folder=out)
        images = pq.read_table(wd.images_table(split, out), columns=["image_id", "status", "reason"])
        status = images.column("status").to_pylist()
        bad = [(i, r) for i, s, r in zip(images.column("image_id").to_pylist(), status,
                                         images.column("reason").to_pylist()) if s != "ok"]
        counts[split] = {"images": len(recs), "images_ok": len(recs) - len(bad), "images_skipped": len(bad),
                         "segments": n_seg, "first_segment_id": first_id}
        skipped[split] = [{"image_id": i, "reason": r} for i, r in bad]
        first_id += n_seg
        files += [p.name for p in (wd.segments_table(split, out), wd.segments_h5(split, out),
                                   wd.images_table(split, out))]
    table = reader.table
    return write_manifest(
        out, STAGE, params, files=files, inputs=inputs, counts=counts, skipped=skipped,
        image_list_unmatched=unlisted,
        classes={"ids": list(table.ids), "names": list(table.names), "is_thing": list(table.is_thing)},
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        merge_seconds=round(time.perf_counter() - t0, 3),
    )


# ---------------------------------------------------------------- stats


def segment_stats(work: str | Path) -> dict:
    """Segments per class and split, and skipped images with reasons, of a finished store."""
    per_class: dict[int, dict[str, int]] = {}
    with WorkDir(work).snapshot() as wd:  # one version of the store for the manifest and every split
        m = wd.require_segments()
        for split in m["counts"]:
            with SegmentStore(wd, split) as store:
                ids, n = np.unique(store.table["class_id"].to_numpy(), return_counts=True)
            for c, k in zip(ids.tolist(), n.tolist()):
                per_class.setdefault(c, {})[split] = k
    names = dict(zip(m["classes"]["ids"], m["classes"]["names"]))
    thing = dict(zip(m["classes"]["ids"], m["classes"]["is_thing"]))
    classes = [{"class_id": c, "name": names.get(c, "?"), "is_thing": bool(thing.get(c, False)),
                **{s: per_class[c].get(s, 0) for s in m["counts"]}} for c in sorted(per_class)]
    return {"work": str(work), "dataset": m["params"]["dataset"], "counts": m["counts"],
            "classes": classes, "skipped": m["skipped"]}


def format_stats(st: dict) -> str:
    splits = list(st["counts"])
    lines = [f"segment store of {st['dataset']} in {st['work']}"]
    for s, c in st["counts"].items():
        lines.append(f"  {s}: {c['segments']} segments from {c['images_ok']} images "
                     f"({c['images_skipped']} skipped)")
    lines.append("")
    lines.append(f"{'id':>5}  {'class':<28}{'kind':<7}" + "".join(f"{s:>10}" for s in splits))
    for row in st["classes"]:
        lines.append(f"{row['class_id']:>5}  {row['name'][:27]:<28}{'thing' if row['is_thing'] else 'stuff':<7}"
                     + "".join(f"{row[s]:>10}" for s in splits))
    for s, items in st["skipped"].items():
        if items:
            lines.append("")
            lines.append(f"skipped in {s}:")
            lines += [f"  {it['image_id']}: {it['reason']}" for it in items]
    return "\n".join(lines)

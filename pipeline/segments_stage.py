"""Stage 1 of `resail index build`: decompose every image of the splits into the segment store.

Work is cut into parts of `PART_IMAGES` consecutive images (by sorted image id). Each part is
decoded, decomposed and encoded by one joblib task, which writes `segments/parts/{split}/
{start:08d}-{stop:08d}.h5` atomically. A shard (`--shard i/n`) owns images
[N·i//n, N·(i+1)//n) of every split and writes `shard-{i}-of-{n}.json` once its parts exist.
The merge checks that every shard of every split is present, streams the parts into
`{split}.h5` / `{split}.parquet` / `{split}_images.parquet` (segment ids: train rows first, then
val), writes `manifest.json` last and deletes the parts. Rerunning after a crash skips the parts
already written; parts and outputs never depend on `--jobs` or `--shard`, so the result is
byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from ..errors import InputError, StageError
from ..index.descriptors import R_CANONICAL, R_PREFILTER
from ..artifacts import (file_fingerprint, fingerprint, read_manifest, write_json_atomic, write_manifest)
from .datasets import SPLITS, ImageRecord, Reader, list_split, make_reader
from .decompose import decompose, downscale, thing_lut
from .store import encode_segments, merge_parts, write_part

log = logging.getLogger("resail")

STAGE = "segments"
PART_IMAGES = 32
ON_ERROR = ("fail", "skip")
UNCOVERED = ("official", "components")


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
    image_list: Path | None = None
    on_error: str = "fail"
    rebuild: bool = False
    uncovered_things: str = "official"

    def __post_init__(self):
        if not 0.0 < self.preserved_ratio <= 1.0:
            raise InputError(f"--preserved-ratio {self.preserved_ratio} must be in (0, 1]")
        if self.on_error not in ON_ERROR:
            raise InputError(f"--on-error must be one of {ON_ERROR}")
        if self.uncovered_things not in UNCOVERED:
            raise InputError(f"--uncovered-things must be one of {UNCOVERED}")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise InputError(f"--shard {self.shard[0]}/{self.shard[1]}: need 0 <= i < n")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise InputError(f"--splits {','.join(self.splits)}: choose from {', '.join(SPLITS)}")
        if self.crop_max_side < 1 or (self.max_side is not None and self.max_side < 1):
            raise InputError("--crop-max-side and --max-side must be positive")

    def params(self) -> dict:
        """What the output depends on (not jobs, shard, merge, rebuild or on_error)."""
        return {
            "dataset": self.dataset, "root": str(Path(self.root).resolve()),
            "splits": [s for s in SPLITS if s in self.splits], "preserved_ratio": self.preserved_ratio,
            "max_side": self.max_side, "crop_max_side": self.crop_max_side,
            "image_list": _file_sha(self.image_list), "uncovered_things": self.uncovered_things,
            "R": R_CANONICAL, "r": R_PREFILTER, "part_images": PART_IMAGES,
        }


@dataclass(frozen=True)
class _Job:
    """What a worker needs besides the reader and its records (picklable)."""

    preserved_ratio: float
    max_side: int | None
    crop_max_side: int
    on_error: str
    uncovered: str
    attrs: dict


def _file_sha(path: Path | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _inputs_fingerprint(records: list[ImageRecord], extra: list[Path]) -> str:
    """Size + mtime of every file of the split (and of `extra`): changes whenever the data does."""
    files = []
    for r in records:
        for p in (r.image_path, r.label_path, r.instance_path):
            try:
                files.append(file_fingerprint(p) if p else "")
            except FileNotFoundError:
                files.append(f"missing:{Path(p).name}")
    return fingerprint([[r.image_id for r in records], files, [file_fingerprint(p) for p in extra]])


def shard_range(n_items: int, i: int, n: int) -> tuple[int, int]:
    return n_items * i // n, n_items * (i + 1) // n


def part_ranges(start: int, stop: int, size: int | None = None) -> list[tuple[int, int]]:
    size = size or PART_IMAGES
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


# ---------------------------------------------------------------- worker


def process_part(reader: Reader, records: list[ImageRecord], job: _Job, path: str) -> tuple[int, int, int]:
    """Decompose and encode a run of images; write them as one part. Returns (images, segments, skipped)."""
    import cv2

    cv2.setNumThreads(1)  # one image per core: OpenCV's own threads would only contend
    lut = thing_lut(reader.table.thing_ids())
    uncovered = reader.uncovered_official if job.uncovered == "official" else "components"
    images, cols, canon, pre, crops = [], {k: [] for k in ("class_id", "is_thing", "bbox", "area")}, [], [], []
    canon_area, crop_hw, image_row = [], [], []
    for rec in records:
        row = {"image_id": rec.image_id, "image_path": rec.image_path, "label_path": rec.label_path,
               "instance_path": rec.instance_path, "height": 0, "width": 0, "n_segments": 0,
               "status": "ok", "reason": ""}
        try:
            s = reader.load(rec)
            image, label, inst = downscale(s.image, s.label_map, s.instance_map, job.max_side)
            segs = decompose(label, inst, s.instance_classes, lut, job.preserved_ratio, uncovered,
                             where=rec.instance_path or rec.label_path)
        except InputError as e:
            if job.on_error == "fail":
                raise
            row.update(status="skipped", reason=str(e))
            images.append(row)
            continue
        enc = encode_segments(image, segs, R_CANONICAL, R_PREFILTER, job.crop_max_side)
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
        images.append(row)
    hw = np.concatenate(crop_hw) if crop_hw else np.zeros((0, 2), np.int32)
    bbox = np.asarray(cols["bbox"], np.int64).reshape(-1, 4)
    arrays = {
        "class_id": np.asarray(cols["class_id"], np.int64), "is_thing": np.asarray(cols["is_thing"], np.int64),
        "y0": bbox[:, 0], "x0": bbox[:, 1], "h": bbox[:, 2], "w": bbox[:, 3],
        "area": np.asarray(cols["area"], np.int64),
        "canon_area": np.concatenate(canon_area) if canon_area else np.zeros(0, np.int64),
        "crop_h": hw[:, 0], "crop_w": hw[:, 1], "image_row": np.asarray(image_row, np.int64),
    }
    write_part(path, images, arrays,
               np.concatenate(canon) if canon else np.zeros((0, R_CANONICAL ** 2 // 8), np.uint8),
               np.concatenate(pre) if pre else np.zeros((0, R_PREFILTER ** 2 // 8), np.uint8),
               np.concatenate(crops) if crops else np.zeros(0, np.uint8), job.attrs)
    skipped = sum(r["status"] != "ok" for r in images)
    return len(records), len(arrays["class_id"]), skipped


# ---------------------------------------------------------------- stage


def build_segments(cfg: SegmentsConfig, *, progress: bool = False,
                   on_part: Callable[[str, int, int], None] | None = None) -> dict | None:
    """Run stage 1. Returns the manifest, or None when only a shard was run (no merge yet).

    `on_part(split, start, stop)` is called after each part is written (tests inject crashes here).
    """
    t0 = time.perf_counter()
    reader = make_reader(cfg.dataset, cfg.root, cfg.image_list)
    seg_dir = Path(cfg.work) / "segments"
    params = cfg.params()
    records = {s: list_split(reader, s) for s in SPLITS if s in cfg.splits}
    inputs = {s: _inputs_fingerprint(r, reader.extra_inputs(s)) for s, r in records.items()}
    key = fingerprint({"params": params, "inputs": inputs})

    if _up_to_date(seg_dir, params, inputs, cfg.rebuild):
        log.info("segments: up to date in %s (use --rebuild to redo)", seg_dir)
        return read_manifest(seg_dir)
    _check_parts(seg_dir, params, key, cfg.rebuild)

    job = _Job(cfg.preserved_ratio, cfg.max_side, cfg.crop_max_side, cfg.on_error, cfg.uncovered_things,
               {"key": key, "dataset": cfg.dataset})
    run_shard = cfg.shard is not None or not cfg.merge
    i, n = cfg.shard or (0, 1)
    if run_shard:
        for split, recs in records.items():
            _run_shard(reader, split, recs, i, n, job, seg_dir, cfg.jobs, progress, on_part)
        if cfg.shard is not None and not cfg.merge:
            log.info("segments: shard %d/%d done; run with --merge once every shard has finished", i, n)
            return None
    manifest = _merge(reader, records, seg_dir, params, inputs, key, cfg)
    log.info("segments: %s in %.1fs -> %s", ", ".join(
        f"{s} {c['segments']} segments from {c['images_ok']} images" for s, c in manifest["counts"].items()),
        time.perf_counter() - t0, seg_dir)
    return manifest


def _up_to_date(seg_dir: Path, params: dict, inputs: dict, rebuild: bool) -> bool:
    m = read_manifest(seg_dir)
    if m is None:
        if rebuild and seg_dir.exists():
            shutil.rmtree(seg_dir)
        return False
    if rebuild:
        shutil.rmtree(seg_dir)
        return False
    if m.get("stage") != STAGE or m.get("params") != params:
        diff = sorted(k for k in set(params) | set(m.get("params", {}))
                      if params.get(k) != m.get("params", {}).get(k))
        raise StageError(f"{seg_dir} was built with other parameters ({', '.join(diff)} differ); "
                         "rerun with --rebuild to replace it, or use another --work")
    if m.get("inputs") != inputs:
        log.warning("segments: the dataset files changed since %s was built; rebuilding", seg_dir)
        shutil.rmtree(seg_dir)
        return False
    return True


def _check_parts(seg_dir: Path, params: dict, key: str, rebuild: bool) -> None:
    """Resume only parts of the same parameters and inputs; other parameters need --rebuild."""
    state = seg_dir / "parts" / "state.json"
    if state.exists():
        old = json.loads(state.read_text())
        if old["params"] != params:
            raise StageError(f"{seg_dir / 'parts'} holds an unfinished build with other parameters; "
                             "rerun with --rebuild to discard it, or use another --work")
        if old["key"] != key:
            log.warning("segments: the dataset files changed since the unfinished build; discarding its parts")
            shutil.rmtree(seg_dir / "parts")
    if not state.exists():
        write_json_atomic(state, {"params": params, "key": key})


def _part_path(seg_dir: Path, split: str, a: int, b: int) -> Path:
    return seg_dir / "parts" / split / f"{a:08d}-{b:08d}.h5"


def _shard_marker(seg_dir: Path, split: str, i: int, n: int) -> Path:
    return seg_dir / "parts" / split / f"shard-{i:05d}-of-{n:05d}.json"


def _run_shard(reader, split, recs, i, n, job, seg_dir, jobs, progress, on_part) -> None:
    from joblib import Parallel, delayed
    from tqdm import tqdm

    a, b = shard_range(len(recs), i, n)
    ranges = part_ranges(a, b)
    todo = [(s, e) for s, e in ranges if not _part_path(seg_dir, split, s, e).exists()]
    (seg_dir / "parts" / split).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=b - a, initial=(b - a) - sum(e - s for s, e in todo), unit="img",
               desc=f"segments {split}" + (f" shard {i}/{n}" if n > 1 else ""), disable=not progress)
    args = [(reader, recs[s:e], job, str(_part_path(seg_dir, split, s, e))) for s, e in todo]
    if jobs == 1:
        out = (process_part(*a) for a in args)
    else:
        out = Parallel(n_jobs=jobs, return_as="generator")(delayed(process_part)(*a) for a in args)
    results = ((s, e, r) for (s, e), r in zip(todo, out))
    stats = np.zeros(3, np.int64)
    with bar:
        for s, e, r in results:
            stats += r
            bar.update(e - s)
            bar.set_postfix(segments=int(stats[1]), skipped=int(stats[2]))
            if on_part is not None:
                on_part(split, s, e)
    write_json_atomic(_shard_marker(seg_dir, split, i, n),
                      {"shard": i, "of": n, "images": [a, b], "parts": [f"{s:08d}-{e:08d}.h5" for s, e in ranges]})


def _shard_parts(seg_dir: Path, split: str, n_images: int) -> list[Path]:
    """Every part of a split, in image order, after checking all shards are present."""
    markers = sorted((seg_dir / "parts" / split).glob("shard-*-of-*.json"))
    counts = {int(m.stem.split("-of-")[1]) for m in markers}
    if len(counts) != 1:
        what = "no shard has finished" if not counts else f"shards were run with different counts {sorted(counts)}"
        raise StageError(f"{seg_dir / 'parts' / split}: cannot merge split {split}: {what}; "
                         "run every --shard i/n (same n), or --rebuild")
    n = counts.pop()
    missing = [i for i in range(n) if not _shard_marker(seg_dir, split, i, n).exists()]
    if missing:
        raise StageError(f"cannot merge split {split}: shards {', '.join(f'{i}/{n}' for i in missing[:10])} "
                         "have not finished; run them with --shard, then --merge")
    parts = [seg_dir / "parts" / split / name for i in range(n)
             for name in json.loads(_shard_marker(seg_dir, split, i, n).read_text())["parts"]]
    absent = [p for p in parts if not p.exists()]
    if absent or not parts or parts[-1].stem.split("-")[1] != f"{n_images:08d}":
        raise StageError(f"{seg_dir / 'parts' / split}: parts are missing or cover another image count; "
                         "rerun with --rebuild")
    return parts


def _merge(reader, records, seg_dir, params, inputs, key, cfg) -> dict:
    t0 = time.perf_counter()
    counts, skipped, first_id = {}, {}, 0
    for split, recs in records.items():
        parts = _shard_parts(seg_dir, split, len(recs))
        attrs = {"R": R_CANONICAL, "r": R_PREFILTER, "crop_max_side": cfg.crop_max_side,
                 "dataset": cfg.dataset, "split": split}
        n_seg = merge_parts(parts, seg_dir, split, first_id, attrs)
        images = pq.read_table(seg_dir / f"{split}_images.parquet", columns=["image_id", "status", "reason"])
        status = images.column("status").to_pylist()
        bad = [(i, r) for i, s, r in zip(images.column("image_id").to_pylist(), status,
                                         images.column("reason").to_pylist()) if s != "ok"]
        counts[split] = {"images": len(recs), "images_ok": len(recs) - len(bad), "images_skipped": len(bad),
                         "segments": n_seg, "first_segment_id": first_id}
        skipped[split] = [{"image_id": i, "reason": r} for i, r in bad]
        first_id += n_seg
    table = reader.table
    manifest = write_manifest(
        seg_dir, STAGE, params, inputs=inputs, counts=counts, skipped=skipped,
        classes={"ids": list(table.ids), "names": list(table.names), "is_thing": list(table.is_thing)},
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        merge_seconds=round(time.perf_counter() - t0, 3),
    )
    shutil.rmtree(seg_dir / "parts", ignore_errors=True)
    return manifest


# ---------------------------------------------------------------- stats


def segment_stats(work: str | Path) -> dict:
    """Segments per class and split, and skipped images with reasons, of a finished store."""
    seg_dir = Path(work) / "segments"
    m = read_manifest(seg_dir)
    if m is None or m.get("stage") != STAGE:
        raise StageError(f"{seg_dir}: no finished segment store; run `resail index build` first")
    per_class: dict[int, dict[str, int]] = {}
    for split in m["counts"]:
        col = pq.read_table(seg_dir / f"{split}.parquet", columns=["class_id"])
        ids, n = np.unique(col.column("class_id").to_numpy(), return_counts=True)
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

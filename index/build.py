"""Stage 2 of `resail index build`: FAISS shards per class.

Reads the train split of the segment store (docs/segment-store.md) through the retrieval columns
that searches read too (`index.retrieval.read_store_table`), and writes
`WORK/index/c{class:04d}.faiss` + `manifest.json` (written last). The manifest records the
segment store's fingerprint (`upstream`) and every shard file's size and mtime; the stage is
skipped when both still hold and the parameters match, rebuilt when the store changed, and a
changed parameter asks for `--rebuild`. A build writes `WORK/index.new/` and swaps it in whole
once finished (`artifacts.commit_dir`), so a failed build leaves the previous index usable.
The built index is opened by `index.retrieval.RetrievalIndex`.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..artifacts import (
    MANIFEST,
    check_files,
    commit_dir,
    ensure_free_space,
    recover_dir,
    write_manifest,
)
from ..errors import StageError
from ..workdir import INDEX_LOCK, WorkDir
from .retrieval import StoreTable, order_hash, read_store_table, size_order
from .shards import (
    IVF_THRESHOLD,
    ShardParams,
    build_shard,
    choose_params,
    shard_path,
    size_windows,
    write_shard,
)

log = logging.getLogger(__name__)

STAGE = "index"


def build_index(
    work: Path,
    *,
    device: str = "cpu",
    rebuild: bool = False,
    progress: bool = True,
    ivf_threshold: int = IVF_THRESHOLD,
    seed: int = 0,
) -> dict:
    """Build (or skip, when up to date) one FAISS shard per class; returns the manifest.

    `device` only matters for searching (see `RetrievalIndex`); shards are always built and
    stored as CPU indexes so they load anywhere.
    """
    work = Path(work)
    wd = WorkDir(work)
    with wd.lock(INDEX_LOCK, "the retrieval index"):
        recover_dir(wd.index)
        seg = wd.require_segments()
        table = read_store_table(work)
        params = {"R": table.R, "r": table.r, "ivf_threshold": int(ivf_threshold), "seed": int(seed)}
        upstream = {"segments": seg["fingerprint"]}
        if not rebuild and _up_to_date(wd, params, upstream):
            log.info("index: up to date (%s); skipped", wd.index / MANIFEST)
            return wd.index_manifest()
        manifest = _build(wd, table, params, upstream, device, progress)
        commit_dir(wd.index_staging, wd.index)
    log.info("index: %d shards, %d segments -> %s", len(manifest["shards"]), table.segment_id.size, wd.index)
    return manifest


def _up_to_date(wd: WorkDir, params: dict, upstream: dict) -> bool:
    """Whether the finished index was built with `params` from the current store and is intact.
    Anything else rebuilds it: its parameters are no command-line flags (R and r follow the store,
    the IVF threshold and seed are library arguments), so there is no --rebuild to ask for."""
    m = wd.index_manifest()
    if m is None or m.get("stage") != STAGE:
        return False
    if (m.get("params") or {}) != params or (m.get("upstream") or {}) != upstream:
        log.info("index: the segment store or the parameters changed since %s was built; rebuilding", wd.index)
        return False
    try:
        check_files(wd.index, m, "rebuilding")
    except StageError as e:
        log.warning("index: %s", e)
        return False
    return True


def _build(wd: WorkDir, table: StoreTable, params: dict, upstream: dict, device: str, progress: bool) -> dict:
    """Every class shard (and the size windows of IVF shards) in the staging folder, manifest last."""
    out = wd.index_staging
    if out.exists():
        shutil.rmtree(out)  # a killed build's leftovers: the index has no parts to resume
    out.mkdir(parents=True)
    with table.store() as store:
        prefilter = np.array(store.prefilter_packed())  # N×128 bytes: the whole split in RAM, sliced per class
    # Flat shards hold the codes once; IVF windows hold each code up to three more times.
    ensure_free_space(out, 4 * prefilter.nbytes, "the index shards")
    classes = np.unique(table.class_id)
    shards: dict[str, dict] = {}
    written: set[Path] = set()
    t_start = time.perf_counter()
    for class_id in tqdm(classes.tolist(), desc="index shards", unit="class", disable=not progress):
        rows = np.flatnonzero(table.class_id == class_id)
        order = size_order(table.bbox_area[rows], table.segment_id[rows])
        rows = rows[order]
        codes = prefilter[rows]
        t0 = time.perf_counter()
        ivf_threshold, seed = params["ivf_threshold"], params["seed"]
        entry = _build_class(out, class_id, codes, choose_params(rows.size, ivf_threshold), seed, written)
        entry["windows"] = {}
        if entry["kind"] == "ivf":
            for j, (start, stop) in size_windows(table.bbox_area[rows]).items():
                window = _build_class(out, class_id, codes[start:stop], choose_params(stop - start, ivf_threshold),
                                      seed, written, window=j)
                entry["windows"][str(j)] = {"start": start, "stop": stop, **window}
        entry.update(build_s=round(time.perf_counter() - t0, 4), order_hash=order_hash(table.segment_id[rows]))
        shards[str(class_id)] = entry
    return write_manifest(
        out,
        STAGE,
        params,
        upstream=upstream,
        files=sorted(p.name for p in written),
        device=device,
        counts={"classes": len(shards), "segments": int(table.segment_id.size)},
        bytes=int(sum(s["bytes"] + sum(w["bytes"] for w in s["windows"].values()) for s in shards.values())),
        build_s=round(time.perf_counter() - t_start, 3),
        shards=shards,
    )


def _build_class(out: Path, class_id: int, codes: np.ndarray, params: ShardParams, seed: int, written: set,
                 window: int | None = None) -> dict:
    path = shard_path(out, class_id, window)
    n_bytes = write_shard(path, build_shard(codes, params, seed=seed))
    written.add(path)
    return {"n": int(codes.shape[0]), "bytes": n_bytes, **params.to_json()}

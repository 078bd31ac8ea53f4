"""Stage 2 of `resail index build`: FAISS shards per class.

Reads the train split of the segment store (docs/segment-store.md) through the retrieval columns
that searches read too (`index.retrieval.read_store_table`), and writes
`WORK/index/c{class:04d}.faiss` + `manifest.json` (written last). The manifest records the
segment store's fingerprint (`upstream`) and every shard file's size and mtime; the stage is
skipped when both still hold and the parameters match, and rebuilt otherwise. The lifecycle is
lifecycle.py's (`WorkDir.stage`): a build writes `WORK/index.new/`, seals it as `index@N` and
publishes it together with the store it indexed, which stage 1 leaves sealed but unpublished
during `resail index build`, so readers switch from the old store and index to the new ones at
one instant and a failed build leaves both usable. The built index is opened by
`index.retrieval.RetrievalIndex`, only through `WorkDir.require_index`, which checks that chain,
and reads the index and store of one snapshot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..artifacts import MANIFEST, ensure_free_space, write_manifest
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
    wd = WorkDir(work)
    with wd.stage("index", INDEX_LOCK, "the retrieval index", stage=STAGE, rebuild=rebuild) as st:
        segments = wd.versions("segments")
        store = wd.at_newest("segments")  # a new store waits, sealed, to be published with this index
        seg = store.require_segments()
        table = read_store_table(store)
        params = {"R": table.R, "r": table.r, "ivf_threshold": int(ivf_threshold), "seed": int(seed)}
        upstream = {"segments": seg["fingerprint"]}
        if st.up_to_date(params, upstream=upstream, ask_rebuild=False):  # no flag sets them: a change rebuilds
            log.info("index: up to date (%s); skipped", wd.index / MANIFEST)
            st.publish(with_=[segments])
            return st.manifest
        st.restart()  # a killed build's leftovers: the index has no parts to resume
        manifest = _build(st.staging, table, params, upstream, device, progress)
        st.commit(with_=[segments])
    log.info("index: %d shards, %d segments -> %s", len(manifest["shards"]), table.segment_id.size, wd.index)
    return manifest


def _build(out: Path, table: StoreTable, params: dict, upstream: dict, device: str, progress: bool) -> dict:
    """Every class shard (and the size windows of IVF shards) in the staging folder `out`, manifest last."""
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

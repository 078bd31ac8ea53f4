"""FAISS binary shards: one index per class over the TRAIN prefilter masks (r×r bits).

Rows of a shard are the class's training segments sorted by (bbox area, segment id): the
*size order*. FAISS labels are positions in that order, so the size band of a query, the rows
whose bbox area is within a factor 2 of its own, is one contiguous label range. A flat shard
restricts its search to that range with an `IDSelectorRange`; an IVF shard (FAISS has no
selectors for binary IVF) over-fetches and filters, see `index.search`. The loader maps
positions back to segment ids with the same sort of the store's table, and the manifest keeps a
hash of that order so a changed store can never be paired with an old shard.

Small shards use `IndexBinaryFlat` (exact Hamming); above `ivf_threshold` rows an
`IndexBinaryIVF` with nlist ≈ √n lists, trained on a seeded sample, is used; its nprobe default
(`choose_params`) is recorded in the manifest. An IVF class also gets *size-window sub-shards*
`c{class:04d}.w{j:02d}.faiss`: window j holds the rows of bbox-area octaves j-1..j+1, a contiguous
row range, so a query of octave j finds its whole size band inside window j with little
over-fetch (asking the whole-class IVF for K'·n/|band| hits costs several times more: the cost
of FAISS's result heap grows with k; BENCHMARKS.md, Retrieval). Windows triple the stored
prefilter codes. The Hamming
distance of two r×r masks is the shape term's numerator at low resolution, so the shard's
nearest rows are good candidates for the exact R×R rerank.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ..artifacts import write_bytes_atomic
from ..errors import StageError

IVF_THRESHOLD = 20_000
TRAIN_POINTS_PER_LIST = 32
KMEANS_ITERATIONS = 10
NPROBE_MAX = 48  # lists probed by default in the largest shards (see `choose_params`)


@dataclass(frozen=True)
class ShardParams:
    kind: str  # "flat" | "ivf"
    nlist: int = 0
    nprobe: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def shard_path(folder: Path, class_id: int, window: int | None = None) -> Path:
    """`c0007.faiss` for a class shard; `c0007.w12.faiss` for its size window 12."""
    suffix = "" if window is None else f".w{int(window):02d}"
    return Path(folder) / f"c{int(class_id):04d}{suffix}.faiss"


def size_bins(bbox_area: np.ndarray) -> np.ndarray:
    """Octave of each bbox area: floor(log2 b), exact for integers."""
    return np.frexp(np.asarray(bbox_area, dtype=np.float64))[1].astype(np.int64) - 1


def size_windows(bbox_area_sorted: np.ndarray) -> dict[int, tuple[int, int]]:
    """Row ranges of the size windows of a shard whose rows are in size order.

    Window j holds octaves j-1, j and j+1. A query in octave j has its whole size band
    (b/2, 2b) inside window j, and the band covers about two thirds of the window, so a
    window's IVF needs little over-fetch to return K' rows in the band.
    """
    bins = size_bins(bbox_area_sorted)
    if bins.size == 0:
        return {}
    out = {}
    for j in range(int(bins[0]) - 1, int(bins[-1]) + 2):
        start = int(np.searchsorted(bins, j - 1, "left"))
        stop = int(np.searchsorted(bins, j + 1, "right"))
        if stop > start:
            out[j] = (start, stop)
    return out


def choose_params(n: int, ivf_threshold: int = IVF_THRESHOLD) -> ShardParams:
    """Flat below the threshold; above it ~√n lists (lists of ~√n rows) and nprobe ≈ nlist/6,
    at most `NPROBE_MAX`.

    A query scans nprobe lists of √n rows plus the nlist centroids. With nprobe = nlist/6 that is
    a sixth of the shard, so the cost grows like n; nlist/6 is the recall/time trade-off
    benchmarks/retrieval.py found at N = 100k. Above nlist = 6·NPROBE_MAX (windows of ~80k rows)
    the probe count stops growing, so the cost grows like √n, the length of a list, for a small
    loss of recall (benchmarks/scale.py; the figures of both: BENCHMARKS.md, Retrieval).
    """
    if n < ivf_threshold:
        return ShardParams("flat")
    nlist = int(round(math.sqrt(n)))
    return ShardParams("ivf", nlist=nlist, nprobe=max(8, min(nlist, NPROBE_MAX, int(math.ceil(nlist / 6)))))


def build_shard(codes: np.ndarray, params: ShardParams, *, seed: int = 0) -> faiss.IndexBinary:
    """A FAISS binary index over `codes` (n×B uint8, B·8 bits); labels are row positions."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    d = codes.shape[1] * 8
    if params.kind == "flat":
        index = faiss.IndexBinaryFlat(d)
    else:
        quantizer = faiss.IndexBinaryFlat(d)
        index = faiss.IndexBinaryIVF(quantizer, d, params.nlist)
        index.own_fields = True
        quantizer.this.disown()
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.seed = seed
        n_train = min(codes.shape[0], params.nlist * TRAIN_POINTS_PER_LIST)
        sample = np.random.default_rng(seed).choice(codes.shape[0], n_train, replace=False)
        index.train(codes[np.sort(sample)])
        index.nprobe = params.nprobe
    index.add(codes)
    return index


def write_shard(path: Path, index: faiss.IndexBinary) -> int:
    """Serialize atomically; returns the file's size in bytes."""
    blob = faiss.serialize_index_binary(index).tobytes()
    write_bytes_atomic(path, blob)
    return len(blob)


def read_shard(path: Path, *, n_expected: int, d_expected: int, kind: str) -> faiss.IndexBinary:
    """Load a shard file and check it against its manifest entry."""
    hint = "rerun `resail index build` with --rebuild"
    try:
        blob = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise StageError(f"{path}: cannot read shard ({e}); {hint}") from e
    try:
        index = faiss.deserialize_index_binary(blob)
    except RuntimeError as e:
        raise StageError(f"{path}: corrupt shard file ({str(e).splitlines()[0][:120]}); {hint}") from e
    found = "ivf" if isinstance(index, faiss.IndexBinaryIVF) else "flat"
    if index.ntotal != n_expected or index.d != d_expected or found != kind:
        raise StageError(
            f"{path}: shard holds {index.ntotal} {found} rows of {index.d} bits but the manifest says "
            f"{n_expected} {kind} rows of {d_expected} bits; {hint}"
        )
    return index


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index: faiss.IndexBinary, resources) -> faiss.IndexBinary:
    """A GpuIndexBinaryFlat copy of a flat shard (IVF shards stay on the CPU)."""
    if isinstance(index, faiss.IndexBinaryFlat):
        return faiss.GpuIndexBinaryFlat(resources, index)
    return index

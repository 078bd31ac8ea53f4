"""The baselines' reference data (tests/data/baselines/): reading it, and the weights it was made with.

The reference outputs were computed once by the authors' own code (SPADE, CLADE, the official
RESAIL code) on random weights (tests/data/baselines/README.md). Their weights are not stored:
`reference_state` regenerates them from the file's key listing, each tensor from its key and a
seed through numpy's legacy `RandomState` (whose streams never change), so the test writes the
same file the authors' code loaded and imports it.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from resail.artifacts import write_manifest
from resail.pipeline.labels.classes import class_table
from resail.workdir import WorkDir

DATA = Path(__file__).resolve().parent.parent / "data" / "baselines"


def reference_tensor(key: str, shape: list[int], seed: int = 0) -> torch.Tensor:
    """One tensor of the reference weights, a function of (key, shape, seed) only. Scales keep a
    random generator's output inside tanh's working range, so that a wrong mapping shows."""
    rng = np.random.RandomState((zlib.crc32(key.encode()) + seed) % 2**32)
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return torch.tensor(1000, dtype=torch.int64)
    if name == "running_mean":
        x = 0.1 * rng.standard_normal(shape)
    elif name == "running_var":
        x = rng.uniform(0.5, 2.0, shape)
    elif name in ("weight_u", "weight_v"):
        x = rng.standard_normal(shape)
        x /= np.linalg.norm(x)
    elif key.endswith("class_specified_affine.weight"):
        x = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 4:  # conv weights: variance 1/fan_in (spectral norm rescales its own)
        x = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    else:  # biases, class biases, the RESAIL mixing logits
        x = 0.2 * rng.standard_normal(shape)
    return torch.from_numpy(np.asarray(x, np.float32))


def reference_state(listing: list, seed: int = 0) -> dict[str, torch.Tensor]:
    """The reference weights of a generator, in the authors' key order: [[key, shape], ...] → state dict.
    Each spectral-norm (u, v) pair is power-iterated on its weight, as training leaves it, so that
    W/σ divides by about the largest singular value (random u, v would give a tiny σ)."""
    state = {k: reference_tensor(k, shape, seed) for k, shape in listing}
    for key in [k for k in state if k.endswith(".weight_orig")]:
        prefix = key[: -len("weight_orig")]
        w = state[key].double().reshape(state[key].shape[0], -1)
        u, v = state[prefix + "weight_u"].double(), state[prefix + "weight_v"].double()
        for _ in range(30):
            v = w.t() @ u
            v = v / v.norm()
            u = w @ v
            u = u / u.norm()
        state[prefix + "weight_u"], state[prefix + "weight_v"] = u.float(), v.float()
    return state


def listings() -> dict[str, list]:
    """Each reference generator's key → shape listing, as the authors' module produced it."""
    with gzip.open(DATA / "listings.json.gz", "rt") as f:
        return json.load(f)


def reference() -> tuple[dict, dict[str, np.ndarray]]:
    """(reference.json: cases, options and counts; reference.npz: their inputs and outputs)."""
    meta = json.loads((DATA / "reference.json").read_text())
    with np.load(DATA / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def dataset_work(work: Path, dataset: str) -> Path:
    """A work dir with only a segment manifest of `dataset` (its class table): all an imported,
    guidance-free run needs to generate."""
    table = class_table(dataset)
    write_manifest(WorkDir(work).segments, "segments", {"dataset": dataset},
                   classes={"ids": list(table.ids), "names": list(table.names), "is_thing": list(table.is_thing)})
    return Path(work)

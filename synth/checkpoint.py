"""Checkpoint formats, their file names, listing and loading: the one module that knows them.

A run keeps two kinds of checkpoint in `RUN/checkpoints/`, as edm keeps a light network
snapshot apart from the full training state:

  snapshot-SSSSSSSS.pt  {"format": SNAPSHOT_FORMAT, "config", "step", "G_ema"}
                        G_ema and the run's config: everything inference needs (eval,
                        synthesize, serve load nothing else, and never the trainer)
  state-SSSSSSSS.pt     {"format": STATE_FORMAT, "config", "step", "rng", "G", "D", "G_ema",
                        "opt_G", "opt_D", "scaler"}: everything `--resume` needs

and a segmentation network (`WORK/segnet/{preset}.pt`) one file:

  {"format": SEGNET_FORMAT, "config", "train_config", "step", "metrics", "state_dict", "optimizer"}

`config` is a JSON-able dict (`TrainConfig.to_dict()`, `SegNet.config()`), so every file loads
with `torch.load(weights_only=True)`: tensors and plain containers, never an unpickled object.
Every file is written to a temporary name and renamed, so a crash or a full disk leaves the
previous checkpoints intact; reading checks the "format" field and turns a missing, truncated
or foreign file into one line that names it and the fix.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_path
from ..errors import DiskFullError, InputError
from ..workdir import WorkDir
from .config import TrainConfig
from .generator import Generator, build_generator

SNAPSHOT_FORMAT = "resail-snapshot/1"
STATE_FORMAT = "resail-train-state/1"
SEGNET_FORMAT = "resail-segnet/1"
KINDS = ("snapshot", "state")
_NAME = re.compile(r"^(state|snapshot)-(\d{8})\.pt$")
_STATE_FIX = "delete it to resume from the one before, or start a new run with another --name"


# ---------------------------------------------------------------- files


def read_checkpoint(path: str | Path, fmt: str, map_location="cpu", *, what: str | None = None,
                    missing_fix: str = "", corrupt_fix: str = "") -> dict:
    """The checkpoint dict at `path`, whose "format" field must be `fmt`; one-line errors otherwise.
    `missing_fix` / `corrupt_fix` tell the user what to do in each case."""
    path = Path(path)
    kind = what or fmt.split("/")[0]
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {kind} checkpoint" + (f"; {missing_fix}" if missing_fix else "")) from None
    except Exception as e:
        raise InputError(f"{path}: unreadable or corrupt {kind} checkpoint ({type(e).__name__}: {e})"
                         + (f"; {corrupt_fix}" if corrupt_fix else "")) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise InputError(f"{path}: not a resail {kind} checkpoint (expected format {fmt!r})")
    return ckpt


def write_checkpoint(path: str | Path, ckpt: dict, rerun: str = "rerun with --resume") -> None:
    """torch.save through a temporary file; a full disk is a StageError that says what to do."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    except DiskFullError as e:  # atomic_path's reading of ENOSPC and of torch's "file write failed"
        raise DiskFullError(f"{path}: disk full while writing a checkpoint; the previous checkpoints are intact. "
                            f"Free space and {rerun}") from e


# ---------------------------------------------------------------- a run's checkpoints


def checkpoint_path(run_dir: str | Path, kind: str, step: int) -> Path:
    """RUN/checkpoints/{kind}-{step:08d}.pt, kind 'snapshot' or 'state'."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind {kind!r}: one of {KINDS}")
    return Path(run_dir) / "checkpoints" / f"{kind}-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path, kind: str = "state") -> list[Path]:
    """Checkpoints of one kind ('state' or 'snapshot') in a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and m.group(1) == kind]
    return [p for _, p in sorted(found)]


def latest_snapshot(run_dir: str | Path) -> Path:
    snaps = list_checkpoints(run_dir, "snapshot")
    if not snaps:
        raise InputError(f"{run_dir}: no generator snapshot; train with `resail train` first")
    return snaps[-1]


def find_snapshot(work: str | Path, run: str, checkpoint: str | Path | None = None) -> Path:
    """The snapshot to load: `checkpoint`, else the run's latest (errors name the runs there are)."""
    if checkpoint is not None:
        return Path(checkpoint)
    wd = WorkDir(work)
    if not wd.run(run).is_dir() and wd.runs.is_dir():
        runs = sorted(p.name for p in wd.runs.iterdir() if p.is_dir())
        if runs:
            raise InputError(f"{wd.run(run)}: no such run; runs here: {', '.join(runs)}")
    return latest_snapshot(wd.require_run(run))


def save_run_checkpoint(run_dir: str | Path, step: int, config: dict, G_ema: dict, state: dict, keep: int) -> Path:
    """Write the snapshot, then the full state (`state`: G, D, G_ema, opt_G, opt_D, scaler state
    dicts and "rng") of `step`; then drop all but the newest `keep` of each kind. Returns the state's path."""
    write_checkpoint(checkpoint_path(run_dir, "snapshot", step),
                     {"format": SNAPSHOT_FORMAT, "config": config, "step": step, "G_ema": G_ema})
    path = checkpoint_path(run_dir, "state", step)
    write_checkpoint(path, {"format": STATE_FORMAT, "config": config, "step": step, **state})
    for kind in ("state", "snapshot"):
        for old in list_checkpoints(run_dir, kind)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def read_state(path: str | Path) -> tuple[dict, TrainConfig]:
    """A full training state (on the CPU: RNG states must stay CPU tensors) and its config."""
    ckpt = read_checkpoint(path, STATE_FORMAT, "cpu", corrupt_fix=_STATE_FIX)
    try:
        return ckpt, TrainConfig.from_dict(ckpt["config"])
    except (InputError, KeyError, TypeError) as e:
        raise InputError(f"{path}: checkpoint config unreadable ({e})") from e


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot: G_ema in eval mode without gradients, the run's config and step."""

    path: Path
    step: int
    config: TrainConfig
    G_ema: Generator


def load_snapshot(path: str | Path, device: torch.device | str = "cpu") -> Snapshot:
    """The snapshot at `path` with G_ema on `device`. Use G_ema as
    `G_ema(one_hot(label, config.net.semantic_nc), guidance)` with `label` the B×H×W channel ids of
    the run's label table (`LabelChannels.of(config.net)`) and guidance B×3×H×W in [−1, 1]
    (`synth.inference.LoadedRun` does both)."""
    path = Path(path)
    ckpt = read_checkpoint(path, SNAPSHOT_FORMAT, device, corrupt_fix=_STATE_FIX)
    cfg = TrainConfig.from_dict(ckpt["config"])
    G = build_generator(cfg.net, device)
    try:
        G.load_state_dict(ckpt["G_ema"])
    except RuntimeError as e:
        raise InputError(f"{path}: snapshot tensors do not fit its config ({e})") from e
    return Snapshot(path, int(ckpt["step"]), cfg, G.eval().requires_grad_(False))


# ---------------------------------------------------------------- RNG states (the state's "rng")


def rng_state() -> dict:
    """torch, numpy, Python (and CUDA) generator states as tensors and numbers (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- segmentation networks


def save_segnet_checkpoint(path: str | Path, *, config: dict, train_config: dict, step: int, state_dict: dict,
                           optimizer: dict | None, metrics: dict | None = None) -> None:
    write_checkpoint(path, {"format": SEGNET_FORMAT, "config": config, "train_config": train_config, "step": step,
                            "metrics": metrics or {}, "state_dict": state_dict, "optimizer": optimizer},
                     rerun="run `resail segnet train` again (it resumes)")


def read_segnet_checkpoint(path: str | Path, map_location="cpu") -> dict:
    return read_checkpoint(path, SEGNET_FORMAT, map_location, what="segmentation-network",
                           missing_fix="train one with `resail segnet train`",
                           corrupt_fix="delete it and train again with `resail segnet train`")

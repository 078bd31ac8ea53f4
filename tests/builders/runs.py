"""Tiny networks and runs for the inference tests: minimal-width presets, random G snapshots, and the
two small work dirs that eval, synthesize and serve read.

A random generator stands in for a trained one: these tests check plumbing (label tables, guidance,
files, reproducibility), not image quality, and training even a tiny G would cost more than every
other fixture together. `gain=1.0` makes the random G follow its guidance visibly, which the
resample tests rely on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from resail.pipeline.datasets import make_reader
from resail.synth.checkpoint import SNAPSHOT_FORMAT, checkpoint_path, write_checkpoint
from resail.synth.config import TrainConfig
from resail.synth.generator import build_generator
from resail.synth.inception import FIDInception, randomize_
from resail.synth.presets import NetworkPreset, get_preset
from resail.synth.segnet import SegnetTrainConfig, build_segnet, save_segnet
from resail.synth.weight_init import init_weights
from resail.workdir import WorkDir

from .work import bake_splits, index_work, toy_dataset

TINY_SIZE = 96  # the inference tests' image side: a multiple of 32 (5 ×2 ups) and of 2^5 (U-Net depth)


def tiny_preset(preset: NetworkPreset, **overrides) -> NetworkPreset:
    """`preset` at the same label count, size and upsampling but with minimal widths."""
    small = dict(ngf=2, norm_hidden=4, ndf=4, segnet_channels=(4,) * len(preset.segnet_channels))
    small.update(overrides)
    return dataclasses.replace(preset, **small)


def tiny_train_config(*, n_train: int, size: int = TINY_SIZE, name: str = "tiny") -> TrainConfig:
    """The config of a run `name` of the toy preset at minimal widths and size×size pixels."""
    net = tiny_preset(get_preset("toy"), width=size, height=size, segnet_channels=(4,) * 5)
    return TrainConfig(net=net, preset="toy", name=name, batch_size=2, load_size=(size, size), n_train=n_train)


def write_snapshot(work: Path, cfg: TrainConfig, G: torch.nn.Module, step: int) -> Path:
    """A generator snapshot of run `cfg.name` at `step`, in the format `resail train` writes."""
    path = checkpoint_path(WorkDir(work).run(cfg.name), "snapshot", step)
    write_checkpoint(path, {"format": SNAPSHOT_FORMAT, "config": cfg.to_dict(), "step": step, "G_ema": G.state_dict()})
    return path


def random_snapshot(work: Path, cfg: TrainConfig, step: int) -> Path:
    """A snapshot of a randomly initialised G (seed 0, gain 1: the output visibly follows the guidance)."""
    torch.manual_seed(0)
    return write_snapshot(work, cfg, init_weights(build_generator(cfg.net), gain=1.0), step)


class TinyRun(NamedTuple):
    work: Path        # val baked, run `tiny` (snapshot at step 7), a random segmenter WORK/segnet/toy.pt
    root: Path        # the toy ADE20K dataset
    inception: Path   # random FID Inception weights (timing and plumbing only)


def tiny_run(base: Path, *, n_train: int = 10, n_val: int = 4) -> TinyRun:
    """toy → segments → index → val bake at 96×96, a random tiny G snapshot (run `tiny`, step 7),
    a random segmenter and random Inception weights in BASE/inception.pth."""
    root = toy_dataset(Path(base) / "toy", n_train=n_train, n_val=n_val, size=TINY_SIZE, seed=3)
    work = bake_splits(index_work(root, Path(base) / "work"), ("val",), size=TINY_SIZE, k=5)
    cfg = tiny_train_config(n_train=n_train)
    random_snapshot(work, cfg, step=7)
    save_segnet(WorkDir(work).segnet("toy"), build_segnet(cfg.net), None, 0, SegnetTrainConfig())
    inception = Path(base) / "inception.pth"
    torch.save(randomize_(FIDInception(), seed=1).state_dict(), inception)
    return TinyRun(work, root, inception)


def serve_work(base: Path) -> tuple[Path, np.ndarray]:
    """toy → segments → index at 96×96 and a random tiny G snapshot (run `tiny`, step 3); serve
    retrieves live, so nothing is baked. Returns the work dir and the first val label map."""
    root = toy_dataset(Path(base) / "toy", n_train=10, n_val=2, size=TINY_SIZE, seed=3)
    work = index_work(root, Path(base) / "work")
    random_snapshot(work, tiny_train_config(n_train=10), step=3)
    reader = make_reader("ade20k", root)
    return work, reader.load(reader.records("val")[0]).label_map.astype(np.uint8)

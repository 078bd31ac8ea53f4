"""`resail train`: the training loop (reference §5).

Every step, on one batch (label map m, real x, distorted GT I_d, retrieval guidance I_r):
  G phase   x̂_d = G(m, I_d): GAN + λ_feat·FM + λ_vgg·VGG (+ λ_seg·seg)
            x̂_r = G(m, I_r): GAN (+ λ_seg·seg)                 (skipped with retrieval_loss off)
  D phase   G under no_grad, after its update (as the official trainer):
            hinge_fake(D(m, x̂_d)) + hinge_real(D(m, x)) + hinge_fake(D(m, x̂_r)) + hinge_real(D(m, x))
  EMA       G_ema ← β·G_ema + (1 − β)·G, BN statistics copied

`ResailTrainer` holds the networks, optimisers and the math of one step; `train` is the loop
around it: data, schedule, logs, samples and checkpoints. The learning rate (`get_lr`) and the
EMA rate (`ema_beta`) are pure functions of the step counter, and the data order is one too
(`StepBatchSampler`), so a resumed run needs only the counter and the saved tensors.

Multi-process training (torchrun) follows stylegan3 rather than wrapping modules in DDP: every
rank starts from rank 0's weights, gradients are averaged with one flat all-reduce per phase,
and BatchNorm statistics are synchronised (torch's SyncBatchNorm on GPUs; an all-reduce version
on CPUs, where torch's needs CUDA). Two generator passes per phase and the D freeze during the G
phase stay plain autograd this way, with no unused-parameter bookkeeping.

Checkpoints (`RUN/checkpoints/`), each written to a temp file and renamed, the last N kept:
  snapshot-SSSSSSSS.pt  {"format", "config", "step", "G_ema"}           for eval / synthesize
  state-SSSSSSSS.pt     {"format", "config", "step", "G", "D", "G_ema", "opt_G", "opt_D",
                         "scaler", "rng"}                                 for --resume
Both load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError, StageError
from ..artifacts import atomic_path, write_bytes_atomic, write_json_atomic
from .checkpoint import read_checkpoint as _read
from .config import TrainConfig
from .data import StepBatchSampler, SynthDataset, label_palette, one_hot, to_uint8
from .discriminator import build_discriminator
from .generator import Generator, build_generator
from .labels import LabelChannels
from .losses import SegmentationLoss, VGGLoss, feature_matching, hinge_d_fake, hinge_d_real, hinge_g

log = logging.getLogger(__name__)

STATE_FORMAT = "resail-train-state/1"
SNAPSHOT_FORMAT = "resail-snapshot/1"
_CKPT_RE = re.compile(r"^(state|snapshot)-(\d{8})\.pt$")


# ---------------------------------------------------------------- schedules


def get_lr(step: int, base: float, total_steps: int, decay_start: int) -> float:
    """Constant until `decay_start`, then linear to 0 at `total_steps` (official niter / niter_decay)."""
    if step < decay_start:
        return base
    return base * max(0.0, total_steps - step) / max(1, total_steps - decay_start)


def ema_beta(step: int, decay: float) -> float:
    """EMA rate with a warm-up, so G_ema follows G closely while G changes fast."""
    return min(decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # this call joined the group, so it leaves it at the end


def init_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs), or run alone."""
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Dist()
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
        owned = True
    else:
        owned = False
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), owned)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{d.local_rank}")
    return device


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class ProcessGroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are summed over all processes with a differentiable
    all-reduce: SyncBatchNorm for CPU process groups (gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        n = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n]))
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), m)
                self.num_batches_tracked += 1
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = ProcessGroupBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats, device=device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """One flat all-reduce of every gradient, then ÷ world size (stylegan3's way)."""
    if world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


# ---------------------------------------------------------------- one training step


class ResailTrainer:
    """G, D, G_ema, their optimisers and the math of one step (reference §5.1–5.3)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, d: Dist = Dist(), *,
                 vgg: VGGLoss | None = None, seg: SegmentationLoss | None = None):
        self.cfg, self.device, self.dist = cfg, device, d
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.G = build_generator(cfg.net, device)
        self.D = build_discriminator(cfg.net, device)
        self.G_ema = build_generator(cfg.net, device).requires_grad_(False).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        if d.world_size > 1:
            self.G = sync_batchnorm(self.G, device)
            for t in [*self.G.state_dict().values(), *self.D.state_dict().values()]:
                dist.broadcast(t, 0)
        self.channels_last = device.type == "cuda"
        if self.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
        if amp != "off" and device.type != "cuda":
            raise InputError(f"amp {amp!r} needs a GPU; use --amp off (or auto) on the CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.vgg = vgg.to(device) if vgg is not None else None
        self.seg = seg.to(device) if seg is not None else None
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_G, betas=(cfg.beta1, cfg.beta2))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_D, betas=(cfg.beta1, cfg.beta2))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Batch tensors on the device: `label_map` one-hot, images B×3×H×W."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        out = {"label_map": one_hot(batch["label"].to(self.device, non_blocking=True), self.cfg.net.semantic_nc)}
        for k in ("image", "guidance", "distorted"):
            if k in batch:
                out[k] = batch[k].to(self.device, non_blocking=True)
        return {k: v.contiguous(memory_format=fmt) for k, v in out.items()}

    def generator_loss(self, x: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, m, real = self.cfg, x["label_map"], x["image"]
        terms = {}
        with self._autocast():
            fake_d = self.G(m, x["distorted"])
            out_fake = self.D(m, fake_d)
            with torch.no_grad():
                out_real = self.D(m, real)
            terms["G_gan_d"] = hinge_g(out_fake)
            terms["G_fm"] = feature_matching(out_fake, out_real)
            if self.vgg is not None:
                terms["G_vgg"] = self.vgg(fake_d.float(), real.float())
            if self.seg is not None:
                terms["G_seg_d"] = self.seg(fake_d, m)
            if cfg.retrieval_loss:
                fake_r = self.G(m, x["guidance"])
                terms["G_gan_r"] = hinge_g(self.D(m, fake_r))
                if self.seg is not None:
                    terms["G_seg_r"] = self.seg(fake_r, m)
        weight = {"G_fm": cfg.lambda_feat, "G_vgg": cfg.lambda_vgg, "G_seg_d": cfg.lambda_seg, "G_seg_r": cfg.lambda_seg}
        total = sum(weight.get(k, 1.0) * v.float() for k, v in terms.items())
        return total, terms

    def discriminator_loss(self, x: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = x["label_map"]
        terms = {}
        with self._autocast():
            with torch.no_grad():
                fake_d = self.G(m, x["distorted"])
                fake_r = self.G(m, x["guidance"]) if self.cfg.retrieval_loss else None
            terms["D_real"] = hinge_d_real(self.D(m, x["image"]))
            terms["D_fake_d"] = hinge_d_fake(self.D(m, fake_d))
            total = terms["D_real"].float() + terms["D_fake_d"].float()
            if fake_r is not None:
                terms["D_fake_r"] = hinge_d_fake(self.D(m, fake_r))
                total = total + terms["D_fake_r"].float() + terms["D_real"].float()  # the real term counts twice
        return total, terms

    def _update(self, loss: torch.Tensor, net: nn.Module, opt: torch.optim.Optimizer, lr: float) -> None:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        average_gradients([p for p in net.parameters() if p.requires_grad], self.dist.world_size)
        self.scaler.step(opt)

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One G step, one D step and the EMA update; returns the loss terms (detached)."""
        cfg = self.cfg
        x = self.inputs(batch)
        self.G.train()
        self.D.train()

        self.D.requires_grad_(False)
        loss_G, terms = self.generator_loss(x)
        self._update(loss_G, self.G, self.opt_G, get_lr(step, cfg.lr_G, cfg.total_steps, cfg.decay_start))
        self.D.requires_grad_(True)

        loss_D, terms_D = self.discriminator_loss(x)
        self._update(loss_D, self.D, self.opt_D, get_lr(step, cfg.lr_D, cfg.total_steps, cfg.decay_start))
        self.scaler.update()

        self.update_ema(step)
        terms.update(terms_D)
        terms["G"], terms["D"] = loss_G, loss_D
        return {k: v.detach().float() for k, v in terms.items()}

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        beta = ema_beta(step, self.cfg.ema_decay) if self.cfg.ema else 0.0
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1.0 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path, kind: str = "state") -> list[Path]:
    """Checkpoints of one kind ('state' or 'snapshot') in a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name)) and m.group(1) == kind]
    return [p for _, p in sorted(found)]


def latest_snapshot(run_dir: str | Path) -> Path:
    snaps = list_checkpoints(run_dir, "snapshot")
    if not snaps:
        raise InputError(f"{run_dir}: no generator snapshot; train with `resail train` first")
    return snaps[-1]


def _save(path: Path, obj: dict) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise StageError(f"{path}: disk full while writing a checkpoint; the previous checkpoints are intact. "
                         "Free space and rerun with --resume") from e


def save_checkpoint(run_dir: Path, trainer: ResailTrainer, step: int, keep: int) -> Path:
    """Write snapshot + full state for `step`, then drop all but the newest `keep` of each."""
    folder = run_dir / "checkpoints"
    config = trainer.cfg.to_dict()
    _save(folder / f"snapshot-{step:08d}.pt", {"format": SNAPSHOT_FORMAT, "config": config, "step": step,
                                                "G_ema": trainer.G_ema.state_dict()})
    path = folder / f"state-{step:08d}.pt"
    _save(path, {"format": STATE_FORMAT, "config": config, "step": step, "rng": _rng_state(),
                 **trainer.state_dict()})
    for kind in ("state", "snapshot"):
        for old in list_checkpoints(run_dir, kind)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | Path, fmt: str, map_location="cpu") -> dict:
    return _read(path, fmt, map_location, corrupt_fix="delete it to resume from the one before, or start a "
                 "new run with another --name")


def load_state(path: Path, trainer: ResailTrainer) -> int:
    """Restore a full state into `trainer` (after checking it belongs to the same run); returns its step."""
    ckpt = read_checkpoint(path, STATE_FORMAT, "cpu")  # RNG states must stay CPU tensors
    try:
        saved = TrainConfig.from_dict(ckpt["config"])
    except (InputError, KeyError, TypeError) as e:
        raise InputError(f"{path}: checkpoint config unreadable ({e})") from e
    want, have = trainer.cfg.resume_key(), saved.resume_key()
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {have.get(k)!r} vs now {want.get(k)!r}" for k in diff[:4])
        raise InputError(f"{path}: checkpoint of a different configuration (preset {saved.preset!r}; {detail}); "
                         "resume with the run's own settings or start a new run with another --name")
    try:
        trainer.load_state_dict(ckpt)
    except (RuntimeError, KeyError, ValueError) as e:
        raise InputError(f"{path}: checkpoint tensors do not fit the networks ({e})") from e
    if trainer.dist.rank == 0:
        _set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def load_snapshot(path: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, TrainConfig]:
    """G_ema of a snapshot, in eval mode, with the run's config. Use it as
    `G(one_hot(label, cfg.net.semantic_nc), guidance)` with `label` the B×H×W channel ids of the
    run's label table (`LabelChannels.of(cfg.net).to_channels(native_ids, where)`) and guidance
    B×3×H×W in [−1, 1]."""
    ckpt = read_checkpoint(path, SNAPSHOT_FORMAT, device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    G = build_generator(cfg.net, device)
    try:
        G.load_state_dict(ckpt["G_ema"])
    except RuntimeError as e:
        raise InputError(f"{path}: snapshot tensors do not fit its config ({e})") from e
    return G.eval().requires_grad_(False), cfg


# ---------------------------------------------------------------- samples and stats


@torch.no_grad()
def write_sample_grid(path: Path, trainer: ResailTrainer, batch: dict, palette: np.ndarray) -> None:
    """Rows of label (colourised) | guidance | distorted GT | G_ema(label, guidance) | real."""
    x = trainer.inputs(batch)
    out = trainer.G_ema(x["label_map"], x["guidance"])
    native = LabelChannels.of(trainer.cfg.net).to_native(batch["label"].numpy())
    label = palette[np.clip(native, 0, len(palette) - 1)]
    cols = [label, to_uint8(batch["guidance"]), to_uint8(batch["distorted"]), to_uint8(out), to_uint8(batch["image"])]
    grid = np.concatenate([np.concatenate(row, axis=1) for row in zip(*cols)], axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    write_bytes_atomic(path, png.tobytes())


def _open_tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("tensorboard is not installed; logging to stats.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _trim_stats(path: Path, step: int) -> None:
    """Drop the ticks logged after `step` (a crash after them lost their training), so a
    resumed run's stats.jsonl reads as one run."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_bytes_atomic(path, "".join(r + "\n" for r in rows).encode())


def _append_stats(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- the loop


def build_losses(cfg: TrainConfig, device: torch.device) -> tuple[VGGLoss | None, SegmentationLoss | None]:
    """The frozen VGG19 and segmentation networks the config asks for (clear errors when missing)."""
    from .segnet import load_segnet

    vgg = VGGLoss.pretrained(cfg.vgg_weights) if cfg.vgg else None
    seg = None
    if cfg.seg_loss:
        segnet = load_segnet(cfg.segnet, device)
        if segnet.num_classes != cfg.net.semantic_nc:
            raise InputError(f"--segnet {cfg.segnet}: {segnet.num_classes} classes, but preset {cfg.preset!r} has "
                             f"{cfg.net.semantic_nc} label channels; train a segmentation network for this dataset")
        if segnet.label_channels() != LabelChannels.of(cfg.net):
            raise InputError(f"--segnet {cfg.segnet}: its classes are another label table than preset "
                             f"{cfg.preset!r}'s (label_ids); train one with `resail segnet train --preset "
                             f"{cfg.preset}` (same label_ids)")
        seg = SegmentationLoss(segnet, ignore_index=0)
    return vgg, seg


def train(cfg: TrainConfig, work: str | Path, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train (or with `resume`, continue) the run `WORK/runs/cfg.name`. `stop_after` ends this
    session after that many total steps, with a checkpoint, as an interruption would.
    Returns a summary: steps, seconds, samples/s, the last tick's stats and the run folder."""
    work = Path(work)
    probe = torch.device(cfg.device) if cfg.device != "auto" else None
    d = init_distributed("cuda" if (probe is None and torch.cuda.is_available()) or (probe and probe.type == "cuda")
                         else "cpu")
    device = pick_device(cfg.device, d)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank0 = d.rank == 0
    run_dir = work / "runs" / cfg.name
    states = list_checkpoints(run_dir, "state")
    if states and not resume:
        raise InputError(f"{run_dir} already holds checkpoints (last: {states[-1].name}); pass --resume to continue "
                         "it or --name for a new run")
    if resume and not states:
        raise InputError(f"--resume: {run_dir} holds no training state to resume from")

    dataset = SynthDataset(work, "train", cfg)
    if len(dataset) != cfg.n_train:
        raise InputError(f"{work}: {len(dataset)} training images, but the config was resolved for {cfg.n_train}")
    vgg, seg = build_losses(cfg, device)
    trainer = ResailTrainer(cfg, device, d, vgg=vgg, seg=seg)
    step = load_state(states[-1], trainer) if resume else 0
    if resume and rank0:
        log.info("resumed %s at step %d", states[-1], step)
    torch.manual_seed(cfg.seed + 1_000_003 * d.rank + step)  # nothing random in the step yet; per-rank anyway

    end = cfg.total_steps if stop_after is None else min(cfg.total_steps, stop_after)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed, total_steps=end, start_step=step,
                               rank=d.rank, world_size=d.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
        _trim_stats(run_dir / "stats.jsonl", step)
        (run_dir / "samples").mkdir(exist_ok=True)
        sample_set = SynthDataset(work, "train", cfg, train=False, with_distorted=True)
        sample_batch = torch.utils.data.default_collate([sample_set[i] for i in range(min(cfg.n_sample, len(sample_set)))])
        sample_set.close()
        palette = label_palette(dataset.dataset)
        tb = _open_tensorboard(run_dir, cfg.tensorboard)

    stats_path = run_dir / "stats.jsonl"
    tick: dict[str, float] = {}
    tick_steps, last_row = 0, {}
    t_start = t_tick = time.perf_counter()
    start_step = step
    bar = tqdm(total=cfg.total_steps, initial=step, unit="step", desc=f"train {cfg.name}",
               disable=not (progress and rank0), dynamic_ncols=True)
    try:
        for batch in loader:
            terms = trainer.step(batch, step)
            names = sorted(terms)
            values = torch.stack([terms[k] for k in names])
            if d.world_size > 1:
                dist.all_reduce(values)
                values /= d.world_size
            values = values.tolist()
            bad = [k for k, v in zip(names, values) if not np.isfinite(v)]
            if bad:
                kept = list_checkpoints(run_dir, "state")
                raise StageError(f"non-finite loss {', '.join(bad)} at step {step}; stopped. The last good checkpoint "
                                 f"is {kept[-1] if kept else 'none (no checkpoint yet)'}; lower the learning rates "
                                 "or check the data, then --resume")
            step += 1
            tick_steps += 1
            for k, v in zip(names, values):
                tick[k] = tick.get(k, 0.0) + v
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                now = time.perf_counter()
                last_row = {"step": step, "epoch": (step - 1) // cfg.steps_per_epoch,
                            "time_s": round(now - t_start, 3), "sec_per_step": (now - t_tick) / tick_steps,
                            "samples_per_s": tick_steps * cfg.batch_size / (now - t_tick),
                            "lr_G": get_lr(step - 1, cfg.lr_G, cfg.total_steps, cfg.decay_start),
                            "lr_D": get_lr(step - 1, cfg.lr_D, cfg.total_steps, cfg.decay_start),
                            **{k: v / tick_steps for k, v in tick.items()}}
                if rank0:
                    _append_stats(stats_path, last_row)
                    bar.set_postfix(G=f"{last_row['G']:.3f}", D=f"{last_row['D']:.3f}")
                    if tb is not None:
                        for k, v in last_row.items():
                            tb.add_scalar(k, v, step)
                tick, tick_steps, t_tick = {}, 0, now
            if rank0 and (step % cfg.sample_every == 0 or step == end):
                write_sample_grid(run_dir / "samples" / f"{step:08d}.png", trainer, sample_batch, palette)
            if rank0 and (step % cfg.checkpoint_every == 0 or step == end):
                save_checkpoint(run_dir, trainer, step, cfg.keep_checkpoints)
    except KeyboardInterrupt:
        if rank0 and step > start_step:
            save_checkpoint(run_dir, trainer, step, cfg.keep_checkpoints)
            log.warning("interrupted at step %d; checkpoint written, continue with --resume", step)
        raise
    finally:
        bar.close()
        dataset.close()
        if rank0 and tb is not None:
            tb.close()
        if d.owned:
            dist.destroy_process_group()
    seconds = time.perf_counter() - t_start
    done = step - start_step
    return {"run_dir": str(run_dir), "steps": step, "steps_this_session": done, "seconds": round(seconds, 3),
            "samples_per_s": done * cfg.batch_size / seconds if seconds > 0 else 0.0, "last": last_row,
            "complete": step >= cfg.total_steps}


def dry_run(cfg: TrainConfig, work: str | Path) -> Path:
    """Write the resolved config to the run folder and stop there."""
    path = Path(work) / "runs" / cfg.name / "config.json"
    write_json_atomic(path, cfg.to_dict())
    return path

"""`resail train`: the training loop (docs/method.md §5).

Every step, on one batch (label map m, real x, distorted GT I_d, retrieval guidance I_r):
  G phase   x̂_d = G(m, I_d): GAN + λ_feat·FM + λ_vgg·VGG (+ λ_seg·seg)
            x̂_r = G(m, I_r): GAN (+ λ_seg·seg)                 (skipped with retrieval_loss off)
  D phase   G under no_grad, after its update (as the official trainer):
            hinge_fake(D(m, x̂_d)) + hinge_real(D(m, x)) + hinge_fake(D(m, x̂_r)) + hinge_real(D(m, x))
  EMA       G_ema ← β·G_ema + (1 − β)·G, BN statistics copied

With a baseline norm (`--norm spade|clade|clade-icpe`, docs/baselines.md) the same step trains
the authors' generator: m then ends with SPADE's instance edge map where the network takes it,
CLADE-ICPE also reads the positional maps, and a norm that reads no guidance makes x̂_d and x̂_r
the same image.

In each phase D sees [x̂_d; x̂_r; x] concatenated in one call, as the official trainer feeds it
fake and real together (it makes one call per fake, with x twice; one call of 3B runs x once).
D is batch-independent (per-sample InstanceNorm, no BatchNorm), so every slice equals its own
call; what changes is one kernel launch per layer instead of three, and one spectral-norm power
iteration per phase instead of three (the official code does two). In the G phase the real rows
ride along through D's backward pass, which costs input-gradient work the three-call path skipped
(BENCHMARKS.md has the CPU figures).

Precision: `--amp bf16` autocasts both phases to bfloat16 (the default on GPUs; on CPUs it runs
but is slower than fp32 without bf16 instructions, so `auto` leaves it off there), and
`channels_last` stores weights and activations NHWC (the layout tensor cores want; default on
GPUs only). Both are tested on the CPU against fp32 (tests/test_train.py).

`ResailTrainer` holds the networks, optimisers and the math of one step; `train` is the loop
around it, a flat sequence of phases as in edm's training loop: setup (processes, run folder,
data, networks, resume point), then per step the update, logging (one `stats.jsonl` row per
tick), samples and checkpoints. The learning rate (`get_lr`) and the EMA rate (`ema_beta`) are
pure functions of the step counter, and the data order is one too (`StepBatchSampler`), so a
resumed run needs only the counter and the saved tensors.

Stopping: SIGINT, SIGTERM and SIGUSR1 end the loop after the current step with a checkpoint
(`StopSignals`, synth/distributed.py); the summary names the signal. A crash or SIGKILL resumes
from the last periodic checkpoint. `--resume` with another schedule length extends (or
shortens) the run: `get_lr` over the new total, the change appended to the config's `history`
and logged as an `"event": "schedule"` row in stats.jsonl.

Multi-process training (torchrun) lives in synth/distributed.py: rank 0's weights everywhere,
one flat gradient all-reduce per phase, synchronised BatchNorm, and only rank 0 writes.
Checkpoints (a snapshot for inference and the full state for --resume, written atomically, the
last N kept) are synth/checkpoint.py's formats; this module only decides when to write them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..artifacts import write_bytes_atomic, write_json_atomic, write_png_atomic
from ..errors import InputError, StageError
from ..pipeline.labels.classes import palette_lut
from ..pipeline.labels.spaces import LabelChannels
from ..workdir import WorkDir
from .checkpoint import list_checkpoints, read_state, rng_state, save_run_checkpoint, set_rng_state
from .config import TrainConfig
from .data import StepBatchSampler, SynthDataset, label_input, to_uint8
from .discriminator import build_discriminator
from .distributed import (
    Dist,
    StopSignals,
    agree_on_stop,
    average_gradients,
    broadcast_from_rank0,
    init_distributed,
    init_loader_worker,
    mean_over_processes,
    resolve_device,
    shutdown,
    sync_batchnorm,
)
from .generator import build_generator
from .losses import SegmentationLoss, VGGLoss, feature_matching, hinge_d_fake, hinge_d_real, hinge_g

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- schedules


def get_lr(step: int, base: float, total_steps: int, decay_start: int) -> float:
    """Constant until `decay_start`, then linear to 0 at `total_steps` (official niter / niter_decay)."""
    if step < decay_start:
        return base
    return base * max(0.0, total_steps - step) / max(1, total_steps - decay_start)


def ema_beta(step: int, decay: float) -> float:
    """EMA rate with a warm-up, so G_ema follows G closely while G changes fast."""
    return min(decay, (1 + step) / (10 + step))


# ---------------------------------------------------------------- precision


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (None = fp32). `auto` is bf16 on GPUs and off on
    CPUs (bf16 runs there, slower than fp32 without bf16 instructions). fp16 on the CPU is
    refused: it needs loss scaling and CPUs have no fast fp16 kernels; bf16 needs neither."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "fp16" and device.type != "cuda":
        raise InputError("--amp fp16 needs a GPU (on the CPU fp16 needs loss scaling and has no fast kernels); "
                         "use --amp bf16 (fp32's range, no scaling) or --amp off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


# ---------------------------------------------------------------- one training step


class ResailTrainer:
    """G, D, G_ema, their optimisers and the math of one step (docs/method.md §5.1–5.3)."""

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
            broadcast_from_rank0([*self.G.state_dict().values(), *self.D.state_dict().values()])
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
        if self.channels_last:
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.vgg = vgg.to(device) if vgg is not None else None
        self.seg = seg.to(device) if seg is not None else None
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_G, betas=(cfg.beta1, cfg.beta2))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_D, betas=(cfg.beta1, cfg.beta2))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """Batch tensors on the device: `label_map` one-hot (+ the edge map), images B×3×H×W, and
        CLADE-ICPE's positional maps `dist` when the network reads them."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        edges = batch["edges"].to(self.device, non_blocking=True) if self.cfg.net.edges else None
        out = {"label_map": label_input(self.cfg.net, batch["label"].to(self.device, non_blocking=True), edges)}
        for k in ("image", "guidance", "distorted") + (("dist",) if self.cfg.net.icpe else ()):
            if k in batch:
                out[k] = batch[k].to(self.device, non_blocking=True)
        return {k: v.contiguous(memory_format=fmt) for k, v in out.items()}

    @staticmethod
    def fake(G: nn.Module, x: dict, guidance: str) -> torch.Tensor:
        """G on the batch's label map with the guidance `x[guidance]` (and the positional maps)."""
        return G(x["label_map"], x[guidance], x.get("dist"))

    def discriminate(self, m: torch.Tensor, fakes: list[torch.Tensor],
                     real: torch.Tensor) -> tuple[list[list[list[torch.Tensor]]], list[list[torch.Tensor]]]:
        """D on [fakes…; real] in one call; returns D's outputs per fake and for the real batch,
        each sliced back to B rows (per scale, [features…, logits])."""
        n = real.shape[0]
        outs = self.D(torch.cat([m] * (len(fakes) + 1)), torch.cat([*fakes, real]))  # (k+1)B×…
        parts = [[[f[i * n:(i + 1) * n] for f in scale] for scale in outs] for i in range(len(fakes) + 1)]
        return parts[:-1], parts[-1]

    def generator_loss(self, x: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, m, real = self.cfg, x["label_map"], x["image"]
        terms = {}
        with self._autocast():
            fakes = [self.fake(self.G, x, "distorted")]
            if cfg.retrieval_loss:
                fakes.append(self.fake(self.G, x, "guidance"))
            (out_d, *out_r), out_real = self.discriminate(m, fakes, real)
            fake_d = fakes[0]
            labels = m[:, :cfg.net.semantic_nc]  # the one-hot map, without the edge map
            terms["G_gan_d"] = hinge_g(out_d)
            terms["G_fm"] = feature_matching(out_d, out_real)  # the real features are detached
            if self.vgg is not None:
                terms["G_vgg"] = self.vgg(fake_d.float(), real.float())
            if self.seg is not None:
                terms["G_seg_d"] = self.seg(fake_d, labels)
            if out_r:
                terms["G_gan_r"] = hinge_g(out_r[0])
                if self.seg is not None:
                    terms["G_seg_r"] = self.seg(fakes[1], labels)
        weight = {"G_fm": cfg.lambda_feat, "G_vgg": cfg.lambda_vgg, "G_seg_d": cfg.lambda_seg,
                  "G_seg_r": cfg.lambda_seg}
        total = sum(weight.get(k, 1.0) * v.float() for k, v in terms.items())
        return total, terms

    def discriminator_loss(self, x: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = x["label_map"]
        terms = {}
        with self._autocast():
            with torch.no_grad():
                fakes = [self.fake(self.G, x, "distorted")]
                if self.cfg.retrieval_loss:
                    fakes.append(self.fake(self.G, x, "guidance"))
            (out_d, *out_r), out_real = self.discriminate(m, fakes, x["image"])
            terms["D_real"] = hinge_d_real(out_real)
            terms["D_fake_d"] = hinge_d_fake(out_d)
            total = terms["D_real"].float() + terms["D_fake_d"].float()
            if out_r:
                terms["D_fake_r"] = hinge_d_fake(out_r[0])
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


def resume_config(cfg: TrainConfig, saved: TrainConfig, step: int, path: Path) -> TrainConfig:
    """`cfg` for continuing the checkpoint at `path` (config `saved`, at `step`). Changes to the
    model or the data are refused; a new schedule length is appended to `history`."""
    want, have = cfg.resume_key(), saved.resume_key()
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {have.get(k)!r} vs now {want.get(k)!r}" for k in diff[:4])
        raise InputError(f"{path}: checkpoint of a different configuration (preset {saved.preset!r}; {detail}); "
                         "resume with the run's own settings or start a new run with another --name")
    history = saved.history
    if (cfg.total_steps, cfg.decay_start) != (saved.total_steps, saved.decay_start):
        if cfg.total_steps <= step:
            raise InputError(f"{path}: the run is already at step {step}, where a {cfg.total_steps}-step schedule "
                             "has ended; pass a larger --steps (or --epochs) to extend it")
        history += ({"step": step, "steps_before": saved.total_steps, "steps_after": cfg.total_steps,
                     "decay_start": cfg.decay_start},)
    return dataclasses.replace(cfg, history=history)


def load_state(ckpt: dict, trainer: ResailTrainer, path: Path) -> int:
    """Restore the full state `ckpt` (read from `path`) into `trainer`; returns its step."""
    try:
        trainer.load_state_dict(ckpt)
    except (RuntimeError, KeyError, ValueError) as e:
        raise InputError(f"{path}: checkpoint tensors do not fit the networks ({e})") from e
    if trainer.dist.rank0:
        set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


# ---------------------------------------------------------------- setup


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
        void = None if cfg.recipe == "official" else 0  # the official loss counts void as a class
        seg = SegmentationLoss(segnet, ignore_index=void)
    return vgg, seg


def _processes(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    """This process's place in the group torchrun describes, and its device."""
    d = init_distributed(cfg.device)
    device = resolve_device(cfg.device, d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return d, device


def _resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The full state to resume from (None for a new run); refuses to mix up new and old runs."""
    states = list_checkpoints(run_dir, "state")
    if states and not resume:
        raise InputError(f"{run_dir} already holds checkpoints (last: {states[-1].name}); pass --resume to continue "
                         "it or --name for a new run")
    if resume and not states:
        raise InputError(f"--resume: {run_dir} holds no training state to resume from")
    return states[-1] if resume else None


def _training_set(work: Path, cfg: TrainConfig) -> SynthDataset:
    dataset = SynthDataset(work, "train", cfg)
    if len(dataset) != cfg.n_train:
        raise InputError(f"{work}: {len(dataset)} training images, but the config was resolved for {cfg.n_train}")
    return dataset


def _loader(dataset: SynthDataset, cfg: TrainConfig, d: Dist, device: torch.device, step: int,
            end: int) -> torch.utils.data.DataLoader:
    """Batches of steps `step`..`end` − 1 for this process (the order is a function of the step)."""
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed, total_steps=end, start_step=step,
                               rank=d.rank, world_size=d.world_size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                       pin_memory=device.type == "cuda", persistent_workers=False,
                                       worker_init_fn=init_loader_worker)


# ---------------------------------------------------------------- logging and samples


class Ticks:
    """Loss sums since the last stats row; `row` turns them into the tick's means and timings."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.t_start = self.t_tick = time.perf_counter()

    def add(self, losses: dict[str, float]) -> None:
        self.steps += 1
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def row(self, step: int) -> dict:
        cfg, now, n = self.cfg, time.perf_counter(), self.steps
        row = {"step": step, "epoch": (step - 1) // cfg.steps_per_epoch,
               "time_s": round(now - self.t_start, 3), "sec_per_step": (now - self.t_tick) / n,
               "samples_per_s": n * cfg.batch_size / (now - self.t_tick),
               "lr_G": get_lr(step - 1, cfg.lr_G, cfg.total_steps, cfg.decay_start),
               "lr_D": get_lr(step - 1, cfg.lr_D, cfg.total_steps, cfg.decay_start),
               **{k: v / n for k, v in self.sums.items()}}
        self.sums, self.steps, self.t_tick = {}, 0, now
        return row


@torch.no_grad()
def write_sample_grid(path: Path, trainer: ResailTrainer, batch: dict, palette: np.ndarray) -> None:
    """Rows of label (colourised) | guidance | distorted GT | G_ema(label, guidance) | real."""
    x = trainer.inputs(batch)
    out = trainer.fake(trainer.G_ema, x, "guidance")
    native = LabelChannels.of(trainer.cfg.net).to_native(batch["label"].numpy())
    label = palette[np.clip(native, 0, len(palette) - 1)]
    cols = [label, to_uint8(batch["guidance"]), to_uint8(batch["distorted"]), to_uint8(out), to_uint8(batch["image"])]
    write_png_atomic(path, np.concatenate([np.concatenate(row, axis=1) for row in zip(*cols)], axis=0))


class RunOutputs:
    """What rank 0 writes into the run folder: config.json, stats.jsonl (+ TensorBoard), sample
    grids of a fixed batch. Opening trims the rows logged after the resume point (a crash after
    them lost their training) and a schedule event at it (it is logged again), so a resumed
    run's stats.jsonl reads as one run."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, work: Path, dataset: str, step: int):
        self.run_dir, self.stats = run_dir, run_dir / "stats.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
        self._trim_stats(step)
        (run_dir / "samples").mkdir(exist_ok=True)
        sample_set = SynthDataset(work, "train", cfg, train=False, with_distorted=True)
        self.sample_batch = torch.utils.data.default_collate(
            [sample_set[i] for i in range(min(cfg.n_sample, len(sample_set)))])
        sample_set.close()
        self.palette = palette_lut(dataset, 65536)
        self.tb = self._open_tensorboard(cfg.tensorboard)

    def _trim_stats(self, step: int) -> None:
        if not self.stats.exists():
            return
        rows = [line for line in self.stats.read_text().splitlines() if line.strip()]
        rows = [r for r, row in zip(rows, map(json.loads, rows))
                if row["step"] < step or (row["step"] == step and "event" not in row)]
        write_bytes_atomic(self.stats, "".join(r + "\n" for r in rows).encode())

    def _open_tensorboard(self, enabled: bool):
        if not enabled:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug("tensorboard is not installed; logging to stats.jsonl only")
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, row: dict, bar) -> None:
        with open(self.stats, "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix(G=f"{row['G']:.3f}", D=f"{row['D']:.3f}")
        if self.tb is not None:
            for k, v in row.items():
                self.tb.add_scalar(k, v, row["step"])

    def event(self, row: dict) -> None:
        """A stats row that is not a tick (e.g. a schedule change): it has "event" and "step"."""
        with open(self.stats, "a") as f:
            f.write(json.dumps(row) + "\n")

    def sample(self, trainer: ResailTrainer, step: int) -> None:
        write_sample_grid(self.run_dir / "samples" / f"{step:08d}.png", trainer, self.sample_batch, self.palette)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _check_finite(losses: dict[str, float], step: int, run_dir: Path) -> None:
    bad = [k for k, v in losses.items() if not np.isfinite(v)]
    if bad:
        kept = list_checkpoints(run_dir, "state")
        raise StageError(f"non-finite loss {', '.join(bad)} at step {step}; stopped. The last good checkpoint "
                         f"is {kept[-1] if kept else 'none (no checkpoint yet)'}; lower the learning rates "
                         "or check the data, then --resume")


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, work: str | Path, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> dict:
    """Train (or with `resume`, continue or extend) the run `WORK/runs/cfg.name`. `stop_after`
    ends this session after that many total steps, with a checkpoint, as an interruption would.
    Returns a summary: steps (the run's), steps_this_session, total_steps, seconds, samples/s,
    the last tick's stats, the run folder, complete, and stopped_by (the signal's name or None)."""
    work = Path(work)
    with contextlib.ExitStack() as cleanup:  # what setup opened is closed however the session ends
        # ---- setup: processes and device, the run folder and its lock, the resume point, data, networks
        d, device = _processes(cfg)
        cleanup.callback(shutdown, d)
        wd = WorkDir(work)
        run_dir = wd.run(cfg.name)
        if d.rank0:  # one training process per run: its lock before reading the run's state
            cleanup.callback(wd.lock_run(cfg.name).release)
        resume_from = _resume_point(run_dir, resume)
        if d.rank0:  # records what it trains on (lineage.json)
            cleanup.callback(wd.claim_run(cfg.name, resuming=resume_from is not None).release)
        state, extended = None, None
        if resume_from is not None:
            state, saved = read_state(resume_from)
            cfg = resume_config(cfg, saved, int(state["step"]), resume_from)
            extended = cfg.history[-1] if len(cfg.history) > len(saved.history) else None
        dataset = _training_set(work, cfg)
        cleanup.callback(dataset.close)
        vgg, seg = build_losses(cfg, device)
        trainer = ResailTrainer(cfg, device, d, vgg=vgg, seg=seg)
        step = start_step = load_state(state, trainer, resume_from) if state is not None else 0
        if resume_from and d.rank0:
            log.info("resumed %s at step %d", resume_from, step)
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank + step)  # nothing random in the step yet; per-rank anyway
        end = cfg.total_steps if stop_after is None else min(cfg.total_steps, stop_after)
        loader = _loader(dataset, cfg, d, device, step, end)
        outputs = RunOutputs(run_dir, cfg, work, dataset.dataset, step) if d.rank0 else None
        if outputs is not None:
            cleanup.callback(outputs.close)
        if extended is not None and outputs is not None:
            outputs.event({"step": step, "event": "schedule", **extended})
            log.info("run extended at step %d: %d -> %d steps, lr decay from step %d", step,
                     extended["steps_before"], extended["steps_after"], extended["decay_start"])
        ticks, last_row, stopped = Ticks(cfg), {}, 0
        bar = cleanup.enter_context(tqdm(total=cfg.total_steps, initial=step, unit="step", desc=f"train {cfg.name}",
                                         disable=not (progress and d.rank0), dynamic_ncols=True))
        stop = cleanup.enter_context(StopSignals())
        for batch in loader:
            # ---- one step: G phase, D phase, EMA (the math is ResailTrainer's)
            losses = mean_over_processes(trainer.step(batch, step), d)
            _check_finite(losses, step, run_dir)
            step += 1
            ticks.add(losses)
            bar.update(1)
            # ---- logging: one stats row per tick, written by rank 0
            if step % cfg.log_every == 0 or step == end:
                last_row = ticks.row(step)
                if outputs is not None:
                    outputs.log(last_row, bar)
            # ---- a stop signal on any process stops every one after this step
            stopped = agree_on_stop(stop.signum, d, device) if step < end else 0
            # ---- samples and checkpoints, by rank 0
            if outputs is not None and (step % cfg.sample_every == 0 or step == end):
                outputs.sample(trainer, step)
            if d.rank0 and (step % cfg.checkpoint_every == 0 or step == end or stopped):
                save_run_checkpoint(run_dir, step, cfg.to_dict(), trainer.G_ema.state_dict(),
                                    {"rng": rng_state(), **trainer.state_dict()}, cfg.keep_checkpoints)
            if stopped:
                if d.rank0:
                    log.info("%s: stopped at step %d of %d; checkpoint written, continue with --resume",
                             signal.Signals(stopped).name, step, cfg.total_steps)
                break
    # ---- summary
    seconds = time.perf_counter() - ticks.t_start
    done = step - start_step
    return {"run_dir": str(run_dir), "steps": step, "steps_this_session": done, "total_steps": cfg.total_steps,
            "seconds": round(seconds, 3), "samples_per_s": done * cfg.batch_size / seconds if seconds > 0 else 0.0,
            "last": last_row, "complete": step >= cfg.total_steps,
            "stopped_by": signal.Signals(stopped).name if stopped else None}


def saved_config(work: str | Path, name: str) -> TrainConfig:
    """The config run `name` was last trained with (its config.json): the base of `--resume`."""
    path = WorkDir(work).require_run(name) / "config.json"
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()), source=str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: missing, so {path.parent} cannot be resumed; start a new run with "
                         "another --name") from None
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable run config ({e}); restore it or start a new run with "
                         "another --name") from e


def dry_run(cfg: TrainConfig, work: str | Path) -> Path | None:
    """Save the resolved config of a new run as `runs/NAME/config.json` (under the run's lock) and
    return its path; for a run folder that exists already, write nothing and return None (its
    config.json is what `--resume` continues from)."""
    wd = WorkDir(work)
    path = wd.run(cfg.name) / "config.json"
    if path.parent.exists():
        return None
    with wd.lock_run(cfg.name):
        if path.parent.exists():  # created since the first look
            return None
        write_json_atomic(path, cfg.to_dict())
    return path

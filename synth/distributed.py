"""Processes and devices: the torch.distributed helpers of the trainer, and `resolve_device`.

Multi-process training (torchrun) follows stylegan3 rather than wrapping modules in DDP: every
rank starts from rank 0's weights (`broadcast_from_rank0`), gradients are averaged with one flat
all-reduce per phase (`average_gradients`), the logged losses with one more (`mean_over_processes`),
and BatchNorm statistics are synchronised (torch's SyncBatchNorm on GPUs; `ProcessGroupBatchNorm2d`
on CPUs, where torch's needs CUDA). Two generator passes per phase and the D freeze during the G
phase stay plain autograd this way, with no unused-parameter bookkeeping. Only rank 0 writes files
and logs (`Dist.rank0`).

Preemption: clusters stop jobs with SIGTERM (SLURM also sends SIGUSR1 ahead of a time limit when
asked with `--signal`), a terminal with SIGINT. `StopSignals` turns all three into a request that
the loop reads after each step, so a stop never lands between the G and the D update; the
processes agree on it with one tiny all-reduce (`agree_on_stop`), so every rank stops after the
same step and rank 0 writes one consistent checkpoint. Data-loader workers ignore the signals
(`ignore_stop_signals`): SLURM and a terminal signal the whole process group, and a worker
killed mid-batch would make the main process fail instead of stopping. They also take the thread
policy's per-worker count (`init_loader_worker`, threads.py).

`resolve_device` is the one place where a device name (`auto`, `cpu`, `cuda:N`) becomes a device, for
every command.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, InputError
from ..threads import init_worker


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # this call joined the group, so it leaves it at the end

    @property
    def rank0(self) -> bool:
        """Whether this process writes the run's files and logs (the only one that does)."""
        return self.rank == 0


def _parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"device {name!r}: not a torch device; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` → this process's GPU when CUDA is available, else the CPU; `cuda` without an index →
    this process's GPU (torchrun's LOCAL_RANK); a CUDA device this machine does not have is an error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = _parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name}: CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes (NCCL for CUDA devices, gloo on CPUs), or run alone.
    `device` is the configured name (`auto`, `cpu`, `cuda:N` …), before `resolve_device`."""
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Dist()
        on_gpu = torch.cuda.is_available() if device == "auto" else _parse_device(device).type == "cuda"
        dist.init_process_group("nccl" if on_gpu else "gloo")
        owned = True
    else:
        owned = False
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), owned)


def shutdown(d: Dist) -> None:
    """Leave the process group when `init_distributed` joined it."""
    if d.owned:
        dist.destroy_process_group()


def broadcast_from_rank0(tensors) -> None:
    """Overwrite every process's tensors with rank 0's (identical initial weights)."""
    for t in tensors:
        dist.broadcast(t, 0)


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
    """Every BatchNorm2d of `module` synchronised over the process group (see the module doc)."""
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


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class StopSignals:
    """While entered, SIGINT, SIGTERM and SIGUSR1 only set `signum` (the first one received; 0 =
    none) for the loop to act on at the next step boundary. A SIGINT after a request raises
    KeyboardInterrupt at once, without a checkpoint (a second Ctrl-C). Handlers are installed
    only in the main thread (the only one Python delivers signals to); the previous ones return
    on exit."""

    def __init__(self):
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._request) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _request(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A data-loader worker's `worker_init_fn`: the main process handles the stop signals and ends
    its workers when it stops."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def init_loader_worker(worker_id: int = 0) -> None:
    """The trainer's data-loader `worker_init_fn`: the stop signals stay with the main process, and
    the worker runs the thread policy's per-worker count of threads."""
    ignore_stop_signals(worker_id)
    init_worker(worker_id)


def agree_on_stop(signum: int, d: Dist, device: torch.device) -> int:
    """The largest stop signal number any process has received (0 = none), the same on every
    rank: one all-reduce of one integer per step (a few µs, against a step of 0.1 s or more)."""
    if d.world_size == 1:
        return signum
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


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


def mean_over_processes(values: dict[str, torch.Tensor], d: Dist) -> dict[str, float]:
    """Scalar tensors → their mean over all processes as floats, in sorted name order (one all-reduce)."""
    names = sorted(values)
    stacked = torch.stack([values[k] for k in names])
    if d.world_size > 1:
        dist.all_reduce(stacked)
        stacked /= d.world_size
    return dict(zip(names, stacked.tolist()))

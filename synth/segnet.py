"""The segmentation network behind L_seg and the mIoU metric (docs/method.md §6.5), and its training.

An OASIS-discriminator-style U-Net without the extra "fake" class: an encoder of residual blocks
that halve the resolution (widths 3 → 128, 128, 256, 256, 512, 512 at full size), a decoder of
residual blocks that double it and take the mirrored encoder output as a skip connection, and a
1×1 head to one logit per label-map channel. Every conv inside the blocks carries spectral norm;
the head is a plain 1×1 conv applied to the last block's output with no activation before it,
as in the official network (docs/method.md §6.5). Checkpoints written before this layout (a LeakyReLU
and a spectral-norm head) are refused with a clear error: their logits differ by about a third
for the same body weights (docs/deviations.md), so they are retrained, not converted.

The official weights and recipe are not published, so `train_segnet` trains it here as a plain
segmenter on real training images; checkpoints hold a state dict and a JSON-able config and load
with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..pipeline.labels.spaces import LabelChannels
from .checkpoint import read_segnet_checkpoint, save_segnet_checkpoint
from .losses import balanced_cross_entropy
from .metrics import argmax_over, confusion_matrix, segmentation_scores
from .norms import spectral_norm
from .presets import NetworkPreset
from .weight_init import init_weights

log = logging.getLogger(__name__)


def _sn_conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2))


class SegResBlock(nn.Module):
    """main: [LReLU (not in the first block), (up), conv3×3] → [LReLU, conv3×3] → (pool);
    shortcut: (up) → 1×1 conv when the width changes → (pool); the first block pools first."""

    def __init__(self, fin: int, fout: int, mode: str, first: bool = False):
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(mode)
        self.mode, self.first = mode, first
        self.conv1 = _sn_conv(fin, fout, 3)
        self.conv2 = _sn_conv(fout, fout, 3)
        self.conv_s = _sn_conv(fin, fout, 1) if fin != fout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.mode == "up"
        h = x if self.first else F.leaky_relu(x, 0.2)
        if up:
            h = _up(h)
        h = self.conv2(F.leaky_relu(self.conv1(h), 0.2))
        s = _up(x) if up else x
        if self.first:
            s = F.avg_pool2d(s, 2)
        if self.conv_s is not None:
            s = self.conv_s(s)
        if self.mode == "down":
            h = F.avg_pool2d(h, 2)
            if not self.first:
                s = F.avg_pool2d(s, 2)
        return h + s


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class SegNet(nn.Module):
    """U-Net segmenter: B×3×H×W image in [−1, 1] → B×num_classes×H×W logits (H, W divisible by 2^depth).
    Logit c is label-map channel c of the preset's label table (`label_ids`, None = native id)."""

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512),
                 label_ids: tuple[int, ...] | None = None):
        super().__init__()
        if label_ids is not None and not len(label_ids) <= num_classes <= len(label_ids) + 1:
            raise InputError(f"segmentation network: {num_classes} classes for a label table of {len(label_ids)} ids")
        self.num_classes, self.channels = num_classes, tuple(channels)
        self.label_ids = None if label_ids is None else tuple(int(v) for v in label_ids)
        enc_in = (3,) + self.channels[:-1]
        self.encoder = nn.ModuleList(
            SegResBlock(cin, cout, "down", first=i == 0) for i, (cin, cout) in enumerate(zip(enc_in, self.channels))
        )
        rev = self.channels[::-1]
        dec_out = rev[1:] + (self.channels[0] // 2,)
        dec_in = (rev[0],) + tuple(o + s for o, s in zip(dec_out[:-1], rev[1:]))
        self.decoder = nn.ModuleList(SegResBlock(cin, cout, "up") for cin, cout in zip(dec_in, dec_out))
        self.head = nn.Conv2d(dec_out[-1], num_classes, 1)

    @property
    def depth(self) -> int:
        return len(self.channels)

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        k = 2**self.depth
        if image.shape[-2] % k or image.shape[-1] % k:
            raise ValueError(f"SegNet input {tuple(image.shape[-2:])} is not divisible by {k}")
        skips = []
        h = image
        for blk in self.encoder:
            h = blk(h)
            skips.append(h)
        return skips

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = self._encode(image)
        h = self.decoder[0](skips[-1])
        for blk, skip in zip(self.decoder[1:], reversed(skips[:-1])):
            h = blk(torch.cat([h, skip], dim=1))
        return self.head(h)  # B×K×H×W

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W image in [−1, 1] → B×channels[-1] image descriptor: the deepest encoder output
        (H/2^depth × W/2^depth, the widest context the segmenter sees), averaged over space.
        A feature space for FID/KID where no Inception weights are at hand (the toy ablation):
        it measures what the segmenter tells apart, not photo realism in general."""
        return self._encode(image)[-1].mean(dim=(2, 3))  # B×C

    def label_channels(self) -> LabelChannels:
        """The label table of the logits (identity over 0..num_classes−1 without `label_ids`)."""
        return LabelChannels(self.label_ids, self.num_classes, "the segmentation network")

    def config(self) -> dict:
        cfg = {"num_classes": self.num_classes, "channels": list(self.channels)}
        if self.label_ids is not None:  # absent for identity tables, as in checkpoints written before tables
            cfg["label_ids"] = list(self.label_ids)
        return cfg


def build_segnet(preset: NetworkPreset, device: torch.device | str | None = None) -> SegNet:
    with torch.device(device) if device is not None else contextlib.nullcontext():
        net = SegNet(preset.semantic_nc, preset.segnet_channels, preset.label_ids)
    return init_weights(net)


# ---------------------------------------------------------------- evaluation


def scored_channels(table: LabelChannels, class_ids: Iterable[int] | None = None) -> list[int]:
    """The channels a segmentation score covers: those of the native `class_ids` (default: every
    class of the table) that the table has, void (channel 0) excluded."""
    channels = table.channel_of(table.native if class_ids is None else list(class_ids))
    return sorted({int(c) for c in channels[channels > 0]})


@torch.no_grad()
def evaluate_segnet(segnet: SegNet, batches: Iterable, class_ids: Iterable[int] | None = None,
                    device: torch.device | str = "cpu") -> dict:
    """mIoU and pixel accuracy of `segnet` over (image B×3×H×W, label B×H×W channel ids) batches,
    scored as `resail eval` scores its real images (synth/metrics.py): the argmax runs over the
    channels of the native `class_ids` (default: every class but void) and label pixels of other
    channels are ignored. `iou` is keyed by native id."""
    table = segnet.label_channels()
    scored = scored_channels(table, class_ids)
    if not scored:
        raise InputError("segmentation scores: the network has a label channel for none of the evaluated classes")
    channels = torch.as_tensor(scored, dtype=torch.long, device=device)
    was_training = segnet.training
    segnet.eval()
    conf = torch.zeros(segnet.num_classes, segnet.num_classes, dtype=torch.long, device=device)
    for image, label in batches:
        pred = argmax_over(segnet(image.to(device)), channels)
        conf += confusion_matrix(pred, label.to(device), segnet.num_classes)
    segnet.train(was_training)
    scores = segmentation_scores(conf.cpu(), scored)
    scores["iou"] = {int(table.native[ch]): v for ch, v in scores["iou"].items()}
    return scores


# ---------------------------------------------------------------- training


@dataclass(frozen=True)
class SegnetTrainConfig:
    steps: int = 20_000
    lr: float = 4e-4
    beta1: float = 0.5
    beta2: float = 0.999
    class_balance: bool = True      # per-batch w_c = N/(n_c·K) as in L_seg
    ignore_index: int | None = 0    # void / don't-care channel
    checkpoint_every: int = 1_000
    log_every: int = 100

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _cycle(batches: Iterable) -> Iterator:
    while True:
        n = 0
        for b in batches:
            n += 1
            yield b
        if n == 0:
            raise InputError("segnet training: the batch source yielded no batches")


def save_segnet(path: str | Path, segnet: SegNet, optimizer: torch.optim.Optimizer | None, step: int,
                train_config: SegnetTrainConfig, metrics: dict | None = None) -> None:
    """Atomic: written to a temp file beside `path`, then moved into place (format: synth/checkpoint.py)."""
    save_segnet_checkpoint(path, config=segnet.config(), train_config=train_config.to_dict(), step=step,
                           state_dict=segnet.state_dict(), metrics=metrics,
                           optimizer=optimizer.state_dict() if optimizer is not None else None)


def _check_head(path: str | Path, state_dict: dict) -> None:
    if "head.parametrizations.weight.original" in state_dict:
        raise InputError(f"{path}: a segmentation network with the former head (LeakyReLU + spectral-norm 1×1 "
                         "conv), not the official plain 1×1 conv; train it again with `resail segnet train` "
                         "(to a new checkpoint path)")


def load_segnet(path: str | Path, map_location: torch.device | str = "cpu") -> SegNet:
    """A trained SegNet from a checkpoint, in eval mode."""
    ckpt = read_segnet_checkpoint(path, map_location)
    cfg = ckpt["config"]
    _check_head(path, ckpt["state_dict"])
    with torch.device(map_location):
        net = SegNet(int(cfg["num_classes"]), tuple(cfg["channels"]), cfg.get("label_ids"))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def train_segnet(segnet: SegNet, batches: Iterable, config: SegnetTrainConfig = SegnetTrainConfig(), *,
                 checkpoint: str | Path | None = None, val_batches: Iterable | None = None,
                 val_classes: Iterable[int] | None = None, device: torch.device | str = "cpu",
                 progress: bool = True) -> dict:
    """Train `segnet` for `config.steps` steps over (image B×3×H×W in [−1, 1], label B×H×W long)
    batches; the source is re-iterated when it runs out. With `checkpoint`, resume from it when
    it exists and write it every `checkpoint_every` steps and at the end. Returns the last loss,
    the step count, the time taken and, with `val_batches`, the val scores (`evaluate_segnet`
    over the native `val_classes`; void is never scored, whatever `ignore_index` the loss used)."""
    segnet.to(device).train()
    opt = torch.optim.Adam(segnet.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    step = 0
    if checkpoint is not None and Path(checkpoint).exists():
        ckpt = read_segnet_checkpoint(checkpoint, device)
        if ckpt["config"] != segnet.config():
            raise InputError(f"{checkpoint}: checkpoint of a different network {ckpt['config']} (want "
                             f"{segnet.config()}); delete it or choose another path")
        _check_head(checkpoint, ckpt["state_dict"])
        segnet.load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        log.info("segnet: resumed from %s at step %d", checkpoint, step)

    ignore = config.ignore_index
    source = _cycle(batches)
    loss_value = float("nan")
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="segnet", unit="step", disable=not progress)
    while step < config.steps:
        image, label = next(source)
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        logits = segnet(image)  # B×K×H×W
        if config.class_balance:
            loss = balanced_cross_entropy(logits, label, ignore_index=ignore)
        else:
            loss = F.cross_entropy(logits, label, ignore_index=-100 if ignore is None else ignore)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            loss_value = float(loss.detach())
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if checkpoint is not None and step % config.checkpoint_every == 0 and step < config.steps:
            save_segnet(checkpoint, segnet, opt, step, config)
    bar.close()

    result = {"steps": step, "loss": loss_value, "seconds": time.perf_counter() - t0}
    if val_batches is not None:
        result["val"] = evaluate_segnet(segnet, val_batches, val_classes, device)
        log.info("segnet: val mIoU %.4f, pixel accuracy %.4f over %d pixels",
                 result["val"]["miou"], result["val"]["pixel_acc"], result["val"]["n_pixels"])
    if checkpoint is not None:
        save_segnet(checkpoint, segnet, opt, step, config, metrics=result.get("val"))
    return result

"""Train the segmentation network on a work directory's real images (`resail segnet train`).

The images are the ones the segment store lists (`segments/{split}_images.parquet`, status ok),
read through the dataset's reader, so labels follow the same conventions as everywhere else
(native ids, void 0), then go through the preset's label table (labels/spaces.py) to the
network's channels. Photos are area-resized and labels nearest-resized to the preset's size;
training adds a horizontal flip. Artifacts go to WORK/segnet/: `{preset}.pt` (checkpoint, also
the resume point; `WorkDir.segnet`) and `{preset}_metrics.json` (val mIoU and pixel accuracy),
written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from ..artifacts import write_json_atomic
from ..common import nearest_floor
from ..errors import InputError
from ..pipeline.datasets import records_for_ids
from ..pipeline.labels.spaces import LabelChannels
from ..threads import init_worker
from ..workdir import WorkDir
from .data import check_label_table, data_label_table
from .distributed import resolve_device
from .presets import NetworkPreset, get_preset
from .segnet import SegnetTrainConfig, build_segnet, train_segnet

log = logging.getLogger(__name__)

# work-dir dataset → network preset of the same label channels (`resail segnet train`'s and
# `resail eval`'s default segmentation network)
DATASET_PRESET = {"ade20k": "ade20k", "ade20k-outdoor": "ade20k-outdoor", "cityscapes": "cityscapes",
                  "cocostuff": "cocostuff"}


class SegnetImages(Dataset):
    """(image 3×H×W in [−1, 1], label H×W int64 channel ids) pairs of one split at the preset's size."""

    def __init__(self, work: str | Path, split: str, preset: NetworkPreset, flip: bool = False):
        self.work, self.split, self.flip = Path(work), split, flip
        self.size = (preset.width, preset.height)
        with WorkDir(self.work).snapshot() as wd:  # the manifest and the image table of one store version
            params = wd.require_segments()["params"]
            table = pq.read_table(wd.images_table(split), columns=["image_id", "status"])
        self.dataset = params["dataset"]
        ids = [i for i, s in zip(table["image_id"].to_pylist(), table["status"].to_pylist()) if s == "ok"]
        if not ids:
            raise InputError(f"{self.work}: the segment store lists no usable {split} images")
        self.reader, self.records = records_for_ids(params, split, ids)
        self.channels = LabelChannels.of(preset)
        check_label_table(self.channels, self.work, (split,))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.reader.load(self.records[index])
        w, h = self.size
        photo = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_AREA)  # H×W×3 uint8
        label = nearest_floor(sample.label_map, h, w)        # H×W native ids, the trainer's --recipe resail rule
        label = self.channels.to_channels(label, str(self.records[index].label_path))  # H×W channel ids
        if self.flip and torch.rand(()) < 0.5:
            photo, label = photo[:, ::-1], label[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return image, torch.from_numpy(np.ascontiguousarray(label))


@dataclass(frozen=True)
class SegnetRunConfig:
    preset: str
    network: dict = field(default_factory=dict)   # NetworkPreset fields over the preset (a TOML's [network])
    batch_size: int = 8
    workers: int = 2
    device: str = "cpu"                          # or auto, cuda, cuda:N
    train: SegnetTrainConfig = SegnetTrainConfig()


def preset_for_work(work: str | Path) -> str:
    dataset = WorkDir(work).require_segments()["params"]["dataset"]
    if dataset not in DATASET_PRESET:
        raise InputError(f"{work}: no network preset for dataset {dataset!r}; pass --preset")
    return DATASET_PRESET[dataset]


def train_segnet_on_work(work: str | Path, cfg: SegnetRunConfig, progress: bool = True) -> dict:
    """Train (or resume) the preset's SegNet on WORK's train images; report mIoU on its val images."""
    work = Path(work)
    preset = get_preset(cfg.preset, **{**data_label_table(get_preset(cfg.preset), work), **cfg.network})
    train_set = SegnetImages(work, "train", preset, flip=True)
    val_set = SegnetImages(work, "val", preset)
    device = resolve_device(cfg.device)
    pin = device.type == "cuda"
    loader = DataLoader(train_set, batch_size=min(cfg.batch_size, len(train_set)), shuffle=True, drop_last=True,
                        num_workers=cfg.workers, pin_memory=pin, persistent_workers=cfg.workers > 0,
                        worker_init_fn=init_worker)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=pin,
                            worker_init_fn=init_worker)
    ckpt = WorkDir(work).segnet(preset.name)
    metrics_path = ckpt.with_name(f"{preset.name}_metrics.json")
    torch.manual_seed(0)
    segnet = build_segnet(preset)
    log.info("segnet: %s on %d train / %d val images of %s, %d steps of batch %d -> %s",
             preset.name, len(train_set), len(val_set), work, cfg.train.steps, cfg.batch_size, ckpt)
    # scored over the dataset's classes, as `resail eval` scores (none listed: every class of the table)
    classes = WorkDir(work).require_segments().get("classes", {}).get("ids")
    result = train_segnet(segnet, loader, cfg.train, checkpoint=ckpt, val_batches=val_loader, val_classes=classes,
                          device=device, progress=progress)
    report = {"preset": preset.name, "checkpoint": str(ckpt), "n_train": len(train_set), "n_val": len(val_set),
              "batch_size": cfg.batch_size, **result}
    write_json_atomic(metrics_path, report)
    return report

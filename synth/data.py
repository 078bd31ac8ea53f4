"""Training and evaluation batches from a work directory's caches.

One item of `SynthDataset` is one image of a split, as tensors at the network size:
  image      3×H×W float in [−1, 1]   the real photo (reader → the recipe's photo resize)
  label      H×W int64                label-map channel of each pixel: the native class id through
                                      the preset's label table (reader → nearest resize → table;
                                      channel = native id for presets without a table), 0 = void
  guidance   3×H×W float in [−1, 1]   retrieval guidance from `guidance/{split}.h5` (bilinear
                                      resize when the cache was baked at another size)
  distorted  3×H×W float in [−1, 1]   distorted ground truth, built here (`with_distorted`)
  edges      1×H×W float {0, 1}       instance boundaries (`instance_edges`, or a network with `edges`): SPADE's
                                      edge map where SPADE has one (`edge_sources`), else the instance map's
                                      (zeros without instances)
  dist       2×H×W float in (−1, 1)   CLADE-ICPE's positional maps (a `clade-icpe` network), computed from the
                                      label map at its own size, resized as the CLADE authors do
  index      int                      row in the split (= row of the guidance cache)

A network that takes no guidance (SPADE, CLADE) is evaluated with `with_guidance=False`: no
guidance cache is read and `guidance` is black.

Training items are resized to the load size, then cropped and flipped identically. The distorted
ground truth follows the official order (docs/method.md §4.4): colour and resolution distortion at
the photo's original resolution, the photo's resize, the crop, then the TPS warp on the crop
(`GuidanceComposer.distorted_gt`); only its flip comes after the warp (the official code flips
before it: the same distribution of warps, mirrored). Resizes follow the config's `recipe`:
`resail` shrinks the photo with OpenCV INTER_AREA and picks label pixels by ⌊i·n/N⌋
(`common.nearest_floor`); `official` uses PIL bicubic and PIL nearest (pixel centres,
`common.nearest_pil`), as the official transform does (`PHOTO_RESIZE`, `LABEL_RESIZE`); a
generator imported from its authors' code takes its label maps through PIL nearest too, as they
fed it (`label_resize`).

Every random number of an item comes from `default_rng([seed, epoch, index])`, so an item never
depends on the worker count, on the worker that builds it, or on what was drawn before: keys are
`(epoch, index)` pairs handed out by `StepBatchSampler`, a pure function of the step counter.
The label goes out as channel ids; `one_hot` builds the B×L×H×W map on the device, which saves
moving 151-channel floats through the loader. `LabelChannels.to_native` turns channel ids back
into native ids.

Readers, the composer and the h5 cache open lazily in each worker (h5 handles do not survive a fork).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..common import nearest_floor, nearest_pil
from ..errors import InputError, StageError
from ..pipeline.datasets import read_index_png, records_for_ids
from ..pipeline.distort import DistortConfig
from ..pipeline.guidance import open_composer, open_guidance, resize_area
from ..pipeline.labels.spaces import LabelChannels
from ..workdir import WorkDir
from .baselines.icpe import flip_maps, icpe_maps, resize_maps, skip_id
from .config import TrainConfig
from .presets import NetworkPreset


def count_images(work: str | Path, split: str = "train") -> int:
    """Images in the baked guidance cache of a split (a clear error when it is not baked)."""
    with open_guidance(Path(work), split) as f:
        return int(f["image_id"].shape[0])


def data_class_ids(work: Path, split: str) -> dict[int, str] | None:
    """Native class ids present in a split's segment store → the first image id holding each;
    None when the store has no segment table (a fabricated work dir)."""
    path = WorkDir(work).segments_table(split)
    if not path.exists():
        return None
    t = pq.read_table(path, columns=["class_id", "image_id"])
    ids, first = np.unique(t["class_id"].to_numpy(), return_index=True)
    return dict(zip(ids.tolist(), t["image_id"].take(first).to_pylist()))


TOY_TABLE_DATASETS = ("ade20k", "ade20k-outdoor")  # the id space of the toy presets' label table (synth/presets.py)


def data_label_table(preset: NetworkPreset, work: str | Path) -> dict:
    """NetworkPreset fields that fit a preset's label table to the work dir's data, or {}.

    A preset with a fixed table for the work dir's dataset keeps it (the full presets: channel =
    native id; the toy presets on ADE20K: the toy generator's classes). The toy presets on any
    other dataset take a table of the classes the store holds (train and val), void first, over
    the dataset's id space; the run records it in its config like any other table."""
    if preset.label_ids is None:
        return {}
    manifest = WorkDir(work).require_segments()
    if manifest["params"]["dataset"] in TOY_TABLE_DATASETS:
        return {}
    present = set()
    for split in ("train", "val"):
        present |= set(data_class_ids(Path(work), split) or {})
    if not present:  # no segment table (a fabricated work dir): nothing to fit
        return {}
    ids = tuple(sorted({0} | {int(c) for c in present}))
    return {"label_nc": max([*manifest.get("classes", {}).get("ids", []), *ids]) + 1, "label_ids": ids}


def check_label_table(channels: LabelChannels, work: Path, splits: tuple[str, ...], fix: str | None = None) -> None:
    """InputError when the data of `splits` uses a native id that `channels` has no channel for:
    names the work dir, the ids (with class names), an image holding the first one, and what to
    do (including the `label_ids` list that would cover the work dir's train and val data)."""
    present: dict[int, tuple[str, str]] = {}
    for split in splits:
        found = data_class_ids(work, split)
        for c, image_id in (found or {}).items():
            present.setdefault(c, (split, image_id))
    bad = channels.missing(present)
    if not bad:
        return
    classes = WorkDir(work).require_segments().get("classes", {})
    names = dict(zip(classes.get("ids", []), classes.get("names", [])))
    split, image_id = present[bad[0]]
    needed = sorted({0} | set(present).union(*((data_class_ids(work, s) or {}) for s in ("train", "val"))))
    fix = fix or ("use the preset of this dataset, or cover the data with `label_ids = "
                  f"{needed}` under [network] in a --config TOML")
    raise InputError(f"{work}: the {split} data uses {channels.describe_missing(bad, names)} (e.g. image "
                     f"{image_id}), which {channels.name} has no label channel for ({len(channels)} channels); {fix}")


def one_hot(label: torch.Tensor, num_channels: int) -> torch.Tensor:
    """B×H×W channel ids → B×L×H×W one-hot float (map native ids with `LabelChannels` first)."""
    out = torch.zeros(label.shape[0], num_channels, *label.shape[1:], device=label.device)
    return out.scatter_(1, label.unsqueeze(1), 1.0)


def label_input(net: NetworkPreset, label: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """G's and D's label input: B×H×W channel ids → B×`net.input_nc`×H×W, the one-hot map then the
    B×1×H×W edge map when the network takes it (a missing edge map is an error)."""
    m = one_hot(label, net.semantic_nc)
    if not net.edges:
        return m
    if edges is None:
        raise ValueError(f"preset {net.name!r} takes the instance edge map, and none was given")
    return torch.cat([m, edges.to(m)], dim=1)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float in [−1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [−1, 1] → B×H×W×3 uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def resize_bicubic_pil(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official photo resize: PIL bicubic (its kernel widens by the shrink factor: antialiased)."""
    return np.array(Image.fromarray(image).resize(size, Image.BICUBIC))


PHOTO_RESIZE = {"resail": resize_area, "official": resize_bicubic_pil}  # the recipe's photo resize
# label and instance maps, (map, height, width): by index, so any id stays exact (common.py)
LABEL_RESIZE = {"resail": nearest_floor, "official": nearest_pil}


def label_resize(cfg: TrainConfig):
    """The rule a run's label maps are resized with: the recipe's, and PIL's for a generator
    imported from its authors' code (`origin`), as they fed it."""
    return nearest_pil if cfg.origin != "resail" else LABEL_RESIZE[cfg.recipe]


def edge_sources(sample, dataset: str) -> list[np.ndarray]:
    """The maps (at the photo's size) whose boundaries make a sample's edge map. Cityscapes and
    COCO-Stuff in SPADE's layout: the instance file itself, as SPADE reads it (`instanceIds`, the
    `{split}_inst` map that holds label values under instance counters); COCO-Stuff as downloaded:
    label map and instance map, whose joint boundaries are what SPADE's instance file draws;
    otherwise the instance map alone (none: no edges)."""
    path = sample.record.instance_path
    if dataset in ("cityscapes", "cocostuff") and path:
        return [read_index_png(path)]
    if dataset == "cocostuff":
        return [sample.label_map] + ([sample.instance_map] if sample.instance_map is not None else [])
    return [sample.instance_map] if sample.instance_map is not None else []


def instance_edges(instance_map: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """H×W float32: 1 where a pixel's instance id differs from a 4-neighbour's."""
    edge = np.zeros(shape, np.float32)
    if instance_map is None:
        return edge
    m = instance_map
    dx = m[:, 1:] != m[:, :-1]
    dy = m[1:, :] != m[:-1, :]
    edge[:, 1:][dx] = 1
    edge[:, :-1][dx] = 1
    edge[1:, :][dy] = 1
    edge[:-1, :][dy] = 1
    return edge


class SynthDataset(Dataset):
    """Items of one split for training (`train=True`: load size, crop, flip, distorted GT) or for
    evaluation and sample grids (`train=False`: resized to the network size, no augmentation)."""

    def __init__(self, work: str | Path, split: str, cfg: TrainConfig, *, train: bool = True,
                 with_distorted: bool | None = None, with_guidance: bool = True):
        # One snapshot of the guidance, index and store, pinned until `close()`: the workers read it too.
        self.work = WorkDir(work).snapshot(guidance=(split,) if with_guidance else ())
        self.split, self.train = split, train
        self.seed = cfg.seed
        self.net_size = (cfg.net.width, cfg.net.height)
        self.size = tuple(cfg.load_size) if train and cfg.preprocess == "resize_crop" else self.net_size
        self.flip = train and cfg.flip
        self.with_distorted = train if with_distorted is None else with_distorted
        self.with_edges = cfg.instance_edges or cfg.net.edges
        self.with_dist = cfg.net.icpe
        self.with_guidance = with_guidance
        self.color_ref = cfg.color_ref
        self.photo_resize = PHOTO_RESIZE[cfg.recipe]
        self.label_resize = label_resize(cfg)
        self.distort_cfg = DistortConfig(p_color=cfg.p_color, p_resolution=cfg.p_resolution, p_shape=cfg.p_shape)

        params = self.work.require_segments()["params"]
        self.dataset = params["dataset"]
        self.channels = LabelChannels.of(cfg.net)
        check_label_table(self.channels, self.work, (split,))
        images = pq.read_table(self.work.images_table(split), columns=["image_id", "status"])
        status = np.asarray(images["status"].to_pylist())
        self.rows = np.flatnonzero(status == "ok")  # composer rows, in cache order
        ids = [images["image_id"][int(r)].as_py() for r in self.rows]
        if with_guidance:
            self._check_guidance_cache(ids)
        self.image_ids = ids
        self.reader, self.records = records_for_ids(params, split, ids)
        self._composer = None
        self._cache = None

    def _check_guidance_cache(self, ids: list[str]) -> None:
        with open_guidance(self.work, self.split) as f:
            cached = [s.decode() if isinstance(s, bytes) else s for s in f["image_id"][...]]
        if cached != ids:
            raise StageError(f"{self.work.guidance_h5(self.split)}: the guidance cache does not match the segment "
                             f"store; run `resail guidance bake {self.work} --split {self.split} --rebuild`")

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_composer"] = state["_cache"] = None  # opened again in each worker
        return state

    def close(self) -> None:
        if self._composer is not None:
            self._composer.close()
        if self._cache is not None:
            self._cache.close()
        self._composer = self._cache = None
        self.work.close()

    def _open(self):
        if self._cache is None and self.with_guidance:
            self._cache = open_guidance(self.work, self.split)
        if self._composer is None and self.with_distorted:
            self._composer = open_composer(self.work, self.split, size=self.size)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        self._open()
        rng = np.random.default_rng([self.seed, int(epoch), index])
        W, H = self.size
        w, h = self.net_size
        # geometry first, always the same number of draws
        oy, ox = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        flip = bool(rng.random() < 0.5) and self.flip

        sample = self.reader.load(self.records[index])
        photo = self.photo_resize(sample.image, (W, H))
        label = self.label_resize(sample.label_map, H, W).astype(np.int64)
        planes = {"image": photo, "label": label}
        if self.with_guidance:
            guidance = self._cache["guidance"][index]
            if guidance.shape[:2] != (H, W):
                guidance = cv2.resize(guidance, (W, H), interpolation=cv2.INTER_LINEAR)
            planes["guidance"] = guidance
        else:  # black: the network takes no guidance
            planes["guidance"] = np.zeros((H, W, 3), np.uint8)
        if self.with_edges:  # resized, then its boundaries, as SPADE computes them
            edges = [instance_edges(self.label_resize(m, H, W), (H, W)) for m in edge_sources(sample, self.dataset)]
            planes["edges"] = np.maximum.reduce(edges) if edges else instance_edges(None, (H, W))
        if self.with_dist:  # from the label map at its own size, like the authors' precomputed maps
            planes["dist"] = resize_maps(icpe_maps(sample.label_map, skip_id(self.dataset)), W, H).transpose(1, 2, 0)
        planes = {name: a[oy:oy + h, ox:ox + w] for name, a in planes.items()}
        if self.with_distorted:  # built on the crop: its warp runs after it
            planes["distorted"] = self._composer.distorted_gt(
                int(self.rows[index]), rng, self.distort_cfg, color_ref=self.color_ref, image=sample.image,
                crop=(oy, ox, h, w), resize=self.photo_resize)

        item = {"index": index}
        for name, a in planes.items():
            if name == "dist":  # H×W×2 → 2×H×W; a mirrored map is the mirrored label map's
                item[name] = torch.from_numpy(flip_maps(a.transpose(2, 0, 1)) if flip
                                              else np.ascontiguousarray(a.transpose(2, 0, 1)))
                continue
            if flip:
                a = a[:, ::-1]
            if name == "label":
                item[name] = torch.from_numpy(self.channels.to_channels(a, str(self.records[index].label_path)))
            elif name == "edges":
                item[name] = torch.from_numpy(np.ascontiguousarray(a))[None]
            else:
                item[name] = to_tensor(a)
        return item


class StepBatchSampler(Sampler):
    """Per-rank batches of `(epoch, index)` keys for steps `start_step` … `total_steps − 1`.

    Step s belongs to epoch s // steps_per_epoch; each epoch is one permutation of the images drawn
    from (seed, epoch), cut into global batches (the last partial batch dropped); rank r of n takes
    the slice [B·r/n, B·(r+1)/n) of each global batch. The union over ranks of a step's batches is
    the global batch a single process would see, and resuming at any step needs only the counter
    (torch's DistributedSampler can neither skip into an epoch nor promise that union)."""

    def __init__(self, n_items: int, batch_size: int, *, seed: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise InputError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
        if n_items < batch_size:
            raise InputError(f"{n_items} images are fewer than the batch size {batch_size}")
        self.n, self.batch, self.seed = n_items, batch_size, seed
        self.start, self.total = start_step, total_steps
        self.rank, self.world = rank, world_size
        self.steps_per_epoch = n_items // batch_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0xDA7A]).permutation(self.n)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm, perm_epoch = None, -1
        a, b = self.batch * self.rank // self.world, self.batch * (self.rank + 1) // self.world
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = self.permutation(epoch), epoch
            batch = perm[k * self.batch:(k + 1) * self.batch][a:b]
            yield [(epoch, int(i)) for i in batch]

"""`resail eval`: FID, KID, mIoU and pixel accuracy of a trained run, with a documented protocol.

This module runs the command (generate, segment, cache, write); the metric maths is
synth/metrics.py's, shared with `resail segnet train` and the toy ablation.

Protocol (written into `metrics.json` with every result):

* Generation: G_ema of the run's snapshot (latest, or `checkpoint`) in eval mode, so BatchNorm
  uses its running statistics; label map = the split's label map nearest-resized to the model
  size (as the trainer does), guidance = the baked retrieval guidance `WORK/guidance/{split}.h5`
  (docs/method.md §7: test time uses I_r only). A generator that reads no guidance (SPADE, CLADE, from
  `--norm` or `resail model import`) gets none and needs no bake; it gets SPADE's instance edge
  map and CLADE-ICPE's positional maps where it reads them, and an imported one gets its label
  maps through PIL's nearest neighbour, as its authors fed it (docs/baselines.md). Real images
  and scores are made as for a RESAIL run of the default recipe: one protocol, one table.
  The output is clamped to [−1, 1], mapped to
  round((x + 1)·127.5) as uint8 and saved losslessly as PNG: the metrics see exactly the saved
  8-bit images (the official in-training FID truncates instead of rounding; ≤ 1/255 per pixel).
* Real images: the split's photos resized to the model size with the trainer's resize
  (cv2 INTER_AREA from the original), uint8.
* FID, pytorch-fid convention: TF-ported Inception (`pt_inception-2015-12-05-6726825d.pth`),
  [0, 255] → [0, 1], bilinear resize to 299×299 (align_corners=False), [−1, 1], pool3 (2048-d);
  the Fréchet distance with pytorch-fid's numerics (`metrics.frechet_distance`: `np.cov`,
  `scipy.linalg.sqrtm`, 1e−6 on the diagonals when the root is not finite). Real statistics are cached in
  `WORK/eval/fid_stats/`, keyed by split, image ids, size and the weight file's SHA-256.
  With fewer than 2048 images Σ is rank-deficient and FID is biased upward: compare only
  numbers computed on the same number of images.
* KID: unbiased MMD² with the cubic polynomial kernel (x·y/2048 + 1)³ on the same features,
  mean and std over 100 random subsets of min(1000, N) images per side (seed 0).
* Segmentation, by default: the project's segmentation network (the work dir's `resail segnet
  train` checkpoint) on the generated and on the real images at the model size; per pixel the
  argmax over the dataset's classes only (void and unused channels excluded); label-map void
  pixels ignored. One confusion matrix over the split, in the segmenter's label channels (its
  label table, which need not be the generator's: labels are remapped through native ids),
  scored with synth/metrics.py's convention (docs/metrics.md): IoU_c = TP/(TP + FP + FN), mIoU =
  mean over classes whose union is non-empty, pixel accuracy = correct / non-ignored pixels;
  per-class rows name the native class. `resail segnet train` scores its val split the same way:
  for a run of the network's size under `--recipe resail` (the label resize they share), its val
  mIoU is this command's real-image mIoU. The real-image numbers are the upper bound the
  segmenter allows.
* Segmentation with `segmenter` (numbers comparable with published ones): one of the classic
  segmenters published mIoU uses — `drn-d-105` (Cityscapes), `upernet-r101` (ADE20K, the
  authors' five test scales or `upernet_scales="single"`), `deeplabv2-r101` (COCO-Stuff) — from
  its authors' weight files, or `torchscript:PATH` (synth/segmenters), each run exactly as its
  authors' evaluation code runs it, on the same generated and real images. The ground truth is
  mapped into the segmenter's id space (`labels.spaces.eval_id_space`): Cityscapes labelIds
  → trainIds 0..18 (the other labelIds ignored), ADE20K 1..150 (0 ignored), COCO-Stuff native
  1..182 → stuffthingmap values 0..181 (void ignored). The argmax runs over all the segmenter's
  classes, as published; a prediction outside the id space (ADE20K's 0) counts as a miss. Same
  confusion matrix and scores as above, over the id space's classes. The generated images reach
  the segmenter as the uint8 RGB pixels saved as PNG, never through a lossy format.

Outputs in `WORK/eval/NAME/`: `images/{image_id}.png`, `grid.png` (label | guidance |
generated | real), `per_class_iou.csv`, `report.md`, and `metrics.json`, written last, all in a
new folder published whole over the previous evaluation (the stage lifecycle, lifecycle.py). Its
`protocol` records what a reader needs to compare the numbers: the segmenter, its weight files'
SHA-256, scales, input size, resize, normalisation and id space; the FID implementation and the
Inception weights' SHA-256; the number of images, their format (PNG) and the real reference set.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..artifacts import atomic_path, fingerprint, write_bytes_atomic, write_json_atomic, write_png_atomic
from ..choices import SEGMENTERS, SPLITS, UPERNET_SCALES
from ..common import sha256_file
from ..errors import ConfigError, InputError
from ..pipeline.labels.classes import palette_lut
from ..pipeline.labels.spaces import ADE20K, IdSpace, LabelChannels, eval_id_space
from ..threads import init_worker
from ..workdir import WorkDir
from .data import SynthDataset, check_label_table, label_resize, to_uint8
from .inception import FEATURE_DIM, find_weights, inception_features, load_inception
from .inference import LoadedRun
from .metrics import argmax_over, confusion_matrix, feature_distances, segmentation_scores
from .segnet import SegNet, load_segnet, scored_channels
from .segnet_data import DATASET_PRESET

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
FID_STATS = "fid_stats"   # WORK/eval/fid_stats/: cached real-image statistics, shared by every run
IMAGE_FORMAT = "PNG, 8-bit RGB, lossless (never JPEG): every metric sees exactly the saved pixels"
PUBLISHED_FOR = dict(zip(SEGMENTERS, ("cityscapes", "ade20k", "cocostuff")))  # the dataset each was trained on


# ---------------------------------------------------------------- the stage


@dataclass(frozen=True)
class EvalConfig:
    work: Path
    run: str
    split: str = "val"
    checkpoint: Path | None = None        # default: the run's latest snapshot
    fid: bool = True
    kid: bool = True
    inception_weights: Path | None = None  # default: torch hub cache
    seg: bool = True
    segnet: Path | None = None            # default: WORK/segnet/{preset}.pt when it exists
    segmenter: str | None = None          # a classic segmenter (synth/segmenters) instead of the segnet
    segmenter_weights: tuple[Path, ...] = ()
    upernet_scales: str = "multi"
    batch_size: int = 8
    device: str = "cpu"
    limit: int | None = None
    n_grid: int = 8
    workers: int = 0

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError("split", f"split {self.split!r}: choose one of {', '.join(SPLITS)}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"batch_size {self.batch_size}: must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", f"limit {self.limit}: must be at least 1")
        if self.kid and not self.fid:
            object.__setattr__(self, "kid", False)  # KID reuses the Inception features
        if self.upernet_scales not in UPERNET_SCALES:
            raise ConfigError("upernet_scales", f"upernet_scales {self.upernet_scales!r}: choose one of "
                                                f"{', '.join(UPERNET_SCALES)}")
        if self.segmenter is None:
            if self.segmenter_weights:
                raise ConfigError("segmenter_weights", "segmenter weights without a segmenter: name the segmenter "
                                                       "they belong to")
        elif not self.segmenter.startswith("torchscript:") and self.segmenter not in SEGMENTERS:
            raise ConfigError("segmenter", f"segmenter {self.segmenter!r}: choose one of {', '.join(SEGMENTERS)} "
                                           "or torchscript:PATH")
        elif self.segnet is not None or not self.seg:
            raise ConfigError("segmenter", f"segmenter {self.segmenter} scores the images instead of the "
                                           f"segmentation network: {'give no segnet' if self.seg else 'leave seg on'}")
        object.__setattr__(self, "segmenter_weights", tuple(Path(w) for w in self.segmenter_weights))

    def to_dict(self) -> dict:
        def plain(v):
            return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, tuple) else v

        return {k: plain(v) for k, v in asdict(self).items()}


def find_segnet(work: Path, preset: str, dataset: str, path: Path | None) -> Path | None:
    """`path`, else the work dir's `resail segnet train` checkpoint for the run's preset or the
    dataset's preset; None when there is none."""
    if path is not None:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such segmentation network file")
        return Path(path)
    wd = WorkDir(work)
    for name in dict.fromkeys([preset, DATASET_PRESET.get(dataset)]):
        if name is not None and wd.segnet(name).is_file():
            return wd.segnet(name)
    return None


class SegnetScorer:
    """A SegNet restricted to the evaluated classes; accumulates one confusion matrix per source
    ("generated", "real") in the segmenter's channel space.

    `labels` is the label table of the label maps handed to `add` (the generator's: SynthDataset
    items carry its channel ids); they are remapped to the segmenter's own table, which may differ
    (a toy run scored by an ADE20K-table segmenter). `class_ids` are native ids; the argmax runs
    over those the segmenter has a channel for, and `scores` reports IoU per native id."""

    def __init__(self, segnet: SegNet, labels: LabelChannels, class_ids: list[int], device):
        self.net, self.device = segnet, device
        table = segnet.label_channels()
        self.native = table.native
        self.K = segnet.num_classes
        self.class_channels = scored_channels(table, class_ids)
        self.channels = torch.as_tensor(self.class_channels, dtype=torch.long, device=device)
        self.remap = torch.as_tensor(table.remap_from(labels), device=device)   # input channel → segmenter channel
        self.conf = {"generated": torch.zeros(self.K, self.K, dtype=torch.long, device=device),
                     "real": torch.zeros(self.K, self.K, dtype=torch.long, device=device)}

    @torch.no_grad()
    def add(self, source: str, images_u8: np.ndarray, label: torch.Tensor) -> None:
        """B×H×W×3 uint8 images and their B×H×W label maps (channel ids of `labels`)."""
        x = torch.from_numpy(images_u8).to(self.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        pred = argmax_over(self.net(x), self.channels)      # B×H×W, among the evaluated channels only
        target = self.remap[label.to(self.device)]          # B×H×W segmenter channels (−1: none)
        self.conf[source] += confusion_matrix(pred, target, self.K)

    def scores(self) -> dict[str, dict]:
        out = {}
        for k, c in self.conf.items():
            s = segmentation_scores(c.cpu().numpy(), self.class_channels)
            s["iou"] = {int(self.native[ch]): v for ch, v in s["iou"].items()}   # keyed by native id
            out[k] = s
        return out


class SegmenterScorer:
    """A classic segmenter (synth/segmenters: the published three, or `torchscript:PATH`) scoring
    images in its id space; accumulates one confusion matrix per source like `SegnetScorer`.

    `labels` is the label table of the label maps handed to `add` (the generator's); they go to
    native ids, then into `space` (−1 = ignored). Matrix position p < K is `space.ids[p]`; position
    K collects predictions outside the space (never a class of its own, so they count as misses)."""

    def __init__(self, segmenter, space: IdSpace, labels: LabelChannels):
        self.segmenter, self.space, self.labels = segmenter, space, labels
        self.K = K = len(space.ids)
        self.position = np.full(max(256, max(space.ids, default=0) + 1), K, np.int64)   # id → matrix position
        self.position[list(space.ids)] = np.arange(K)
        self.conf = {"generated": np.zeros((K + 1, K + 1), np.int64), "real": np.zeros((K + 1, K + 1), np.int64)}

    def add(self, source: str, images_u8: np.ndarray, label: torch.Tensor) -> None:
        """B×H×W×3 uint8 images and their B×H×W label maps (channel ids of `labels`)."""
        target = self.space.from_native(self.labels.to_native(label.cpu().numpy()))     # B×H×W, −1 ignored
        for rgb, t in zip(images_u8, target):
            keep = t >= 0
            pred = self.position[self.segmenter.predict(rgb)[keep]]
            self.conf[source] += confusion_matrix(pred, self.position[t[keep]], self.K + 1).numpy()

    def scores(self) -> dict[str, dict]:
        out = {}
        for k, c in self.conf.items():
            s = segmentation_scores(c, range(self.K))
            s["iou"] = {self.space.ids[p]: v for p, v in s["iou"].items()}   # keyed by the space's ids
            out[k] = s
        return out


def _load_real_features(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    with np.load(path) as f:
        return f["features"]


def _save_real_features(path: Path, features: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features)


@dataclass
class _Scorers:
    """What scores the images: the Inception (with its weight file) and the segmenter, or None;
    the segmenter's protocol and the classes its per-class rows list (ids and names)."""

    inception: torch.nn.Module | None = None
    weights: Path | None = None
    weights_sha: str | None = None
    segmenter: SegnetScorer | SegmenterScorer | None = None
    segnet_path: Path | None = None
    seg_protocol: dict | None = None
    class_ids: list[int] | None = None
    names: dict[int, str] | None = None


def _family(dataset: str) -> str:
    return "ade20k" if dataset in ADE20K else dataset


def _load_classic(cfg: EvalConfig, run: LoadedRun, sc: _Scorers) -> _Scorers:
    """The classic segmenter `cfg.segmenter`, refused unless it segments the run's dataset."""
    from .segmenters import load_segmenter

    made_for = PUBLISHED_FOR.get(cfg.segmenter)
    if made_for is not None and made_for != _family(run.dataset):
        raise InputError(f"segmenter {cfg.segmenter} segments {made_for}, but run {run.name!r} is of "
                         f"{run.dataset}; use " + ", ".join(f"{n} for {d}" for n, d in PUBLISHED_FOR.items())
                         + ", or torchscript:PATH (predicting the dataset's evaluation ids)")
    seg = load_segmenter(cfg.segmenter, cfg.segmenter_weights, run.device, upernet_scales=cfg.upernet_scales)
    space = eval_id_space(run.dataset, run.class_ids, run.names)
    sc.segmenter = SegmenterScorer(seg, space, run.channels)
    sc.class_ids, sc.names = list(space.ids), dict(zip(space.ids, space.names))
    sc.seg_protocol = {**seg.protocol, "id_space": space.name,
                       "argmax": "over every class the segmenter predicts, as published"}
    return sc


def _load_scorers(cfg: EvalConfig, run: LoadedRun) -> _Scorers:
    """Inception and segmenter, checked, before any image is generated (missing files fail fast)."""
    sc, work, device = _Scorers(), run.work.root, run.device
    if cfg.fid:
        sc.weights = find_weights(cfg.inception_weights)
        sc.weights_sha = sha256_file(sc.weights)
        sc.inception = load_inception(sc.weights, device)
    if not cfg.seg:
        return sc
    if cfg.segmenter is not None:
        return _load_classic(cfg, run, sc)
    sc.segnet_path = find_segnet(work, run.config.preset, run.dataset, cfg.segnet)
    if sc.segnet_path is None:
        log.warning("eval: no segmentation network in %s (train one with `resail segnet train %s`, or pass "
                    "--segnet PATH); skipping mIoU and pixel accuracy", run.work.segnet_dir, work)
        return sc
    segnet = load_segnet(sc.segnet_path, device)
    check_label_table(segnet.label_channels(), work, (cfg.split,),
                      fix=f"use a segmentation network of this dataset (--segnet, or `resail segnet train {work}`)")
    k, (W, H) = 2 ** segnet.depth, run.size
    if W % k or H % k:
        raise InputError(f"{sc.segnet_path}: the segmentation network needs image sides divisible by {k}, the "
                         f"model makes {W}x{H}; pass a segmentation network of fewer levels or --no-seg")
    sc.segmenter = SegnetScorer(segnet, run.channels, run.class_ids, device)
    sc.class_ids, sc.names = run.class_ids, run.names
    sc.seg_protocol = {"segmenter": "segnet", "checkpoint": str(sc.segnet_path),
                       "weights": [{"file": sc.segnet_path.name, "sha256": sha256_file(sc.segnet_path)}],
                       "input": "RGB / 127.5 - 1 at the model size", "scales": [1.0], "resize": "none",
                       "id_space": "native ids, through the segmentation network's label table",
                       "argmax": "over the dataset's classes only (void and unused channels excluded)"}
    return sc


def _generate_and_score(cfg: EvalConfig, run: LoadedRun, data: SynthDataset, n: int, img_dir: Path,
                        sc: _Scorers, need_real: bool, progress: bool) -> dict:
    """One pass over the first n images: generate, save PNGs, Inception features, confusion
    matrices, grid rows. Returns the feature arrays, grid rows and per-phase timings."""
    out = {"fake": [], "real": [], "grid": [],
           "timings": {"generate_s": 0.0, "write_s": 0.0, "inception_s": 0.0, "segment_s": 0.0}}
    tm, device, palette = out["timings"], run.device, palette_lut(run.dataset, 65536)
    loader = DataLoader(Subset(data, range(n)), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                        worker_init_fn=init_worker)
    bar = tqdm(total=n, desc=f"eval {cfg.run}", unit="img", disable=not progress)
    try:
        for batch in loader:
            t = time.perf_counter()
            extras = {k: batch[k] for k in ("edges", "dist") if k in batch}              # a baseline G's inputs
            fake = run.render(batch["label"], batch["guidance"], extras)                # B×H×W×3
            real = to_uint8(batch["image"])                                            # B×H×W×3
            tm["generate_s"] += time.perf_counter() - t
            t = time.perf_counter()
            for i, rgb in zip(batch["index"].tolist(), fake):
                write_png_atomic(img_dir / f"{data.image_ids[i]}.png", rgb)
            tm["write_s"] += time.perf_counter() - t
            t = time.perf_counter()
            if sc.inception is not None:
                out["fake"].append(inception_features(sc.inception, fake, cfg.batch_size, device))
                if need_real:
                    out["real"].append(inception_features(sc.inception, real, cfg.batch_size, device))
            tm["inception_s"] += time.perf_counter() - t
            t = time.perf_counter()
            if sc.segmenter is not None:
                sc.segmenter.add("generated", fake, batch["label"])
                sc.segmenter.add("real", real, batch["label"])
            tm["segment_s"] += time.perf_counter() - t
            for j in range(min(len(fake), cfg.n_grid - len(out["grid"]))):
                lab = palette[np.clip(data.channels.to_native(batch["label"][j].numpy()), 0, len(palette) - 1)]
                out["grid"].append(np.concatenate([lab, to_uint8(batch["guidance"][j:j + 1])[0], fake[j], real[j]], 1))
            bar.update(len(fake))
    finally:
        bar.close()
    return out


def run_eval(cfg: EvalConfig, *, progress: bool = False) -> dict:
    """Generate the split with the run's G_ema, score it, write WORK/eval/NAME/; returns the metrics.
    One evaluation of a run at a time; it writes a new folder, published whole once its metrics.json
    is written (lifecycle.py), so the previous results stay readable until the new ones replace them."""
    t_start = time.perf_counter()
    if cfg.run == FID_STATS:
        raise InputError(f"run name {FID_STATS!r}: WORK/eval/{FID_STATS} holds the FID statistics cache; evaluate a "
                         "run of another name")
    wd = WorkDir(cfg.work)
    with wd.stage(f"eval-{cfg.run}", f"eval-{cfg.run}", f"the evaluation of run {cfg.run!r}", stage="eval") as st:
        st.restart()  # what a killed evaluation left: an evaluation is not resumed
        metrics = _evaluate(cfg, st.staging, t_start, progress)
        st.commit()
    return metrics


def _evaluate(cfg: EvalConfig, out_dir: Path, t_start: float, progress: bool) -> dict:
    """`run_eval`'s work, every output written into `out_dir`, metrics.json last."""
    run = LoadedRun.load(cfg.work, cfg.run, cfg.checkpoint, cfg.device)
    wd, (W, H) = run.work, run.size
    sc = _load_scorers(cfg, run)

    data = SynthDataset(wd.root, cfg.split, run.config, train=False, with_distorted=False,
                        with_guidance=run.uses_guidance)
    try:
        n = len(data) if cfg.limit is None else min(cfg.limit, len(data))
        if n == 0 or (cfg.fid and n < 2):
            raise InputError(f"{wd.root}: the {cfg.split} split has {n} usable image(s); "
                             + ("FID needs at least 2" if n else "nothing to evaluate"))
        ids = data.image_ids[:n]
        img_dir = out_dir / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        real_cache = real_feats = None
        if cfg.fid:
            key = fingerprint({"v": PROTOCOL_VERSION, "split": cfg.split, "ids": ids, "size": [W, H],
                               "resize": "cv2.INTER_AREA", "weights": sc.weights_sha})
            real_cache = wd.eval_dir(FID_STATS) / f"{cfg.split}_{W}x{H}_{key}.npz"
            real_feats = _load_real_features(real_cache)
        need_real = cfg.fid and real_feats is None
        res = _generate_and_score(cfg, run, data, n, img_dir, sc, need_real, progress)
    finally:
        data.close()

    timings = res["timings"]
    t = time.perf_counter()
    metrics: dict = {"run": cfg.run, "checkpoint": str(run.snapshot), "step": run.step, "split": cfg.split,
                     "n_images": n, "resolution": [W, H], "dataset": run.dataset, "device": str(run.device),
                     "fid": None, "kid": None, "segmentation": None}
    if cfg.fid:
        if need_real:
            real_feats = np.concatenate(res["real"])
            _save_real_features(real_cache, real_feats)
        d = feature_distances(real_feats, np.concatenate(res["fake"]), kid=cfg.kid)
        metrics["fid"], metrics["kid"] = d["fid"], d["kid"]
    timings["fid_s"] = time.perf_counter() - t
    metrics["per_class_iou"] = []
    if sc.segmenter is not None:
        scores = sc.segmenter.scores()
        where = {"segnet": str(sc.segnet_path)} if sc.segnet_path is not None else {}
        metrics["segmentation"] = {"segmenter": sc.seg_protocol["segmenter"], "id_space": sc.seg_protocol["id_space"],
                                   **where,
                                   **{k: {m: v for m, v in s.items() if m != "iou"} for k, s in scores.items()}}
        metrics["per_class_iou"] = _per_class(scores, sc.class_ids, sc.names)
    timings["total_s"] = time.perf_counter() - t_start
    metrics["timings"] = {k: round(v, 3) for k, v in timings.items()}
    metrics["images_per_s"] = round(n / timings["total_s"], 3)
    metrics["protocol"] = _protocol(cfg, run, sc, ids, real_cache, need_real)
    metrics["config"] = cfg.to_dict()
    metrics["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    if res["grid"]:
        write_png_atomic(out_dir / "grid.png", np.concatenate(res["grid"], 0))
    _write_per_class(out_dir / "per_class_iou.csv", metrics["per_class_iou"])
    write_bytes_atomic(out_dir / "report.md", format_report(metrics).encode())
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def _per_class(scores: dict, class_ids: list[int], names: dict[int, str]) -> list[dict]:
    rows = []
    for c in class_ids:
        g, r = scores["generated"]["iou"].get(c), scores["real"]["iou"].get(c)
        if g is not None or r is not None:
            rows.append({"id": c, "name": names.get(c, str(c)), "iou_generated": g, "iou_real": r})
    return rows


def _protocol(cfg: EvalConfig, run: LoadedRun, sc: _Scorers, ids: list[str], real_cache, recomputed: bool) -> dict:
    wd, (W, H), n = run.work, run.size, len(ids)
    bake = (wd.guidance_manifest(cfg.split) or {}).get("params", {})
    rule = label_resize(run.config).__name__  # common.py's nearest rule the run's label maps go through
    p = {
        "version": PROTOCOL_VERSION,
        "n_images": n,
        "image_format": IMAGE_FORMAT,
        "input_size": [W, H],
        "real_reference": {"dataset": run.dataset, "split": cfg.split, "n_images": n,
                           "images": f"the first {n} images of the split in store order, each photo resized to "
                                     f"{W}x{H} with cv2.INTER_AREA (the trainer's resize)",
                           "image_ids_fingerprint": fingerprint(ids)},
        "generator": {"weights": "G_ema in eval mode (BatchNorm running statistics), no gradient, float32",
                      "norm": run.config.net.norm, "origin": run.config.origin,
                      "inputs": generator_inputs(run.config.net)},
        "guidance": ({"cache": str(wd.guidance_h5(cfg.split)),
                      **{k: bake.get(k) for k in ("compose_mode", "choose", "k", "seed", "size", "max_score")}}
                     if run.uses_guidance else None),
        "label_map": f"native ids, nearest-resized to the model size ({rule}), through the run's label "
                     "table (label_ids) to channels; one-hot input to G",
        "generated_images": "clamp to [-1, 1], round((x+1)*127.5) to uint8, saved as PNG; metrics use these bytes",
        "real_images": "split photos resized to the model size with cv2.INTER_AREA (the trainer's resize), uint8",
    }
    if cfg.fid:
        p["fid"] = {"implementation": "resail synth/eval.py with pytorch-fid's conventions (its features are "
                                      "checked against pytorch-fid's InceptionV3 in tests/test_eval.py)",
                    "features": "TF-ported FID Inception pool3, 2048-d; bilinear resize to 299 (align_corners="
                                "False), [0,1] -> [-1,1]",
                    "frechet": "np.cov (ddof 1); scipy.linalg.sqrtm; +1e-6 on the diagonals if not finite",
                    "inception_weights": str(sc.weights), "inception_sha256": sc.weights_sha,
                    "real_stats_cache": str(real_cache), "real_stats_recomputed": recomputed,
                    "kid": "unbiased MMD^2, kernel (x.y/2048+1)^3, 100 subsets of min(1000, N), seed 0"
                    if cfg.kid else None}
        if n < FEATURE_DIM:
            p["fid"]["note"] = (f"{n} images < {FEATURE_DIM} feature dimensions: the covariances are rank-deficient "
                                "and FID is biased upward; compare only at equal N")
    if sc.seg_protocol is not None:
        p["segmentation"] = {
            **sc.seg_protocol, "input_size": [W, H],
            "images": "the generated PNGs' pixels and the real reference images, both at the input size",
            "ground_truth": f"the split's label maps nearest-resized to {W}x{H}, mapped to "
                            f"{sc.seg_protocol['id_space']}",
            "scores": "one confusion matrix per source over the split; IoU = TP/(TP+FP+FN); mIoU = mean over classes "
                      "with a non-empty union; pixel accuracy over non-ignored pixels; the real images give the "
                      "segmenter's own ceiling"}
    return p


def generator_inputs(net) -> list[str]:
    """What G reads, in the protocol's words."""
    return (["one-hot label map"] + (["SPADE's instance edge map"] if net.edges else [])
            + (["retrieval guidance"] if net.guided else [])
            + (["CLADE-ICPE positional maps (label map at its own size, torch nearest)"] if net.icpe else []))


def _write_per_class(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "name", "iou_generated", "iou_real"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def format_report(m: dict) -> str:
    """A short Markdown report: headline metrics, per-class IoU, the grid."""
    seg = m.get("segmentation") or {}
    gen, real = seg.get("generated", {}), seg.get("real", {})
    kid = m.get("kid") or {}
    kid_mean, kid_std = (kid["mean"] * 1000, kid["std"] * 1000) if kid else (None, None)
    lines = [
        f"# resail eval: run `{m['run']}` (step {m['step'] if m['step'] is not None else '?'})",
        "",
        f"{m['n_images']} {m['split']} images at {m['resolution'][0]}x{m['resolution'][1]}, checkpoint "
        f"`{m['checkpoint']}`" + (f"; segmenter `{seg['segmenter']}`." if seg else "."),
        "",
        "| metric | generated | real (upper bound) |",
        "|---|---|---|",
        f"| FID | {_fmt(m.get('fid'), 2)} | |",
        f"| KID ×1000 | {_fmt(kid_mean, 2)} ± {_fmt(kid_std, 2)} | |",
        f"| mIoU | {_fmt(gen.get('miou'))} | {_fmt(real.get('miou'))} |",
        f"| pixel accuracy | {_fmt(gen.get('pixel_acc'))} | {_fmt(real.get('pixel_acc'))} |",
        "",
    ]
    note = ((m.get("protocol") or {}).get("fid") or {}).get("note")
    if note:
        lines += [f"Note: {note}.", ""]
    if m.get("per_class_iou"):
        lines += ["| class | IoU generated | IoU real |", "|---|---|---|"]
        lines += [f"| {r['id']} {r['name']} | {_fmt(r['iou_generated'])} | {_fmt(r['iou_real'])} |"
                  for r in m["per_class_iou"]]
        lines.append("")
    lines += ["![label | guidance | generated | real](grid.png)", "",
              "Protocol: see `metrics.json` → `protocol`.", ""]
    return "\n".join(lines)


def format_metrics(m: dict) -> str:
    """One line for the CLI."""
    parts = [f"{m['n_images']} {m['split']} images at {m['resolution'][0]}x{m['resolution'][1]}"]
    if m.get("fid") is not None:
        parts.append(f"FID {m['fid']:.2f}")
    if m.get("kid"):
        parts.append(f"KID {m['kid']['mean']:.4f}±{m['kid']['std']:.4f}")
    seg = m.get("segmentation")
    if seg:
        parts.append(f"{seg['segmenter']} mIoU {seg['generated']['miou']:.4f} (real {seg['real']['miou']:.4f}), "
                     f"pixel acc {seg['generated']['pixel_acc']:.4f} (real {seg['real']['pixel_acc']:.4f})")
    return ", ".join(parts) + f" in {m['timings']['total_s']:.1f}s"


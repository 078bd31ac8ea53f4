"""`resail synthesize`: a photo from a user's own label map with a trained run.

The label map is decomposed with the store's rules, every segment retrieves its top-k training
segments of the same class from the index, the guidance is composed (`LabelMapGuidance`) and
G_ema of the run's snapshot turns label map + guidance into the image.

Which match each segment pastes decides the result, and it is the only random choice (G has no
noise input): without `seed` every segment takes its best match; with `seed` S each segment
draws uniformly among its top-k, reproducibly (the draw depends on S and the segment index
only). `resample` then draws again, with `resample_seed`, for the listed segments only, and
every other segment keeps its match (local editing, paper Fig. 5). The same arguments give the
same bytes.

The label PNG is in the dataset's own label-file format: native class ids (ADE20K, Cityscapes
labelIds, folder), or COCO-Stuff stuffthingmap values (v → class v + 1, 255 → void). G takes
them through the run's label table (from its snapshot); a class the table lacks is an error
that lists the classes the run covers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..errors import InputError
from ..artifacts import read_manifest, write_bytes_atomic
from ..pipeline.bake import LabelMapGuidance
from ..pipeline.datasets import read_index_png
from .data import one_hot, resize_nearest, segments_params, to_tensor, to_uint8
from .eval import find_snapshot
from .labels import LabelChannels
from .train import load_snapshot


@dataclass(frozen=True)
class SynthesizeConfig:
    work: Path
    run: str
    label: Path
    out: Path
    instance: Path | None = None
    checkpoint: Path | None = None          # default: the run's latest snapshot
    seed: int | None = None                 # None: best match per segment; S: sample among the top-k
    k: int = 10
    resample: tuple[int, ...] = ()          # segment indices to draw again
    resample_seed: int | None = None        # default: (seed or 0) + 1
    guidance_out: Path | None = None
    device: str = "cpu"

    def __post_init__(self):
        if self.k < 1:
            raise InputError(f"--k {self.k}: must be at least 1")
        if self.resample_seed is not None and not self.resample:
            raise InputError("--resample-seed without --resample: name the segments to draw again")


@dataclass
class SegmentChoice:
    index: int
    class_id: int
    class_name: str
    is_thing: bool
    area: int                # pixels in the user's label map
    match_id: int            # train segment id pasted, −1 = none (black guidance)
    rank: int                # its rank among the top-k, −1 = none
    score: float             # its retrieval score (lower is better), nan = none
    candidates: int          # matches found (≤ k)
    reason: str = ""         # why there is no match
    resampled: bool = False
    previous_match: int | None = None


@dataclass
class SynthesisResult:
    image: np.ndarray        # H×W×3 uint8, written to `out`
    guidance: np.ndarray     # H×W×3 uint8
    label_map: np.ndarray    # H×W native ids at the model size (G's input)
    segment_map: np.ndarray  # H×W index into `segments` at the model size, −1 = no segment
    segments: list[SegmentChoice] = field(default_factory=list)
    out: Path | None = None
    guidance_out: Path | None = None


def read_user_label_map(work: Path, path: Path) -> np.ndarray:
    """A label PNG in the work dir's dataset format → H×W int32 native ids (0 = void), checked
    against the dataset's class table (unknown ids are listed)."""
    seg = segments_params(work)
    dataset = seg["params"]["dataset"]
    raw = read_index_png(path)
    if dataset == "cocostuff":
        bad = sorted(int(v) for v in np.unique(raw) if not (0 <= v <= 181 or v == 255))
        if bad:
            raise InputError(f"{path}: values {bad[:12]} are not COCO-Stuff stuffthingmap values (0..181, 255 = "
                             "unlabeled)")
        raw = np.where(raw == 255, 0, raw + 1).astype(np.int32)
    known = set(int(c) for c in seg["classes"]["ids"]) | {0}
    unknown = sorted(int(v) for v in np.unique(raw) if int(v) not in known)
    if unknown:
        raise InputError(f"{path}: class ids {unknown[:12]}{' …' if len(unknown) > 12 else ''} are not in the "
                         f"{dataset} class table of {work}; write native class ids (0 = void)")
    return raw.astype(np.int32)


def run_table_fix(run: str, channels: LabelChannels, names: dict[int, str]) -> str:
    """What to do about a class the run's label table lacks: the classes it does cover."""
    covered = [int(c) for c in channels.native[1:]]
    listed = ", ".join(f"{c} {names.get(c, '?')}" for c in covered[:40]) + (" …" if len(covered) > 40 else "")
    if channels.identity:
        return f"run {run!r} takes native ids 0..{len(channels) - 1}"
    return (f"run {run!r} was trained with a label table of {len(covered)} classes ({listed}); paint only those, "
            "or train a run whose label table covers the others")


def _read_instance_map(path: Path, label_map: np.ndarray, label_path: Path) -> np.ndarray:
    inst = read_index_png(path)
    if inst.shape != label_map.shape:
        raise InputError(f"{path}: instance map is {inst.shape[1]}x{inst.shape[0]} but the label map {label_path} is "
                         f"{label_map.shape[1]}x{label_map.shape[0]}; they must match pixel for pixel")
    return inst


def _search_params(work: Path) -> dict:
    """Retrieval and composition settings of the bake (val, else train), so that synthesis sees
    guidance built like the guidance the run was trained and evaluated with."""
    for split in ("val", "train"):
        m = read_manifest(Path(work) / "guidance", f"{split}_manifest.json")
        if m is not None:
            p = m["params"]
            return {"k_prefilter": p.get("k_prefilter", 256), "max_score": p.get("max_score"),
                    "mode": p.get("compose_mode", "clean")}
    return {"k_prefilter": 256, "max_score": None, "mode": "clean"}


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(f"{path}: cannot encode a PNG (unsupported extension?)")
    write_bytes_atomic(path, png.tobytes())


def _choices(g: LabelMapGuidance, names: dict[int, str], resampled: set[int], before: list[int]) -> list[SegmentChoice]:
    out = []
    matches = g.matches()
    for i, seg in enumerate(g.segments):
        r = int(g.chosen[i])
        out.append(SegmentChoice(
            index=i, class_id=int(seg.class_id), class_name=names.get(int(seg.class_id), "?"),
            is_thing=bool(seg.is_thing), area=int(seg.area), match_id=matches[i], rank=r,
            score=float(g.scores[i, r]) if r >= 0 else float("nan"), candidates=int((g.ids[i] >= 0).sum()),
            reason=g.reason[i], resampled=i in resampled, previous_match=before[i] if i in resampled else None))
    return out


@torch.no_grad()
def synthesize(cfg: SynthesizeConfig) -> SynthesisResult:
    """Decompose, retrieve, compose, generate; writes `cfg.out` (and `cfg.guidance_out`)."""
    work = Path(cfg.work)
    device = torch.device(cfg.device)
    G, tcfg = load_snapshot(find_snapshot(work, cfg.run, cfg.checkpoint), device)
    W, H = tcfg.net.width, tcfg.net.height
    label_map = read_user_label_map(work, cfg.label)
    instance_map = _read_instance_map(cfg.instance, label_map, cfg.label) if cfg.instance is not None else None
    classes = segments_params(work)["classes"]
    names = dict(zip((int(c) for c in classes["ids"]), classes.get("names", [])))
    channels = LabelChannels.of(tcfg.net)
    channels.check(np.unique(label_map), str(cfg.label), fix=run_table_fix(cfg.run, channels, names), names=names)

    g = LabelMapGuidance(work, label_map, instance_map, size=(W, H), k=cfg.k, where=str(cfg.label),
                         **_search_params(work))
    try:
        if cfg.seed is not None:
            g.resample(np.arange(len(g.segments)), cfg.seed)
        before = g.matches()
        if cfg.resample:
            g.resample(list(cfg.resample), (cfg.seed or 0) + 1 if cfg.resample_seed is None else cfg.resample_seed)
        guidance = g.compose()                                               # H×W×3 uint8
        segments = _choices(g, names, set(cfg.resample), before)
        segment_map = g.segment_map.copy()
    finally:
        g.close()

    label_small = resize_nearest(label_map, W, H).astype(np.int64)          # H×W native ids, as the trainer
    label_ch = channels.to_channels(label_small, str(cfg.label))             # H×W channel ids
    m = one_hot(torch.from_numpy(label_ch)[None].to(device), tcfg.net.semantic_nc)  # 1×L×H×W
    image = to_uint8(G(m, to_tensor(guidance)[None].to(device)))[0]          # H×W×3
    _write_png(Path(cfg.out), image)
    if cfg.guidance_out is not None:
        _write_png(Path(cfg.guidance_out), guidance)
    return SynthesisResult(image, guidance, label_small.astype(np.int32), segment_map, segments, Path(cfg.out),
                           None if cfg.guidance_out is None else Path(cfg.guidance_out))


def format_segments(result: SynthesisResult) -> str:
    """One line per segment: the index to pass to --resample, class, match and how good it is."""
    lines = [f"{'seg':>4}  {'class':<28} {'area':>8}  match"]
    for s in result.segments:
        cls = f"{s.class_id} {s.class_name}" + (" (thing)" if s.is_thing else "")
        if s.match_id < 0:
            match = f"none ({s.reason or 'no candidate'}): black guidance"
        else:
            match = f"train segment {s.match_id} (rank {s.rank} of {s.candidates}, score {s.score:.4f})"
        if s.resampled:
            match += (" [resampled, was " + str(s.previous_match) + "]" if s.previous_match != s.match_id
                      else " [resampled: drew the same match; try another --resample-seed]")
        lines.append(f"{s.index:>4}  {cls:<28} {s.area:>8}  {match}")
    return "\n".join(lines)

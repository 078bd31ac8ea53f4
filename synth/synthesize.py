"""`resail synthesize`: a photo from a user's own label map with a trained run; and `Synthesis`, the
one library call that turns a label map into a picture for both `resail synthesize` and `resail serve`.

`Synthesis(run, label_map)` (the run loaded once as a `LoadedRun`, synth/inference.py, shared with
eval and serve) decomposes the map with the store's rules, retrieves every segment's top-k
training segments of the same class from the index, and keeps the guidance's per-segment choice
(`LabelMapGuidance`); `render()` composes the guidance and runs G_ema of the run's snapshot on
label map + guidance. Its edits change the match of some segments while every other segment keeps
its own (local editing, paper Fig. 5): `redraw`, `choose`, `variants`, `adopt`. `synthesize(cfg)`
reads one label file and writes the PNGs; `resail serve` keeps one `Synthesis` per session.

Which match each segment pastes decides the result, and it is the only random choice (G has no
noise input). Without `seed` every segment takes its best match; with `seed` S each segment draws
uniformly among its other candidates than the best, reproducibly (the draw depends on S and the
segment index only). Each redraw after that (`resample`; in serve each Resample and each variant)
is the label map's next one: the n-th draws with seed S + n (S = 0 without a seed;
`pipeline.guidance.redraw_seed`), unless a seed is given (`resample_seed`), and only for its
segments. The same arguments give the same bytes.

The label PNG is read as users have it (the run's `Vocabulary`, labels/vocabulary.py and labels/files.py):
class ids in any of the dataset's id spaces (ADE20K ids, Cityscapes labelIds or trainIds,
COCO-Stuff stuffthingmap values, folder native ids) or a colour map in the dataset's palette,
told apart by `label_format` (auto by default, with the rules and their one ambiguity documented
there). Any size from 8 to 4096 px a side: it is decomposed at its own size and resized to the
model size with nearest neighbour, as the trainer resizes the dataset's maps, with a note when
that stretches it. G takes it through the run's label table (from its snapshot); a class the
table lacks is an error that lists the classes the run covers. `label_out` writes the map G took
(at the model size, pixel for pixel with the image) as dataset ids or in the palette.

A run whose G reads no guidance (SPADE, CLADE; docs/baselines.md) retrieves nothing: the segment
list is empty and the guidance black. Its G may read SPADE's instance edge map, made from
`instance` (the instance file its authors' dataset has: Cityscapes `instanceIds`, COCO-Stuff's
SPADE `{split}_inst` map) or, without one, from the label map's boundaries; and CLADE-ICPE's
positional maps, made from the label map at its own size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import write_png_atomic
from ..choices import LABEL_FORMATS, LABEL_OUT_FORMATS
from ..errors import ConfigError, InputError
from ..pipeline.labels.files import aspect_note, read_instance_map
from .inference import LoadedRun

log = logging.getLogger(__name__)


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
    resample_seed: int | None = None        # default: (seed or 0) + 1, the label map's first redraw
    guidance_out: Path | None = None
    device: str = "cpu"                     # or auto, cuda, cuda:N
    label_format: str = "auto"              # auto, ids, trainids or color (labels/files.py)
    label_out: Path | None = None           # also write the label map G took, at the model size
    label_out_format: str = "ids"           # ids (the dataset's label-file format) or color

    def __post_init__(self):
        if self.k < 1:
            raise ConfigError("k", f"k {self.k}: must be at least 1")
        if self.label_format not in LABEL_FORMATS:
            raise ConfigError("label_format", f"label format {self.label_format!r}: choose one of "
                                              f"{', '.join(LABEL_FORMATS)}")
        if self.label_out_format not in LABEL_OUT_FORMATS:
            raise ConfigError("label_out_format", f"label output format {self.label_out_format!r}: choose one of "
                                                  f"{', '.join(LABEL_OUT_FORMATS)}")
        if self.resample_seed is not None and not self.resample:
            raise ConfigError("resample_seed", "a resample seed without segments to resample: name the segments "
                                               "to draw again")


@dataclass
class SegmentChoice:
    """One segment of a user's label map and the training segment its guidance pastes."""

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
    resampled: bool = False  # the last edit redrew or chose it
    previous_match: int | None = None


class Synthesis:
    """One label map turned into a picture by a loaded run, editable segment by segment.

    Built from native ids at any size (checked against the run's label table by the caller:
    `run.labels.check`); `label_map` is the map G takes, at the model size. After `render()`,
    `guidance` and `image` (H×W×3 uint8) hold the current choice's pictures. An edit changes the
    choice only; `render()` again to see it. `close()` releases the training store."""

    def __init__(self, run: LoadedRun, label_map: np.ndarray, instance_map: np.ndarray | None = None, *, k: int,
                 seed: int | None = None, where: str = "label map"):
        t0 = time.perf_counter()
        self.run, self.k, self.seed, self.where = run, k, seed, where
        self.label_map = run.at_size(label_map)              # H×W native ids at the model size (G's input)
        self.state = run.guidance(label_map, instance_map, k=k, seed=seed, where=where)
        self.extras = run.extras(label_map, instance_map)     # a baseline G's edge / positional maps; {} for RESAIL
        note = aspect_note(label_map.shape, run.size, where)
        self.notes = [note] if note else []                   # e.g. the model size stretches the map
        if run.config.net.edges and instance_map is None:
            self.notes.append(f"run {run.name!r} reads an instance edge map and no instance map was given: it gets "
                              "the label map's boundaries (pass the instance map its authors' dataset has)")
        self.before = self.state.matches()                    # the matches ahead of the last edit
        self.edited: set[int] = set()                         # the segments the last edit changed
        self.guidance: np.ndarray | None = None
        self.image: np.ndarray | None = None
        self.timings = {"retrieve_ms": _ms_since(t0)}

    def close(self) -> None:
        self.state.close()

    def render(self) -> None:
        """Compose the guidance of the current choice and run G on it."""
        t0 = time.perf_counter()
        self.guidance = self.state.compose()                                                   # H×W×3
        t1 = time.perf_counter()
        self.image = self.run.generate(self.label_map[None], self.guidance[None], self.where, [self.extras])[0]
        self.timings.update(compose_ms=_ms_since(t0, t1), generate_ms=_ms_since(t1))

    # ---------------------------------------------------------------- edits

    def _edit(self) -> None:
        self.before = self.state.matches()
        self.timings = {}

    def redraw(self, segments, seed: int | None = None) -> None:
        """Draw another match for the given segment indices (the label map's next redraw, or with
        `seed`); every other segment keeps its match."""
        self._edit()
        self.state.redraw(list(segments), seed)
        self.edited = {int(i) for i in segments}

    def choose(self, segment: int, rank: int) -> None:
        """Paste the match of rank `rank` into one segment; every other segment keeps its match."""
        ids = self.state.ids
        if not 0 <= rank < ids.shape[1] or ids[segment, rank] < 0:
            raise InputError(f"segment {segment} has no match of rank {rank} ({int((ids[segment] >= 0).sum())} found)")
        self._edit()
        self.state.chosen[segment] = rank
        self.edited = {segment}

    def variants(self, n: int) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
        """N pictures, each with every segment's match drawn afresh (the label map's next n
        redraws), the current choice left as it is: (guidance images, B×H×W×3 outputs, the chosen
        ranks of each, for `adopt`)."""
        g = self.state
        keep = g.chosen.copy()
        guidance, chosen = [], []
        try:
            for _ in range(n):
                g.redraw(np.arange(len(g.segments)))
                guidance.append(g.compose())
                chosen.append(g.chosen.copy())
        finally:
            g.chosen[:] = keep
        images = self.run.generate(np.repeat(self.label_map[None], n, 0), np.stack(guidance), self.where,
                                   [self.extras] * n)
        return guidance, images, chosen

    def adopt(self, chosen: np.ndarray) -> None:
        """Make a variant's chosen ranks (from `variants`) the current choice."""
        self._edit()
        self.state.chosen[:] = chosen
        self.edited = set(np.flatnonzero(np.array(self.before) != np.array(self.state.matches())).tolist())

    # ---------------------------------------------------------------- answers

    def choices(self) -> list[SegmentChoice]:
        """The current choice of every segment, with what the last edit changed."""
        g, names = self.state, self.run.labels.names
        out = []
        for i, (seg, match) in enumerate(zip(g.segments, g.matches())):
            r = int(g.chosen[i])
            out.append(SegmentChoice(
                index=i, class_id=int(seg.class_id), class_name=names.get(int(seg.class_id), "?"),
                is_thing=bool(seg.is_thing), area=int(seg.area), match_id=match, rank=r,
                score=float(g.scores[i, r]) if r >= 0 else float("nan"), candidates=int((g.ids[i] >= 0).sum()),
                reason=g.reason[i], resampled=i in self.edited,
                previous_match=self.before[i] if i in self.edited else None))
        return out


def _ms_since(t0: float, t1: float | None = None) -> float:
    return round(1000 * ((time.perf_counter() if t1 is None else t1) - t0), 1)


# ---------------------------------------------------------------- the command


@dataclass
class SynthesisResult:
    image: np.ndarray        # H×W×3 uint8, written to `out`
    guidance: np.ndarray     # H×W×3 uint8
    label_map: np.ndarray    # H×W native ids at the model size (G's input)
    segment_map: np.ndarray  # H×W index into `segments` at the model size, −1 = no segment
    segments: list[SegmentChoice] = field(default_factory=list)
    out: Path | None = None
    guidance_out: Path | None = None
    label_out: Path | None = None
    label_read_as: str = ""  # how the label file was read (format, and what `auto` saw)
    notes: list[str] = field(default_factory=list)  # e.g. the label map was stretched to the model size


def synthesize(cfg: SynthesizeConfig) -> SynthesisResult:
    """Read the label file, synthesise it (`Synthesis`), redraw `cfg.resample`; writes `cfg.out`
    (and `cfg.guidance_out`, `cfg.label_out`)."""
    run = LoadedRun.load(cfg.work, cfg.run, cfg.checkpoint, cfg.device)
    where = str(cfg.label)
    read = run.labels.read(cfg.label, cfg.label_format)
    instance_map = read_instance_map(cfg.instance, read.label_map, where) if cfg.instance is not None else None
    run.labels.check(read.label_map, where)
    s = Synthesis(run, read.label_map, instance_map, k=cfg.k, seed=cfg.seed, where=where)
    try:
        if cfg.resample:
            s.redraw(cfg.resample, cfg.resample_seed)
        s.render()
        segments, segment_map = s.choices(), s.state.segment_map.copy()
    finally:
        s.close()
    for note in s.notes:
        log.warning("synthesize: %s", note)
    label_png = None if cfg.label_out is None else run.labels.encode(s.label_map, cfg.label_out_format)
    for path, picture in ((cfg.out, s.image), (cfg.guidance_out, s.guidance), (cfg.label_out, label_png)):
        if path is not None:
            write_png_atomic(path, picture)
    return SynthesisResult(s.image, s.guidance, s.label_map.astype(np.int32), segment_map, segments, Path(cfg.out),
                           None if cfg.guidance_out is None else Path(cfg.guidance_out),
                           None if cfg.label_out is None else Path(cfg.label_out),
                           f"{read.format}: {read.how}", s.notes)


def format_segments(result: SynthesisResult) -> str:
    """One line per segment: the index to pass to --resample, class, match and how good it is."""
    if not result.segments:
        return "no retrieval: this run's generator reads no guidance (the label map alone)"
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

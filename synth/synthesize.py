"""`resail synthesize`: a photo from a user's own label map with a trained run.

The run loads as a `LoadedRun` (synth/inference.py, shared with eval and serve): the label map is
decomposed with the store's rules, every segment retrieves its top-k training segments of the
same class from the index, the guidance is composed (`LabelMapGuidance`) and G_ema of the run's
snapshot turns label map + guidance into the image.

Which match each segment pastes decides the result, and it is the only random choice (G has no
noise input): without `seed` every segment takes its best match; with `seed` S each segment
draws uniformly among its top-k, reproducibly (the draw depends on S and the segment index
only). `resample` then draws again, with `resample_seed`, for the listed segments only, and
every other segment keeps its match (local editing, paper Fig. 5). The same arguments give the
same bytes.

The label PNG is read as users have it (`LoadedRun.read_label_file`, pipeline/label_maps.py):
class ids in any of the dataset's id spaces (ADE20K ids, Cityscapes labelIds or trainIds,
COCO-Stuff stuffthingmap values, folder native ids) or a colour map in the dataset's palette,
told apart by `label_format` (auto by default, with the rules and their one ambiguity documented
there). Any size from 8 to 4096 px a side: it is decomposed at its own size and resized to the
model size with nearest neighbour, as the trainer resizes the dataset's maps, with a warning when
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import write_png_atomic
from ..errors import InputError
from ..pipeline.label_maps import LABEL_FORMATS, LABEL_OUT_FORMATS, encode_label_map, read_instance_map
from .inference import LoadedRun, SegmentChoice, segment_choices

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
    resample_seed: int | None = None        # default: (seed or 0) + 1
    guidance_out: Path | None = None
    device: str = "cpu"                     # or auto, cuda, cuda:N
    label_format: str = "auto"              # auto, ids, trainids or color (pipeline/label_maps.py)
    label_out: Path | None = None           # also write the label map G took, at the model size
    label_out_format: str = "ids"           # ids (the dataset's label-file format) or color

    def __post_init__(self):
        if self.k < 1:
            raise InputError(f"--k {self.k}: must be at least 1")
        if self.label_format not in LABEL_FORMATS:
            raise InputError(f"--label-format {self.label_format!r}: choose one of {', '.join(LABEL_FORMATS)}")
        if self.label_out_format not in LABEL_OUT_FORMATS:
            raise InputError(f"--label-out-format {self.label_out_format!r}: choose one of "
                             f"{', '.join(LABEL_OUT_FORMATS)}")
        if self.resample_seed is not None and not self.resample:
            raise InputError("--resample-seed without --resample: name the segments to draw again")


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
    """Decompose, retrieve, compose, generate; writes `cfg.out` (and `cfg.guidance_out`)."""
    run = LoadedRun.load(cfg.work, cfg.run, cfg.checkpoint, cfg.device)
    read = run.read_label_file(cfg.label, cfg.label_format)
    label_map = read.label_map
    instance_map = read_instance_map(cfg.instance, label_map, str(cfg.label)) if cfg.instance is not None else None
    run.check_classes(label_map, str(cfg.label))
    notes = [n for n in [run.label_note(label_map, str(cfg.label))] if n]
    if run.config.net.edges and instance_map is None:
        notes.append(f"run {cfg.run!r} reads an instance edge map and no --instance was given: it gets the label "
                     "map's boundaries (pass the instance map its authors' dataset has)")
    for note in notes:
        log.warning("synthesize: %s", note)

    g = run.guidance(label_map, instance_map, k=cfg.k, where=str(cfg.label))
    try:
        if cfg.seed is not None:
            g.resample(np.arange(len(g.segments)), cfg.seed)
        before = g.matches()
        if cfg.resample:
            g.resample(list(cfg.resample), (cfg.seed or 0) + 1 if cfg.resample_seed is None else cfg.resample_seed)
        guidance = g.compose()                                               # H×W×3 uint8
        segments = segment_choices(g, run.names, set(cfg.resample), before)
        segment_map = g.segment_map.copy()
    finally:
        g.close()

    label_small = run.at_size(label_map)                                    # H×W native ids, as the trainer
    extras = run.extras(label_map, instance_map)                            # {} for a RESAIL run
    image = run.generate(label_small[None], guidance[None], str(cfg.label), [extras])[0]  # H×W×3
    write_png_atomic(cfg.out, image)
    if cfg.guidance_out is not None:
        write_png_atomic(cfg.guidance_out, guidance)
    if cfg.label_out is not None:
        write_png_atomic(cfg.label_out, encode_label_map(label_small, run.dataset, cfg.label_out_format))
    return SynthesisResult(image, guidance, label_small.astype(np.int32), segment_map, segments, Path(cfg.out),
                           None if cfg.guidance_out is None else Path(cfg.guidance_out),
                           None if cfg.label_out is None else Path(cfg.label_out),
                           f"{read.format}: {read.how}", notes)


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

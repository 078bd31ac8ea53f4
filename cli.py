"""The `resail` command line: the only place that parses flags.

Each command validates its flags, builds one config, and calls one library function. Library
code raises typed errors (`resail.errors`); `main` turns them into one line on stderr and exit
code 1. Usage errors (bad flags) exit 2. `--debug` shows the full traceback instead.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path

import click

from . import __version__
from .choices import (
    BACKENDS,
    CHOOSE,
    COCO_LAYOUTS,
    COLOR_REFS,
    COMPOSE_MODES,
    CROP_CODECS,
    DATASETS,
    FAISS_DEVICES,
    LABEL_FORMATS,
    LABEL_OUT_FORMATS,
    ON_ERROR,
    SEGMENTERS,
    SPLITS,
    TOY_FORMATS,
    TOY_PRESETS,
    UNCOVERED_THINGS,
    UPERNET_SCALES,
)
from .errors import ConfigError, ResailError
from .synth.baselines.authors import AUTHORS_UPSAMPLING, SOURCES  # the light modules of synth/: no torch
from .synth.config import AMP, RECIPES
from .synth.presets import DEMO_PRESETS, NORMS, PRESETS

log = logging.getLogger("resail")

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
PRESET_NAMES = tuple(PRESETS)
SEED = click.IntRange(0, 2**32 - 1)  # numpy's seed range: a negative or huge seed is a usage error
MAX_SIDE = 4096  # --size: well above any preset (Cityscapes 512x256), far below running out of memory
# The library's name of a parameter whose flag stores it under another name (`common` maps a ConfigError).
FLAG_NAMES = {"weights": "segmenter_weights", "segnet": "segnet_path", "run": "run_name", "edges": "instance_edges"}


class Size(click.ParamType):
    """WxH, e.g. 256x256."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            w, h = (int(v) for v in str(value).lower().split("x"))
            if w <= 0 or h <= 0:
                raise ValueError
        except ValueError:
            self.fail(f"{value!r} is not a size like 256x256 (width x height, positive integers)", param, ctx)
        if max(w, h) > MAX_SIDE:
            self.fail(f"{value!r}: at most {MAX_SIDE} pixels a side", param, ctx)
        return w, h


def run_name_option(value):
    """A click callback: `--name`/`--run` must be one folder name under WORK/runs (exit 2 otherwise)."""
    from .workdir import check_run_name

    if value is None:
        return None
    try:
        return check_run_name(value)
    except ResailError as e:
        raise click.BadParameter(str(e)) from None


class ShardSpec(click.ParamType):
    """I/N: run only shard I of N (0-based)."""

    name = "I/N"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            i, n = (int(v) for v in str(value).split("/"))
            if not 0 <= i < n:
                raise ValueError
        except ValueError:
            self.fail(f"{value!r} is not I/N with 0 <= I < N", param, ctx)
        return i, n


# One meaning of --shard/--merge for every sharded stage (pipeline/runner.py).
SHARD_HELP = ("Compute only shard I of N (images K*I//N .. K*(I+1)//N of K), then stop; "
              "merge with --merge once every shard has finished.")
MERGE_HELP = ("Merge after checking that every shard has finished (alone: compute nothing). "
              "Without --shard and --merge: compute every missing part, then merge.")


def backend_options(fn):
    """`--backend` and `--scheduler`, with one meaning for every parallel command (pipeline/runner.py)."""
    fn = click.option("--scheduler", default=None, metavar="ADDRESS",
                      help="With --backend dask: the scheduler's address, e.g. tcp://node1:8786 "
                           "[default: start a local cluster of --jobs worker processes].")(fn)
    return click.option("--backend", type=click.Choice(BACKENDS), default="loky",
                        help="Where parallel tasks run: local worker processes (loky), or a dask cluster "
                             "(pip install 'resail[dask]'). Same bytes either way.")(fn)


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    # Third-party loggers (faiss announces its SIMD build at INFO) stay at WARNING unless --debug.
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s",
                        stream=sys.stderr, force=True)
    logging.getLogger("resail").setLevel(level)


THREADS_HELP = ("CPUs this command shares between its process and its workers [default: those it may use: "
                "CPU affinity and cgroup quota; RESAIL_THREADS=N or off].")


def common(fn):
    """`--quiet`, `--debug` and `--threads` on every command; the values land in ctx.obj. A parameter
    the library refuses (`ConfigError`) becomes a usage error of the flag that gave it (`flag_error`)."""

    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or info messages; errors only.")
    @click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
    @click.option("--threads", type=click.IntRange(1, 4096), default=None, help=THREADS_HELP)
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx, *args, quiet=False, debug=False, threads=None, **kwargs):
        obj = ctx.ensure_object(dict)
        obj["quiet"] = obj.get("quiet", False) or quiet
        obj["debug"] = obj.get("debug", False) or debug
        obj["threads"] = threads if threads is not None else obj.get("threads")
        _setup_logging(obj["quiet"], obj["debug"])
        try:
            return ctx.invoke(fn, *args, **kwargs)
        except ConfigError as e:
            raise flag_error(ctx, e) from None

    return wrapper


def flag_error(ctx: click.Context, e: ConfigError) -> click.BadParameter | ConfigError:
    """The library's refusal of parameter `e.name` as a usage error of the flag that set it, when
    this command was given that flag; else the error as it is (a default, a saved run's setting)."""
    from click.core import ParameterSource

    for param in ctx.command.params:
        if param.name in (e.name, FLAG_NAMES.get(e.name)) and \
                ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            return click.BadParameter(str(e), ctx=ctx, param=param)
    return e


def progress_enabled() -> bool:
    return not click.get_current_context().find_root().obj.get("quiet", False)


def use_threads(workers: int = 0, *, alongside: bool = True) -> None:
    """The thread policy (threads.py) for this command's process and its `workers` worker processes:
    `alongside` when the main process computes while they run (data loaders), else a stage's workers.
    Called after the command's imports, so that the libraries it loads take the count."""
    from .threads import use

    use(workers, alongside=alongside, threads=click.get_current_context().find_root().obj.get("threads"))


def use_stage_threads(jobs: int) -> None:
    """The thread policy of a parallel stage: `jobs` workers compute its parts while this process waits."""
    use_threads(jobs if jobs > 1 else 0, alongside=False)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="resail")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or info messages; errors only.")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("--threads", type=click.IntRange(1, 4096), default=None, help=THREADS_HELP)
@click.pass_context
def cli(ctx, quiet, debug, threads):
    """resail: retrieval-based semantic image synthesis (RESAIL, CVPR 2022) as staged offline jobs.

    \b
    Typical run on a dataset:
      resail index build --dataset ade20k --root DATA --work WORK
      resail guidance bake WORK --split train
      resail guidance bake WORK --split val
      resail train WORK --preset ade20k
      resail eval WORK --run NAME
    Try `resail demo` for the whole pipeline on a built-in toy dataset.
    """
    ctx.ensure_object(dict).update(quiet=quiet, debug=debug, threads=threads)
    _setup_logging(quiet, debug)


# ---------------------------------------------------------------- data


@cli.group(context_settings=CONTEXT)
def data():
    """Datasets: make the built-in toy dataset."""


@data.command("toy", context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(TOY_FORMATS), default=None,
              help="Official on-disk format to write [default: ade20k, or the --preset's].")
@click.option("--preset", type=click.Choice(TOY_PRESETS), default=None,
              help="Realistic preset: the real dataset's image size and instances per image (docs/scale.md).")
@click.option("--realistic", is_flag=True, help="Shorthand for --preset FORMAT-real.")
@click.option("--n-train", type=click.IntRange(1, 100_000), default=200, help="Training images.")
@click.option("--n-val", type=click.IntRange(1, 100_000), default=40, help="Validation images.")
@click.option("--size", type=Size(), default=None,
              help="Image size WxH [default: 256x256; 512x256 for cityscapes; the --preset's].")
@click.option("--seed", type=SEED, default=0, help="Random seed; the same seed writes identical bytes.")
@click.option("--jobs", type=click.IntRange(1, 1024), default=1, help="Parallel worker processes (same bytes).")
@backend_options
@common
def data_toy(out, fmt, preset, realistic, n_train, n_val, size, seed, jobs, backend, scheduler):
    """Write a procedural toy dataset to OUT in the official format of a real dataset."""
    from .pipeline.runner import parallel_backend
    from .pipeline.toy import ToyConfig, make_toy_dataset

    if realistic:
        if preset is not None:
            raise click.UsageError("give --preset or --realistic, not both")
        preset = f"{fmt or 'ade20k'}-real"
    if preset is not None and fmt is not None and not preset.startswith(fmt + "-"):
        raise click.UsageError(f"--format {fmt} does not match --preset {preset}")
    run = {"n_train": n_train, "n_val": n_val, "seed": seed, "n_jobs": jobs}
    if size is not None:
        run.update(width=size[0], height=size[1])
    if preset is not None:
        cfg = ToyConfig.preset(preset, **run)
    else:
        fmt = fmt or "ade20k"
        width, height = size or ((512, 256) if fmt == "cityscapes" else (256, 256))
        cfg = ToyConfig(fmt=fmt, **{**run, "width": width, "height": height})
    t0 = time.perf_counter()
    use_stage_threads(jobs)
    with parallel_backend(backend, scheduler, jobs):
        root = make_toy_dataset(out, cfg, progress=progress_enabled())
    click.echo(f"toy {cfg.fmt} dataset{f' ({preset})' if preset else ''}: {n_train} train + {n_val} val images "
               f"at {cfg.width}x{cfg.height} in {time.perf_counter() - t0:.1f}s -> {root}")


# ---------------------------------------------------------------- index


@cli.group(context_settings=CONTEXT)
def index():
    """Stage 1-2: decompose datasets into segments and build the shape-retrieval index."""


@index.command("build", context_settings=CONTEXT)
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Dataset reader.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset root folder.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Work directory for all artifacts of this dataset.")
@click.option("--splits", default="train,val", help="Comma-separated splits to decompose.")
@click.option("--jobs", type=click.IntRange(1, 1024), default=1, help="Parallel worker processes.")
@click.option("--shard", type=ShardSpec(), default=None, help=SHARD_HELP)
@click.option("--merge", is_flag=True, help=MERGE_HELP)
@click.option("--preserved-ratio", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              help="Per class and image, keep the largest segments covering this share of the class area.")
@click.option("--max-side", type=click.IntRange(1), default=None,
              help="Downscale images whose longest side exceeds this (area for RGB, nearest for labels).")
@click.option("--crop-max-side", type=click.IntRange(1), default=256, help="Longest side of stored RGBA crops.")
@click.option("--crop-codec", type=click.Choice(CROP_CODECS), default="jpeg",
              help="How crops are stored: jpeg (RGB as JPEG q95 + exact mask, ~10x smaller) or raw (lossless RGBA).")
@click.option("--image-list", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Text file of image basenames to keep (ade20k, ade20k-outdoor; without it ade20k-outdoor reads "
                   "a folder holding only the subset's images).")
@click.option("--layout", type=click.Choice(COCO_LAYOUTS), default=None,
              help="cocostuff: the official COCO 2017 downloads (coco) or SPADE's prepared {split}_img/_label/_inst "
                   "folders (spade) [default: the one found under --root].")
@click.option("--uncovered-things", type=click.Choice(UNCOVERED_THINGS), default="official",
              help="Thing pixels without an instance: the official per-dataset rule, or always components.")
@click.option("--on-error", type=click.Choice(ON_ERROR), default="fail",
              help="Bad image: stop with an error, or record it as skipped and go on.")
@click.option("--device", type=click.Choice(FAISS_DEVICES), default="cpu",
              help="Where to build the FAISS shards (cuda needs faiss-gpu).")
@click.option("--rebuild", is_flag=True, help="Discard an existing or unfinished store and index and build again.")
@backend_options
@common
def index_build(dataset, root, work, splits, jobs, shard, merge, preserved_ratio, max_side, crop_max_side,
                crop_codec, image_list, layout, uncovered_things, on_error, device, rebuild, backend, scheduler):
    """Decompose train and val into segments, then build the FAISS shards per class."""
    from .index.build import build_index
    from .pipeline.runner import parallel_backend
    from .pipeline.segments_stage import SegmentsConfig, build_segments

    cfg = SegmentsConfig(dataset=dataset, root=root, work=work, splits=tuple(s.strip() for s in splits.split(",")),
                         jobs=jobs, shard=shard, merge=merge, preserved_ratio=preserved_ratio, max_side=max_side,
                         crop_max_side=crop_max_side, crop_codec=crop_codec, image_list=image_list, layout=layout,
                         on_error=on_error, rebuild=rebuild, uncovered_things=uncovered_things)
    log.info("index build, stage 1 (segments): %s", ", ".join(f"{k}={v}" for k, v in cfg.__dict__.items()))
    use_stage_threads(jobs)
    with parallel_backend(backend, scheduler, jobs):  # a new store is published with the index built from it
        manifest = build_segments(cfg, progress=progress_enabled(), publish="train" not in cfg.splits)
    if manifest is None:  # a shard-only run: the index waits for --merge
        return
    click.echo("segments: " + ", ".join(f"{s} {c['segments']} segments / {c['images_ok']} images"
                                        f" ({c['images_skipped']} skipped)"
                                        for s, c in manifest["counts"].items()) + f" -> {work / 'segments'}")
    if "train" not in manifest["counts"]:
        click.echo("index: skipped (the shards index the train split, which this work dir does not have)")
        return
    im = build_index(work, device=device, rebuild=rebuild, progress=progress_enabled())
    kinds = sorted({s["kind"] for s in im["shards"].values()})
    click.echo(f"index: {len(im['shards'])} class shards ({', '.join(kinds)}) over "
               f"{sum(s['n'] for s in im['shards'].values())} train segments -> {work / 'index'}")


LABEL_FORMAT_HELP = ("How to read --label: class ids in the dataset's label-file format (ids), Cityscapes trainIds, "
                     "a colour map in the dataset's palette (color), or auto: told apart from the pixels (a Cityscapes "
                     "map holding only 0..18 is ambiguous and must be named).")


@index.command("query", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--label", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Label map PNG: class ids or a colour map (see --label-format).")
@click.option("--label-format", type=click.Choice(LABEL_FORMATS), default="auto", help=LABEL_FORMAT_HELP)
@click.option("--instance", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Instance PNG: one id per thing instance, 0 = none (class = majority label under it).")
@click.option("--k", type=click.IntRange(1, 1000), default=10, help="Matches per segment.")
@click.option("--k-prefilter", type=click.IntRange(1, 100_000), default=256,
              help="FAISS candidates reranked exactly (K'); must be at least --k.")
@click.option("--max-score", type=float, default=None, help="Matches scoring above this count as none.")
@click.option("--exact", is_flag=True, help="Scan every training segment of the class (no prefilter).")
@click.option("--device", type=click.Choice(FAISS_DEVICES), default="cpu",
              help="Where flat FAISS shards search (cuda needs faiss-gpu).")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG mosaic: query mask | crops of the best matches, one row per segment.")
@common
def index_query(work, label, label_format, instance, k, k_prefilter, max_score, exact, device, preview):
    """Print the best training matches for every segment of a label map."""
    from .index.query import check_queryable, format_matches, write_preview
    from .index.retrieval import RetrievalIndex
    from .index.search import SearchConfig
    from .pipeline.guidance import query_label_map
    from .pipeline.labels.files import read_instance_map, read_store_label_map

    cfg = SearchConfig(k=k, k_prefilter=k_prefilter, max_score=max_score, exact=exact)
    use_threads()
    index = RetrievalIndex(work, device=device)
    read = read_store_label_map(work, label, label_format)
    log.info("index query: %s read as %s (%s)", label, read.format, read.how)
    instance_map = read_instance_map(instance, read.label_map, str(label)) if instance is not None else None
    matches = query_label_map(index, read.label_map, instance_map, cfg, where=str(label))
    absent = check_queryable(index, matches, str(label))
    if absent:
        log.warning("index query: %s: classes %s have no training segments in %s; their segments match nothing "
                    "(black guidance)", label, absent, work)
    click.echo(format_matches(matches))
    if preview is not None:
        click.echo(f"preview -> {write_preview(index, matches, preview)}")


@index.command("stats", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON object.")
@common
def index_stats(work, as_json):
    """Segments per class and split, skipped images and reasons."""
    import json

    from .pipeline.segments_stage import format_stats, segment_stats

    st = segment_stats(work)
    click.echo(json.dumps(st) if as_json else format_stats(st))


# ---------------------------------------------------------------- guidance


@cli.group(context_settings=CONTEXT)
def guidance():
    """Stage 3: bake composited retrieval guidance into a cache."""


@guidance.command("bake", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(SPLITS), required=True, help="Split to bake.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, help="Matches kept per segment (top-k).")
@click.option("--choose", type=click.Choice(CHOOSE), default="top1",
              help="Match pasted per segment: the best, or one drawn among the top-k (diversity).")
@click.option("--seed", type=SEED, default=0, help="Seed of --choose sample (reproducible per segment).")
@click.option("--compose", "compose_mode", type=click.Choice(COMPOSE_MODES), default="clean",
              help="Composition rules: clean (clipped, no sums) or the official summed formula.")
@click.option("--size", type=Size(), default=None,
              help="Guidance size WxH [default: the dataset preset's training size, e.g. 256x256].")
@click.option("--k-prefilter", type=click.IntRange(1), default=256, help="FAISS candidates reranked exactly (K').")
@click.option("--max-score", type=float, default=None, help="Matches scoring above this stay black.")
@click.option("--exclude-same-image", is_flag=True, help="Never paste a segment of the query's own image.")
@click.option("--jobs", type=click.IntRange(1, 1024), default=1, help="Parallel worker processes.")
@click.option("--shard", type=ShardSpec(), default=None, help=SHARD_HELP)
@click.option("--merge", is_flag=True, help=MERGE_HELP)
@click.option("--previews", "n_preview", type=click.IntRange(0), default=6, help="Preview rows to write.")
@click.option("--rebuild", is_flag=True, help="Discard existing matches and guidance and bake again.")
@backend_options
@common
def guidance_bake(work, split, k, choose, seed, compose_mode, size, k_prefilter, max_score, exclude_same_image,
                  jobs, shard, merge, n_preview, rebuild, backend, scheduler):
    """Retrieve every segment of a split and store its guidance images in WORK/guidance/."""
    from .pipeline.bake import BakeConfig, bake
    from .pipeline.runner import parallel_backend
    from .workdir import WorkDir

    cfg = BakeConfig(work=work, split=split, k=k, choose=choose, seed=seed, compose_mode=compose_mode, size=size,
                     k_prefilter=k_prefilter, max_score=max_score, exclude_same_image=exclude_same_image,
                     jobs=jobs, shard=shard, merge=merge, n_preview=n_preview, rebuild=rebuild)
    use_stage_threads(jobs)
    with parallel_backend(backend, scheduler, jobs):
        m = bake(cfg, progress=progress_enabled())
    if m.get("complete") is False:
        click.echo(f"guidance {split}: shard {shard[0]}/{shard[1]} done ({m['parts']} parts); "
                   "run --merge once every shard has finished")
        return
    wd = WorkDir(work)
    click.echo(f"guidance {split}: {m['images']} images, {m['matched_segments']} matched segments -> "
               f"{wd.guidance_h5(split)} (previews in {wd.guidance_preview(split)})")


@guidance.command("preview-distort", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output PNG grid.")
@click.option("--n", type=click.IntRange(1, 1000), default=8, help="Training images (rows) to show.")
@click.option("--seed", type=SEED, default=0, help="Seed of the distortions.")
@click.option("--color-ref", type=click.Choice(COLOR_REFS), default="topk",
              help="Colour reference: a random top-k match (official) or any training segment of the class.")
@click.option("--size", type=Size(), default=None, help="Image size WxH [default: the baked guidance size].")
@common
def guidance_preview_distort(work, out, n, seed, color_ref, size):
    """Write rows of real | distorted ground truth | retrieval guidance for training images."""
    from .pipeline.guidance import preview_distort

    use_threads()
    click.echo(f"distortion preview -> {preview_distort(work, out, n=n, seed=seed, color_ref=color_ref, size=size)}")


# ---------------------------------------------------------------- train / eval / synthesize


@cli.command(context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Dataset preset (network size, resolution, schedule); required for a new run.")
@click.option("--name", default=None, callback=lambda ctx, p, v: run_name_option(v),
              help="Run name: the run lives in WORK/runs/NAME/ [default: the preset].")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Total training steps (instead of epochs); with --resume, a new total extends the run.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Total epochs, split constant/decay as the preset does [default: the preset's].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TOML file of training fields (and a [network] table) applied over the preset.")
@click.option("--resume", is_flag=True,
              help="Continue the run from its latest full checkpoint, with its saved settings; flags given "
                   "change only what may change (devices, logging, precision, --steps/--epochs).")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved config, save it as config.json of a new run (never of an existing "
                   "one), then stop.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Global batch over all processes.")
@click.option("--workers", type=click.IntRange(0), default=None, help="Data loader worker processes per rank.")
@click.option("--norm", type=click.Choice(NORMS), default=None,
              help="Generator normalisation: RESAIL's, or a baseline (spade = the paper's ablation; clade, "
                   "clade-icpe as their authors define them; docs/baselines.md).")
@click.option("--instance-edges/--no-instance-edges", default=None,
              help="Feed SPADE's instance edge map to G and D as one more label channel [default: on for "
                   "clade/clade-icpe on cityscapes and cocostuff, as their authors do; off otherwise].")
@click.option("--no-retrieval-loss", is_flag=True, help="Drop the retrieval-guidance path (the paper's ablation).")
@click.option("--recipe", type=click.Choice(RECIPES), default=None,
              help="official: the official run's choices where this project departs from them (void as a "
                   "seg-loss class, no seg loss on ADE20K, PIL resizing, fp32; docs/deviations.md) "
                   "[default: resail].")
@click.option("--color-ref", type=click.Choice(COLOR_REFS), default=None,
              help="Colour reference of the distorted GT: a random top-k match (official) or any training "
                   "segment of the class (the paper's wording) [default: topk].")
@click.option("--distort-p", type=(click.FloatRange(0, 1),) * 3, default=None, metavar="COLOR RES SHAPE",
              help="Probabilities of the distorted GT's colour, resolution and shape steps per segment "
                   "[default: 1 1 1, as official].")
@click.option("--no-vgg", is_flag=True, help="Train without the VGG19 perceptual loss.")
@click.option("--vgg-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="torchvision VGG19 ImageNet weights file [default: the torch hub cache].")
@click.option("--seg-loss/--no-seg-loss", default=None,
              help="Segmentation loss (needs --segnet) [default: the preset's, off without --segnet].")
@click.option("--segnet", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Segmentation network checkpoint from `resail segnet train`.")
@click.option("--amp", type=click.Choice(AMP), default=None,
              help="Mixed precision [default: auto = bf16 on GPUs, off on CPUs; fp16 needs a GPU].")
@click.option("--channels-last/--no-channels-last", default=None,
              help="NHWC weights and activations [default: on GPUs only].")
@click.option("--seed", type=SEED, default=None, help="Random seed [default: 0].")
@click.option("--device", default=None, help="cpu, cuda, cuda:N [default: auto].")
@common
def train(work, preset, name, steps, epochs, config_file, resume, dry_run, batch_size, workers, norm, instance_edges,
          no_retrieval_loss, recipe, color_ref, distort_p, no_vgg, vgg_weights, seg_loss, segnet, amp, channels_last,
          seed, device):
    """Train a RESAIL generator on a work directory's caches (torchrun for several processes).

    SIGINT, SIGTERM and SIGUSR1 stop it after the current step with a checkpoint (exit code 128 +
    the signal's number); --resume continues, and --resume --steps N extends a run to N steps."""
    import os
    import signal

    from .synth.config import format_config, resolve_config, resolve_resumed
    from .synth.data import count_images, data_label_table
    from .synth.presets import get_preset
    from .synth.train import dry_run as write_dry_run
    from .synth.train import saved_config
    from .synth.train import train as run_training

    if preset is None and not (resume and name):
        raise click.BadParameter("give --preset for a new run, or --resume --name NAME to continue a run "
                                 "with its own preset", param_hint="--preset")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    overrides = dict(name=name or preset, steps=steps, epochs=epochs, batch_size=batch_size, workers=workers,
                     norm=norm, edges=instance_edges, amp=amp, channels_last=channels_last, seed=seed, device=device,
                     segnet=str(segnet) if segnet else None, vgg_weights=str(vgg_weights) if vgg_weights else None)
    if no_retrieval_loss:
        overrides["retrieval_loss"] = False
    overrides["color_ref"] = color_ref
    overrides["recipe"] = recipe
    if distort_p is not None:
        overrides.update(p_color=distort_p[0], p_resolution=distort_p[1], p_shape=distort_p[2])
    if no_vgg:
        overrides["vgg"] = False
    elif vgg_weights is not None:
        overrides["vgg"] = True
    overrides["seg_loss"] = seg_loss
    n_train = count_images(work, "train")
    if resume:
        cfg = resolve_resumed(saved_config(work, overrides["name"]), preset=preset, n_train=n_train,
                              toml=config_file, overrides=overrides)
    else:
        cfg = resolve_config(preset, n_train=n_train, toml=config_file, overrides=overrides,
                             data_network=data_label_table(get_preset(preset), work))
    if rank0:
        click.echo(format_config(cfg))
    if dry_run:
        if rank0:
            path = write_dry_run(cfg, work)
            click.echo(f"dry run: config -> {path}" if path else
                       f"dry run: {work / 'runs' / cfg.name} exists; nothing written (the config above is not saved)")
        return
    use_threads(cfg.workers)
    summary = run_training(cfg, work, resume=resume, progress=progress_enabled())
    if rank0:
        last = summary["last"]
        n = summary["steps_this_session"]
        click.echo(f"trained {n} step{'' if n == 1 else 's'} this run (run total {summary['steps']}/"
                   f"{summary['total_steps']}; {summary['samples_per_s']:.2f} samples/s; last G "
                   f"{last.get('G', float('nan')):.4f}, D {last.get('D', float('nan')):.4f}) -> {summary['run_dir']} "
                   "(samples/, checkpoints/, stats.jsonl)")
    if summary["stopped_by"]:  # a stop, not a finish: exit 128 + the signal's number, as the shell would
        stopped = ResailError(f"stopped by {summary['stopped_by']} at step {summary['steps']}: checkpoint written; "
                              f"continue with `resail train {work} --name {cfg.name} --resume`")
        stopped.exit_code = 128 + signal.Signals[summary["stopped_by"]].value
        raise stopped


@cli.command("eval", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run_name", required=True, callback=lambda ctx, p, v: run_name_option(v),
              help="Run name under WORK/runs/.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Generator snapshot to evaluate [default: the run's latest].")
@click.option("--split", type=click.Choice(SPLITS), default="val", help="Split to generate and score.")
@click.option("--fid/--no-fid", default=True, help="FID (and KID) with the TF-ported Inception; needs its weights.")
@click.option("--kid/--no-kid", default=True, help="KID from the same Inception features (off with --no-fid).")
@click.option("--inception-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="pt_inception-2015-12-05-6726825d.pth [default: the torch hub cache, TORCH_HOME/hub/checkpoints/].")
@click.option("--seg/--no-seg", default=True, help="mIoU and pixel accuracy with a segmentation network.")
@click.option("--segnet", "segnet_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Segmentation network checkpoint [default: WORK/segnet/PRESET.pt from `resail segnet train`].")
@click.option("--segmenter", default=None, metavar="NAME",
              help="Score with a classic segmenter instead, for numbers comparable with published ones: "
                   f"{', '.join(SEGMENTERS)} (from the authors' weight files) or torchscript:PATH.")
@click.option("--segmenter-weights", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The --segmenter's weight file; for upernet-r101 twice: the encoder file, then the decoder file.")
@click.option("--upernet-scales", type=click.Choice(UPERNET_SCALES), default="multi",
              help="upernet-r101: the authors' five test scales, or one pass at the image's own size.")
@click.option("--batch-size", type=click.IntRange(1), default=8, help="Images per batch.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N images.")
@click.option("--grid", "n_grid", type=click.IntRange(0), default=8, help="Rows of the image grid.")
@click.option("--workers", type=click.IntRange(0), default=0, help="Data-loading worker processes.")
@click.option("--device", default="auto", help="torch device: auto (cuda when available), cpu, cuda, cuda:1 ...")
@common
def eval_(work, run_name, checkpoint, split, fid, kid, inception_weights, seg, segnet_path, segmenter,
          segmenter_weights, upernet_scales, batch_size, limit, n_grid, workers, device):
    """FID, KID, mIoU and pixel accuracy of a trained run; images, grid and report in WORK/eval/NAME/."""
    from .synth.eval import EvalConfig, format_metrics, run_eval
    from .workdir import WorkDir

    cfg = EvalConfig(work=work, run=run_name, split=split, checkpoint=checkpoint, fid=fid, kid=kid,
                     inception_weights=inception_weights, seg=seg, segnet=segnet_path, segmenter=segmenter,
                     segmenter_weights=segmenter_weights, upernet_scales=upernet_scales, batch_size=batch_size,
                     device=device, limit=limit, n_grid=n_grid, workers=workers)
    log.info("eval: %s", ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    use_threads(workers)
    m = run_eval(cfg, progress=progress_enabled())
    click.echo(f"eval {run_name}: {format_metrics(m)} -> {WorkDir(work).eval_dir(run_name) / 'metrics.json'}")


@cli.command(context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run_name", required=True, callback=lambda ctx, p, v: run_name_option(v),
              help="Run name under WORK/runs/.")
@click.option("--label", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Label map PNG: class ids or a colour map (see --label-format); any size, resized to the model's.")
@click.option("--label-format", type=click.Choice(LABEL_FORMATS), default="auto", help=LABEL_FORMAT_HELP)
@click.option("--instance", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Instance PNG: one id per thing instance, 0 = none (class = majority label under it).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output PNG.")
@click.option("--label-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the label map G took (at the model size) here.")
@click.option("--label-out-format", type=click.Choice(LABEL_OUT_FORMATS), default="ids",
              help="--label-out as class ids in the dataset's label-file format, or in the dataset's palette.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Generator snapshot [default: the run's latest].")
@click.option("--seed", type=SEED, default=None,
              help="Draw each segment's match among its top-k but the best, with this seed [default: the best match].")
@click.option("--k", type=click.IntRange(1, 1000), default=10, help="Matches retrieved per segment.")
@click.option("--resample", default=None, metavar="I,J,...",
              help="Segment indices (as printed) whose match is drawn again; every other segment keeps its match.")
@click.option("--resample-seed", type=SEED, default=None, help="Seed of --resample [default: --seed + 1].")
@click.option("--guidance-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the composed guidance image here.")
@click.option("--device", default="auto", help="torch device: auto (cuda when available), cpu, cuda, cuda:1 ...")
@common
def synthesize(work, run_name, label, label_format, instance, out, label_out, label_out_format, checkpoint, seed, k,
               resample, resample_seed, guidance_out, device):
    """Synthesize a photo from a new label map with a trained run; prints the segments and their matches."""
    from .synth.synthesize import SynthesizeConfig, format_segments
    from .synth.synthesize import synthesize as run_synthesis

    try:
        indices = tuple(int(v) for v in resample.split(",") if v.strip()) if resample else ()
    except ValueError:
        raise click.BadParameter(f"{resample!r} is not a comma-separated list of segment indices",
                                 param_hint="--resample") from None
    cfg = SynthesizeConfig(work=work, run=run_name, label=label, out=out, instance=instance, checkpoint=checkpoint,
                           seed=seed, k=k, resample=indices, resample_seed=resample_seed, guidance_out=guidance_out,
                           device=device, label_format=label_format, label_out=label_out,
                           label_out_format=label_out_format)
    use_threads()
    result = run_synthesis(cfg)
    log.info("synthesize: %s read as %s", label, result.label_read_as)
    click.echo(format_segments(result))
    click.echo(f"image -> {result.out}" + (f", guidance -> {result.guidance_out}" if result.guidance_out else "")
               + (f", label map -> {result.label_out}" if result.label_out else ""))


@cli.command(context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "runs", multiple=True, required=True, callback=lambda ctx, p, v: [run_name_option(r) for r in v],
              help="A run evaluated with `resail eval` (several times: one table row each).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this Markdown file.")
@click.option("--allow-mixed", is_flag=True, help="Print even when the runs were scored under different protocols.")
@common
def compare(work, runs, out, allow_mixed):
    """One table of several runs' eval results (FID, KID, mIoU, pixel accuracy), refused when their
    protocols differ."""
    from .artifacts import write_bytes_atomic
    from .synth.baselines.compare import compare as table

    text = table(work, list(runs), allow_mixed=allow_mixed)
    click.echo(text, nl=False)
    if out is not None:
        write_bytes_atomic(out, text.encode())


# ---------------------------------------------------------------- model / segnet



@cli.group(context_settings=CONTEXT)
def model():
    """Network presets: sizes of G, D and the segmentation network."""


@model.command("summary", context_settings=CONTEXT)
@click.option("--preset", type=click.Choice(PRESET_NAMES), required=True, help="Network preset.")
@click.option("--norm", type=click.Choice(NORMS), default=None,
              help="Generator normalisation [default: the preset's, resail].")
@click.option("--instance-edges/--no-instance-edges", default=None,
              help="Count SPADE's instance edge map as one more label channel [default: as `resail train`].")
@click.option("--json", "as_json", is_flag=True, help="Print the parameter counts as one JSON object.")
@common
def model_summary(preset, norm, instance_edges, as_json):
    """Parameter counts of G, D and the segmentation network (built on the meta device)."""
    import json

    from .synth.baselines.authors import baseline_network
    from .synth.networks import model_summary as summarize
    from .synth.presets import get_preset

    p = baseline_network(get_preset(preset), norm, instance_edges)
    counts = summarize(p)
    if as_json:
        click.echo(json.dumps(counts))
        return
    click.echo(f"preset {preset}: {p.semantic_nc} label channels{' + instance edge map' if p.edges else ''}, "
               f"{p.width}x{p.height}, {p.upsampling} upsampling, norm {p.norm}, ngf {p.ngf}, ndf {p.ndf}")
    for net, label in (("G", "generator"), ("D", "discriminator"), ("segnet", "segmentation net")):
        click.echo(f"  {label:<17} {counts[net]:>13,} parameters")


@model.command("import", context_settings=CONTEXT)
@click.option("--from", "source", type=click.Choice(SOURCES), required=True,
              help="Whose code saved the file: SPADE, CLADE, CLADE-ICPE (CLADE with --add_dist) or the "
                   "official RESAIL code.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--work", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Work dir of the generator's dataset (`resail index build` first): the run lands in WORK/runs/NAME.")
@click.option("--name", required=True, callback=lambda ctx, p, v: run_name_option(v), help="Run name.")
@click.option("--crop-size", type=click.IntRange(8, MAX_SIDE), default=None,
              help="The authors' --crop_size, the image width [default: theirs for the dataset, 256; Cityscapes 512].")
@click.option("--aspect-ratio", type=click.FloatRange(0.1, 10), default=None,
              help="The authors' --aspect_ratio, width / height [default: theirs, 1; Cityscapes 2].")
@click.option("--num-upsampling-layers", "upsampling", type=click.Choice(AUTHORS_UPSAMPLING), default=None,
              help="The authors' --num_upsampling_layers [default: theirs, normal; Cityscapes more; most when the "
                   "file has up_4].")
@click.option("--ngf", type=click.IntRange(1), default=None,
              help="The authors' --ngf; read off the file (fc), so only checked [default: the file's].")
@click.option("--no-instance/--instance", "no_instance", default=None,
              help="The authors' --no_instance; read off the file (the edge channel), so only checked.")
@common
def model_import(source, file, work, name, crop_size, aspect_ratio, upsampling, ngf, no_instance):
    """Turn a generator file in its authors' layout (SPADE's latest_net_G.pth, CLADE's best_net_G.pth, the
    official RESAIL code's) into a run that eval, synthesize and serve use as they are.

    ngf, the label and instance-edge channels, the hidden width and 'most' upsampling are read off the
    tensors; every key is mapped or refused (docs/baselines.md)."""
    from .synth.baselines.importers import ImportConfig, describe, import_generator

    result = import_generator(ImportConfig(source=source, path=file, work=work, name=name, crop_size=crop_size,
                                           aspect_ratio=aspect_ratio, upsampling=upsampling, ngf=ngf,
                                           no_instance=no_instance))
    click.echo(describe(result))


@cli.group(context_settings=CONTEXT)
def segnet():
    """Segmentation network behind the seg loss and the mIoU metric."""


@segnet.command("train", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Network preset [default: the work directory's dataset].")
@click.option("--steps", type=click.IntRange(1), default=20_000, help="Total optimisation steps (resumes below it).")
@click.option("--batch-size", type=click.IntRange(1), default=8, help="Images per step.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=4e-4, help="Adam learning rate.")
@click.option("--no-balance", is_flag=True, help="Plain CE instead of per-batch class-balanced CE.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=1_000, help="Steps between checkpoints.")
@click.option("--workers", type=click.IntRange(0), default=2, help="Data-loading worker processes.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The `resail train` TOML file: its [network] table (e.g. label_ids) applies over the preset.")
@click.option("--device", default="auto", help="torch device: auto (cuda when available), cpu, cuda, cuda:1 ...")
@common
def segnet_train(work, preset, steps, batch_size, lr, no_balance, checkpoint_every, workers, config_file, device):
    """Train the segmentation network on WORK's real training images; report val mIoU.

    Writes WORK/segnet/PRESET.pt (rerun to resume) and WORK/segnet/PRESET_metrics.json."""
    from .synth.config import read_toml
    from .synth.segnet import SegnetTrainConfig
    from .synth.segnet_data import SegnetRunConfig, preset_for_work, train_segnet_on_work

    preset = preset or preset_for_work(work)
    network = read_toml(config_file)["network"] if config_file is not None else {}
    cfg = SegnetRunConfig(preset=preset, network=network, batch_size=batch_size, workers=workers, device=device,
                          train=SegnetTrainConfig(steps=steps, lr=lr, class_balance=not no_balance,
                                                  checkpoint_every=checkpoint_every))
    log.info("segnet train: %s", cfg)
    use_threads(workers)
    report = train_segnet_on_work(work, cfg, progress=progress_enabled())
    val = report.get("val", {})
    click.echo(f"segnet {preset}: {report['steps']} steps, val mIoU {val.get('miou', float('nan')):.4f}, "
               f"pixel accuracy {val.get('pixel_acc', float('nan')):.4f} -> {report['checkpoint']}")


# ---------------------------------------------------------------- serve


@cli.command(context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run_name", required=True, callback=lambda ctx, p, v: run_name_option(v),
              help="Run name under WORK/runs/.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Generator snapshot [default: the run's latest].")
@click.option("--host", default="127.0.0.1", help="Address to bind; anything but localhost exposes the page.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="TCP port.")
@click.option("--k", type=click.IntRange(1, 1000), default=10, help="Matches retrieved per region.")
@click.option("--max-sessions", type=click.IntRange(1), default=16, help="Label maps kept for region edits.")
@click.option("--device", default="auto", help="torch device: auto (cuda when available), cpu, cuda, cuda:1 ...")
@common
def serve(work, run_name, checkpoint, host, port, k, max_sessions, device):
    """Open a local web page: paint a label map, synthesise it, resample one region at a time."""
    from .synth.serve import ServeConfig
    from .synth.serve import serve as run_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve: binding %s makes the page reachable from other machines; it has no authentication", host)
    cfg = ServeConfig(work=work, run=run_name, checkpoint=checkpoint, host=host, port=port, k=k,
                      max_sessions=max_sessions, device=device)
    use_threads()
    click.echo(f"resail serve: loading run {run_name} ...")
    run_server(cfg, ready=lambda: click.echo(f"resail serve: open http://{host}:{port}/ (Ctrl+C to stop)"))


# ---------------------------------------------------------------- demo


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              help="Folder for the toy dataset and the work directory.")
@click.option("--n-train", type=click.IntRange(1, 100_000), default=200, help="Toy training images.")
@click.option("--n-val", type=click.IntRange(1, 100_000), default=40, help="Toy validation images.")
@click.option("--seed", type=SEED, default=0, help="Random seed.")
@click.option("--jobs", type=click.IntRange(1, 1024), default=2, help="Parallel worker processes.")
@click.option("--train-steps", type=click.IntRange(1), default=250, help="Generator training steps.")
@click.option("--segnet-steps", type=click.IntRange(1), default=150, help="Segmentation network training steps.")
@click.option("--preset", type=click.Choice(DEMO_PRESETS), default="toy64", show_default=True,
              help="Training preset: toy64 (64×64, fast) or toy (128×128).")
@common
def demo(out, n_train, n_val, seed, jobs, train_steps, segnet_steps, preset):
    """Run every built stage end to end on the built-in toy dataset (ADE20K format)."""
    from .demo import run_demo

    for stage, where in run_demo(out, n_train=n_train, n_val=n_val, seed=seed, jobs=jobs, train_steps=train_steps,
                                 segnet_steps=segnet_steps, preset=preset, progress=progress_enabled(),
                                 threads=click.get_current_context().find_root().obj.get("threads")):
        click.echo(f"[demo] {stage}: {where}")


# ---------------------------------------------------------------- segment


@cli.command(context_settings=CONTEXT)
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--segmenter", type=click.Choice(SEGMENTERS), required=True,
              help="drn-d-105 (Cityscapes trainIds), upernet-r101 (ADE20K 1..150), deeplabv2-r101 (COCO-Stuff 0..181).")
@click.option("--weights", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The authors' weight file; for upernet-r101 twice: the encoder file, then the decoder file.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for DIR/<image stem>.png, one single-channel id map per image.")
@click.option("--upernet-scales", type=click.Choice(UPERNET_SCALES), default="multi",
              help="upernet-r101: the authors' five test scales, or one pass at the image's own size.")
@click.option("--device", default="auto", help="torch device: auto (cuda when available), cpu, cuda, cuda:1 ...")
@common
def segment(images, segmenter, weights, out, upernet_scales, device):
    """Segment IMAGE... with a classic evaluation segmenter, as its authors' evaluation code does."""
    from .synth.segmenters import load_segmenter, segment_images

    use_threads()
    seg = load_segmenter(segmenter, weights, device, upernet_scales=upernet_scales)
    written = segment_images(seg, images, out, progress=progress_enabled())
    click.echo(f"resail segment: {len(written)} id maps ({seg.protocol['ids']}) in {out}")


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="resail", standalone_mode=False)
        return 0
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except click.ClickException as e:  # usage errors: exit 2
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("error: aborted; rerun the same command to resume", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted; rerun the same command to resume where it stopped", err=True)
        return 130
    except ResailError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except Exception as e:  # an unexpected failure: still one line, the traceback behind --debug
        if debug:
            raise
        from .artifacts import is_disk_full

        if is_disk_full(e):
            click.echo(f"error: the disk is full ({type(e).__name__}: {e}); free space and rerun the same command",
                       err=True)
            return 1
        click.echo(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

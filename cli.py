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
from .errors import NotBuiltError, ResailError

log = logging.getLogger("resail")

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}
DATASETS = ("ade20k", "ade20k-outdoor", "cityscapes", "cocostuff", "folder")
TOY_FORMATS = ("ade20k", "cityscapes", "cocostuff")


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
        return w, h


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def common(fn):
    """`--quiet` and `--debug` on every command; the values land in ctx.obj."""

    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or info messages; errors only.")
    @click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
    @click.pass_context
    @functools.wraps(fn)
    def wrapper(ctx, *args, quiet=False, debug=False, **kwargs):
        obj = ctx.ensure_object(dict)
        obj["quiet"] = obj.get("quiet", False) or quiet
        obj["debug"] = obj.get("debug", False) or debug
        _setup_logging(obj["quiet"], obj["debug"])
        return ctx.invoke(fn, *args, **kwargs)

    return wrapper


def progress_enabled() -> bool:
    return not click.get_current_context().find_root().obj.get("quiet", False)


def not_built(command: str, issue: int) -> None:
    raise NotBuiltError(f"`resail {command}` is not built yet (tracked in issue #{issue}); nothing was done")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="resail")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or info messages; errors only.")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.pass_context
def cli(ctx, quiet, debug):
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
    ctx.ensure_object(dict).update(quiet=quiet, debug=debug)
    _setup_logging(quiet, debug)


# ---------------------------------------------------------------- data


@cli.group(context_settings=CONTEXT)
def data():
    """Datasets: make the built-in toy dataset."""


@data.command("toy", context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(TOY_FORMATS), default="ade20k",
              help="Official on-disk format to write.")
@click.option("--n-train", type=click.IntRange(1, 100_000), default=200, help="Training images.")
@click.option("--n-val", type=click.IntRange(1, 100_000), default=40, help="Validation images.")
@click.option("--size", type=Size(), default=None,
              help="Image size WxH [default: 256x256; 512x256 for cityscapes].")
@click.option("--seed", type=int, default=0, help="Random seed; the same seed writes identical bytes.")
@common
def data_toy(out, fmt, n_train, n_val, size, seed):
    """Write a procedural toy dataset to OUT in the official format of a real dataset."""
    from .pipeline.toy import ToyConfig, make_toy_dataset

    if size is None:
        size = (512, 256) if fmt == "cityscapes" else (256, 256)
    cfg = ToyConfig(fmt=fmt, n_train=n_train, n_val=n_val, width=size[0], height=size[1], seed=seed)
    t0 = time.perf_counter()
    root = make_toy_dataset(out, cfg, progress=progress_enabled())
    click.echo(f"toy {fmt} dataset: {n_train} train + {n_val} val images at {size[0]}x{size[1]} "
               f"in {time.perf_counter() - t0:.1f}s -> {root}")


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
@common
def index_build(dataset, root, work):
    """Decompose train and val into segments, then build the FAISS shards per class."""
    not_built("index build", 3)


@index.command("query", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--label", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Label map PNG of class ids.")
@common
def index_query(work, label):
    """Print the best training matches for every segment of a label map."""
    not_built("index query", 4)


@index.command("stats", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@common
def index_stats(work):
    """Segments per class and split, skipped images and reasons."""
    not_built("index stats", 3)


# ---------------------------------------------------------------- guidance


@cli.group(context_settings=CONTEXT)
def guidance():
    """Stage 3: bake composited retrieval guidance into a cache."""


@guidance.command("bake", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(("train", "val")), required=True, help="Split to bake.")
@common
def guidance_bake(work, split):
    """Retrieve every segment of a split and store its guidance images."""
    not_built("guidance bake", 5)


# ---------------------------------------------------------------- train / eval / synthesize


@cli.command(context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--preset", type=click.Choice(("ade20k", "ade20k-outdoor", "cityscapes", "cocostuff", "toy")),
              required=True, help="Dataset preset (network size, resolution, schedule).")
@common
def train(work, preset):
    """Train a RESAIL generator on a work directory's caches."""
    not_built("train", 8)


@cli.command("eval", context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run_name", required=True, help="Run name under WORK/runs/.")
@common
def eval_(work, run_name):
    """FID, mIoU and pixel accuracy of a trained run on the val split."""
    not_built("eval", 9)


@cli.command(context_settings=CONTEXT)
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--label", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Label map PNG of class ids.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output PNG.")
@common
def synthesize(work, label, out):
    """Synthesize a photo from a new label map with a trained run."""
    not_built("synthesize", 9)


# ---------------------------------------------------------------- demo


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              help="Folder for the toy dataset and the work directory.")
@click.option("--n-train", type=click.IntRange(1, 100_000), default=200, help="Toy training images.")
@click.option("--n-val", type=click.IntRange(1, 100_000), default=40, help="Toy validation images.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@common
def demo(out, n_train, n_val, seed):
    """Run every built stage end to end on the built-in toy dataset (ADE20K format)."""
    from .pipeline.demo import run_demo

    for stage, where in run_demo(out, n_train=n_train, n_val=n_val, seed=seed, progress=progress_enabled()):
        click.echo(f"[demo] {stage}: {where}")


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
        click.echo(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

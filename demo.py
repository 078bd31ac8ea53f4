"""`resail demo`: the whole pipeline on the built-in toy dataset, stage by stage.

Each stage is the same library call its CLI command makes; the demo only chooses small settings
and reports where every output went. It sits beside `cli.py` rather than in `pipeline/` because
it orchestrates every layer (pipeline, index and synth), as the CLI does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .choices import SPLITS
from .index.build import build_index
from .pipeline.bake import BakeConfig, bake
from .pipeline.guidance import preview_distort
from .pipeline.segments_stage import SegmentsConfig, build_segments
from .pipeline.toy import ToyConfig, make_toy_dataset
from .threads import use
from .workdir import WorkDir


def run_demo(out: Path, *, n_train: int = 200, n_val: int = 40, seed: int = 0, jobs: int = 1,
             train_steps: int = 250, segnet_steps: int = 150, preset: str = "toy64",
             progress: bool = True, threads: int | None = None) -> Iterator[tuple[str, str]]:
    """Run every built stage on a toy ADE20K-format dataset under `out`; yield (stage, output path).
    Guidance is baked at the training preset's size (`toy64`: 64×64, `toy`: 128×128). `threads`
    overrides the thread policy's CPU count (threads.py), which each phase splits its own way."""
    from .synth.presets import get_preset

    use(jobs if jobs > 1 else 0, alongside=False, threads=threads)  # the stages: `jobs` workers per part
    net = get_preset(preset)
    size = (net.width, net.height)
    out = Path(out)
    root = make_toy_dataset(out / "toy_ade20k", ToyConfig(fmt="ade20k", n_train=n_train, n_val=n_val,
                                                          width=256, height=256, seed=seed), progress=progress)
    yield "toy dataset (ADE20K format)", str(root)
    wd = WorkDir(out / "work")
    build_segments(SegmentsConfig(dataset="ade20k", root=root, work=wd.root, jobs=jobs), progress=progress)
    yield "index build, stage 1: segment store", str(wd.segments)
    build_index(wd.root, progress=progress)
    yield "index build, stage 2: FAISS shards", str(wd.index)
    for split in SPLITS:
        bake(BakeConfig(wd.root, split, size=size, jobs=jobs), progress=progress)
        yield f"guidance bake --split {split}", str(wd.guidance_h5(split))
        yield f"guidance previews ({split})", str(wd.guidance_preview(split))
    grid = preview_distort(wd.root, out / "distortion_preview.png", n=6, seed=seed, size=size)
    yield "guidance preview-distort", str(grid)
    yield from _synthesis_stages(wd, root, preset, seed, jobs, train_steps, segnet_steps, progress, threads)


def _synthesis_stages(wd: WorkDir, root: Path, preset: str, seed: int, jobs: int, train_steps: int,
                      segnet_steps: int, progress: bool, threads: int | None) -> Iterator[tuple[str, str]]:
    """segnet train → train → eval → synthesize with a small toy preset on the CPU."""
    from .synth.config import resolve_config
    from .synth.data import count_images
    from .synth.eval import EvalConfig, run_eval
    from .synth.segnet import SegnetTrainConfig
    from .synth.segnet_data import SegnetRunConfig, train_segnet_on_work
    from .synth.synthesize import SynthesizeConfig, synthesize
    from .synth.train import train

    work = wd.root
    use(threads=threads)  # segnet, eval and synthesize load their data in this process
    train_segnet_on_work(work, SegnetRunConfig(preset, workers=0, train=SegnetTrainConfig(
        steps=segnet_steps, checkpoint_every=segnet_steps)), progress=progress)
    yield "segnet train (segmentation network for the seg loss and mIoU)", str(wd.segnet(preset))
    cfg = resolve_config(preset, n_train=count_images(work, "train"), overrides=dict(
        name="demo", steps=train_steps, seed=seed, workers=max(0, jobs - 1), segnet=str(wd.segnet(preset))))
    use(cfg.workers, threads=threads)  # the trainer beside its data-loader workers
    summary = train(cfg, work, resume=wd.run("demo").exists(), progress=progress)
    yield f"train ({preset} preset)", str(summary["run_dir"])
    use(threads=threads)
    seg = run_eval(EvalConfig(work, "demo", fid=False, kid=False), progress=progress).get("segmentation", {})
    gen, real = seg.get("generated", {}).get("miou", float("nan")), seg.get("real", {}).get("miou", float("nan"))
    yield (f"eval (segnet mIoU {gen:.3f} on generated vs {real:.3f} on real images; FID needs the Inception "
           "weights, see README)", str(wd.eval_dir("demo")))
    label = sorted((root / "annotations" / "validation").glob("*.png"))[0]
    res_path = work.parent / "synthesized.png"
    synthesize(SynthesizeConfig(work, "demo", label, res_path, seed=seed,
                                guidance_out=work.parent / "synthesized_guidance.png"))
    yield f"synthesize from {label.name}", str(res_path)

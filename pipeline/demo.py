"""`resail demo`: the whole pipeline on the built-in toy dataset, stage by stage.

Each stage is the same library call its CLI command makes; the demo only chooses small settings
and reports where every output went. Stages that are not built yet are listed as such at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..index.build import build_index
from .bake import BakeConfig, bake, preview_distort
from .segments_stage import SegmentsConfig, build_segments
from .toy import ToyConfig, make_toy_dataset

GUIDANCE_SIZE = (128, 128)  # the `toy` training preset's resolution


def run_demo(out: Path, *, n_train: int = 200, n_val: int = 40, seed: int = 0, jobs: int = 1,
             train_steps: int = 120, segnet_steps: int = 150, progress: bool = True) -> Iterator[tuple[str, str]]:
    """Run every built stage on a toy ADE20K-format dataset under `out`; yield (stage, output path)."""
    out = Path(out)
    root = make_toy_dataset(out / "toy_ade20k", ToyConfig(fmt="ade20k", n_train=n_train, n_val=n_val,
                                                          width=256, height=256, seed=seed), progress=progress)
    yield "toy dataset (ADE20K format)", str(root)
    work = out / "work"
    build_segments(SegmentsConfig(dataset="ade20k", root=root, work=work, jobs=jobs), progress=progress)
    yield "index build, stage 1: segment store", str(work / "segments")
    build_index(work, progress=progress)
    yield "index build, stage 2: FAISS shards", str(work / "index")
    for split in ("train", "val"):
        bake(BakeConfig(work, split, size=GUIDANCE_SIZE, jobs=jobs), progress=progress)
        yield f"guidance bake --split {split}", str(work / "guidance" / f"{split}.h5")
        yield f"guidance previews ({split})", str(work / "guidance" / f"{split}_preview")
    grid = preview_distort(work, out / "distortion_preview.png", n=6, seed=seed, size=GUIDANCE_SIZE)
    yield "guidance preview-distort", str(grid)
    yield from _synthesis_stages(work, root, seed, jobs, train_steps, segnet_steps, progress)


def _synthesis_stages(work: Path, root: Path, seed: int, jobs: int, train_steps: int, segnet_steps: int,
                      progress: bool) -> Iterator[tuple[str, str]]:
    """segnet train → train → eval → synthesize with the small `toy` preset on the CPU."""
    import torch

    from ..synth.config import resolve_config
    from ..synth.data import count_images
    from ..synth.eval import EvalConfig, run_eval
    from ..synth.segnet import SegnetTrainConfig
    from ..synth.segnet_data import SegnetRunConfig, train_segnet_on_work
    from ..synth.synthesize import SynthesizeConfig, synthesize
    from ..synth.train import train

    torch.set_num_threads(max(1, jobs))
    train_segnet_on_work(work, SegnetRunConfig("toy", workers=0, train=SegnetTrainConfig(
        steps=segnet_steps, checkpoint_every=segnet_steps)), progress=progress)
    yield "segnet train (segmentation network for the seg loss and mIoU)", str(work / "segnet" / "toy.pt")
    cfg = resolve_config("toy", n_train=count_images(work, "train"), overrides=dict(
        name="demo", steps=train_steps, seed=seed, workers=max(0, jobs - 1), segnet=str(work / "segnet" / "toy.pt")))
    summary = train(cfg, work, resume=(work / "runs" / "demo").exists(), progress=progress)
    yield "train (toy preset)", str(summary["run_dir"])
    seg = run_eval(EvalConfig(work, "demo", fid=False, kid=False), progress=progress).get("segmentation", {})
    gen, real = seg.get("generated", {}).get("miou", float("nan")), seg.get("real", {}).get("miou", float("nan"))
    yield (f"eval (segnet mIoU {gen:.3f} on generated vs {real:.3f} on real images; FID needs the Inception "
           "weights, see README)", str(work / "eval" / "demo"))
    label = sorted((root / "annotations" / "validation").glob("*.png"))[0]
    res_path = work.parent / "synthesized.png"
    synthesize(SynthesizeConfig(work, "demo", label, res_path, seed=seed, guidance_out=work.parent / "synthesized_guidance.png"))
    yield f"synthesize from {label.name}", str(res_path)

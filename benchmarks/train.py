"""Training throughput of `resail train`, and the toy ablation RESAIL vs SPADE norm vs no retrieval loss.

CPU: the `toy` preset at 128×128, batch 4:
  (a) the trainer's step alone on a fixed batch (G phase with both guidances, D phase, EMA),
  (b) the data pipeline alone (reader, cache, distorted GT built on the fly), items/s,
  (c) end to end through `train()` with data workers: samples/s.
GPU (only when CUDA is available): the full Cityscapes (batch 3) and ADE20K (batch 8) presets,
one step on a fixed batch with a random-init VGG19 (same cost as the real one), fp32 vs bf16
autocast + channels_last: samples/s and peak memory.
Ablation (`--ablation SECONDS`): the three variants trained on the toy work dir for the same wall
time each (same data order and seed); final losses (mean of the last 10 steps), steps done, val
L1 of G_ema(label, retrieval guidance) against the real val photo (a crude fidelity check, not
FID/mIoU, which belong to `resail eval`), and sample grids under OUT/ablation/.

    python benchmarks/train.py [--out DIR] [--cpu-steps 5] [--e2e-steps 8] [--ablation 0] [--gpu-steps 10] [--threads N]

The last line of the output is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resail.index.build import build_index
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.pipeline.toy import ToyConfig, make_toy_dataset
from resail.synth.config import resolve_config
from resail.synth.data import StepBatchSampler, SynthDataset, count_images, label_palette
from resail.synth.losses import VGGLoss
from resail.synth.train import ResailTrainer, train, write_sample_grid


def toy_work(base: Path, n_train: int, n_val: int) -> Path:
    work = base / "work"
    if (work / "guidance" / "val.h5").exists():
        return work
    root = make_toy_dataset(base / "toy", ToyConfig(fmt="ade20k", n_train=n_train, n_val=n_val, seed=0), progress=False)
    build_segments(SegmentsConfig(dataset="ade20k", root=root, work=work))
    build_index(work, progress=False)
    for split in ("train", "val"):
        bake(BakeConfig(work, split, size=(128, 128), n_preview=0))
    return work


def fake_batch(cfg, batch: int) -> dict:
    h, w = cfg.net.height, cfg.net.width
    coarse = torch.randint(0, cfg.net.semantic_nc, (batch, 1, h // 16, w // 16)).float()
    label = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    return {"label": label, **{k: torch.rand(batch, 3, h, w) * 2 - 1 for k in ("image", "guidance", "distorted")}}


def time_steps(trainer: ResailTrainer, batch: dict, steps: int, sync) -> float:
    trainer.step(batch, 0)  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        trainer.step(batch, i + 1)
    sync()
    return (time.perf_counter() - t0) / steps


def cpu_section(work: Path, n_train: int, args) -> dict:
    cfg = resolve_config("toy", n_train=n_train, overrides={"steps": 1000, "workers": 1, "device": "cpu"})
    trainer = ResailTrainer(cfg, torch.device("cpu"))
    sec = time_steps(trainer, fake_batch(cfg, cfg.batch_size), args.cpu_steps, lambda: None)
    ds = SynthDataset(work, "train", cfg)
    ds[(0, 0)]  # numba kernels load
    t0 = time.perf_counter()
    n_items = 8
    for i in range(n_items):
        ds[(1, i)]
    item_s = (time.perf_counter() - t0) / n_items
    ds.close()
    e2e_cfg = resolve_config("toy", n_train=n_train, overrides={
        "name": "bench-e2e", "steps": args.e2e_steps, "workers": 1, "device": "cpu", "log_every": args.e2e_steps,
        "sample_every": 10**9, "checkpoint_every": 10**9})
    summary = train(e2e_cfg, work, progress=False)
    out = {"toy_step_s": round(sec, 3), "toy_step_samples_per_s": round(cfg.batch_size / sec, 3),
           "data_item_s": round(item_s, 3), "data_items_per_s": round(1 / item_s, 2),
           "e2e_samples_per_s": round(summary["samples_per_s"], 3), "e2e_steps": summary["steps_this_session"]}
    print(f"CPU toy (batch {cfg.batch_size}, 128x128, {torch.get_num_threads()} threads): step {sec:.2f} s "
          f"({cfg.batch_size / sec:.2f} samples/s); data {item_s:.3f} s/item; end to end with 1 worker "
          f"{summary['samples_per_s']:.2f} samples/s over {summary['steps_this_session']} steps")
    return out


def gpu_section(args) -> dict:
    out = {}
    dev = torch.device("cuda")
    vgg = VGGLoss.random_init()
    for preset in ("cityscapes", "ade20k"):
        for amp in ("off", "bf16"):
            cfg = resolve_config(preset, n_train=1000, overrides={"steps": 1000, "amp": amp, "vgg": True,
                                                                 "seg_loss": False})
            torch.cuda.reset_peak_memory_stats()
            trainer = ResailTrainer(cfg, dev, vgg=vgg)
            sec = time_steps(trainer, fake_batch(cfg, cfg.batch_size), args.gpu_steps, torch.cuda.synchronize)
            key = f"{preset}_{'fp32' if amp == 'off' else 'bf16'}"
            out[key + "_samples_per_s"] = round(cfg.batch_size / sec, 3)
            out[key + "_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print(f"GPU {torch.cuda.get_device_name()}: {preset} batch {cfg.batch_size} {key.split('_')[1]}: "
                  f"{sec * 1000:.0f} ms/step, {cfg.batch_size / sec:.2f} samples/s, peak {out[key + '_peak_gib']} GiB")
            del trainer
            torch.cuda.empty_cache()
    return out


@torch.no_grad()
def val_l1(trainer: ResailTrainer, val: SynthDataset) -> float:
    errs = []
    for i in range(len(val)):
        b = torch.utils.data.default_collate([val[i]])
        x = trainer.inputs(b)
        errs.append(float((trainer.G_ema(x["label_map"], x["guidance"]) - x["image"]).abs().mean()))
    return float(np.mean(errs))


def ablation(work: Path, n_train: int, seconds: float, out_dir: Path) -> dict:
    variants = {"resail": {}, "spade_norm": {"norm": "spade"}, "no_retrieval_loss": {"retrieval_loss": False}}
    results = {}
    for name, change in variants.items():
        cfg = resolve_config("toy", n_train=n_train, overrides={"steps": 100_000, "workers": 1, "device": "cpu",
                                                                **change})
        trainer = ResailTrainer(cfg, torch.device("cpu"))
        ds = SynthDataset(work, "train", cfg)
        sampler = StepBatchSampler(len(ds), cfg.batch_size, seed=cfg.seed, total_steps=cfg.total_steps)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=1)
        history, t0, step = [], time.perf_counter(), 0
        for batch in loader:
            terms = trainer.step(batch, step)
            history.append({k: float(v) for k, v in terms.items()})
            step += 1
            if time.perf_counter() - t0 > seconds:
                break
        del loader
        val = SynthDataset(work, "val", cfg, train=False, with_distorted=True)
        grid_batch = torch.utils.data.default_collate([val[i] for i in range(min(4, len(val)))])
        write_sample_grid(out_dir / f"{name}.png", trainer, grid_batch, label_palette(ds.dataset))
        last = {k: round(float(np.mean([h[k] for h in history[-10:]])), 4) for k in history[-1]}
        results[name] = {"steps": step, "val_l1": round(val_l1(trainer, val), 4), "last10": last}
        print(f"ablation {name}: {step} steps in {seconds:.0f} s; val L1 {results[name]['val_l1']}; "
              f"G {last['G']}, D {last['D']}, G_fm {last['G_fm']} -> {out_dir / (name + '.png')}")
        ds.close()
        val.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="Folder for the toy work dir and grids [default: temp].")
    ap.add_argument("--n-train", type=int, default=24)
    ap.add_argument("--cpu-steps", type=int, default=5)
    ap.add_argument("--e2e-steps", type=int, default=8)
    ap.add_argument("--gpu-steps", type=int, default=10)
    ap.add_argument("--ablation", type=float, default=0.0, help="Seconds of training per ablation variant (0: skip).")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's].")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = args.out or Path(tempfile.mkdtemp(prefix="resail-bench-train-"))
    result = {"bench": "train", "threads": torch.get_num_threads()}
    if not args.skip_cpu or args.ablation:
        work = toy_work(base, args.n_train, 6)
        n_train = count_images(work, "train")
    if not args.skip_cpu:
        import shutil

        shutil.rmtree(work / "runs" / "bench-e2e", ignore_errors=True)
        result.update(cpu_section(work, n_train, args))
    if torch.cuda.is_available():
        result.update(gpu_section(args))
    if args.ablation:
        (base / "ablation").mkdir(parents=True, exist_ok=True)
        result["ablation_seconds"] = args.ablation
        result["ablation"] = ablation(work, n_train, args.ablation, base / "ablation")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

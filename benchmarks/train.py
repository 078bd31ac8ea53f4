"""Training throughput of `resail train` on the CPU (toy preset) and, when CUDA is available, the GPU.

CPU: the `toy` preset at 128×128, batch 4:
  (a) the trainer's step alone on a fixed batch (G phase with both guidances, D phase, EMA),
  (b) the data pipeline alone (reader, cache, distorted GT built on the fly), items/s,
  (c) end to end through `train()` with data workers: samples/s.
GPU (only when CUDA is available): the full Cityscapes (batch 3) and ADE20K (batch 8) presets,
one step on a fixed batch with a random-init VGG19 (same cost as the real one), fp32 vs bf16
autocast + channels_last: samples/s and peak memory.

The toy ablation (RESAIL vs SPADE norm vs no retrieval loss) is benchmarks/ablation.py.

    python benchmarks/train.py [--out DIR] [--n-train 24] [--n-val 6] [--cpu-steps 5] [--e2e-steps 8]
        [--gpu-steps 10] [--threads N] [--skip-cpu]

The last line of the output is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from resail.benchmarks._common import emit
from resail.synth.config import resolve_config
from resail.synth.data import SynthDataset, count_images
from resail.synth.losses import VGGLoss
from resail.synth.train import ResailTrainer, train
from resail.tests.builders.work import bake_splits, index_work, toy_dataset
from resail.threads import use
from resail.workdir import WorkDir

GRID_ROWS = 6  # val images in comparison.png


def toy_work(base: Path, n_train: int, n_val: int) -> Path:
    """The toy work dir for these sizes under `base` (reused when already built)."""
    work = base / f"work_{n_train}_{n_val}"
    if WorkDir(work).guidance_h5("val").exists():
        return work
    root = toy_dataset(base / f"toy_{n_train}_{n_val}", n_train=n_train, n_val=n_val, size=256)
    return bake_splits(index_work(root, work), size=(128, 128))


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
    threads = torch.get_num_threads()  # (a) and (b): this process alone, as main() set the policy
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
    use(e2e_cfg.workers, threads=args.threads)  # (c) as `resail train` runs: the trainer beside its worker
    summary = train(e2e_cfg, work, progress=False)
    out = {"toy_step_s": round(sec, 3), "toy_step_samples_per_s": round(cfg.batch_size / sec, 3),
           "data_item_s": round(item_s, 3), "data_items_per_s": round(1 / item_s, 2),
           "e2e_samples_per_s": round(summary["samples_per_s"], 3), "e2e_steps": summary["steps_this_session"]}
    print(f"CPU toy (batch {cfg.batch_size}, 128x128, {threads} threads): step {sec:.2f} s "
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="Folder for the toy work dir and grids [default: temp].")
    ap.add_argument("--n-train", type=int, default=24, help="Toy training images.")
    ap.add_argument("--n-val", type=int, default=6, help="Toy val images (the ablation's judge scores all of them).")
    ap.add_argument("--cpu-steps", type=int, default=5)
    ap.add_argument("--e2e-steps", type=int, default=8)
    ap.add_argument("--gpu-steps", type=int, default=10)
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPUs for the thread policy (resail/threads.py) [default: those this process may use].")
    args = ap.parse_args()
    use(threads=args.threads)
    base = args.out or Path(tempfile.mkdtemp(prefix="resail-bench-train-"))
    result = {"bench": "train", "threads": torch.get_num_threads()}
    if not args.skip_cpu:
        work = toy_work(base, args.n_train, args.n_val)
        n_train = count_images(work, "train")
        import shutil

        shutil.rmtree(WorkDir(work).run("bench-e2e"), ignore_errors=True)
        result.update(cpu_section(work, n_train, args))
    if torch.cuda.is_available():
        result.update(gpu_section(args))
    emit(result)


if __name__ == "__main__":
    main()

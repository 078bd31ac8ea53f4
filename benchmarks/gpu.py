"""The GPU check: one command, at most 8 minutes on one GPU, the JSON summary as the last line.

Sections, in this order, each skipped (and said so in the JSON) when the time budget is short:

1. **steps**: the full ADE20K (256×256) and Cityscapes (512×256) presets, the trainer's whole
   step (G phase with both guidances, D phase on the concatenated batch, EMA) on a fixed random
   batch with a random-init VGG19 (the cost of the real one) and, for Cityscapes, whose preset
   trains with it, a random-init segmentation network: ms/step and peak memory for fp32 vs
   bf16 autocast + channels_last at batch 1/2/4/8 (a batch that runs out of memory ends that
   precision's series). 2 warm-up steps, then the median of 3 timed steps.
2. **compile**: the same step with `torch.compile` on G and D (ADE20K, bf16 + channels_last,
   batch 4): compile time, ms/step, and the ratio to eager; an error is recorded, not raised.
3. **faiss**: when faiss-gpu is installed, one class of 100k segments (benchmarks/retrieval.py's
   mask generator) in a flat shard, 1,000 held-out queries searched on the CPU and on the GPU:
   whether the top-k after the exact rerank is identical (ids and scores, row by row) and
   ms/query each.
4. **toy**: `train()` on the toy preset (a 24-image toy work dir, 128×128) for `--toy-seconds`
   (default 180), stopped by SIGUSR1 as a cluster would (the preemption path on a GPU): steps,
   samples/s, last losses, and the newest sample grid copied to OUT/toy_samples.png.
5. **torchrun**: with more than one visible GPU, the toy run for 200 steps through
   `torchrun --nproc_per_node=N` against one process at the same global batch: samples/s each.

    python benchmarks/gpu.py [--out DIR] [--budget-s 470] [--toy-seconds 180] [--skip SECTION ...]

`--ablation` runs, instead of the sections, the toy ablation (benchmarks/ablation.py: RESAIL,
SPADE norm, no retrieval loss, CLADE, CLADE-ICPE) × 2 seeds to 5,000 steps on the GPU, judged at
six step counts: it prints its plan and the training time estimated from each variant's measured
step time first, then makes the data and the judge, and writes OUT/curve.png (PNG) and
OUT/ablation.json (budget: ~6 minutes of training and judging on one H200-class GPU).
`--ablation --tiny` rehearses the same code path on the CPU at tiny sizes and step counts.

    python benchmarks/gpu.py --ablation [--tiny] [--out DIR]

Without CUDA (and without --tiny) it prints that, then a JSON line, and exits 0. Figures go to
BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from resail.artifacts import write_json_atomic
from resail.errors import StageError

HERE = Path(__file__).resolve().parent
SECTIONS = ("steps", "compile", "faiss", "toy", "torchrun")
BATCHES = (1, 2, 4, 8)
PRESETS = ("ade20k", "cityscapes")
# seconds each section needs at least to be worth starting
NEEDS = {"steps": 60, "compile": 150, "faiss": 60, "toy": 60, "torchrun": 90}


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# ---------------------------------------------------------------- 1–2: the trainer's step


def fake_batch(cfg, batch: int, seed: int = 0) -> dict:
    """Random label map (blocks of 16×16 px) and images in [-1, 1], on the CPU like a loader's."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.net.height, cfg.net.width
    coarse = torch.randint(0, cfg.net.semantic_nc, (batch, 1, h // 16, w // 16), generator=g).float()
    label = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    return {"label": label, **{k: torch.rand(batch, 3, h, w, generator=g) * 2 - 1
                               for k in ("image", "guidance", "distorted")}}


def make_trainer(preset: str, precision: str):
    from resail.synth.config import resolve_config
    from resail.synth.losses import SegmentationLoss, VGGLoss
    from resail.synth.segnet import build_segnet
    from resail.synth.train import ResailTrainer

    amp, channels_last = ("off", False) if precision == "fp32" else ("bf16", True)
    cfg = resolve_config(preset, n_train=1000, overrides={"steps": 10_000, "amp": amp, "channels_last": channels_last,
                                                         "vgg": True, "seg_loss": False, "device": "cuda"})
    device = torch.device("cuda")
    seg = None
    if preset == "cityscapes":  # the preset trains with the segmentation loss; a random net costs the same
        seg = SegmentationLoss(build_segnet(cfg.net, device), ignore_index=0)
    return ResailTrainer(cfg, device, vgg=VGGLoss.random_init(), seg=seg)


def time_step(trainer, batch: dict, warmup: int = 2, timed: int = 3) -> float:
    """Median ms of `timed` steps after `warmup` ones."""
    for i in range(warmup):
        trainer.step(batch, i)
    torch.cuda.synchronize()
    times = []
    for i in range(timed):
        t0 = time.perf_counter()
        trainer.step(batch, warmup + i)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def steps_section(budget: Budget, reserve: float) -> dict:
    out = {}
    for preset in PRESETS:
        for precision in ("fp32", "bf16_channels_last"):
            trainer = make_trainer(preset, precision)
            for batch in BATCHES:
                key = f"{preset}_{precision}_b{batch}"
                if budget.left() - reserve < 15:
                    out[key] = {"skipped": "time budget"}
                    continue
                torch.cuda.reset_peak_memory_stats()
                try:
                    ms = time_step(trainer, fake_batch(trainer.cfg, batch))
                except torch.OutOfMemoryError:
                    out[key] = {"oom": True}
                    break
                out[key] = {"ms_per_step": round(ms, 1), "samples_per_s": round(batch * 1000 / ms, 2),
                            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
                print(f"{key}: {out[key]}", flush=True)
            del trainer  # before the next one is built, so its peak memory is its own
            torch.cuda.empty_cache()
    return out


def compile_section() -> dict:
    preset, batch = "ade20k", 4
    trainer = make_trainer(preset, "bf16_channels_last")
    data = fake_batch(trainer.cfg, batch)
    eager_ms = time_step(trainer, data)
    trainer.G, trainer.D = torch.compile(trainer.G), torch.compile(trainer.D)
    out = {"preset": preset, "batch": batch, "eager_ms_per_step": round(eager_ms, 1)}
    try:
        t0 = time.perf_counter()
        trainer.step(data, 0)  # compiles the G phase's and the D phase's graphs
        torch.cuda.synchronize()
        out["compile_s"] = round(time.perf_counter() - t0, 1)
        ms = time_step(trainer, data)
        out.update(compiled_ms_per_step=round(ms, 1), speedup=round(eager_ms / ms, 2))
    except Exception as e:  # the figure is whether it works: the error is the result
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    del trainer
    torch.cuda.empty_cache()
    print(f"compile: {out}", flush=True)
    return out


# ---------------------------------------------------------------- 3: faiss-gpu vs faiss-cpu


def _segments(args) -> tuple:
    from resail.benchmarks.retrieval import make_segments

    return make_segments(*args)


def faiss_section(n: int = 100_000, n_queries: int = 1000) -> dict:
    import multiprocessing

    import numpy as np

    from resail.index.build import build_index
    from resail.index.retrieval import RetrievalIndex
    from resail.index.search import QueryBatch, SearchConfig, search
    from resail.index.shards import gpu_available

    if not gpu_available():
        return {"skipped": "faiss-gpu is not installed (or sees no GPU)"}
    from resail.tests.builders.store import write_fake_store

    chunks = 32
    with multiprocessing.get_context("spawn").Pool(min(16, os.cpu_count() or 1)) as pool:  # CPU work: all cores
        parts = pool.map(_segments, [(n // chunks, seed) for seed in range(chunks)] + [(n_queries, 10_000)])
    canon, pre, bbox = (np.concatenate([p[i] for p in parts[:-1]]) for i in range(3))
    q_canon, q_pre, q_bbox = parts[-1]
    out = {"n": int(len(bbox)), "queries": n_queries}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        write_fake_store(work, masks=canon, prefilter=pre, class_id=np.ones(len(bbox), np.int32), bbox_area=bbox,
                         crop_side=2)
        build_index(work, progress=False, ivf_threshold=10**9)  # a flat shard: the kind faiss-gpu searches
        queries = QueryBatch(class_id=np.ones(n_queries, np.int64), canonical=q_canon, prefilter=q_pre,
                             bbox_area=q_bbox)
        results = {}
        for device in ("cpu", "cuda"):
            index = RetrievalIndex(work, device=device)
            search(index, QueryBatch(queries.class_id[:8], q_canon[:8], q_pre[:8], q_bbox[:8]), SearchConfig())
            t0 = time.perf_counter()
            results[device] = search(index, queries, SearchConfig())
            out[f"{device}_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / n_queries, 4)
    cpu, gpu = results["cpu"], results["cuda"]
    same_rows = (cpu.segment_id == gpu.segment_id).all(axis=1)
    out.update(identical_topk=bool(same_rows.all()), identical_rows=round(float(same_rows.mean()), 4),
               scores_equal=bool(np.allclose(cpu.score, gpu.score, equal_nan=True)))
    print(f"faiss: {out}", flush=True)
    return out


# ---------------------------------------------------------------- 4–5: the toy preset end to end


def toy_work_dir(base: Path) -> Path:
    from resail.benchmarks.train import toy_work  # 24 + 6 toy images, guidance at 128×128

    return toy_work(base, 24, 6)


def toy_section(base: Path, out_dir: Path, seconds: float) -> dict:
    from resail.synth.config import resolve_config
    from resail.synth.data import count_images
    from resail.synth.train import train

    work = toy_work_dir(base)
    cfg = resolve_config("toy", n_train=count_images(work, "train"), overrides={
        "name": "gpu-toy", "steps": 1_000_000, "workers": min(8, os.cpu_count() or 1), "device": "cuda",
        "log_every": 50, "sample_every": 200, "checkpoint_every": 10**9, "tensorboard": False})
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        summary = train(cfg, work, progress=False)
    finally:
        timer.cancel()
    samples = sorted((Path(summary["run_dir"]) / "samples").glob("*.png"))
    if samples:
        shutil.copyfile(samples[-1], out_dir / "toy_samples.png")
    last = summary["last"]
    out = {"seconds": summary["seconds"], "steps": summary["steps"],
           "samples_per_s": round(summary["samples_per_s"], 2), "stopped_by": summary["stopped_by"],
           "G": last.get("G"), "D": last.get("D"), "sample_grid": samples[-1].name if samples else None}
    print(f"toy: {out}", flush=True)
    return out


def torchrun_section(base: Path, gpus: int, steps: int = 200) -> dict:
    work = toy_work_dir(base)
    out = {}
    for n in (1, gpus):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
               "resail.cli", "train", str(work),
               "--preset", "toy", "--name", f"torchrun-{n}", "--steps", str(steps), "--batch-size", str(4 * gpus),
               "--workers", "4", "-q"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        rows = [json.loads(line) for line in (work / "runs" / f"torchrun-{n}" / "stats.jsonl").read_text().splitlines()
                if line.strip()] if done.returncode == 0 else []
        ticks = [r for r in rows if "samples_per_s" in r][1:]  # the first tick holds the start-up
        out[f"{n}_gpu"] = {"returncode": done.returncode, "wall_s": round(time.perf_counter() - t0, 1),
                           "samples_per_s": round(statistics.median(r["samples_per_s"] for r in ticks), 2)
                           if ticks else None, **({"stderr": done.stderr[-500:]} if done.returncode else {})}
    print(f"torchrun: {out}", flush=True)
    return out


# ---------------------------------------------------------------- the toy ablation (--ablation)

# The full run (five variants × 2 seeds to 5,000 steps on one GPU) and its `--tiny` rehearsal on
# the CPU: the same code path (benchmarks/ablation.py's --prepare, one --seed process per seed side
# by side, --report), with the sizes cut down.
ABLATION = {
    "full": {"device": "cuda", "seeds": (0, 1), "steps": (250, 500, 1000, 2000, 3500, 5000), "batch_size": 4,
             "n_train": 200, "n_val": 100, "judge_train": 800, "segnet_steps": 6000},
    "tiny": {"device": "cpu", "seeds": (0, 1), "steps": (1, 2), "batch_size": 2,
             "n_train": 8, "n_val": 4, "judge_train": 6, "segnet_steps": 2},
}
ABLATION_BUDGET_S = 360.0   # the variants' training and judging, after the data and the judge are made


def ablation_plan(tiny: bool, cores: int) -> dict:
    plan = dict(ABLATION["tiny" if tiny else "full"], preset="toy64")
    # the cores left beside one main process per seed build the batches (one toy64 item: 32 ms of one core)
    plan["workers"] = 0 if tiny else max(1, (cores - len(plan["seeds"])) // len(plan["seeds"]))
    return plan


def calibrate(plan: dict, timed: int) -> dict:
    """ms per training step of each variant on the plan's device: a random batch of the plan's
    shapes, one warm-up step, then the mean of `timed` steps."""
    from resail.benchmarks import ablation

    ms = {}
    for name in ablation.VARIANTS:
        run = ablation.start(plan["preset"], plan["n_train"], name, 0, plan["device"], plan["batch_size"])
        batch = fake_batch(run.trainer.cfg, plan["batch_size"])
        batch["dist"] = batch["image"][:, :2].clone()  # CLADE-ICPE's positional maps: any values in (−1, 1)
        run.advance(batch)
        run.train_s = 0.0
        for _ in range(timed):
            run.advance(batch)
        ms[name] = round(run.train_s * 1000 / timed, 2)
        del run
    return ms


def estimate(plan: dict, ms: dict) -> dict:
    """Training seconds: each seed's process steps its variants one after the other; the seeds'
    processes share the GPU, between fully overlapped (launch-bound small kernels) and serialised."""
    one_seed = plan["steps"][-1] * sum(ms.values()) / 1000
    return {"train_s_overlapped": round(one_seed, 1), "train_s_serialised": round(one_seed * len(plan["seeds"]), 1)}


def _ablation_cmd(out: Path, *args) -> list[str]:
    return [sys.executable, str(HERE / "ablation.py"), "--out", str(out), *map(str, args)]


def _log_json(log: Path) -> dict:
    """The JSON line benchmarks/ablation.py prints last, from its log."""
    return json.loads(log.read_text().strip().splitlines()[-1])


def _last_json(cmd: list[str], log: Path) -> dict:
    """Run benchmarks/ablation.py, its output to `log`; the JSON of its last line."""
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-1:]
        raise StageError(f"{log}: benchmarks/ablation.py {cmd[4]} failed (exit {done.returncode}): {tail}")
    return _log_json(log)


def run_seeds(out: Path, plan: dict) -> dict:
    """One `ablation.py --seed S` process per seed, side by side; their logs in OUT/seed{S}.log."""
    procs = {}
    for seed in plan["seeds"]:
        log = open(out / f"seed{seed}.log", "w")
        procs[seed] = (subprocess.Popen(_ablation_cmd(
            out, "--seed", seed, "--steps", ",".join(map(str, plan["steps"])), "--device", plan["device"],
            "--workers", plan["workers"], "--batch-size", plan["batch_size"], "--threads", 1),
            stdout=log, stderr=subprocess.STDOUT), log)
    codes = {}
    for seed, (proc, log) in procs.items():
        codes[seed] = proc.wait()
        log.close()
    failed = [s for s, c in codes.items() if c]
    if failed:
        raise StageError(f"ablation seeds {failed} failed; see {out}/seed{failed[0]}.log")
    return {s: _log_json(out / f"seed{s}.log") for s in plan["seeds"]}


def ablation_section(out: Path, tiny: bool) -> dict:
    """Plan and estimate first, then the data and the judge, the seeds side by side, the report:
    OUT/curve.png, OUT/seed{S}/results.json and OUT/ablation.json."""
    from resail.threads import use

    use(threads=1)  # this process only times the steps; the seeds' processes and their loaders take the cores
    plan = ablation_plan(tiny, os.cpu_count() or 1)
    ms = calibrate(plan, timed=1 if tiny else 20)
    est = estimate(plan, ms)
    print(f"ablation plan: {plan['preset']}, batch {plan['batch_size']}, seeds {list(plan['seeds'])}, five variants "
          f"to {plan['steps'][-1]} steps, judged at {list(plan['steps'])} on {plan['device']}, {plan['workers']} "
          f"data workers per seed; ms per step {ms}; estimated training {est['train_s_overlapped']:.0f}–"
          f"{est['train_s_serialised']:.0f} s (seeds overlapped – serialised), plus judging; budget "
          f"{ABLATION_BUDGET_S:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepared = _last_json(_ablation_cmd(
        out, "--prepare", "--n-train", plan["n_train"], "--n-val", plan["n_val"], "--judge-train", plan["judge_train"],
        "--segnet-steps", plan["segnet_steps"], "--device", plan["device"], "--workers", plan["workers"]),
        out / "prepare.log")
    prepare_s = time.perf_counter() - t0
    print(f"ablation data and judge: {prepare_s:.0f} s, {prepared}", flush=True)
    t0 = time.perf_counter()
    seeds = run_seeds(out, plan)
    seeds_s = time.perf_counter() - t0
    report = _last_json(_ablation_cmd(out, "--report"), out / "report.log")
    result = {"plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}, "ms_per_step": ms,
              "estimate": est, "prepare_s": round(prepare_s, 1), "seeds_s": round(seeds_s, 1),
              "train_s": {s: {n: v["train_s"] for n, v in r["last"]["variants"].items()} for s, r in seeds.items()},
              "judge": prepared, "final": report["final"], "curve": report["curve"]}
    write_json_atomic(out / "ablation.json", result)
    print(f"ablation: seeds {seeds_s:.0f} s against the estimate; {out / 'ablation.json'}", flush=True)
    return result


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-bench"), help="folder for the toy sample grid")
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget for everything")
    ap.add_argument("--toy-seconds", type=float, default=180.0)
    ap.add_argument("--skip", nargs="*", choices=SECTIONS, default=[])
    ap.add_argument("--ablation", action="store_true",
                    help="instead of the sections: the toy ablation, five variants × 2 seeds to 5,000 steps")
    ap.add_argument("--tiny", action="store_true",
                    help="with --ablation: rehearse it on the CPU at tiny sizes and step counts (the test's mode)")
    args = ap.parse_args(argv)
    if args.tiny and not args.ablation:
        ap.error("--tiny rehearses --ablation; give both")
    if args.ablation and (args.tiny or torch.cuda.is_available()):
        result = {"bench": "gpu", "cuda": torch.cuda.is_available(), "tiny": args.tiny,
                  "ablation": ablation_section(args.out, args.tiny)}
        print(json.dumps(result))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device visible: nothing to measure here; run this on a machine with a GPU")
        print(json.dumps({"bench": "gpu", "cuda": False}))
        return 0
    budget = Budget(args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    result = {"bench": "gpu", "cuda": True, "gpu": torch.cuda.get_device_name(), "gpus": gpus,
              "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    base = Path(tempfile.mkdtemp(prefix="resail-gpu-bench-"))
    toy_reserve = 0 if "toy" in args.skip else min(args.toy_seconds, NEEDS["toy"]) + 30
    try:
        for section in SECTIONS:
            if section in args.skip:
                result[section] = {"skipped": "--skip"}
                continue
            reserve = toy_reserve if SECTIONS.index(section) < SECTIONS.index("toy") else 0
            if budget.left() - reserve < NEEDS[section]:
                result[section] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
                continue
            if section == "steps":
                result[section] = steps_section(budget, reserve)
            elif section == "compile":
                result[section] = compile_section()
            elif section == "faiss":
                result[section] = faiss_section()
            elif section == "toy":
                result[section] = toy_section(base, args.out, min(args.toy_seconds, budget.left() - 30))
            elif gpus < 2:
                result[section] = {"skipped": "one GPU visible"}
            else:
                result[section] = torchrun_section(base, gpus)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

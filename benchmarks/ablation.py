"""Does the retrieval guidance help? RESAIL against SPADE norm, no retrieval loss, CLADE and CLADE-ICPE.

The paper's ablation (Table 3) and baselines on the toy set, at equal steps, judged at several step counts:

  1. Data (`--prepare`, once per OUT): the toy ADE20K-format set (`resail data toy`, 256×256,
     `--n-train`/`--n-val` images; its textures are drawn per object from jittered colour and
     pattern choices, so a class's appearance varies and the guidance carries what the label map
     lacks), decomposed, indexed and baked at the preset's size. The judge: the project's
     segmentation network (`resail segnet train`'s code at the preset's size) trained for
     `--segnet-steps` steps on its own toy photos (`--judge-train` of them, another seed of the
     generator: more than the variants see, so that it has learnt the photos' textures, not only
     their layout; OUT/judge/work/segnet/PRESET.pt). Its mIoU on the real val photos is the
     ceiling; the real split-half FID/KID in its feature space is the floor.
  2. One process per seed (`--seed S`; run the seeds side by side, one core each) trains the five
     variants in lockstep on one loader's batches (each batch built once and given to every
     variant; constant lr, same initial weights per seed: the variants differ only in their
     change), judges each at every step of `--steps`, and writes the results (atomically) before
     the next leg, so an interrupted run keeps every finished point.
       resail             the RESAIL generator with both losses (distorted GT and retrieval)
       spade_norm         SPADE norms (`--norm spade`): the guidance never reaches G
       no_retrieval_loss  RESAIL norms, trained on the distorted GT only (`--no-retrieval-loss`)
       clade              CLADE norms (`--norm clade`, docs/baselines.md)
       clade_icpe         CLADE with the intra-class positional maps (`--norm clade-icpe`)
  3. At each point, each variant's G_ema makes every val image from its label map and retrieval
     guidance, quantised to uint8 as `resail eval` does; the judge gives val mIoU and pixel
     accuracy (eval's protocol) and FID/KID in its feature space against the real val photos, and
     the appearance measure (benchmarks/appearance.py: per-class colour and texture statistics of
     the generated against the real regions of the same label maps; its floor is the val photos
     against the judge's own val photos, real photos on other label maps).
     Probes of how G uses the guidance, on the same val images:
       zero     guidance all zeros (mid-grey): mIoU, and the mean |Δ| per pixel and channel (0–255,
                before quantisation) from the retrieval-guided output
       swap     each image gets the next image's retrieval guidance: mIoU and mean |Δ|
       oracle   guidance = the val photo's own distorted ground truth (what training shows G on
                its first path): mIoU, and the L1 to the real photo against the retrieval-guided
                output's L1 (how much G copies from guidance that matches the photo)
     and the RESAIL modules' mixing weights sigmoid(mix_gamma), sigmoid(mix_beta) (0.5 at init;
     1 = the guidance branch only), and the mean loss terms over the leg (the retrieval path's
     G_gan_r / D_fake_r against the distorted-GT path's G_gan_d / D_fake_d).
  4. `--report` gathers every seed's results into OUT/curve.png (val mIoU and the appearance
     distances against steps, one line per variant and seed) and a Markdown table (mean and each seed).

Outputs under OUT/seed{S}/: results.json, comparison_{step}.png (label | guidance | real | each
variant's output, first val images). benchmarks/gpu.py's `--ablation` runs the same code on a GPU.

    python benchmarks/ablation.py --out DIR --prepare [--preset toy64] [--n-train 200] [--n-val 100]
        [--judge-train 800] [--segnet-steps 6000]
    python benchmarks/ablation.py --out DIR --seed S [--steps 100,200,400,800,1600,3200] [--device cuda --workers 6]
    python benchmarks/ablation.py --out DIR --report

The last line of each command's output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resail.artifacts import write_json_atomic, write_png_atomic
from resail.benchmarks import appearance
from resail.benchmarks.appearance import RegionStats
from resail.pipeline.labels.classes import palette_lut
from resail.pipeline.labels.spaces import LabelChannels
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.synth.config import resolve_config
from resail.synth.data import StepBatchSampler, SynthDataset, count_images, to_uint8
from resail.synth.eval import SegnetScorer
from resail.synth.metrics import feature_distances
from resail.synth.norms import ResailNorm
from resail.synth.segnet import SegNet, SegnetTrainConfig, load_segnet
from resail.synth.segnet_data import SegnetRunConfig, train_segnet_on_work
from resail.synth.train import ResailTrainer
from resail.tests.builders.work import bake_splits, index_work, toy_dataset
from resail.threads import init_worker, use
from resail.workdir import WorkDir

VARIANTS = {"resail": {}, "spade_norm": {"norm": "spade"}, "no_retrieval_loss": {"retrieval_loss": False},
            "clade": {"norm": "clade"}, "clade_icpe": {"norm": "clade-icpe"}}
GRID_ROWS = 6      # val images in comparison_{step}.png
EVAL_BATCH = 10
JUDGE_DATA_SEED = 1  # the toy generator's seed for the judge's own photos (the variants' are seed 0)


def work_dir(out: Path) -> Path:
    return out / "work"


def judge_work_dir(out: Path) -> Path:
    return out / "judge" / "work"


def prepare(out: Path, preset: str, n_train: int, n_val: int, judge_train: int, segnet_steps: int,
            device: str = "cpu", workers: int = 0) -> dict:
    """The toy data, baked at the preset's size, and the judge (each reused when present).

    The judge learns from its own toy images (another seed of the generator: `judge_train` train
    photos, none of them the variants' train or val photos), many more than the variants see, so
    that it has learnt the photos' textures and not only their layout; its val split (`n_val`
    other real photos) is the appearance measure's noise floor."""
    work, judge_work = work_dir(out), judge_work_dir(out)
    cfg = resolve_config(preset, n_train=n_train)
    if not WorkDir(work).guidance_h5("val").exists():
        root = toy_dataset(out / "toy", n_train=n_train, n_val=n_val, size=256)
        bake_splits(index_work(root, work), size=(cfg.net.width, cfg.net.height))
    if WorkDir(judge_work).segments_manifest() is None:
        root = toy_dataset(out / "judge" / "toy", n_train=judge_train, n_val=n_val, size=256, seed=JUDGE_DATA_SEED)
        build_segments(SegmentsConfig(dataset="ade20k", root=root, work=judge_work))
    t0 = time.perf_counter()
    run_cfg = SegnetRunConfig(preset, batch_size=8, workers=workers, device=device,
                              train=SegnetTrainConfig(steps=segnet_steps, checkpoint_every=max(1, segnet_steps // 4)))
    report = train_segnet_on_work(judge_work, run_cfg, progress=True)
    return {"work": str(work), "judge_work": str(judge_work), "judge_train": report["n_train"],
            "segnet_steps": report["steps"], "segnet_s": round(time.perf_counter() - t0, 1),
            "segnet_own_val": {k: round(report["val"][k], 4) for k in ("miou", "pixel_acc")}}


# ---------------------------------------------------------------- training in lockstep


@dataclass
class Run:
    name: str
    trainer: ResailTrainer
    step: int = 0
    train_s: float = 0.0
    leg: list = field(default_factory=list)  # loss terms of every step since the last point

    def advance(self, batch: dict) -> None:
        t0 = time.perf_counter()
        terms = self.trainer.step(batch, self.step)
        self.leg.append({k: float(v) for k, v in terms.items()})
        self.step += 1
        if self.trainer.device.type == "cuda":  # the step's time, not its launch's
            torch.cuda.synchronize()
        self.train_s += time.perf_counter() - t0

    def close_leg(self) -> dict:
        """The mean loss terms since the last point; starts the next leg."""
        means = {k: round(float(np.mean([t[k] for t in self.leg])), 4) for k in self.leg[-1]} if self.leg else {}
        self.leg = []
        return means


def variant_config(preset: str, n_train: int, seed: int, change: dict, device: str, batch_size: int | None):
    """Constant lr (the schedule is laid out over 10⁶ steps, so its decay never starts)."""
    overrides = {"steps": 1_000_000, "workers": 0, "device": device, "seed": seed, **change}
    if batch_size:
        overrides["batch_size"] = batch_size
    return resolve_config(preset, n_train=n_train, overrides=overrides)


def start(preset: str, n_train: int, name: str, seed: int, device: str, batch_size: int | None) -> Run:
    cfg = variant_config(preset, n_train, seed, VARIANTS[name], device, batch_size)
    return Run(name, ResailTrainer(cfg, torch.device(device)))


def seed_batches(work: Path, preset: str, n_train: int, seed: int, last_step: int, workers: int,
                 batch_size: int | None) -> tuple[SynthDataset, object]:
    """One seed's training batches, built once and handed to every variant. The items carry
    CLADE-ICPE's positional maps; the other variants' `inputs()` leave them out. The draws of an
    item are the same with or without them (synth/data.py), so every variant sees the same data."""
    cfg = variant_config(preset, n_train, seed, {"norm": "clade-icpe"}, "cpu", batch_size)
    data = SynthDataset(work, "train", cfg)
    sampler = StepBatchSampler(len(data), cfg.batch_size, seed=cfg.seed, total_steps=last_step)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers, worker_init_fn=init_worker,
                                         prefetch_factor=4 if workers else None)
    return data, iter(loader)


# ---------------------------------------------------------------- judging


@dataclass
class Judge:
    segnet: SegNet
    labels: LabelChannels
    class_ids: list[int]
    device: str
    val: SynthDataset                 # val items with the distorted GT (the oracle probe) and the positional maps
    val_batches: list[dict]           # … built once, in batches of EVAL_BATCH
    real_feats: np.ndarray
    real_shown: np.ndarray
    real_regions: RegionStats         # the val photos' class regions (the appearance measure's reference)
    real_scores: dict
    floor: dict | None                # the real split-half FID/KID
    appearance_floor: dict            # the val photos against other real photos (the judge's val photos)

    def scorer(self) -> SegnetScorer:
        return SegnetScorer(self.segnet, self.labels, self.class_ids, self.device)

    def native(self, label: torch.Tensor) -> np.ndarray:
        return self.labels.to_native(label.numpy())


def _scores(scorer: SegnetScorer, source: str) -> dict:
    s = scorer.scores()[source]
    return {"miou": round(s["miou"], 4), "pixel_acc": round(s["pixel_acc"], 4)}


def _distances(real: np.ndarray, fake: np.ndarray) -> dict:
    d = feature_distances(real, fake, kid_subset_size=max(2, min(len(real), len(fake)) // 2))
    return {"fid": round(d["fid"], 4), "kid": round(d["kid"]["mean"], 5), "kid_std": round(d["kid"]["std"], 5)}


def _appearance(real: RegionStats, fake: RegionStats) -> dict:
    d = appearance.distance(real, fake)
    return {"colour": round(d["colour"], 3), "texture": round(d["texture"], 4)}


def _features(segnet: SegNet, images: np.ndarray) -> np.ndarray:
    device = next(segnet.parameters()).device
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # B×3×H×W
    return segnet.features(x).cpu().numpy()


def other_real_regions(out: Path, cfg) -> RegionStats:
    """The class regions of the judge's val photos: real photos of the same kind on other label
    maps, the appearance measure's noise floor against the variants' val photos."""
    other = SynthDataset(judge_work_dir(out), "val", cfg, train=False, with_distorted=False, with_guidance=False)
    regions = RegionStats()
    for batch in torch.utils.data.DataLoader(other, batch_size=EVAL_BATCH, shuffle=False, num_workers=0):
        regions.add(to_uint8(batch["image"]), other.channels.to_native(batch["label"].numpy()))
    other.close()
    return regions


@torch.no_grad()
def make_judge(out: Path, preset: str, device: str = "cpu") -> Judge:
    work = work_dir(out)
    cfg = resolve_config(preset, n_train=count_images(work, "train"), overrides={"norm": "clade-icpe"})
    segnet = load_segnet(WorkDir(judge_work_dir(out)).segnet(preset), map_location=device)
    labels = LabelChannels.of(cfg.net)
    class_ids = [int(c) for c in WorkDir(work).require_segments()["classes"]["ids"]]
    val = SynthDataset(work, "val", cfg, train=False, with_distorted=True)
    scorer = SegnetScorer(segnet, labels, class_ids, device)
    feats, shown, regions = [], [], RegionStats()
    batches = list(torch.utils.data.DataLoader(val, batch_size=EVAL_BATCH, shuffle=False, num_workers=0))
    for batch in batches:
        images = to_uint8(batch["image"])
        scorer.add("real", images, batch["label"])
        regions.add(images, labels.to_native(batch["label"].numpy()))
        feats.append(_features(segnet, images))
        shown.extend(images[:max(0, GRID_ROWS - len(shown))])
    feats = np.concatenate(feats)
    half = len(feats) // 2
    return Judge(segnet, labels, class_ids, device, val, batches, feats, np.stack(shown), regions,
                 _scores(scorer, "real"), _distances(feats[:half], feats[half:]) if half >= 2 else None,
                 _appearance(regions, other_real_regions(out, cfg)))


MODES = ("retrieval", "zero", "swap", "oracle")  # the guidance G gets: its own, and the probes'


@torch.no_grad()
def judge_run(run: Run, judge: Judge) -> tuple[dict, np.ndarray]:
    """The variant's scores with its retrieval guidance, the probes, and the first GRID_ROWS outputs."""
    G = run.trainer.G_ema
    scorers = {m: judge.scorer() for m in MODES}
    feats, shown, regions = [], [], RegionStats()
    delta = {m: 0.0 for m in MODES[1:]}
    l1_real = {m: 0.0 for m in MODES}
    n_pix = 0
    for batch in judge.val_batches:
        x = run.trainer.inputs(batch)
        m, g = x["label_map"], x["guidance"]
        guid = {"retrieval": g, "zero": torch.zeros_like(g), "swap": g.roll(1, dims=0), "oracle": x["distorted"]}
        fakes = {k: G(m, v, x.get("dist")) for k, v in guid.items()}                          # B×3×H×W in [−1, 1]
        outs = {k: (v.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5 for k, v in fakes.items()}  # B×H×W×3, 0–255
        real = to_uint8(batch["image"]).astype(np.float32)
        base = to_uint8(fakes["retrieval"])
        regions.add(base, judge.native(batch["label"]))
        feats.append(_features(judge.segnet, base))
        shown.extend(base[:max(0, GRID_ROWS - len(shown))])
        n_pix += base.size
        for k, o in outs.items():
            scorers[k].add("generated", base if k == "retrieval" else to_uint8(fakes[k]), batch["label"])
            l1_real[k] += float(np.abs(o - real).sum())
            if k != "retrieval":
                delta[k] += float(np.abs(o - outs["retrieval"]).sum())
    row = {**_scores(scorers["retrieval"], "generated"), **_distances(judge.real_feats, np.concatenate(feats)),
           "appearance": _appearance(judge.real_regions, regions),
           "probe": {k: {"miou": _scores(scorers[k], "generated")["miou"],
                         "mean_abs_change": round(delta[k] / n_pix, 3), "l1_real": round(l1_real[k] / n_pix, 3)}
                     for k in MODES[1:]},
           "l1_real": round(l1_real["retrieval"] / n_pix, 3)}
    mix = mixing_weights(G)
    if mix:
        row["mix"] = mix
    return row, np.stack(shown)


def mixing_weights(G: torch.nn.Module) -> dict:
    """The RESAIL modules' α = sigmoid(w) of γ and β: mean, min and max over the modules (none: {})."""
    mix = [(float(torch.sigmoid(mod.mix_gamma)), float(torch.sigmoid(mod.mix_beta)))
           for mod in G.modules() if isinstance(mod, ResailNorm)]
    if not mix:
        return {}
    a = np.array(mix)
    return {f"{name}_{stat}": round(float(fn(a[:, i])), 4) for i, name in enumerate(("gamma", "beta"))
            for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))}


def write_comparison(path: Path, judge: Judge, palette: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """Rows of label | guidance | real | each variant's G_ema output, for the first val images."""
    rows = []
    for i in range(len(judge.real_shown)):
        item = judge.val[i]
        label = palette[np.clip(judge.labels.to_native(item["label"].numpy()), 0, len(palette) - 1)]
        rows.append(np.concatenate([label, to_uint8(item["guidance"][None])[0], judge.real_shown[i],
                                    *(o[i] for o in outputs.values())], axis=1))
    write_png_atomic(path, np.concatenate(rows, axis=0))


def curve(out: Path, preset: str, seed: int, steps: list[int], device: str = "cpu", workers: int = 0,
          batch_size: int | None = None) -> dict:
    """One seed: every variant trained in lockstep on the same batches, judged at each of `steps`."""
    work = work_dir(out)
    n_train = count_images(work, "train")
    judge = make_judge(out, preset, device)
    folder = out / f"seed{seed}"
    runs = [start(preset, n_train, name, seed, device, batch_size) for name in VARIANTS]
    results = {"preset": preset, "seed": seed, "n_train": n_train, "n_val": len(judge.val), "device": device,
               "batch_size": runs[0].trainer.cfg.batch_size, "threads": torch.get_num_threads(), "steps": steps,
               "judge": {"real": judge.real_scores, "real_split_half": judge.floor,
                         "appearance_floor": judge.appearance_floor, "feature_dim": int(judge.real_feats.shape[1])},
               "points": []}
    data, batches = seed_batches(work, preset, n_train, seed, steps[-1], workers, batch_size)
    palette = palette_lut(judge.val.dataset, 65536)
    for point in steps:
        while runs[0].step < point:
            batch = next(batches)
            for run in runs:
                run.advance(batch)
        row, outputs = {"step": point, "variants": {}}, {}
        for run in runs:
            t = time.perf_counter()
            scores, outputs[run.name] = judge_run(run, judge)
            row["variants"][run.name] = v = {"train_s": round(run.train_s, 1), **scores, "loss": run.close_leg(),
                                             "judge_s": round(time.perf_counter() - t, 1)}
            print(f"seed {seed} step {point} {run.name}: mIoU {v['miou']}, pixel acc {v['pixel_acc']}, "
                  f"appearance colour {v['appearance']['colour']} texture {v['appearance']['texture']}, "
                  f"|Δ| zero {v['probe']['zero']['mean_abs_change']}, mix {v.get('mix', {}).get('gamma_mean')}; "
                  f"{run.train_s:.0f} s of training", flush=True)
        results["points"].append(row)
        write_comparison(folder / f"comparison_{point}.png", judge, palette, outputs)
        write_json_atomic(folder / "results.json", results)
    data.close()
    judge.val.close()
    return results


# ---------------------------------------------------------------- report


def gather(out: Path) -> dict[int, dict]:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("seed*/results.json"))]
    return {r["seed"]: r for r in runs}


def report(out: Path) -> dict:
    seeds = gather(out)
    if not seeds:
        raise SystemExit(f"{out}: no seed*/results.json; run `--seed S` first")
    table = format_table(seeds)
    print(table)
    plot(out / "curve.png", seeds)
    return {"seeds": sorted(seeds), "curve": str(out / "curve.png"), "final": final_points(seeds)}


def final_points(seeds: dict[int, dict]) -> dict:
    """The last step every seed reached, with each variant's figures per seed."""
    last = min(r["points"][-1]["step"] for r in seeds.values())
    out = {"step": last, "variants": {}}
    for name in VARIANTS:
        rows = [next(p for p in r["points"] if p["step"] == last)["variants"][name] for r in seeds.values()]
        out["variants"][name] = {k: [v[k] for v in rows] for k in ("miou", "pixel_acc", "fid", "kid", "l1_real")}
        out["variants"][name].update({f"appearance_{k}": [v["appearance"][k] for v in rows]
                                      for k in ("colour", "texture")})
    return out


def _figures(row: dict) -> dict:
    return {"miou": row["miou"], "pixel_acc": row["pixel_acc"], "colour": row["appearance"]["colour"],
            "texture": row["appearance"]["texture"], "fid": row["fid"]}


def format_table(seeds: dict[int, dict]) -> str:
    """Val mIoU / pixel acc / appearance / segnet-FID per variant and step: the mean over seeds,
    then each seed's mIoU and colour distance."""
    j = next(iter(seeds.values()))["judge"]
    floor, app = j["real_split_half"] or {}, j["appearance_floor"]
    lines = ["| step | variant | val mIoU | pixel acc | colour dist. | texture dist. | segnet-FID | "
             "each seed: mIoU; colour |",
             "|---|---|---|---|---|---|---|---|",
             f"| – | real val photos (judge's ceiling; appearance: other real photos; FID: split half) | "
             f"{j['real']['miou']:.4f} | {j['real']['pixel_acc']:.4f} | {app['colour']:.2f} | {app['texture']:.4f} | "
             f"{floor.get('fid', float('nan')):.2f} | |"]
    steps = sorted({p["step"] for r in seeds.values() for p in r["points"]})
    for step in steps:
        for name in VARIANTS:
            rows = [_figures(p["variants"][name]) for r in seeds.values() for p in r["points"] if p["step"] == step]
            mean = {k: float(np.mean([v[k] for v in rows])) for k in rows[0]}
            each = " / ".join(f"{v['miou']:.3f}" for v in rows) + "; " + " / ".join(f"{v['colour']:.2f}" for v in rows)
            lines.append(f"| {step} | {name} | {mean['miou']:.4f} | {mean['pixel_acc']:.4f} | {mean['colour']:.2f} | "
                         f"{mean['texture']:.4f} | {mean['fid']:.2f} | {each} |")
    return "\n".join(lines)


COLOURS = {"resail": "tab:red", "spade_norm": "tab:blue", "no_retrieval_loss": "tab:green", "clade": "tab:orange",
           "clade_icpe": "tab:purple"}
PANELS = (("miou", "val mIoU (judge)"), ("colour", "appearance: colour distance (Lab)"),
          ("texture", "appearance: texture distance"))


def plot(path: Path, seeds: dict[int, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    any_run = next(iter(seeds.values()))
    j = any_run["judge"]
    reference = {"miou": (j["real"]["miou"], "real val photos"),
                 "colour": (j["appearance_floor"]["colour"], "other real photos (floor)"),
                 "texture": (j["appearance_floor"]["texture"], "other real photos (floor)")}
    for ax, (key, title) in zip(axes, PANELS):
        for name in VARIANTS:
            for k, (seed, r) in enumerate(sorted(seeds.items())):
                xs = [p["step"] for p in r["points"]]
                ys = [_figures(p["variants"][name])[key] for p in r["points"]]
                ax.plot(xs, ys, marker="o", ms=3, color=COLOURS[name], ls="-" if k == 0 else "--",
                        label=f"{name} (seed {seed})")
        value, label = reference[key]
        ax.axhline(value, color="grey", ls=":", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"training steps (batch {any_run.get('batch_size', 4)})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"toy ablation, preset {any_run['preset']}, {any_run['n_train']} train / "
                 f"{any_run['n_val']} val images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Folder of the toy work dir, the judge and the results.")
    ap.add_argument("--preset", default="toy64", help="Training preset of every variant [default: toy64].")
    ap.add_argument("--prepare", action="store_true", help="Build the toy data and train the judge, then stop.")
    ap.add_argument("--n-train", type=int, default=200, help="Toy training images (--prepare) [default: 200].")
    ap.add_argument("--n-val", type=int, default=100, help="Toy val images, all judged (--prepare) [default: 100].")
    ap.add_argument("--judge-train", type=int, default=800,
                    help="The judge's own toy training photos (--prepare) [default: 800].")
    ap.add_argument("--segnet-steps", type=int, default=6000, help="Judge training steps (--prepare) [default: 6000].")
    ap.add_argument("--seed", type=int, default=None, help="Train the five variants with this seed.")
    ap.add_argument("--steps", default="100,200,400,800,1600,3200",
                    help="Comma-separated step counts to judge at; the last is the budget [default: %(default)s].")
    ap.add_argument("--device", default="cpu", help="Where the judge and the variants train [default: cpu].")
    ap.add_argument("--workers", type=int, default=0, help="Data loader workers [default: 0].")
    ap.add_argument("--batch-size", type=int, default=None, help="Training batch [default: the preset's].")
    ap.add_argument("--report", action="store_true", help="Gather every seed's results: table and curve.png.")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPUs for the thread policy (resail/threads.py), one seed a core [default: 1].")
    args = ap.parse_args()
    use(args.workers, threads=args.threads)
    if args.prepare:
        result = prepare(args.out, args.preset, args.n_train, args.n_val, args.judge_train, args.segnet_steps,
                         args.device, args.workers)
    elif args.seed is not None:
        steps = sorted({int(s) for s in args.steps.split(",")})
        r = curve(args.out, args.preset, args.seed, steps, args.device, args.workers, args.batch_size)
        result = {"seed": args.seed, "last": r["points"][-1]}
    elif args.report:
        result = report(args.out)
    else:
        ap.error("choose --prepare, --seed S or --report")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

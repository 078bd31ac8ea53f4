"""G+D training-step time of the RESAIL networks.

CPU: the `toy` preset (batch 1 contiguous vs channels_last, batch 4; and batch 4 again without its
label table, i.e. 151 native-id channels instead of 23, `toy151`) and one full preset (ADE20K,
batch 1, channels_last): seconds per step,
where a step is what the trainer does per batch minus data loading and the VGG/seg terms:
G forward, D on fake and real, hinge + feature matching backward, Adam step on G; then G forward
without grad, D on fake and real, hinge backward, Adam step on D.
GPU (only when CUDA is available): the full Cityscapes and ADE20K presets in fp32 and in bf16
autocast + channels_last: steps/s and peak memory.

    python benchmarks/networks.py [--full-preset ade20k] [--cpu-steps 3] [--gpu-steps 20] [--skip-full] [--threads N]

The last line of the output is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from resail.benchmarks._common import emit
from resail.synth.discriminator import build_discriminator
from resail.synth.generator import build_generator
from resail.synth.losses import LossWeights, feature_matching, hinge_d_fake, hinge_d_real, hinge_g
from resail.synth.networks import count_parameters
from resail.synth.presets import get_preset
from resail.threads import use


def fake_batch(preset, batch: int, device, channels_last: bool):
    """A random one-hot label map, guidance and real image at the preset's size."""
    h, w = preset.height, preset.width
    labels = torch.randint(0, preset.semantic_nc, (batch, h // 16, w // 16), device=device)
    labels = torch.nn.functional.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    label_map = torch.nn.functional.one_hot(labels, preset.semantic_nc).permute(0, 3, 1, 2).float()  # B×L×H×W
    guidance = torch.rand(batch, 3, h, w, device=device) * 2 - 1
    real = torch.rand(batch, 3, h, w, device=device) * 2 - 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return (t.contiguous(memory_format=fmt) for t in (label_map, guidance, real))


def make_step(G, D, opt_G, opt_D, weights: LossWeights, autocast):
    def step(label_map, guidance, real):
        with autocast():
            fake = G(label_map, guidance)
            pred_fake, pred_real = D(label_map, fake), D(label_map, real)
            loss_G = weights.gan * hinge_g(pred_fake) + weights.feat * feature_matching(pred_fake, pred_real)
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()
        with autocast():
            with torch.no_grad():
                fake = G(label_map, guidance)
            loss_D = hinge_d_fake(D(label_map, fake)) + hinge_d_real(D(label_map, real))
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()
        return loss_G.detach(), loss_D.detach()
    return step


def bench(preset_name: str, batch: int, steps: int, device: str = "cpu", bf16: bool = False,
          channels_last: bool = False, warmup: int = 1, tag: str | None = None, **overrides) -> dict:
    preset = get_preset(preset_name, **overrides)
    torch.manual_seed(0)
    G, D = build_generator(preset, device), build_discriminator(preset, device)
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_D = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    autocast = (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    step = make_step(G, D, opt_G, opt_D, LossWeights(), autocast)
    data = tuple(fake_batch(preset, batch, device, channels_last))
    cuda = device == "cuda"
    for _ in range(warmup):
        step(*data)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        losses = step(*data)
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    out = {
        "preset": tag or preset_name, "label_channels": preset.semantic_nc, "batch": batch, "device": device,
        "bf16": bf16, "channels_last": channels_last,
        "params_G": count_parameters(G), "params_D": count_parameters(D),
        "s_per_step": round(dt, 4), "steps_per_s": round(1 / dt, 3),
        "finite": bool(all(torch.isfinite(loss).item() for loss in losses)),
    }
    if cuda:
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-preset", default="ade20k")
    ap.add_argument("--cpu-steps", type=int, default=3)
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--gpu-batch", type=int, default=4)
    ap.add_argument("--skip-full", action="store_true", help="CPU: time the toy preset only")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPUs for the thread policy (resail/threads.py) [default: those this process may use].")
    args = ap.parse_args()
    use(threads=args.threads)

    results = {"bench": "networks", "threads": torch.get_num_threads(), "cpu": []}
    runs = [("toy", 1, 5, False, {}), ("toy", 1, 5, True, {}), ("toy", 4, 3, True, {}),
            ("toy", 4, 3, True, {"label_ids": None, "tag": "toy151"})]
    if not args.skip_full:
        runs.append((args.full_preset, 1, args.cpu_steps, True, {}))
    for name, batch, steps, cl, extra in runs:
        r = bench(name, batch, steps, channels_last=cl, **extra)
        print(json.dumps(r), flush=True)
        results["cpu"].append(r)

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        results["gpu"] = []
        results["gpu_name"] = torch.cuda.get_device_name()
        for name in ("cityscapes", "ade20k"):
            for bf16, cl in ((False, False), (True, True)):
                r = bench(name, args.gpu_batch, args.gpu_steps, "cuda", bf16=bf16, channels_last=cl, warmup=3)
                print(json.dumps(r), flush=True)
                results["gpu"].append(r)
                torch.cuda.empty_cache()

    summary = {"bench": "networks", "threads": results["threads"]}
    for r in results["cpu"]:
        tag = "_cl" if r["channels_last"] else ""
        summary[f"cpu_{r['preset']}_b{r['batch']}{tag}_s_per_step"] = r["s_per_step"]
        summary[f"params_G_{r['preset']}"] = r["params_G"]
        summary[f"params_D_{r['preset']}"] = r["params_D"]
    for r in results.get("gpu", []):
        tag = "bf16_cl" if r["bf16"] else "fp32"
        summary[f"gpu_{r['preset']}_b{r['batch']}_{tag}_steps_per_s"] = r["steps_per_s"]
        summary[f"gpu_{r['preset']}_b{r['batch']}_{tag}_peak_gib"] = r["peak_mem_gib"]
    if "gpu_name" in results:
        summary["gpu"] = results["gpu_name"]
    emit(summary)


if __name__ == "__main__":
    main()

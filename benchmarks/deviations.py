"""The measured size of each difference from the official training recipe (docs/deviations.md).

Every `measure_*` function measures the rows of one topic on fabricated inputs: seeded 1/f
("natural-image") noise, random labels and logits, networks at their initialisation, and a
small toy ADE20K work dir made on the fly (12 train images at 512×384, guidance baked at 256²).
None of them needs a GPU, a download or a trained network; sizes that only a trained network
shows (EMA, model selection) are not measured here and the table says so.

  python benchmarks/deviations.py [--keep DIR]

Each topic prints one line to stderr; the last line of stdout is one JSON object with every
figure, keyed by topic.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from resail.benchmarks._common import emit
from resail.pipeline.distort import resample_resolution
from resail.pipeline.guidance import open_composer, paint_segment_map, resize_area
from resail.synth import norms
from resail.synth.data import resize_bicubic_pil
from resail.synth.discriminator import build_discriminator
from resail.synth.losses import balanced_cross_entropy, hinge_d_fake, hinge_d_real
from resail.synth.presets import get_preset
from resail.synth.segnet import build_segnet
from resail.synth.train import get_lr
from resail.tests.builders.work import baked_work
from resail.threads import use
from resail.workdir import WorkDir

NATIVE, LOAD = (512, 384), 286  # ADE20K-like original (W, H) and the ade20k preset's load size


def pink_noise(shape: tuple[int, int], seed: int) -> np.ndarray:
    """H×W×3 uint8 with a 1/f amplitude spectrum (natural images' statistics), mean 128, std ≈ 40."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(shape))
    channels = []
    for _ in range(3):
        spectrum = amplitude * np.exp(2j * np.pi * rng.random(shape))
        channel = np.fft.ifft2(spectrum).real
        channels.append((channel - channel.mean()) / channel.std())
    grey = channels[0]
    image = np.stack([grey + 0.3 * c for c in channels[1:]] + [grey], axis=-1)
    return np.clip(128 + 40 * image / image.std(), 0, 255).astype(np.uint8)


def band_energy(image: np.ndarray, low: float = 0.25) -> float:
    """Spectral energy of the grey image at radial frequencies in [low, 0.5] cycles/px."""
    grey = image.astype(np.float64).mean(axis=2)
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(grey.shape[0]), np.fft.fftfreq(grey.shape[1]), indexing="ij")
    return float(power[np.hypot(fy, fx) >= low].sum())


@torch.no_grad()
def converge_spectral_norms(net: torch.nn.Module, iterations: int = 50) -> torch.nn.Module:
    """Power-iterate every spectral norm of `net` to its weights, as training leaves them: the
    15 iterations torch runs when it registers one use the weights before `init_weights`."""
    for m in net.modules():
        if hasattr(m, "parametrizations"):
            m.parametrizations.weight[0]._power_method(m.parametrizations.weight.original.flatten(1), iterations)
    return net


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------- 1. distorted GT resolution


def measure_distort_resolution() -> dict:
    """r ~ U(0.5, 1) (11 evenly spaced values) on 512² 1/f images shrunk to 286²: the share of the
    upper half of the canvas spectrum (≥ 0.25 cycles/px) the resolution step keeps, and its mean
    absolute change of the pixels, applied at the original resolution before the resize
    (official, and this project's) or after it at the load size (the other order of docs/deviations.md, row 1)."""
    kept = {"official": [], "load_size": []}
    change = {"official": [], "load_size": []}
    for seed in range(3):
        image = pink_noise((512, 512), seed)
        plain = resize_area(image, (LOAD, LOAD))
        for r in np.linspace(0.5, 1.0, 11):
            for name, out in (("official", resize_area(resample_resolution(image, r), (LOAD, LOAD))),
                              ("load_size", resample_resolution(plain, r))):
                kept[name].append(band_energy(out) / band_energy(plain))
                change[name].append(np.abs(out.astype(int) - plain).mean())
    return {"hf_kept_official_order": round(float(np.mean(kept["official"])), 3),
            "hf_kept_load_size_order": round(float(np.mean(kept["load_size"])), 3),
            "mean_abs_change_official_order": round(float(np.mean(change["official"])), 2),
            "mean_abs_change_load_size_order": round(float(np.mean(change["load_size"])), 2)}


# ---------------------------------------------------------------- 2. segmentation head


def measure_segnet_head() -> dict:
    """The ade20k segmentation network at initialisation on a random 64² image: the logits of
    the former head (LeakyReLU, then the 1×1 conv with spectral norm, W/σ) and of the official
    one (plain 1×1 conv W) on the same last-block output, relative L2 difference; also LeakyReLU
    alone (same W), and how often the argmax class agrees."""
    torch.manual_seed(0)
    net = converge_spectral_norms(build_segnet(get_preset("ade20k"))).eval()
    seen = {}
    net.decoder[-1].register_forward_hook(lambda m, i, o: seen.update(h=o))
    with torch.no_grad():
        official = net(torch.rand(1, 3, 64, 64) * 2 - 1)
        W, b = net.head.weight, net.head.bias
        sigma = torch.linalg.matrix_norm(W.flatten(1), 2)
        lrelu_only = F.conv2d(F.leaky_relu(seen["h"], 0.2), W, b)
        former = F.conv2d(F.leaky_relu(seen["h"], 0.2), W / sigma, b)
    return {"lrelu_only_rel_diff": round(rel(lrelu_only, official), 3),
            "former_head_rel_diff": round(rel(former, official), 3), "head_sigma_at_init": round(float(sigma), 4),
            "argmax_agreement_lrelu_only": round(float((lrelu_only.argmax(1) == official.argmax(1)).float().mean()), 3)}


# ---------------------------------------------------------------- 3. void in the seg loss


def ade20k_pixel_ratios() -> np.ndarray:
    """ADE20K's per-class pixel ratio (id 1..150) from the shipped class table."""
    import csv

    path = Path(__file__).resolve().parents[1] / "data" / "ade20k_150_classes.csv"
    with open(path) as f:
        return np.array([float(row["pixel_ratio"]) for row in csv.DictReader(f)])


def measure_void() -> dict:
    """Class-balanced L_seg on random logits (151 channels, 2×128²) against labels drawn with
    ADE20K's class frequencies plus 10 % void: relative L2 difference of ∂L/∂logits between
    ignoring void (ours) and counting it as a class (official). And the official first-35-
    channels target: the share of labelled ADE20K pixels whose class (≥ 35) it turned into 0."""
    ratios = ade20k_pixel_ratios()
    g = torch.Generator().manual_seed(0)
    labels = torch.multinomial(torch.tensor(ratios / ratios.sum()), 2 * 128 * 128, replacement=True,
                               generator=g).reshape(2, 128, 128) + 1
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 0
    grads = {}
    for name, ignore in (("ours", 0), ("official", None)):
        logits = torch.randn(2, 151, 128, 128, generator=torch.Generator().manual_seed(1)).requires_grad_()
        balanced_cross_entropy(logits, labels, ignore_index=ignore).backward()
        grads[name] = logits.grad
    labelled = ratios.sum()
    return {"void_fraction": round(float((labels == 0).float().mean()), 3),
            "grad_rel_diff": round(rel(grads["ours"], grads["official"]), 3),
            "grad_rel_diff_on_labelled_pixels": round(rel(grads["ours"] * (labels > 0)[:, None],
                                                          grads["official"] * (labels > 0)[:, None]), 3),
            "first35_bug_labelled_pixels_sent_to_0": round(float(ratios[34:].sum() / labelled), 3),
            "first35_bug_classes_sent_to_0": int(len(ratios) - 34)}


# ---------------------------------------------------------------- 4. seg loss on ADE20K


def measure_seg_loss_share(work: Path) -> dict:
    """What the official ADE20K run left out: G's gradient from λ_seg·(L_seg(x̂_d) + L_seg(x̂_r))
    against the rest of its loss (GAN on both paths + λ_FM·FM; VGG left out, its weights are a
    download), ‖∇_G‖ ratio, on one toy batch of 4 with tiny networks at initialisation and a tiny
    segmenter trained for 300 steps on the 12 toy images (an order of magnitude, no more: the
    share changes as G and the segmenter train)."""
    from resail.synth.config import resolve_config
    from resail.synth.data import SynthDataset, one_hot
    from resail.synth.generator import build_generator
    from resail.synth.losses import SegmentationLoss, feature_matching, hinge_g
    from resail.synth.segnet import SegnetTrainConfig, train_segnet

    network = dict(ngf=8, norm_hidden=8, ndf=8, width=96, height=96, segnet_channels=(8,) * 5)
    cfg = resolve_config("toy", n_train=12, network=network,
                         overrides=dict(batch_size=4, load_size=(104, 104), workers=0, steps=1))
    data = SynthDataset(work, "train", cfg)
    batch = torch.utils.data.default_collate([data[(0, i)] for i in range(4)])
    data.close()
    real = SynthDataset(work, "train", cfg, train=False, with_distorted=False)
    items = [real[i] for i in range(len(real))]
    real.close()
    torch.manual_seed(0)
    segnet = build_segnet(cfg.net)
    batches = [tuple(torch.stack([it[k] for it in items[i:i + 4]]) for k in ("image", "label"))
               for i in range(0, len(items), 4)]
    train_segnet(segnet, batches, SegnetTrainConfig(steps=300, log_every=100), progress=False)
    G, D = build_generator(cfg.net), build_discriminator(cfg.net)
    seg = SegmentationLoss(segnet, ignore_index=0)
    m = one_hot(batch["label"], cfg.net.semantic_nc)
    fake_d, fake_r = G(m, batch["distorted"]), G(m, batch["guidance"])
    out_d, out_real = D(m, fake_d), D(m, batch["image"])
    rest = hinge_g(out_d) + cfg.lambda_feat * feature_matching(out_d, out_real) + hinge_g(D(m, fake_r))
    seg_term = cfg.lambda_seg * (seg(fake_d, m) + seg(fake_r, m))
    params = [p for p in G.parameters() if p.requires_grad]
    g_rest = torch.cat([g.flatten() for g in torch.autograd.grad(rest, params, retain_graph=True, allow_unused=True)
                        if g is not None])
    g_seg = torch.cat([g.flatten() for g in torch.autograd.grad(seg_term, params, allow_unused=True) if g is not None])
    return {"seg_over_rest_grad_norm": float(f"{float(g_seg.norm() / g_rest.norm()):.3g}"),
            "seg_term": round(float(seg_term.detach()), 3), "rest_terms": round(float(rest.detach()), 3)}


# ---------------------------------------------------------------- 5. precision


@contextlib.contextmanager
def cuda_like_autocast_sigma():
    """torch's own spectral norm with `torch.mv` lowered to bf16, as CUDA autocast runs it."""
    mv, forward = torch.mv, norms.FP32SpectralNorm.forward
    torch.mv = lambda mat, vec: mv(mat.bfloat16(), vec.bfloat16()).float()
    norms.FP32SpectralNorm.forward = torch.nn.utils.parametrizations._SpectralNorm.forward
    try:
        yield
    finally:
        torch.mv, norms.FP32SpectralNorm.forward = mv, forward


def sn_layers(net: torch.nn.Module) -> list[tuple[norms.FP32SpectralNorm, torch.Tensor]]:
    """(parametrization, weight matrix) of every spectral-norm layer of `net`."""
    return [(m.parametrizations.weight[0], m.parametrizations.weight.original.detach().flatten(1))
            for m in net.modules() if hasattr(m, "parametrizations")]


def measure_precision() -> dict:
    """(a) σ of every spectral-norm layer of the ade20k D at initialisation with the power
    iteration's mv in bf16 (what CUDA autocast does to a power iteration left inside it) against fp32: relative error.
    (b) D's gradient (hinge real + fake on random 96² inputs, one training-mode pass, everything
    else in fp32) with that σ against the fp32 σ. (c) σ after one power iteration against after
    two (one D call per phase, this project's trainer, against the official two), after an Adam-sized step from
    converged u, v. (d) At initialisation, σ's estimate after the first training forward (one
    power iteration) over the true σ: torch's parametrization (u, v converged on the weights
    before `init_weights`, ours) against the official hook-based spectral norm (random u, v)."""
    torch.manual_seed(0)
    D = build_discriminator(get_preset("ade20k"))
    errors = []
    for sn, w in sn_layers(D):
        exact = torch.vdot(sn._u, torch.mv(w, sn._v))
        lowered = torch.vdot(sn._u, torch.mv(w.bfloat16(), sn._v.bfloat16()).float())
        errors.append(float(abs(lowered - exact) / exact))

    tiny = dict(ngf=4, norm_hidden=4, ndf=16, width=96, height=96, segnet_channels=(4,) * 5)
    preset = get_preset("toy", **tiny)
    torch.manual_seed(1)
    D = build_discriminator(preset)
    label_map = F.one_hot(torch.randint(0, preset.semantic_nc, (2, 96, 96)), preset.semantic_nc).permute(0, 3, 1, 2)
    real, fake = torch.rand(2, 3, 96, 96) * 2 - 1, torch.rand(2, 3, 96, 96) * 2 - 1
    state = {k: v.clone() for k, v in D.state_dict().items()}
    grads = {}
    for name, context in (("fp32", contextlib.nullcontext), ("bf16_sigma", cuda_like_autocast_sigma)):
        D.load_state_dict(state)
        D.zero_grad()
        with context():
            loss = hinge_d_real(D(label_map.float(), real)) + hinge_d_fake(D(label_map.float(), fake))
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in D.parameters()])

    D.load_state_dict(state)
    converge_spectral_norms(D)
    drift = []
    with torch.no_grad():
        for p in D.parameters():
            p.add_(4e-4 * torch.sign(torch.randn_like(p)))  # an Adam step moves each weight by ≈ lr
    for sn, w in sn_layers(D):
        u, v = sn._u.clone(), sn._v.clone()
        sigmas = []
        for _ in range(2):
            u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
            v = F.normalize(torch.mv(w.T, u), dim=0, eps=1e-12)
            sigmas.append(torch.vdot(u, torch.mv(w, v)))
        drift.append(float(abs(sigmas[1] - sigmas[0]) / sigmas[1]))

    torch.manual_seed(2)
    D = build_discriminator(get_preset("ade20k"))
    start = {"ours": [], "official": []}
    for sn, w in sn_layers(D):
        true = torch.linalg.matrix_norm(w, 2)
        u = F.normalize(torch.mv(w, sn._v), dim=0)  # torch: u ← Wv, then v ← Wᵀu, from the registered v
        v = F.normalize(torch.mv(w.T, u), dim=0)
        start["ours"].append(float(torch.vdot(u, torch.mv(w, v)) / true))
        v = F.normalize(torch.mv(w.T, F.normalize(torch.randn_like(sn._u), dim=0)), dim=0)  # official: v ← Wᵀu, u ← Wv
        u = F.normalize(torch.mv(w, v), dim=0)
        start["official"].append(float(torch.vdot(u, torch.mv(w, v)) / true))
    return {"sigma_rel_err_bf16_median": float(f"{np.median(errors):.2e}"),
            "sigma_rel_err_bf16_max": float(f"{max(errors):.2e}"),
            "D_grad_rel_diff_bf16_sigma": round(rel(grads["bf16_sigma"], grads["fp32"]), 4),
            "sigma_rel_diff_1_vs_2_power_iterations_max": float(f"{max(drift):.2e}"),
            "init_sigma_estimate_over_true_ours_median": round(float(np.median(start["ours"])), 3),
            "init_sigma_estimate_over_true_official_median": round(float(np.median(start["official"])), 3)}


# ---------------------------------------------------------------- 6. resizes, guidance, schedule


def toy_work(base: Path) -> Path:
    if WorkDir(base / "work").matches_table("train").exists():
        return base / "work"
    return baked_work(base, n_train=12, n_val=2, size=NATIVE, guidance_size=256, splits=("train",), jobs=1)


def photo_difference(image: np.ndarray) -> float:
    """Mean |INTER_AREA − PIL bicubic| in levels, shrinking `image` to the load size."""
    return float(np.abs(resize_area(image, (LOAD, LOAD)).astype(int) - resize_bicubic_pil(image, (LOAD, LOAD))).mean())


def measure_resizes(work: Path) -> dict:
    """On the toy images (512×384 → 286²) and 1/f noise (512² → 286²): the photo resize, INTER_AREA
    (ours) against PIL bicubic (official), mean absolute difference in 8-bit levels; the label
    resize, floor-index nearest (ours) against PIL nearest (pixel centres, official): share of
    pixels whose label differs."""
    from resail.common import nearest_floor, nearest_pil, read_rgb

    comp = open_composer(work, "train", size=(LOAD, LOAD))
    label_paths = comp.store.images["label_path"].to_pylist()
    photo, noise, label = [], [], []
    for row in comp.ok_images():
        image = read_rgb(comp.image_path[int(row)])
        photo.append(photo_difference(image))
        ids = cv2.imread(label_paths[int(row)], cv2.IMREAD_UNCHANGED)
        label.append((nearest_floor(ids, LOAD, LOAD) != nearest_pil(ids, LOAD, LOAD)).mean())
    for seed in range(3):
        noise.append(photo_difference(pink_noise((512, 512), seed)))
    comp.close()
    return {"photo_mad_levels_toy": round(float(np.mean(photo)), 2),
            "photo_mad_levels_1f": round(float(np.mean(noise)), 2),
            "label_pixels_differing": round(float(np.mean(label)), 3)}


def measure_guidance(work: Path) -> dict:
    """Retrieval guidance on the toy set: (a) the share of pasted pixels (any channel) that the
    official summed composition puts above 1 (its ×2 inside every own mask, value > 127 of 255),
    which every uint8 cache, the project's and the official disk cache, clips; (b) guidance
    composed at 256² and resized bilinearly to the 286² load size (the project's cache) against
    composed at 286² directly, mean absolute difference in 8-bit levels; (c) the official mode
    (`--compose official`, clipped) against clean, same measure."""
    at_load = open_composer(work, "train", size=(LOAD, LOAD))
    at_256 = open_composer(work, "train", size=(256, 256))
    official = open_composer(work, "train", size=(LOAD, LOAD), mode="official")
    above, resized, modes = [], [], []
    for row in at_load.ok_images():
        g = at_load.compose(int(row))
        pasted = g.any(axis=2)
        above.append((g[pasted] > 127).any(axis=1).mean())
        small = cv2.resize(at_256.compose(int(row)), (LOAD, LOAD), interpolation=cv2.INTER_LINEAR)
        resized.append(np.abs(small.astype(int) - g).mean())
        modes.append(np.abs(official.compose(int(row)).astype(int) - g).mean())
    for c in (at_load, at_256, official):
        c.close()
    return {"official_above_1_share": round(float(np.mean(above)), 3),
            "baked_256_resized_mad_levels": round(float(np.mean(resized)), 2),
            "official_mode_vs_clean_mad_levels": round(float(np.mean(modes)), 2)}


def measure_segment_map(work: Path) -> dict:
    """The query segment map at 286²: painted from each segment's stored mask stretched to its
    rounded box (ours) against the store's native segment map resized with PIL nearest (official
    transform of the query masks): share of pixels owned by another segment."""
    comp = open_composer(work, "train", size=(LOAD, LOAD))
    diff = []
    for row in comp.ok_images():
        row = int(row)
        ours, rows, _ = comp.segment_map(row)
        h, w = (int(v) for v in comp.image_hw[row])
        native_boxes = [(int(y0), int(x0), int(y0 + bh), int(x0 + bw)) for y0, x0, bh, bw in comp.bbox[rows]]
        masks = [comp.store.crop(int(r))[1] for r in rows]
        native = paint_segment_map((w, h), native_boxes, masks.__getitem__, comp.is_thing[rows], comp.area[rows])
        official = np.asarray(Image.fromarray(native).resize((LOAD, LOAD), Image.NEAREST))
        diff.append((ours != official).mean())
    comp.close()
    return {"segment_map_pixels_differing": round(float(np.mean(diff)), 3)}


def measure_schedule() -> dict:
    """ADE20K (20 210 images, batch 8, 100 + 100 epochs): the project's per-step linear decay
    against the official per-epoch staircase (lr − base/niter_decay after each epoch past niter):
    the largest and the mean difference over the decay half, as a share of the base lr."""
    spe, niter, nd = 20210 // 8, 100, 100
    total, start = (niter + nd) * spe, niter * spe
    steps = np.arange(start, total)
    ours = np.array([get_lr(int(s), 1.0, total, start) for s in steps])
    official = 1.0 - (steps // spe - niter) / nd
    return {"lr_max_diff_of_base": round(float(np.abs(ours - official).max()), 4),
            "lr_mean_diff_of_base": round(float(np.abs(ours - official).mean()), 4)}


# ---------------------------------------------------------------- other distortion details


def half_pixel_shift(image: np.ndarray) -> float:
    """Mean |bilinear sample at (x − ½, y − ½) − image| in levels, away from the border."""
    h, w = image.shape[:2]
    map_x, map_y = np.meshgrid(np.arange(w, dtype=np.float32) - 0.5, np.arange(h, dtype=np.float32) - 0.5)
    shifted = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return float(np.abs(shifted[2:-2, 2:-2].astype(int) - image[2:-2, 2:-2]).mean())


def measure_distortion_details(work: Path) -> dict:
    """(a) Resolution step kernel: OpenCV bicubic (ours) against PIL bicubic, which widens its
    kernel when it shrinks (official), down/up by r ~ U(0.5, 1) on 1/f noise: mean absolute
    difference in levels. (b) The official TPS grid's half-pixel offset: its identity warp is a
    bilinear shift by ½ px (ours returns the input): mean absolute change. (c) The official
    integer truncation of the shifted control points: mean |shift − int(shift)| for a segment of
    2 000 px. (d) The official control points int(linspace(0, n − 1, 10)) put the first and last
    on neighbouring contour pixels: the share of warps (3 draws with replacement) that move one
    of those two. (a) and (b) on 1/f noise and on the toy photos at 256² (smoother)."""
    image = pink_noise((384, 512), 7)
    kernel = []
    for r in np.linspace(0.5, 1.0, 11):
        size = (max(1, int(image.shape[1] * r)), max(1, int(image.shape[0] * r)))
        pil = resize_bicubic_pil(resize_bicubic_pil(image, size), image.shape[1::-1])
        kernel.append(np.abs(resample_resolution(image, r).astype(int) - pil).mean())
    from resail.common import read_rgb

    comp = open_composer(work, "train", size=(256, 256))
    photos = [resize_area(read_rgb(comp.image_path[int(row)]), (256, 256)) for row in comp.ok_images()]
    comp.close()
    shifts = np.random.default_rng(0).uniform(-0.4, 0.4, 100_000) * 0.22 * math.sqrt(2000)
    return {"resolution_kernel_mad_levels": round(float(np.mean(kernel)), 2),
            "official_identity_warp_mad_levels_1f": round(half_pixel_shift(image), 2),
            "official_identity_warp_mad_levels_toy": round(float(np.mean([half_pixel_shift(p) for p in photos])), 2),
            "official_shift_truncation_px": round(float(np.abs(shifts - shifts.astype(int)).mean()), 3),
            "official_adjacent_endpoint_warps": round(1 - 0.8 ** 3, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="folder for the toy work dir, kept and reused")
    args = ap.parse_args()
    use(threads=1)
    base = args.keep or Path(tempfile.mkdtemp(prefix="resail_bench_deviations_"))
    try:
        work = toy_work(base)
        result = {"bench": "deviations"}
        for name, measure in (("distort_resolution", measure_distort_resolution), ("segnet_head", measure_segnet_head),
                              ("void", measure_void), ("seg_loss_share", lambda: measure_seg_loss_share(work)),
                              ("precision", measure_precision),
                              ("resizes", lambda: measure_resizes(work)), ("guidance", lambda: measure_guidance(work)),
                              ("segment_map", lambda: measure_segment_map(work)), ("schedule", measure_schedule),
                              ("distortion_details", lambda: measure_distortion_details(work))):
            result[name] = measure()
            print(f"{name}: {result[name]}", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(base)
    emit(result)


if __name__ == "__main__":
    main()

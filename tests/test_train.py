"""The trainer on a 6-image toy work dir at 96×96 with minimal widths: one step, exact resume,
extending a run, DDP equivalence (2 gloo processes), D on one concatenated batch == three calls,
bf16 autocast and channels_last against fp32, checkpoint errors, dry run, schedules.
Stopping on signals and SIGKILL-then-resume run `resail train` in subprocesses: test_train_signals.py."""

import copy
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from builders.work import baked_work
from resail.errors import ConfigError, InputError, StageError
from resail.pipeline.labels.spaces import LabelChannels
from resail.synth.checkpoint import load_snapshot
from resail.synth.config import resolve_config
from resail.synth.data import SynthDataset
from resail.synth.presets import get_preset
from resail.synth.train import ResailTrainer, dry_run, get_lr, train

SIZE = 96
TINY = dict(ngf=4, norm_hidden=4, ndf=4, width=SIZE, height=SIZE, segnet_channels=(4,) * 5)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return baked_work(tmp_path_factory.mktemp("train"), n_train=6, n_val=2, size=SIZE, seed=5, splits=("train",), k=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(name, network_label_ids=None, **overrides):
    flags = dict(name=name, batch_size=2, steps=4, load_size=(104, 104), workers=0, log_every=1, sample_every=2,
                 checkpoint_every=100, seed=1)
    flags.update(overrides)
    network = TINY if network_label_ids is None else {**TINY, "label_ids": network_label_ids}
    return resolve_config("toy", n_train=6, overrides=flags, network=network)


def stats(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]


def test_resolve_device_is_the_one_place_auto_is_decided():
    from resail.synth.distributed import resolve_device

    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("gpu0", "meta"):  # not a device, or one no command runs on
        with pytest.raises(ConfigError, match=f"device '{name}': not a torch device") as e:
            resolve_device(name)
        assert e.value.name == "device"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device cuda:1: CUDA is not available"):
            resolve_device("cuda:1")


def test_lr_schedule_is_constant_then_linear_to_zero():
    assert get_lr(0, 1e-4, 10, 5) == get_lr(4, 1e-4, 10, 5) == 1e-4
    assert get_lr(5, 1e-4, 10, 5) == pytest.approx(1e-4)
    assert get_lr(8, 1e-4, 10, 5) == pytest.approx(0.4e-4)
    assert get_lr(10, 1e-4, 10, 5) == 0.0


def test_dataset_items_are_deterministic_aligned_and_worker_independent(work):
    cfg = tiny_config("data", instance_edges=True)
    ds = SynthDataset(work, "train", cfg)
    a, b = ds[(3, 2)], ds[(3, 2)]
    assert a["image"].shape == a["guidance"].shape == a["distorted"].shape == (3, SIZE, SIZE)
    assert a["label"].dtype == torch.int64 and a["label"].shape == (SIZE, SIZE) and a["edges"].shape == (1, SIZE, SIZE)
    for k in ("image", "label", "guidance", "distorted", "edges"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(ds[(4, 2)]["distorted"], a["distorted"])  # another epoch, other draws
    # the distorted GT lies on the same pixels as the real image (same crop and flip)
    lit = (a["distorted"] > -1).any(0)
    assert lit.float().mean() > 0.3
    ds.close()


def test_one_step_changes_G_and_D(work):
    cfg = tiny_config("one", steps=1)
    trainer = ResailTrainer(cfg, torch.device("cpu"))
    ds = SynthDataset(work, "train", cfg)
    batch = torch.utils.data.default_collate([ds[(0, 0)], ds[(0, 1)]])
    # the toy preset's compact label table: 23 channels, items carry channel ids of native classes
    toy_ids = get_preset("toy").label_ids
    assert cfg.net.label_ids == toy_ids and cfg.net.semantic_nc == len(toy_ids) == trainer.G.fc.in_channels
    assert 0 <= int(batch["label"].min()) and int(batch["label"].max()) < len(toy_ids)
    native = LabelChannels.of(cfg.net).to_native(batch["label"].numpy())
    assert set(np.unique(native)) <= set(toy_ids) and native.max() > len(toy_ids)
    assert trainer.inputs(batch)["label_map"].shape[1] == len(toy_ids)
    before = {n: {k: v.clone() for k, v in net.state_dict().items()} for n, net in
              (("G", trainer.G), ("D", trainer.D))}
    terms = trainer.step(batch, 0)
    assert {"G_gan_d", "G_fm", "G_gan_r", "D_real", "D_fake_d", "D_fake_r", "G", "D"} <= set(terms)
    for name, net in (("G", trainer.G), ("D", trainer.D)):
        after = net.state_dict()
        changed = [k for k in after if "original" in k and not torch.equal(after[k], before[name][k])]
        assert changed, f"{name} did not change"
    ds.close()


def test_resume_reproduces_an_uninterrupted_run(work):
    full = train(tiny_config("full"), work, progress=False)
    assert full["complete"] and full["steps"] == 4
    part = train(tiny_config("part"), work, progress=False, stop_after=2)
    assert not part["complete"] and part["steps"] == 2
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config("part"), work, progress=False)
    with open(Path(part["run_dir"]) / "stats.jsonl", "a") as f:  # a tick logged after the checkpoint, then a crash
        f.write(json.dumps({"step": 3, "G": 99.0}) + "\n")
    rest = train(tiny_config("part", workers=1), work, progress=False, resume=True)  # workers may change
    assert rest["complete"] and rest["steps_this_session"] == 2
    a, b = stats(full["run_dir"]), stats(part["run_dir"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ("G", "D", "G_gan_d", "G_fm", "G_gan_r", "D_real", "D_fake_d", "D_fake_r"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-6), (ra["step"], k)
    snap = load_snapshot(sorted((Path(full["run_dir"]) / "checkpoints").glob("snapshot-*.pt"))[-1])
    G_full, cfg = snap.G_ema, snap.config
    assert snap.step == 4
    G_part = load_snapshot(sorted((Path(part["run_dir"]) / "checkpoints").glob("snapshot-*.pt"))[-1]).G_ema
    for (k, va), vb in zip(G_full.state_dict().items(), G_part.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=0, msg=k)
    assert cfg.net.width == SIZE and not G_full.training
    assert cfg.net.label_ids == get_preset("toy").label_ids  # the snapshot carries the label table
    saved = json.loads((Path(full["run_dir"]) / "config.json").read_text())
    assert saved["net"]["label_ids"] == list(cfg.net.label_ids)
    assert len(list((Path(full["run_dir"]) / "samples").glob("*.png"))) == 2
    # the snapshot runs as eval/synthesize would use it
    from resail.synth.data import one_hot
    label = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    out = G_full(one_hot(label, cfg.net.semantic_nc), torch.zeros(1, 3, SIZE, SIZE))
    assert out.shape == (1, 3, SIZE, SIZE)


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(work):
    run = train(tiny_config("bad", steps=2), work, progress=False, stop_after=1)
    state = sorted((Path(run["run_dir"]) / "checkpoints").glob("state-*.pt"))[-1]
    with pytest.raises(InputError, match="different configuration"):
        train(tiny_config("bad", steps=2, lr_G=2e-4), work, progress=False, resume=True)
    with pytest.raises(InputError, match="different configuration"):
        train(tiny_config("bad", steps=2, norm="spade"), work, progress=False, resume=True)
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(InputError, match="corrupt"):
        train(tiny_config("bad", steps=2), work, progress=False, resume=True)
    with pytest.raises(InputError, match="no training state"):
        train(tiny_config("never", steps=2), work, progress=False, resume=True)


def test_label_table_must_cover_the_data_and_match_the_segnet(work, tmp_path):
    with pytest.raises(InputError, match=r"train data uses class ids 5 \(tree\), .*`label_ids = \[0, 2, 3, 5, "):
        SynthDataset(work, "train", tiny_config("narrow", network_label_ids=(0, 2, 3)))
    # identity tables keep the preset/dataset check: ADE20K ids do not fit Cityscapes' 35 channels
    with pytest.raises(InputError, match="preset 'cityscapes' has no label channel"):
        SynthDataset(work, "train", resolve_config("cityscapes", n_train=6, overrides=dict(
            preprocess="resize_crop", load_size=(104, 104)), network={**TINY, "upsampling": "normal"}))
    from resail.synth.segnet import SegNet, SegnetTrainConfig, save_segnet
    from resail.synth.train import build_losses

    n = get_preset("toy").semantic_nc
    other = tuple(range(n))  # as many channels as the toy table, other classes
    save_segnet(tmp_path / "seg.pt", SegNet(n, (4,) * 5, label_ids=other), None, 0, SegnetTrainConfig())
    with pytest.raises(InputError, match="another label table"):
        build_losses(tiny_config("seg", segnet=str(tmp_path / "seg.pt"), vgg=False), torch.device("cpu"))


def test_non_finite_loss_stops_and_names_the_term(work, monkeypatch):
    import resail.synth.train as train_mod

    monkeypatch.setattr(train_mod, "feature_matching", lambda fake, real: torch.tensor(float("nan")))
    with pytest.raises(StageError, match="non-finite loss .*G_fm.* at step 0"):
        train(tiny_config("nan", steps=2), work, progress=False)


def test_dry_run_writes_config_only_and_missing_cache_is_named(work, tmp_path, capsys):
    cfg = tiny_config("dry")
    path = dry_run(cfg, work)
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]
    saved = path.read_bytes()
    assert json.loads(saved)["net"]["ngf"] == 4
    # a run that exists keeps its config.json (what --resume continues from): nothing is written
    assert dry_run(tiny_config("dry", batch_size=3), work) is None and path.read_bytes() == saved
    from resail.cli import main

    assert main(["train", str(work), "--preset", "toy", "--name", "dry", "--batch-size", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "batch 3" in out and f"dry run: {path.parent} exists; nothing written" in out
    assert path.read_bytes() == saved and sorted(p.name for p in path.parent.iterdir()) == ["config.json"]
    with pytest.raises(InputError, match="--no-vgg"):
        train(tiny_config("vgg", vgg=True, vgg_weights=str(tmp_path / "missing.pth")), work, progress=False)
    with pytest.raises(ConfigError, match="the segmentation loss needs a trained segmentation network") as e:
        tiny_config("seg", seg_loss=True)
    assert e.value.name == "segnet"
    from resail.synth.data import count_images
    with pytest.raises(StageError, match="guidance bake"):
        count_images(work, "val")


def test_cli_distortion_flags_reach_the_config(work):
    from click.testing import CliRunner

    from resail.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(work), "--preset", "toy", "--name", "flags", "--dry-run", "-q",
                                 "--color-ref", "class", "--distort-p", "0", "1", "0.5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((work / "runs" / "flags" / "config.json").read_text())
    assert (saved["color_ref"], saved["p_color"], saved["p_resolution"], saved["p_shape"]) == ("class", 0.0, 1.0, 0.5)
    bad = runner.invoke(cli, ["train", str(work), "--preset", "toy", "--dry-run", "--distort-p", "2", "1", "1"])
    assert bad.exit_code == 2 and "--distort-p" in bad.output
    with pytest.raises(InputError, match="p_shape = 1.5"):
        tiny_config("p", p_shape=1.5)


def _batches(work, cfg, n):
    ds = SynthDataset(work, "train", cfg)
    out = [torch.utils.data.default_collate([ds[(i, 0)], ds[(i, 1)]]) for i in range(n)]
    ds.close()
    return out


def _three_call_generator_terms(trainer, x):
    """The trainer's former G phase, kept here as the reference: D called on x̂_d, x and x̂_r
    apart. Only the first call advances spectral norm's power iteration (eval mode skips it, and
    D has no other train/eval difference), as the one concatenated call does."""
    from resail.synth.losses import feature_matching, hinge_g

    G, D, m = trainer.G, trainer.D, x["label_map"]
    fake_d, fake_r = G(m, x["distorted"]), G(m, x["guidance"])
    out_d = D(m, fake_d)
    D.eval()
    with torch.no_grad():
        out_real = D(m, x["image"])
    terms = {"G_gan_d": hinge_g(out_d), "G_fm": feature_matching(out_d, out_real), "G_gan_r": hinge_g(D(m, fake_r))}
    D.train()
    return terms


def _three_call_discriminator_terms(trainer, x):
    """The former D phase: D on x, x̂_d and x̂_r apart (the power iteration in the first call only)."""
    from resail.synth.losses import hinge_d_fake, hinge_d_real

    G, D, m = trainer.G, trainer.D, x["label_map"]
    with torch.no_grad():
        fake_d, fake_r = G(m, x["distorted"]), G(m, x["guidance"])
    terms = {"D_real": hinge_d_real(D(m, x["image"]))}
    D.eval()
    terms["D_fake_d"], terms["D_fake_r"] = hinge_d_fake(D(m, fake_d)), hinge_d_fake(D(m, fake_r))
    D.train()
    return terms


def _both_phases(trainer, x, generator_terms, discriminator_terms) -> dict:
    """G phase (D frozen), then D phase, each backpropagated with the trainer's weights of the terms."""
    trainer.D.requires_grad_(False)
    g = generator_terms(trainer, x)
    (g["G_gan_d"] + trainer.cfg.lambda_feat * g["G_fm"] + g["G_gan_r"]).backward()
    trainer.D.requires_grad_(True)
    d = discriminator_terms(trainer, x)
    (2 * d["D_real"] + d["D_fake_d"] + d["D_fake_r"]).backward()
    return g | d


def _grads(net) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def test_D_on_one_concatenated_batch_equals_three_calls(work):
    """D holds no BatchNorm (per-sample InstanceNorm, spectral-norm convs), so one call on
    [x̂_d; x̂_r; x] gives every slice what its own call gives: the loss terms and the gradients
    of G and D agree to float rounding (rel 1e-5: the same sums in another order)."""
    from torch import nn

    cfg = tiny_config("concat")
    new, ref = ResailTrainer(cfg, torch.device("cpu")), ResailTrainer(cfg, torch.device("cpu"))
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in new.D.modules())
    x = new.inputs(_batches(work, cfg, 1)[0])
    got = _both_phases(new, x, lambda t, x: t.generator_loss(x)[1], lambda t, x: t.discriminator_loss(x)[1])
    want = _both_phases(ref, x, _three_call_generator_terms, _three_call_discriminator_terms)
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    for net in ("G", "D"):
        a, b = _grads(getattr(new, net)), _grads(getattr(ref, net))
        assert a.shape == b.shape and float(b.norm()) > 0
        assert float((a - b).norm() / b.norm()) < 1e-5, net


def test_bf16_autocast_and_channels_last_track_fp32_on_the_cpu(work):
    """Three trainer steps on three batches, each from the fp32 trainer's state (weights and Adam
    moments), so the losses differ by the precision path only. Free-running runs would drift apart
    whatever the precision: Adam's first steps (β1 = 0) move each weight by about ±lr however small
    its gradient, so float noise in a near-zero gradient moves a weight by a whole lr (on this tiny
    GAN, channels_last alone ends 70% off a small GAN term after three free steps). For the same
    reason the D phase is compared from the step's own weights (`discriminator_loss` before the
    step), not after the step's G update, and the step's D terms are only checked finite.
    Tolerances, relative to each term (terms under 0.1, the GAN terms at init, on a 0.1 scale):
    channels_last 1e-4, the same sums in another order (measured ≤ 2e-6); bf16 2e-2, 8 significant
    bits, so 2^-9 ≈ 0.2% per rounding, over ~20 layers (measured ≤ 0.6% G phase, 0.2% D phase).
    Both together, the GPU default, run in benchmarks/gpu.py (bf16 costs 3-4× fp32 on CPUs)."""
    cfg = tiny_config("amp")
    variants = {"channels_last": dict(channels_last=True), "bf16": dict(amp="bf16")}  # (bf16 is slow on CPUs)
    tolerance = {"channels_last": 1e-4, "bf16": 2e-2}
    fp32 = ResailTrainer(cfg, torch.device("cpu"))
    trainers = {tag: ResailTrainer(tiny_config("amp", **over), torch.device("cpu")) for tag, over in variants.items()}
    for tag, trainer in trainers.items():
        assert trainer.channels_last == (tag == "channels_last")
        assert trainer.amp_dtype == (torch.bfloat16 if tag == "bf16" else None)
        assert trainer.G.fc.weight.is_contiguous(
            memory_format=torch.channels_last if trainer.channels_last else torch.contiguous_format)

    def close(tag, got, want, what):
        for k, v in want.items():
            assert abs(float(got[k]) - float(v)) <= tolerance[tag] * max(abs(float(v)), 0.1), (tag, what, k)

    for i, batch in enumerate(_batches(work, cfg, 3)):
        state = copy.deepcopy(fp32.state_dict())  # load_state_dict may share the optimiser's tensors
        for trainer in trainers.values():
            trainer.load_state_dict(state)
        with torch.no_grad():
            want_D = fp32.discriminator_loss(fp32.inputs(batch))[1]
            got_D = {tag: t.discriminator_loss(t.inputs(batch))[1] for tag, t in trainers.items()}
        want = fp32.step(batch, i)
        for tag, trainer in trainers.items():
            close(tag, got_D[tag], want_D, f"D phase {i}")
            got = trainer.step(batch, i)
            assert got.keys() == want.keys() and all(np.isfinite(float(v)) for v in got.values())
            close(tag, got, {k: v for k, v in want.items() if k.startswith("G")}, f"step {i}")
    with pytest.raises(InputError, match="--amp fp16 needs a GPU"):
        ResailTrainer(tiny_config("amp", amp="fp16"), torch.device("cpu"))


def test_extend_a_finished_run_recomputes_the_schedule_and_records_it(work, capsys):
    from resail.cli import main
    from resail.synth.config import resolve_resumed
    from resail.synth.train import saved_config

    done = train(tiny_config("ext", steps=2), work, progress=False)
    assert done["complete"] and done["total_steps"] == 2
    with pytest.raises(InputError, match="already at step 2, where a 1-step schedule has ended"):
        train(tiny_config("ext", steps=1), work, progress=False, resume=True)
    more = train(tiny_config("ext", steps=4), work, progress=False, resume=True)
    assert (more["steps"], more["steps_this_session"], more["total_steps"], more["complete"]) == (4, 2, 4, True)
    run_dir = Path(more["run_dir"])
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["total_steps"] == 4 and saved["history"] == [
        {"step": 2, "steps_before": 2, "steps_after": 4, "decay_start": 2}]
    rows = stats(run_dir)
    assert [(r["step"], r.get("event")) for r in rows] == [(1, None), (2, None), (2, "schedule"), (3, None),
                                                           (4, None)]
    # lr is get_lr over the total in force: 2 steps decaying from 1 before, 4 decaying from 2 after
    assert [r["lr_G"] for r in rows if "lr_G" in r] == pytest.approx(
        [get_lr(0, 1e-4, 2, 1), get_lr(1, 1e-4, 2, 1), get_lr(2, 1e-4, 4, 2), get_lr(3, 1e-4, 4, 2)])
    # the command line: --resume reads the run's settings, so --name and --steps are enough
    capsys.readouterr()
    assert main(["train", str(work), "--name", "ext", "--resume", "--steps", "6", "-q"]) == 0
    assert "trained 2 steps this run (run total 6/6;" in capsys.readouterr().out
    history = saved_config(work, "ext").history
    assert [h["steps_after"] for h in history] == [4, 6]
    with pytest.raises(InputError, match="trained with preset 'toy'"):
        resolve_resumed(saved_config(work, "ext"), preset="ade20k", n_train=6)
    assert main(["train", str(work), "--name", "ext", "--resume", "--steps", "8", "--batch-size", "3", "-q"]) == 1
    assert "different configuration" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, work, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _first_step(work, out, rank, world)
    finally:
        torch.distributed.destroy_process_group()


def _first_step(work, out, rank=0, world=1):
    from resail.synth.data import StepBatchSampler
    from resail.synth.distributed import Dist

    cfg = tiny_config("ddp", batch_size=2)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # weights and batch in float64: see the test below
    try:
        trainer = ResailTrainer(cfg, torch.device("cpu"), Dist(rank, world, rank))
        ds = SynthDataset(work, "train", cfg)
        keys = next(iter(StepBatchSampler(len(ds), 2, seed=cfg.seed, total_steps=1, rank=rank, world_size=world)))
        batch = torch.utils.data.default_collate([ds[k] for k in keys])
        terms = trainer.step({k: v.double() if v.is_floating_point() else v for k, v in batch.items()}, 0)
    finally:
        torch.set_default_dtype(default_dtype)
    if rank == 0:
        names = sorted(terms)
        values = torch.stack([terms[k] for k in names])
        if world > 1:
            torch.distributed.all_reduce(values)  # in step with the other rank's all-reduce below
        grads = {f"{n}.{k}": p.grad for n, net in (("G", trainer.G), ("D", trainer.D))
                 for k, p in net.named_parameters() if p.grad is not None}
        torch.save({"G": trainer.G.state_dict(), "D": trainer.D.state_dict(), "grads": grads,
                    "terms": dict(zip(names, values / world))}, out)
    elif world > 1:
        values = torch.stack([terms[k] for k in sorted(terms)])
        torch.distributed.all_reduce(values)
    ds.close()


def test_ddp_two_gloo_processes_match_one_process(work, tmp_path):
    _first_step(work, tmp_path / "single.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), work, tmp_path / "ddp.pt"), nprocs=2, join=True)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    # Both runs are float64. G and D are piecewise linear (leaky ReLU), so their gradient jumps
    # where a pre-activation crosses 0, and the two runs round differently. In float32 one
    # pre-activation of G's up_0 at +3.3e-7 in one run and -4.3e-7 in the other (slope 1 vs 0.2)
    # put 1.4% of the error into that layer's gradient and 0.76% into all of G's. In float64 the
    # gradients agree to 1.4e-14 (G) and 7e-15 (D), the weights after the Adam step to 2.5e-10
    # (a bias before a BatchNorm: true gradient 0, noise over Adam's eps) and the loss terms,
    # returned as float32, to 1.1e-7.
    for k, v in single["terms"].items():
        assert float(ddp["terms"][k]) == pytest.approx(float(v), rel=1e-6, abs=1e-9), k
    assert single["grads"].keys() == ddp["grads"].keys() and len(single["grads"]) > 10
    for net in ("G", "D"):
        keys = [k for k in single["grads"] if k.startswith(net + ".")]
        a = torch.cat([single["grads"][k].flatten() for k in keys])
        b = torch.cat([ddp["grads"][k].flatten() for k in keys])
        assert float((a - b).norm() / a.norm()) < 1e-10, net
    for net in ("G", "D"):
        for k, v in single[net].items():
            if v.is_floating_point():
                torch.testing.assert_close(ddp[net][k], v, atol=1e-7, rtol=1e-7, msg=f"{net}.{k}")

"""The trainer on a 6-image toy work dir at 96×96 with minimal widths: one step, exact resume,
DDP equivalence (2 gloo processes), checkpoint errors, dry run, schedules."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from builders.work import baked_work
from resail.errors import InputError, StageError
from resail.synth.checkpoint import load_snapshot
from resail.synth.config import resolve_config
from resail.synth.data import SynthDataset
from resail.synth.labels import LabelChannels
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
    with pytest.raises(InputError, match="'gpu0': not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cuda:1: CUDA is not available"):
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
    from resail.synth.segnet import SegNet, SegnetTrainConfig, save_checkpoint
    from resail.synth.train import build_losses

    n = get_preset("toy").semantic_nc
    other = tuple(range(n))  # as many channels as the toy table, other classes
    save_checkpoint(tmp_path / "seg.pt", SegNet(n, (4,) * 5, label_ids=other), None, 0, SegnetTrainConfig())
    with pytest.raises(InputError, match="another label table"):
        build_losses(tiny_config("seg", segnet=str(tmp_path / "seg.pt"), vgg=False), torch.device("cpu"))


def test_non_finite_loss_stops_and_names_the_term(work, monkeypatch):
    import resail.synth.train as train_mod

    monkeypatch.setattr(train_mod, "feature_matching", lambda fake, real: torch.tensor(float("nan")))
    with pytest.raises(StageError, match="non-finite loss .*G_fm.* at step 0"):
        train(tiny_config("nan", steps=2), work, progress=False)


def test_dry_run_writes_config_only_and_missing_cache_is_named(work, tmp_path):
    cfg = tiny_config("dry")
    path = dry_run(cfg, work)
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]
    assert json.loads(path.read_text())["net"]["ngf"] == 4
    with pytest.raises(InputError, match="--no-vgg"):
        train(tiny_config("vgg", vgg=True, vgg_weights=str(tmp_path / "missing.pth")), work, progress=False)
    with pytest.raises(InputError, match="--segnet"):
        tiny_config("seg", seg_loss=True)
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
    trainer = ResailTrainer(cfg, torch.device("cpu"), Dist(rank, world, rank))
    ds = SynthDataset(work, "train", cfg)
    keys = next(iter(StepBatchSampler(len(ds), 2, seed=cfg.seed, total_steps=1, rank=rank, world_size=world)))
    terms = trainer.step(torch.utils.data.default_collate([ds[k] for k in keys]), 0)
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
    for k, v in single["terms"].items():
        assert float(ddp["terms"][k]) == pytest.approx(float(v), rel=1e-3, abs=1e-4), k
    # the averaged gradients agree; the weights agree up to Adam's first step, lr·g/|g|, which
    # turns float noise in a near-zero gradient (biases before a BatchNorm) into ±lr
    assert single["grads"].keys() == ddp["grads"].keys() and len(single["grads"]) > 10
    for net in ("G", "D"):
        keys = [k for k in single["grads"] if k.startswith(net + ".")]
        a = torch.cat([single["grads"][k].flatten() for k in keys])
        b = torch.cat([ddp["grads"][k].flatten() for k in keys])
        assert float((a - b).norm() / a.norm()) < 1e-3, net
    for net in ("G", "D"):
        for k, v in single[net].items():
            if v.is_floating_point():
                torch.testing.assert_close(ddp[net][k], v, atol=2.5e-4 if net == "G" else 1e-3, rtol=1e-3,
                                           msg=f"{net}.{k}")

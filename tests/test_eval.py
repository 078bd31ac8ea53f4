"""Eval: the FID Inception against pytorch-fid, and the eval stage end to end on a tiny run
(random G, random segmenter, random-weight Inception). The metric maths: tests/test_metrics.py."""

import json
from unittest import mock

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from builders.runs import TINY_SIZE as SIZE
from builders.runs import tiny_preset
from builders.work import copy_work
from resail.cli import main
from resail.errors import ConfigError, InputError
from resail.synth import eval as eval_mod
from resail.synth import inception as inception_mod
from resail.synth import metrics as metrics_mod
from resail.synth.eval import EvalConfig, run_eval
from resail.synth.inception import FIDInception, inception_features, load_inception, randomize_
from resail.synth.presets import get_preset
from resail.synth.segnet import SegnetTrainConfig, build_segnet, save_segnet


@pytest.fixture(scope="module")
def tiny_run(shared_tiny_run, tmp_path_factory):
    """(work, Inception weights) of a private copy of the shared tiny run: eval writes into its work dir."""
    return copy_work(shared_tiny_run.work, tmp_path_factory.mktemp("eval") / "work"), shared_tiny_run.inception


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- Inception


def test_inception_gives_pytorch_fid_features_with_the_same_weights(tmp_path):
    pfi = pytest.importorskip("pytorch_fid.inception")
    ours = randomize_(FIDInception(), seed=5).eval()
    state = ours.state_dict()
    # pytorch-fid builds its network, then loads the published file: hand it our weights instead.
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        ref = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    # 8-bit images, not square and not 299: the resize is part of the contract
    u8 = np.random.default_rng(0).integers(0, 256, (2, 70, 90, 3), dtype=np.uint8)
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = ref(x)[0].flatten(1)
        got = ours(x)
    assert got.shape == (2, 2048) and want.abs().mean() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the same weights through a file, strictly loaded, and the uint8 feature path
    torch.save(state, tmp_path / "w.pth")
    feats = inception_features(load_inception(tmp_path / "w.pth"), u8, batch_size=2)
    np.testing.assert_allclose(feats, want.double().numpy(), rtol=1e-5, atol=1e-6)


def test_missing_or_wrong_inception_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InputError, match="pt_inception-2015-12-05-6726825d.pth.*--inception-weights.*--no-fid"):
        inception_mod.find_weights(None)
    with pytest.raises(InputError, match="no such file"):
        inception_mod.find_weights(tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable weight file"):
        load_inception(tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not the FID Inception weights"):
        load_inception(tmp_path / "other.pth")
    # the hub cache location is found without a flag
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / inception_mod.WEIGHTS_NAME).write_bytes(b"x")
    assert inception_mod.find_weights(None) == tmp_path / "hub" / "checkpoints" / inception_mod.WEIGHTS_NAME


# ---------------------------------------------------------------- the stage


class Spy:
    """Records the uint8 batches given to the Inception and the statistics given to the Fréchet
    distance. The 2048-d sqrtm costs 25-45 s on a shared CPU, so the spy returns a cheap stand-in
    (|μ₁ − μ₂|²); `frechet_distance` itself is checked against scipy in tests/test_metrics.py."""

    def __init__(self, monkeypatch):
        self.images, self.stats = [], []
        real_features = eval_mod.inception_features

        def features(model, images, *args, **kwargs):
            self.images.append(images.copy())
            return real_features(model, images, *args, **kwargs)

        def frechet(mu1, s1, mu2, s2):
            self.stats.append((mu1, s1, mu2, s2))
            return float(((mu1 - mu2) ** 2).sum())

        monkeypatch.setattr(eval_mod, "inception_features", features)
        monkeypatch.setattr(metrics_mod, "frechet_distance", frechet)


def test_eval_end_to_end_writes_images_metrics_grid_and_caches_real_stats(tiny_run, monkeypatch):
    work, weights = tiny_run
    spy = Spy(monkeypatch)
    cfg = EvalConfig(work, "tiny", inception_weights=weights, batch_size=4)
    m = run_eval(cfg)
    out = work / "eval" / "tiny"
    val_ids = pq.read_table(work / "segments" / "val_images.parquet")["image_id"].to_pylist()
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == sorted(val_ids)
    assert m["n_images"] == len(val_ids) == 4
    assert m["resolution"] == [SIZE, SIZE] and m["step"] == 7
    assert np.isfinite(m["fid"]) and m["fid"] > 0 and np.isfinite(m["kid"]["mean"])
    # the Inception saw exactly the saved PNGs (generated) and the real photos at the model size
    fake, real = spy.images
    saved = np.stack([cv2.cvtColor(cv2.imread(str(out / "images" / f"{i}.png")), cv2.COLOR_BGR2RGB) for i in val_ids])
    np.testing.assert_array_equal(fake, saved)
    assert real.shape == fake.shape and not np.array_equal(real, fake)
    seg = m["segmentation"]
    assert seg["segnet"].endswith("toy.pt")
    # the run and its segmenter use the toy preset's compact label table; per-class rows name native ids
    toy_ids = get_preset("toy").label_ids
    ids = [r["id"] for r in m["per_class_iou"]]
    assert ids and set(ids) <= set(toy_ids[1:]) and max(ids) >= len(toy_ids)
    assert {r["name"] for r in m["per_class_iou"]} >= {"sky"}
    for side in ("generated", "real"):
        assert 0 <= seg[side]["miou"] <= 1 and 0 <= seg[side]["pixel_acc"] <= 1 and seg[side]["n_pixels"] > 0
    assert m["protocol"]["fid"]["inception_sha256"] and m["protocol"]["fid"]["real_stats_recomputed"]
    assert "rank-deficient" in m["protocol"]["fid"]["note"]
    assert json.loads((out / "metrics.json").read_text())["fid"] == m["fid"]
    assert cv2.imread(str(out / "grid.png")).shape == (4 * SIZE, 4 * SIZE, 3)
    assert (out / "report.md").read_text().startswith("# resail eval") and (out / "per_class_iou.csv").exists()
    # a second eval reads the real statistics from the cache and generates the same images
    again = run_eval(EvalConfig(work, "tiny", inception_weights=weights, batch_size=4, seg=False, kid=False))
    assert not again["protocol"]["fid"]["real_stats_recomputed"] and len(spy.images) == 3
    np.testing.assert_array_equal(spy.images[2], fake)
    for first, second in zip(spy.stats[0], spy.stats[1]):
        np.testing.assert_array_equal(first, second)
    assert again["fid"] == m["fid"]


def test_eval_cli_without_fid_and_bad_input(tiny_run, tmp_path, capsys, monkeypatch):
    work, _ = tiny_run
    assert main(["eval", str(work), "--run", "tiny", "--no-fid", "--limit", "2", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "2 val images" in out and "mIoU" in out
    m = json.loads((work / "eval" / "tiny" / "metrics.json").read_text())
    assert m["fid"] is None and m["n_images"] == 2 and len(list((work / "eval" / "tiny" / "images").glob("*"))) == 2

    # missing Inception weights: one line, before any image is generated
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert main(["eval", str(work), "--run", "tiny", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--inception-weights" in err[0] and "--no-fid" in err[0]
    # unknown run: the runs that exist are named
    assert main(["eval", str(work), "--run", "nope", "--no-fid", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no such run" in err and "tiny" in err
    # a run folder without a snapshot
    (work / "runs" / "empty").mkdir()
    with pytest.raises(InputError, match="no generator snapshot"):
        run_eval(EvalConfig(work, "empty", fid=False))
    with pytest.raises(InputError, match="missing.pt: no such segmentation network file"):
        run_eval(EvalConfig(work, "tiny", fid=False, segnet=tmp_path / "missing.pt"))


def test_eval_remaps_labels_to_a_segmenter_with_another_label_table(tiny_run, tmp_path):
    """A compact-table run scored by an identity-table (ADE20K, 151 classes) segmenter: labels go
    through native ids; a segmenter whose table misses classes of the data is refused."""
    work, _ = tiny_run
    net = tiny_preset(get_preset("ade20k"), width=SIZE, height=SIZE, segnet_channels=(4,) * 5)
    save_segnet(tmp_path / "ade.pt", build_segnet(net), None, 0, SegnetTrainConfig())
    m = run_eval(EvalConfig(work, "tiny", fid=False, segnet=tmp_path / "ade.pt", limit=2, n_grid=0))
    assert m["segmentation"]["segnet"].endswith("ade.pt") and m["segmentation"]["real"]["n_pixels"] > 0
    ids = {r["id"] for r in m["per_class_iou"]}   # native ADE20K ids (the segmenter may predict any of the 150)
    assert ids <= set(range(1, 151)) and ids & {c for c in get_preset("toy").label_ids if c > 22}
    narrow = tiny_preset(get_preset("toy", label_ids=(0, 2, 3)), width=SIZE, height=SIZE,
                         segnet_channels=(4,) * 5)
    save_segnet(tmp_path / "narrow.pt", build_segnet(narrow), None, 0, SegnetTrainConfig())
    with pytest.raises(InputError, match="segmentation network has no label channel"):
        run_eval(EvalConfig(work, "tiny", fid=False, segnet=tmp_path / "narrow.pt", limit=2))


# ---------------------------------------------------------------- classic segmenters


class ConstantADE20K(torch.nn.Module):
    """A TorchScript-able segmenter under the contract of synth/segmenters/torchscript.py: 150
    ADE20K logits (id_offset 1) whose largest is always `favourite`, so its scores count by hand."""

    def __init__(self, favourite: int):
        super().__init__()
        self.id_offset = 1
        self.conv = torch.nn.Conv2d(3, 150, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.bias[favourite - 1] = 1.0

    def forward(self, x):
        return self.conv(x)


def test_eval_with_a_torchscript_segmenter_end_to_end(tiny_run, shared_tiny_run, tmp_path, capsys, monkeypatch):
    """The toy val maps (ADE20K ids) against a segmenter that always says sky: mIoU and pixel
    accuracy equal the hand count, on the generated and on the real images; the segmenter sees
    exactly the saved PNGs' pixels; the protocol names the segmenter, its file's SHA-256, the
    input size, the image format and the real reference."""
    from resail.common import sha256_file
    from resail.pipeline.datasets import make_reader
    from resail.synth.segmenters.torchscript import TorchScriptSegmenter

    work, _ = tiny_run
    sky = 3
    path = tmp_path / "const.pt"
    torch.jit.script(ConstantADE20K(sky)).save(str(path))
    seen, predict = [], TorchScriptSegmenter.predict
    monkeypatch.setattr(TorchScriptSegmenter, "predict", lambda self, rgb: seen.append(rgb.copy()) or predict(self, rgb))
    m = run_eval(EvalConfig(work, "tiny", fid=False, segmenter=f"torchscript:{path}", n_grid=0, device="cpu"))
    val_ids = pq.read_table(work / "segments" / "val_images.parquet")["image_id"].to_pylist()
    saved = [cv2.cvtColor(cv2.imread(str(work / "eval" / "tiny" / "images" / f"{i}.png")), cv2.COLOR_BGR2RGB)
             for i in val_ids]
    assert len(seen) == 8   # one batch: the 4 generated images, then the 4 real ones
    for got, want in zip(seen[:4], saved):
        np.testing.assert_array_equal(got, want)

    reader = make_reader("ade20k", shared_tiny_run.root)
    gt = np.concatenate([reader.load(r).label_map.ravel() for r in reader.records("val")])  # 96×96 = model size
    valid = gt[gt > 0]
    classes = set(np.unique(valid).tolist()) | {sky}
    iou_sky = (valid == sky).sum() / valid.size
    seg = m["segmentation"]
    assert seg["segmenter"] == "torchscript:const.pt" and seg["id_space"].startswith("ADE20K 1..150")
    for side in ("generated", "real"):   # a constant segmenter cannot tell them apart
        assert seg[side]["pixel_acc"] == pytest.approx(iou_sky)
        assert seg[side]["miou"] == pytest.approx(iou_sky / len(classes))
        assert seg[side]["n_pixels"] == valid.size
    rows = {r["id"]: r for r in m["per_class_iou"]}
    assert set(rows) == classes and rows[sky]["name"] == "sky" and rows[sky]["iou_real"] == pytest.approx(iou_sky)

    p = m["protocol"]
    assert p["n_images"] == m["n_images"] == 4 and p["input_size"] == [SIZE, SIZE]
    assert p["image_format"].startswith("PNG") and p["real_reference"]["n_images"] == 4
    assert p["real_reference"]["split"] == "val" and "INTER_AREA" in p["real_reference"]["images"]
    ps = p["segmentation"]
    assert ps["segmenter"] == "torchscript:const.pt" and ps["weights"] == [{"file": "const.pt",
                                                                             "sha256": sha256_file(path)}]
    assert ps["input_size"] == [SIZE, SIZE] and ps["scales"] == [1.0] and "resize" in ps
    assert "nearest-resized" in ps["ground_truth"] and ps["id_space"] == seg["id_space"]
    assert "fid" not in p

    # the CLI, and flags that do not go together
    assert main(["eval", str(work), "--run", "tiny", "--no-fid", "--limit", "2", "--grid", "0", "--quiet",
                 "--device", "cpu", "--segmenter", f"torchscript:{path}"]) == 0
    assert "torchscript:const.pt mIoU" in capsys.readouterr().out
    assert main(["eval", str(work), "--run", "tiny", "--no-fid", "--segmenter", "segformer"]) == 2
    assert "Invalid value for '--segmenter': segmenter 'segformer': choose one of drn-d-105" in capsys.readouterr().err
    weights = tmp_path / "drn.pth"
    weights.write_bytes(b"not read: the dataset check comes first")
    assert main(["eval", str(work), "--run", "tiny", "--no-fid", "--quiet", "--segmenter", "drn-d-105",
                 "--segmenter-weights", str(weights)]) == 1
    assert "drn-d-105 segments cityscapes, but run 'tiny' is of ade20k" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="instead of the segmentation network: give no segnet"):
        EvalConfig(work, "tiny", segmenter=f"torchscript:{path}", segnet=tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="segmenter weights without a segmenter"):
        EvalConfig(work, "tiny", segmenter_weights=(weights,))


def test_classic_scores_map_cityscapes_labelids_to_trainids():
    """The ground truth (labelIds, through an identity label table) meets the segmenter's trainIds:
    labelIds without a trainId are ignored, a prediction outside 0..18 is a miss."""
    from resail.pipeline.labels.spaces import LabelChannels, eval_id_space
    from resail.synth.eval import SegmenterScorer

    class Stub:
        def predict(self, rgb):
            return np.array([[0, 13, 5, 10], [0, 2, 13, 255]], np.uint8)   # trainIds

    label = torch.tensor([[[7, 26, 0, 23], [8, 1, 26, 33]]])   # road car unlabeled sky / sidewalk ego car bicycle
    scorer = SegmenterScorer(Stub(), eval_id_space("cityscapes"), LabelChannels(None, 35))
    scorer.add("real", np.zeros((1, 2, 4, 3), np.uint8), label)
    s = scorer.scores()["real"]
    assert s["n_pixels"] == 6 and s["pixel_acc"] == pytest.approx(4 / 6)
    # road, sidewalk, car, sky, bicycle; building (2) was predicted only on the ignored ego-vehicle pixel
    assert s["iou"] == {0: 0.5, 1: 0.0, 13: 1.0, 10: 1.0, 18: 0.0}
    assert s["miou"] == pytest.approx(2.5 / 5)

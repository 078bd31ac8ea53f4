"""The classic evaluation segmenters: published layouts, the legacy-format loader, each authors'
preprocessing and inference protocol, the TorchScript contract and `resail segment`.

The ResNet-101 networks are built at full size (their layouts are the point) but run only on tiny
images; the multi-scale protocols are checked with stub networks that record what they receive.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resail.errors import InputError
from resail.synth.segmenters import deeplab, drn, load_segmenter, upernet
from resail.synth.segmenters.base import published_layout
from resail.synth.segmenters.deeplab import DeepLabSegmenter
from resail.synth.segmenters.upernet import UperNetSegmenter

DATA = Path(__file__).parent / "data"
CPU = torch.device("cpu")
LISTINGS = {"drn": "drn_d_105_cityscapes", "encoder": "upernet_r101_ade20k_encoder",
            "decoder": "upernet_r101_ade20k_decoder", "deeplab": "deeplabv2_r101_cocostuff164k"}


@pytest.fixture(scope="module")
def nets(one_thread):
    """Each published network once, with its publication spec."""
    uper = upernet.UperNet()
    return {"drn": (drn.DRNSeg(), drn.PUBLISHED), "encoder": (uper.encoder, upernet.ENCODER),
            "decoder": (uper.decoder, upernet.DECODER),
            "deeplab": (deeplab.MSC(deeplab.DeepLabV2()), deeplab.PUBLISHED)}


def read_listing(name: str) -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in (DATA / f"{LISTINGS[name]}.keys.txt").read_text().splitlines():
        key, shape = line.split()
        layout[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s)
    return layout


def published_state(net, spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout that keep activations finite: He-scaled convs, BN
    statistics near identity; the synchronized-BN extras differ from the statistics they shadow."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_layout(net, spec).items():
        leaf = key.rsplit(".", 1)[-1]
        noise = torch.randn(shape, generator=g) if shape else torch.zeros(())
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(1000)
        elif leaf == "_running_iter":
            state[key] = torch.ones(1)
        elif key == "up.weight":
            state[key] = drn.bilinear_kernel(16).expand(shape).clone()
        elif len(shape) == 4:
            state[key] = noise * (1.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif leaf in ("running_var", "_tmp_running_var"):
            state[key] = 1 + 0.1 * noise.abs()
        elif leaf == "weight":
            state[key] = 1 + 0.1 * noise
        else:
            state[key] = 0.1 * noise
    return state


@pytest.fixture(scope="module")
def checkpoints(nets, tmp_path_factory):
    """One random-weight file per published file, saved the way the authors' files are (legacy format)."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for i, (name, (net, spec)) in enumerate(nets.items()):
        files[name] = folder / f"{LISTINGS[name]}.pth"
        torch.save(published_state(net, spec, seed=i), files[name], _use_new_zipfile_serialization=False)
    return files


def weights_for(segmenter: str, files) -> list[Path]:
    return {"drn-d-105": [files["drn"]], "upernet-r101": [files["encoder"], files["decoder"]],
            "deeplabv2-r101": [files["deeplab"]]}[segmenter]


# ---------------------------------------------------------------- layouts and loading


@pytest.mark.parametrize("name,count", [("drn", 543), ("encoder", 954), ("decoder", 110), ("deeplab", 632)])
def test_modules_have_the_published_layout(nets, name, count):
    net, spec = nets[name]
    listing = read_listing(name)
    assert len(listing) == count == spec.count
    assert published_layout(net, spec) == listing
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    extras = ("_tmp_running_mean", "_tmp_running_var", "_running_iter", "num_batches_tracked")
    assert {k: s for k, s in own.items() if not k.endswith(extras)} == \
        {k: s for k, s in listing.items() if not k.endswith(extras)}


def test_published_signatures():
    assert read_listing("drn")["seg.weight"] == (19, 512, 1, 1)
    assert read_listing("drn")["up.weight"] == (19, 1, 16, 16)
    assert all(k.startswith("base.") for k in read_listing("deeplab"))
    assert {k.split(".")[0] for k in read_listing("decoder")} == {"ppm_conv", "ppm_last_conv", "fpn_in", "fpn_out",
                                                                  "conv_last"}
    assert read_listing("encoder")["bn3._tmp_running_mean"] == (128,)


@pytest.mark.parametrize("name", list(LISTINGS))
def test_legacy_file_round_trip_by_exact_key(nets, checkpoints, name):
    from resail.synth.segmenters.base import load_published

    net, spec = nets[name]
    load_published(net, checkpoints[name], spec)
    saved = torch.load(checkpoints[name], weights_only=True)
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, saved[key]), key
    if spec.sync_bn_extras:  # the shadow statistics were not taken for the real ones
        bn = "bn1" if name == "encoder" else "ppm_conv.0.1"
        assert not torch.equal(saved[f"{bn}.running_mean"], saved[f"{bn}._tmp_running_mean"])


def test_drn_up_weight_is_the_fixed_bilinear_kernel():
    """fyu/drn fill_up_weights: w[i, j] = (1 - |i/f - c|)(1 - |j/f - c|), f = ⌈16/2⌉, c = (2f - 1 - f%2)/(2f)."""
    f, c = 8, (2 * 8 - 1 - 0) / 16
    expected = torch.tensor([[(1 - abs(i / f - c)) * (1 - abs(j / f - c)) for j in range(16)] for i in range(16)])
    assert torch.allclose(drn.bilinear_kernel(16), expected.float())
    up = drn.DRNSeg().up
    assert (up.stride, up.padding, up.output_padding, up.groups) == ((8, 8), (4, 4), (0, 0), 19)
    with torch.no_grad():
        out = up(torch.ones(1, 19, 5, 6))
    assert out.shape == (1, 19, 40, 48)
    assert torch.allclose(out[:, :, 8:-8, 8:-8], torch.ones(()))  # interior of a constant map stays constant


def test_missing_bookkeeping_buffers_are_tolerated(nets, tmp_path):
    net, spec = nets["decoder"]
    state = published_state(net, spec)
    kept = {k: v for k, v in state.items() if not k.endswith(("num_batches_tracked", "_tmp_running_var"))}
    torch.save(kept, tmp_path / "decoder.pth", _use_new_zipfile_serialization=False)
    from resail.synth.segmenters.base import load_published

    load_published(net, tmp_path / "decoder.pth", spec)
    assert torch.equal(net.conv_last[1].weight, state["conv_last.1.weight"])


def test_wrong_or_truncated_files_are_one_clear_line(checkpoints, tmp_path):
    truncated = tmp_path / "drn-d-105_ms_cityscapes.pth"
    truncated.write_bytes(checkpoints["drn"].read_bytes()[:100_000])
    with pytest.raises(InputError, match=re.escape(str(truncated)) + r": .*truncated.*expected a DRN-D-105 "
                                         r"Cityscapes state dict \(543 tensors, seg.weight \[19,512,1,1\]\)"):
        load_segmenter("drn-d-105", [truncated])
    with pytest.raises(InputError, match=r"expected a DRN-D-105 .*; got 632 tensors: 543 missing"):
        load_segmenter("drn-d-105", [checkpoints["deeplab"]])
    with pytest.raises(InputError, match=r"upernet_r101_ade20k_decoder.pth: expected a CSAILVision UperNet "
                                         r"ResNet-101 encoder state dict \(954 tensors"):
        load_segmenter("upernet-r101", [checkpoints["decoder"], checkpoints["encoder"]])
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 1, "state_dict": {}}, wrapped)
    with pytest.raises(InputError, match="a bare state dict; got a dict with keys"):
        load_segmenter("drn-d-105", [wrapped])
    with pytest.raises(InputError, match="two weight files"):
        load_segmenter("upernet-r101", [checkpoints["encoder"]])
    with pytest.raises(InputError, match="unknown segmenter"):
        load_segmenter("segformer", [])


def test_another_class_count_is_a_shape_error(tmp_path):
    torch.save({"seg.weight": torch.zeros(20, 512, 1, 1)}, tmp_path / "camvid.pth")
    with pytest.raises(InputError, match=r"of another shape \(first: seg.weight \[20,512,1,1\] \(not \[19,512,1,1\]\)"):
        load_segmenter("drn-d-105", [tmp_path / "camvid.pth"])


# ---------------------------------------------------------------- preprocessing and protocols


def test_drn_normalises_rgb_with_cityscapes_statistics():
    rgb = np.array([[[255, 0, 128]]], np.uint8)
    x = drn.normalize(rgb)
    expected = [(255 / 255 - 0.29010095242892997) / 0.1829540508368939, (0 - 0.32808144844279574) / 0.18656561047509476,
                (128 / 255 - 0.28696394422942517) / 0.18447508988480435]
    assert x.shape == (1, 3, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor(expected))


def test_drn_predicts_trainids_at_the_image_size(nets):
    seg = drn.DRNSegmenter(nets["drn"][0], CPU, {})
    ids = seg.predict(np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8))
    assert ids.shape == (33, 47) and ids.dtype == np.uint8 and ids.max() <= 18


def test_upernet_test_sizes_follow_the_authors_rounding():
    assert [upernet.round_up(x) for x in (1, 31, 32, 33, 400)] == [32, 32, 32, 64, 416]
    # 683×512 (ADE20K's typical size): short side s, long side int(683·s/512), both rounded up to ×32.
    assert upernet.input_sizes(512, 683) == [(320, 416), (384, 512), (480, 608), (544, 704), (608, 800)]
    # Cityscapes-sized: the long side is capped at 1000 before rounding (1000 → 1024).
    assert upernet.input_sizes(1024, 2048)[-2:] == [(512, 1024), (512, 1024)]
    assert upernet.input_sizes(683, 512)[0] == (416, 320)  # portrait: the same rule on the width
    assert upernet.input_sizes(256, 256, "single") == [(256, 256)]
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in upernet.input_sizes(371, 499))


def test_upernet_normalises_rgb_with_imagenet_statistics():
    x = upernet.normalize(np.array([[[255, 0, 128]]], np.uint8))
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (np.float32(128) / 255 - 0.406) / 0.225]
    assert torch.allclose(x.flatten(), torch.tensor(expected, dtype=torch.float32))


class ScaleStub(nn.Module):
    """UperNet stand-in: records its inputs; logits at stride 4 that favour class `votes[i]` on call i,
    by `margin[i]`, and push class `damp[i]` far down."""

    def __init__(self, votes, margins, damp=None):
        super().__init__()
        self.votes, self.margins, self.damp, self.inputs = votes, margins, damp, []

    def forward(self, x):
        i = len(self.inputs)
        self.inputs.append(x.clone())
        logits = torch.zeros(1, upernet.NUM_CLASSES, x.shape[2] // 4, x.shape[3] // 4)
        logits[:, self.votes[i]] = self.margins[i]
        if self.damp is not None:
            logits[:, self.damp[i]] = -1000.0
        return logits


def test_upernet_resizes_with_pil_bilinear_and_shifts_ids_by_one():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    stub = ScaleStub(votes=[0] * 5, margins=[5.0] * 5)
    ids = UperNetSegmenter(stub, CPU, {}, "multi").predict(rgb)
    sizes = upernet.input_sizes(40, 60)
    assert [tuple(x.shape[2:]) for x in stub.inputs] == sizes
    for x, (h, w) in zip(stub.inputs, sizes):
        expected = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        assert torch.equal(x, upernet.normalize(expected))
    assert ids.shape == (40, 60) and (ids == 1).all()  # class 0 is ADE20K id 1
    last = UperNetSegmenter(ScaleStub(votes=[149], margins=[5.0]), CPU, {}, "single").predict(rgb)
    assert (last == 150).all()


def test_upernet_averages_softmax_over_scales_not_logits():
    """Three scales sure of class 3, two far surer of class 5 (and against 3): the mean of logits
    picks 5, the authors' mean of softmax picks 3."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    stub = ScaleStub(votes=[3, 3, 3, 5, 5], margins=[10.0, 10.0, 10.0, 100.0, 100.0], damp=[0, 0, 0, 3, 3])
    ids = UperNetSegmenter(stub, CPU, {}, "multi").predict(rgb)
    assert (ids == 4).all()


def test_upernet_single_scale_runs_at_the_image_size_without_resizing():
    rgb = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    stub = ScaleStub(votes=[7], margins=[1.0])
    UperNetSegmenter(stub, CPU, {}, "single").predict(rgb)
    assert len(stub.inputs) == 1 and torch.equal(stub.inputs[0], upernet.normalize(rgb))


def test_deeplab_input_is_bgr_minus_the_caffe_mean():
    x = deeplab.normalize(np.array([[[10, 20, 30]]], np.uint8))  # R, G, B
    assert torch.allclose(x.flatten(), torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))
    assert x.dtype == torch.float32


class SizeStub(nn.Module):
    """DeepLab base stand-in: logits at stride 8 where channel i is 1 on the i-th call (full, ×0.5, ×0.75)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[2:]))
        logits = torch.zeros(1, deeplab.NUM_CLASSES, -(-x.shape[2] // 8), -(-x.shape[3] // 8))
        logits[:, len(self.sizes) - 1] = 1.0
        logits[:, 181] = 0.5 if len(self.sizes) == 3 else -1.0
        return logits


def test_deeplab_msc_takes_the_max_over_three_scales():
    stub = SizeStub()
    msc = deeplab.MSC(stub)
    with torch.no_grad():
        out = msc(torch.zeros(1, 3, 33, 47))
    assert stub.sizes == [(33, 47), (16, 23), (24, 35)]  # F.interpolate(scale_factor=p) floors
    assert out.shape == (1, 182, 5, 6)
    assert torch.allclose(out[0, :3], torch.ones(())) and torch.allclose(out[0, 181], torch.tensor(0.5))
    ids = DeepLabSegmenter(deeplab.MSC(SizeStub()), CPU, {}).predict(np.zeros((33, 47, 3), np.uint8))
    assert ids.shape == (33, 47) and ids.max() <= 181


def test_deeplab_runs_at_tiny_size(nets):
    seg = DeepLabSegmenter(nets["deeplab"][0], CPU, {})
    ids = seg.predict(np.random.default_rng(3).integers(0, 256, (33, 47, 3), dtype=np.uint8))
    assert ids.shape == (33, 47) and ids.max() <= 181
    assert seg.decoder == "cv2"


def test_upernet_runs_at_tiny_size_single_scale(nets):
    net = nn.Sequential(nets["encoder"][0], nets["decoder"][0])
    ids = UperNetSegmenter(net, CPU, {}, "single").predict(
        np.random.default_rng(4).integers(0, 256, (33, 47, 3), dtype=np.uint8))
    assert ids.shape == (33, 47) and 1 <= ids.min() and ids.max() <= 150


# ---------------------------------------------------------------- TorchScript, devices, CLI


class HalfRes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.id_offset = 1

    def forward(self, x):
        return self.conv(x)


def test_torchscript_contract(tmp_path):
    model = HalfRes().eval()
    path = tmp_path / "seg.pt"
    torch.jit.script(model).save(str(path))
    seg = load_segmenter(f"torchscript:{path}", [])
    rgb = np.random.default_rng(5).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
        expected = F.interpolate(model(x), size=(21, 30), mode="bilinear", align_corners=False)[0].argmax(0) + 1
    assert np.array_equal(seg.predict(rgb), expected.numpy().astype(np.uint8))
    assert seg.protocol["id_offset"] == 1 and seg.protocol["weights"][0]["file"] == "seg.pt"
    with pytest.raises(InputError, match="not a TorchScript file"):
        load_segmenter(f"torchscript:{tmp_path / 'missing.pt'}", [])


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(6)
    folder.mkdir()
    paths = [folder / "a.png", folder / "b.jpg", folder / "grey.png"]
    Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(paths[1], quality=90)
    Image.fromarray(rng.integers(0, 256, (17, 29), dtype=np.uint8)).save(paths[2])
    return paths


@pytest.mark.parametrize("segmenter,low,high", [("drn-d-105", 0, 18), ("upernet-r101", 1, 150),
                                                ("deeplabv2-r101", 0, 181)])
def test_cli_segment_end_to_end(checkpoints, tmp_path, segmenter, low, high, capsys):
    from resail.cli import main

    images = write_images(tmp_path / "images")
    weights = [a for w in weights_for(segmenter, checkpoints) for a in ("--weights", str(w))]
    scales = ["--upernet-scales", "single"] if segmenter == "upernet-r101" else []
    rc = main(["segment", "--segmenter", segmenter, *weights, *map(str, images), "--out", str(tmp_path / "out"),
               "--device", "cpu", "-q", *scales])
    assert rc == 0, capsys.readouterr().err
    for image in images:
        ids = np.asarray(Image.open(tmp_path / "out" / f"{image.stem}.png"))
        assert ids.ndim == 2 and ids.shape == Image.open(image).size[::-1]
        assert low <= ids.min() and ids.max() <= high


def test_cli_segment_errors(checkpoints, tmp_path, capsys):
    from resail.cli import main

    images = write_images(tmp_path / "images")
    out = ["--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(["segment", "--segmenter", "upernet-r101", "--weights", str(checkpoints["encoder"]),
                 str(images[0]), *out]) == 2
    assert "Invalid value for '--weights': upernet-r101 needs two weight files" in capsys.readouterr().err
    assert main(["segment", "--segmenter", "drn-d-105", "--weights", str(checkpoints["deeplab"]),
                 str(images[0]), *out]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected a DRN-D-105 Cityscapes state dict" in err
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / "a.png"
    twin.write_bytes(images[0].read_bytes())
    assert main(["segment", "--segmenter", "drn-d-105", "--weights", str(checkpoints["drn"]), str(images[0]),
                 str(twin), *out]) == 1
    assert "share the stem 'a'" in capsys.readouterr().err

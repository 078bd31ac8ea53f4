"""synth.segnet: the U-Net segmenter, its training loop, checkpoints and the mIoU report."""

import pytest
import torch

from resail.errors import InputError
from resail.synth.segnet import (
    SegNet,
    SegnetTrainConfig,
    evaluate_segnet,
    load_segnet,
    save_segnet,
    train_segnet,
)

SIZE, NUM_CLASSES = 32, 4
CHANNELS = (8, 16, 16)
COLOURS = torch.tensor([[-0.8, -0.8, -0.8], [0.9, -0.6, -0.6], [-0.6, 0.9, -0.6], [-0.6, -0.6, 0.9]])


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_set(n: int = 4, seed: int = 0):
    """n images of a grey background (class 0) with a red box, a green disc and a blue bar."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        y0, x0 = torch.randint(0, 14, (2,), generator=g).tolist()
        labels[i, y0:y0 + 10, x0:x0 + 12] = 1
        cy, cx = torch.randint(8, 24, (2,), generator=g).tolist()
        labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 2
        row = int(torch.randint(0, 28, (1,), generator=g))
        labels[i, row:row + 3, :] = 3
    images = COLOURS[labels].permute(0, 3, 1, 2)  # B×3×H×W
    images = (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
    return images, labels


def test_segnet_shapes_and_widths():
    net = SegNet(5, (8, 8, 16, 16))
    assert net(torch.zeros(2, 3, 32, 48)).shape == (2, 5, 32, 48)
    assert [b.conv1.out_channels for b in net.decoder] == [16, 8, 8, 4]
    assert [b.conv1.in_channels for b in net.decoder] == [16, 32, 16, 16]


def test_head_is_a_plain_1x1_conv_on_the_last_block_output():
    """Official layout (docs/method.md §6.5): no spectral norm and no activation before the head."""
    torch.manual_seed(0)
    net = SegNet(5, (8, 8, 16, 16)).eval()
    assert type(net.head) is torch.nn.Conv2d and net.head.kernel_size == (1, 1)
    assert not hasattr(net.head, "parametrizations") and net.head.in_channels == 4
    seen = {}
    net.decoder[-1].register_forward_hook(lambda m, i, o: seen.update(last=o))
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    logits = net(x)
    assert (seen["last"] < 0).any()  # a LeakyReLU before the head would have changed these
    assert torch.equal(logits, net.head(seen["last"]))


def test_checkpoint_with_the_former_head_is_refused(tmp_path):
    net = SegNet(3, (4, 4))
    save_segnet(tmp_path / "s.pt", net, None, 0, SegnetTrainConfig())
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    head = state["state_dict"]
    head["head.parametrizations.weight.original"] = head.pop("head.weight")
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(InputError, match="former head"):
        load_segnet(tmp_path / "old.pt")


def test_train_segnet_overfits_toy_set_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    images, labels = toy_set()
    batches = [(images, labels)]
    net = SegNet(NUM_CLASSES, CHANNELS)
    before = evaluate_segnet(net, batches)["miou"]   # classes 1..3: void (0) is never scored
    cfg = SegnetTrainConfig(steps=100, lr=3e-3, ignore_index=None, checkpoint_every=40, log_every=10)
    ckpt = tmp_path / "segnet.pt"
    result = train_segnet(net, batches, cfg, checkpoint=ckpt, val_batches=batches, progress=False)
    assert result["steps"] == 100
    assert result["val"]["miou"] > 0.85 > before, (before, result["val"])

    raw = torch.load(ckpt, weights_only=True)
    assert raw["step"] == 100 and raw["config"] == {"num_classes": NUM_CLASSES, "channels": list(CHANNELS)}
    assert raw["metrics"]["miou"] == result["val"]["miou"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
    loaded = load_segnet(ckpt)
    assert not loaded.training
    net.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), net(images), atol=1e-5)


def test_train_segnet_resumes_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    images, labels = toy_set(2)
    ckpt = tmp_path / "segnet.pt"
    net = SegNet(NUM_CLASSES, CHANNELS)
    train_segnet(net, [(images, labels)], SegnetTrainConfig(steps=3), checkpoint=ckpt, progress=False)
    seen = []

    def source():
        seen.append(1)
        yield images, labels

    again = SegNet(NUM_CLASSES, CHANNELS)
    result = train_segnet(again, _Reiterable(source), SegnetTrainConfig(steps=5), checkpoint=ckpt, progress=False)
    assert result["steps"] == 5 and len(seen) == 2  # resumed at step 3: two more steps, one batch each
    assert torch.load(ckpt, weights_only=True)["step"] == 5


class _Reiterable:
    def __init__(self, fn):
        self.fn = fn

    def __iter__(self):
        return self.fn()


def test_train_segnet_rejects_mismatched_checkpoint_and_empty_source(tmp_path):
    ckpt = tmp_path / "segnet.pt"
    save_segnet(ckpt, SegNet(3, (4, 4)), None, 1, SegnetTrainConfig())
    with pytest.raises(InputError, match="different network"):
        train_segnet(SegNet(NUM_CLASSES, (4, 4)), [], SegnetTrainConfig(steps=2), checkpoint=ckpt, progress=False)
    with pytest.raises(InputError, match="no batches"):
        train_segnet(SegNet(NUM_CLASSES, (4, 4)), [], SegnetTrainConfig(steps=2), progress=False)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="segmentation-network checkpoint"):
        load_segnet(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="resail segnet train"):
        load_segnet(tmp_path / "missing.pt")


def fabricate_work(tmp_path, n_train=2, n_val=1, size=64):
    """A folder-format dataset and the two segment-store files `segnet train` reads."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root, work = tmp_path / "data", tmp_path / "work"
    (root / "classes.csv").parent.mkdir(parents=True)
    (root / "classes.csv").write_text("id,name,is_thing\n1,box,0\n2,disc,1\n3,bar,0\n")
    images, labels = toy_set(n_train + n_val)
    for split, idx in (("train", range(n_train)), ("val", range(n_train, n_train + n_val))):
        for d in ("images", "labels"):
            (root / d / split).mkdir(parents=True)
        ids = []
        for i in idx:
            rgb = ((images[i].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
            lab = labels[i].numpy().astype(np.uint8)
            Image.fromarray(rgb).resize((size, size), Image.NEAREST).save(root / "images" / split / f"im{i}.png")
            Image.fromarray(lab).resize((size, size), Image.NEAREST).save(root / "labels" / split / f"im{i}.png")
            ids.append(f"im{i}")
        (work / "segments").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"image_id": ids, "status": ["ok"] * len(ids)}),
                       work / "segments" / f"{split}_images.parquet")
    (work / "segments" / "manifest.json").write_text(json.dumps({"params": {"dataset": "folder", "root": str(root)}}))
    return work


def test_cli_segnet_train_on_a_work_dir(tmp_path, capsys):
    import json

    from resail.cli import main

    work = fabricate_work(tmp_path)
    argv = ["segnet", "train", str(work), "--preset", "toy", "--steps", "2", "--batch-size", "2",
            "--workers", "0", "--device", "cpu", "-q"]
    # class 1 is not among the toy preset's label_ids: the error names the file, the id and the fix
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "labels/train/im" in err and "class id 1 " in err and "label_ids" in err
    (tmp_path / "net.toml").write_text("batch_size = 3\n[network]\nlabel_ids = [0, 1, 2, 3]\n")
    assert main(argv + ["--config", str(tmp_path / "net.toml")]) == 0
    out = capsys.readouterr().out
    assert "val mIoU" in out
    report = json.loads((work / "segnet" / "toy_metrics.json").read_text())
    assert report["steps"] == 2 and report["n_train"] == 2 and report["n_val"] == 1
    assert 0 <= report["val"]["miou"] <= 1
    net = load_segnet(work / "segnet" / "toy.pt")
    assert net.num_classes == 4 and net.label_ids == (0, 1, 2, 3)
    # a folder dataset has no preset of its own
    assert main(["segnet", "train", str(work), "--steps", "1", "--workers", "0"]) == 1
    assert "--preset" in capsys.readouterr().err


def test_cli_model_summary_json(capsys):
    import json

    from resail.cli import main

    assert main(["model", "summary", "--preset", "toy", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["preset"] == "toy" and set(counts) == {"preset", "G", "D", "segnet"}
    assert 0 < counts["segnet"] < counts["D"] < counts["G"]

"""The README's "Comparing methods" commands, run as written on the toy set: SPADE, CLADE and
CLADE-ICPE generators in their authors' layout (random weights, tiny widths) imported, a RESAIL run
trained for two steps, all four evaluated under one protocol and printed in one table; and a
CLADE-ICPE run trained here with the instance edge map, its items, one step and its evaluation."""

import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders.baselines import listings, reference_state
from builders.work import bake_splits, copy_work
from resail.cli import main
from resail.synth.baselines.icpe import icpe_maps, resize_maps
from resail.synth.config import resolve_config
from resail.synth.data import SynthDataset
from resail.synth.train import ResailTrainer

README = Path(__file__).resolve().parent.parent / "README.md"
SIZE = 64  # toy64's size; the imported generators are made at it too (--crop-size)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(shared_tiny_run, tmp_path_factory):
    """A private copy of the tiny toy run (val baked, a random segmenter), its train split baked too,
    and the authors' generator files (their ADE20K layout, reference weights)."""
    base = tmp_path_factory.mktemp("table")
    work = bake_splits(copy_work(shared_tiny_run.work, base / "work"), ("train",), size=96, k=5)
    files = {}
    for case in ("spade-ade20k", "clade-ade20k", "clade-icpe-ade20k"):
        files[case] = base / f"{case}.pth"
        torch.save(reference_state(listings()[case]), files[case])
    return work, files


def readme_commands() -> list[str]:
    """The `resail` lines of the README's "Comparing methods" bash block."""
    section = README.read_text().split("## Comparing methods", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("resail ")]


def test_the_readme_comparison_runs_end_to_end_on_the_toy_set(toy, capsys):
    work, files = toy
    toy_values = {  # what each placeholder of the real run is on the toy set
        "$WORK": str(work),
        # FID's 2048-d matrix square root takes a minute per run on 2 busy cores: test_eval covers it
        "$EVAL": f"--no-fid --segnet {work}/segnet/toy.pt --device cpu",
        "checkpoints/ade20k_pretrained/latest_net_G.pth": f"{files['spade-ade20k']} --crop-size {SIZE}",
        "checkpoints/ade20k/best_net_G.pth": f"{files['clade-ade20k']} --crop-size {SIZE}",
        "checkpoints/ade20k_dist/best_net_G.pth": f"{files['clade-icpe-ade20k']} --crop-size {SIZE}",
        "--preset ade20k": "--preset toy64 --steps 1 --workers 0",
    }
    commands = readme_commands()
    assert len(commands) == 9 and all(any(k in c for k in toy_values) for c in commands)
    for line in commands:
        for placeholder, value in toy_values.items():
            line = line.replace(placeholder, value)
        assert main([*shlex.split(line)[1:], "--quiet"]) == 0, line
    table = capsys.readouterr().out.split("| run |", 1)[1]
    rows = [r for r in table.splitlines() if r.startswith("| ")]
    assert [r.split(" | ")[1] for r in rows[:5]] == ["SPADE (imported: spade)", "CLADE (imported: clade)",
                                                     "CLADE-ICPE (imported: clade-icpe)", "RESAIL (trained here)",
                                                     "segmenter's ceiling"]
    assert all(re.search(r"\| n/a \| n/a \| 0\.\d{4} \| 0\.\d{4} \|$", r) for r in rows[:4])  # no FID here
    assert re.search(r"\| \| \| 0\.\d{4} \| 0\.\d{4} \|$", rows[4])
    assert (work / "eval" / "table.md").read_text().count("| ") > 20
    # one protocol: a run scored on fewer images is refused, the field named
    assert main(["eval", str(work), "--run", "clade", "--limit", "2", "--no-fid", "--segnet",
                 f"{work}/segnet/toy.pt", "--device", "cpu", "--quiet"]) == 0
    assert main(["compare", str(work), "--run", "spade", "--run", "clade", "--quiet"]) == 1
    assert "n_images: spade 4 vs clade 2" in capsys.readouterr().err


def test_clade_icpe_trains_here_with_the_edge_map_and_positional_maps(toy):
    work, _ = toy
    tiny = dict(ngf=4, norm_hidden=4, ndf=4, segnet_channels=(4,) * 5)
    cfg = resolve_config("toy64", n_train=10, overrides=dict(name="icpe", batch_size=2, steps=1, workers=0, seed=1),
                         network={**tiny, "norm": "clade-icpe", "edges": True})
    assert cfg.net.input_nc == cfg.net.semantic_nc + 1 and cfg.net.icpe
    ds = SynthDataset(work, "train", cfg)
    item = ds[(0, 1)]
    dist, label = item["dist"].numpy(), item["label"].numpy()
    assert dist.shape == (2, SIZE, SIZE) and item["edges"].shape == (1, SIZE, SIZE)
    assert np.abs(dist).max() < 1 and not dist[:, label == 0].any()  # void (ADE20K's value 0) is skipped
    assert item["edges"].sum() > 0
    # without crop and flip: the label map's maps at its own size (96²), resized as the authors do
    whole = SynthDataset(work, "train", cfg, train=False)
    native = whole.reader.load(whole.records[0]).label_map
    np.testing.assert_array_equal(whole[0]["dist"].numpy(), resize_maps(icpe_maps(native), SIZE, SIZE))
    trainer = ResailTrainer(cfg, torch.device("cpu"))
    batch = torch.utils.data.default_collate([ds[(0, 0)], ds[(0, 1)]])
    before = trainer.G.up_3.norm_0.dist_gamma.weight.clone()
    trainer.step(batch, 0)
    assert not torch.equal(before, trainer.G.up_3.norm_0.dist_gamma.weight)
    ds.close()
    whole.close()
    assert main(["train", str(work), "--preset", "toy64", "--name", "icpe-cli", "--norm", "clade-icpe",
                 "--instance-edges", "--steps", "1", "--workers", "0", "--quiet"]) == 0
    assert main(["eval", str(work), "--run", "icpe-cli", "--no-fid", "--segnet", f"{work}/segnet/toy.pt",
                 "--device", "cpu", "--limit", "2", "--quiet"]) == 0
    protocol = json.loads((work / "eval" / "icpe-cli" / "metrics.json").read_text())["protocol"]
    assert protocol["guidance"] is None and protocol["generator"]["norm"] == "clade-icpe"
    assert "SPADE's instance edge map" in protocol["generator"]["inputs"]


def test_serve_generates_with_an_imported_clade_icpe_generator_and_retrieves_nothing(toy, tmp_path):
    """`resail serve`'s calls on an imported guidance-free run: no segments, a black guidance, the
    image `resail synthesize` makes from the same map, and a resample that is refused."""
    from starlette.testclient import TestClient

    from resail.synth.serve import ServeConfig, Synthesizer, create_app
    from resail.synth.synthesize import SynthesizeConfig, synthesize

    work, files = toy
    assert main(["model", "import", "--from", "clade-icpe", str(files["clade-icpe-ade20k"]), "--work", str(work),
                 "--name", "served", "--crop-size", str(SIZE), "--quiet"]) == 0
    synth = Synthesizer(ServeConfig(work, "served"))
    label = synth.val_label_map(0).astype(np.uint8)
    path = tmp_path / "label.png"
    Image.fromarray(label).save(path)
    with TestClient(create_app(synth)) as client:
        r = client.post("/api/generate", content=path.read_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        state = r.json()
        assert state["segments"] == [] and (state["width"], state["height"]) == (SIZE, SIZE)
        served = np.asarray(Image.open(io.BytesIO(client.get(state["images"]["output"]).content)))
        black = np.asarray(Image.open(io.BytesIO(client.get(state["images"]["guidance"]).content)))
        assert not black.any()
        assert client.post(f"/api/session/{state['session']}/segment/0/resample").status_code == 404
    synth.close()
    made = synthesize(SynthesizeConfig(work, "served", path, tmp_path / "out.png"))
    assert made.segments == [] and np.array_equal(made.image, served)

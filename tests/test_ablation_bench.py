"""benchmarks/ablation.py end to end at a toy size (data and judge, one seed's curve of the five
variants, the report), and benchmarks/appearance.py's sanity checks on real toy photos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.work import toy_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
VARIANTS = {"resail", "spade_norm", "no_retrieval_loss", "clade", "clade_icpe"}


def run(script: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ablation_gpu_mode_rehearsed_on_the_cpu(tmp_path):
    """benchmarks/gpu.py --ablation --tiny: the GPU mode's code path (ablation.py's --prepare, one
    --seed process per seed side by side, --report) at tiny sizes on the CPU."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "ablation"
    result = run(BENCH / "gpu.py", "--ablation", "--tiny", "--out", str(out))["ablation"]
    plan = result["plan"]
    assert plan["seeds"] == [0, 1] and plan["steps"] == [1, 2] and plan["device"] == "cpu"
    assert set(result["ms_per_step"]) == VARIANTS and all(v > 0 for v in result["ms_per_step"].values())
    assert result["judge"]["judge_train"] == 6 and result["judge"]["segnet_steps"] == 2
    for seed in (0, 1):
        results = json.loads((out / f"seed{seed}" / "results.json").read_text())
        assert [p["step"] for p in results["points"]] == [1, 2] and results["batch_size"] == 2
        last = results["points"][-1]["variants"]
        assert set(last) == VARIANTS
    # The judge's ceiling and the appearance measure's floor (the val photos against the judge's own val photos).
    judge = results["judge"]
    assert 0 <= judge["real"]["miou"] <= 1 and judge["appearance_floor"]["colour"] > 0
    assert all(v["appearance"]["colour"] > 0 and v["appearance"]["texture"] >= 0 for v in last.values())
    # Only RESAIL's norm reads the guidance: zeroing or swapping it changes nothing else's output, to the bit.
    for name in VARIANTS - {"resail", "no_retrieval_loss"}:
        assert all(last[name]["probe"][k]["mean_abs_change"] == 0.0 for k in ("zero", "swap", "oracle")), name
        assert "mix" not in last[name]
    assert 0 < last["resail"]["mix"]["gamma_mean"] < 1
    assert "G_gan_r" in last["resail"]["loss"] and "G_gan_r" not in last["no_retrieval_loss"]["loss"]
    assert (out / "seed1" / "comparison_2.png").stat().st_size > 0
    final = result["final"]
    assert final["step"] == 2 and len(final["variants"]["clade_icpe"]["appearance_colour"]) == 2
    assert (out / "curve.png").stat().st_size > 0 and json.loads((out / "ablation.json").read_text()) == result


@pytest.mark.parametrize("mode", [[], ["--ablation"]], ids=["sections", "ablation"])
def test_gpu_benchmark_without_cuda_says_so_and_exits_0(mode):
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), *mode], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device visible" in done.stdout
    assert json.loads(done.stdout.splitlines()[-1]) == {"bench": "gpu", "cuda": False}


@pytest.fixture(scope="module")
def toy_photos(tmp_path_factory):
    """24 toy photos (128×128) and their label maps (native ids, 0 = void)."""
    root = toy_dataset(tmp_path_factory.mktemp("appearance"), n_train=24, n_val=1, size=128, seed=3)
    paths = sorted((root / "images" / "training").glob("*.jpg"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    labels = np.stack([np.asarray(Image.open(root / "annotations" / "training" / f"{p.stem}.png")) for p in paths])
    return images, labels


def test_appearance_measure_sanity(toy_photos):
    from resail.benchmarks import appearance

    images, labels = toy_photos

    def regions(x, lab):
        r = appearance.RegionStats()
        r.add(x, lab)
        return r

    a, lab_a = images[:12], labels[:12]
    real = regions(a, lab_a)
    flat = a.copy()  # every region painted with its class's mean colour over the set
    for c in np.unique(lab_a):
        flat[lab_a == c] = a[lab_a == c].mean(0).round().astype(np.uint8)
    same = appearance.distance(real, regions(a.copy(), lab_a))
    other = appearance.distance(real, regions(images[12:], labels[12:]))   # other real photos: the noise floor
    shuffled = appearance.distance(real, regions(a[..., [2, 0, 1]], lab_a))  # RGB → BRG: the colours swapped
    flat = appearance.distance(real, regions(flat, lab_a))
    assert same["colour"] == 0.0 and same["texture"] == 0.0 and same["missing"] == []
    assert 0 < other["colour"] and 0 < other["texture"]
    assert shuffled["colour"] > 3 * other["colour"]
    assert flat["colour"] > 3 * other["colour"] and flat["texture"] > 3 * other["texture"]
    assert abs(sum(c["weight"] for c in flat["classes"].values()) - 1) < 1e-9

"""benchmarks/ablation.py end to end at a toy size: data and judge, one seed's curve, the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"


def run(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ablation_curve_and_report(tmp_path):
    pytest.importorskip("matplotlib")
    run("--out", str(tmp_path), "--prepare", "--n-train", "8", "--n-val", "4", "--segnet-steps", "2")
    run("--out", str(tmp_path), "--seed", "0", "--steps", "2,1")
    results = json.loads((tmp_path / "seed0" / "results.json").read_text())
    assert [p["step"] for p in results["points"]] == [1, 2]
    last = results["points"][-1]["variants"]
    assert set(last) == {"resail", "spade_norm", "no_retrieval_loss"}
    # SPADE norms never see the guidance: zeroing or swapping it changes nothing, to the bit.
    assert all(last["spade_norm"]["probe"][k]["mean_abs_change"] == 0.0 for k in ("zero", "swap", "oracle"))
    assert "mix" not in last["spade_norm"] and 0 < last["resail"]["mix"]["gamma_mean"] < 1
    assert "G_gan_r" in last["resail"]["loss"] and "G_gan_r" not in last["no_retrieval_loss"]["loss"]
    assert (tmp_path / "seed0" / "comparison_2.png").stat().st_size > 0
    report = run("--out", str(tmp_path), "--report")
    assert report["final"]["step"] == 2 and len(report["final"]["variants"]["resail"]["miou"]) == 1
    assert (tmp_path / "curve.png").stat().st_size > 0

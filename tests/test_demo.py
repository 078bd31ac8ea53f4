"""`resail demo` runs every built stage end to end and reports where each output is."""

from pathlib import Path

from click.testing import CliRunner

from resail.cli import cli


def test_demo_runs_all_built_stages(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--n-train", "8", "--n-val", "3",
                                   "--jobs", "1", "--train-steps", "1", "--segnet-steps", "1", "-q"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("[demo]")]
    built = dict(ln.rsplit(": ", 1) for ln in lines if "not built yet" not in ln)
    for where in built.values():
        assert Path(where).exists(), where
    assert (tmp_path / "work" / "guidance" / "val_manifest.json").exists()
    assert (tmp_path / "work" / "index" / "manifest.json").exists()
    assert (tmp_path / "work" / "eval" / "demo" / "metrics.json").exists()
    assert (tmp_path / "synthesized.png").exists()
    assert not any("not built yet" in ln for ln in lines)

"""The package installs as `resail` (never top-level `index`/`pipeline`) and the CLI follows its conventions:
out-of-range values, run names that are paths and k above K' are usage errors (exit 2), never tracebacks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from resail.cli import cli, main
from resail.errors import StageError

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_runs_help(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True,
    )
    assert (target / "resail" / "cli.py").exists()
    assert (target / "resail" / "data" / "ade20k_instance_categoryMapping.txt").exists()
    for forbidden in ("index", "pipeline", "synth", "cli.py", "tests"):
        assert not (target / forbidden).exists(), f"{forbidden} leaked into site-packages"
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([str(target / "bin" / "resail"), "--help"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "index" in out.stdout and "guidance" in out.stdout
    where = subprocess.run([sys.executable, "-c", "import resail; print(resail.__file__)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(target))


def test_help_shows_defaults():
    res = CliRunner().invoke(cli, ["data", "toy", "--help"])
    assert res.exit_code == 0
    assert "[default: 200" in res.output and "--quiet" in res.output and "--debug" in res.output


@pytest.mark.parametrize("argv", [["index", "build", "--bogus"], ["data", "toy", "x", "--size", "3"],
                                  ["data", "toy", "x", "--format", "kitti"]])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Error" in err


def test_library_error_is_one_line_and_exits_1(capsys):
    from resail.errors import InputError

    @cli.command("fails")
    def fails():
        raise InputError("some/file.png: not a label map; pass a single-channel PNG")

    try:
        rc = main(["fails"])
    finally:
        cli.commands.pop("fails")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("error:") and "some/file.png" in err[0]


def test_unexpected_failure_is_one_line_and_debug_shows_traceback(tmp_path, capsys):
    bad = tmp_path / "work"
    bad.mkdir()
    rc = main(["guidance", "bake", str(bad), "--split", "val"])
    err = capsys.readouterr().err.strip().splitlines()
    # one error line, at most after the thread policy's info line (printed once work is about to start)
    assert rc == 1 and 1 <= len(err) <= 2 and all(line.startswith("threads: ") for line in err[:-1])
    assert err[-1].startswith("error:") and "resail index build" in err[-1]
    with pytest.raises(StageError):
        main(["guidance", "bake", str(bad), "--split", "val", "--debug"])


@pytest.mark.parametrize("argv", [
    ["data", "toy", "OUT", "--seed", "-1"],
    ["data", "toy", "OUT", "--seed", str(2**40)],
    ["data", "toy", "OUT", "--size", "100000x100000"],
    ["guidance", "bake", "WORK", "--split", "val", "--seed", "-1"],
    ["guidance", "preview-distort", "WORK", "--out", "x.png", "--seed", "-5"],
    ["train", "WORK", "--preset", "toy", "--seed", "-1"],
    ["synthesize", "WORK", "--run", "tiny", "--label", "L", "--out", "o.png", "--seed", "-1"],
])
def test_out_of_range_values_are_usage_errors(argv, tmp_path, capsys):
    (tmp_path / "L").write_bytes(b"")
    named = {"OUT": str(tmp_path / "o"), "WORK": str(tmp_path), "L": str(tmp_path / "L")}
    assert main([named.get(a, a) for a in argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", "WORK", "--preset", "toy", "--name", "../../x"],
    ["eval", "WORK", "--run", "../x"],
    ["synthesize", "WORK", "--run", "a/b", "--label", "L", "--out", "o.png"],
    ["serve", "WORK", "--run", ".."],
    ["guidance", "bake", "WORK", "--split", "val", "--k", "0"],
    ["guidance", "bake", "WORK", "--split", "val", "--k", "20", "--k-prefilter", "10"],
])
def test_paths_and_out_of_range_flags_are_usage_errors(argv, tmp_path, capsys):
    (tmp_path / "L").write_bytes(b"")
    argv = [str(tmp_path) if a == "WORK" else str(tmp_path / "L") if a == "L" else a for a in argv]
    assert main(argv) == 2
    assert not (tmp_path.parent / "x").exists()


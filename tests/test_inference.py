"""synth/inference.py, the loaded run that `resail eval`, `synthesize` and `serve` share: what it
reads of the work dir (snapshot, label tables, the guidance bake's parameters), that it generates
what synthesize writes, that an unusable device is one line for every command, and that none of
the three imports the trainer."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from builders.checks import SIDE, one_error_line
from builders.runs import TINY_SIZE
from resail.cli import main
from resail.pipeline.datasets import make_reader
from resail.synth.inference import LoadedRun, bake_params
from resail.synth.presets import get_preset
from resail.synth.synthesize import SynthesizeConfig, synthesize
from resail.workdir import WorkDir


@pytest.fixture(scope="module")
def user_label(shared_tiny_run, tmp_path_factory):
    """A toy val label map of the shared tiny run, saved as a plain grey PNG."""
    reader = make_reader("ade20k", shared_tiny_run.root)
    label = tmp_path_factory.mktemp("inference") / "user_label.png"
    Image.fromarray(reader.load(reader.records("val")[0]).label_map.astype(np.uint8), mode="L").save(label)
    return label


def test_loaded_run_generates_what_synthesize_writes(shared_tiny_run, user_label, tmp_path, one_thread):
    work = shared_tiny_run.work
    loaded = LoadedRun.load(work, "tiny", device="cpu")
    assert (loaded.step, loaded.size, loaded.dataset) == (7, (TINY_SIZE, TINY_SIZE), "ade20k")
    assert loaded.snapshot.name == "snapshot-00000007.pt" and not loaded.G.training
    assert loaded.labels.drawable == list(get_preset("toy").label_ids[1:])  # the classes the run can draw
    res = synthesize(SynthesizeConfig(work, "tiny", user_label, tmp_path / "o.png", k=5))
    np.testing.assert_array_equal(loaded.generate(res.label_map[None], res.guidance[None])[0], res.image)


def test_a_user_label_map_gets_guidance_built_with_the_bake_s_parameters(shared_tiny_run, tmp_path):
    work = shared_tiny_run.work
    baked = WorkDir(work).guidance_manifest("val")["params"]  # the tiny run bakes val only
    assert bake_params(work) == baked and LoadedRun.load(work, "tiny", device="cpu").bake == baked
    assert bake_params(tmp_path) == {}  # nothing baked: the search's and the composer's own defaults


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device,message", [("cuda", "CUDA is not available"), ("tpu", "not a torch device")])
def test_an_unusable_device_is_one_line_for_every_inference_command(shared_tiny_run, tmp_path, capsys, device,
                                                                    message):
    work = shared_tiny_run.work
    label = tmp_path / "l.png"
    Image.fromarray(np.ones((SIDE, SIDE), np.uint8)).save(label)
    for argv in (["synthesize", str(work), "--run", "tiny", "--label", str(label), "--out", str(tmp_path / "o.png")],
                 ["eval", str(work), "--run", "tiny", "--no-fid", "--no-seg"]):
        code = main([*argv, "--device", device])
        if device == "tpu":  # no device at all: a usage error of the flag (exit 2)
            assert code == 2 and capsys.readouterr().err.splitlines()[-1] == \
                "Error: Invalid value for '--device': device 'tpu': not a torch device; use auto, cpu, cuda or cuda:N"
            continue
        assert code == 1
        line = one_error_line(capsys)
        assert message in line and "corrupt" not in line


def test_inference_never_imports_the_trainer():
    """eval, synthesize and serve load a run through synth/inference.py and synth/checkpoint.py only."""
    code = ("import sys, resail.synth.eval, resail.synth.synthesize, resail.synth.serve; "
            "print(sorted(m for m in sys.modules if m == 'resail.synth.train'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

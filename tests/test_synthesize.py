"""Synthesize from a user's label map on a tiny toy run: end to end, reproducible by seed, local
resampling that leaves the other segments' guidance alone, colour maps in and the label map out in
both forms, and bad input. The loaded run it shares with eval and serve: test_inference.py."""


import numpy as np
import pytest
import torch
from PIL import Image

from builders.runs import TINY_SIZE as SIZE
from resail.cli import main
from resail.errors import ConfigError, InputError
from resail.pipeline.datasets import make_reader
from resail.synth.presets import get_preset
from resail.synth.synthesize import SynthesizeConfig, format_segments, synthesize


@pytest.fixture(scope="module")
def run(shared_tiny_run, tmp_path_factory):
    """The shared tiny run (synthesize only reads it) and a user label map: a toy val label map
    saved as a plain grey PNG."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    reader = make_reader("ade20k", shared_tiny_run.root)
    sample = reader.load(reader.records("val")[0])
    label = tmp_path_factory.mktemp("synth") / "user_label.png"
    Image.fromarray(sample.label_map.astype(np.uint8), mode="L").save(label)
    yield shared_tiny_run.work, label
    torch.set_num_threads(n)


def test_synthesize_end_to_end_is_reproducible_by_seed(run, tmp_path):
    work, label = run

    def go(name, **kw):
        return synthesize(SynthesizeConfig(work, "tiny", label, tmp_path / f"{name}.png",
                                           guidance_out=tmp_path / f"{name}_g.png", k=5, **kw))

    best = go("best")
    assert best.image.shape == (SIZE, SIZE, 3) and best.image.dtype == np.uint8
    assert best.guidance.shape == (SIZE, SIZE, 3) and best.guidance.any()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "best.png").convert("RGB")), best.image)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "best_g.png").convert("RGB")), best.guidance)
    assert all(s.rank in (0, -1) for s in best.segments)
    # G took channels of the run's compact label table; the result reports native ids
    toy_ids = get_preset("toy").label_ids
    assert set(np.unique(best.label_map)) <= set(toy_ids) and best.label_map.max() >= len(toy_ids)
    go("best2")
    assert (tmp_path / "best.png").read_bytes() == (tmp_path / "best2.png").read_bytes()

    a, c = go("s3", seed=3), go("s4", seed=4)
    go("s3b", seed=3)
    assert (tmp_path / "s3.png").read_bytes() == (tmp_path / "s3b.png").read_bytes()
    # different draws among the top-k: different guidance, and G follows the guidance
    assert [s.match_id for s in a.segments] != [s.match_id for s in c.segments]
    assert not np.array_equal(a.guidance, c.guidance) and not np.array_equal(a.image, c.image)
    text = format_segments(a)
    assert len(text.splitlines()) == len(a.segments) + 1 and "train segment" in text


def test_resample_changes_only_the_chosen_segment(run, tmp_path):
    work, label = run
    base = synthesize(SynthesizeConfig(work, "tiny", label, tmp_path / "base.png", k=5, seed=0))
    # the largest stuff segment with several candidates: its retrieved mask stays inside its own
    # query mask, so no other pixel may change (things may spill over stuff, by the clean rules)
    multi = [s for s in base.segments if s.candidates > 1 and not s.is_thing]
    assert multi, "the toy label map has no stuff segment with several matches"
    target = max(multi, key=lambda s: (base.segment_map == s.index).sum())
    for rseed in range(1, 30):
        edit = synthesize(SynthesizeConfig(work, "tiny", label, tmp_path / "edit.png", k=5, seed=0,
                                           resample=(target.index,), resample_seed=rseed))
        if edit.segments[target.index].match_id != target.match_id:
            break
    assert edit.segments[target.index].match_id != target.match_id
    assert edit.segments[target.index].resampled and edit.segments[target.index].previous_match == target.match_id
    others = [s.match_id for s in edit.segments if s.index != target.index]
    assert others == [s.match_id for s in base.segments if s.index != target.index]
    outside = base.segment_map != target.index
    assert np.array_equal(edit.guidance[outside], base.guidance[outside])
    assert not np.array_equal(edit.guidance[~outside], base.guidance[~outside])


def test_synthesize_cli_prints_segments_and_rejects_bad_input(run, tmp_path, capsys):
    work, label = run
    out = tmp_path / "o.png"
    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(label), "--out", str(out), "--k", "5",
                 "--resample", "0", "--guidance-out", str(tmp_path / "g.png"), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "seg" in printed.splitlines()[0] and "resampled" in printed
    assert out.exists() and (tmp_path / "g.png").exists()

    bad = tmp_path / "bad.png"
    lm = np.asarray(Image.open(label)).copy()
    lm[:4, :4] = 200  # ADE20K ids stop at 150
    Image.fromarray(lm, mode="L").save(bad)
    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(bad), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[200]" in err[0] and "class table" in err[0]
    lm[:4, :4] = 1  # an ADE20K class (wall) the toy run's label table lacks
    Image.fromarray(lm, mode="L").save(bad)
    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(bad), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.png: class id 1 (wall) not in the label table" in err[0]
    assert "paint only those" in err[0] and "22 sky" not in err[0] and "3 sky" in err[0]

    inst = tmp_path / "inst.png"
    Image.fromarray(np.zeros((SIZE // 2, SIZE), np.uint8), mode="L").save(inst)
    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(label), "--instance", str(inst),
                 "--out", str(out), "--quiet"]) == 1
    assert "must match" in capsys.readouterr().err

    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(label), "--out", str(out),
                 "--resample", "x,1"]) == 2
    with pytest.raises(InputError, match="out of range"):
        synthesize(SynthesizeConfig(work, "tiny", label, out, resample=(999,)))
    with pytest.raises(InputError, match="no such run"):
        synthesize(SynthesizeConfig(work, "nope", label, out))


def test_synthesize_reads_colour_maps_and_writes_the_label_map_it_took(run, tmp_path, capsys):
    work, label = run
    a = synthesize(SynthesizeConfig(work, "tiny", label, tmp_path / "a.png", k=5, label_out=tmp_path / "a_ids.png"))
    assert a.label_read_as.startswith("ids") and a.label_out == tmp_path / "a_ids.png"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a_ids.png")), a.label_map)  # ADE20K ids
    # the colour form of the map, written by the CLI, reads back as the same map and gives the same bytes
    color = tmp_path / "a_color.png"
    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(label), "--out", str(tmp_path / "c.png"),
                 "--k", "5", "--label-out", str(color), "--label-out-format", "color", "--quiet"]) == 0
    assert f"label map -> {color}" in capsys.readouterr().out
    assert np.asarray(Image.open(color)).shape == (SIZE, SIZE, 3)
    b = synthesize(SynthesizeConfig(work, "tiny", color, tmp_path / "b.png", k=5))
    assert b.label_read_as.startswith("color")
    np.testing.assert_array_equal(b.label_map, a.label_map)
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert main(["synthesize", str(work), "--run", "tiny", "--label", str(color), "--out", str(tmp_path / "d.png"),
                 "--label-format", "ids", "--quiet"]) == 1
    assert "not class ids; read it as label format color" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="label output format 'jpeg'"):
        SynthesizeConfig(work, "tiny", label, tmp_path / "e.png", label_out_format="jpeg")

"""The baselines against their authors' own code: CLADE-ICPE's positional maps, the generators'
parameter counts, and `resail model import` + generation reproducing the outputs of SPADE's,
CLADE's, CLADE-ICPE's and the official RESAIL generators (reference data made by their code:
tests/data/baselines/README.md); the importer's refusals; a full-size import, shapes only."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from builders.baselines import dataset_work, listings, reference, reference_state
from resail.cli import main
from resail.errors import InputError
from resail.synth.baselines.authors import AUTHORS_EDGE_PRESETS, baseline_network
from resail.synth.baselines.icpe import flip_maps, icpe_maps, skip_id
from resail.synth.baselines.importers import ImportConfig, convert, import_generator, infer_network
from resail.synth.data import to_tensor
from resail.synth.generator import build_generator
from resail.synth.inference import LoadedRun
from resail.synth.networks import count_parameters
from resail.synth.presets import get_preset

META, ARRAYS = reference()
LISTINGS = listings()
CASES = sorted(META["cases"])

pytestmark = pytest.mark.usefixtures("one_thread")


def native(dataset: str, raw: np.ndarray) -> np.ndarray:
    """The reference label file's values as resail's native ids (COCO-Stuff: v + 1, 255 → 0)."""
    raw = raw.astype(np.int32)
    return np.where(raw == 255, 0, raw + 1) if dataset == "cocostuff" else raw


def authors_file(path, case: str):
    """The weights file the authors' code loaded for `case` (regenerated from its key listing)."""
    torch.save(reference_state(LISTINGS[case], META["seed"]), path)
    return path


def import_case(tmp_path, case: str, name: str | None = None):
    c = META["cases"][case]
    work = dataset_work(tmp_path / "work", c["dataset"])
    size = c.get("size") or [c["crop_size"], c["crop_size"]]
    cfg = ImportConfig(source=c["source"], path=authors_file(tmp_path / f"{case}.pth", case), work=work,
                       name=name or case, crop_size=size[0], aspect_ratio=size[0] / size[1])
    return work, import_generator(cfg)


# ---------------------------------------------------------------- positional maps


@pytest.mark.parametrize("key, dataset", [("ade20k", "ade20k"), ("cocostuff", "cocostuff"), ("tricky", "ade20k")])
def test_icpe_maps_equal_the_authors_bit_for_bit(key, dataset):
    """CLADE's cal_connectedComponents on the label file; COCO-Stuff's person (value 0) is the
    skipped class and its unlabeled (255) is not."""
    ours = icpe_maps(native(dataset, ARRAYS[f"{key}__label"]), skip_id(dataset))
    np.testing.assert_array_equal(ours, ARRAYS[f"icpe__{key}"])
    if dataset == "cocostuff":
        raw = ARRAYS["cocostuff__label"]
        assert not ours[:, raw == 0].any() and ours[:, raw == 255].any()


def test_mirrored_maps_are_the_mirrored_label_maps():
    lab = native("ade20k", ARRAYS["ade20k__label"])
    np.testing.assert_allclose(flip_maps(icpe_maps(lab)), icpe_maps(lab[:, ::-1]), atol=1e-6)


# ---------------------------------------------------------------- parameter counts


def test_parameter_counts_equal_the_authors_full_size_generators():
    """G of every preset with the authors' options ("G" of `resail model summary`, on the meta
    device) against their generators' counts, recorded from their code at full size."""
    for case in [c for c in CASES if META["cases"][c]["source"] != "resail-official"]:  # RESAIL: test_networks
        c = META["cases"][case]
        preset = get_preset(c["dataset"])
        if c["source"] == "spade":  # the authors' SPADE feeds the edge map where CLADE's does
            net = baseline_network(preset, "spade", preset.name in AUTHORS_EDGE_PRESETS)
        else:
            net = baseline_network(preset, c["source"])
        assert count_parameters(build_generator(net, device="meta")) == META["parameters"][case], case


@pytest.mark.parametrize("norm", ["clade", "clade-icpe"])
def test_model_summary_prints_the_authors_counts_with_their_defaults(norm, capsys):
    """The CLADE norms take the edge map on Cityscapes and COCO-Stuff by default, as their authors feed it."""
    for dataset in ("ade20k", "cityscapes", "cocostuff"):
        assert main(["model", "summary", "--preset", dataset, "--norm", norm, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["G"] == META["parameters"][f"{norm}-{dataset}"]


# ---------------------------------------------------------------- import + generate


@pytest.mark.parametrize("case", CASES)
def test_imported_generator_reproduces_the_authors_output(case, tmp_path):
    """The label (and instance) file as the authors' loader read it → resail's resize, edge map,
    positional maps and one-hot → the imported G: their output to float16 precision."""
    c = META["cases"][case]
    work, result = import_case(tmp_path, case)
    run = LoadedRun.load(work, case, device="cpu")
    assert not run.uses_guidance or c["source"] == "resail-official"
    label = native(c["dataset"], ARRAYS[f"{c['dataset']}__label"])
    instance = ARRAYS.get(f"{c['dataset']}__instance")
    small = run.at_size(label)
    extras = {k: torch.from_numpy(v)[None] for k, v in run.extras(label, instance).items()}
    guidance = to_tensor(ARRAYS["guidance96"])[None] if c["source"] == "resail-official" else torch.zeros(1, 3, 1, 1)
    out = run.forward(torch.from_numpy(run.channels.to_channels(small[None], case)), guidance, extras)[0].numpy()
    want = ARRAYS[f"{case}__output"].astype(np.float32)
    s = c["stride"]
    np.testing.assert_allclose(out[:, ::s, ::s], want, atol=2e-3, rtol=0)
    assert result.inferred["ngf"] == c["ngf"]


@pytest.mark.parametrize("case", ["clade-icpe-cocostuff", "spade-cityscapes"])
def test_model_import_then_synthesize_cli(case, tmp_path, capsys):
    """The two commands on the label and instance PNGs: the image is the authors' output in 8 bits."""
    c = META["cases"][case]
    work = dataset_work(tmp_path / "work", c["dataset"])
    size = c["size"]
    assert main(["model", "import", "--from", c["source"], str(authors_file(tmp_path / "G.pth", case)), "--work",
                 str(work), "--name", "imported", "--crop-size", str(size[0]), "--aspect-ratio",
                 str(size[0] / size[1]), "--ngf", "4", "--instance", "--quiet"]) == 0   # flags that agree pass
    said = capsys.readouterr().out
    assert "ngf 4" in said and "instance edge map yes" in said
    label, inst, out = tmp_path / "label.png", tmp_path / "inst.png", tmp_path / "out.png"
    Image.fromarray(ARRAYS[f"{c['dataset']}__label"]).save(label)
    raw_inst = ARRAYS[f"{c['dataset']}__instance"]
    Image.fromarray(raw_inst.astype(np.uint16 if raw_inst.max() > 255 else np.uint8)).save(inst)
    assert main(["synthesize", str(work), "--run", "imported", "--label", str(label), "--instance", str(inst),
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    got = np.asarray(Image.open(out).convert("RGB")).transpose(2, 0, 1).astype(int)
    want = np.round((ARRAYS[f"{case}__output"].astype(np.float64) + 1) * 127.5)
    s = c["stride"]
    assert np.abs(got[:, ::s, ::s] - want).max() <= 1


def test_full_size_imports_read_the_authors_defaults_off_the_tensors(tmp_path):
    """The authors' default generators (key listings recorded at full size), as meta tensors: the
    import infers ngf 64, the edge map and the size, and maps every key."""
    for case in ("spade-cocostuff", "clade-icpe-cityscapes"):
        c = META["cases"][case]
        work = dataset_work(tmp_path / case, c["dataset"])
        state = {k: torch.empty(shape, device="meta", dtype=torch.int64 if k.endswith("num_batches_tracked")
                                else torch.float32) for k, shape in LISTINGS[f"{case}-full"]}
        cfg = ImportConfig(source=c["source"], path=tmp_path / "G.pth", work=work, name="full")
        net, layout, inferred, _ = infer_network(state, cfg, c["dataset"])
        assert (net.ngf, net.edges, net.norm) == (64, True, c["source"])
        assert (net.width, net.height) == ((512, 256) if c["dataset"] == "cityscapes" else (256, 256))
        G = build_generator(net, device="meta")
        converted, _ = convert(state, G, cfg, layout)
        assert converted.keys() == G.state_dict().keys()
        assert sum(p.numel() for p in G.parameters()) == META["parameters"][case]


# ---------------------------------------------------------------- refusals


def test_import_refuses_what_it_cannot_map_with_one_line(tmp_path, capsys):
    c = META["cases"]["spade-ade20k"]
    work = dataset_work(tmp_path / "work", c["dataset"])
    state = reference_state(LISTINGS["spade-ade20k"])

    def refused(state_or_source, match, source="spade", crop_size=32, **kw):
        path = tmp_path / "G.pth"
        torch.save(state_or_source, path)
        with pytest.raises(InputError, match=match) as e:
            import_generator(ImportConfig(source=source, path=path, work=work, name="x", crop_size=crop_size, **kw))
        assert "\n" not in str(e.value)

    refused(state, "holds a spade generator .*its source is spade", source="clade")
    refused({k: v for k, v in state.items() if k != "up_1.conv_0.weight_v"}, "missing, first up_1.conv_0.weight_v")
    refused({**state, "up_1.extra.weight": torch.zeros(3)}, "does not have, first up_1.extra.weight")
    refused({**state, "fc.weight": state["fc.weight"][:, :140]}, "fc.weight takes 140 input channels")
    refused(state, "needs a multiple of 32", crop_size=48)
    refused(state, "has no up_4 block", upsampling="most")
    refused(state, "ngf 64: .* has ngf 4", ngf=64)
    refused(state, "no_instance False: .* trained without the instance edge map", no_instance=False)
    refused([1, 2], "expected a bare state dict")
    # a module. prefix is dropped; a missing num_batches_tracked is set to 0 and said so
    path = tmp_path / "ok.pth"
    torch.save({"module." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    result = import_generator(ImportConfig(source="spade", path=path, work=work, name="ok", crop_size=32))
    assert any("num_batches_tracked" in n for n in result.notes)
    with pytest.raises(InputError, match="already holds checkpoints"):
        import_generator(ImportConfig(source="spade", path=path, work=work, name="ok", crop_size=32))
    folder = dataset_work(tmp_path / "folder", "ade20k")
    m = json.loads((folder / "segments" / "manifest.json").read_text())
    m["params"]["dataset"] = "folder"
    (folder / "segments" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="authors' label layout is not known"):
        import_generator(ImportConfig(source="spade", path=path, work=folder, name="f", crop_size=32))
    assert main(["model", "import", "--from", "clade", str(path), "--work", str(work), "--name", "y"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("Error: Invalid value for '--from': ")


def test_imported_run_records_its_origin_and_mapping(tmp_path):
    work, result = import_case(tmp_path, "clade-icpe-cocostuff", "icpe")
    record = json.loads((result.run_dir / "import.json").read_text())
    assert record["source"] == "clade-icpe" and len(record["sha256"]) == 64
    assert record["label_channels"]["authors_channel_of_resail_channel"][:3] == [182, 0, 1]
    assert result.config.origin == "clade-icpe" and result.config.net.icpe and result.config.net.edges
    assert dataclasses.replace(result.config.net, edges=False).input_nc == 183

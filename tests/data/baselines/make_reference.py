"""Make the reference data of tests/test_baselines.py from the authors' own code (run once, by hand).

    python tests/data/baselines/make_reference.py --spade SPADE_DIR --clade CLADE_DIR --resail RESAIL_DIR

SPADE_DIR, CLADE_DIR and RESAIL_DIR are checkouts of NVlabs/SPADE, tzt101/CLADE and
yupeng1111/RESAIL-For-SIS (README.md here names the commits); SPADE needs the
Synchronized-BatchNorm-PyTorch package its README installs into models/networks/ (CLADE's copy
does). Nothing of their code is in this repository: this script imports their modules from the
checkouts and runs them. For every case it builds the authors' generator with their options (small
widths), fills it with `builders.baselines.reference_state` (random weights that the tests can
regenerate from the key listing), saves it where their test pipeline loads it, fabricates a
one-image dataset in their folder layout, and runs their own data loader, `preprocess_input` and
generator in eval mode (the official RESAIL code's loader needs its retrieval database, so its
generator gets the one-hot and guidance as its `preprocess_input` builds them). It also records
their full-size generators' parameter counts and two full-size key listings, and CLADE's
`cal_connectedComponents` maps of three label maps.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import subprocess
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for builders
from builders.baselines import reference_state  # noqa: E402

SEED = 0
REPO_PACKAGES = ("models", "data", "util", "options", "trainers")
# (case, repo, dataset_mode, extra flags, crop size, output stride)
CASES = [
    ("spade-ade20k", "spade", "ade20k", [], 32, 1),
    ("spade-cityscapes", "spade", "cityscapes", [], 128, 2),
    ("spade-cocostuff", "spade", "coco", [], 32, 1),
    ("clade-ade20k", "clade", "ade20k", ["--norm_mode", "clade"], 32, 1),
    ("clade-cityscapes", "clade", "cityscapes", ["--norm_mode", "clade"], 128, 2),
    ("clade-cocostuff", "clade", "coco", ["--norm_mode", "clade"], 32, 1),
    ("clade-icpe-ade20k", "clade", "ade20k", ["--norm_mode", "clade", "--add_dist"], 32, 1),
    ("clade-icpe-cityscapes", "clade", "cityscapes", ["--norm_mode", "clade", "--add_dist"], 128, 2),
    ("clade-icpe-cocostuff", "clade", "coco", ["--norm_mode", "clade", "--add_dist"], 32, 1),
]
# official RESAIL: (case, dataset, label_nc, don't-care channel); crop 96 (its AdaIN conv needs a 3x3 start)
RESAIL_CASES = [("resail-official-ade20k", "ade20k", 151, False),
                ("resail-official-cocostuff", "cocostuff", 182, True),
                ("resail-official-cocostuff-184", "cocostuff", 183, True)]
FULL_LISTINGS = ("spade-cocostuff", "clade-icpe-cityscapes")
DATASET = {"ade20k": "ade20k", "cityscapes": "cityscapes", "coco": "cocostuff"}


# ---------------------------------------------------------------- fabricated label maps


def blocks(rng, h: int, w: int, values: list[int], cell: int) -> np.ndarray:
    """A label map of random rectangles of `values`, with single stray pixels."""
    coarse = rng.choice(values, size=(-(-h // cell), -(-w // cell)))
    lab = np.kron(coarse, np.ones((cell, cell), np.int64))[:h, :w]
    stray = rng.random((h, w)) < 0.03
    lab[stray] = rng.choice(values, size=int(stray.sum()))
    return lab


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.RandomState(7)
    ade = blocks(rng, 40, 48, [0, 1, 3, 5, 13, 21, 128, 150], 6).astype(np.uint8)
    coco = blocks(rng, 48, 40, [0, 2, 105, 123, 156, 181, 255], 5).astype(np.uint8)
    inst = coco.copy()  # SPADE's instance map: the label, with instance counters painted over things
    for count, (y, x, h, w) in enumerate([(4, 3, 12, 10), (20, 18, 14, 15), (30, 2, 10, 8)]):
        inst[y:y + h, x:x + w] = count
    city = blocks(rng, 80, 160, [0, 7, 8, 11, 21, 23, 24, 26, 33], 9).astype(np.uint8)
    city_inst = city.astype(np.int32)
    for k, (y, x, h, w) in enumerate([(10, 20, 30, 25), (40, 90, 25, 40), (5, 120, 20, 20)]):
        cls = (24, 26, 26)[k]
        city_inst[y:y + h, x:x + w] = cls * 1000 + k
        city[y:y + h, x:x + w] = cls
    tricky = blocks(rng, 20, 24, [0, 1, 2, 255], 1).astype(np.uint8)  # many tiny components
    return {"ade20k__label": ade, "cocostuff__label": coco, "cocostuff__instance": inst,
            "cityscapes__label": city, "cityscapes__instance": city_inst, "tricky__label": tricky,
            "guidance96": rng.randint(0, 256, (96, 96, 3)).astype(np.uint8)}


def write_datasets(root: Path, x: dict) -> dict[str, Path]:
    """One val image per dataset in the authors' folder layouts (and a train copy, which their
    distance-map scripts expect)."""
    def photo(lab):
        return Image.fromarray(np.random.RandomState(1).randint(0, 256, (*lab.shape, 3), np.uint8))

    ade = root / "ADEChallengeData2016"
    for split, tag in (("validation", "val"), ("training", "train")):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        photo(x["ade20k__label"]).save(ade / "images" / split / f"ADE_{tag}_00000001.jpg")
        Image.fromarray(x["ade20k__label"]).save(ade / "annotations" / split / f"ADE_{tag}_00000001.png")
    coco = root / "cocostuff"
    for split in ("val", "train"):
        for sub in ("img", "label", "inst"):
            (coco / f"{split}_{sub}").mkdir(parents=True)
        photo(x["cocostuff__label"]).save(coco / f"{split}_img" / "000000000001.jpg")
        Image.fromarray(x["cocostuff__label"]).save(coco / f"{split}_label" / "000000000001.png")
        Image.fromarray(x["cocostuff__instance"]).save(coco / f"{split}_inst" / "000000000001.png")
    city = root / "cityscapes"
    for split in ("val", "train"):
        gt, img = city / "gtFine" / split / "frankfurt", city / "leftImg8bit" / split / "frankfurt"
        gt.mkdir(parents=True)
        img.mkdir(parents=True)
        stem = "frankfurt_000000_000001"
        photo(x["cityscapes__label"]).save(img / f"{stem}_leftImg8bit.png")
        Image.fromarray(x["cityscapes__label"]).save(gt / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(x["cityscapes__instance"].astype(np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")
    return {"ade20k": ade, "coco": coco, "cityscapes": city}


# ---------------------------------------------------------------- running their code


_REPO_PATHS: list[str] = []


def use_repo(path: Path) -> None:
    """Make `path` the source of the modules models, data, util, options (each repo has its own)."""
    for name in list(sys.modules):
        if name.split(".")[0] in REPO_PACKAGES:
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p not in _REPO_PATHS]
    _REPO_PATHS.append(str(path))
    sys.path.insert(0, str(path))


def stub_modules() -> None:
    """util/util.py imports dill and util/html.py dominate, neither needed to run a generator."""
    dill = types.ModuleType("dill")
    dill.extend = lambda *a, **k: None
    sys.modules["dill"] = dill
    dominate = types.ModuleType("dominate")
    dominate.tags = types.ModuleType("dominate.tags")
    sys.modules.update({"dominate": dominate, "dominate.tags": dominate.tags})


def test_options(argv: list[str]):
    from options.test_options import TestOptions

    sys.argv = ["test.py", *argv]
    with contextlib.redirect_stdout(io.StringIO()):
        return TestOptions().parse()


def generator_listing(opt) -> tuple[list, int]:
    import models.networks as networks

    G = networks.find_network_using_name(opt.netG, "generator")(opt)
    return [[k, list(v.shape)] for k, v in G.state_dict().items()], sum(p.numel() for p in G.parameters())


def run_case(repo: Path, case: tuple, roots: dict, ck: Path) -> tuple[list, np.ndarray, dict]:
    """Their test pipeline on the fabricated image: (listing, output C×H×W, options)."""
    name, _, mode, flags, crop, _ = case
    argv = ["--dataset_mode", mode, "--dataroot", str(roots[mode]), "--gpu_ids", "-1", "--checkpoints_dir", str(ck),
            "--name", name, "--ngf", "4", "--crop_size", str(crop), "--load_size", str(crop), "--nThreads", "0",
            "--batchSize", "1", *flags]
    opt = test_options(argv)
    if "--add_dist" in flags:
        make_distance_maps(mode, roots[mode])
    listing, _ = generator_listing(opt)
    (ck / name).mkdir(parents=True, exist_ok=True)
    torch.save(reference_state(listing, SEED), ck / name / "latest_net_G.pth")
    from models.pix2pix_model import Pix2PixModel

    import data

    model = Pix2PixModel(opt)
    model.eval()
    with contextlib.redirect_stdout(io.StringIO()):
        (batch,) = list(data.create_dataloader(opt))
    out = model(batch, mode="inference")[0].detach().numpy()
    size = [opt.crop_size, round(opt.crop_size / opt.aspect_ratio)]
    return listing, out, {"argv": argv, "upsampling": opt.num_upsampling_layers, "size": size,
                          "no_instance": opt.no_instance, "semantic_nc": opt.semantic_nc}


def make_distance_maps(mode: str, root: Path) -> None:
    """CLADE's own script writes the .npy maps its loader reads."""
    from util import cal_dist_masks

    with contextlib.redirect_stdout(io.StringIO()):
        if mode == "ade20k":
            cal_dist_masks.make_dist_train_val_ade_datasets(str(root))
        elif mode == "coco":
            cal_dist_masks.make_dist_train_val_coco_datasets(str(root) + "/")
        else:
            cal_dist_masks.make_dist_train_val_cityscapes_datasets(str(root) + "/")


def full_size(repo: str, mode: str, flags: list[str], root: Path) -> tuple[list, int]:
    """The authors' generator at their default options for the dataset."""
    return generator_listing(test_options(["--dataset_mode", mode, "--dataroot", str(root), "--gpu_ids", "-1",
                                           *flags]))


def resail_official(case: tuple, x: dict, full: bool = False) -> tuple[list, np.ndarray | None, dict]:
    """The official RESAIL generator (SIN norm) on a label map and guidance, its one-hot built as its
    `preprocess_input` builds it from its loader's `class_label` (its test transform: torchvision's
    Resize with PIL NEAREST to the crop size, then ToTensor·255; its data package does not import
    on a current torch); `full`: the default sizes, no run."""
    from models.networks.generator import SPADEGenerator
    from torchvision import transforms

    name, dataset, label_nc, dontcare = case
    crop = (512 if dataset == "cityscapes" else 256) if full else 96
    opt = Namespace(ngf=64 if full else 4, crop_size=crop, load_size=crop, aspect_ratio=2.0 if dataset == "cityscapes"
                    else 1.0, num_upsampling_layers="more" if dataset == "cityscapes" else "normal", use_vae=False,
                    semantic_nc=label_nc + dontcare, norm_G="spectralspadesyncbatch3x3", norm_way="", netG="spade",
                    preprocess_mode="resize_and_crop", isTrain=False, no_flip=True)
    G = SPADEGenerator(opt)
    listing = [[k, list(v.shape)] for k, v in G.state_dict().items()]
    options = {"label_nc": label_nc, "contain_dontcare_label": dontcare, "semantic_nc": opt.semantic_nc,
               "ngf": opt.ngf, "crop_size": crop, "upsampling": opt.num_upsampling_layers,
               "parameters": sum(p.numel() for p in G.parameters())}
    if full:
        return listing, None, options
    G.load_state_dict(reference_state(listing, SEED))
    G.eval()
    label = Image.fromarray(x[f"{dataset}__label"])
    transform = transforms.Compose([transforms.Resize([crop, crop], interpolation=Image.NEAREST),
                                    transforms.ToTensor()])
    class_label = transform(label) * 255
    class_label[class_label == 255] = label_nc  # the COCO loader's don't care (ADE20K has no 255)
    one_hot = torch.zeros(1, opt.semantic_nc, crop, crop).scatter_(1, class_label[None].long(), 1.0)
    guidance = torch.from_numpy(x["guidance96"]).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        out = G(one_hot, params={"retrieval_image": guidance})[0].numpy()
    return listing, out, options


def commit(path: Path) -> str:
    """The checkout's commit: `git rev-parse HEAD`, or a COMMIT file (an exported tree)."""
    found = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return found.strip() or ((path / "COMMIT").read_text().strip() if (path / "COMMIT").is_file() else "unknown")


def main() -> None:
    ap = argparse.ArgumentParser()
    for repo in ("spade", "clade", "resail"):
        ap.add_argument(f"--{repo}", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/baselines-reference"))
    args = ap.parse_args()
    stub_modules()
    x = inputs()
    roots = write_datasets(args.work / "data", x)
    repos = {"spade": args.spade, "clade": args.clade}
    meta = {"seed": SEED, "cases": {}, "parameters": {}, "commits": {k: commit(v) for k, v in vars(args).items()
                                                                      if k != "work"}}
    arrays = dict(x)
    listing_out = {}
    for case in CASES:
        name, repo, mode, flags, _, stride = case
        use_repo(repos[repo])
        listing, out, options = run_case(repos[repo], case, roots, args.work / "checkpoints")
        listing_out[name] = listing
        arrays[f"{name}__output"] = out[:, ::stride, ::stride].astype(np.float16)
        meta["cases"][name] = {"source": name.rsplit("-", 1)[0], "dataset": DATASET[mode], "stride": stride,
                               "ngf": 4, **options}
        full_listing, count = full_size(repo, mode, flags, roots[mode])
        meta["parameters"][name] = count
        if name in FULL_LISTINGS:
            listing_out[f"{name}-full"] = full_listing
    use_repo(args.resail)
    for case in RESAIL_CASES:
        listing, out, options = resail_official(case, x)
        listing_out[case[0]] = listing
        arrays[f"{case[0]}__output"] = out[:, ::2, ::2].astype(np.float16)
        meta["cases"][case[0]] = {"source": "resail-official", "dataset": case[1], "stride": 2, **options}
        meta["parameters"][case[0]] = resail_official(case, x, full=True)[2]["parameters"]
    use_repo(repos["clade"])
    from util.cal_dist_masks import cal_connectedComponents

    for key in ("ade20k", "cocostuff", "tricky"):
        h, w = cal_connectedComponents(x[f"{key}__label"], "norm")
        arrays[f"icpe__{key}"] = np.stack([h, w])
    np.savez_compressed(HERE / "reference.npz", **arrays)
    (HERE / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    with gzip.open(HERE / "listings.json.gz", "wt") as f:
        json.dump(listing_out, f, separators=(",", ":"))


if __name__ == "__main__":
    main()

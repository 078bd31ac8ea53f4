"""`resail compare`: the `resail eval` results of several runs in one table, as the papers print theirs.

One row per run (FID, KID, mIoU, pixel accuracy of the generated images) and a last row with the
segmenter's score on the real images, its ceiling. Numbers are only comparable under one
protocol, so the table first checks that every run was scored the same way: split, images
(their ids' fingerprint), resolution, Inception weights, segmenter, its weights and id space.
A difference is an error naming the field and the two runs (`allow_mixed` prints anyway, with
the differing fields listed under the table).
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError
from ...workdir import WorkDir

METHODS = {"resail": "RESAIL", "spade": "SPADE", "clade": "CLADE", "clade-icpe": "CLADE-ICPE"}


def protocol_key(m: dict) -> dict:
    """What must agree between two runs' metrics.json for their numbers to share a table."""
    p = m.get("protocol", {})
    seg = p.get("segmentation") or {}
    return {"split": m.get("split"), "n_images": m.get("n_images"), "resolution": m.get("resolution"),
            "images": (p.get("real_reference") or {}).get("image_ids_fingerprint"),
            "inception": (p.get("fid") or {}).get("inception_sha256"),
            "segmenter": seg.get("segmenter"), "segmenter_weights": [w.get("sha256") for w in seg.get("weights", [])],
            "id_space": seg.get("id_space"), "scales": seg.get("scales")}


def method(m: dict) -> str:
    """A run's method from its protocol: the norm, and where the weights come from."""
    g = (m.get("protocol") or {}).get("generator")
    if not isinstance(g, dict):
        return "?"
    name = METHODS.get(g.get("norm"), g.get("norm", "?"))
    origin = g.get("origin", "resail")
    return name + (" (trained here)" if origin == "resail" else f" (imported: {origin})")


def read_metrics(work: Path, run: str) -> dict:
    path = WorkDir(work).eval_dir(run) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no evaluation of run {run!r}; run `resail eval {work} --run {run}` first") from None
    except ValueError as e:
        raise InputError(f"{path}: unreadable ({e}); run `resail eval {work} --run {run}` again") from None


def _fmt(v, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v * scale:.{digits}f}"


def compare(work: str | Path, runs: list[str], *, allow_mixed: bool = False) -> str:
    """A Markdown table of the runs' eval results (see the module docstring)."""
    if not runs:
        raise InputError("name the runs to compare: --run NAME (several times)")
    metrics = {r: read_metrics(Path(work), r) for r in runs}
    first, key0 = runs[0], protocol_key(metrics[runs[0]])
    mixed = []
    for r in runs[1:]:
        key = protocol_key(metrics[r])
        mixed += [f"{k}: {first} {key0[k]} vs {r} {key[k]}" for k in key0 if key[k] != key0[k]]
    if mixed and not allow_mixed:
        raise InputError(f"runs scored under different protocols ({mixed[0]}); evaluate them with the same "
                         "split, images, segmenter and Inception weights, or pass --allow-mixed")
    lines = ["| run | method | FID ↓ | KID×1000 ↓ | mIoU ↑ | pixel acc ↑ |", "|---|---|---|---|---|---|"]
    for r in runs:
        m = metrics[r]
        seg = (m.get("segmentation") or {}).get("generated") or {}
        kid = (m.get("kid") or {}).get("mean")
        lines.append(f"| {r} | {method(m)} | {_fmt(m.get('fid'))} | {_fmt(kid, 1000)} | "
                     f"{_fmt(seg.get('miou'), digits=4)} | {_fmt(seg.get('pixel_acc'), digits=4)} |")
    real = (metrics[first].get("segmentation") or {}).get("real") or {}
    lines.append(f"| real images | segmenter's ceiling | | | {_fmt(real.get('miou'), digits=4)} | "
                 f"{_fmt(real.get('pixel_acc'), digits=4)} |")
    m0 = metrics[first]
    seg0 = m0.get("segmentation") or {}
    lines += ["", f"{m0['n_images']} {m0['split']} images at {m0['resolution'][0]}x{m0['resolution'][1]}; segmenter "
              f"{seg0.get('segmenter', 'none')} ({seg0.get('id_space', '')}); protocol: each run's metrics.json."]
    lines += [f"Protocols differ: {d}" for d in mixed]
    return "\n".join(lines) + "\n"

"""What the SPADE, CLADE and official RESAIL code feed their generators, dataset by dataset.

Their label channels are resail's (channel = native class id, 0 = void/don't care) but for
COCO-Stuff:

| dataset | SPADE, CLADE | official RESAIL |
|---|---|---|
| ADE20K(-outdoor) | the ids themselves (151): see below | the ids themselves (151) |
| COCO-Stuff | stuffthingmap value, 255 → 182, the last (183) | the same (183; its training config: 184) |
| Cityscapes | labelIds (35) | labelIds (35) |

SPADE's and CLADE's ADE20K loaders mean to shift the ids down by one and put void last
(`postprocess`: `label = label - 1; label[label == -1] = label_nc`), but the shifted tensor is a
new one that is never stored back, so their generators were trained and tested on the raw ids.
COCO-Stuff's "void last" is a rotation of resail's channels: the authors' channel a = resail
channel a + 1, and their last channel is resail's channel 0. An imported generator's weights on
those channels are permuted once (synth/baselines/importers.py) and it then reads resail's
one-hot, which is the same function. (The official COCO-Stuff training config set 183 classes and a don't-care
channel: 184 channels, channel 182 never set; its weights on that channel are dropped at import.)

SPADE and CLADE also feed SPADE's instance edge map as one more channel where the dataset has
instance maps (their `no_instance` default is off for Cityscapes and COCO-Stuff, on for ADE20K);
the official RESAIL code never does. `AUTHORS_EDGE_PRESETS` carries that default for the baseline
norms `resail train --norm clade|clade-icpe` and `resail model summary` build, so their parameter
counts equal the authors' generators'. `--norm spade` keeps resail's input (no edge map: the
paper's ablation changes the norm only) unless `--instance-edges` asks for SPADE's.

The authors' test-time sizes (`AUTHORS_SIZE`): 256×256 with 'normal' upsampling, Cityscapes
512×256 with 'more'; their label and instance maps are resized with PIL's nearest neighbour.
"""

from __future__ import annotations

import dataclasses

from ...errors import InputError
from ..presets import NetworkPreset

SOURCES = ("spade", "clade", "clade-icpe", "resail-official")
AUTHORS_UPSAMPLING = ("normal", "more", "most")   # SPADE's --num_upsampling_layers
BASELINE_NORMS = ("clade", "clade-icpe")     # norms whose edge-map default follows the authors
AUTHORS_EDGE_PRESETS = ("cityscapes", "cocostuff")
# The resail preset of each dataset whose released generators can be imported.
DATASET_PRESETS = {"ade20k": "ade20k", "ade20k-outdoor": "ade20k-outdoor", "cityscapes": "cityscapes",
                   "cocostuff": "cocostuff"}
# (width, height, upsampling) of the authors' test runs.
AUTHORS_SIZE = {"ade20k": (256, 256, "normal"), "ade20k-outdoor": (256, 256, "normal"),
                "cityscapes": (512, 256, "more"), "cocostuff": (256, 256, "normal")}


def void_last(source: str, dataset: str) -> bool:
    """Whether the authors' label channels put void last (their ids shifted down by one): COCO-Stuff's."""
    return dataset == "cocostuff"


def label_layout(source: str, dataset: str) -> str:
    """How the authors' code numbers the label channels, in words (for messages and import.json)."""
    if dataset == "cityscapes":
        return "Cityscapes labelIds, channel = id"
    if dataset == "cocostuff":
        return "COCO-Stuff stuffthingmap value v -> channel v, unlabeled (255) -> the last channel"
    return "ADE20K ids, channel = id (0 = void; the loader's shift to void-last is never stored)"


def authors_edges(norm: str, preset: str) -> bool:
    """The edge-map default of a baseline norm on a preset: on where the CLADE authors feed it."""
    return norm in BASELINE_NORMS and preset in AUTHORS_EDGE_PRESETS


def baseline_network(net: NetworkPreset, norm: str | None = None, edges: bool | None = None) -> NetworkPreset:
    """`net` with `norm` (default: its own) and the edge map `edges`, by default the authors'
    (`authors_edges`) for a CLADE norm and `net`'s own otherwise."""
    norm = norm or net.norm
    if edges is None:
        edges = authors_edges(norm, net.name) if norm in BASELINE_NORMS else net.edges
    return dataclasses.replace(net, norm=norm, edges=edges) if (norm, edges) != (net.norm, net.edges) else net


def dataset_preset(dataset: str, what: str) -> str:
    """The resail preset of `dataset`; an InputError for a dataset whose authors' layout is unknown."""
    if dataset not in DATASET_PRESETS:
        raise InputError(f"{what}: the work dir holds a {dataset!r} dataset, for which the authors' label layout "
                         f"is not known; import into a work dir of {', '.join(DATASET_PRESETS)}")
    return DATASET_PRESETS[dataset]

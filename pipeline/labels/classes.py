"""Class tables of the supported datasets, read from the metadata files shipped in `resail/data/`,
and the palettes the project paints label maps with.

`class_id` is always the dataset's native label id as it appears in the segment table:
ADE20K 1..150, Cityscapes labelIds 1..33, COCO-Stuff 1..182 (stuffthingmap value + 1).
Void is native id 0 in all three (ADE20K "other", Cityscapes "unlabeled", COCO-Stuff PNG 255,
which readers map to 0) and never becomes a segment (docs/decomposition.md; the official code
decomposed Cityscapes' class 0 like any other, we do not). The other id spaces a label map may
be written in, and the networks' label channels, are in labels/spaces.py.

Colours: Cityscapes' are the official ones; ADE20K and COCO-Stuff have no official palette, so
their tables carry fixed colours of the project; a folder dataset has no shipped table and gets
stable colours per id (`spread_colors`). `palette_lut` is the one palette per dataset that
`resail serve`, `--label-out-format color`, the training samples and the eval grids paint with.
`ade20k_palette150` is the 150-colour palette most ADE20K tools use, which colour-coded maps may
also come in (labels/files.py).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ...errors import InputError


@dataclass(frozen=True)
class ClassTable:
    dataset: str
    ids: tuple[int, ...]          # native class ids, ascending, void excluded
    names: tuple[str, ...]
    is_thing: tuple[bool, ...]
    void_id: int                  # native id that never becomes a segment
    colors: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def _pos(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.ids)}

    def name(self, class_id: int) -> str:
        return self.names[self._pos[class_id]]

    def thing(self, class_id: int) -> bool:
        return self.is_thing[self._pos[class_id]]

    def __contains__(self, class_id: int) -> bool:
        return class_id in self._pos

    def id_of(self, name: str) -> int:
        for c, n in zip(self.ids, self.names):
            if n == name:
                return c
        raise KeyError(f"{self.dataset}: no class named {name!r}")

    def thing_ids(self) -> list[int]:
        return [c for c, t in zip(self.ids, self.is_thing) if t]

    def palette(self, size: int = 256) -> np.ndarray:
        """An id → RGB lookup table (uint8, size×3) for colourised label maps."""
        lut = np.zeros((size, 3), np.uint8)
        for c, col in zip(self.ids, self.colors):
            if 0 <= c < size:
                lut[c] = col
        return lut


def _data_text(name: str) -> str:
    return resources.files("resail").joinpath("data", name).read_text(encoding="utf-8")


def _rows(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(_data_text(name).splitlines()))


# The shipped tables' fixed colours. Frozen, like `spread_colors` below (a folder dataset's): colour
# maps the project wrote must read back, so neither may change.
def _spread_colors(ids: list[int], seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(v) for v in rng.integers(30, 256, 3)) for _ in ids]


def parse_category_mapping(text: str) -> dict[int, int]:
    """ADE20K `categoryMapping.txt`: Instance100 id → SceneParse150 id (misspelled header, double TABs)."""
    mapping: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            mapping[int(fields[0])] = int(fields[1])
    return mapping


@functools.cache
def ade20k_instance_mapping() -> dict[int, int]:
    return parse_category_mapping(_data_text("ade20k_instance_categoryMapping.txt"))


@functools.cache
def cityscapes_train_ids() -> dict[int, tuple[int, str]]:
    """Cityscapes labelId → (trainId, name) for the 19 evaluated classes (trainIds 0..18); every
    other labelId has trainId 255 (ignored in evaluation), as in cityscapesScripts' table."""
    return {int(r["id"]): (int(r["trainId"]), r["name"]) for r in _rows("cityscapes_labels.csv")
            if 0 <= int(r["trainId"]) < 255}


@functools.cache
def ade20k_palette150() -> dict[int, tuple[int, int, int]]:
    """ADE20K id → the colour of the widely used 150-colour palette (CSAILVision's `color150.mat`,
    the palette of mmsegmentation's and ControlNet's ADE20K maps); `data/ade20k_palette150.csv`."""
    return {int(r["id"]): (int(r["r"]), int(r["g"]), int(r["b"])) for r in _rows("ade20k_palette150.csv")}


@functools.cache
def class_table(dataset: str) -> ClassTable:
    """The class table of a dataset preset: ade20k, ade20k-outdoor, cityscapes or cocostuff."""
    if dataset in ("ade20k", "ade20k-outdoor"):
        rows = _rows("ade20k_150_classes.csv")
        # Things are the 100 classes with instance annotations, as the official code decides.
        things = set(ade20k_instance_mapping().values())
        ids = [int(r["id"]) for r in rows]
        return ClassTable(
            dataset, tuple(ids), tuple(r["short_name"] for r in rows),
            tuple(i in things for i in ids), 0, tuple(_spread_colors(ids, 150)),
        )
    if dataset == "cityscapes":
        rows = [r for r in _rows("cityscapes_labels.csv") if int(r["id"]) > 0]
        ids = [int(r["id"]) for r in rows]
        return ClassTable(
            dataset, tuple(ids), tuple(r["name"] for r in rows),
            tuple(24 <= i <= 33 for i in ids), 0,
            tuple((int(r["color_r"]), int(r["color_g"]), int(r["color_b"])) for r in rows),
        )
    if dataset == "cocostuff":
        rows = [r for r in _rows("cocostuff_classes.csv") if r["kind"] != "unlabeled"]
        ids = [int(r["cocostuff_id"]) for r in rows]
        return ClassTable(
            dataset, tuple(ids), tuple(r["name"] for r in rows),
            tuple(r["kind"] == "thing" for r in rows), 0, tuple(_spread_colors(ids, 182)),
        )
    raise InputError(f"unknown dataset {dataset!r}: choose ade20k, ade20k-outdoor, cityscapes or cocostuff")


def spread_colors(size: int) -> np.ndarray:
    """Stable colours for datasets without a table: row c is id c's colour (row 0 black), the same
    for any `size`."""
    lut = np.random.default_rng(0).integers(30, 256, (size, 3)).astype(np.uint8)
    lut[0] = 0
    return lut


def palette_lut(dataset: str, size: int) -> np.ndarray:
    """native id → RGB (size×3 uint8) of the palette the project paints `dataset` with; void black."""
    try:
        return class_table(dataset).palette(size)
    except InputError:  # a folder dataset: no shipped table
        return spread_colors(size)

"""The label vocabulary a trained network speaks on a work directory, as one object.

`Vocabulary` holds the class table the segment store recorded (the dataset's, or a folder
dataset's own `classes.csv`) and the network's label channels (`LabelChannels`). Every label map a
command with a model takes in (`resail synthesize`, `resail serve`) travels through it in one
direction, without leaving labels/: the file read in any of the dataset's id spaces into native
ids and checked against the class table (`read`, labels/files.py), then checked against the
network's channels (`check`, labels/spaces.py), whose message lists the classes the network
covers; G then takes it as channels (`channels.to_channels`). The map G took goes back out as a
file in either form (`encode`), and the page's palette offers the classes the network can draw
(`drawable`, `colors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import palette_lut
from .files import MAX_SIDE, LabelMapFile, encode_label_map, read_label_map
from .spaces import LabelChannels


@dataclass(frozen=True)
class Vocabulary:
    dataset: str
    class_ids: list[int]          # the dataset's classes (the segment store's manifest), native ids
    names: dict[int, str]
    is_thing: dict[int, bool]
    channels: LabelChannels       # the network's label table
    owner: str                    # whose channels, for messages: "run 'name'"

    @classmethod
    def of_store(cls, manifest: dict, channels: LabelChannels, owner: str) -> "Vocabulary":
        """The vocabulary of a network (`channels`) on the segment store whose manifest is `manifest`."""
        classes = manifest["classes"]
        ids = [int(c) for c in classes["ids"]]
        return cls(manifest["params"]["dataset"], ids, dict(zip(ids, classes.get("names", [str(c) for c in ids]))),
                   dict(zip(ids, (bool(t) for t in classes.get("is_thing", [])))), channels, owner)

    @property
    def drawable(self) -> list[int]:
        """The dataset's classes the channels cover: the ones the network can draw."""
        return [c for c in self.class_ids if self.channels.channel_of(c) >= 0]

    def read(self, source: str | Path | bytes, fmt: str = "auto", *, where: str | None = None,
             max_side: int = MAX_SIDE) -> LabelMapFile:
        """A label map as users have it (a PNG path or its bytes: class ids in any of the dataset's
        id spaces, or a colour map in its palette; `fmt` auto/ids/trainids/color, see
        labels/files.py) → native ids, checked against the class table. Any size from 8 to
        `max_side` px a side."""
        return read_label_map(source, self.dataset, fmt, class_ids=self.class_ids, where=where, max_side=max_side)

    def check(self, label_map: np.ndarray, where: str) -> None:
        """InputError when the label map uses a class the channels lack; the message lists the
        classes they cover."""
        fix = self.channels.covered(self.owner, self.names)
        self.channels.check(np.unique(label_map), where, fix=fix, names=self.names)

    def encode(self, native: np.ndarray, fmt: str = "ids") -> np.ndarray:
        """Native ids → the image to save: the dataset's label-file ids, or colours (`encode_label_map`)."""
        return encode_label_map(native, self.dataset, fmt)

    def colors(self, ids: list[int]) -> dict[int, tuple[int, int, int]]:
        """The colour of each id in the palette label maps are painted, written and read in."""
        lut = palette_lut(self.dataset, max(ids, default=0) + 1)
        return {c: tuple(int(v) for v in lut[c]) for c in ids}

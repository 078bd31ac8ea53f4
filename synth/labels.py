"""The label table: which label-map channel each native class id occupies.

G, D and the segmentation network see a label map as one one-hot channel per class. A preset
without a table (`NetworkPreset.label_ids is None`) uses channel = native class id, so ADE20K
needs 151 channels even on data that uses 22 classes. A preset with a table lists the native ids
it covers, `label_ids[c]` = the native id of channel c, with `label_ids[0] == 0` (void); the toy
preset covers exactly the classes the toy generator can draw: 23 channels instead of 151, and a
G+D step at batch 4 about 1.5× faster on 2 CPU threads (BENCHMARKS.md, Networks).

Every place where a label map enters a network maps it through `LabelChannels.to_channels`: the
training and segmentation-network datasets, `resail eval`, `resail synthesize` and `resail serve`.
The table travels with the network: in the run's `config.json` and snapshots (the preset's
fields) and in segmentation-network checkpoints (`SegNet.config()`), so inference never guesses
it. A native id without a channel is an `InputError` naming where it came from and the id.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import InputError

TABLE_FIX = ("use the preset of this dataset, a preset whose label table covers these ids, or list every "
             "native id the data uses in `label_ids` under [network] in a --config TOML")


class LabelChannels:
    """native class id ↔ label-map channel. `label_ids=None`: identity over ids 0..n_native−1."""

    def __init__(self, label_ids: Sequence[int] | None, n_native: int, name: str = "the network"):
        self.name = name
        self.identity = label_ids is None
        self.native = np.arange(n_native, dtype=np.int64) if label_ids is None else np.asarray(label_ids, np.int64)
        self.lut = np.full(int(self.native.max(initial=0)) + 1, -1, np.int64)   # native id → channel, −1 = none
        self.lut[self.native] = np.arange(len(self.native))

    @classmethod
    def of(cls, net) -> "LabelChannels":
        """The table of a `NetworkPreset` (or anything with `label_ids`, `label_nc` and `name`)."""
        return cls(net.label_ids, net.label_nc, f"preset {net.name!r}")

    def __len__(self) -> int:
        return len(self.native)

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelChannels) and np.array_equal(self.native, other.native)

    def channel_of(self, native_ids) -> np.ndarray:
        """Channels of native ids, −1 where the table has none (any integer input, any shape)."""
        ids = np.asarray(native_ids, np.int64)
        inside = (ids >= 0) & (ids < len(self.lut))
        return np.where(inside, self.lut[np.where(inside, ids, 0)], -1)

    def missing(self, native_ids: Iterable[int]) -> list[int]:
        """The ids among `native_ids` that have no channel, sorted."""
        ids = np.unique(np.asarray(list(native_ids) if not isinstance(native_ids, np.ndarray) else native_ids,
                                   np.int64))
        return [int(v) for v in ids[self.channel_of(ids) < 0]]

    def describe_missing(self, ids: list[int], names: dict[int, str] | None = None) -> str:
        names = names or {}
        shown = ", ".join(f"{c}" + (f" ({names[c]})" if c in names else "") for c in ids[:12])
        return f"class id{'s' if len(ids) > 1 else ''} {shown}{' …' if len(ids) > 12 else ''}"

    def check(self, native_ids: Iterable[int], where: str, fix: str = TABLE_FIX,
              names: dict[int, str] | None = None) -> None:
        """InputError when any of `native_ids` has no channel: names `where`, the ids and `fix`."""
        bad = self.missing(native_ids)
        if bad:
            raise InputError(f"{where}: {self.describe_missing(bad, names)} not in the label table of {self.name} "
                             f"({len(self)} channels); {fix}")

    def to_channels(self, label: np.ndarray, where: str, fix: str = TABLE_FIX) -> np.ndarray:
        """A native-id label map (any shape) → int64 channel ids; InputError on an id without a channel."""
        channels = self.channel_of(label)
        if (channels < 0).any():
            self.check(np.unique(np.asarray(label)[channels < 0]), where, fix)
        return channels

    def to_native(self, channels) -> np.ndarray:
        """Channel ids → native ids (to colourise or name them)."""
        return self.native[np.asarray(channels, np.int64)]

    def remap_from(self, other: "LabelChannels") -> np.ndarray:
        """other's channel → this table's channel (−1 where this table lacks the class): a LUT for
        feeding labels prepared for one network to another (G's labels to a segmenter)."""
        return self.channel_of(other.native)

"""Id spaces: the ids a label map is written in, and the channels a network sees it as.

Native ids are the segment store's (labels/classes.py), 0 = void. Every other space is a map
from native ids, −1 where the space has no id:

- the dataset's label files (`ids_to_native`, `native_to_ids`): ADE20K and folder datasets write
  native ids, COCO-Stuff its stuffthingmap values (native − 1, 255 = unlabeled), Cityscapes its
  labelIds (= native) or trainIds (0..18, 255 ignored; `cityscapes_space_of` tells them apart);
- the evaluation spaces the published segmenters are scored in (`IdSpace`, `eval_id_space`);
- a network's label channels (`LabelChannels`): G, D and the segmentation network see a label
  map as one one-hot channel per class.

A preset without a label table (`NetworkPreset.label_ids is None`) uses channel = native class id,
so ADE20K needs 151 channels even on data that uses 22 classes. A preset with a table lists the
native ids it covers, `label_ids[c]` = the native id of channel c, with `label_ids[0] == 0`
(void); the toy preset covers exactly the classes the toy generator can draw: 23 channels instead
of 151, and a faster G+D step (BENCHMARKS.md, Networks).
Every place where a label map enters a network maps it through `LabelChannels.to_channels`: the
training and segmentation-network datasets, `resail eval`, `resail synthesize` and `resail serve`.
The table travels with the network: in the run's `config.json` and snapshots (the preset's
fields) and in segmentation-network checkpoints (`SegNet.config()`), so inference never guesses
it. A native id without a channel is an `InputError` naming where it came from and the id.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ...errors import InputError
from .classes import cityscapes_train_ids, class_table

IGNORE = 255  # Cityscapes trainIds' ignore value, COCO-Stuff's unlabeled stuffthingmap value
ADE20K = ("ade20k", "ade20k-outdoor")
TABLE_FIX = ("use the preset of this dataset, a preset whose label table covers these ids, or list every "
             "native id the data uses in `label_ids` under [network] in a --config TOML")


def _lookup(lut: np.ndarray, ids) -> np.ndarray:
    """`lut[ids]` for integer ids of any shape (int64), −1 where an id lies outside the table."""
    ids = np.asarray(ids, np.int64)
    inside = (ids >= 0) & (ids < len(lut))
    return np.where(inside, lut[np.where(inside, ids, 0)], -1)


# ---------------------------------------------------------------- the dataset's label files


@functools.cache
def _train_to_label() -> np.ndarray:
    """Cityscapes trainId (0..18, 255) → labelId; 255 → 0 unlabeled."""
    lut = np.zeros(256, np.int32)
    for label_id, (train_id, _) in cityscapes_train_ids().items():
        lut[train_id] = label_id
    return lut


def cityscapes_space_of(values: np.ndarray, where: str) -> tuple[str, str]:
    """The id space of a single-channel Cityscapes map, as `auto` decides it: ("ids"|"trainids", why)."""
    present = np.unique(values)
    above = present[(present > 18) & (present != IGNORE)]
    if IGNORE in present:
        if above.size:
            raise InputError(f"{where}: holds 255 (trainIds' ignore value) and labelIds above 18 ({int(above[0])}); "
                             "write one id space: Cityscapes labelIds 0..33 or trainIds 0..18 with 255")
        return "trainids", "Cityscapes trainIds (255 occurs; labelIds stop at 33)"
    if above.size:
        return "ids", f"Cityscapes labelIds ({int(above[0])} occurs; trainIds stop at 18)"
    raise InputError(f"{where}: every value is in 0..18 and none is 255, so it reads as Cityscapes labelIds and as "
                     "trainIds alike (0 is unlabeled in one, road in the other); name its label format: ids "
                     "(labelIds) or trainids")


def ids_to_native(values: np.ndarray, dataset: str, fmt: str, where: str = "label map") -> np.ndarray:
    """Class ids in `fmt` (ids or trainids, see labels/files.py) → native ids (int32)."""
    values = np.asarray(values, np.int64)
    if fmt == "trainids":
        bad = np.unique(values[(values > 18) & (values != IGNORE) | (values < 0)])
        if bad.size:
            raise InputError(f"{where}: values {bad[:12].tolist()} are not Cityscapes trainIds (0..18, 255 = ignore)")
        return _train_to_label()[values]
    if dataset == "cocostuff":
        bad = np.unique(values[(values > 181) & (values != IGNORE) | (values < 0)])
        if bad.size:
            raise InputError(f"{where}: values {bad[:12].tolist()} are not COCO-Stuff stuffthingmap values "
                             "(0..181, 255 = unlabeled)")
        return np.where(values == IGNORE, 0, values + 1).astype(np.int32)
    return values.astype(np.int32)


def native_to_ids(native: np.ndarray, dataset: str) -> np.ndarray:
    """Native ids → the dataset's label-file ids: COCO-Stuff's stuffthingmap values (uint8, void
    255), any other dataset's native ids (uint8, or uint16 when ids exceed 255)."""
    native = np.asarray(native, np.int64)
    if dataset == "cocostuff":
        return np.where(native == 0, IGNORE, native - 1).astype(np.uint8)
    return native.astype(np.uint8 if native.max(initial=0) <= 255 else np.uint16)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class IdSpace:
    """The ids a dataset's published segmenter predicts, and native ids mapped into them."""

    name: str
    ids: tuple[int, ...]        # the evaluated ids, ascending
    names: tuple[str, ...]
    native_to_id: np.ndarray    # native id → id of this space, −1 = ignored

    def from_native(self, native: np.ndarray) -> np.ndarray:
        """Native ids (any shape) → ids of this space (int64), −1 where ignored."""
        return _lookup(self.native_to_id, native)


def eval_id_space(dataset: str, class_ids: Sequence[int] = (), names: dict[int, str] | None = None) -> IdSpace:
    """The id space published mIoU is computed in: Cityscapes trainIds 0..18 (every other labelId
    ignored), ADE20K ids 1..150 (0 ignored), COCO-Stuff stuffthingmap values 0..181 (native id − 1;
    void ignored); a folder dataset its own native ids (0 ignored)."""
    if dataset == "cityscapes":
        train = cityscapes_train_ids()
        lut = np.full(256, -1, np.int64)
        for label_id, (train_id, _) in train.items():
            lut[label_id] = train_id
        by_train = sorted((t, n) for t, n in train.values())
        return IdSpace("Cityscapes trainIds 0..18 (other labelIds ignored)", tuple(t for t, _ in by_train),
                       tuple(n for _, n in by_train), lut)
    if dataset in ADE20K or dataset == "cocostuff":
        table = class_table(dataset)
        shift = 1 if dataset == "cocostuff" else 0
        lut = np.full(max(table.ids) + 1, -1, np.int64)
        lut[list(table.ids)] = np.asarray(table.ids) - shift
        name = ("COCO-Stuff 0..181 (stuffthingmap values = native id - 1; unlabeled ignored)" if shift
                else "ADE20K 1..150 (0 = other, ignored)")
        return IdSpace(name, tuple(int(c) - shift for c in table.ids), tuple(table.names), lut)
    ids = sorted(int(c) for c in class_ids if c > 0)
    lut = np.full(max(ids, default=0) + 1, -1, np.int64)
    lut[ids] = ids
    return IdSpace(f"{dataset} native ids (0 ignored)", tuple(ids), tuple((names or {}).get(c, str(c)) for c in ids),
                   lut)


# ---------------------------------------------------------------- a network's label channels


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
        return _lookup(self.lut, native_ids)

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

    def covered(self, owner: str, names: dict[int, str]) -> str:
        """What to do about a class this table lacks, for a message: the classes it does cover."""
        ids = [int(c) for c in self.native[1:]]
        listed = ", ".join(f"{c} {names.get(c, '?')}" for c in ids[:40]) + (" …" if len(ids) > 40 else "")
        if self.identity:
            return f"{owner} takes native ids 0..{len(self) - 1}"
        return (f"{owner} was trained with a label table of {len(ids)} classes ({listed}); paint only "
                "those, or train a run whose label table covers the others")

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

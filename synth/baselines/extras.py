"""What a run's generator takes for one user label map beside the one-hot map, and what stands in for
the retrieval guidance when it takes none.

`image_extras` computes, at the model size, the inputs a baseline generator reads (docs/baselines.md):

  edges   1×H×W  SPADE's instance edge map: the instance map the user gave (Cityscapes `instanceIds`,
                 COCO-Stuff's SPADE `{split}_inst` map, or any instance map), resized with the run's
                 nearest rule, then 1 wherever a pixel differs from a 4-neighbour, as SPADE's
                 `get_edges`; without an instance map, the label map's boundaries (what an instance
                 file without instances gives)
  dist    2×H×W  CLADE-ICPE's positional maps of the label map at its own size, resized with torch's
                 nearest interpolation (synth/baselines/icpe.py)

`NoGuidance` answers what `resail synthesize` and `resail serve` ask of a `LabelMapGuidance` for a
generator that reads no guidance (SPADE, CLADE): no segments to retrieve for, nothing to
resample, a black guidance image. The retrieval index is never opened for such a run.
"""

from __future__ import annotations

import numpy as np

from ...errors import InputError
from ..data import instance_edges
from ..presets import NetworkPreset
from .icpe import icpe_maps, resize_maps, skip_id


def image_extras(net: NetworkPreset, dataset: str, label_map: np.ndarray, instance_map: np.ndarray | None,
                 size: tuple[int, int], *, resize) -> dict[str, np.ndarray]:
    """The edge map and positional maps `net` reads, for an H'×W' label map (native ids) and its
    instance map (or None), at `size` = (W, H), the maps resized by the run's nearest rule
    `resize(map, H, W)` (common.py); {} for a network that reads neither."""
    W, H = size
    out = {}
    if net.edges:
        source = instance_map if instance_map is not None else label_map
        out["edges"] = instance_edges(resize(source, H, W), (H, W))[None]
    if net.icpe:
        out["dist"] = resize_maps(icpe_maps(label_map, skip_id(dataset)), W, H)
    return out


class NoGuidance:
    """A `pipeline.guidance.LabelMapGuidance` without segments, for a generator that reads no guidance."""

    def __init__(self, size: tuple[int, int]):
        W, H = size
        self.segments: list = []
        self.chosen = np.zeros(0, np.int64)
        self.ids = np.zeros((0, 1), np.int64)
        self.scores = np.zeros((0, 1), np.float32)
        self.reason: list[str] = []
        self.segment_map = np.full((H, W), -1, np.int32)

    def matches(self) -> list[int]:
        return []

    def redraw(self, segments, seed: int | None = None) -> None:
        """Nothing to draw: no segment has matches (naming segments to redraw is an error)."""
        if len(segments):
            raise InputError("this run's generator reads no retrieval guidance: there are no segments to resample")

    def compose(self) -> np.ndarray:
        H, W = self.segment_map.shape
        return np.zeros((H, W, 3), np.uint8)

    def close(self) -> None:
        """Nothing to close: no store was opened."""

"""Segment decomposition of one label map, with the official RESAIL default rules (docs/method.md §1).

1. Things come from instance masks. An instance's class is the one its annotation declares
   (ADE20K via categoryMapping, Cityscapes value // 1000), or the majority label under its mask
   when none is declared (COCO-Stuff, folder; a void majority drops the instance, as officially).
   A declared class must also be the majority of the non-void label pixels under the mask,
   otherwise the image is bad input (`InputError`).
2. Every other class present in the label map is split into 8-connected components
   (cv2, connectivity 8). Thing pixels that no instance covers follow `uncovered_rule`:
   "components" (split like stuff), "drop" (ignored: official ADE20K), or "drop_if_instanced"
   (ignored when the class has an instance in this image, else components: official COCO-Stuff).
   Stuff components come from the label map as is, even where an instance overlaps it.
3. Per class and image, the preserved-area rule: sort the class's segments by area, descending,
   ties in reverse insertion order (instances by id, then components in raster order of their
   first pixel); keep a segment while the running sum of kept areas is below ratio·(class area)
   before adding it. The largest segment is always kept.
4. Void (class 0) never becomes a segment. Output order: class id ascending, then walk order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from ..choices import UNCOVERED_THINGS
from ..common import nearest_pil
from ..errors import ConfigError, InputError
from .datasets import MAJORITY, READERS

UNCOVERED_RULES = ("components", "drop", "drop_if_instanced")  # each dataset's official one: Reader.uncovered_rule


@dataclass(frozen=True, slots=True)
class Segment:
    class_id: int
    is_thing: bool
    y0: int
    x0: int
    h: int
    w: int
    area: int
    mask: np.ndarray  # h×w bool: the segment inside its tight bbox


@dataclass(slots=True)
class _Candidate:
    area: int
    bbox: tuple[int, int, int, int]  # y0, x0, h, w in image pixels
    source: np.ndarray               # a label image window holding the segment as value `key`
    origin: tuple[int, int]          # the window's top-left corner in image pixels
    key: int

    def mask(self) -> np.ndarray:
        y0, x0, h, w = self.bbox
        oy, ox = self.origin
        return self.source[y0 - oy:y0 - oy + h, x0 - ox:x0 - ox + w] == self.key


def thing_lut(thing_ids, size: int = 65536) -> np.ndarray:
    lut = np.zeros(size, bool)
    lut[list(thing_ids)] = True
    return lut


def preserved(areas: list[int], ratio: float) -> list[int]:
    """Indices kept by the preserved-area walk, in walk order (area desc, ties: later first)."""
    order = sorted(range(len(areas)), key=lambda i: (-areas[i], -i))
    limit = ratio * float(sum(areas))
    kept, running = [], 0
    for i in order:
        if running >= limit:
            break
        kept.append(i)
        running += areas[i]
    return kept


def _instance_candidates(label_map, instance_map, instance_classes, where):
    """(class, candidate) for each instance, in instance id order."""
    k_max = int(instance_map.max())
    if k_max == 0:
        return []
    n_labels = int(label_map.max()) + 1
    on = instance_map > 0
    hist = np.bincount(instance_map[on].astype(np.int64) * n_labels + label_map[on],
                       minlength=(k_max + 1) * n_labels).reshape(k_max + 1, n_labels)
    out = []
    for k, sl in enumerate(ndimage.find_objects(instance_map), start=1):
        if sl is None:
            continue
        h = hist[k]
        declared = int(instance_classes[k])
        if declared == MAJORITY:
            c = int(np.argmax(h))
            if c == 0:
                continue  # mostly void under the mask: dropped, as the official COCO parser does
        else:
            c = declared
            nonvoid = int(h[1:].sum())
            agree = int(h[c]) if c < n_labels else 0
            if nonvoid and 2 * agree < nonvoid:
                major = int(np.argmax(h[1:])) + 1
                raise InputError(
                    f"{where}: instance {k} is annotated as class {c} but {100 * int(h[major]) // nonvoid}% of its "
                    f"labelled pixels are class {major} in the label map; fix the annotation or use --on-error skip")
        y, x = sl
        bbox = (y.start, x.start, y.stop - y.start, x.stop - x.start)
        out.append((c, _Candidate(int(h.sum()), bbox, instance_map, (0, 0), k)))
    return out


def decompose(label_map: np.ndarray, instance_map: np.ndarray | None, instance_classes: np.ndarray | None,
              is_thing: np.ndarray, preserved_ratio: float = 0.9, uncovered_rule: str = "components",
              where: str = "") -> list[Segment]:
    """Segments of one image. `is_thing` is a lookup table indexed by class id."""
    if uncovered_rule not in UNCOVERED_RULES:
        raise ValueError(f"uncovered_rule must be one of {UNCOVERED_RULES}")
    label_map = np.ascontiguousarray(label_map, dtype=np.int32)
    by_class: dict[int, list[_Candidate]] = {}
    instanced: set[int] = set()
    if instance_map is not None:
        instance_map = np.ascontiguousarray(instance_map, dtype=np.int32)
        for c, cand in _instance_candidates(label_map, instance_map, instance_classes, where):
            by_class.setdefault(c, []).append(cand)
            instanced.add(c)

    for c, sl in enumerate(ndimage.find_objects(label_map), start=1):
        if sl is None:
            continue
        window = label_map[sl] == c
        if is_thing[c] and instance_map is not None:
            if uncovered_rule == "drop" or (uncovered_rule == "drop_if_instanced" and c in instanced):
                continue
            window &= instance_map[sl] == 0
        # SAUF (Wu) numbers components in raster order of their first pixel; OpenCV's default
        # block-based algorithm does not, and that order breaks area ties in the walk below.
        n, comp, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            window.view(np.uint8), 8, cv2.CV_32S, cv2.CCL_WU)
        oy, ox = sl[0].start, sl[1].start
        for j in range(1, n):
            x, y, w, h, a = (int(v) for v in stats[j])
            by_class.setdefault(c, []).append(_Candidate(a, (oy + y, ox + x, h, w), comp, (oy, ox), j))

    segments = []
    for c in sorted(by_class):
        cands = by_class[c]
        thing = bool(is_thing[c])
        for i in preserved([cd.area for cd in cands], preserved_ratio):
            cd = cands[i]
            segments.append(Segment(c, thing, *cd.bbox, cd.area, cd.mask()))
    return segments


def downscale(image: np.ndarray | None, label_map: np.ndarray, instance_map: np.ndarray | None,
              max_side: int | None):
    """Cap the longest side at `max_side`: INTER_AREA for the image (None: none), PIL's nearest
    (= cv2 INTER_NEAREST_EXACT, pixel centres) for label and instance maps."""
    h, w = label_map.shape
    if not max_side or max(h, w) <= max_side:
        return image, label_map, instance_map
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if image is not None:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    label_map = nearest_pil(label_map, size[1], size[0])
    if instance_map is not None:
        instance_map = nearest_pil(instance_map, size[1], size[0])
    return image, label_map, instance_map


@dataclass(frozen=True)
class DecompositionRules:
    """Stage 1's decomposition parameters, recorded in the segment manifest. Every label map — the
    dataset's in `resail index build`, a user's in `index query`, `synthesize` and `serve` — is
    decomposed through `apply` with the rules of the store it is matched against, so a user's
    segments are cut as the training segments were."""

    dataset: str
    preserved_ratio: float = 0.9
    uncovered_things: str = "official"   # one of UNCOVERED_THINGS: the dataset's official rule, or "components"
    max_side: int | None = None          # longest side before decomposition (None: native size)

    def __post_init__(self):
        if not 0.0 < self.preserved_ratio <= 1.0:
            raise ConfigError("preserved_ratio", f"preserved_ratio {self.preserved_ratio} must be in (0, 1]")
        if self.uncovered_things not in UNCOVERED_THINGS:
            raise ConfigError("uncovered_things", f"uncovered_things {self.uncovered_things!r}: choose one of "
                                                  f"{', '.join(UNCOVERED_THINGS)}")
        if self.max_side is not None and self.max_side < 1:
            raise ConfigError("max_side", f"max_side {self.max_side} must be positive")

    @classmethod
    def of(cls, params: dict) -> "DecompositionRules":
        """The rules of a segment store, from its manifest's `params`."""
        return cls(params["dataset"], params.get("preserved_ratio", 0.9), params.get("uncovered_things", "official"),
                   params.get("max_side"))

    @property
    def uncovered_rule(self) -> str:
        """The rule for thing pixels no instance covers (one of `UNCOVERED_RULES`)."""
        if self.uncovered_things == "components":
            return "components"
        return READERS[self.dataset].uncovered_rule

    def apply(self, label_map: np.ndarray, instance_map: np.ndarray | None, instance_classes: np.ndarray | None,
              is_thing: np.ndarray, image: np.ndarray | None = None, where: str = ""):
        """(image, label map, instance map, segments): the maps capped at `max_side` (`downscale`),
        then decomposed. `instance_classes` None: each instance takes its majority label."""
        if instance_map is not None and instance_classes is None:
            instance_classes = np.full(int(instance_map.max()) + 1, MAJORITY, np.int32)
        image, label_map, instance_map = downscale(image, label_map, instance_map, self.max_side)
        segments = decompose(label_map, instance_map, instance_classes, is_thing, self.preserved_ratio,
                             self.uncovered_rule, where)
        return image, label_map, instance_map, segments

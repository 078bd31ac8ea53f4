"""CLADE-ICPE's intra-class positional encoding maps, as the authors' `util/cal_dist_masks.py` makes them.

For every class of a label map (but one, see `skip`) and every 8-connected component of it, each
pixel (y, x) of the component gets its offsets from the component's centroid (c_y, c_x), each
divided by the largest absolute offset in the component plus 1e-5:

  row map    (y − c_y) / (max |y − c_y| + 1e-5),     column map  (x − c_x) / (max |x − c_x| + 1e-5)

so both lie in (−1, 1); pixels of the skipped class are 0. The authors skip the label file's value
0: ADE20K's and Cityscapes' void, but COCO-Stuff's person (stuffthingmap value 0), while its
unlabeled value 255 counts as a class; `skip_id` gives that id in resail's native ids. They compute
the maps once per label file at its own resolution and resize them to the network size with
torch's nearest interpolation (not PIL's, which resizes the label map itself); `resize_maps` does
the same. Values equal theirs bit for bit: the same OpenCV components, centroids from the same
integer sums, the same float64 arithmetic, float32 at the end (tests/test_baselines.py checks the
maps the authors' code made).

Their loop builds a full-image mask per component; here one pass finds each class's bounding box
and the components are labelled inside it, which is what makes computing the maps on the fly
cheap enough (docs/baselines.md has the measured cost and why no cache stage exists for them).
"""

from __future__ import annotations

import cv2
import numba
import numpy as np
import scipy.ndimage

from ...common import nearest_torch_legacy

# The native id of the authors' skipped label value 0, per dataset (COCO-Stuff: native = value + 1).
SKIP_ID = {"ade20k": 0, "ade20k-outdoor": 0, "cityscapes": 0, "cocostuff": 1}
EPS = 1e-5


def skip_id(dataset: str) -> int:
    """The native class id whose pixels get no positional encoding (the authors' label value 0)."""
    return SKIP_ID.get(dataset, 0)


def icpe_maps(label: np.ndarray, skip: int = 0) -> np.ndarray:
    """H×W class ids (≥ 0) → 2×H×W float32: the row and column maps of the module docstring."""
    label = np.asarray(label)
    out = np.zeros((2, *label.shape), np.float32)
    boxes = scipy.ndimage.find_objects(label.astype(np.int64) + 1)  # boxes[c] = class c's bounding box
    for c, box in enumerate(boxes):
        if box is not None and c != skip:
            _encode_class(label[box] == c, box, out)
    return out


def _encode_class(mask: np.ndarray, box: tuple[slice, slice], out: np.ndarray) -> None:
    """Write the maps of one class's components (`mask`: the class inside its box `box`) into `out`."""
    n, comp, _, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    _encode_components(comp, n, box[0].start, box[1].start, out)


@numba.njit(cache=True)
def _encode_components(comp: np.ndarray, n: int, y0: int, x0: int, out: np.ndarray) -> None:
    """Components 1..n-1 of `comp` (a window at (y0, x0) of the image) → their offsets in `out`,
    with OpenCV's centroids (integer coordinate sums over the area, one float64 division)."""
    area = np.zeros(n, np.int64)
    sum_y, sum_x = np.zeros(n, np.int64), np.zeros(n, np.int64)
    top, bottom = np.full(n, 1 << 40, np.int64), np.full(n, -1, np.int64)
    left, right = np.full(n, 1 << 40, np.int64), np.full(n, -1, np.int64)
    h, w = comp.shape
    for i in range(h):
        for j in range(w):
            k = comp[i, j]
            if k > 0:
                y, x = y0 + i, x0 + j             # full-image coordinates, as the authors'
                area[k] += 1
                sum_y[k] += y
                sum_x[k] += x
                top[k], bottom[k] = min(top[k], y), max(bottom[k], y)
                left[k], right[k] = min(left[k], x), max(right[k], x)
    cy, cx = np.zeros(n), np.zeros(n)
    den_y, den_x = np.ones(n), np.ones(n)
    for k in range(1, n):
        cy[k], cx[k] = sum_y[k] / area[k], sum_x[k] / area[k]
        # the largest |offset| of a component lies on its first or last row (column)
        den_y[k] = max(abs(top[k] - cy[k]), abs(bottom[k] - cy[k])) + EPS
        den_x[k] = max(abs(left[k] - cx[k]), abs(right[k] - cx[k])) + EPS
    for i in range(h):
        for j in range(w):
            k = comp[i, j]
            if k > 0:
                out[0, y0 + i, x0 + j] = np.float32((y0 + i - cy[k]) / den_y[k])
                out[1, y0 + i, x0 + j] = np.float32((x0 + j - cx[k]) / den_x[k])


def resize_maps(maps: np.ndarray, width: int, height: int) -> np.ndarray:
    """2×h×w maps → 2×height×width with torch's nearest rule (`common.nearest_torch_legacy`, what its legacy
    interpolation picks), as the authors resize them."""
    if maps.shape[-2:] == (height, width):
        return maps
    moved = nearest_torch_legacy(np.ascontiguousarray(maps, np.float32).transpose(1, 2, 0), height, width)
    return np.ascontiguousarray(moved.transpose(2, 0, 1))


def flip_maps(maps: np.ndarray) -> np.ndarray:
    """The maps of the horizontally mirrored label map: mirrored, column offsets negated (the authors'
    training loader flips them upside down instead, without negating: docs/baselines.md)."""
    flipped = maps[..., ::-1].copy()
    flipped[1] *= -1
    return flipped

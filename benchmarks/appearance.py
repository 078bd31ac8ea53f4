"""Does a generated class region look like the real ones? Per-class colour and texture statistics.

The toy ablation's layout judge (mIoU of a segmentation network) sees where each class is, which
the label map already fixes; what retrieval guidance adds is appearance, which mIoU cannot see.
This measure compares appearance class by class, on the same val label maps for the real photos
and for a generator's outputs:

- A *region* is the pixels of one class in one image, eroded by one pixel so that the blend at
  its border (layout, not appearance) is left out; regions under `MIN_PIXELS` pixels are skipped.
  Each region is described by
    colour   the mean and the standard deviation of its pixels in CIE L*a*b* (6 numbers, Lab units)
    texture  the histogram of its gradient magnitudes (central differences of L*, `GRADIENT_BINS`),
             normalised to sum 1
- Per class, the energy distance between the real regions' descriptors and the generated ones
  (colour: Euclidean distance in Lab; texture: total variation distance between histograms):
  0 when the two sets are the same, larger with any difference between their distributions
  (where the colours lie, how much they vary from image to image, how textured they are). It is
  a distance between distributions, not between paired regions, on purpose: no generator can
  know the colour of one val photo's car, and a paired distance would reward painting every
  car the mean grey, which this one penalises (real cars vary).
- The classes are weighted by their share of the regions' pixels in the real set.

`colour` is in Lab units; `texture` in total-variation units (an energy distance over a distance
between 0 and 1, so between 0 and 2). With the same label maps
on both sides the two sets hold the same regions; `distance(real, real)` is exactly 0. The noise
floor at this many regions is the distance between the val photos and as many other real photos
of the same kind (the ablation's judge reports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

MIN_PIXELS = 16
# Gradient-magnitude bin edges in L* units per pixel: flat, smooth shading, texture, edges.
GRADIENT_BINS = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, np.inf])
_KERNEL = np.ones((3, 3), np.uint8)


def lab(images_u8: np.ndarray) -> np.ndarray:
    """B×H×W×3 uint8 RGB → B×H×W×3 float32 CIE L*a*b* (L* 0–100; OpenCV's D65 conversion)."""
    flat = images_u8.reshape(-1, images_u8.shape[-2], 3).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(images_u8.shape)


def gradient_magnitude(lightness: np.ndarray) -> np.ndarray:
    """H×W L* → H×W |∇L*| from central differences (one-sided at the image border)."""
    gy, gx = np.gradient(lightness)
    return np.hypot(gx, gy)


@dataclass
class RegionStats:
    """Descriptors of every region seen, per label value (the label maps' ids; 0 = void, skipped)."""
    colour: dict[int, list[np.ndarray]] = field(default_factory=dict)
    texture: dict[int, list[np.ndarray]] = field(default_factory=dict)
    pixels: dict[int, int] = field(default_factory=dict)

    def add(self, images_u8: np.ndarray, labels: np.ndarray) -> None:
        """B×H×W×3 uint8 images and their B×H×W integer label maps."""
        for image_lab, label in zip(lab(images_u8), np.asarray(labels)):
            grad = gradient_magnitude(image_lab[..., 0])
            for c in np.unique(label):
                if c == 0:
                    continue
                inner = cv2.erode((label == c).astype(np.uint8), _KERNEL, borderType=cv2.BORDER_REPLICATE) > 0
                n = int(inner.sum())
                if n < MIN_PIXELS:
                    continue
                px = image_lab[inner]
                hist = np.histogram(grad[inner], GRADIENT_BINS)[0] / n
                self.colour.setdefault(int(c), []).append(np.concatenate([px.mean(0), px.std(0)]))
                self.texture.setdefault(int(c), []).append(hist)
                self.pixels[int(c)] = self.pixels.get(int(c), 0) + n


def energy_distance(x: np.ndarray, y: np.ndarray, p: int) -> float:
    """Energy distance (the V-statistic: ≥ 0, exactly 0 for equal sets) between the rows of x and
    y under the L`p` distance (2: Euclidean; 1: city block, which is twice the total variation)."""
    def mean_dist(a, b):
        return float(np.linalg.norm(a[:, None, :] - b[None, :, :], ord=p, axis=-1).mean())
    return max(0.0, 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def distance(real: RegionStats, fake: RegionStats) -> dict:
    """Per-class and class-weighted colour and texture distances of `fake`'s regions from `real`'s.
    A class with regions on one side only (other label maps: the noise floor) is left out of both
    terms, the weights renormalised, and listed under `missing`."""
    shared = [c for c in sorted(real.pixels) if c in fake.pixels]
    total = sum(real.pixels[c] for c in shared)
    per_class = {c: {"colour": energy_distance(np.stack(real.colour[c]), np.stack(fake.colour[c]), 2),
                     "texture": 0.5 * energy_distance(np.stack(real.texture[c]), np.stack(fake.texture[c]), 1),
                     "regions": len(real.colour[c]), "weight": real.pixels[c] / total} for c in shared}
    return {"colour": sum(v["weight"] * v["colour"] for v in per_class.values()),
            "texture": sum(v["weight"] * v["texture"] for v in per_class.values()),
            "classes": per_class, "missing": sorted(set(real.pixels) ^ set(fake.pixels))}

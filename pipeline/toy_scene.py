"""Scene grammar of the toy datasets: streets and parks seen in perspective, painted far to near.

The grammar knows nothing about datasets. It paints an RGB photo and, for every pixel, an abstract
*role* (sky, car, window, …) and the index of the object that covers it onto a `Canvas`;
`pipeline/toy.py` maps roles to each dataset's native class ids by name and encodes objects the
way that dataset encodes instances. Objects carry sub-parts (a car's windows, wheels and lights, a
tree's trunk and canopy, a person's head, torso and legs, a building's window grid) painted in
their own colours: parts drawn with their object's role and index change the photo but not the
label map, which is what makes shape retrieval on real data harder than matching flat blobs.

Everything random comes from the one `numpy.random.Generator` passed in, and drawing is OpenCV
rasterisation into the object's bounding box, so a scene is a pure function of its generator.

A `Density` scales how crowded a scene is (the count range of every object spawn, and the cap on
a scene's windows), so the realistic presets of `toy.py` can match a real dataset's instances per
image. The default density draws exactly what the grammar always drew: a scaled count range is
only computed when the scale differs from 1, so the generator sees the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

ROLES = (
    "void", "sky", "mountain", "building", "window", "door", "road", "sidewalk", "grass", "path",
    "water", "tree", "plant", "pole", "traffic_light", "sign", "car", "bus", "truck", "bicycle",
    "person", "dog", "bench", "ego_vehicle",
)
ROLE_INDEX = {r: i for i, r in enumerate(ROLES)}
SCENE_KINDS = ("street", "park")
# ADE20K stores instance ids in one byte; leave headroom under 255 for every format.
MAX_OBJECTS = 240
MAX_WINDOWS = 80



@dataclass(frozen=True)
class Density:
    """How crowded a scene is. `objects` multiplies the count range of every object spawn
    (vehicles, people, trees, poles, park spawns, crowd members); `max_windows` caps the window
    instances of a scene (windows beyond it are not painted)."""

    objects: float = 1.0
    max_windows: int = MAX_WINDOWS

    def count(self, rng: np.random.Generator, lo: int, hi: int) -> int:
        """A spawn count drawn from [lo, hi) scaled by `objects` (the unscaled call when it is 1)."""
        if self.objects != 1.0:
            lo = round(lo * self.objects)
            hi = max(lo + 1, round(hi * self.objects))
        return int(rng.integers(lo, hi))


Texture = Callable[[np.random.Generator, int, int], np.ndarray]   # (rng, h, w) -> h×w×3 float32
Prim = tuple

# ------------------------------------------------------------------ textures


def _smooth(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bicubically (h×w float32)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def noise_tex(colour, amp: float = 14.0, cell: float = 5.0, grain: float = 5.0) -> Texture:
    c = np.asarray(colour, np.float32)

    def render(rng, h, w):
        n = _smooth(rng, h, w, cell) * amp + rng.standard_normal((h, w), dtype=np.float32) * grain
        return c + n[..., None]
    return render


def flat_tex(colour, grain: float = 3.0) -> Texture:
    return noise_tex(colour, amp=0.0, grain=grain)


def gradient_tex(c0, c1, grain: float = 2.0, horizontal: bool = False) -> Texture:
    a, b = np.asarray(c0, np.float32), np.asarray(c1, np.float32)

    def render(rng, h, w):
        t = np.linspace(0.0, 1.0, w if horizontal else h, dtype=np.float32)
        t = t[None, :, None] if horizontal else t[:, None, None]
        img = a + (b - a) * t + rng.standard_normal((h, w, 1), dtype=np.float32) * grain
        return np.broadcast_to(img, (h, w, 3))
    return render


def stripes_tex(c0, c1, period: float, angle: float, grain: float = 4.0, hard: bool = True) -> Texture:
    a, b = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    cos, sin, period = np.cos(angle), np.sin(angle), max(period, 1.5)

    def render(rng, h, w):
        k = np.float32(2 * np.pi / period)
        phase = (np.arange(h, dtype=np.float32)[:, None] * (sin * k) + np.float32(rng.uniform(0, 2 * np.pi))
                 + np.arange(w, dtype=np.float32)[None, :] * (cos * k))
        wave = np.sin(phase)
        t = (wave > 0).astype(np.float32) if hard else 0.5 + 0.5 * wave
        return a + (b - a) * t[..., None] + rng.standard_normal((h, w, 1), dtype=np.float32) * grain
    return render


def _jit(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


CAR_COLOURS = ((200, 30, 30), (30, 60, 170), (235, 235, 235), (25, 25, 25), (160, 165, 170),
               (230, 190, 30), (40, 120, 60), (120, 40, 110))
FACADE_COLOURS = ((215, 200, 170), (165, 160, 155), (160, 75, 55), (235, 230, 220), (120, 110, 100))
SKIN = ((240, 200, 170), (200, 150, 110), (140, 95, 65), (95, 65, 45))
CLOTHES = ((200, 40, 40), (40, 60, 150), (30, 30, 30), (230, 230, 230), (60, 130, 70),
           (240, 200, 40), (120, 80, 50), (150, 150, 160))
GREENS = ((50, 110, 40), (70, 140, 50), (30, 80, 35), (100, 150, 60))
GLASS = ((60, 80, 110), (140, 170, 200))
TYRE = (25, 25, 28)

# ------------------------------------------------------------------ primitives and canvas


def rect(x0, y0, x1, y1) -> Prim:
    return ("poly", np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64))


def poly(points) -> Prim:
    return ("poly", np.asarray(points, np.float64))


def ellipse(cx, cy, ax, ay, angle: float = 0.0) -> Prim:
    return ("ellipse", cx, cy, ax, ay, angle)


def ring(cx, cy, r, thickness) -> Prim:
    return ("ring", cx, cy, r, r, thickness)


def line(x0, y0, x1, y1, thickness) -> Prim:
    return ("line", np.array([[x0, y0], [x1, y1]], np.float64), thickness)


def _extent(p: Prim) -> tuple[float, float, float, float]:
    if p[0] in ("poly", "line"):
        pts = p[1]
        pad = p[2] / 2 + 1 if p[0] == "line" else 0
        return pts[:, 0].min() - pad, pts[:, 1].min() - pad, pts[:, 0].max() + pad, pts[:, 1].max() + pad
    _, cx, cy, ax, ay, extra = p
    r = max(ax, ay) + (extra if p[0] == "ring" else 0) + 1
    return cx - r, cy - r, cx + r, cy + r


def _ipt(x, y) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def rasterise(prims: list[Prim], h: int, w: int):
    """Union of primitives as (y0, x0, bool mask of the clipped bounding box), or None if off-image."""
    ext = np.array([_extent(p) for p in prims])
    x0, y0 = max(0, int(np.floor(ext[:, 0].min()))), max(0, int(np.floor(ext[:, 1].min())))
    x1, y1 = min(w - 1, int(np.ceil(ext[:, 2].max()))), min(h - 1, int(np.ceil(ext[:, 3].max())))
    if x1 < x0 or y1 < y0:
        return None
    m = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    off = np.array([x0, y0], np.float64)
    for p in prims:
        kind = p[0]
        if kind == "poly":
            cv2.fillPoly(m, [np.round(p[1] - off).astype(np.int32)], 1)
        elif kind == "line":
            a, b = np.round(p[1] - off).astype(np.int64).tolist()
            cv2.line(m, tuple(a), tuple(b), 1, thickness=max(1, int(round(p[2]))))
        else:
            _, cx, cy, ax, ay, extra = p
            axes = (max(1, int(round(ax))), max(1, int(round(ay))))
            centre = _ipt(cx - x0, cy - y0)
            if kind == "ellipse":
                cv2.ellipse(m, centre, axes, float(extra), 0, 360, 1, -1)
            else:
                cv2.ellipse(m, centre, axes, 0.0, 0, 360, 1, max(1, int(round(extra))))
    if not m.any():
        return None
    return y0, x0, m.astype(bool)


class Canvas:
    """A photo under construction plus, per pixel, its role index and object index (0 = none)."""

    def __init__(self, h: int, w: int, density: Density = Density()):
        self.h, self.w, self.density = h, w, density
        self.image = np.zeros((h, w, 3), np.float32)
        self.role = np.zeros((h, w), np.uint8)
        self.obj = np.zeros((h, w), np.int32)
        # objects[i] = (role, is_group) for object index i; index 0 is "no object"
        self.objects: list[tuple[str, bool]] = [("void", False)]
        self.n_windows = 0

    def new_object(self, role: str, group: bool = False) -> int:
        """Register an object (an instance, or a crowd when `group`); 0 once the budget is spent."""
        if len(self.objects) > MAX_OBJECTS:
            return 0
        self.objects.append((role, group))
        return len(self.objects) - 1

    def draw(self, rng: np.random.Generator, prims: list[Prim], tex: Texture,
             role: str | None = None, obj: int = 0) -> None:
        """Paint `tex` over the union of `prims`; label it `role`/`obj` unless role is None (paint only)."""
        r = rasterise(prims, self.h, self.w)
        if r is None:
            return
        y0, x0, m = r
        hh, ww = m.shape
        box = (slice(y0, y0 + hh), slice(x0, x0 + ww))
        np.copyto(self.image[box], tex(rng, hh, ww), where=m[..., None])
        if role is not None:
            if obj:
                assert self.objects[obj][0] == role, (self.objects[obj], role)
            np.copyto(self.role[box], ROLE_INDEX[role], where=m, casting="unsafe")
            np.copyto(self.obj[box], obj, where=m, casting="unsafe")

    def photo(self, rng: np.random.Generator) -> np.ndarray:
        """The finished RGB photo (H×W×3 uint8): a slight lens blur and sensor grain."""
        img = cv2.GaussianBlur(self.image, (0, 0), 0.6)
        img += rng.standard_normal((self.h, self.w, 1), dtype=np.float32) * 2.0
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class View:
    """A ground plane in one-point perspective: horizon row `hz`, vanishing column `vx`."""
    h: int
    w: int
    hz: float
    vx: float

    def y_at(self, depth: float) -> float:
        return self.hz + depth * (self.h - self.hz)

    def depth(self, y: float) -> float:
        return (y - self.hz) / (self.h - self.hz)


# ------------------------------------------------------------------ background layers


def _sky(cv: Canvas, rng, view: View) -> None:
    top = _jit(rng, _pick(rng, ((60, 110, 190), (110, 150, 210), (150, 160, 175))), 15)
    bottom = np.clip(top + rng.uniform(40, 90), 0, 255)
    cv.draw(rng, [rect(0, 0, view.w, view.hz + 2)], gradient_tex(top, bottom), "sky")
    for _ in range(int(rng.integers(0, 4))):      # clouds are painted sky
        cx, cy = rng.uniform(0, view.w), rng.uniform(0, view.hz * 0.7)
        ax = view.w * rng.uniform(0.06, 0.16)
        blobs = [ellipse(cx + dx * ax, cy + rng.uniform(-0.2, 0.2) * ax, ax * rng.uniform(0.5, 0.9),
                         ax * rng.uniform(0.25, 0.45)) for dx in (-0.6, 0.0, 0.6)]
        cv.draw(rng, blobs, noise_tex(_jit(rng, (238, 240, 245), 8), 6, 4, 2), "sky")


def _mountains(cv: Canvas, rng, view: View) -> None:
    """One or two ridges; a far ridge can split into separate peaks (several components)."""
    for layer in range(int(rng.integers(1, 3))):
        xs = np.linspace(-2, view.w + 2, 24)
        profile = _smooth(rng, 1, 24, 4.0)[0]
        height = view.hz * rng.uniform(0.15, 0.45) * (1.0 - 0.3 * layer)
        ys = view.hz - np.maximum(profile * 0.6 + rng.uniform(-0.2, 0.5), 0.0) * height
        pts = np.concatenate([np.stack([xs, ys], 1), [[view.w + 2, view.hz + 2], [-2, view.hz + 2]]])
        base = _jit(rng, _pick(rng, ((110, 120, 140), (90, 110, 90), (130, 120, 110))), 15)
        cv.draw(rng, [poly(pts)], gradient_tex(base * 1.15, base * 0.85, 3), "mountain")


def _building(cv: Canvas, rng, x0: float, x1: float, top: float, base: float) -> None:
    colour = _jit(rng, _pick(rng, FACADE_COLOURS), 15)
    if rng.random() < 0.5:
        tex = noise_tex(colour, 10, 4, 5)
    else:
        tex = stripes_tex(colour, colour * 0.85, rng.uniform(2, 5), np.pi / 2 * int(rng.integers(2)), 3)
    prims = [rect(x0, top, x1, base)]
    if rng.random() < 0.3:        # pitched roof
        prims.append(poly([(x0, top), (x1, top), ((x0 + x1) / 2, top - (x1 - x0) * rng.uniform(0.15, 0.4))]))
    cv.draw(rng, prims, tex, "building")
    bw, bh = x1 - x0, base - top
    cell = max(3.0, cv.h * rng.uniform(0.035, 0.06))
    nx, ny = int(bw // cell), int((bh * 0.85) // cell)
    if nx >= 1 and ny >= 1 and cell >= 3.5:
        glass = gradient_tex(*[_jit(rng, g, 10) for g in GLASS], grain=3)
        margin_x = (bw - nx * cell) / 2
        for j in range(ny):
            for i in range(nx):
                if cv.n_windows >= cv.density.max_windows:
                    break
                wx, wy = x0 + margin_x + i * cell, top + cell * 0.4 + j * cell
                cv.n_windows += 1
                obj = cv.new_object("window")
                cv.draw(rng, [rect(wx + cell * 0.2, wy + cell * 0.15, wx + cell * 0.75, wy + cell * 0.75)],
                        glass, "window", obj)
    if bw > 6 and rng.random() < 0.6:
        dw = max(2.0, bw * rng.uniform(0.12, 0.25))
        dx = x0 + rng.uniform(0.1, 0.9) * (bw - dw)
        obj = cv.new_object("door")
        cv.draw(rng, [rect(dx, base - min(bh * 0.4, dw * 2.0), dx + dw, base)],
                noise_tex(_jit(rng, (90, 60, 40), 25), 6, 3, 3), "door", obj)


def _building_rows(cv: Canvas, rng, view: View) -> None:
    """Buildings on both sides of the street, with gaps of sky between some of them."""
    gap = view.w * rng.uniform(0.04, 0.12)
    for lo, hi in ((-2.0, view.vx - gap), (view.vx + gap, view.w + 2.0)):
        x = lo
        while x < hi:
            bw = view.w * rng.uniform(0.1, 0.3)
            x1 = min(hi, x + bw)
            if rng.random() < 0.85 and x1 - x > 3:
                top = view.hz - view.h * rng.uniform(0.12, 0.45)
                _building(cv, rng, x, x1, max(top, -5.0), view.hz + 1)
            x = x1 + view.w * rng.uniform(0.0, 0.04)


# ------------------------------------------------------------------ objects


def _car_rear(cv: Canvas, rng, cx, yb, W, obj: int | None = None, role: str = "car") -> None:
    obj = cv.new_object(role) if obj is None else obj
    Hc = W * rng.uniform(0.7, 0.9)
    body = _jit(rng, _pick(rng, CAR_COLOURS), 15)
    x0, x1 = cx - W / 2, cx + W / 2
    tw = W * 0.16
    tyres = [rect(x0 + W * 0.05, yb - Hc * 0.25, x0 + W * 0.05 + tw, yb),
             rect(x1 - W * 0.05 - tw, yb - Hc * 0.25, x1 - W * 0.05, yb)]
    cv.draw(rng, tyres, flat_tex(TYRE), role, obj)
    cabin = poly([(x0 + W * 0.06, yb - Hc * 0.6), (x1 - W * 0.06, yb - Hc * 0.6),
                  (x1 - W * 0.18, yb - Hc), (x0 + W * 0.18, yb - Hc)])
    cv.draw(rng, [rect(x0, yb - Hc * 0.62, x1, yb - Hc * 0.15), cabin], noise_tex(body, 8, 6, 3), role, obj)
    window = poly([(x0 + W * 0.13, yb - Hc * 0.64), (x1 - W * 0.13, yb - Hc * 0.64),
                   (x1 - W * 0.22, yb - Hc * 0.95), (x0 + W * 0.22, yb - Hc * 0.95)])
    cv.draw(rng, [window], gradient_tex(*GLASS[::-1]), role, obj)
    lights = [rect(x0 + W * 0.04, yb - Hc * 0.52, x0 + W * 0.18, yb - Hc * 0.42),
              rect(x1 - W * 0.18, yb - Hc * 0.52, x1 - W * 0.04, yb - Hc * 0.42)]
    cv.draw(rng, lights, flat_tex((210, 30, 25)), role, obj)
    cv.draw(rng, [rect(cx - W * 0.12, yb - Hc * 0.36, cx + W * 0.12, yb - Hc * 0.25)], flat_tex((235, 235, 225)),
            role, obj)


def _side_frame(cx, yb, L, H, facing):
    """Map (u along the vehicle in [-0.5, 0.5], front at +0.5; v up in [0, 1]) to image points."""
    return lambda u, v: (cx + facing * u * L, yb - v * H)


def _wheels(cv, rng, P, us, r_v, H, role, obj) -> None:
    r = r_v * H
    tyres = [ellipse(*P(u, r_v), r, r) for u in us]
    cv.draw(rng, tyres, flat_tex(TYRE), role, obj)
    cv.draw(rng, [ellipse(*P(u, r_v), r * 0.5, r * 0.5) for u in us], flat_tex((170, 170, 175)), role, obj)


def _car_side(cv: Canvas, rng, cx, yb, L) -> None:
    obj, facing = cv.new_object("car"), _pick(rng, (-1, 1))
    H = L * rng.uniform(0.36, 0.46)
    P = _side_frame(cx, yb, L, H, facing)
    body = _jit(rng, _pick(rng, CAR_COLOURS), 15)
    lower = poly([P(-0.5, 0.18), P(0.5, 0.18), P(0.5, 0.5), P(0.46, 0.6), P(-0.5, 0.62)])
    cabin = poly([P(-0.4, 0.6), P(0.28, 0.6), P(0.12, 1.0), P(-0.3, 1.0)])
    cv.draw(rng, [lower, cabin], noise_tex(body, 8, 6, 3), "car", obj)
    glass = gradient_tex(*GLASS[::-1])
    cv.draw(rng, [poly([P(-0.35, 0.63), P(-0.1, 0.63), P(-0.1, 0.94), P(-0.27, 0.94)]),
                  poly([P(-0.06, 0.63), P(0.22, 0.63), P(0.1, 0.94), P(-0.06, 0.94)])], glass, "car", obj)
    cv.draw(rng, [rect(*P(0.45, 0.5), *P(0.5, 0.42))], flat_tex((250, 230, 150)), "car", obj)
    cv.draw(rng, [rect(*P(-0.5, 0.5), *P(-0.46, 0.42))], flat_tex((200, 30, 25)), "car", obj)
    _wheels(cv, rng, P, (-0.3, 0.3), 0.2, H, "car", obj)


def _bus_side(cv: Canvas, rng, cx, yb, L) -> None:
    obj, facing = cv.new_object("bus"), _pick(rng, (-1, 1))
    H = L * rng.uniform(0.3, 0.38)
    P = _side_frame(cx, yb, L, H, facing)
    colour = _jit(rng, _pick(rng, ((200, 40, 40), (240, 200, 40), (40, 90, 170), (235, 235, 235))), 15)
    cv.draw(rng, [rect(*P(-0.5, 0.12), *P(0.5, 1.0))], noise_tex(colour, 6, 6, 3), "bus", obj)
    cv.draw(rng, [rect(*P(-0.5, 0.45), *P(0.5, 0.52))], flat_tex(colour * 0.6), "bus", obj)
    n = int(rng.integers(4, 8))
    glass = gradient_tex(*GLASS[::-1])
    wins = [rect(*P(-0.46 + k * 0.84 / n, 0.58), *P(-0.46 + (k + 0.8) * 0.84 / n, 0.9)) for k in range(n)]
    cv.draw(rng, wins + [rect(*P(0.41, 0.3), *P(0.48, 0.92))], glass, "bus", obj)
    _wheels(cv, rng, P, (-0.32, 0.3), 0.14, H, "bus", obj)


def _truck_side(cv: Canvas, rng, cx, yb, L) -> None:
    obj, facing = cv.new_object("truck"), _pick(rng, (-1, 1))
    H = L * rng.uniform(0.38, 0.5)
    P = _side_frame(cx, yb, L, H, facing)
    cab = _jit(rng, _pick(rng, CAR_COLOURS), 15)
    box = _jit(rng, _pick(rng, ((230, 230, 230), (180, 150, 90), (120, 130, 140))), 10)
    cv.draw(rng, [rect(*P(-0.5, 0.15), *P(0.2, 1.0))], stripes_tex(box, box * 0.9, 4, 0.0, 3, hard=False),
            "truck", obj)
    cv.draw(rng, [poly([P(0.22, 0.15), P(0.5, 0.15), P(0.5, 0.45), P(0.4, 0.72), P(0.22, 0.72)])],
            noise_tex(cab, 6, 5, 3), "truck", obj)
    cv.draw(rng, [poly([P(0.3, 0.47), P(0.45, 0.47), P(0.39, 0.67), P(0.3, 0.67)])], gradient_tex(*GLASS[::-1]),
            "truck", obj)
    _wheels(cv, rng, P, (-0.36, -0.15, 0.34), 0.13, H, "truck", obj)


def _person(cv: Canvas, rng, cx, yb, Hp, obj: int | None = None) -> None:
    obj = cv.new_object("person") if obj is None else obj
    skin, shirt, legs = _jit(rng, _pick(rng, SKIN), 10), _jit(rng, _pick(rng, CLOTHES)), _jit(rng, _pick(rng, CLOTHES))
    stride, lw = Hp * rng.uniform(0.0, 0.12), max(1.0, Hp * 0.075)
    hip, shoulder = yb - 0.47 * Hp, yb - 0.82 * Hp
    leg_prims = [poly([(cx - lw * 1.1, hip), (cx, hip), (cx - stride + lw * 0.1, yb), (cx - stride - lw, yb)]),
                 poly([(cx, hip), (cx + lw * 1.1, hip), (cx + stride + lw, yb), (cx + stride - lw * 0.1, yb)])]
    cv.draw(rng, leg_prims, noise_tex(legs, 6, 3, 3), "person", obj)
    arm = max(1.0, Hp * 0.05)
    arms = [line(cx - Hp * 0.12, shoulder + arm, cx - Hp * 0.14 - stride * 0.5, yb - 0.5 * Hp, arm * 1.4),
            line(cx + Hp * 0.12, shoulder + arm, cx + Hp * 0.14 + stride * 0.5, yb - 0.5 * Hp, arm * 1.4)]
    torso = poly([(cx - Hp * 0.13, shoulder), (cx + Hp * 0.13, shoulder), (cx + Hp * 0.1, hip - Hp * 0.02),
                  (cx - Hp * 0.1, hip - Hp * 0.02)])
    cv.draw(rng, [torso] + arms, noise_tex(shirt, 8, 3, 3), "person", obj)
    cv.draw(rng, [ellipse(cx, yb - 0.9 * Hp, Hp * 0.065, Hp * 0.08)], flat_tex(skin, 2), "person", obj)
    hair = _jit(rng, _pick(rng, ((30, 20, 15), (90, 60, 30), (200, 170, 100), (120, 120, 120))), 10)
    cv.draw(rng, [ellipse(cx, yb - 0.945 * Hp, Hp * 0.068, Hp * 0.04)], flat_tex(hair, 3), "person", obj)


def _bicycle(cv: Canvas, rng, cx, yb, Hb) -> None:
    obj = cv.new_object("bicycle")
    r, t = Hb * 0.36, max(1.0, Hb * 0.06)
    frame = _jit(rng, _pick(rng, CAR_COLOURS), 20)
    back, front = (cx - Hb * 0.55, yb - r), (cx + Hb * 0.55, yb - r)
    cv.draw(rng, [ring(*back, r, t), ring(*front, r, t)], flat_tex(TYRE), "bicycle", obj)
    seat, bar, crank = (cx - Hb * 0.15, yb - Hb * 0.85), (cx + Hb * 0.4, yb - Hb * 0.95), (cx, yb - r)
    bars = [line(*back, *seat, t), line(*seat, *crank, t), line(*crank, *back, t), line(*seat, *bar, t),
            line(*bar, *front, t), line(*crank, *bar, t)]
    cv.draw(rng, bars, flat_tex(frame), "bicycle", obj)
    cv.draw(rng, [line(seat[0] - Hb * 0.1, seat[1], seat[0] + Hb * 0.08, seat[1], t * 1.3)],
            flat_tex((20, 20, 20)), "bicycle", obj)


def _tree(cv: Canvas, rng, cx, yb, Ht) -> None:
    obj = cv.new_object("tree")
    bark = _jit(rng, (95, 65, 40), 15)
    tw = max(1.0, Ht * rng.uniform(0.05, 0.08))
    cv.draw(rng, [poly([(cx - tw, yb), (cx + tw, yb), (cx + tw * 0.6, yb - Ht * 0.6), (cx - tw * 0.6, yb - Ht * 0.6)])],
            stripes_tex(bark, bark * 0.7, max(2.0, tw * 0.7), 0.0, 3), "tree", obj)
    if rng.random() < 0.3:        # conifer: stacked triangles
        for k in range(3):
            y_tip, half = yb - Ht * (1.0 - 0.18 * k), Ht * (0.18 + 0.07 * k)
            cv.draw(rng, [poly([(cx, y_tip), (cx + half, y_tip + Ht * 0.38), (cx - half, y_tip + Ht * 0.38)])],
                    noise_tex(_jit(rng, (30, 80, 45), 10), 10, 3, 5), "tree", obj)
        return
    for _ in range(int(rng.integers(2, 5))):        # leafy canopy: blobs in several greens
        ax = Ht * rng.uniform(0.18, 0.3)
        c = (cx + rng.uniform(-0.2, 0.2) * Ht, yb - Ht * rng.uniform(0.62, 0.8))
        cv.draw(rng, [ellipse(*c, ax, ax * rng.uniform(0.7, 1.0), rng.uniform(0, 180))],
                noise_tex(_jit(rng, _pick(rng, GREENS), 15), 16, 2.5, 6), "tree", obj)


def _plant(cv: Canvas, rng, cx, yb, Hs) -> None:
    obj = cv.new_object("plant")
    blobs = [ellipse(cx + rng.uniform(-0.6, 0.6) * Hs, yb - Hs * rng.uniform(0.3, 0.55),
                     Hs * rng.uniform(0.35, 0.6), Hs * rng.uniform(0.3, 0.5)) for _ in range(int(rng.integers(2, 5)))]
    cv.draw(rng, blobs, noise_tex(_jit(rng, _pick(rng, GREENS), 15), 18, 2, 6), "plant", obj)
    if rng.random() < 0.5:      # flowers: painted dots, still the plant
        dots = [ellipse(cx + rng.uniform(-0.5, 0.5) * Hs, yb - Hs * rng.uniform(0.25, 0.6), max(1.0, Hs * 0.06),
                        max(1.0, Hs * 0.06)) for _ in range(6)]
        cv.draw(rng, dots, flat_tex(_jit(rng, _pick(rng, ((230, 60, 80), (250, 220, 60), (240, 240, 250))))),
                "plant", obj)


def _pole_with_head(cv: Canvas, rng, cx, yb, Hpole) -> None:
    pole = cv.new_object("pole")
    t = max(1.0, Hpole * 0.025)
    cv.draw(rng, [rect(cx - t, yb - Hpole, cx + t, yb)], gradient_tex((120, 120, 125), (80, 80, 85), 3, True),
            "pole", pole)
    top = yb - Hpole
    if rng.random() < 0.5:
        head = cv.new_object("traffic_light")
        bw = max(2.0, Hpole * 0.09)
        cv.draw(rng, [rect(cx - bw, top, cx + bw, top + bw * 3.2)], flat_tex((35, 35, 30)), "traffic_light", head)
        lamp = [ellipse(cx, top + bw * (0.55 + 1.05 * k), bw * 0.6, bw * 0.6) for k in range(3)]
        for prim, colour in zip(lamp, ((220, 40, 30), (230, 180, 30), (40, 200, 80))):
            cv.draw(rng, [prim], flat_tex(colour if rng.random() < 0.6 else np.array(colour) * 0.35),
                    "traffic_light", head)
    else:
        head = cv.new_object("sign")
        s = max(2.0, Hpole * 0.12)
        shape = _pick(rng, ("disc", "triangle", "square"))
        outer = {"disc": ellipse(cx, top + s, s, s),
                 "triangle": poly([(cx - s, top), (cx + s, top), (cx, top + 1.8 * s)]),
                 "square": rect(cx - s, top, cx + s, top + 2 * s)}[shape]
        cv.draw(rng, [outer], flat_tex(_pick(rng, ((200, 30, 30), (30, 70, 170), (240, 200, 30)))), "sign", head)
        cv.draw(rng, [rect(cx - s * 0.5, top + s * 0.75, cx + s * 0.5, top + s * 1.2)], flat_tex((245, 245, 245)),
                "sign", head)


def _bench(cv: Canvas, rng, cx, yb, Wb) -> None:
    obj = cv.new_object("bench")
    wood, t = _jit(rng, (140, 95, 55), 20), max(1.0, Wb * 0.06)
    legs = [rect(cx - Wb * 0.45, yb - Wb * 0.3, cx - Wb * 0.45 + t, yb),
            rect(cx + Wb * 0.45 - t, yb - Wb * 0.3, cx + Wb * 0.45, yb)]
    cv.draw(rng, legs, flat_tex((40, 40, 40)), "bench", obj)
    slats = [rect(cx - Wb * 0.5, yb - Wb * 0.34, cx + Wb * 0.5, yb - Wb * 0.27),
             rect(cx - Wb * 0.5, yb - Wb * 0.6, cx + Wb * 0.5, yb - Wb * 0.5)]
    cv.draw(rng, slats, stripes_tex(wood, wood * 0.8, 3, 0.0, 3, hard=False), "bench", obj)


def _dog(cv: Canvas, rng, cx, yb, Hd) -> None:
    obj, f = cv.new_object("dog"), _pick(rng, (-1, 1))
    fur = _jit(rng, _pick(rng, ((160, 110, 60), (40, 35, 30), (220, 210, 190), (120, 90, 70))), 15)
    t = max(1.0, Hd * 0.1)
    legs = [line(cx + dx * Hd, yb - Hd * 0.5, cx + dx * Hd, yb, t) for dx in (-0.35, -0.2, 0.2, 0.35)]
    cv.draw(rng, legs + [line(cx - f * Hd * 0.45, yb - Hd * 0.6, cx - f * Hd * 0.7, yb - Hd * 0.95, t * 0.8)],
            flat_tex(fur * 0.85), "dog", obj)
    cv.draw(rng, [ellipse(cx, yb - Hd * 0.58, Hd * 0.48, Hd * 0.2)], noise_tex(fur, 10, 3, 4), "dog", obj)
    cv.draw(rng, [ellipse(cx + f * Hd * 0.5, yb - Hd * 0.85, Hd * 0.17, Hd * 0.15),
                  ellipse(cx + f * Hd * 0.65, yb - Hd * 0.8, Hd * 0.12, Hd * 0.07)], flat_tex(fur * 1.05), "dog", obj)


def _clutter(cv: Canvas, rng, cx, yb, Hc) -> None:
    """Unlabelled street furniture (bins, boxes): void in every dataset."""
    colour = _jit(rng, _pick(rng, ((60, 90, 60), (90, 90, 95), (160, 120, 60))), 20)
    if rng.random() < 0.5:
        prims = [rect(cx - Hc * 0.3, yb - Hc, cx + Hc * 0.3, yb)]
    else:
        prims = [rect(cx - Hc * 0.35, yb - Hc * 0.9, cx + Hc * 0.35, yb),
                 ellipse(cx, yb - Hc * 0.9, Hc * 0.35, Hc * 0.12)]
    cv.draw(rng, prims, noise_tex(colour, 8, 3, 4), "void")


def _car_group(cv: Canvas, rng, view: View, lo: float, hi: float) -> None:
    """A row of parked cars too far to tell apart: one crowd object (Cityscapes `cargroup`)."""
    obj = cv.new_object("car", group=True)
    d = rng.uniform(0.12, 0.25)
    y, n = view.y_at(d), cv.density.count(rng, 3, 7)
    W = max(3.0, view.h * d * 0.35)
    x = rng.uniform(lo, max(lo, hi - n * W * 0.7))
    for k in range(n):
        _car_rear(cv, rng, x + k * W * 0.7, y + rng.uniform(-0.5, 0.5) * W * 0.1, W, obj)


def _person_group(cv: Canvas, rng, view: View, x_of: Callable[[float, float], float]) -> None:
    """A crowd of overlapping pedestrians: one crowd object (Cityscapes `persongroup`, COCO iscrowd)."""
    obj = cv.new_object("person", group=True)
    d = rng.uniform(0.15, 0.35)
    for k in range(cv.density.count(rng, 4, 9)):
        dd = d + rng.uniform(-0.03, 0.03)
        _person(cv, rng, x_of(dd, k), view.y_at(dd), max(6.0, view.h * dd * 0.45), obj)


def _ego_vehicle(cv: Canvas, rng, view: View) -> None:
    """The recording car's bonnet along the bottom edge, as in every Cityscapes frame."""
    rise = view.h * rng.uniform(0.06, 0.12)
    xs = np.linspace(-1, view.w + 1, 17)
    ys = view.h - rise * (1 - ((xs - view.w / 2) / (view.w * 0.75)) ** 2)
    pts = np.concatenate([np.stack([xs, ys], 1), [[view.w + 1, view.h + 1], [-1, view.h + 1]]])
    cv.draw(rng, [poly(pts)], gradient_tex((70, 75, 85), (20, 20, 25), 2), "ego_vehicle")


# ------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class _Street:
    """A straight road to the vanishing point with a sidewalk strip on each side."""
    view: View
    rw_top: float      # road half-width at the horizon and at the bottom row
    rw_bot: float
    sw_top: float      # sidewalk outer half-width, likewise
    sw_bot: float

    def road_half(self, y: float) -> float:
        return self.rw_top + (self.rw_bot - self.rw_top) * self.view.depth(y)

    def walk_half(self, y: float) -> float:
        return self.sw_top + (self.sw_bot - self.sw_top) * self.view.depth(y)

    def on_walk(self, rng, d: float, side: int, lo: float = 0.15, hi: float = 0.85) -> tuple[float, float]:
        y = self.view.y_at(d)
        inner, outer = self.road_half(y), self.walk_half(y)
        return self.view.vx + side * (inner + rng.uniform(lo, hi) * (outer - inner)), y


def _street_ground(cv: Canvas, rng, view: View) -> _Street:
    """Grass verges, two sidewalks (two components of one class) and the road with lane marks."""
    w, h, hz, vx = view.w, view.h, view.hz, view.vx
    rw_top, rw_bot = h * rng.uniform(0.01, 0.03), h * rng.uniform(0.3, 0.6)
    st = _Street(view, rw_top, rw_bot, rw_top * 1.8, rw_bot * rng.uniform(1.35, 2.0))
    cv.draw(rng, [rect(0, hz, w, h)], noise_tex(_jit(rng, _pick(rng, GREENS), 15), 14, 3, 6), "grass")
    paving = stripes_tex(_jit(rng, (170, 165, 160), 10), (150, 145, 140), rng.uniform(3, 6), rng.uniform(0, np.pi), 4)
    cv.draw(rng, [poly([(vx - st.sw_top, hz), (vx + st.sw_top, hz), (vx + st.sw_bot, h), (vx - st.sw_bot, h)])],
            paving, "sidewalk")
    cv.draw(rng, [poly([(vx - rw_top, hz), (vx + rw_top, hz), (vx + rw_bot, h), (vx - rw_bot, h)])],
            noise_tex(_jit(rng, (85, 85, 90), 15), 6, 2, 5), "road")
    half = lambda y: rw_bot * 0.03 * view.depth(y) + 0.4   # noqa: E731  (dash half-width)
    dashes = ((view.y_at(d * d), view.y_at((d + 0.06) ** 2)) for d in np.arange(0.15, 1.0, 0.12))
    marks = [poly([(vx - half(y0), y0), (vx + half(y0), y0), (vx + half(y1), y1), (vx - half(y1), y1)])
             for y0, y1 in dashes]
    cv.draw(rng, marks, flat_tex((235, 235, 225)), "road")      # painted road
    return st


def _street_items(cv: Canvas, rng, st: _Street, force_group: bool) -> list[tuple[float, Callable[[], None]]]:
    """Objects of a street as (base row, painter), to be painted far to near."""
    view, h, vx = st.view, st.view.h, st.view.vx
    vehicles = ((0.15, _bus_side, 1.1, 1.5), (0.3, _truck_side, 0.9, 1.2), (0.55, _car_side, 0.6, 0.8),
                (1.0, _car_rear, 0.3, 0.42))
    items = []
    for _ in range(cv.density.count(rng, 1, 5)):
        d = rng.uniform(0.12, 1.0)
        y = view.y_at(d)
        x = vx + rng.uniform(-0.7, 0.7) * st.road_half(y)
        u = rng.random()
        _, fn, lo, hi = next(v for v in vehicles if u < v[0])
        items.append((y, lambda fn=fn, x=x, y=y, s=h * d * rng.uniform(lo, hi): fn(cv, rng, x, y, s)))
    for _ in range(cv.density.count(rng, 1, 6)):
        d = rng.uniform(0.12, 1.0)
        x, y = st.on_walk(rng, d, _pick(rng, (-1, 1)))
        items.append((y, lambda x=x, y=y, d=d: _person(cv, rng, x, y, h * d * rng.uniform(0.3, 0.42))))
    for _ in range(cv.density.count(rng, 1, 5)):
        d = rng.uniform(0.1, 0.9)
        y = view.y_at(d)
        x = vx + _pick(rng, (-1, 1)) * st.walk_half(y) * rng.uniform(0.95, 1.15)
        items.append((y, lambda x=x, y=y, d=d: _tree(cv, rng, x, y, h * d * rng.uniform(0.7, 1.1))))
    for _ in range(cv.density.count(rng, 0, 3)):
        x, y = st.on_walk(rng, d := rng.uniform(0.15, 0.9), _pick(rng, (-1, 1)), 0.02, 0.12)
        items.append((y, lambda x=x, y=y, d=d: _pole_with_head(cv, rng, x, y, h * d * rng.uniform(0.6, 0.85))))
    for p, fn, size in ((0.45, _bicycle, 0.22), (0.3, _bench, 0.3), (0.5, _clutter, 0.15), (0.5, _plant, 0.12)):
        if rng.random() < p:
            x, y = st.on_walk(rng, d := rng.uniform(0.2, 1.0), _pick(rng, (-1, 1)))
            items.append((y, lambda fn=fn, x=x, y=y, s=h * d * size: fn(cv, rng, x, y, s)))
    group = rng.random()
    if group < 0.35 or (force_group and group >= 0.7):
        lane = st.road_half(view.y_at(0.2))
        items.append((view.y_at(0.12), lambda: _car_group(cv, rng, view, vx - lane, vx + lane)))
    elif group < 0.7 or force_group:
        side = _pick(rng, (-1, 1))
        x_of = lambda dd, k: st.on_walk(rng, dd, side)[0]   # noqa: E731
        items.append((view.y_at(0.15), lambda: _person_group(cv, rng, view, x_of)))
    return items


def _street(cv: Canvas, rng, view: View, force_group: bool) -> None:
    _building_rows(cv, rng, view)
    st = _street_ground(cv, rng, view)
    _paint_far_to_near(_street_items(cv, rng, st, force_group))


def _park(cv: Canvas, rng, view: View, force_group: bool) -> None:
    w, h, hz, vx = view.w, view.h, view.hz, view.vx
    cv.draw(rng, [rect(0, hz, w, h)], noise_tex(_jit(rng, _pick(rng, GREENS), 15), 16, 3, 7), "grass")
    if rng.random() < 0.6:        # far tree line along the horizon
        obj = cv.new_object("tree")
        blobs = [ellipse(x, hz - w * 0.01, w * rng.uniform(0.03, 0.07), w * rng.uniform(0.03, 0.08))
                 for x in np.arange(rng.uniform(-0.05, 0.1) * w, w, w * rng.uniform(0.05, 0.12))]
        cv.draw(rng, blobs, noise_tex(_jit(rng, (40, 85, 40), 10), 14, 2, 6), "tree", obj)
    if rng.random() < 0.45:
        cx = rng.uniform(0.2, 0.8) * w
        cv.draw(rng, [ellipse(cx, view.y_at(0.12), w * rng.uniform(0.15, 0.35), (h - hz) * rng.uniform(0.05, 0.12))],
                gradient_tex(_jit(rng, (70, 110, 150), 15), (40, 70, 110), 3), "water")
    ys = np.linspace(hz + 1, h + 2, 14)
    dz = np.clip((ys - hz) / (h - hz), 0, 1)
    centre = vx + w * rng.uniform(0.1, 0.3) * np.sin(dz * rng.uniform(2, 5) + rng.uniform(0, 2 * np.pi)) * dz
    half = w * (0.005 + rng.uniform(0.06, 0.14) * dz)
    path_pts = np.concatenate([np.stack([centre - half, ys], 1), np.stack([centre + half, ys], 1)[::-1]])
    cv.draw(rng, [poly(path_pts)], noise_tex(_jit(rng, (175, 150, 110), 15), 10, 2, 8), "path")

    def on_path(d):
        return float(np.interp(view.y_at(d), ys, centre))

    items: list[tuple[float, Callable[[], None]]] = []
    spawn = ((1, 5, _tree, 0.7, 0.08, 0.8), (1, 5, _plant, 0.14, 0.15, 1.0), (2, 7, _person, 0.38, 0.12, 1.0),
             (0, 3, _dog, 0.12, 0.2, 1.0), (0, 3, _bench, 0.3, 0.2, 0.9), (0, 2, _bicycle, 0.22, 0.2, 1.0))
    for lo, hi, fn, size, d0, d1 in spawn:
        for _ in range(cv.density.count(rng, lo, hi)):
            d = rng.uniform(d0, d1)
            x = on_path(d) + rng.normal(0, 0.25) * w if fn in (_person, _dog, _bicycle) else rng.uniform(0, w)
            y = view.y_at(d)
            items.append((y, lambda fn=fn, x=x, y=y, d=d, s=size: fn(cv, rng, x, y, h * d * s * rng.uniform(0.8, 1.2))))
    if force_group or rng.random() < 0.35:
        items.append((view.y_at(0.15), lambda: _person_group(
            cv, rng, view, lambda dd, k: on_path(dd) + (k - 3) * h * 0.1 * dd)))
    _paint_far_to_near(items)


def _paint_far_to_near(items: list[tuple[float, Callable[[], None]]]) -> None:
    for _, paint in sorted(items, key=lambda it: it[0]):     # stable: ties keep spawn order
        paint()


def compose_scene(rng: np.random.Generator, h: int, w: int, kind: str, *, ego: bool = False,
                  force_group: bool = False, density: Density = Density()) -> tuple[Canvas, np.ndarray]:
    """Draw one scene; returns the canvas (roles, objects) and the finished RGB photo (H×W×3 uint8).

    `force_group` guarantees a crowd object (a car row or a pedestrian crowd) in the scene.
    """
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}")
    cv = Canvas(h, w, density)
    view = View(h, w, h * rng.uniform(0.36, 0.55), w * rng.uniform(0.3, 0.7))
    _sky(cv, rng, view)
    if rng.random() < (0.35 if kind == "street" else 0.8):
        _mountains(cv, rng, view)
    (_street if kind == "street" else _park)(cv, rng, view, force_group)
    if ego:
        _ego_vehicle(cv, rng, view)
    return cv, cv.photo(rng)

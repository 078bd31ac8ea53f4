"""The shared small operations (common.py): every nearest-neighbour rule against the library it
reproduces on a few thousand size pairs, the one photo reader (16-bit and palette photos, images too
large to decode refused before decoding), the hashes."""

import hashlib
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import resail
from resail.common import (
    nearest_cv2,
    nearest_floor,
    nearest_floor_f64,
    nearest_pil,
    nearest_torch_legacy,
    read_rgb,
    sha256_file,
    short_hash,
)
from resail.errors import InputError

ROOT = Path(resail.__file__).parent


# (input, output) sides: every pair up to 48 (down, up, equal, 1), then random ones up to 3000
SMALL = [(n, m) for n in range(1, 49) for m in range(1, 49)]
PAIRS = SMALL + [tuple(int(v) for v in p) for p in np.random.default_rng(7).integers(1, 3001, (400, 2))]


def _probes():
    """(input H×W, output H×W) of 2-D probes: each pair on one axis (rows, then columns in turn)
    and a small pair on the other, so every rule is checked on both axes."""
    for i, pair in enumerate(PAIRS):
        other = SMALL[(i * 37) % len(SMALL)]
        (h, oh), (w, ow) = (pair, other) if i % 2 else (other, pair)
        yield (h, w), (oh, ow)


def _codes(h: int, w: int) -> np.ndarray:
    return np.arange(h * w, dtype=np.int32).reshape(h, w)


def _torch_nearest(a: np.ndarray, oh: int, ow: int) -> np.ndarray:
    t = torch.from_numpy(a.astype(np.float32))[None, None]  # the official code resized float masks
    return F.interpolate(t, size=(oh, ow), mode="nearest")[0, 0].numpy().astype(np.int32)


def _pil_nearest(a: np.ndarray, oh: int, ow: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((ow, oh), Image.NEAREST))  # mode "I": 32-bit ids


@pytest.mark.parametrize("rule, references", [
    (nearest_torch_legacy, [_torch_nearest]),
    (nearest_pil, [_pil_nearest, lambda a, oh, ow: cv2.resize(a, (ow, oh), interpolation=cv2.INTER_NEAREST_EXACT)]),
    (nearest_cv2, [lambda a, oh, ow: cv2.resize(a, (ow, oh), interpolation=cv2.INTER_NEAREST)]),
])
def test_each_rule_equals_the_library_it_reproduces(rule, references):
    n = 0
    for (h, w), (oh, ow) in _probes():
        a = _codes(h, w)
        got = rule(a, oh, ow)
        for ref in references:
            assert np.array_equal(got, ref(a, oh, ow)), (rule.__name__, (h, w), (oh, ow))
        n += 1
    assert n > 2500


def _brute_force_floor(n: int, m: int) -> list[int]:
    """⌊i·n/m⌋ by its definition: the last input sample whose start j·m lies at or before i·n."""
    out, j = [], 0
    for i in range(m):  # the answer never decreases with i: walk j forward
        while j + 1 < n and (j + 1) * m <= i * n:
            j += 1
        out.append(j)
    return out


def test_exact_floor_rule_by_its_definition():
    for n, m in PAIRS:
        row = np.arange(n, dtype=np.int64)[None, :]
        assert nearest_floor(row, 1, m)[0].tolist() == _brute_force_floor(n, m), (n, m)


def test_float64_floor_rule_and_where_it_meets_torch():
    """The store's crop-mask rule is ⌊i·(n/m)⌋ in double precision; at power-of-two outputs (the
    descriptors' R and r) it equals torch's float32 rule, elsewhere not always."""
    for n, m in PAIRS:
        row = np.arange(n, dtype=np.int64)[None, :]
        assert nearest_floor_f64(row, 1, m)[0].tolist() == [min(int(i * (n / m)), n - 1) for i in range(m)]
    for n in range(1, 3000, 7):
        for side in (8, 32, 128):
            a = _codes(1, n)
            assert np.array_equal(nearest_floor_f64(a, 1, side), nearest_torch_legacy(a, 1, side))
    a = _codes(1, 198)
    assert not np.array_equal(nearest_floor_f64(a, 1, 196), nearest_torch_legacy(a, 1, 196))


def test_rules_keep_dtype_and_channels_and_return_new_contiguous_arrays():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) < 0.5
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for rule in (nearest_torch_legacy, nearest_floor, nearest_floor_f64, nearest_pil, nearest_cv2):
        m = rule(mask, 20, 90)
        assert m.dtype == bool and m.shape == (20, 90) and m.flags["C_CONTIGUOUS"]
        c = rule(rgb, 64, 30)
        assert c.shape == (64, 30, 3) and np.array_equal(c[..., 1], rule(np.ascontiguousarray(rgb[..., 1]), 64, 30))
        same = rule(mask, 37, 53)
        assert np.array_equal(same, mask) and same is not mask
    with pytest.raises(ValueError):
        nearest_floor(mask, 0, 5)


# Where a nearest resize is written inline instead of by name. The networks' F.interpolate calls
# resample tensors inside G, D and the segmentation network (torch's legacy rule itself); the
# TPS step's cv2.remap is a warp, not a resize, and its control points are picked along a contour.
INLINE = re.compile(r"cv2\.INTER_NEAREST|Image\.NEAREST|mode=\"nearest\"|np\.arange\([^)]*\)\s*\*[^\n]*//")
ALLOWED = {"common.py", "synth/norms.py", "synth/baselines/clade.py", "synth/generator.py", "synth/segnet.py", "pipeline/tps.py",
           "synth/serve.py"}  # serve: PIL's thumbnail of retrieved crops for the page, a display-only picture


def test_every_resize_site_calls_a_named_rule():
    found = []
    sources = [*ROOT.glob("*.py"), *(p for package in ("pipeline", "index", "synth") for p in (ROOT / package).rglob("*.py"))]
    for path in sorted(sources):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        found += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if INLINE.search(line)]
    assert found == []


# ---------------------------------------------------------------- photos and hashes


def test_read_rgb_decoders_agree_on_png_and_fail_with_one_line(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(read_rgb(tmp_path / "a.png"), rgb)
    assert np.array_equal(read_rgb(tmp_path / "a.png", "cv2"), rgb)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    for decoder in ("pil", "cv2"):
        with pytest.raises(InputError, match="missing.png: image file is missing"):
            read_rgb(tmp_path / "missing.png", decoder)
        with pytest.raises(InputError, match="bad.png: corrupt"):
            read_rgb(tmp_path / "bad.png", decoder)
    with pytest.raises(ValueError, match="decoder"):
        read_rgb(tmp_path / "a.png", "imageio")


def test_hashes(tmp_path):
    blob = np.random.default_rng(2).bytes(10_000)
    (tmp_path / "f").write_bytes(blob)
    assert sha256_file(tmp_path / "f", chunk=4096) == hashlib.sha256(blob).hexdigest()  # several blocks
    assert short_hash(blob) == hashlib.sha256(blob).hexdigest()[:16]


def test_sixteen_bit_grey_and_palette_photos_decode_to_their_8bit_values(tmp_path):
    grey16 = (np.arange(24 * 30, dtype=np.uint32).reshape(24, 30) * 90).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 30, 3)
    assert np.array_equal(rgb[..., 0], np.round(grey16 / 257).astype(np.uint8)) and rgb.min() == 0 and rgb.max() < 255
    pal = Image.fromarray(np.arange(24 * 30).reshape(24, 30).astype(np.uint8) % 4, "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * 756)
    pal.save(tmp_path / "p.png")
    assert read_rgb(tmp_path / "p.png")[0, :4].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width×height pixels (no pixel data): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_an_oversized_image_is_refused_before_decoding(tmp_path):
    from resail.pipeline.datasets import read_index_png

    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 12_000, 12_000)  # above resail's limit, below Pillow's own
    with pytest.raises(InputError, match=r"bomb.png: 12000x12000 pixels is above the .*-pixel limit"):
        read_rgb(bomb)
    with pytest.raises(InputError, match=r"bomb.png: 12000x12000 pixels"):
        read_index_png(bomb)
    png_header_only(bomb, 100_000, 100_000)  # Pillow refuses it as it opens it
    with pytest.raises(InputError, match="bomb.png: too many pixels"):
        read_rgb(bomb)


"""Segment store: encoding, bit-pack round trips, crops (both codecs), the streamed reader, and a
damaged store file refused by every reader and rebuilt."""

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders.checks import rebuild_store
from builders.formats import write_ade
from builders.store import write_fake_store
from resail.common import nearest_torch_legacy
from resail.errors import ConfigError, StageError
from resail.index.retrieval import RetrievalIndex
from resail.pipeline.decompose import Segment
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.pipeline.store import SegmentStore, decode_crop, decode_mask, encode_segments, rgba_crop
from resail.workdir import WorkDir

# JPEG q95 (4:4:4) inside the mask, per channel value: the tolerance of the `jpeg` crop codec.
# benchmarks/crops.py measures a mean of 1.7 and a maximum of 29 on real photos; a mask's edge,
# where the black outside enters the 8×8 DCT blocks, holds the largest errors.
JPEG_MEAN_ABS_ERR, JPEG_MAX_ABS_ERR = 4.0, 40


def _seg(mask, y0=0, x0=0):
    return Segment(1, False, y0, x0, mask.shape[0], mask.shape[1], int(mask.sum()), mask)


def test_encode_bitpack_round_trip():
    rng = np.random.default_rng(0)
    masks = [rng.random((h, w)) < 0.6 for h, w in ((5, 7), (130, 3), (1, 1))]
    for m in masks:
        m[0, :] = m[-1, :] = True
    img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    enc = encode_segments(img, [_seg(m) for m in masks], 128, 32, 64, crop_codec="raw")
    unpacked = np.unpackbits(enc.canonical, axis=1).reshape(-1, 128, 128).astype(bool)
    for i, m in enumerate(masks):
        assert np.array_equal(unpacked[i], nearest_torch_legacy(m, 128, 128))
        assert enc.canon_area[i] == nearest_torch_legacy(m, 128, 128).sum()
    assert enc.prefilter.shape == (3, 128) and enc.canonical.shape == (3, 2048)
    assert tuple(enc.crop_hw[1]) == (64, 1) and enc.crops.size == sum(h * w * 4 for h, w in enc.crop_hw)
    assert enc.crop_nbytes.tolist() == [h * w * 4 for h, w in enc.crop_hw]


def _photo_like(h, w, seed=0):
    """Smooth gradients plus mild noise: JPEG behaves on it as on a photo, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([120 + 90 * np.sin(3 * x + 1), 100 + 80 * np.cos(4 * y), 60 + 120 * x * y], axis=-1)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def test_jpeg_crop_round_trip_mask_exact_rgb_close_outside_black():
    rng = np.random.default_rng(1)
    img = _photo_like(300, 400)
    yy, xx = np.mgrid[0:120, 0:300]
    masks = [((yy - 60) ** 2 / 50**2 + (xx - 150) ** 2 / 140**2) < 1,   # longer than the cap: resized
             rng.random((9, 13)) < 0.5, np.ones((1, 1), bool), np.ones((40, 2), bool)]
    segs = [_seg(m, 10, 20) for m in masks]
    jpeg = encode_segments(img, segs, 128, 32, 256, crop_codec="jpeg")
    raw = encode_segments(img, segs, 128, 32, 256, crop_codec="raw")
    assert np.array_equal(jpeg.crop_hw, raw.crop_hw) and np.array_equal(jpeg.canonical, raw.canonical)
    assert jpeg.crops.size < raw.crops.size / 4
    off_j, off_r = np.cumsum(np.r_[0, jpeg.crop_nbytes]), np.cumsum(np.r_[0, raw.crop_nbytes])
    for i, (h, w) in enumerate(jpeg.crop_hw):
        rgb_r, mask_r = decode_crop(raw.crops[off_r[i]:off_r[i + 1]], h, w, "raw")
        rgb_j, mask_j = decode_crop(jpeg.crops[off_j[i]:off_j[i + 1]], h, w, "jpeg")
        assert np.array_equal(mask_j, mask_r) and mask_j.dtype == bool and rgb_j.dtype == np.uint8
        assert np.array_equal(decode_mask(jpeg.crops[off_j[i]:off_j[i + 1]], h, w, "jpeg"), mask_r)
        assert rgb_j.shape == rgb_r.shape and (rgb_j[~mask_j] == 0).all()
        err = np.abs(rgb_j[mask_j].astype(int) - rgb_r[mask_r])
        assert err.mean() <= JPEG_MEAN_ABS_ERR and err.max() <= JPEG_MAX_ABS_ERR


def test_rgba_crop_masks_pixels_and_caps_side():
    img = np.full((10, 12, 3), 200, np.uint8)
    m = np.zeros((4, 6), bool)
    m[1:3, 2:5] = True
    c = rgba_crop(img, _seg(m, 3, 4), 256)
    assert c.shape == (4, 6, 4) and (c[m, :3] == 200).all() and (c[~m] == 0).all() and (c[m, 3] == 255).all()
    big = np.ones((300, 100), bool)
    assert rgba_crop(np.zeros((300, 100, 3), np.uint8), _seg(big), 150).shape == (150, 50, 4)


def test_store_reader_streams_rows_and_crops(tmp_path):
    write_ade(tmp_path / "ade")
    build_segments(SegmentsConfig("ade20k", tmp_path / "ade", tmp_path / "w"))
    build_segments(SegmentsConfig("ade20k", tmp_path / "ade", tmp_path / "raw", crop_codec="raw"))
    with SegmentStore(tmp_path / "w", "train") as st, SegmentStore(tmp_path / "raw", "train") as raw:
        assert (st.crop_codec, raw.crop_codec) == ("jpeg", "raw")
        t, tr = st.table, raw.table
        assert t.drop(["crop_offset", "crop_nbytes"]).equals(tr.drop(["crop_offset", "crop_nbytes"]))
        assert np.array_equal(st.h5["canonical"][...], raw.h5["canonical"][...])
        hw4 = tr["crop_h"].to_numpy().astype(np.int64) * tr["crop_w"].to_numpy() * 4   # raw: the pre-codec layout
        assert np.array_equal(tr["crop_nbytes"].to_numpy(), hw4)
        assert np.array_equal(tr["crop_offset"].to_numpy(), np.r_[0, np.cumsum(hw4)[:-1]])
        assert st.h5["crops"].shape[0] < raw.h5["crops"].shape[0]  # tiny crops: JPEG's ~600-byte header dominates
        errors = []
        for row in range(t.num_rows):
            (rgb, mask), (rgb_r, mask_r) = st.crop(row), raw.crop(row)
            assert np.array_equal(mask, mask_r) and np.array_equal(st.crop_mask(row), mask_r)
            assert (rgb[~mask] == 0).all()
            errors.append(np.abs(rgb[mask].astype(int) - rgb_r[mask]))
        assert np.concatenate(errors).mean() <= JPEG_MEAN_ABS_ERR
    with SegmentStore(tmp_path / "w", "val") as st:
        t = st.table
        assert len(st) == t.num_rows > 0
        assert t.column("segment_id").to_pylist()[0] == SegmentStore(tmp_path / "w", "train").table.num_rows
        mm = st.canonical_packed()
        assert isinstance(mm, np.memmap) and np.array_equal(np.asarray(mm[:2]), st.h5["canonical"][:2])
        assert np.array_equal(st.canonical_masks(slice(0, 2)).sum(axis=(1, 2)), t.column("canon_area").to_numpy()[:2])
        assert st.prefilter_masks(slice(0, 3)).shape == (3, 32, 32)
        for row in range(t.num_rows):
            rgb, mask = st.crop(row)
            assert rgb.shape[:2] == mask.shape == (t.column("crop_h")[row].as_py(), t.column("crop_w")[row].as_py())
            assert mask.sum() == t.column("area")[row].as_py()   # crops are below the cap: exact
            assert (rgb[~mask] == 0).all()
        assert sum(b.num_rows for b in st.iter_batches(["class_id"], batch_size=3)) == t.num_rows
    with h5py.File(tmp_path / "w/segments/val.h5") as f:
        assert f.attrs["R"] == 128 and f.attrs["r"] == 32 and f.attrs["split"] == "val"
    img = pq.read_table(tmp_path / "w/segments/val_images.parquet").to_pylist()
    assert img[1]["first_segment_row"] == img[0]["n_segments"] and img[0]["status"] == "ok"


def test_reader_refuses_unfinished_store(tmp_path):
    with pytest.raises(StageError, match="index build"):
        SegmentStore(tmp_path, "train")


def test_codec_change_needs_rebuild(tmp_path):
    write_ade(tmp_path / "ade", n_train=2, n_val=1)
    build_segments(SegmentsConfig("ade20k", tmp_path / "ade", tmp_path / "w"))
    with pytest.raises(StageError, match="crop_codec.*--rebuild"):
        build_segments(SegmentsConfig("ade20k", tmp_path / "ade", tmp_path / "w", crop_codec="raw"))
    m = build_segments(SegmentsConfig("ade20k", tmp_path / "ade", tmp_path / "w", crop_codec="raw", rebuild=True))
    assert m["params"]["crop_codec"] == "raw"
    with SegmentStore(tmp_path / "w", "val") as st:
        assert st.crop_codec == "raw" and st.h5.attrs["crop_codec"] == "raw"
    with pytest.raises(ConfigError, match="crop_codec 'png': choose one of jpeg, raw") as e:
        SegmentsConfig("ade20k", tmp_path / "ade", tmp_path / "w", crop_codec="png")
    assert e.value.name == "crop_codec"


def test_store_written_before_codecs_reads_as_raw(tmp_path):
    """No `crop_codec` attribute and no `crop_nbytes` column (a pre-codec store): its RGBA bytes."""
    masks = np.zeros((3, 128, 128), bool)
    masks[:, 20:90, 30:100] = True
    write_fake_store(tmp_path, masks=masks, class_id=np.ones(3), bbox_area=np.full(3, 400), crop_side=8)
    with SegmentStore(tmp_path, "train") as st:
        assert st.crop_codec == "raw" and "crop_nbytes" not in st.schema.names
        rgb, mask = st.crop(2)
        assert rgb.shape == (8, 8, 3) and mask.any() and (rgb[mask] == 200).all() and (rgb[~mask] == 0).all()
        assert np.array_equal(st.crop_mask(2), mask)
    with h5py.File(tmp_path / "segments/train.h5", "a") as f:
        f.attrs["crop_codec"] = "webp"
    with SegmentStore(tmp_path, "train") as st, pytest.raises(StageError, match="unknown crop codec.*--rebuild"):
        st.crop(0)


@pytest.mark.parametrize("victim", ["train.parquet", "train.h5", "val_images.parquet"])
def test_a_truncated_or_deleted_store_file_is_refused_and_rebuilt(baked_copy, victim):
    work = baked_copy
    wd = WorkDir(work)
    path = wd.segments / victim
    if victim == "val_images.parquet":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StageError, match=f"{victim}: .*the segment store is damaged; rerun `resail index build"):
        wd.require_segments()
    with pytest.raises(StageError, match="segment store is damaged"):
        RetrievalIndex(work)
    rebuild_store(work)  # not "up to date": the store is rebuilt
    wd.require_index()

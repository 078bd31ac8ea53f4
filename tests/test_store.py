"""Segment store: encoding, bit-pack round trips, crops and the streamed reader."""

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders.formats import write_ade
from resail.errors import StageError
from resail.index.descriptors import resize_mask_nearest
from resail.pipeline.decompose import Segment
from resail.pipeline.segments_stage import SegmentsConfig, build_segments
from resail.pipeline.store import SegmentStore, encode_segments, rgba_crop


def _seg(mask, y0=0, x0=0):
    return Segment(1, False, y0, x0, mask.shape[0], mask.shape[1], int(mask.sum()), mask)


def test_encode_bitpack_round_trip():
    rng = np.random.default_rng(0)
    masks = [rng.random((h, w)) < 0.6 for h, w in ((5, 7), (130, 3), (1, 1))]
    for m in masks:
        m[0, :] = m[-1, :] = True
    img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    enc = encode_segments(img, [_seg(m) for m in masks], 128, 32, 64)
    unpacked = np.unpackbits(enc.canonical, axis=1).reshape(-1, 128, 128).astype(bool)
    for i, m in enumerate(masks):
        assert np.array_equal(unpacked[i], resize_mask_nearest(m, 128))
        assert enc.canon_area[i] == resize_mask_nearest(m, 128).sum()
    assert enc.prefilter.shape == (3, 128) and enc.canonical.shape == (3, 2048)
    assert tuple(enc.crop_hw[1]) == (64, 1) and enc.crops.size == sum(h * w * 4 for h, w in enc.crop_hw)


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

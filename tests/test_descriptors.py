import numpy as np
import torch
import torch.nn.functional as F

from resail.index.descriptors import crop_to_bbox, descriptors, pack_masks, unpack_masks


def test_descriptors_are_torch_legacy_nearest_masks():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (3, 200), (127, 129), (500, 37)]:
        m = rng.random((h, w)) < 0.5
        canon, pre = descriptors(m)
        for packed, side in ((canon, 128), (pre, 32)):
            ref = F.interpolate(torch.from_numpy(m)[None, None].float(), size=(side, side), mode="nearest")[0, 0]
            assert np.array_equal(unpack_masks(packed[None], side)[0], ref.numpy().astype(bool))


def test_pack_round_trip_and_popcount():
    rng = np.random.default_rng(1)
    m = rng.random((5, 32, 32)) < 0.3
    p = pack_masks(m)
    assert p.shape == (5, 128) and p.dtype == np.uint8
    assert np.array_equal(unpack_masks(p, 32), m)
    assert np.unpackbits(p, axis=1).sum(1).tolist() == m.reshape(5, -1).sum(1).tolist()


def test_crop_to_bbox():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    crop, box = crop_to_bbox(m)
    assert box == (2, 3, 3, 6) and crop.all()

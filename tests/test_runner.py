"""The stage runner on a trivial job: shard tiling, resume by key, the merge check and its errors."""

import h5py
import numpy as np
import pytest

from resail.errors import ConfigError, StageError
from resail.pipeline.runner import Parts, check_shard, finished_parts, run_job, shard_range


def write_part(path, a, b, key):
    with h5py.File(path, "w") as f:
        f.create_dataset("items", data=np.arange(a, b))
        f.attrs["key"] = key
    return b - a


def run(parts, calls, **flags):
    return run_job(parts, write_part, lambda a, b: (parts.path(a, b), a, b, parts.key),
                   on_result=lambda a, b, n: calls.append((a, b)), **flags)


def test_shards_tile_the_items_and_parts_tile_each_shard(tmp_path):
    parts = Parts(tmp_path, 23, 4, "k", "{a:03d}-{b:03d}.h5")
    assert [shard_range(23, i, 3) for i in range(3)] == [(0, 7), (7, 15), (15, 23)]
    assert parts.of_shard(1, 3) == [(7, 11), (11, 15)]
    assert sum((parts.of_shard(i, 3) for i in range(3)), []) == [(0, 4), (4, 7), (7, 11), (11, 15), (15, 19), (19, 23)]


def test_shard_merge_and_resume(tmp_path):
    parts, calls = Parts(tmp_path, 10, 3, "k1", "part-{a:02d}-{b:02d}.h5"), []
    assert run(parts, calls, shard=(1, 2), merge=False) is None and calls == [(5, 8), (8, 10)]
    with pytest.raises(StageError, match=r"cannot merge: shard 0/2 has not finished"):
        run(parts, calls, shard=None, merge=True)
    calls.clear()
    assert run(parts, calls, shard=None, merge=False) == [(0, 3), (3, 5), (5, 8), (8, 10)]
    assert calls == [(0, 3), (3, 5)]  # the count already started (2), only the missing shard
    parts.path(3, 5).unlink()  # a lost part: its shard is not finished any more
    with pytest.raises(StageError, match="shard 0/2 has"):
        finished_parts(parts)
    calls.clear()
    other = Parts(tmp_path, 10, 3, "k2", parts.pattern)  # another key: every part is recomputed
    assert run(other, calls, shard=None, merge=False) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert calls == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_merge_errors_name_what_to_run(tmp_path):
    parts = Parts(tmp_path, 9, 2, "k", "{a}-{b}.h5")
    with pytest.raises(StageError, match="no shard has finished"):
        finished_parts(parts)
    run(parts, [], shard=(0, 2), merge=False)
    run(parts, [], shard=(2, 3), merge=False)
    with pytest.raises(StageError, match=r"different counts \[2, 3\]"):
        finished_parts(parts)
    with pytest.raises(StageError, match="different counts"):
        run(parts, [], shard=None, merge=False)
    with pytest.raises(ConfigError, match="shard 3/3: need 0 ≤ I < N") as e:
        check_shard((3, 3))
    assert e.value.name == "shard"

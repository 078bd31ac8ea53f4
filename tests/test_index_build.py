import json
import os

import numpy as np
import pytest

from builders.formats import ADE_THING, ade_scene, write_ade
from builders.store import write_fake_store
from resail.errors import StageError
from resail.index.build import build_index
from resail.index.retrieval import RetrievalIndex
from resail.workdir import WorkDir


def make_store(work, seed=0, n=60):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 128, 128), bool)
    for i in range(n):
        y, x = rng.integers(0, 100, 2)
        masks[i, y : y + rng.integers(5, 28), x : x + rng.integers(5, 28)] = True
    class_id = np.where(np.arange(n) < n - 10, 1, 12)
    write_fake_store(work, masks=masks, class_id=class_id, bbox_area=rng.integers(100, 1000, n))


def test_build_writes_shards_and_manifest_then_skips(tmp_path):
    make_store(tmp_path)
    m = build_index(tmp_path, progress=False, ivf_threshold=40)
    names = sorted(p.name for p in (tmp_path / "index").glob("*.faiss"))
    windows = [f"c0001.w{int(j):02d}.faiss" for j in m["shards"]["1"]["windows"]]
    assert windows and names == sorted(["c0001.faiss", "c0012.faiss", *windows])
    assert m["shards"]["1"]["kind"] == "ivf" and m["shards"]["1"]["nlist"] > 0 and m["shards"]["12"]["kind"] == "flat"
    assert m["shards"]["12"]["windows"] == {}
    assert m["params"]["R"] == 128 and m["params"]["r"] == 32 and m["counts"]["segments"] == 60
    assert m["bytes"] == sum(p.stat().st_size for p in (tmp_path / "index").glob("*.faiss"))
    mtime = (tmp_path / "index" / "c0001.faiss").stat().st_mtime_ns
    again = build_index(tmp_path, progress=False, ivf_threshold=40)
    assert again["written_at"] == m["written_at"]
    assert (tmp_path / "index" / "c0001.faiss").stat().st_mtime_ns == mtime
    m = build_index(tmp_path, progress=False, ivf_threshold=1000)  # no flag sets it: another value rebuilds
    assert m["shards"]["1"]["kind"] == "flat" and m["upstream"]["segments"] == WorkDir(tmp_path).require_segments()[
        "fingerprint"]
    assert sorted(p.name for p in (tmp_path / "index").glob("*.faiss")) == ["c0001.faiss", "c0012.faiss"]
    assert sorted(m["files"]) == ["c0001.faiss", "c0012.faiss"]
    assert not list((tmp_path / "index").glob(".*tmp")) and not (tmp_path / "index.new").exists()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="no finished segment store.*index build"):
        build_index(tmp_path, progress=False)
    with pytest.raises(StageError, match="index build"):
        RetrievalIndex(tmp_path)


def test_changed_store_needs_rebuild(tmp_path):
    make_store(tmp_path)
    build_index(tmp_path, progress=False)
    make_store(tmp_path, seed=1)
    with pytest.raises(StageError, match="another segment store.*rerun `resail index build"):
        RetrievalIndex(tmp_path)
    build_index(tmp_path, progress=False)  # the new fingerprint triggers a rebuild by itself
    RetrievalIndex(tmp_path).shard(1)


def test_shard_manifest_mismatch_is_a_clear_error(tmp_path):
    make_store(tmp_path)
    build_index(tmp_path, progress=False)
    path = tmp_path / "index" / "manifest.json"
    m = json.loads(path.read_text())
    m["shards"]["1"]["n"] += 1
    path.write_text(json.dumps(m))
    index = RetrievalIndex(tmp_path)
    with pytest.raises(StageError, match="c0001.faiss.*--rebuild"):
        index.shard(1)
    m["shards"]["1"]["n"] -= 1
    m["shards"]["1"]["order_hash"] = "0" * 16
    path.write_text(json.dumps(m))
    with pytest.raises(StageError, match="does not match.*--rebuild"):
        RetrievalIndex(tmp_path).shard(1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "window", "same size"])
def test_corrupt_shard_file_is_a_clear_error(tmp_path, damage):
    make_store(tmp_path)
    build_index(tmp_path, progress=False, ivf_threshold=40)
    shard = tmp_path / "index" / "c0001.faiss"
    if damage == "window":
        shard, damage = sorted((tmp_path / "index").glob("c0001.w*.faiss"))[0], "garbage"
    if damage == "garbage":
        shard.write_bytes(b"not a faiss index" * 10)
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "missing":
        shard.unlink()
    else:  # bytes damaged behind the manifest's back (size and mtime kept): caught as the shard loads
        st = shard.stat()
        shard.write_bytes(b"x" * st.st_size)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
        index = RetrievalIndex(tmp_path)
        with pytest.raises(StageError, match="c0001.faiss: corrupt shard file.*--rebuild"):
            index.shard(1)
        index.shard(12)  # other shards still load
    if damage != "same size":
        with pytest.raises(StageError, match=f"{shard.name}.*index is damaged.*--rebuild"):
            RetrievalIndex(tmp_path)
        build_index(tmp_path, progress=False, ivf_threshold=40)  # a damaged index is rebuilt by itself
    else:
        build_index(tmp_path, progress=False, ivf_threshold=40, rebuild=True)
    assert RetrievalIndex(tmp_path).shard(1).n == 50


def test_cli_index_query_on_a_real_store(tmp_path, capsys):
    from PIL import Image

    from resail.cli import main
    from resail.pipeline.segments_stage import SegmentsConfig, build_segments

    root, work = tmp_path / "ade", tmp_path / "work"
    write_ade(root, n_train=4, n_val=1)
    build_segments(SegmentsConfig("ade20k", root, work))
    build_index(work, progress=False)
    _, label, _ = ade_scene(np.random.default_rng(5))
    Image.fromarray(label).save(tmp_path / "label.png")
    preview = tmp_path / "preview.png"
    assert main(["index", "query", str(work), "--label", str(tmp_path / "label.png"), "--k", "3",
                 "--preview", str(preview)]) == 0
    out = capsys.readouterr().out
    assert f"class {ADE_THING}" in out and "segment 0: class 1" in out and preview.exists()
    first = out.splitlines()[1].split()
    assert len(first) == 3 and all(":" in m for m in first)  # 3 matches as id:score
    label[label == 4] = 77  # a class absent from the store
    Image.fromarray(label).save(tmp_path / "label.png")
    assert main(["index", "query", str(work), "--label", str(tmp_path / "label.png")]) == 0
    assert "none (class 77 has no training segments" in capsys.readouterr().out
    (work / "index" / "c0001.faiss").write_bytes(b"junk")
    assert main(["index", "query", str(work), "--label", str(tmp_path / "label.png")]) == 1
    assert "--rebuild" in capsys.readouterr().err

"""The bake stage end to end on a tiny toy work dir: matches table, cache, previews, choice, editing, errors."""


import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders.work import toy_work
from resail.errors import ConfigError, InputError, StageError
from resail.index.retrieval import RetrievalIndex
from resail.index.search import SearchConfig
from resail.pipeline import bake as bake_mod
from resail.pipeline.bake import BakeConfig, bake
from resail.pipeline.guidance import (
    GuidanceComposer,
    LabelMapGuidance,
    choose_ranks,
    dense_matches,
    open_composer,
    preview_distort,
    query_label_map,
)
from resail.pipeline.store import SegmentStore
from resail.workdir import WorkDir

SIZE = (96, 96)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return toy_work(tmp_path_factory.mktemp("bake"), n_train=10, n_val=4, size=96, seed=3)


def test_bake_val_writes_contract_tables_cache_and_previews(work):
    m = bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2))
    g = work / "guidance"
    matches = pq.read_table(g / "val_matches.parquet")
    assert matches.schema.names == ["segment_id", "rank", "match_id", "score"]
    assert str(matches.schema.field("rank").type) == "int16" and str(matches.schema.field("score").type) == "float"
    val = pq.read_table(work / "segments" / "val.parquet")
    train = pq.read_table(work / "segments" / "train.parquet")
    assert set(matches["segment_id"].to_pylist()) <= set(val["segment_id"].to_pylist())
    assert set(matches["match_id"].to_pylist()) <= set(train["segment_id"].to_pylist())
    # ranks are contiguous from 0 and scores ascend within a query
    for sid in set(matches["segment_id"].to_pylist()[:20]):
        rows = matches.filter(pq.ParquetFile(g / "val_matches.parquet").read().column("segment_id").to_numpy() == sid)
        assert rows["rank"].to_pylist() == list(range(rows.num_rows))
        assert rows["score"].to_pylist() == sorted(rows["score"].to_pylist())
    with h5py.File(g / "val.h5") as f:
        assert f["guidance"].shape == (4, SIZE[1], SIZE[0], 3) and f["guidance"].dtype == np.uint8
        assert f["guidance"][...].max() > 0
        # lossless, one image per chunk: every image reads back as composed
        assert f["guidance"].compression == "gzip" and f["guidance"].chunks == (1, SIZE[1], SIZE[0], 3)
        comp = open_composer(work, "val")
        try:
            for i, row in enumerate(comp.ok_images()):
                assert np.array_equal(f["guidance"][i], comp.compose(int(row)))
        finally:
            comp.close()
        assert [s.decode() for s in f["image_id"][...]] == pq.read_table(
            work / "segments" / "val_images.parquet")["image_id"].to_pylist()
    assert len(list((g / "val_preview").glob("*.png"))) == 2
    assert m["images"] == 4 and (g / "val_manifest.json").exists()
    assert not (g / "val.new").exists() and sorted(m["files"]) == ["val.h5", "val_matches.parquet"]


def test_train_queries_never_retrieve_themselves(work):
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0))
    t = pq.read_table(work / "guidance" / "train_matches.parquet")
    assert t.num_rows > 0
    assert not np.any(t["segment_id"].to_numpy() == t["match_id"].to_numpy())


def test_unchanged_bake_is_skipped_and_changed_parameter_needs_rebuild(work):
    cfg = BakeConfig(work, "val", k=5, size=SIZE, n_preview=2)
    first = bake(cfg)
    assert bake(cfg)["written_at"] == first["written_at"]
    with pytest.raises(StageError, match=r"compose_mode \"clean\" → \"official\".*--rebuild"):
        bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2, compose_mode="official"))
    assert WorkDir(work).require_guidance("val")["fingerprint"] == first["fingerprint"]  # untouched
    other = bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2, compose_mode="official", rebuild=True))
    assert other["params"]["compose_mode"] == "official"
    assert WorkDir(work).require_guidance("val")["fingerprint"] == other["fingerprint"]
    bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=2, rebuild=True))  # back to the bake the others read


def test_sample_choice_is_reproducible_and_varies_with_seed():
    ids = np.arange(60).reshape(20, 3)
    ids[0] = -1
    ids[1, 1:] = -1
    sid = np.arange(100, 120)
    a = choose_ranks(ids, sid, "sample", seed=1)
    assert np.array_equal(a, choose_ranks(ids, sid, "sample", seed=1))
    assert not np.array_equal(a, choose_ranks(ids, sid, "sample", seed=2))
    assert a[0] == -1 and a[1] == 0 and ((a[2:] >= 0) & (a[2:] < 3)).all()
    assert (choose_ranks(ids, sid, "top1", seed=0)[1:] == 0).all()
    # per-segment draws: the same segment gets the same rank whatever batch it is in
    assert np.array_equal(choose_ranks(ids[5:], sid[5:], "sample", 1), a[5:])


def test_local_edit_changes_only_the_chosen_segment(work):
    bake(BakeConfig(work, "val", k=5, size=SIZE, n_preview=0))
    comp = GuidanceComposer(work, "val", SIZE)
    try:
        matches = pq.read_table(work / "guidance" / "val_matches.parquet")
        comp.ids, _ = dense_matches(matches, comp.segment_id, 5)
        comp.chosen = choose_ranks(comp.ids, comp.segment_id, "top1", 0)
        row = int(comp.ok_images()[0])
        base = comp.compose(row)
        with h5py.File(work / "guidance" / "val.h5") as f:
            assert np.array_equal(base, f["guidance"][0])
        seg_map, rows, _ = comp.segment_map(row)
        # pick a stuff segment with at least two candidates and swap in its second match
        cand = [i for i, r in enumerate(rows) if not comp.is_thing[r] and comp.ids[r, 1] >= 0]
        i = max(cand, key=lambda i: (seg_map == i).sum())
        r = rows[i]
        edited = comp.compose(row, {int(comp.segment_id[r]): int(comp.ids[r, 1])})
        changed = np.any(edited != base, axis=2)
        assert changed.any()
        assert not changed[seg_map != i].any()  # every other segment keeps its guidance
        black = comp.compose(row, {int(comp.segment_id[r]): -1})
        assert (black[seg_map == i] == 0).all()
    finally:
        comp.close()


def test_interrupted_bake_resumes_to_the_same_cache(work, monkeypatch):
    cfg = BakeConfig(work, "train", k=3, size=SIZE, n_preview=0, rebuild=True)
    monkeypatch.setattr(bake_mod, "PART_IMAGES", 4)
    real = bake_mod._bake_part
    calls = []

    def crash_on_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash")
        return real(*args)

    monkeypatch.setattr(bake_mod, "_bake_part", crash_on_second)
    with pytest.raises(RuntimeError, match="injected"):
        bake(cfg)
    parts = list(WorkDir(work).guidance_parts("train").glob("part-*.h5"))
    assert len(parts) == 1
    monkeypatch.setattr(bake_mod, "_bake_part", real)
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0))
    with h5py.File(work / "guidance" / "train.h5") as f:
        resumed = f["guidance"][...]
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0, rebuild=True))
    with h5py.File(work / "guidance" / "train.h5") as f:
        assert np.array_equal(resumed, f["guidance"][...])


def test_bad_input(work, tmp_path):
    with pytest.raises(ConfigError, match="k 0: must be at least 1") as e:
        BakeConfig(work, "val", k=0)
    assert e.value.name == "k"
    with pytest.raises(ConfigError, match="k_prefilter 256 must be at least k 300") as e:
        BakeConfig(work, "val", k=300)
    assert e.value.name == "k_prefilter"
    with pytest.raises(StageError, match="resail index build"):
        bake(BakeConfig(tmp_path, "val"))
    only_segments = tmp_path / "w"
    (only_segments / "segments").mkdir(parents=True)
    for f in (work / "segments").iterdir():
        (only_segments / "segments" / f.name).symlink_to(f)
    with pytest.raises(StageError, match="index"):
        bake(BakeConfig(only_segments, "val"))
    no_val = tmp_path / "noval"
    (no_val / "segments").mkdir(parents=True)
    for f in (work / "segments").iterdir():
        if not f.name.startswith("val"):
            (no_val / "segments" / f.name).symlink_to(f)
    (no_val / "index").symlink_to(work / "index")
    with pytest.raises(StageError, match="val.h5: missing.*index build"):
        bake(BakeConfig(no_val, "val"))


def test_distorted_gt_is_seeded_and_composed_like_guidance(work, tmp_path):
    bake(BakeConfig(work, "train", k=3, size=SIZE, n_preview=0))
    comp = open_composer(work, "train")
    try:
        row = int(comp.ok_images()[0])
        a = comp.distorted_gt(row, np.random.default_rng(5))
        b = comp.distorted_gt(row, np.random.default_rng(5))
        c = comp.distorted_gt(row, np.random.default_rng(6))
        assert a.shape == (SIZE[1], SIZE[0], 3) and np.array_equal(a, b) and not np.array_equal(a, c)
        seg_map, rows, _ = comp.segment_map(row)
        stuff_only = np.isin(seg_map, [i for i, r in enumerate(rows) if not comp.is_thing[r]])
        assert a[stuff_only].any()  # stuff keeps (distorted) content inside its own masks
        cls = comp.distorted_gt(row, np.random.default_rng(5), color_ref="class")
        assert cls.shape == a.shape
        # The cached colour-reference statistics are those of the reference crop itself.
        from resail.pipeline.color_transfer import lab_stats

        for seg_row in rows[:6]:
            for u in (0.0, 0.37, 0.999):
                for how in ("topk", "class"):
                    crop = comp.color_reference(int(seg_row), u, how)
                    stats = comp.color_reference_stats(int(seg_row), u, how)
                    if crop is None:
                        assert stats is None
                        continue
                    expected = lab_stats(*crop)
                    assert np.array_equal(stats.mean, expected.mean) and np.array_equal(stats.std, expected.std)
    finally:
        comp.close()
    out = preview_distort(work, tmp_path / "grid.png", n=2)
    import cv2
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * SIZE[1], 3 * SIZE[0], 3)


def test_label_map_guidance_and_local_resample(work):
    from resail.pipeline.datasets import make_reader

    seg = WorkDir(work).require_segments()
    reader = make_reader("ade20k", seg["params"]["root"])
    sample = reader.load(reader.records("val")[0])
    found = query_label_map(RetrievalIndex(work), sample.label_map, cfg=SearchConfig(k=5))
    g = LabelMapGuidance(work, found.segments, found.result, sample.label_map.shape, size=SIZE)
    try:
        first = g.compose()
        assert first.shape == (SIZE[1], SIZE[0], 3) and first.any()
        assert np.array_equal(first, g.compose())
        lm = g.label_map_at_size()
        assert lm.shape == (SIZE[1], SIZE[0]) and set(np.unique(lm)) <= set(np.unique(sample.label_map)) | {0}
        # resample the largest segment that has several candidates: only its pixels may change
        multi = [i for i in range(len(g.segments)) if (g.ids[i] >= 0).sum() > 1]
        i = max(multi, key=lambda i: (g.segment_map == i).sum())
        for seed in range(20):
            before = g.chosen.copy()
            g.resample([i], seed)
            if g.chosen[i] != before[i]:
                break
        assert g.chosen[i] != before[i]
        assert np.array_equal(np.delete(g.chosen, i), np.delete(before, i))
        after = g.compose()
        changed = np.any(after != first, axis=2)
        if not g.is_thing[i]:
            assert not changed[g.segment_map != i].any()
    finally:
        g.close()


def test_label_map_guidance_refuses_a_map_without_segments(work):
    index = RetrievalIndex(work)
    void = np.zeros((40, 50), np.int32)
    empty = query_label_map(index, void)
    with pytest.raises(InputError, match="my map: no segment"):
        LabelMapGuidance(work, empty.segments, empty.result, void.shape, size=SIZE, where="my map")


def test_shards_merge_like_one_run(work, monkeypatch):
    """--shard I/N computes contiguous image ranges and never merges; --merge names the shards that
    have not finished; a run without either flag finishes the missing shards (same N) and merges."""
    monkeypatch.setattr(bake_mod, "PART_IMAGES", 2)
    opts = dict(k=3, size=SIZE, n_preview=0, choose="sample", seed=11)
    wd = WorkDir(work)
    bake(BakeConfig(work, "train", rebuild=True, **opts))
    with h5py.File(wd.guidance_h5("train")) as f:
        reference = f["guidance"][...], f["image_id"][...].tolist()
    wd.guidance_h5("train").unlink()
    (wd.guidance / wd.guidance_manifest_name("train")).unlink()

    with pytest.raises(StageError, match="no shard has finished"):
        bake(BakeConfig(work, "train", merge=True, **opts))
    m = bake(BakeConfig(work, "train", shard=(1, 3), **opts))
    assert m["complete"] is False and not wd.guidance_h5("train").exists()
    n = len(reference[1])
    assert sorted(p.name for p in wd.guidance_parts("train").glob("part-*")) == [
        f"part-{a:08d}-{min(a + 2, n * 2 // 3):08d}.h5" for a in range(n // 3, n * 2 // 3, 2)]
    with pytest.raises(StageError, match=r"shards 0/3, 2/3 have not finished"):
        bake(BakeConfig(work, "train", merge=True, **opts))
    bake(BakeConfig(work, "train", shard=(0, 3), **opts))

    computed = []
    real = bake_mod._bake_part
    monkeypatch.setattr(bake_mod, "_bake_part", lambda *a: computed.append(a[2].tolist()) or real(*a))
    bake(BakeConfig(work, "train", **opts))  # no flag: the missing shard 2/3, then the merge
    with SegmentStore(work, "train") as store:
        rows = np.flatnonzero(np.asarray(store.images["status"].to_pylist()) == "ok")
    assert sum(computed, []) == rows[n * 2 // 3:].tolist()
    with h5py.File(wd.guidance_h5("train")) as f:
        assert np.array_equal(f["guidance"][...], reference[0]) and f["image_id"][...].tolist() == reference[1]
    assert not wd.guidance_parts("train").exists()

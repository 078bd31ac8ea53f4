"""`resail index query` (index/query.py) on label maps outside the store: matches printed as
id:score per segment with a preview mosaic, classes absent from training named in the output,
a void-only map refused in one line, and a damaged shard that asks for --rebuild."""

import numpy as np
from PIL import Image

from builders.checks import SIDE, one_error_line
from builders.formats import ADE_THING, ade_scene, write_ade
from resail.cli import main
from resail.index.build import build_index
from resail.index.retrieval import RetrievalIndex
from resail.pipeline.segments_stage import SegmentsConfig, build_segments


def test_index_query_on_a_real_store(tmp_path, capsys):
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


def test_index_query_on_void_and_on_classes_absent_from_training(shared_baked, tmp_path, capsys):
    void = tmp_path / "void.png"
    Image.fromarray(np.zeros((SIDE, SIDE), np.uint8)).save(void)
    assert main(["index", "query", str(shared_baked), "--label", str(void)]) == 1
    assert "no segment to query (only void pixels?)" in one_error_line(capsys)
    present = RetrievalIndex(shared_baked).classes
    absent = next(c for c in range(1, 151) if c not in present)
    label = np.full((SIDE, SIDE), present[0], np.uint8)
    label[: SIDE // 2] = absent
    Image.fromarray(label).save(tmp_path / "l.png")
    assert main(["index", "query", str(shared_baked), "--label", str(tmp_path / "l.png")]) == 0
    out = capsys.readouterr()
    assert f"none (class {absent} has no training segments" in out.out
    assert f"classes [{absent}] have no training segments" in out.err


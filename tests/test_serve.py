"""`resail serve` through Starlette's test client on a tiny toy run: generate, region info,
resample and choose (only that region's guidance changes), variants, downloads in both label-map
forms, colour uploads, and bad uploads (not a PNG, too small, unknown class ids or colours,
oversized, an out-of-range seed) answered with a 4xx and a message; a busy port fails before the
"open" line."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from builders.runs import TINY_SIZE as SIZE
from resail.cli import main
from resail.errors import ConfigError
from resail.pipeline.labels.files import encode_label_map
from resail.synth.presets import get_preset
from resail.synth.serve import ServeConfig, Synthesizer, create_app
from resail.synth.synthesize import SynthesizeConfig, synthesize


def png(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def decode(response) -> np.ndarray:
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def served(shared_serve_work):
    from starlette.testclient import TestClient

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    work, label = shared_serve_work
    synth = Synthesizer(ServeConfig(work, "tiny", k=5, max_upload_bytes=64 << 10, max_side=512,
                                    max_sessions=4))
    with TestClient(create_app(synth)) as client:
        yield client, synth, label
    synth.close()
    torch.set_num_threads(n)


def generate(client, label: np.ndarray, **params):
    r = client.post("/api/generate", content=png(label), params=params, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


def test_page_info_and_editor_label_maps(served):
    client, synth, label = served
    page = client.get("/")
    assert page.status_code == 200 and "Generate" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    info = client.get("/api/info").json()
    assert (info["width"], info["height"], info["dataset"], info["k"]) == (SIZE, SIZE, "ade20k", 5)
    # the palette offers the classes of the run's label table (the toy preset's), named by native id
    assert [c["id"] for c in info["classes"]] == list(get_preset("toy").label_ids[1:])
    assert info["classes"][0]["name"] == "building" and len(info["classes"][0]["color"]) == 3
    assert info["val"] and info["label_format"] == "native" and info["label_formats"] == ["auto", "ids", "color"]
    # an upload comes back as native ids at the model size, for the editor
    big = np.kron(label, np.ones((2, 2), np.uint8))  # 192×192: resized to 96×96 with nearest neighbour
    r = client.post("/api/label", content=png(big))
    assert r.status_code == 200, r.text
    ids = np.frombuffer(base64.b64decode(r.json()["ids"]), "<u2").reshape(SIZE, SIZE)
    np.testing.assert_array_equal(ids, label)
    v = client.get("/api/val/0").json()
    assert v["image_id"] == info["val"][0] and (v["width"], v["height"]) == (SIZE, SIZE)
    assert client.get("/api/val/99").status_code == 404


def test_generate_then_region_info_and_downloads(served):
    client, synth, label = served
    st = generate(client, label)
    assert st["version"] == 1 and st["session"] in synth.sessions
    assert set(st["timings"]) >= {"retrieve_ms", "compose_ms", "generate_ms"}
    seg_map = np.frombuffer(base64.b64decode(st["segment_map"]), "<i2").reshape(SIZE, SIZE)
    assert seg_map.max() == len(st["segments"]) - 1
    assert all(s["rank"] in (0, -1) for s in st["segments"])  # no seed: every region takes its best match
    guidance = decode(client.get(st["images"]["guidance"]))
    output = decode(client.get(st["images"]["output"]))
    assert guidance.shape == output.shape == (SIZE, SIZE, 3) and guidance.any()
    # the map G took, in both forms: dataset ids, and the palette the page paints with
    np.testing.assert_array_equal(decode(client.get(st["images"]["label"])), label)
    color = decode(client.get(f"/api/session/{st['session']}/label_color.png"))
    np.testing.assert_array_equal(color, encode_label_map(label, "ade20k", "color"))
    assert st["read_as"].startswith("ids") and st["notes"] == []
    # ... and the colour form, uploaded, is recognised and gives the same map and the same picture
    from_color = client.post("/api/generate", content=png(color), headers={"content-type": "image/png"}).json()
    assert from_color["read_as"].startswith("color")
    assert client.get(from_color["images"]["output"]).content == client.get(st["images"]["output"]).content
    editor = client.post("/api/label", content=png(color), params={"format": "color"}).json()
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(editor["ids"]), "<u2").reshape(SIZE, SIZE), label)
    # the same label map gives the same bytes (deterministic, like `resail synthesize`)
    again = generate(client, label)
    assert client.get(again["images"]["output"]).content == client.get(st["images"]["output"]).content

    s = next(s for s in st["segments"] if s["candidates"] > 1)
    info = client.get(f"/api/session/{st['session']}/segment/{s['index']}").json()
    assert info["class_id"] == s["class_id"] and info["class_name"] == s["class_name"]
    assert len(info["candidates"]) == s["candidates"] and info["rank"] == 0
    scores = [c["score"] for c in info["candidates"]]
    assert scores == sorted(scores)  # lower is better, best first
    thumb = decode(client.get(info["candidates"][0]["thumb"]))
    assert thumb.ndim == 3 and max(thumb.shape[:2]) <= 96
    assert client.get("/api/thumb/999999.png").status_code == 404
    assert client.get(f"/api/session/{st['session']}/segment/999").status_code == 404
    r = client.get("/api/session/nope")
    assert r.status_code == 404 and "Generate again" in r.json()["error"]


def _stuff_target(st: dict, seg_map: np.ndarray) -> dict:
    """The largest stuff region with several matches: its pasted match stays inside its own mask
    (things may spill over stuff by the clean rules), so no pixel outside it may change."""
    multi = [s for s in st["segments"] if s["candidates"] > 1 and not s["is_thing"]]
    assert multi, "the toy label map has no stuff region with several matches"
    return max(multi, key=lambda s: (seg_map == s["index"]).sum())


def test_resample_and_choose_change_only_that_region(served):
    client, synth, label = served
    st = generate(client, label, seed=0)
    sid = st["session"]
    seg_map = np.frombuffer(base64.b64decode(st["segment_map"]), "<i2").reshape(SIZE, SIZE)
    target = _stuff_target(st, seg_map)
    i = target["index"]
    before = decode(client.get(st["images"]["guidance"]))
    out_before = decode(client.get(st["images"]["output"]))

    r = client.post(f"/api/session/{sid}/segment/{i}/resample")
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["version"] == st["version"] + 1 and "retrieve_ms" not in new["timings"]
    after = decode(client.get(new["images"]["guidance"]))
    changed = new["segments"][i]
    assert changed["resampled"] and changed["previous_match"] == target["match_id"] != changed["match_id"]
    assert [s["match_id"] for s in new["segments"] if s["index"] != i] == \
        [s["match_id"] for s in st["segments"] if s["index"] != i]
    inside = seg_map == i
    np.testing.assert_array_equal(after[~inside], before[~inside])
    assert not np.array_equal(after[inside], before[inside])
    assert not np.array_equal(decode(client.get(new["images"]["output"])), out_before)

    # choose: back to the first match, then a bad rank
    rank0 = client.post(f"/api/session/{sid}/segment/{i}/choose", params={"rank": target["rank"]}).json()
    assert rank0["segments"][i]["match_id"] == target["match_id"]
    np.testing.assert_array_equal(decode(client.get(rank0["images"]["guidance"])), before)
    bad = client.post(f"/api/session/{sid}/segment/{i}/choose", params={"rank": 99})
    assert bad.status_code == 422 and "no match of rank" in bad.json()["error"]
    assert client.post(f"/api/session/{sid}/segment/{i}/choose").status_code == 400


def test_a_resample_draws_what_synthesize_resample_draws(served, tmp_path):
    """One redraw rule: Generate with seed S then Resample segment i gives the picture `resail
    synthesize --seed S --resample i` writes (redraw n draws with seed S + n in both)."""
    client, synth, label = served
    st = generate(client, label, seed=3)
    i = next(s["index"] for s in st["segments"] if s["candidates"] > 2)
    new = client.post(f"/api/session/{st['session']}/segment/{i}/resample").json()
    (tmp_path / "label.png").write_bytes(png(label))
    res = synthesize(SynthesizeConfig(synth.work, "tiny", tmp_path / "label.png", tmp_path / "o.png", k=5, seed=3,
                                      resample=(i,)))
    assert [s["match_id"] for s in new["segments"]] == [s.match_id for s in res.segments]
    assert res.segments[i].previous_match == st["segments"][i]["match_id"] != res.segments[i].match_id
    assert client.get(new["images"]["output"]).content == (tmp_path / "o.png").read_bytes()


def test_variants_are_diverse_and_leave_the_session_alone(served):
    client, synth, label = served
    st = generate(client, label)
    sid = st["session"]
    r = client.post(f"/api/session/{sid}/variants", params={"n": 3})
    assert r.status_code == 200, r.text
    vs = r.json()["variants"]
    outs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(v["output"].split(",", 1)[1])))) for v in vs]
    assert len(outs) == 3 and all(o.shape == (SIZE, SIZE, 3) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1
    now = client.get(f"/api/session/{sid}").json()
    assert [s["match_id"] for s in now["segments"]] == [s["match_id"] for s in st["segments"]]
    adopted = client.post(f"/api/session/{sid}/variants/1/adopt").json()
    # G ran on a batch for the variants and on one image now: equal up to float rounding
    diff = decode(client.get(adopted["images"]["output"])).astype(int) - outs[1]
    assert np.abs(diff).max() <= 2
    assert client.post(f"/api/session/{sid}/variants", params={"n": 99}).status_code == 422
    assert client.post(f"/api/session/{sid}/variants/7/adopt").status_code == 404


def test_bad_uploads_get_a_4xx_and_a_message(served):
    client, synth, label = served

    def refused(body: bytes, status: int, words: str, url="/api/generate"):
        r = client.post(url, content=body, headers={"content-type": "image/png"})
        assert r.status_code == status, r.text
        assert words in r.json()["error"]

    for url in ("/api/generate", "/api/label"):
        refused(b"GIF89a not a png at all", 415, "not a PNG", url)
        refused(png(np.zeros((4, SIZE), np.uint8)), 422, "at least 8 px a side", url)    # too small
        unknown = label.copy()
        unknown[:4, :4] = 200                                                             # ADE20K stops at 150
        refused(png(unknown), 422, "[200]", url)
        wall = label.copy()
        wall[:4, :4] = 1                                                                  # ADE20K, not in the toy table
        refused(png(wall), 422, "class id 1 (wall) not in the label table of preset 'toy'", url)
        stray = encode_label_map(label, "ade20k", "color")
        stray[:2, :3] = (1, 2, 3)                                                         # not a palette colour
        refused(png(stray), 422, "1 colour(s) are not in the ade20k palette: (1,2,3) on 6 px", url)
        noise = np.random.default_rng(0).integers(0, 150, (300, 300), dtype=np.uint8)   # > 64 KiB
        refused(png(noise), 413, "limit", url)
        refused(png(np.zeros((1024, 1024), np.uint8)), 413, "512 px", url)               # small file, huge map
        refused(png(label)[:60], 422, "corrupt", url)                                     # truncated
        refused(b"", 400, "empty", url)
    refused(png(np.zeros((SIZE, SIZE), np.uint8)), 422, "no segment", "/api/generate")   # only void
    r = client.post("/api/generate", content=png(label), params={"seed": "x"})
    assert r.status_code == 400 and "integer" in r.json()["error"]
    r = client.post("/api/generate", content=png(label), params={"format": "jpeg"})
    assert r.status_code == 400 and "auto, ids, trainids, color" in r.json()["error"]
    r = client.post("/api/label", content=png(label), params={"format": "trainids"})
    assert r.status_code == 422 and "only Cityscapes" in r.json()["error"]
    # the server still answers
    assert client.get("/api/info").status_code == 200


def test_sessions_are_evicted_least_recently_used(served):
    client, synth, label = served
    first = generate(client, label)["session"]
    for _ in range(synth.cfg.max_sessions):
        generate(client, label)
    assert first not in synth.sessions and len(synth.sessions) == synth.cfg.max_sessions
    assert client.get(f"/api/session/{first}/output.png").status_code == 404


def test_serve_cli_checks_its_run_before_serving(served, capsys):
    client, synth, label = served
    assert main(["serve", str(synth.work), "--run", "nope"]) == 1
    assert "no such run" in capsys.readouterr().err
    assert main(["serve", str(synth.work), "--run", "tiny", "--port", "0"]) == 2
    with pytest.raises(ConfigError, match="k 0: must be at least 1"):
        ServeConfig(synth.work, "tiny", k=0)


def test_serve_answers_an_out_of_range_seed_with_a_400(shared_serve_work):
    import io

    from starlette.testclient import TestClient

    from resail.synth.serve import ServeConfig, Synthesizer, create_app

    work, label = shared_serve_work
    body = io.BytesIO()
    Image.fromarray(label).save(body, format="PNG")
    synth = Synthesizer(ServeConfig(work, "tiny", k=5))
    try:
        with TestClient(create_app(synth)) as client:
            for seed in (-1, 2**40):
                r = client.post("/api/generate", content=body.getvalue(), params={"seed": seed},
                                headers={"content-type": "image/png"})
                assert r.status_code == 400 and f"seed={seed}: choose 0..4294967295" in r.json()["error"]
            assert client.get("/api/info").status_code == 200
    finally:
        synth.close()


def test_serve_on_a_busy_port_fails_before_saying_open(shared_serve_work, capsys):
    import socket

    work, _ = shared_serve_work
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(work), "--run", "tiny", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert "open http://" not in captured.out
    assert f"--port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)" in captured.err


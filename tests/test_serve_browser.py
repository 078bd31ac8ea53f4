"""`resail serve` in headless Chromium: paint strokes, generate, click a region, resample it; the
page then shows a new output whose guidance is unchanged outside that region.

Needs the `playwright` Python package (dev extra) and a Chromium binary: Debian's `chromium`
(.ci/run installs it). Playwright's own browser download is not used. Skips, saying why, only
when no browser can be found or launched."""

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import torch

from builders.runs import TINY_SIZE as SIZE
from resail.synth.serve import ServeConfig, Synthesizer, create_app

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for name in (os.environ.get("RESAIL_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                   "(pip install -e '.[dev]')")
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium binary on PATH: install Debian's chromium (apt-get install -y chromium) "
                    "or set RESAIL_CHROMIUM")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
        except sync_api.Error as e:
            pytest.skip(f"{exe} does not launch headless: {str(e).splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(shared_serve_work):
    import uvicorn

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    work, _ = shared_serve_work
    synth = Synthesizer(ServeConfig(work, "tiny", k=5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(synth), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", synth
    srv.should_exit = True
    thread.join(10)
    synth.close()
    torch.set_num_threads(n)


READ_IMAGE = """(id) => {
    const img = document.getElementById(id);
    const c = document.createElement("canvas");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return Array.from(ctx.getImageData(0, 0, c.width, c.height).data);
}"""

LOADED = """(v) => window.resail.state && window.resail.state.version === v && !window.resail.busy &&
    ["guidance", "output"].every((id) => {
        const img = document.getElementById(id);
        return img.complete && img.naturalWidth > 0 && img.src.endsWith("v=" + v);
    })"""


def image(page, element_id: str) -> np.ndarray:
    """The RGB pixels the page shows in an <img> (H×W×3)."""
    return np.array(page.evaluate(READ_IMAGE, element_id), np.uint8).reshape(SIZE, SIZE, 4)[..., :3]


def drag(page, box, points):
    """A brush stroke through `points` given in label-map pixels."""
    at = [(box["x"] + (x + 0.5) * box["width"] / SIZE, box["y"] + (y + 0.5) * box["height"] / SIZE) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for p in at[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def test_paint_generate_click_region_and_resample_it(browser, server, tmp_path):
    url, synth = server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    assert page.evaluate("window.resail.W") == SIZE and page.evaluate("window.resail.undo.length") == 0

    # paint: two strokes of a class that the loaded val map already has, one of another, then undo it
    present = sorted(set(page.evaluate("Array.from(window.resail.ids)")) - {0})
    a, b = present[0], present[-1]
    box = page.locator("#editor").bounding_box()
    page.click(f"#classes li[data-id='{a}']")
    drag(page, box, [(10, 10), (40, 12), (70, 14)])
    drag(page, box, [(12, 60), (30, 80)])
    page.click(f"#classes li[data-id='{b}']")
    page.locator("#brush-size").fill("12")
    drag(page, box, [(80, 80), (60, 70)])
    ids = np.array(page.evaluate("Array.from(window.resail.ids)")).reshape(SIZE, SIZE)
    assert ids[10, 40] == a and ids[12, 70] == a and ids[80, 80] == b
    assert page.evaluate("window.resail.undo.length") == 3
    page.click("#undo")
    undone = np.array(page.evaluate("Array.from(window.resail.ids)")).reshape(SIZE, SIZE)
    assert undone[10, 40] == a and (undone != ids).any() and page.evaluate("window.resail.undo.length") == 2
    drag(page, box, [(80, 80), (60, 70)])

    # generate: guidance and output side by side, with timings
    page.click("#generate")
    page.wait_for_function(LOADED, arg=1, timeout=30_000)
    assert "retrieve" in page.inner_text("#t-retrieve") and "ms" in page.inner_text("#t-generate")
    state = page.evaluate("window.resail.state")
    seg_map = np.array(page.evaluate("Array.from(window.resail.segmentMap)")).reshape(SIZE, SIZE)
    guidance0, output0 = image(page, "guidance"), image(page, "output")

    # click the largest stuff region with several matches (its guidance cannot spill elsewhere)
    multi = [s for s in state["segments"] if s["candidates"] > 1 and not s["is_thing"]]
    assert multi, "no stuff region with several matches"
    target = max(multi, key=lambda s: (seg_map == s["index"]).sum())
    inside = seg_map == target["index"]
    ys, xs = np.nonzero(inside)
    j = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))  # the region pixel nearest its centre
    out_box = page.locator("#output").bounding_box()
    page.mouse.click(out_box["x"] + (xs[j] + 0.5) * out_box["width"] / SIZE,
                     out_box["y"] + (ys[j] + 0.5) * out_box["height"] / SIZE)
    page.wait_for_selector("#region:not([hidden]) .cand.chosen", timeout=10_000)
    assert target["class_name"] in page.text_content("#region-title")
    assert page.locator("#candidates .cand").count() == target["candidates"]
    page.wait_for_function("Array.from(document.querySelectorAll('#candidates img')).every((i) => i.complete && "
                           "i.naturalWidth > 0)", timeout=10_000)

    # resample that region: a new output; the guidance outside the region is pixel for pixel the same
    page.click("#resample")
    page.wait_for_function(LOADED, arg=2, timeout=30_000)
    guidance1, output1 = image(page, "guidance"), image(page, "output")
    np.testing.assert_array_equal(guidance1[~inside], guidance0[~inside])
    assert not np.array_equal(guidance1[inside], guidance0[inside])
    assert not np.array_equal(output1, output0)
    new = page.evaluate("window.resail.state.segments")
    assert new[target["index"]]["previous_match"] == target["match_id"] != new[target["index"]]["match_id"]
    assert [s["match_id"] for s in new if s["index"] != target["index"]] == \
        [s["match_id"] for s in state["segments"] if s["index"] != target["index"]]

    # a bad upload shows its message in the page and the server keeps answering
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a PNG")
    page.set_input_files("#upload", str(bad))
    page.wait_for_selector("#message:not([hidden])", timeout=10_000)
    assert "not a PNG" in page.inner_text("#message")

    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors
    page.close()

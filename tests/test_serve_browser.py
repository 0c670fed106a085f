"""The page of a live ``langground serve`` in a real browser: Playwright drives the system Chromium (the
Debian package; nothing is downloaded), uploads a rendered scene, types an expression and checks that the
box drawn on the canvas is the one the API returns, in the DOM and in the canvas pixels."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'langground[serve]'")
import httpx  # noqa: E402

from langground.serve.probe import wait_until_serving  # noqa: E402
from test_serve_api import trained_checkpoint  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no system Chromium on PATH (Debian/Ubuntu: apt-get install chromium); .ci/run installs it in CI",
)
BOX_RGB = (0xFF, 0x1F, 0x5B)  # the page's first colour (COLORS[0] in app.js)


def js_round(v: float) -> int:
    """JavaScript's Math.round (halves up; Python's round() rounds halves to even)."""
    return math.floor(v + 0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """``langground serve`` in a subprocess on 127.0.0.1 and a free port; SIGTERM at the end."""
    exe = Path(sys.executable).parent / "langground"
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LANGGROUND_API_KEY", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", str(trained[0]), "--port", str(port), "--threads", "1", "--max-wait-ms", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_serving(url, proc, timeout_s=90)
        except (ChildProcessError, TimeoutError) as e:
            pytest.fail(f"{e}: {log.read_text()[-2000:]}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # uvicorn re-raises the signal once it has shut down gracefully: exit code 0 or -SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert "Application shutdown complete" in log.read_text()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_page_draws_the_box_the_api_returns(server, browser, trained, tmp_path):
    scene = sorted((trained[1] / "images").glob("*.png"))[0]
    expression = "the red cube"
    api = httpx.post(
        f"{server}/v1/ground",
        files={"image": (scene.name, scene.read_bytes(), "image/png")},
        data={"expressions": expression},
        timeout=30,
    ).json()
    box = api["results"][0]["box"]

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_function("document.getElementById('model-line').textContent.includes('laconvnet_t')")
    page.set_input_files("#file", str(scene))
    page.fill("#texts", expression)
    page.wait_for_function("!document.getElementById('run').disabled")
    page.click("#run")
    page.wait_for_selector("#canvas[data-drawn='1']", timeout=30_000)

    drawn = page.eval_on_selector("#canvas", "c => JSON.parse(c.dataset.boxes)")
    scale = float(page.eval_on_selector("#canvas", "c => c.dataset.scale"))
    assert scale == 2.0  # a 96x72 scene is shown at twice its size
    (b,) = drawn
    assert (b["x"], b["y"]) == (js_round(box["xmin"] * scale), js_round(box["ymin"] * scale))
    w, h = (box["xmax"] - box["xmin"]) * scale, (box["ymax"] - box["ymin"]) * scale
    assert (b["w"], b["h"]) == (js_round(w), js_round(h))
    item = page.eval_on_selector("#results li", "li => ({...li.dataset, text: li.textContent})")
    assert float(item["xmin"]) == box["xmin"] and expression in item["text"]

    # The pixels: the middle of the box's left edge has the box colour, as does the right edge.
    left = page.evaluate(
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d').getImageData(x, y, 1, 1).data)",
        [b["x"], b["y"] + b["h"] // 2],
    )
    right = page.evaluate(
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d').getImageData(x, y, 1, 1).data)",
        [min(b["x"] + b["w"], 191), b["y"] + b["h"] // 2],
    )
    for px in (left, right):
        assert all(abs(p - q) <= 2 for p, q in zip(px[:3], BOX_RGB, strict=True)), px

    assert "ms round trip" in page.text_content("#latency")
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    copy_to = os.environ.get("LANGGROUND_SCREENSHOT")  # e.g. docs/img/serve_page.png when refreshing the docs
    if copy_to:
        shutil.copyfile(shot, copy_to)
    assert not errors, errors
    page.close()


def test_page_shows_per_word_attention_with_explain(server, browser, trained):
    scene = sorted((trained[1] / "images").glob("*.png"))[1]
    page = browser.new_page()
    page.goto(server)
    page.wait_for_function("document.getElementById('model-line').textContent.includes('laconvnet_t')")
    page.set_input_files("#file", str(scene))
    page.fill("#texts", "the blue ball\nthe cylinder")
    page.check("#explain")
    page.click("#run")
    page.wait_for_selector("#canvas[data-drawn='2']", timeout=30_000)
    # Two expressions x two stages: one tile per word ("the blue ball" 3 words, "the cylinder" 2).
    page.wait_for_function("document.querySelectorAll('#attention figure').length === 10")
    captions = page.eval_on_selector_all("#attention figcaption", "els => els.map(e => e.textContent)")
    assert captions[0].startswith("the (") and any(c.startswith("cylinder (") for c in captions)
    page.close()

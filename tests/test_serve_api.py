"""``langground serve``'s API through TestClient: every endpoint, every bad-input class (one-line JSON 4xx,
500s without traces), the API key, dynamic batching (several requests, one forward), a free event loop
during forwards, graceful shutdown of a live uvicorn, and a real COCO photo in its original pixels."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import socket
import struct
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'langground[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from langground.inference.grounder import Grounder  # noqa: E402
from langground.serve import ServeSettings, create_app  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/real-refcoco-sample"
PHOTOS = sorted((SAMPLE / "images/train2014").glob("*.jpg")) if SAMPLE.is_dir() else []
ANSWERS = ["yes", "no", "2", "red"]


# ------------------------------------------------------------------------------------------ fixtures


def trained_checkpoint(root: Path, steps: int = 4) -> tuple[Path, Path]:
    """A LaConvNet-T of a few thousand parameters trained ``steps`` steps on a 12-image synthetic world
    (64 px): ``(run directory, world directory)``. A few seconds on one core."""
    import sys as _sys

    from rich.console import Console

    from langground.config import load_preset
    from langground.data.synthetic import SynthConfig, generate_world
    from langground.engine.train import train

    _sys.path.insert(0, str(Path(__file__).parent))
    from tiny_config import TINY_MODEL, TINY_RUN

    world = generate_world(root / "synth", SynthConfig(images=12, size=(96, 72), seed=0), workers=1)
    overrides = [
        f"data.root={world}",
        *TINY_MODEL,
        *TINY_RUN,
        "data.train_limit=16",
        f"run.max_steps={steps}",
    ]
    cfg = load_preset("synth-laconvnet-t-rec", overrides)
    result = train(cfg, root / "run", console=Console(file=io.StringIO()))
    assert result.status == "completed" and result.step == steps
    return root / "run", world


def fresh_checkpoint(path: Path, task: str) -> Path:
    """An untrained tiny checkpoint of ``task`` (RES masks, VQA answers: shapes and plumbing only)."""
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.text.vocab import Vocabulary

    cfg = load_preset(f"synth-laconvnet-t-{task}", ["transforms.input_size=64"])
    vocab = Vocabulary.build(["the red cube left of the blue ball", "is there a small green cylinder"])
    answers = ANSWERS if task == "vqa" else None
    torch.manual_seed(0)
    model = build_model(cfg, vocab, answers)
    return save_checkpoint(path, model=model, config=cfg, vocab=vocab, answers=answers)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def ckpt(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def scene(trained) -> Path:
    return sorted((trained[1] / "images").glob("*.png"))[0]


@pytest.fixture(scope="module")
def grounder(ckpt) -> Grounder:
    return Grounder.from_pretrained(ckpt)


@pytest.fixture()
def client(ckpt):
    """``client(**settings)`` -> a started TestClient of a fresh app over the trained checkpoint."""
    opened = []

    def make(grounder: Grounder | None = None, raise_errors: bool = True, **settings) -> TestClient:
        g = grounder or Grounder.from_pretrained(ckpt)
        app = create_app(g, ServeSettings(checkpoint=ckpt, **settings))
        c = TestClient(app, raise_server_exceptions=raise_errors)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def png_bytes(path_or_array) -> bytes:
    img = Image.open(path_or_array) if isinstance(path_or_array, Path) else Image.fromarray(path_or_array)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def multipart(image: bytes, texts: str, **fields) -> dict:
    return {"files": {"image": ("scene.png", image, "image/png")}, "data": {"expressions": texts, **fields}}


def assert_one_line_error(response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    message = body["error"]
    assert "\n" not in message and "Traceback" not in message
    for needle in needles:
        assert needle in message, message
    return message


def box_list(box: dict) -> list[float]:
    return [box["xmin"], box["ymin"], box["xmax"], box["ymax"]]


# ------------------------------------------------------------------------------------------ endpoints


def test_model_endpoint_describes_the_checkpoint(client, ckpt, grounder):
    c = client()
    info = c.get("/v1/model").json()
    weights = (ckpt / "best" / "model.safetensors").read_bytes()
    assert info["name"] == "laconvnet_t" and info["architecture"] == "LaConvNet"
    assert info["task"] == "rec" and info["tasks"] == ["rec"] and "vqa" in info["supported_tasks"]
    assert info["input_size"] == 64 and info["vocabulary_size"] == len(grounder.vocab)
    assert info["checkpoint"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert info["explain"] is True and info["endpoint"] == "/v1/ground" and info["trained_on"] == "synth"


def test_healthz_page_static_and_docs(client):
    c = client()
    assert c.get("/healthz").json() == {"status": "ok", "model": "laconvnet_t"}
    page = c.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<canvas id="canvas"' in page.text and "/static/app.js" in page.text
    assert "rleCounts" in c.get("/static/app.js").text and c.get("/static/style.css").status_code == 200
    docs = c.get("/docs")  # offline: the Swagger UI's assets come from the app, not a CDN
    assert (
        docs.status_code == 200
        and "/docs-assets/swagger-ui-bundle.js" in docs.text
        and "cdn" not in docs.text
    )
    assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    spec = c.get("/openapi.json").json()
    body = spec["paths"]["/v1/ground"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "expressions" in body["application/json"]["schema"]["properties"]


def test_ground_multipart_equals_the_grounder_in_original_pixels(client, grounder, scene):
    c = client()
    texts = ["the red cube", "the large sphere"]
    r = c.post("/v1/ground", **multipart(png_bytes(scene), "\n".join(texts)))
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["width"], data["height"]) == (96, 72) and data["model"] == "laconvnet_t"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # words outside the tiny world's vocabulary: not the point here
        expected = grounder.predict(Image.open(scene), texts)
    assert [x["expression"] for x in data["results"]] == texts
    for got, want in zip(data["results"], expected, strict=True):
        np.testing.assert_allclose(box_list(got["box"]), box_list(want["box"]), atol=0.02)
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["boxes"][0]["box"] == got["box"] and got["mask"] is None and got["no_target"] is None
        assert 0 <= got["box"]["xmin"] <= got["box"]["xmax"] <= 96
    assert data["latency_ms"] > 0 and "total;dur=" in r.headers["server-timing"]


def test_json_base64_data_url_and_allowed_path_agree(client, scene):
    c = client(allow_paths=[scene.parent])
    raw = png_bytes(scene)
    b64 = base64.b64encode(raw).decode()
    bodies = [
        {"image": b64, "expressions": "the red cube"},
        {"image": "data:image/png;base64," + b64, "expressions": ["the red cube"]},
        {"path": str(scene), "expressions": ["the red cube"]},
    ]
    boxes = []
    for body in bodies:
        r = c.post("/v1/ground", json=body)
        assert r.status_code == 200, r.text
        boxes.append(r.json()["results"][0]["box"])
    assert boxes[0] == boxes[1] == boxes[2]


def test_masks_come_as_coco_rle_in_original_pixels(client, tmp_path):
    from pycocotools import mask as mask_utils

    g = Grounder.from_pretrained(fresh_checkpoint(tmp_path / "res", "res"))
    c = client(grounder=g)
    photo = np.random.default_rng(3).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    r = c.post("/v1/ground", **multipart(png_bytes(photo), "the red cube"))
    assert r.status_code == 200, r.text
    rle = r.json()["results"][0]["mask"]
    assert rle["size"] == [50, 80]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert decoded.shape == (50, 80) and int(decoded.sum()) == rle["area"]
    want = np.asarray(g.predict(photo, "the red cube")["mask"]) > 127
    assert np.array_equal(decoded.astype(bool), want)


def test_explain_returns_one_attention_map_per_word(client, scene):
    c = client(attention_stages=1, attention_side=48)
    r = c.post("/v1/ground", **multipart(png_bytes(scene), "the red cube", explain="true"))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["words"] == ["the", "red", "cube"]
    (stage, urls), *more = res["attention"].items()
    assert not more and len(urls) == 3  # attention_stages=1: the last stage, one map per word
    head, _, b64 = urls[1].partition(",")
    assert head == "data:image/png;base64"
    heat = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert heat.mode == "L" and heat.size == (48, 36)  # the photo's 96x72, longer side 48


def test_unknown_words_reach_the_json(client, scene):
    c = client()
    r = c.post(
        "/v1/ground", json={"image": base64.b64encode(png_bytes(scene)).decode(), "expressions": "the zebra"}
    )
    data = r.json()
    assert data["results"][0]["unknown_words"] == ["zebra"]
    (warning,) = data["warnings"]
    assert "'zebra'" in warning and "1 of 2 words" in warning and "synthetic world" in warning


def test_answer_on_a_vqa_checkpoint_and_wrong_endpoints(client, tmp_path, scene):
    vqa = client(grounder=Grounder.from_pretrained(fresh_checkpoint(tmp_path / "vqa", "vqa")))
    image = png_bytes(scene)
    r = vqa.post(
        "/v1/answer",
        files={"image": ("s.png", image, "image/png")},
        data={"questions": "is there a red cube\nis there a ball", "top_k": "3"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["expression"] for x in results] == ["is there a red cube", "is there a ball"]
    for x in results:
        assert len(x["answers"]) == 3 and x["answer"] == x["answers"][0]["answer"] in ANSWERS
        assert x["answers"][0]["score"] >= x["answers"][1]["score"] >= x["answers"][2]["score"]
    assert vqa.get("/v1/model").json()["endpoint"] == "/v1/answer"
    assert_one_line_error(vqa.post("/v1/ground", **multipart(image, "x")), 400, "/v1/answer")
    rec = client()
    body = {"image": base64.b64encode(image).decode(), "questions": "what colour is the cube"}
    assert_one_line_error(rec.post("/v1/answer", json=body), 400, "does not answer questions", "/v1/ground")


# ------------------------------------------------------------------------------------------ bad input


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no data: a decompression bomb's
    shape, refused before any decoding (decoding it would fail, or take gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_bad_input_classes_get_their_4xx(client, scene, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "scene.png").write_bytes(png_bytes(scene))
    (tmp_path / "secret.png").write_bytes(png_bytes(scene))
    (allowed / "escape.png").symlink_to(tmp_path / "secret.png")
    c = client(
        allow_paths=[allowed],
        max_expressions=3,
        max_expression_chars=40,
        max_pixels=96 * 72,
        max_explain_pixels=100,
    )
    image = png_bytes(scene)
    b64 = base64.b64encode(image).decode()
    big = png_bytes(np.zeros((80, 100, 3), np.uint8))  # 8000 px > 96 x 72
    cases = [
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "Content-Type 'text/plain'"),
        (dict(content=b"{}"), 415, "'none'"),
        (dict(content=b"{nope", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json={"expressions": "x"}), 422, "exactly one of 'image'"),
        (dict(json={"image": b64}), 422, "expressions: Field required"),
        (dict(json={"image": b64, "expressions": "x", "colour": 1}), 422, "colour"),
        (dict(json={"image": "@@not base64@@", "expressions": "x"}), 400, "not valid base64"),
        (dict(json={"image": base64.b64encode(b"text").decode(), "expressions": "x"}), 400, "not an image"),
        (dict(json={"image": b64[: len(b64) // 2], "expressions": "x"}), 400, "image"),
        (dict(json={"path": str(tmp_path / "secret.png"), "expressions": "x"}), 403, "--allow-path"),
        (dict(json={"path": str(allowed / "escape.png"), "expressions": "x"}), 403, "outside"),
        (dict(json={"path": str(allowed / "missing.png"), "expressions": "x"}), 400, "no such image"),
        (dict(json={"image": b64, "expressions": ["a", "b", "c", "d"]}), 422, "4 given, over the limit of 3"),
        (dict(json={"image": b64, "expressions": ["a " * 30]}), 422, "over the limit of 40"),
        (dict(json={"image": b64, "expressions": ["  "]}), 422, "has no words"),
        (dict(json={"image": b64, "expressions": []}), 422, "none given"),
        (dict(json={"image": b64, "expressions": "x", "box_threshold": 0.5}), 422, "box"),
        (dict(json={"image": base64.b64encode(big).decode(), "expressions": "x"}), 413, "8,000 pixels"),
        (
            dict(json={"image": base64.b64encode(bomb_png(12000, 12000)).decode(), "expressions": "x"}),
            413,
            "12000x12000",
        ),
        (dict(files={"file": ("a.png", image, "image/png")}, data={"expressions": "x"}), 422, "'image'"),
        (multipart(image, "x", explain="maybe"), 422, "explain"),
        (multipart(image, "x", explain="true"), 413, "--max-explain-pixels"),
        (multipart(b"", "x"), 400, "empty"),
    ]
    for kwargs, status, needle in cases:
        assert_one_line_error(c.post("/v1/ground", **kwargs), status, needle)
    assert_one_line_error(c.get("/v1/nothing"), 404, "Not Found")
    assert_one_line_error(c.get("/v1/ground"), 405, "Method Not Allowed")


def test_decompression_bomb_refused_by_pils_own_guard(client):
    """Above 2 x PIL.Image.MAX_IMAGE_PIXELS PIL refuses the file itself: a 413 as well, never a 500."""
    c = client(max_pixels=10**12)
    body = {"image": base64.b64encode(bomb_png(30000, 30000)).decode(), "expressions": "x"}
    assert_one_line_error(c.post("/v1/ground", json=body), 413, "decompression-bomb")


def test_oversized_bodies_are_413_declared_or_streamed(client, scene):
    c = client(max_body_bytes=2000)
    image = png_bytes(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert len(image) > 2000
    r = c.post("/v1/ground", **multipart(image, "the cube"))
    assert_one_line_error(r, 413, "over the limit of 2,000 bytes")

    def chunks():  # no Content-Length: the limit bites while the body streams in
        for i in range(0, len(image), 500):
            yield image[i : i + 500]

    r = c.post("/v1/ground", content=chunks(), headers={"content-type": "application/json"})
    assert_one_line_error(r, 413, "more than", "2,000 bytes")
    small = {"image": base64.b64encode(png_bytes(np.zeros((8, 8, 3), np.uint8))).decode(), "expressions": "x"}
    assert c.post("/v1/ground", json=small).status_code == 200  # under the limit: served


def test_api_key_on_and_off(client, scene):
    image = png_bytes(scene)
    open_ = client()
    assert open_.get("/v1/model").status_code == 200
    c = client(api_key="s3cret")
    r = c.get("/v1/model")
    assert_one_line_error(r, 401, "API key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_one_line_error(c.get("/v1/model", headers={"Authorization": "Bearer wrong"}), 401, "API key")
    assert_one_line_error(c.get("/metrics"), 401)
    assert_one_line_error(c.post("/v1/ground", **multipart(image, "the cube")), 401)
    auth = {"Authorization": "Bearer s3cret"}
    assert c.get("/v1/model", headers=auth).status_code == 200
    assert c.post("/v1/ground", headers=auth, **multipart(image, "the cube")).status_code == 200
    assert c.get("/metrics", headers=auth).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # probes and the page


def test_a_500_hides_the_trace_and_logs_it(client, ckpt, scene, caplog, monkeypatch):
    g = Grounder.from_pretrained(ckpt)
    c = client(grounder=g, raise_errors=False)

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/models/private")

    monkeypatch.setattr(g, "ground", boom)
    with caplog.at_level(logging.ERROR, logger="langground.serve"):
        r = c.post("/v1/ground", **multipart(png_bytes(scene), "the cube"))
    message = assert_one_line_error(r, 500, "internal server error")
    assert "secret" not in message and "RuntimeError" not in message
    rid = message.split("request ")[1].split(";")[0]
    logged = "\n".join(rec.getMessage() + str(rec.exc_info) for rec in caplog.records)
    assert rid in logged and "secret internals" in logged


def test_metrics_count_requests_by_endpoint_and_status(client, scene):
    c = client(max_pixels=100)
    image = png_bytes(scene)
    for _ in range(2):
        c.post("/v1/ground", **multipart(image, "the cube"))  # 413: too many pixels
    c.get("/healthz")
    text = c.get("/metrics").text
    assert 'langground_requests_total{endpoint="/v1/ground",method="POST",status="413"} 2.0' in text
    assert 'langground_requests_total{endpoint="/healthz",method="GET",status="200"} 1.0' in text
    assert 'langground_request_latency_seconds_count{endpoint="/v1/ground"} 2.0' in text
    assert "langground_batch_pairs_bucket" in text


def test_cli_serve_wires_settings_and_env_api_key(ckpt, scene, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from langground.cli import _mount, app

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: captured.update(app=target, **kw))
    monkeypatch.setenv("LANGGROUND_API_KEY", "from-env")
    _mount()
    res = CliRunner().invoke(
        app, ["serve", str(ckpt), "--port", "8123", "--max-batch", "3", "--max-pixels", "99"]
    )
    assert res.exit_code == 0, res.output
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123
    with TestClient(captured["app"]) as c:
        assert c.get("/v1/model").status_code == 401
        info = c.get("/v1/model", headers={"Authorization": "Bearer from-env"}).json()
        assert info["limits"]["max_batch"] == 3 and info["limits"]["max_pixels"] == 99


def test_cli_serve_workers_hand_their_spec_to_the_factory(ckpt, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from langground.cli import _mount, app
    from langground.cli.serve import SPEC_ENV, app_from_env

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: captured.update(target=target, **kw))
    monkeypatch.setenv(SPEC_ENV, "{}")  # recorded: the command overwrites it, the test restores it
    _mount()
    res = CliRunner().invoke(app, ["serve", str(ckpt), "--workers", "2", "--max-expressions", "5"])
    assert res.exit_code == 0, res.output
    assert captured["target"] == "langground.cli.serve:app_from_env" and captured["factory"] is True
    assert captured["workers"] == 2 and captured["timeout_worker_healthcheck"] >= 60
    with TestClient(app_from_env()) as c:  # what each worker process builds
        assert c.get("/v1/model").json()["limits"]["max_expressions"] == 5


def test_batcher_close_finishes_queued_jobs_then_refuses():
    import asyncio

    from langground.serve.batching import DynamicBatcher
    from langground.serve.limits import ApiError

    calls: list[list[int]] = []

    def run(jobs):
        time.sleep(0.05)  # a forward pass
        calls.append([j.payload for j in jobs])
        return [j.payload * 10 for j in jobs]

    async def scenario():
        batcher = DynamicBatcher(run, max_batch=2, max_wait_s=0.0)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i, 1)) for i in range(5)]
        await asyncio.sleep(0)  # all five queued
        await batcher.close()
        results = [await p for p in pending]
        with pytest.raises(ApiError) as refused:
            await batcher.submit(9, 1)
        return results, refused.value.status

    results, status = asyncio.run(scenario())
    assert results == [0, 10, 20, 30, 40] and status == 503
    assert sorted(i for c in calls for i in c) == [0, 1, 2, 3, 4] and max(map(len, calls)) == 2


def test_cli_without_the_serve_extra_says_which_to_install(ckpt, monkeypatch):
    from typer.testing import CliRunner

    from langground.cli import _mount, app

    monkeypatch.setitem(sys.modules, "fastapi", None)  # find_spec() -> None: as if not installed
    _mount()
    res = CliRunner().invoke(app, ["serve", str(ckpt)])
    assert res.exit_code == 2
    assert "pip install 'langground[serve]'" in res.stderr and "fastapi" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ batching


class Recording(nn.Module):
    """Wraps a model: records the batch size of every forward; ``gate`` (when set) holds each forward
    until released, ``entered`` says a forward has started."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def forward(self, images, text, *args, **kwargs):
        self.sizes.append(int(images.shape[0]))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never released the forward"
        return self.inner(images, text, *args, **kwargs)


def recording_grounder(ckpt: Path) -> tuple[Grounder, Recording]:
    g = Grounder.from_pretrained(ckpt)
    g.model = Recording(g.model)
    return g, g.model


def test_concurrent_requests_share_one_forward(client, ckpt, scene, grounder):
    g, rec = recording_grounder(ckpt)
    # A long window: the batch is sent when its 4 pairs are there, not when a timer fires.
    c = client(grounder=g, max_batch=4, max_wait_ms=20_000)
    rec.sizes.clear()  # the warm-up passes
    image = png_bytes(scene)
    texts = ["the red cube", "the small ball\nthe large sphere", "the cylinder"]
    responses: dict[int, httpx.Response] = {}

    def post(i: int) -> None:
        responses[i] = c.post("/v1/ground", **multipart(image, texts[i]))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert rec.sizes == [4], rec.sizes  # 3 requests, 4 pairs: one forward pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = grounder.predict(
            Image.open(scene), ["the red cube", "the small ball", "the large sphere", "the cylinder"]
        )
    got = [r for i in range(3) for r in responses[i].json()["results"]]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(box_list(a["box"]), box_list(b["box"]), atol=0.02)
    assert all(responses[i].json()["batch"] == {"requests": 3, "pairs": 4} for i in range(3))
    assert "langground_batch_requests_count 1.0" in c.get("/metrics").text


def test_options_split_batches_and_big_requests_run_alone(ckpt, scene):
    """Requests that ask for different things never share a call; one over max_batch runs in chunks."""
    g, rec = recording_grounder(ckpt)
    c = TestClient(create_app(g, ServeSettings(max_batch=2, max_wait_ms=0, warmup=False)))
    with c:
        r = c.post("/v1/ground", **multipart(png_bytes(scene), "a\nb\nc"))
        assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert rec.sizes == [2, 1]


def test_event_loop_answers_while_the_model_runs(client, ckpt, scene):
    g, rec = recording_grounder(ckpt)
    c = client(grounder=g)
    rec.gate, rec.entered = threading.Event(), threading.Event()
    slow = threading.Thread(target=lambda: c.post("/v1/ground", **multipart(png_bytes(scene), "the cube")))
    slow.start()
    assert rec.entered.wait(30)
    health: list[int] = []
    probe = threading.Thread(target=lambda: health.append(c.get("/healthz").status_code))
    probe.start()
    probe.join(10)
    answered = health == [200]
    rec.gate.set()  # let the forward finish whatever happened
    slow.join(30)
    assert answered, "GET /healthz did not answer while a forward pass was running"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_graceful_shutdown_finishes_the_request_in_flight(ckpt, scene):
    """A live uvicorn told to exit (what SIGTERM does) while a forward runs: that request still gets its
    200, then the server stops and refuses connections."""
    import uvicorn

    g, rec = recording_grounder(ckpt)
    port = free_port()
    app = create_app(g, ServeSettings(warmup=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    runner = threading.Thread(target=server.run)
    runner.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    rec.gate = threading.Event()
    result: list[httpx.Response] = []
    files = {"image": ("s.png", png_bytes(scene), "image/png")}
    request = threading.Thread(
        target=lambda: result.append(
            httpx.post(f"{url}/v1/ground", files=files, data={"expressions": "a"}, timeout=60)
        )
    )
    request.start()
    assert rec.entered.wait(30)
    server.should_exit = True  # the signal handler's flag
    time.sleep(0.3)  # the server is now draining
    rec.gate.set()
    request.join(60)
    runner.join(60)
    assert not runner.is_alive()
    assert result and result[0].status_code == 200 and len(result[0].json()["results"]) == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


# ------------------------------------------------------------------------------------------ a real photo


@pytest.mark.skipif(not PHOTOS, reason=f"real RefCOCO sample not found at {SAMPLE}")
def test_a_real_coco_photo_in_its_original_pixels(client):
    photo = PHOTOS[0]
    with Image.open(photo) as im:
        width, height = im.size
    c = client()
    r = c.post(
        "/v1/ground",
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"expressions": "man in the red shirt on the left\nthe umbrella"},
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["width"], data["height"]) == (width, height) and max(width, height) > 300
    for res in data["results"]:
        b = res["box"]
        assert 0 <= b["xmin"] < b["xmax"] <= width and 0 <= b["ymin"] < b["ymax"] <= height
    assert any("synthetic world" in w for w in data["warnings"])  # COCO words the model never saw
    assert json.dumps(data)  # JSON all the way down


def test_waiting_for_a_server_reports_an_exit_and_a_timeout():
    import subprocess
    import sys

    from langground.serve.probe import wait_until_serving

    url = "http://127.0.0.1:9"  # the discard port: nothing answers
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(ChildProcessError, match="exited with 3"):
        wait_until_serving(url, exited, timeout_s=5)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(TimeoutError, match="did not start within 0.3 s"):
            wait_until_serving(url, alive, timeout_s=0.3)
    finally:
        alive.kill()
        alive.wait()

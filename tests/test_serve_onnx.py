"""``langground serve --backend onnx``: the graph ``langground export`` writes, served like the checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'langground[serve]'")
pytest.importorskip(
    "onnxruntime", reason="the export extra is not installed: pip install 'langground[export]'"
)
from fastapi.testclient import TestClient  # noqa: E402

from test_serve_api import assert_one_line_error, box_list, multipart, png_bytes, trained_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint(tmp_path_factory.mktemp("onnx"))


def test_backend_onnx_serves_the_exported_graph(trained, tmp_path):
    """``serve --backend onnx``: the graph ``langground export`` wrote answers with the torch model's box."""
    ckpt, world = trained
    scene = sorted((world / "images").glob("*.png"))[0]
    from typer.testing import CliRunner

    from langground.cli import _mount, app
    from langground.cli.serve import build_app

    _mount()
    out = tmp_path / "model.onnx"
    res = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    boxes, infos = {}, {}
    for backend, path in (("onnx", out), ("torch", ckpt)):
        spec = {"checkpoint": str(path), "device": "cpu", "backend": backend, "threads": None, "settings": {}}
        with TestClient(build_app(spec)) as c:
            infos[backend] = c.get("/v1/model").json()
            r = c.post("/v1/ground", **multipart(png_bytes(scene), "the red cube"))
            assert r.status_code == 200, r.text
            boxes[backend] = box_list(r.json()["results"][0]["box"])
            if backend == "onnx":  # no attention maps in the exported graph: a clear 400
                bad = c.post("/v1/ground", **multipart(png_bytes(scene), "the red cube", explain="true"))
                assert_one_line_error(bad, 400, "explain is not available")
    np.testing.assert_allclose(boxes["onnx"], boxes["torch"], atol=0.02)
    assert infos["onnx"]["backend"] == "onnx" and infos["onnx"]["explain"] is False
    assert infos["onnx"]["checkpoint"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert infos["onnx"]["name"] == infos["torch"]["name"] == "laconvnet_t"

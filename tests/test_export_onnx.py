"""``langground export``: the parity check really fails, one-line errors, the sidecar round-trips, the onnx
backend gives the torch backend's boxes (API and CLI), LADS subnets. Every family: test_export_families.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from langground.cli import _mount, app
from langground.errors import CheckpointError, LanggroundError
from langground.export import (
    ExportResult,
    ParityError,
    check_parity,
    export_checkpoint,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from langground.export.graph import INPUTS, TensorGraph
from langground.export.parity import parity_inputs
from langground.inference.grounder import Grounder
from langground.registry import create_model
from langground.types import TextBatch
from test_models_registry_sweep import WORDS, synthetic_samples

SIZE, WORDS_MAX = 64, 6
EXPRESSIONS = ["the red square", "the blue square", "the yellow red green square"]


def trained_checkpoint(path: Path, name: str, steps: int = 2) -> Path:
    """``name`` after a few Adam steps on the tiny two-squares world, saved with the checkpoint writer."""
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.losses import build_criterion
    from langground.text.vocab import Vocabulary

    cfg = load_preset(
        "synth-laconvnet-t-rec", [f"transforms.input_size={SIZE}", f"data.max_text_length={WORDS_MAX}"]
    )
    tasks = create_model(name, vocab_size=len(WORDS), input_size=SIZE).supported_tasks
    cfg.model.name, cfg.model.task, cfg.model.kwargs = name, ("rec" if "rec" in tasks else tasks[0]), {}
    vocab = Vocabulary(WORDS)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    images, text, targets = synthetic_samples(SIZE, n=2)
    criterion = build_criterion(cfg.model.task, model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = criterion(model.train()(images, text), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # BatchNorm statistics of what the parity check feeds (the two-squares images and random normal
    # ones): two steps leave them near their init, which shrinks eval-mode activations layer by layer
    # until the outputs hardly depend on the input (and any graph would pass the check)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.eval()
        for m in bns:
            m.train()  # statistics only: no dropout
        model(
            torch.cat([images, noise]),
            TextBatch(text.token_ids.repeat(2, 1), text.attention_mask.repeat(2, 1)),
        )
        for m in bns:
            m.momentum = 0.1
    return save_checkpoint(path, model=model.eval(), config=cfg, vocab=vocab)


@pytest.fixture(scope="module")
def cli():
    _mount()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def laconv(tmp_path_factory) -> tuple[Path, Path, ExportResult]:
    """A trained laconvnet_t checkpoint, its exported graph and the export's result."""
    root = tmp_path_factory.mktemp("laconv")
    ckpt = trained_checkpoint(root / "ckpt", "laconvnet_t")
    return ckpt, root / "model.onnx", export_checkpoint(ckpt, root / "model.onnx", threads=1)


@pytest.fixture()
def photo(tmp_path) -> Path:
    img = np.full((80, 130, 3), 40, np.uint8)
    img[10:40, 20:50] = (230, 30, 30)
    img[30:70, 80:120] = (30, 30, 230)
    path = tmp_path / "scene.png"
    Image.fromarray(img).save(path)
    return path


# ----------------------------------------------------------------------------- the check discriminates


def test_corrupted_initializer_fails_parity_loudly(laconv, tmp_path):
    from langground.engine.checkpoint import load_checkpoint

    ckpt, out, _ = laconv
    model = onnx.load(str(out))
    conv = max((t for t in model.graph.initializer if len(t.dims) == 4), key=lambda t: int(np.prod(t.dims)))
    arr = onnx.numpy_helper.to_array(conv) * 1.01  # one conv weight 1% off
    conv.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), conv.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    torch_model = load_checkpoint(ckpt).model
    graph = TensorGraph(torch_model)
    cases = parity_inputs(SIZE, WORDS_MAX, len(WORDS))
    names = graph.discover(*cases[0])
    assert max(check_parity(out, graph, cases, names, INPUTS).max_scaled_diff.values()) <= 1e-4
    with pytest.raises(
        ParityError, match=r"parity check FAILED: \w+ max abs diff .* > tolerance 0.0001"
    ) as e:
        check_parity(bad, graph, cases, names, INPUTS)
    assert "\n" not in str(e.value)


def test_cli_export_prints_parity_and_a_failed_export_lands_nothing(cli, laconv, tmp_path, monkeypatch):
    ckpt, _, _ = laconv
    res = cli("export", ckpt, "--format", "onnx", "--out", tmp_path / "ok.onnx", "--threads", 1)
    assert res.exit_code == 0, res.output
    assert (
        "parity ok" in res.output and "pred_boxes" in res.output and "dynamic batch and length" in res.output
    )
    assert (tmp_path / "ok.onnx").is_file() and (tmp_path / "ok.json").is_file()

    import langground.export.onnx as exp

    real = exp.export_graph

    def corrupting(graph, example, path, *args):  # noqa: ANN001, ANN202
        real(graph, example, path, *args)
        m = onnx.load(str(path))
        t = max((t for t in m.graph.initializer if len(t.dims) == 4), key=lambda t: int(np.prod(t.dims)))
        arr = onnx.numpy_helper.to_array(t) * 1.01
        t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
        onnx.save(m, str(path))

    monkeypatch.setattr(exp, "export_graph", corrupting)
    res = cli("export", ckpt, "--out", tmp_path / "bad.onnx", "--threads", 1)
    assert res.exit_code == 2
    assert "parity check FAILED" in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json", "ok.onnx"]  # nothing half-written


def test_cli_export_one_line_errors(cli, laconv, tmp_path):
    ckpt, _, _ = laconv
    for args, needle in [
        (("--format", "tflite", "--out", tmp_path / "m.onnx"), "unknown export format 'tflite'"),
        (("--out", tmp_path / "missing" / "m.onnx"), "does not exist"),
        (("--out", tmp_path), "is a directory"),
        (("--out", tmp_path / "m.onnx", "--expressions", "the red square"), "--expressions is for gated"),
    ]:
        res = cli("export", ckpt, *args)
        assert res.exit_code == 2, res.output
        assert needle in res.output and len(res.output.strip().splitlines()) == 1, res.output
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        res = cli("export", ckpt, "--out", locked / "m.onnx")
        locked.chmod(0o700)
        assert res.exit_code == 2 and "is not writable" in res.output, res.output


# ----------------------------------------------------------------------------- sidecar


def test_sidecar_round_trip_and_bad_sidecars(laconv, tmp_path):
    _, out, _ = laconv
    meta = read_sidecar(sidecar_path(out))
    assert sidecar_path(out) == out.with_suffix(".json")
    copy = write_sidecar(meta, tmp_path / "copy.json")
    assert read_sidecar(copy) == meta
    assert meta.task == "rec" and meta.opset == 17 and meta.max_text_length == WORDS_MAX
    assert meta.outputs == ["pred_boxes", "pred_scores", "pred_box_set", "pred_box_logits"]
    assert meta.postprocess["box_set_threshold"] == pytest.approx(0.7) and meta.trained_on == "synth"
    (tmp_path / "foreign.json").write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(CheckpointError, match="not a langground ONNX sidecar"):
        read_sidecar(tmp_path / "foreign.json")
    with pytest.raises(CheckpointError, match="metadata sidecar missing"):
        read_sidecar(tmp_path / "absent.json")


# ----------------------------------------------------------------------------- the onnx backend


def test_grounder_onnx_backend_gives_the_torch_boxes(laconv, photo):
    ckpt, out, _ = laconv
    torch_g = Grounder.from_pretrained(ckpt)
    onnx_g = Grounder.from_pretrained(out, backend="onnx")
    by_dir = Grounder.from_pretrained(out.parent, backend="onnx")  # a folder with one exported graph
    assert onnx_g.backend == "onnx" and torch_g.backend == "torch" and by_dir.vocab == torch_g.vocab
    a, b = torch_g.predict(photo, EXPRESSIONS), onnx_g.predict(photo, EXPRESSIONS)
    for x, y in zip(a, b, strict=True):
        for k in ("xmin", "ymin", "xmax", "ymax"):
            assert y["box"][k] == pytest.approx(x["box"][k], abs=0.01)
        assert y["score"] == pytest.approx(x["score"], abs=1e-4)
    with pytest.raises(LanggroundError, match="explain is not supported by the onnx backend"):
        onnx_g.predict(photo, "the red square", explain=True)
    with pytest.raises(LanggroundError, match="unknown backend 'tensorrt'"):
        Grounder.from_pretrained(out, backend="tensorrt")
    with pytest.raises(CheckpointError, match="no exported graph here"):
        Grounder.from_pretrained(ckpt, backend="onnx")


def test_cli_predict_backend_onnx_writes_the_same_json(cli, laconv, photo):
    ckpt, out, _ = laconv
    runs = {}
    for backend, path in (("torch", ckpt), ("onnx", out)):
        res = cli("predict", path, photo, *EXPRESSIONS, "--json", "--backend", backend)
        assert res.exit_code == 0, res.output
        runs[backend] = json.loads(res.stdout[res.stdout.index("{") :])
    for x, y in zip(runs["torch"]["results"], runs["onnx"]["results"], strict=True):
        assert x["expression"] == y["expression"]
        np.testing.assert_allclose([y["box"][k] for k in ["xmin", "ymin", "xmax", "ymax"]],
                                   [x["box"][k] for k in ["xmin", "ymin", "xmax", "ymax"]], atol=0.01)  # fmt: skip
    res = cli("predict", out, photo, "the red square", "--backend", "onnx", "--explain")
    assert res.exit_code == 2 and "--explain is not supported with --backend onnx" in res.output


# ----------------------------------------------------------------------------- LADS (gated)


def test_lads_exports_one_subnet_per_expression(cli, tmp_path):
    from langground.export.parity import make_session

    ckpt = trained_checkpoint(tmp_path / "lads", "lads_t")
    res = cli("export", ckpt, "--out", tmp_path / "lads.onnx", "-e", EXPRESSIONS[0], "-e", EXPRESSIONS[1])
    assert res.exit_code == 0, res.output
    assert "extracted static subnet of each expression" in res.output and "2 graph(s)" in res.output
    paths = [tmp_path / "lads-000.onnx", tmp_path / "lads-001.onnx"]
    metas = [read_sidecar(sidecar_path(p)) for p in paths]
    assert [m.expression for m in metas] == EXPRESSIONS[:2] and {m.kind for m in metas} == {"subnet"}
    assert (
        all(max(m.parity.values()) <= 1e-4 for m in metas) and "pred_boxes_vs_full_model" in metas[0].parity
    )
    # the graph answers its expression: the full PyTorch model's boxes on a new image
    from langground.engine.checkpoint import load_checkpoint

    model, _, vocab, _ = load_checkpoint(ckpt)
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    for path, expression in zip(paths, EXPRESSIONS, strict=False):
        text = vocab.batch([expression] * 2, WORDS_MAX)
        with torch.no_grad():
            want = model(images, text)["pred_boxes"].numpy()
        got = make_session(path).run(None, {"images": images.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-4)
    res = cli("export", ckpt, "--out", tmp_path / "x.onnx")
    assert res.exit_code == 2 and "is a gated model" in res.output and "--expressions" in res.output
    with pytest.raises(CheckpointError, match="subnet extracted for one expression"):
        Grounder.from_pretrained(paths[0], backend="onnx")

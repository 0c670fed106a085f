"""Shared building blocks of the expression and question generators.

- ``Ctx``: a scene's bitmask index plus cached attribute-subset masks per object, and the searches the
  generators share (minimal unique descriptions, relation clauses without borderline objects).
- ``ProgramBuilder``: appends CLEVR nodes.
- Surface realisation with the spec's synonyms and plurals.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from langground.data.synthetic.programs import Program, SceneIndex
from langground.data.synthetic.spec import (
    ATTRIBUTES,
    NOUN_FOR_NO_SHAPE,
    OPPOSITE,
    PLURALS,
    RELATION_WORDS,
    SYNONYMS,
)

# Every subset of the attribute types, smallest first, as tuples in the canonical order.
SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    c for k in range(len(ATTRIBUTES) + 1) for c in combinations(ATTRIBUTES, k)
)
SUBSETS_OF_SIZE: tuple[tuple[tuple[str, ...], ...], ...] = tuple(
    tuple(combinations(ATTRIBUTES, k)) for k in range(len(ATTRIBUTES) + 1)
)


def pick(rng: np.random.Generator, seq: Any) -> Any:
    return seq[int(rng.integers(len(seq)))]


def synonym(word: str, rng: np.random.Generator) -> str:
    return pick(rng, SYNONYMS.get(word, (word,)))


def noun_phrase(values: dict[str, str], rng: np.random.Generator, plural: bool = False) -> str:
    """The words for ``values`` ("small red metal cube"), synonyms drawn per word; "thing"/"object"
    when the shape is not said."""
    words = [synonym(values[a], rng) for a in ("size", "color", "material") if a in values]
    noun = synonym(values.get("shape", NOUN_FOR_NO_SHAPE), rng)
    return " ".join(words + [PLURALS[noun] if plural else noun])


def article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def relation_words(rel: str, rng: np.random.Generator) -> str:
    return pick(rng, RELATION_WORDS[rel])


class ProgramBuilder:
    def __init__(self) -> None:
        self.nodes: Program = []

    def add(
        self, fn: str, inputs: tuple[int, ...] | list[int] = (), values: tuple[str, ...] | list[str] = ()
    ) -> int:
        self.nodes.append({"function": fn, "inputs": list(inputs), "value_inputs": [str(v) for v in values]})
        return len(self.nodes) - 1

    def filters(self, values: dict[str, str], src: int | None = None) -> int:
        """Filter chain in canonical attribute order, from ``src`` (default: a new ``scene`` node)."""
        i = self.add("scene") if src is None else src
        for a in ATTRIBUTES:
            if a in values:
                i = self.add(f"filter_{a}", [i], [values[a]])
        return i


@dataclass
class Anchor:
    """A uniquely described object: its attribute values as said, and the relation/same clause data."""

    obj: int
    values: dict[str, str]


class Ctx:
    """Per-scene search state shared by the generators."""

    def __init__(self, scene: Any, width: float, condition: str | None = None) -> None:
        self.idx = SceneIndex(scene)
        graph = scene.to_graph() if hasattr(scene, "to_graph") else scene
        self.px = [float(o["pixel_coords"][0]) for o in graph["objects"]]
        self.width = float(width)
        self.condition = condition
        self._masks: dict[int, dict[tuple[str, ...], int]] = {}
        self._unique: dict[tuple[int, tuple[str, ...]], list[tuple[str, ...]]] = {}

    @property
    def n(self) -> int:
        return self.idx.n

    def third(self, obj: int) -> int:
        return min(2, max(0, int(3 * self.px[obj] / self.width)))

    def values(self, obj: int, subset: tuple[str, ...]) -> dict[str, str]:
        return {a: self.idx.values[obj][a] for a in subset}

    def masks(self, obj: int) -> dict[tuple[str, ...], int]:
        """For every attribute subset: the objects sharing ``obj``'s values on it."""
        m = self._masks.get(obj)
        if m is None:
            m = {(): self.idx.all}
            for sub in SUBSETS[1:]:
                m[sub] = m[sub[:-1]] & self.idx.has(sub[-1], self.idx.values[obj][sub[-1]])
            self._masks[obj] = m
        return m

    def minimal_unique(self, obj: int, exclude: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        """Smallest attribute subsets (avoiding ``exclude``) that single out ``obj``."""
        key = (obj, exclude)
        if key not in self._unique:
            masks, target = self.masks(obj), 1 << obj
            found: list[tuple[str, ...]] = []
            for subsets in SUBSETS_OF_SIZE:
                found = [s for s in subsets if masks[s] == target and not set(s) & set(exclude)]
                if found:
                    break
            self._unique[key] = found
        return self._unique[key]

    def anchor(self, obj: int, rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> Anchor | None:
        subs = self.minimal_unique(obj, exclude)
        return Anchor(obj, self.values(obj, pick(rng, subs))) if subs else None

    def definite(self, rel: str, anchor: int) -> int:
        """Objects clearly on one side of ``anchor`` on the axis of ``rel`` (outside the margin)."""
        return self.idx.rel[rel][anchor] | self.idx.rel[OPPOSITE[rel]][anchor]

    def minimal_subsets(
        self, obj: int, ok: Any, exclude: tuple[str, ...] = (), restrict: int | None = None
    ) -> list[tuple[str, ...]]:
        """Smallest subsets S of ``obj``'s attributes with ``ok(mask_S)`` true while ``ok`` fails for
        every S minus one attribute (so no word is redundant). ``restrict`` ANDs every mask."""
        masks = self.masks(obj)
        full = self.idx.all if restrict is None else restrict
        good: list[tuple[str, ...]] = []
        for s in SUBSETS:
            if set(s) & set(exclude) or (good and len(s) > len(good[0])):
                continue
            if ok(masks[s] & full) and all(not ok(masks[tuple(a for a in s if a != x)] & full) for x in s):
                good.append(s)
        return good


def with_anchor(b: ProgramBuilder, anchor: Anchor) -> int:
    """Nodes for "the <anchor phrase>" ending in ``unique``."""
    return b.add("unique", [b.filters(anchor.values)])

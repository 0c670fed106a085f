"""VQA questions about a scene, as CLEVR programs with CLEVR-style answers.

Families: ``exist`` ("Is there a red cube?"), ``count`` ("How many spheres are left of the cyan
cylinder?"), ``query_color`` / ``query_shape`` / ``query_size`` / ``query_material`` ("What color is
the large metal thing?", the queried attribute never said in the description) and ``compare_count``
("Are there more cubes than red things?"). Answers are "yes"/"no", digit strings or attribute names.

Balance inside each image: exist and compare_count draw the wanted answer (yes/no) first; count draws
the wanted count uniformly among the counts its candidate descriptions reach (0 included); query
families draw the answer value uniformly among the values present, then an object that has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from langground.data.synthetic.config import QUESTION_FAMILIES, SynthConfig
from langground.data.synthetic.phrases import (
    SUBSETS_OF_SIZE,
    Anchor,
    Ctx,
    ProgramBuilder,
    article,
    noun_phrase,
    pick,
    relation_words,
    with_anchor,
)
from langground.data.synthetic.programs import Program, answer_program, popcount
from langground.data.synthetic.spec import ATTRIBUTE_NOUN, RELATIONS, VALUES, combination_possible


@dataclass
class Question:
    family: str
    question: str
    program: Program
    answer: str


@dataclass
class _Set:
    """A described set of objects: attribute words, optionally restricted by a relation to an anchor."""

    values: dict[str, str]
    mask: int
    rel: str | None = None
    anchor: Anchor | None = None

    def nodes(self, b: ProgramBuilder) -> int:
        if self.rel is None or self.anchor is None:
            return b.filters(self.values)
        r = b.add("relate", [with_anchor(b, self.anchor)], [self.rel])
        return b.filters(self.values, r)

    def phrase(self, rng: np.random.Generator, plural: bool) -> str:
        np_ = noun_phrase(self.values, rng, plural=plural)
        if self.rel is None or self.anchor is None:
            return np_
        return f"{np_} {relation_words(self.rel, rng)} the {noun_phrase(self.anchor.values, rng)}"

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(self.values.items())),
            self.rel,
            None if self.anchor is None else self.anchor.obj,
        )


def _random_set(ctx: Ctx, rng: np.random.Generator, absent_ok: bool = True) -> _Set | None:
    """A random description: words from one object's attributes, from the vocabulary (maybe absent),
    and sometimes a relation to a uniquely described anchor (no borderline objects)."""
    idx = ctx.idx
    o = int(rng.integers(idx.n))
    k = int(rng.integers(1, 4))
    attrs: tuple[str, ...] = pick(rng, SUBSETS_OF_SIZE[k])
    values = ctx.values(o, attrs)
    if absent_ok and rng.random() < 0.2:
        a = pick(rng, attrs)
        values[a] = pick(rng, VALUES[a])
        if not combination_possible(values, ctx.condition):
            return None
    mask = idx.all
    for a, v in values.items():
        mask &= idx.has(a, v)
    if rng.random() < 0.3:
        a = int(rng.integers(idx.n))
        rel = pick(rng, RELATIONS)
        anchor = ctx.anchor(a, rng)
        if anchor is None or (mask & ~(1 << a)) & ~ctx.definite(rel, a):
            return None
        return _Set(values, mask & idx.rel[rel][a], rel, anchor)
    return _Set(values, mask)


def _exist(ctx: Ctx, rng: np.random.Generator) -> Question | None:
    want = rng.random() < 0.5
    for _ in range(20):
        s = _random_set(ctx, rng)
        if s is None or bool(s.mask) != want:
            continue
        b = ProgramBuilder()
        b.add("exist", [s.nodes(b)])
        if rng.random() < 0.5:
            np_ = s.phrase(rng, plural=False)
            text = f"Is there {article(np_)} {np_}?"
        else:
            text = f"Are there any {s.phrase(rng, plural=True)}?"
        return Question("exist", text, b.nodes, "yes" if want else "no")
    return None


def _count(ctx: Ctx, rng: np.random.Generator) -> Question | None:
    by_count: dict[int, list[_Set]] = {}
    for _ in range(12):
        s = _random_set(ctx, rng)
        if s is not None:
            by_count.setdefault(popcount(s.mask), []).append(s)
    if not by_count:
        return None
    s = pick(rng, by_count[pick(rng, sorted(by_count))])
    b = ProgramBuilder()
    b.add("count", [s.nodes(b)])
    plural = s.phrase(rng, plural=True)
    text = pick(rng, (f"How many {plural} are there?", f"What number of {plural} are there?"))
    return Question("count", text, b.nodes, str(popcount(s.mask)))


def _query(ctx: Ctx, rng: np.random.Generator, attr: str) -> Question | None:
    idx = ctx.idx
    present = sorted({v[attr] for v in idx.values})
    value = pick(rng, present)
    for t in [i for i in rng.permutation(idx.n) if idx.values[i][attr] == value]:
        subs = ctx.minimal_unique(int(t), exclude=(attr,))
        if not subs:
            continue
        values = ctx.values(int(t), pick(rng, subs))
        b = ProgramBuilder()
        b.add(f"query_{attr}", [b.add("unique", [b.filters(values)])])
        np_ = noun_phrase(values, rng)
        noun = ATTRIBUTE_NOUN[attr]
        forms = [
            f"What {noun} is the {np_}?",
            f"What is the {noun} of the {np_}?",
            f"The {np_} is what {noun}?",
        ]
        if attr == "material":
            forms.append(f"What is the {np_} made of?")
        elif attr == "size":
            forms.append(f"How big is the {np_}?")
        return Question(f"query_{attr}", pick(rng, forms), b.nodes, value)
    return None


def _compare(ctx: Ctx, rng: np.random.Generator) -> Question | None:
    op = pick(rng, ("greater_than", "less_than", "equal_integer"))
    want = rng.random() < 0.5
    for _ in range(20):
        s1, s2 = _random_set(ctx, rng), _random_set(ctx, rng)
        if s1 is None or s2 is None or s1.key() == s2.key():
            continue
        c1, c2 = popcount(s1.mask), popcount(s2.mask)
        truth = {"greater_than": c1 > c2, "less_than": c1 < c2, "equal_integer": c1 == c2}[op]
        if truth != want:
            continue
        b = ProgramBuilder()
        i1 = b.add("count", [s1.nodes(b)])
        i2 = b.add("count", [s2.nodes(b)])
        b.add(op, [i1, i2])
        p1, p2 = s1.phrase(rng, plural=True), s2.phrase(rng, plural=True)
        if op == "greater_than":
            text = f"Are there more {p1} than {p2}?"
        elif op == "less_than":
            text = f"Are there fewer {p1} than {p2}?"
        else:
            text = pick(
                rng,
                (
                    f"Are there the same number of {p1} and {p2}?",
                    f"Is the number of {p1} the same as the number of {p2}?",
                ),
            )
        return Question("compare_count", text, b.nodes, "yes" if want else "no")
    return None


def generate_questions(
    scene: Any, rng: np.random.Generator, config: SynthConfig, width: float | None = None
) -> list[Question]:
    """Up to ``config.questions_per_image`` distinct questions; every answer is re-derived by running
    the program (``answer_program``) before it is kept."""
    if width is None:
        width = scene.size[0]
    ctx = Ctx(scene, width, getattr(scene, "condition", None))
    out: list[Question] = []
    seen: set[str] = set()
    for _slot in range(config.questions_per_image):
        for _try in range(6):
            fam = pick(rng, QUESTION_FAMILIES)
            if fam == "exist":
                q = _exist(ctx, rng)
            elif fam == "count":
                q = _count(ctx, rng)
            elif fam == "compare_count":
                q = _compare(ctx, rng)
            else:
                q = _query(ctx, rng, fam[len("query_") :])
            if q is None or q.question in seen or answer_program(q.program, ctx.idx) != q.answer:
                continue
            seen.add(q.question)
            out.append(q)
            break
    return out

"""Referring expressions: programs built on the scene graph, verified by execution, then realised as text.

Families (``Expression.family``):
- ``attribute``: the minimal unique attribute phrase ("the small red thing");
- ``relation``: "the rubber cube left of the red sphere" (anchor said minimally, relation needed);
- ``ordinal``: "the second cylinder from the left" / "the leftmost cylinder";
- ``same_attribute``: "the sphere that has the same color as the small cube";
- ``multi``: two or more targets, "all metal spheres", "both cubes behind the red ball";
- ``absent`` (no target): an attribute combination that is absent although each of its words alone
  matches something (and that CoGenT's condition allows, so "absent" is never a language prior);
- ``false_relation`` (no target): present objects and a present anchor in a relation that is false
  for every one of them (each of them clearly on the other side, outside the margin).

Every accepted expression is re-executed with ``execute_program``: its result must be the intended
targets (exactly one object for single-target families), and removing any word-carrying node (an
attribute, an ordinal, a relation clause) must change the outcome (``redundant_nodes`` is empty).
Balance: each slot is a no-target slot with probability ``no_target_rate``; the family is drawn from
``family_weights`` and the target from a uniformly drawn horizontal third of the image (least used
objects first); a draw that cannot be realised is rejected and drawn again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from langground.data.synthetic.config import EXPRESSION_FAMILIES, NO_TARGET_FAMILIES, SynthConfig
from langground.data.synthetic.phrases import (
    SUBSETS,
    Ctx,
    ProgramBuilder,
    noun_phrase,
    pick,
    relation_words,
    with_anchor,
)
from langground.data.synthetic.programs import Program, bits, execute_program, popcount, redundant_nodes
from langground.data.synthetic.spec import (
    ATTRIBUTE_NOUN,
    ATTRIBUTES,
    OPPOSITE,
    ORDINAL_DIRECTIONS,
    ORDINAL_FROM,
    ORDINAL_WORDS,
    RELATIONS,
    SUPERLATIVES,
    VALUES,
    combination_possible,
)

_SLOT_TRIES = 12
_FAMILY_TRIES = 4


@dataclass
class Expression:
    """One referring expression: text, the program that produced it and its targets (object indices)."""

    family: str
    text: str
    program: Program
    targets: list[int] = field(default_factory=list)

    @property
    def no_target(self) -> bool:
        return not self.targets

    @property
    def tokens(self) -> list[str]:
        return self.text.split()


def _shuffled(rng: np.random.Generator, seq: Any) -> list[Any]:
    seq = list(seq)
    return [seq[i] for i in rng.permutation(len(seq))]


def _attribute(ctx: Ctx, rng: np.random.Generator, t: int) -> Expression | None:
    subs = ctx.minimal_unique(t)
    if not subs:
        return None
    values = ctx.values(t, pick(rng, subs))
    b = ProgramBuilder()
    b.filters(values)
    return Expression("attribute", f"the {noun_phrase(values, rng)}", b.nodes, [t])


def _relation_clause(
    ctx: Ctx, rng: np.random.Generator, t: int, rel: str, a: int, multi: bool
) -> tuple[dict[str, str], Any] | None:
    """Target words S for "the S <rel> the <anchor a>": the relation needed, no redundant word, and every
    object matching S (but the anchor) clearly on one side of the anchor."""
    anchor = ctx.anchor(a, rng)
    if anchor is None:
        return None
    related = ctx.idx.rel[rel][a]
    definite = ctx.definite(rel, a) | (1 << a)
    target = 1 << t

    def ok(mask: int) -> bool:
        res = mask & related
        if multi:
            return popcount(res) >= 2 and bool(res & target)
        return res == target

    subs = [
        s
        for s in ctx.minimal_subsets(t, ok)
        if ctx.masks(t)[s] & ~definite == 0 and (ctx.masks(t)[s] & related) != ctx.masks(t)[s]
    ]
    if not subs:
        return None
    return ctx.values(t, pick(rng, subs)), anchor


def _relation_program(values: dict[str, str], rel: str, anchor: Any) -> Program:
    b = ProgramBuilder()
    r = b.add("relate", [with_anchor(b, anchor)], [rel])
    b.filters(values, r)
    return b.nodes


def _relation(ctx: Ctx, rng: np.random.Generator, t: int) -> Expression | None:
    for rel in _shuffled(rng, RELATIONS):
        anchors = [a for a in range(ctx.n) if ctx.idx.rel[rel][a] >> t & 1]
        for a in _shuffled(rng, anchors)[:3]:
            found = _relation_clause(ctx, rng, t, rel, a, multi=False)
            if found is None:
                continue
            values, anchor = found
            that = pick(rng, ("", "that is "))
            text = f"the {noun_phrase(values, rng)} {that}{relation_words(rel, rng)} the {noun_phrase(anchor.values, rng)}"
            return Expression("relation", text, _relation_program(values, rel, anchor), [t])
    return None


def _ordinal(ctx: Ctx, rng: np.random.Generator, t: int, max_k: int) -> Expression | None:
    """The k-th S from a direction ("the second cube from the left"), k counted among the objects
    matching S; no word redundant."""
    options = []
    masks = ctx.masks(t)
    for direction in ORDINAL_DIRECTIONS:
        towards = ctx.idx.rel[direction][t]
        for s in SUBSETS:
            m = masks[s]
            k = popcount(m & towards) + 1
            if k > max_k or popcount(m) < 2 or not ctx.idx.is_kth(t, m, k, direction):
                continue
            drop = [masks[tuple(a for a in s if a != x)] for x in s]
            if not any(ctx.idx.is_kth(t, d, k, direction) for d in drop):
                options.append((direction, k, s))
    if not options:
        return None
    direction, k, s = pick(rng, options)
    values = ctx.values(t, s)
    b = ProgramBuilder()
    b.add("filter_ordinal", [b.filters(values)], [str(k), direction])
    np_ = noun_phrase(values, rng)
    if k == 1 and direction in SUPERLATIVES and rng.random() < 0.5:
        text = f"the {SUPERLATIVES[direction]} {np_}"
    else:
        text = f"the {ORDINAL_WORDS[k - 1]} {np_} from the {ORDINAL_FROM[direction]}"
    return Expression("ordinal", text, b.nodes, [t])


def _same_attribute(ctx: Ctx, rng: np.random.Generator, t: int) -> Expression | None:
    for attr in _shuffled(rng, ATTRIBUTES):
        for a in _shuffled(rng, bits(ctx.idx.same(attr, t)))[:3]:
            anchor = ctx.anchor(a, rng, exclude=(attr,))
            if anchor is None:
                continue
            same = ctx.idx.same(attr, a)
            subs = [
                s
                for s in ctx.minimal_subsets(t, lambda m, same=same: m & same == 1 << t, exclude=(attr,))
                if ctx.masks(t)[s] != 1 << t  # the clause must be needed
            ]
            if not subs:
                continue
            values = ctx.values(t, pick(rng, subs))
            b = ProgramBuilder()
            s_node = b.add(f"same_{attr}", [with_anchor(b, anchor)])
            b.filters(values, s_node)
            verb = pick(rng, ("that has the same", "with the same", "that is the same"))
            text = (
                f"the {noun_phrase(values, rng)} {verb} {ATTRIBUTE_NOUN[attr]} as the "
                f"{noun_phrase(anchor.values, rng)}"
            )
            return Expression("same_attribute", text, b.nodes, [t])
    return None


def _multi(ctx: Ctx, rng: np.random.Generator, t: int) -> Expression | None:
    if rng.random() < 0.4:
        for rel in _shuffled(rng, RELATIONS):
            anchors = [a for a in range(ctx.n) if ctx.idx.rel[rel][a] >> t & 1]
            for a in _shuffled(rng, anchors)[:2]:
                found = _relation_clause(ctx, rng, t, rel, a, multi=True)
                if found is None:
                    continue
                values, anchor = found
                targets = bits(
                    ctx.masks(t)[tuple(x for x in ATTRIBUTES if x in values)] & ctx.idx.rel[rel][a]
                )
                head = (
                    pick(rng, ("all", "all the"))
                    if len(targets) > 2
                    else pick(rng, ("all", "all the", "both"))
                )
                that = pick(rng, ("", "that are "))
                text = (
                    f"{head} {noun_phrase(values, rng, plural=True)} {that}{relation_words(rel, rng)} the "
                    f"{noun_phrase(anchor.values, rng)}"
                )
                return Expression("multi", text, _relation_program(values, rel, anchor), targets)
    subs = [s for s in ctx.minimal_subsets(t, lambda m: popcount(m) >= 2) if s]
    # minimal_subsets stops at the smallest size; larger sets of words are fine if none is redundant.
    subs += [
        s
        for s in SUBSETS[1:]
        if popcount(ctx.masks(t)[s]) >= 2
        and all(ctx.masks(t)[tuple(a for a in s if a != x)] != ctx.masks(t)[s] for x in s)
        and s not in subs
    ]
    subs = [s for s in subs if ctx.masks(t)[s] != ctx.idx.all]
    if not subs:
        return None
    s = pick(rng, subs)
    values = ctx.values(t, s)
    targets = bits(ctx.masks(t)[s])
    b = ProgramBuilder()
    b.filters(values)
    head = (
        pick(rng, ("all", "all the"))
        if len(targets) > 2
        else pick(rng, ("all", "all the", "both", "both the"))
    )
    return Expression("multi", f"{head} {noun_phrase(values, rng, plural=True)}", b.nodes, targets)


def _absent(ctx: Ctx, rng: np.random.Generator) -> Expression | None:
    idx = ctx.idx
    for _ in range(12):
        k = int(rng.integers(1, 4))
        attrs = sorted(_shuffled(rng, ATTRIBUTES)[:k], key=ATTRIBUTES.index)
        # Values mostly taken from present objects, so each word alone matches something.
        values = {
            a: idx.values[int(rng.integers(idx.n))][a] if k > 1 else pick(rng, VALUES[a]) for a in attrs
        }
        if not combination_possible(values, ctx.condition):
            continue
        mask = idx.all
        for a, v in values.items():
            mask &= idx.has(a, v)
        if mask:
            continue
        if k > 1 and any(not _match(idx, {a: v for a, v in values.items() if a != x}) for x in values):
            continue  # some word is not needed for the absence
        b = ProgramBuilder()
        b.filters(values)
        return Expression("absent", f"the {noun_phrase(values, rng)}", b.nodes, [])
    return None


def _match(idx: Any, values: dict[str, str]) -> int:
    mask = idx.all
    for a, v in values.items():
        mask &= idx.has(a, v)
    return mask


def _false_relation(ctx: Ctx, rng: np.random.Generator) -> Expression | None:
    idx = ctx.idx
    for _ in range(6):
        a = int(rng.integers(idx.n))
        rel = pick(rng, RELATIONS)
        anchor = ctx.anchor(a, rng)
        if anchor is None:
            continue
        related, opposite = idx.rel[rel][a], idx.rel[OPPOSITE[rel]][a]
        candidates = bits(opposite)
        if not candidates:
            continue
        o = pick(rng, candidates)
        others = idx.all & ~(1 << a)

        def ok(mask: int, others: int = others, opposite: int = opposite) -> bool:
            m = mask & others
            return m != 0 and m & ~opposite == 0  # present, and all clearly on the other side

        # Each dropped word must make the relation true for something (else that word is redundant).
        subs = [
            s
            for s in ctx.minimal_subsets(o, ok)
            if all(ctx.masks(o)[tuple(x for x in s if x != y)] & related for y in s)
        ]
        if not subs:
            continue
        values = ctx.values(o, pick(rng, subs))
        that = pick(rng, ("", "that is "))
        text = f"the {noun_phrase(values, rng)} {that}{relation_words(rel, rng)} the {noun_phrase(anchor.values, rng)}"
        return Expression("false_relation", text, _relation_program(values, rel, anchor), [])
    return None


def _verified(expr: Expression, ctx: Ctx) -> bool:
    result = execute_program(expr.program, ctx.idx)
    if result != sorted(expr.targets):
        return False
    if expr.family in ("attribute", "relation", "ordinal", "same_attribute") and len(result) != 1:
        return False
    if expr.family == "multi" and len(result) < 2:
        return False
    return not redundant_nodes(expr.program, ctx.idx)


def generate_expressions(
    scene: Any, rng: np.random.Generator, config: SynthConfig, width: float | None = None
) -> list[Expression]:
    """Up to ``config.expressions_per_image`` verified, distinct expressions about ``scene``.

    ``scene``: a ``Scene`` or a CLEVR scene dict (then give ``width``, the image width in pixels).
    """
    if width is None:
        width = scene.size[0]
    ctx = Ctx(scene, width, getattr(scene, "condition", None))
    weights = config.family_weights
    pos = [f for f in EXPRESSION_FAMILIES if weights.get(f, 0) > 0]
    neg = [f for f in NO_TARGET_FAMILIES if weights.get(f, 0) > 0]
    pw = np.array([weights[f] for f in pos], float)
    nw = np.array([weights[f] for f in neg], float) if neg else np.zeros(0)
    thirds: dict[int, list[int]] = {}
    for i in range(ctx.n):
        thirds.setdefault(ctx.third(i), []).append(i)
    strata = sorted(thirds)
    used = np.zeros(ctx.n)
    out: list[Expression] = []
    seen: set[str] = set()
    for _slot in range(config.expressions_per_image):
        no_target = bool(neg) and rng.random() < config.no_target_rate
        for _try in range(_SLOT_TRIES):
            # The family stays fixed for a few targets before it is redrawn, so hard families keep
            # their share instead of losing every slot to the easy ones.
            if _try % _FAMILY_TRIES == 0:
                fams, w = (neg, nw) if no_target else (pos, pw)
                fam = fams[int(rng.choice(len(fams), p=w / w.sum()))]
            if no_target:
                expr = _absent(ctx, rng) if fam == "absent" else _false_relation(ctx, rng)
            else:
                members = thirds[strata[int(rng.integers(len(strata)))]]
                p = 1.0 / (1.0 + used[members])
                t = members[int(rng.choice(len(members), p=p / p.sum()))]
                expr = _BUILDERS[fam](ctx, rng, t, config)
            if expr is None:
                continue
            key = json.dumps(expr.program)
            if expr.text in seen or key in seen or not _verified(expr, ctx):
                continue
            seen.update((expr.text, key))
            used[expr.targets] += 1
            out.append(expr)
            break
    return out


_BUILDERS: dict[str, Any] = {
    "attribute": lambda ctx, rng, t, cfg: _attribute(ctx, rng, t),
    "relation": lambda ctx, rng, t, cfg: _relation(ctx, rng, t),
    "ordinal": lambda ctx, rng, t, cfg: _ordinal(ctx, rng, t, cfg.max_ordinal),
    "same_attribute": lambda ctx, rng, t, cfg: _same_attribute(ctx, rng, t),
    "multi": lambda ctx, rng, t, cfg: _multi(ctx, rng, t),
}

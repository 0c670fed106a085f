"""CLEVR-style functional programs and their executor.

A program is a list of nodes ``{"function": str, "inputs": [node indices], "value_inputs": [str]}``;
the last node is the output. Functions (CLEVR's, plus ``filter_ordinal``):

- ``scene`` -> all objects; ``filter_{size,color,material,shape}[v]``: set -> set;
- ``unique``: set -> object (fails unless the set has exactly one object);
- ``relate[left|right|front|behind]``: object -> set (``relationships[rel][obj]`` of the scene graph);
- ``same_{size,color,material,shape}``: object -> the OTHER objects sharing that attribute;
- ``intersect`` / ``union``: two sets -> set;
- ``filter_ordinal[k, direction]``: set -> the set's k-th object counted from ``direction`` (left,
  right, front = nearest first, behind = furthest first), or the empty set when that rank is not
  clear: the k-th object must have exactly k-1 set members in ``direction`` of it and every other member
  in the opposite relation, both with the scene's margins (so "the second cube from the left" is never
  borderline);
- ``count``: set -> int; ``exist``: set -> bool; ``query_{size,color,material,shape}``: object -> str;
- ``equal_integer`` / ``less_than`` / ``greater_than``: two ints -> bool.

A failing ``unique`` makes the whole program fail: ``run_program`` returns ``None`` and
``execute_program`` returns no objects. Programs run on a ``Scene`` or on a CLEVR ``scenes.json`` entry
(``objects`` with the four attributes, ``relationships`` as CLEVR defines them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langground.data.synthetic.spec import ATTRIBUTES, OPPOSITE, RELATIONS, VALUES
from langground.errors import DataError

Program = list[dict[str, Any]]

# Nodes whose words can be removed from an expression: attribute filters and ordinals are bypassed,
# relation / same-attribute clauses (with their anchor phrase) are replaced by the whole scene.
BYPASSABLE = tuple(f"filter_{a}" for a in ATTRIBUTES) + ("filter_ordinal",)
CLAUSES = ("relate",) + tuple(f"same_{a}" for a in ATTRIBUTES)


class SceneIndex:
    """Bitmask view of a scene graph: one int per attribute value and per (relation, object)."""

    def __init__(self, scene: Any) -> None:
        graph = scene.to_graph() if hasattr(scene, "to_graph") else scene
        if not isinstance(graph, Mapping) or "objects" not in graph:
            raise DataError("scene: expected a Scene or a CLEVR scene with 'objects' and 'relationships'")
        objects = graph["objects"]
        self.n = len(objects)
        self.all = (1 << self.n) - 1
        self.values: list[dict[str, str]] = []
        self.attr: dict[tuple[str, str], int] = {}
        for i, o in enumerate(objects):
            try:
                vals = {a: str(o[a]) for a in ATTRIBUTES}
            except KeyError as e:
                raise DataError(f"scene object {i}: missing attribute {e.args[0]!r}") from None
            self.values.append(vals)
            for a, v in vals.items():
                self.attr[(a, v)] = self.attr.get((a, v), 0) | (1 << i)
        rels = graph.get("relationships", {})
        self.rel: dict[str, list[int]] = {}
        for r in RELATIONS:
            lists = rels.get(r)
            if lists is None or len(lists) != self.n:
                raise DataError(f"scene relationships[{r!r}]: expected one list per object ({self.n})")
            self.rel[r] = [sum(1 << j for j in lst) for lst in lists]

    def has(self, attr: str, value: str) -> int:
        return self.attr.get((attr, value), 0)

    def same(self, attr: str, obj: int) -> int:
        return self.has(attr, self.values[obj][attr]) & ~(1 << obj)

    def is_kth(self, obj: int, mask: int, k: int, direction: str) -> bool:
        """Whether ``obj`` (in ``mask``) is clearly the set's k-th object counted from ``direction``:
        k-1 members lie in ``direction`` of it and all the others in the opposite direction."""
        if not mask >> obj & 1:
            return False
        others = mask & ~(1 << obj)
        before = others & self.rel[direction][obj]
        return popcount(before) == k - 1 and others & ~before == others & self.rel[OPPOSITE[direction]][obj]

    def ordinal(self, mask: int, k: int, direction: str) -> int:
        """Bitmask of the set's k-th object from ``direction`` (0 when that rank is not clear).
        At most one object can qualify: margins make the relations transitive along an axis."""
        for i in bits(mask):
            if self.is_kth(i, mask, k, direction):
                return 1 << i
        return 0


def bits(mask: int) -> list[int]:
    out, i = [], 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return out


def popcount(mask: int) -> int:
    return bin(mask).count("1")


class _Fail(Exception):
    pass


class _Obj(int):
    """An object index as a node output (distinct from a count)."""


def _check_value(node_i: int, fn: str, values: Sequence[Any], n: int) -> list[str]:
    if len(values) != n:
        raise DataError(f"program node {node_i} ({fn}): expected {n} value_inputs, got {list(values)!r}")
    return [str(v) for v in values]


def _run(program: Program, idx: SceneIndex) -> Any:
    if not isinstance(program, list) or not program:
        raise DataError("program: expected a non-empty list of nodes")
    out: list[Any] = []
    for i, node in enumerate(program):
        try:
            fn, inputs, vals = node["function"], list(node.get("inputs", [])), node.get("value_inputs", [])
        except (KeyError, TypeError, AttributeError):
            fn, inputs, vals = None, [], []
        if not isinstance(fn, str) or any(not isinstance(j, int) or not 0 <= j < i for j in inputs):
            raise DataError(f"program node {i}: expected {{function, inputs (indices < {i}), value_inputs}}")
        ins = [out[j] for j in inputs]
        needs_object = fn in ("relate",) or fn.startswith(("same_", "query_"))
        if needs_object and not (len(ins) == 1 and isinstance(ins[0], _Obj)):
            raise DataError(f"program node {i} ({fn}): expected one object input (from 'unique')")
        out.append(_apply(i, fn, ins, vals, idx))
    return out[-1]


def _apply(i: int, fn: str, ins: list[Any], vals: Sequence[Any], idx: SceneIndex) -> Any:
    if fn == "scene":
        return idx.all
    if fn.startswith("filter_") and fn[7:] in ATTRIBUTES:
        (v,) = _check_value(i, fn, vals, 1)
        if v not in VALUES[fn[7:]]:
            raise DataError(f"program node {i} ({fn}): unknown value {v!r}")
        return ins[0] & idx.has(fn[7:], v)
    if fn == "unique":
        if popcount(ins[0]) != 1:
            raise _Fail
        return _Obj(ins[0].bit_length() - 1)
    if fn == "relate":
        (r,) = _check_value(i, fn, vals, 1)
        if r not in RELATIONS:
            raise DataError(f"program node {i} (relate): unknown relation {r!r}")
        return idx.rel[r][ins[0]]
    if fn.startswith("same_") and fn[5:] in ATTRIBUTES:
        return idx.same(fn[5:], ins[0])
    if fn == "intersect":
        return ins[0] & ins[1]
    if fn == "union":
        return ins[0] | ins[1]
    if fn == "filter_ordinal":
        k, direction = _check_value(i, fn, vals, 2)
        if direction not in RELATIONS or not k.isdigit() or int(k) < 1:
            raise DataError(
                f"program node {i} (filter_ordinal): expected [k >= 1, direction], got {list(vals)}"
            )
        return idx.ordinal(ins[0], int(k), direction)
    if fn == "count":
        return popcount(ins[0])
    if fn == "exist":
        return ins[0] != 0
    if fn.startswith("query_") and fn[6:] in ATTRIBUTES:
        return idx.values[ins[0]][fn[6:]]
    if fn == "equal_integer":
        return ins[0] == ins[1]
    if fn == "less_than":
        return ins[0] < ins[1]
    if fn == "greater_than":
        return ins[0] > ins[1]
    raise DataError(f"program node {i}: unknown function {fn!r}")


def run_program(program: Program, scene: Any) -> Any:
    """Execute ``program``; returns a sorted object list, a count, a bool, an attribute value, or None
    when a ``unique`` failed. ``scene``: a ``Scene``, a CLEVR scene dict or a ``SceneIndex``."""
    idx = scene if isinstance(scene, SceneIndex) else SceneIndex(scene)
    try:
        res = _run(program, idx)
    except _Fail:
        return None
    if isinstance(res, _Obj):
        return [int(res)]
    if isinstance(res, (bool, str)):
        return res
    fn = program[-1]["function"]
    if fn == "count":
        return int(res)
    return bits(res)


def execute_program(program: Program, scene: Any) -> list[int]:
    """The objects a referring program denotes (sorted indices; empty for no target or a failed unique)."""
    res = run_program(program, scene)
    if res is None:
        return []
    if not isinstance(res, list):
        raise DataError(f"program ends in {program[-1]['function']!r}, which answers a question, not objects")
    return res


def answer_program(program: Program, scene: Any) -> str:
    """A question program's answer as CLEVR writes it: "yes"/"no", a digit string or an attribute value."""
    res = run_program(program, scene)
    if res is None or isinstance(res, list):
        raise DataError(f"program ending in {program[-1]['function']!r} has no answer on this scene")
    if isinstance(res, bool):
        return "yes" if res else "no"
    return str(res)


# --- program surgery (for the redundant-word check) -------------------------------------------------


def _prune(nodes: list[dict[str, Any]]) -> Program:
    """Keep the nodes the output depends on, renumbered in order."""
    keep = {len(nodes) - 1}
    for i in range(len(nodes) - 1, -1, -1):
        if i in keep:
            keep.update(nodes[i]["inputs"])
    new_id = {old: new for new, old in enumerate(sorted(keep))}
    return [{**nodes[i], "inputs": [new_id[j] for j in nodes[i]["inputs"]]} for i in sorted(keep)]


def without_node(program: Program, k: int) -> Program:
    """The program with node ``k``'s words removed: a filter/ordinal is bypassed, a relation or
    same-attribute clause (and its anchor phrase) becomes the whole scene."""
    fn = program[k]["function"]
    nodes = [
        dict(n, inputs=list(n.get("inputs", [])), value_inputs=list(n.get("value_inputs", [])))
        for n in program
    ]
    if fn in BYPASSABLE:
        src = nodes[k]["inputs"][0]
        for n in nodes:
            n["inputs"] = [src if j == k else j for j in n["inputs"]]
        if k == len(nodes) - 1:
            nodes.append({"function": "union", "inputs": [src, src], "value_inputs": []})
    elif fn in CLAUSES:
        nodes[k] = {"function": "scene", "inputs": [], "value_inputs": []}
    else:
        raise ValueError(f"node {k} ({fn}) carries no removable words")
    return _prune(nodes)


def removable_nodes(program: Program) -> list[int]:
    return [i for i, n in enumerate(program) if n["function"] in BYPASSABLE + CLAUSES]


def redundant_nodes(program: Program, scene: Any) -> list[int]:
    """Nodes whose removal leaves the program's outcome unchanged (a failed ``unique`` counts as its own
    outcome, distinct from "no objects")."""
    idx = scene if isinstance(scene, SceneIndex) else SceneIndex(scene)
    ref = run_program(program, idx)
    return [k for k in removable_nodes(program) if run_program(without_node(program, k), idx) == ref]

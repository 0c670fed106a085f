"""The CLEVR-style program executor on a hand-made scene graph (no rendering involved)."""

from __future__ import annotations

import pytest

from langground.data.synthetic import (
    answer_program,
    compute_relationships,
    execute_program,
    redundant_nodes,
    run_program,
    without_node,
)
from langground.errors import DataError


def _scene() -> dict:
    # x in pixels (width 300, margin 0.05 -> 15 px), z floor depth (margin 0.45).
    objs = [
        ("small", "red", "rubber", "cube", 40.0, 5.0),
        ("large", "red", "metal", "sphere", 100.0, 6.0),
        ("small", "blue", "rubber", "cube", 160.0, 5.1),
        (
            "large",
            "green",
            "rubber",
            "cylinder",
            170.0,
            8.0,
        ),  # within 15 px of object 2: neither left nor right
        ("small", "blue", "metal", "sphere", 260.0, 7.0),
    ]
    rel = compute_relationships([o[4] for o in objs], [o[5] for o in objs], 300, 0.05, 0.45)
    return {
        "objects": [
            {"size": s, "color": c, "material": m, "shape": sh, "pixel_coords": [x, 0.0, z]}
            for s, c, m, sh, x, z in objs
        ],
        "relationships": rel,
    }


def node(fn: str, inputs: list[int] | None = None, values: list[str] | None = None) -> dict:
    return {"function": fn, "inputs": inputs or [], "value_inputs": values or []}


def test_relationships_follow_clevr_layout_with_margin() -> None:
    rel = _scene()["relationships"]
    assert rel["left"][1] == [0]  # objects left of object 1
    assert 3 not in rel["left"][2] and 3 not in rel["right"][2]  # 10 px apart: inside the margin
    assert 2 not in rel["front"][0] and 2 not in rel["behind"][0]  # depth 0.1 apart
    assert rel["behind"][0] == [1, 3, 4]


def test_filters_unique_relate_and_failure() -> None:
    sc = _scene()
    cubes = [node("scene"), node("filter_shape", [0], ["cube"])]
    assert execute_program(cubes, sc) == [0, 2]
    # "the cube left of the red sphere"
    prog = [
        node("scene"),
        node("filter_color", [0], ["red"]),
        node("filter_shape", [1], ["sphere"]),
        node("unique", [2]),
        node("relate", [3], ["left"]),
        node("filter_shape", [4], ["cube"]),
    ]
    assert execute_program(prog, sc) == [0]
    # "the cube left of the sphere": two spheres -> unique fails -> no objects, and run_program says None
    bad = [
        node("scene"),
        node("filter_shape", [0], ["sphere"]),
        node("unique", [1]),
        node("relate", [2], ["left"]),
    ]
    assert run_program(bad, sc) is None
    assert execute_program(bad, sc) == []


def test_same_attribute_excludes_the_anchor() -> None:
    sc = _scene()
    prog = [
        node("scene"),
        node("filter_size", [0], ["large"]),
        node("filter_shape", [1], ["sphere"]),
        node("unique", [2]),
        node("same_color", [3]),
    ]
    assert execute_program(prog, sc) == [0]


def test_ordinal_needs_a_clear_rank() -> None:
    sc = _scene()
    things = [node("scene")]
    first = things + [node("filter_ordinal", [0], ["1", "left"])]
    assert execute_program(first, sc) == [0]
    assert execute_program(things + [node("filter_ordinal", [0], ["2", "left"])], sc) == [1]
    # objects 2 and 3 are inside the margin of each other: neither is clearly 3rd or 4th from the left
    assert execute_program(things + [node("filter_ordinal", [0], ["3", "left"])], sc) == []
    assert execute_program(things + [node("filter_ordinal", [0], ["4", "left"])], sc) == []
    assert execute_program(things + [node("filter_ordinal", [0], ["1", "right"])], sc) == [4]
    # nearest first ("from the front"): objects 0 and 2 are within the depth margin of each other
    assert execute_program(things + [node("filter_ordinal", [0], ["1", "front"])], sc) == []
    cubes = [node("scene"), node("filter_shape", [0], ["cube"]), node("filter_ordinal", [1], ["2", "left"])]
    assert execute_program(cubes, sc) == [2]


def test_question_answers() -> None:
    sc = _scene()
    count_cubes = [node("scene"), node("filter_shape", [0], ["cube"]), node("count", [1])]
    assert answer_program(count_cubes, sc) == "2"
    exist = [node("scene"), node("filter_color", [0], ["purple"]), node("exist", [1])]
    assert answer_program(exist, sc) == "no"
    query = [
        node("scene"),
        node("filter_color", [0], ["green"]),
        node("unique", [1]),
        node("query_shape", [2]),
    ]
    assert answer_program(query, sc) == "cylinder"
    compare = [
        node("scene"),
        node("filter_shape", [0], ["cube"]),
        node("count", [1]),
        node("scene"),
        node("filter_material", [3], ["metal"]),
        node("count", [4]),
        node("equal_integer", [2, 5]),
    ]
    assert answer_program(compare, sc) == "yes"
    with pytest.raises(DataError, match="answers a question"):
        execute_program(count_cubes, sc)


def test_without_node_and_redundancy() -> None:
    sc = _scene()
    # "the small red rubber cube": small and rubber are redundant ("the red cube" is unique)
    prog = [
        node("scene"),
        node("filter_size", [0], ["small"]),
        node("filter_color", [1], ["red"]),
        node("filter_material", [2], ["rubber"]),
        node("filter_shape", [3], ["cube"]),
    ]
    assert execute_program(prog, sc) == [0]
    assert redundant_nodes(prog, sc) == [1, 3, 4]  # any one of small / rubber / cube can go
    assert execute_program(without_node(prog, 2), sc) == [0, 2]  # drop "red": both small rubber cubes
    # relation clause removal replaces it (and its anchor) by the whole scene
    rel = [
        node("scene"),
        node("filter_color", [0], ["green"]),
        node("unique", [1]),
        node("relate", [2], ["front"]),
        node("filter_shape", [3], ["sphere"]),
    ]
    assert execute_program(rel, sc) == [1, 4]
    dropped = without_node(rel, 3)
    assert [n["function"] for n in dropped] == ["scene", "filter_shape"]
    assert redundant_nodes(rel, sc) == [3]  # both spheres are in front of the green cylinder anyway


@pytest.mark.parametrize(
    "program, message",
    [
        ([], "non-empty list"),
        ([node("scene"), node("frobnicate", [0])], "unknown function 'frobnicate'"),
        ([node("scene"), node("filter_color", [0], ["pink"])], "unknown value 'pink'"),
        ([node("scene"), node("filter_color", [5], ["red"])], "node 1"),
        ([node("scene"), node("relate", [0], ["left"])], "expected one object input"),
        ([node("scene"), node("filter_ordinal", [0], ["0", "left"])], "filter_ordinal"),
    ],
)
def test_bad_programs_raise_one_line_errors(program: list, message: str) -> None:
    with pytest.raises(DataError, match=message):
        run_program(program, _scene())


def test_bad_scene_raises() -> None:
    with pytest.raises(DataError, match="relationships"):
        run_program([node("scene")], {"objects": _scene()["objects"], "relationships": {}})

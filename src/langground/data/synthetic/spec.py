"""The synthetic world's vocabulary, in one place: attribute values, RGB colours, synonyms, relation words.

Everything that names or draws an attribute imports it from here (renderer, expression and question
generators, CLI, loaders that want the label sets). The values are CLEVR's (Johnson et al., 2017).
"""

from __future__ import annotations

# Attribute types in the canonical order used for filter chains ("the small red metal cube").
ATTRIBUTES: tuple[str, ...] = ("size", "color", "material", "shape")

COLORS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
SIZES: tuple[str, ...] = ("small", "large")
MATERIALS: tuple[str, ...] = ("rubber", "metal")

VALUES: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "color": tuple(COLORS),
    "material": MATERIALS,
    "shape": SHAPES,
}

# Object radius in world units (CLEVR: large 0.7, small 0.35); the floor is y = 0.
SIZE_RADIUS: dict[str, float] = {"small": 0.35, "large": 0.7}

# COCO category ids of the shapes (instances.json "categories").
SHAPE_CATEGORY_ID: dict[str, int] = {"cube": 1, "sphere": 2, "cylinder": 3}

# Surface synonyms: the first entry is the canonical word (the program's value), the others are used
# at realisation time with equal probability.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "sphere": ("sphere", "ball"),
    "cube": ("cube", "block"),
    "cylinder": ("cylinder",),
    "metal": ("metal", "shiny"),
    "rubber": ("rubber", "matte"),
    "large": ("large", "big"),
    "small": ("small", "tiny"),
    "thing": ("thing", "object"),
}
PLURALS: dict[str, str] = {
    "sphere": "spheres",
    "ball": "balls",
    "cube": "cubes",
    "block": "blocks",
    "cylinder": "cylinders",
    "thing": "things",
    "object": "objects",
}
NOUN_FOR_NO_SHAPE = "thing"

# Relations as CLEVR defines them: relationships[rel][i] lists the objects j that are `rel` of object i
# ("j is left of i"). `opposite` pairs each relation with the one that makes a statement false.
RELATIONS: tuple[str, ...] = ("left", "right", "front", "behind")
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "front": "behind", "behind": "front"}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left of", "to the left of", "on the left side of"),
    "right": ("right of", "to the right of", "on the right side of"),
    "front": ("in front of",),
    "behind": ("behind",),
}

# Ordinals: value_inputs [k, direction]; direction words say where counting starts.
ORDINAL_WORDS: tuple[str, ...] = ("first", "second", "third", "fourth")
ORDINAL_DIRECTIONS: tuple[str, ...] = ("left", "right", "front", "behind")
ORDINAL_FROM: dict[str, str] = {"left": "left", "right": "right", "front": "front", "behind": "back"}
# "the first X from the left" may also be said as "the leftmost X".
SUPERLATIVES: dict[str, str] = {"left": "leftmost", "right": "rightmost"}

# Attribute names as they appear in same-attribute phrases and questions.
ATTRIBUTE_NOUN: dict[str, str] = {"color": "color", "shape": "shape", "size": "size", "material": "material"}

# CoGenT conditions (CLEVR CoGenT): which colours each shape may take; spheres take any colour.
_COGENT_A = {"cube": ("gray", "blue", "brown", "yellow"), "cylinder": ("red", "green", "purple", "cyan")}
COGENT: dict[str, dict[str, tuple[str, ...]]] = {
    "A": {**_COGENT_A, "sphere": tuple(COLORS)},
    "B": {"cube": _COGENT_A["cylinder"], "cylinder": _COGENT_A["cube"], "sphere": tuple(COLORS)},
}


def allowed_colors(shape: str, condition: str | None) -> tuple[str, ...]:
    """Colours a ``shape`` may take under CoGenT ``condition`` ("A", "B" or None = unconstrained)."""
    if condition is None:
        return tuple(COLORS)
    return COGENT[condition][shape]


def combination_possible(values: dict[str, str], condition: str | None) -> bool:
    """Whether objects with these attribute values can exist under ``condition``."""
    shape, color = values.get("shape"), values.get("color")
    if condition is None or color is None:
        return True
    shapes = (shape,) if shape is not None else SHAPES
    return any(color in COGENT[condition][s] for s in shapes)


def answer_vocabulary() -> list[str]:
    """Every VQA answer string the world can produce (CLEVR style), in a fixed order."""
    words = ["yes", "no"] + [str(i) for i in range(11)]
    for attr in ("color", "shape", "size", "material"):
        words += list(VALUES[attr])
    return words

"""Scene sampling: objects on the floor, visibility constraints, and the scene graph's relations.

Relations follow CLEVR's layout (``relationships[rel][i]`` = objects that are ``rel`` of object ``i``)
but with a margin on what a viewer sees, so that no stored relation is borderline:
- left/right compare the objects' projected centres: j is left of i when ``u_j < u_i - margin_x * W``;
- front/behind compare floor depth (world z, the camera's forward direction on the floor):
  j is behind i when ``z_j > z_i + margin_depth``.
Pairs inside a margin are in neither relation of that axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from langground.data.synthetic.config import SynthConfig
from langground.data.synthetic.geometry import Camera, Sprite, bounding_radius, centre_height, make_sprite
from langground.data.synthetic.spec import ATTRIBUTES, MATERIALS, RELATIONS, SHAPES, SIZES, allowed_colors

# Floor band in which base points are drawn, as fractions of the image height (uniform in pixels, so
# objects spread evenly over the picture and every image third gets its share of referents).
_BASE_V = (0.40, 0.93)
_BASE_U_MARGIN = 0.07
_MIN_GAP = 0.12  # world units between two footprints
_PLACE_TRIES = 40
_SCENE_TRIES = 20


@dataclass
class SceneObject:
    """One object: attributes, pose on the floor and its projection (filled by ``sample_scene``)."""

    shape: str
    color: str
    size: str
    material: str
    x: float
    z: float
    rotation: float
    pixel_coords: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def attrs(self) -> dict[str, str]:
        return {a: getattr(self, a) for a in ATTRIBUTES}

    @property
    def coords_3d(self) -> tuple[float, float, float]:
        return (self.x, centre_height(self.shape, self.size), self.z)


@dataclass
class Scene:
    """A sampled scene: objects, camera, the image size it was laid out for and its relations.

    ``sprites`` caches the silhouettes at ``size`` (same order as ``objects``) for the renderer.
    """

    objects: list[SceneObject]
    camera: Camera
    size: tuple[int, int]
    condition: str | None
    margin_x: float
    margin_depth: float
    relationships: dict[str, list[list[int]]] = field(default_factory=dict)
    sprites: list[Sprite] = field(default_factory=list, repr=False, compare=False)

    def painter_order(self) -> list[int]:
        """Object indices from the furthest to the nearest (draw order)."""
        return sorted(range(len(self.objects)), key=lambda i: -self.objects[i].pixel_coords[2])

    def to_graph(self) -> dict[str, Any]:
        """The scene graph in CLEVR's layout (what programs execute on)."""
        return {
            "objects": [{**o.attrs(), "pixel_coords": list(o.pixel_coords)} for o in self.objects],
            "relationships": self.relationships,
        }


def compute_relationships(
    pixel_x: list[float], depth_z: list[float], width: int, margin_x: float, margin_depth: float
) -> dict[str, list[list[int]]]:
    """CLEVR-layout relations with margins (see the module docstring)."""
    mx = margin_x * width
    n = len(pixel_x)
    rel: dict[str, list[list[int]]] = {r: [] for r in RELATIONS}
    for i in range(n):
        rel["left"].append([j for j in range(n) if j != i and pixel_x[j] < pixel_x[i] - mx])
        rel["right"].append([j for j in range(n) if j != i and pixel_x[j] > pixel_x[i] + mx])
        rel["front"].append([j for j in range(n) if j != i and depth_z[j] < depth_z[i] - margin_depth])
        rel["behind"].append([j for j in range(n) if j != i and depth_z[j] > depth_z[i] + margin_depth])
    return rel


def _jitter_camera(rng: np.random.Generator) -> Camera:
    return Camera(
        height=float(9.0 + rng.uniform(-0.4, 0.4)),
        pitch=float(36.0 + rng.uniform(-1.5, 1.5)),
        hfov=float(42.0 + rng.uniform(-1.0, 1.0)),
    )


def _visible_count(i: int, sprites: list[Sprite], depth: list[float]) -> int:
    """Pixels of sprite i not covered by nearer sprites (painter's order by camera depth)."""
    si = sprites[i]
    covered = np.zeros_like(si.mask)
    x0, y0, x1, y1 = si.box
    for j, sj in enumerate(sprites):
        if j == i or depth[j] >= depth[i] or not si.overlaps(sj):
            continue
        a0, b0, a1, b1 = sj.box
        ox0, oy0, ox1, oy1 = max(x0, a0), max(y0, b0), min(x1, a1), min(y1, b1)
        covered[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] |= sj.mask[oy0 - b0 : oy1 - b0, ox0 - a0 : ox1 - a0]
    return int(np.count_nonzero(si.mask & ~covered))


def _sample_attributes(rng: np.random.Generator, condition: str | None) -> dict[str, str]:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colors = allowed_colors(shape, condition)
    return {
        "shape": shape,
        "color": colors[rng.integers(len(colors))],
        "size": SIZES[rng.integers(len(SIZES))],
        "material": MATERIALS[rng.integers(len(MATERIALS))],
    }


def _try_layout(
    rng: np.random.Generator, n: int, camera: Camera, config: SynthConfig, condition: str | None
) -> tuple[list[SceneObject], list[Sprite], list[float]] | None:
    w, h = config.size
    min_px = config.min_visible_px()
    objects: list[SceneObject] = []
    sprites: list[Sprite] = []
    depth: list[float] = []
    sil_area: list[int] = []
    for _ in range(n):
        for _try in range(_PLACE_TRIES):
            attrs = _sample_attributes(rng, condition)
            u = rng.uniform(_BASE_U_MARGIN * w, (1 - _BASE_U_MARGIN) * w)
            v = rng.uniform(_BASE_V[0] * h, _BASE_V[1] * h)
            x, z = camera.floor_point(u, v, (w, h))
            radius = bounding_radius(attrs["shape"], attrs["size"])
            if any(
                math.hypot(x - o.x, z - o.z) < radius + bounding_radius(o.shape, o.size) + _MIN_GAP
                for o in objects
            ):
                continue
            rot = float(rng.uniform(0.0, 90.0))
            sprite = make_sprite(attrs["shape"], attrs["size"], x, z, rot, camera, (w, h))
            area = int(np.count_nonzero(sprite.mask))
            if not sprite.inside or area < min_px:
                continue
            obj = SceneObject(x=float(x), z=float(z), rotation=rot, **attrs)
            u_c, v_c, d_c = camera.project(np.array(obj.coords_3d), (w, h))
            obj.pixel_coords = (float(u_c), float(v_c), float(d_c))
            cand_sprites, cand_depth = sprites + [sprite], depth + [obj.pixel_coords[2]]
            cand_area = sil_area + [area]
            k = len(cand_sprites) - 1
            affected = [j for j in range(k) if sprite.overlaps(sprites[j])] + [k]
            if all(
                _visible_count(j, cand_sprites, cand_depth)
                >= max(min_px, config.min_visible_fraction * cand_area[j])
                for j in affected
            ):
                objects.append(obj)
                sprites, depth, sil_area = cand_sprites, cand_depth, cand_area
                break
        else:
            return None
    return objects, sprites, depth


def sample_scene(
    rng: np.random.Generator, config: SynthConfig, condition: str | None, split: str = "train"
) -> Scene:
    """Draw a scene: object count, attributes under CoGenT ``condition``, non-overlapping floor positions.

    Every object lies fully inside the image and keeps at least ``config.min_visible_fraction`` of its
    silhouette and ``config.min_visible_px()`` pixels visible behind the objects in front of it.
    ``split`` only selects the object-count range (``testB`` is crowded).
    """
    lo, hi = config.object_range(split)
    n = int(rng.integers(lo, hi + 1))
    camera = _jitter_camera(rng)
    layout = None
    for _ in range(_SCENE_TRIES):
        layout = _try_layout(rng, n, camera, config, condition)
        if layout is not None:
            break
    if layout is None:  # pathological configs (tiny images, 10 objects): keep what fits
        for m in range(n - 1, 0, -1):
            layout = _try_layout(rng, m, camera, config, condition)
            if layout is not None:
                break
    if layout is None:
        raise RuntimeError(f"could not place objects in a {config.size} image")
    objects, sprites, _ = layout
    w = config.size[0]
    rel = compute_relationships(
        [o.pixel_coords[0] for o in objects],
        [o.z for o in objects],
        w,
        config.relation_margin_x,
        config.relation_margin_depth,
    )
    return Scene(
        objects=objects,
        camera=camera,
        size=config.size,
        condition=condition,
        margin_x=config.relation_margin_x,
        margin_depth=config.relation_margin_depth,
        relationships=rel,
        sprites=sprites,
    )

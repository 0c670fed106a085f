"""Camera and per-object silhouettes ("sprites") of the synthetic world.

World frame: x right, y up, z forward along the floor (away from the camera); the floor is y = 0.
The pinhole camera sits at (0, height, 0), has no yaw or roll and looks down by ``pitch`` degrees, so
objects further back project higher in the image and smaller (u = cx + F x_c / z_c, v = cy - F y_c / z_c).

A sprite is an object's rasterised silhouette inside its bounding crop, at pixel centres (x + 0.5), plus
the parts the renderer shades (cube faces with their normals, the sphere disc, the cylinder top and
side). Scene sampling and rendering use the same sprites, so the visible masks are pixel-exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from langground.data.synthetic.spec import SIZE_RADIUS

# Shape proportions relative to the size radius r (CLEVR: r = 0.35 small / 0.7 large).
CUBE_HALF = 0.78  # half side of a cube
CYL_RADIUS = 0.82  # cylinder radius
CYL_HALF_HEIGHT = 0.85  # half of the cylinder's height


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; ``hfov`` in degrees, ``pitch`` (downwards) in degrees, ``height`` in world units."""

    height: float = 9.0
    pitch: float = 36.0
    hfov: float = 42.0

    def __post_init__(self) -> None:
        t = math.radians(self.pitch)
        # World-frame right, up and forward axes, as rows of the world -> camera rotation.
        rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), math.sin(t)], [0.0, -math.sin(t), math.cos(t)]])
        object.__setattr__(self, "_rot", rot)
        object.__setattr__(self, "_tan", math.tan(math.radians(self.hfov) / 2.0))

    def focal(self, width: int) -> float:
        return (width / 2.0) / self._tan  # type: ignore[attr-defined]

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World-frame right, up and forward axes of the camera."""
        rot = self._rot  # type: ignore[attr-defined]
        return rot[0], rot[1], rot[2]

    @property
    def position(self) -> np.ndarray:
        return np.array([0.0, self.height, 0.0])

    def to_camera(self, p: np.ndarray) -> np.ndarray:
        """World points ``(..., 3)`` -> camera coordinates ``(..., 3)`` (x right, y up, z depth)."""
        d = np.asarray(p, float) - (0.0, self.height, 0.0)
        return d @ self._rot.T  # type: ignore[attr-defined]

    def project(self, p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """World points ``(..., 3)`` -> ``(..., 3)`` of pixel u, v and camera depth."""
        w, h = size
        fc = self.focal(w)
        c = self.to_camera(p)
        z = c[..., 2]
        return np.stack([w / 2.0 + fc * c[..., 0] / z, h / 2.0 - fc * c[..., 1] / z, z], axis=-1)

    def floor_point(self, u: float, v: float, size: tuple[int, int]) -> tuple[float, float]:
        """Back-project pixel (u, v) onto the floor: world (x, z)."""
        w, h = size
        fc = self.focal(w)
        r, up, f = self.basis()
        d = r * ((u - w / 2.0) / fc) + up * (-(v - h / 2.0) / fc) + f
        if d[1] >= 0:
            raise ValueError(f"pixel ({u}, {v}) looks above the horizon")
        t = -self.height / d[1]
        return float(t * d[0]), float(t * d[2])


@dataclass
class Sprite:
    """An object's silhouette in crop ``[y0:y0+h, x0:x0+w]`` and the parts the renderer shades.

    ``parts`` is a list of ``(kind, mask, data)``: ``("flat", mask, normal_world)`` for a planar face,
    ``("sphere", mask, (cx, cy, radius))`` in crop pixels, ``("cyl_side", mask, (cx, half_width))``.
    ``inside`` is False when the silhouette was clipped by the image border.
    """

    x0: int
    y0: int
    mask: np.ndarray
    parts: list[tuple[str, np.ndarray, Any]] = field(default_factory=list)
    inside: bool = True

    @property
    def box(self) -> tuple[int, int, int, int]:
        h, w = self.mask.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    def overlaps(self, other: Sprite) -> bool:
        a, b = self.box, other.box
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def bounding_radius(shape: str, size: str) -> float:
    """Radius of the object's footprint on the floor (for the minimum distance between objects)."""
    r = SIZE_RADIUS[size]
    if shape == "cube":
        return CUBE_HALF * r * math.sqrt(2.0)
    if shape == "cylinder":
        return CYL_RADIUS * r
    return r


def centre_height(shape: str, size: str) -> float:
    r = SIZE_RADIUS[size]
    return {"cube": CUBE_HALF * r, "cylinder": CYL_HALF_HEIGHT * r, "sphere": r}[shape]


class _Crop:
    """Pixel-centre grids of a clipped crop box."""

    def __init__(self, x0f: float, y0f: float, x1f: float, y1f: float, size: tuple[int, int]) -> None:
        w, h = size
        self.inside = x0f >= 0.5 and y0f >= 0.5 and x1f <= w - 0.5 and y1f <= h - 0.5
        self.x0 = max(0, int(math.floor(x0f)))
        self.y0 = max(0, int(math.floor(y0f)))
        self.x1 = min(w, int(math.ceil(x1f)) + 1)
        self.y1 = min(h, int(math.ceil(y1f)) + 1)
        self.empty = self.x1 <= self.x0 or self.y1 <= self.y0
        self.xs = np.arange(self.x0, max(self.x1, self.x0 + 1), dtype=np.float32)[None, :] + 0.5
        self.ys = np.arange(self.y0, max(self.y1, self.y0 + 1), dtype=np.float32)[:, None] + 0.5

    def convex(self, pts: np.ndarray) -> np.ndarray:
        """Pixels whose centre is inside the convex polygon ``pts`` ``(K, 2)`` (boundary included)."""
        a = np.asarray(pts, np.float32)
        b = np.roll(a, -1, axis=0)
        if float(np.sum(a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1])) < 0:
            a, b = b[::-1], a[::-1]  # make the polygon counter-clockwise in (x, y-down) coordinates
        ex, ey = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
        ax, ay = a[:, 0, None, None], a[:, 1, None, None]
        return ((ex * (self.ys[None] - ay) - ey * (self.xs[None] - ax)) >= -1e-6).all(axis=0)

    def ellipse(self, cx: float, cy: float, a: float, b: float) -> np.ndarray:
        return ((self.xs - cx) / a) ** 2 + ((self.ys - cy) / b) ** 2 <= 1.0


def _circle(camera: Camera, centre: np.ndarray, radius: float, size: tuple[int, int]) -> tuple[float, ...]:
    """Projection of a horizontal circle as an axis-aligned ellipse: (u, v, semi-axis a, semi-axis b)."""
    u, v, z = camera.project(centre, size)
    a = camera.focal(size[0]) * radius / z
    d = camera.position - centre
    b = a * abs(d[1]) / float(np.linalg.norm(d))  # foreshortened by the sine of the viewing elevation
    return float(u), float(v), float(a), float(b)


def make_sprite(
    shape: str, size: str, x: float, z: float, rotation: float, camera: Camera, image_size: tuple[int, int]
) -> Sprite:
    """Rasterise one object standing on the floor at (x, z), rotated by ``rotation`` degrees about y."""
    r = SIZE_RADIUS[size]
    if shape == "cube":
        return _cube(x, z, CUBE_HALF * r, rotation, camera, image_size)
    if shape == "sphere":
        return _sphere(x, z, r, camera, image_size)
    if shape == "cylinder":
        return _cylinder(x, z, CYL_RADIUS * r, CYL_HALF_HEIGHT * r, camera, image_size)
    raise ValueError(f"unknown shape {shape!r}")


def _cube(x: float, z: float, a: float, rot: float, cam: Camera, size: tuple[int, int]) -> Sprite:
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    corners = []
    for dy in (0.0, 2 * a):
        for lx, lz in ((-a, -a), (a, -a), (a, a), (-a, a)):
            corners.append((x + c * lx - s * lz, dy, z + s * lx + c * lz))
    pts3 = np.array(corners)  # 0-3 bottom, 4-7 top (same order)
    proj = cam.project(pts3, size)
    uv = proj[:, :2]
    faces = [
        ((4, 5, 6, 7), np.array([0.0, 1.0, 0.0])),
        ((0, 1, 5, 4), np.array([s, 0.0, -c])),
        ((1, 2, 6, 5), np.array([c, 0.0, s])),
        ((2, 3, 7, 6), np.array([-s, 0.0, c])),
        ((3, 0, 4, 7), np.array([-c, 0.0, -s])),
    ]
    crop = _Crop(uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max(), size)
    mask = np.zeros((crop.ys.shape[0], crop.xs.shape[1]), bool)
    parts: list[tuple[str, np.ndarray, Any]] = []
    if not crop.empty:
        for idx, normal in faces:
            centre = pts3[list(idx)].mean(axis=0)
            if float(normal @ (cam.position - centre)) <= 1e-9:
                continue  # back face
            m = crop.convex(uv[list(idx)])
            m &= ~mask  # shared edges belong to the first face drawn
            mask |= m
            parts.append(("flat", m, normal))
    return Sprite(crop.x0, crop.y0, mask, parts, crop.inside and not crop.empty)


def _sphere(x: float, z: float, r: float, cam: Camera, size: tuple[int, int]) -> Sprite:
    u, v, depth = cam.project(np.array([x, r, z]), size)
    rad = float(cam.focal(size[0]) * r / depth)
    crop = _Crop(u - rad, v - rad, u + rad, v + rad, size)
    mask = crop.ellipse(u, v, rad, rad)
    parts = [("sphere", mask, (float(u) - crop.x0, float(v) - crop.y0, rad))]
    return Sprite(crop.x0, crop.y0, mask, parts, crop.inside and not crop.empty)


def _cylinder(x: float, z: float, r: float, hh: float, cam: Camera, size: tuple[int, int]) -> Sprite:
    ub, vb, ab, bb = _circle(cam, np.array([x, 0.0, z]), r, size)
    ut, vt, at, bt = _circle(cam, np.array([x, 2 * hh, z]), r, size)
    crop = _Crop(min(ub - ab, ut - at), vt - bt, max(ub + ab, ut + at), vb + bb, size)
    top = crop.ellipse(ut, vt, at, bt)
    body = crop.ellipse(ub, vb, ab, bb) | crop.convex(
        np.array([(ub - ab, vb), (ub + ab, vb), (ut + at, vt), (ut - at, vt)])
    )
    side = body & ~top
    mask = body | top
    # Horizontal axis position and half width of the side, interpolated between bottom and top rows.
    parts = [
        ("flat", top, np.array([0.0, 1.0, 0.0])),
        ("cyl_side", side, (ub - crop.x0, ut - crop.x0, vb - crop.y0, vt - crop.y0, ab, at)),
    ]
    return Sprite(crop.x0, crop.y0, mask, parts, crop.inside and not crop.empty)

"""Renderer: shaded floor with soft shadows, then objects in painter's order (far to near).

Shading is per pixel from the sprite's parts: Lambert diffuse + ambient for rubber (matte, a faint soft
highlight), and for metal a darker diffuse, a reflection of a bright sky / dark floor and a sharp
Blinn-Phong highlight (flat metal faces get a glossy sheen band instead, their normal being constant).
Lighting jitter changes the light direction, ambient level and intensity and the floor's brightness,
gradient and spotlight, never hue: colours are labels. Visible masks come from the same painter's pass
(an id buffer), so they are exactly the pixels that show each object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from langground.data.synthetic.geometry import Sprite, bounding_radius, make_sprite
from langground.data.synthetic.scene import Scene
from langground.data.synthetic.spec import COLORS


class Rendered(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool visible masks, in scene object order


@dataclass(frozen=True)
class Lighting:
    light: np.ndarray  # unit vector towards the light, world frame
    ambient: float
    intensity: float
    floor: float  # floor grey level 0..255
    tilt: float  # vertical brightness gradient of the floor
    spot: tuple[float, float, float]  # spotlight centre (fractions of w, h) and strength


def sample_lighting(rng: np.random.Generator) -> Lighting:
    lx, ly, lz = rng.uniform(-0.75, -0.3), rng.uniform(0.75, 1.0), rng.uniform(-0.6, -0.15)
    if rng.random() < 0.5:  # light from the left or the right: no side is always the lit one
        lx = -lx
    light = np.array([lx, ly, lz])
    return Lighting(
        light=light / np.linalg.norm(light),
        ambient=float(rng.uniform(0.22, 0.32)),
        intensity=float(rng.uniform(0.85, 1.05)),
        floor=float(rng.uniform(150.0, 185.0)),
        tilt=float(rng.uniform(-0.12, 0.12)),
        spot=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.05, 0.15))),
    )


def _floor(size: tuple[int, int], lit: Lighting) -> np.ndarray:
    """Grey level of the floor ``(H, W)`` float32: brightness, vertical gradient, soft spotlight."""
    w, h = size
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    sx, sy, strength = lit.spot
    gy = (1.0 + lit.tilt * (ys - 0.5)) * lit.floor
    spot = np.outer(gy * np.exp(-((ys - sy) ** 2) / 0.08), strength * np.exp(-((xs - sx) ** 2) / 0.12))
    return (spot + gy[:, None]).astype(np.float32)


def _shadow(floor: np.ndarray, scene: Scene, size: tuple[int, int], lit: Lighting) -> None:
    """Darken the floor under and away from each object (soft elliptic blob on the floor)."""
    cam = scene.camera
    w, h = size
    d = np.array([-lit.light[0], -lit.light[2]])
    d /= max(np.linalg.norm(d), 1e-6)
    for o in scene.objects:
        rad = bounding_radius(o.shape, o.size)
        cx, cz = o.x + d[0] * rad * 0.6, o.z + d[1] * rad * 0.6
        u, v, depth = cam.project(np.array([cx, 0.0, cz]), size)
        a = cam.focal(w) * rad * 1.25 / depth
        b = a * cam.height / math.hypot(cx, cam.height, cz)  # foreshortening: sine of the view elevation
        x0, x1 = max(0, int(u - a) - 1), min(w, int(u + a) + 2)
        y0, y1 = max(0, int(v - b) - 1), min(h, int(v + b) + 2)
        if x1 <= x0 or y1 <= y0:
            continue
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - u) / a
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - v) / b
        r2 = xs[None, :] ** 2 + ys[:, None] ** 2
        floor[y0:y1, x0:x1] *= 1.0 - 0.45 * np.clip(1.0 - r2, 0.0, 1.0) ** 0.8


class _Light:
    """Dot products of the camera axes with the light and half vectors (the shading's constants)."""

    def __init__(self, scene: Scene, lit: Lighting) -> None:
        right, up, fwd = scene.camera.basis()
        self.view = -fwd  # towards the camera
        half = lit.light + self.view
        half = half / np.linalg.norm(half)
        self.axes = (right, up, self.view)
        self.l = tuple(float(a @ lit.light) for a in self.axes)
        self.h = tuple(float(a @ half) for a in self.axes)
        self.y = tuple(float(a[1]) for a in self.axes)
        self.half = half


def _shade(sprite: Sprite, color: str, material: str, lt: _Light, lit: Lighting) -> np.ndarray:
    """Colour of every crop pixel of the sprite ``(h, w, 3)`` float32 (only mask pixels matter)."""
    albedo = np.array(COLORS[color], np.float32)
    hh, ww = sprite.mask.shape
    out = np.zeros((hh, ww, 3), np.float32)
    metal = material == "metal"
    ys = np.arange(hh, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(ww, dtype=np.float32)[None, :] + 0.5
    for kind, m, data in sprite.parts:
        if not m.any():
            continue
        if kind == "flat":
            diff = max(0.0, float(np.asarray(data) @ lit.light))
            if metal:
                # Constant normal: fake the environment reflection with a glossy band across the face.
                yy, xx = np.nonzero(m)
                t = ((ys - yy.min()) / max(1, np.ptp(yy)) + (xs - xx.min()) / max(1, np.ptp(xx))) * 0.5
                sheen = np.exp(-(((t - 0.35) / 0.16) ** 2)) * (140.0 * lit.intensity)
                shade = ((0.22 + 0.55 * diff + (0.15 if data[1] > 0.5 else 0.0)) * lit.intensity) * (
                    1.1 - 0.35 * t
                )
                px = albedo * shade[..., None] + sheen[..., None]
                out[m] = px[m]
            else:
                out[m] = albedo * ((lit.ambient + (1 - lit.ambient) * diff) * lit.intensity)
            continue
        if kind == "sphere":
            cx, cy, rad = data
            n0 = (xs - cx) / rad  # along the camera's right axis
            n1 = -(ys - cy) / rad  # along its up axis
            n2 = np.sqrt(np.clip(1.0 - n0 * n0 - n1 * n1, 0.0, 1.0))  # towards the camera
            nl = n0 * lt.l[0] + n1 * lt.l[1] + n2 * lt.l[2]
            nh = n0 * lt.h[0] + n1 * lt.h[1] + n2 * lt.h[2]
            nv, ny = n2, n0 * lt.y[0] + n1 * lt.y[1] + n2 * lt.y[2]
        else:  # cylinder side: horizontal normal from the pixel's position across the side
            ub, ut, vb, vt, ab, at = data
            f = np.clip((ys - vb) / (vt - vb if abs(vt - vb) > 1e-6 else 1.0), 0.0, 1.0)
            t = np.clip((xs - (ub + (ut - ub) * f)) / (ab + (at - ab) * f), -1.0, 1.0)
            tz = -np.sqrt(1.0 - t * t)  # world normal (t, 0, tz), facing the camera
            nl = t * lit.light[0] + tz * lit.light[2]
            nh = t * lt.half[0] + tz * lt.half[2]
            nv, ny = t * lt.view[0] + tz * lt.view[2], 0.0
        diff = np.clip(nl, 0.0, None)
        nh = np.clip(nh, 0.0, None)
        if metal:
            refl_y = 2.0 * nv * ny - lt.view[1]  # height of the reflected view ray: sky above, floor below
            env = np.where(refl_y > 0, 0.55 + 0.45 * refl_y, 0.18)
            shade = (0.15 + 0.45 * diff + 0.55 * env) * lit.intensity
            spec = (255.0 * lit.intensity) * nh**60
        else:
            shade = (lit.ambient + (1 - lit.ambient) * diff) * lit.intensity
            spec = (28.0 * lit.intensity) * nh**6
        px = albedo * shade[..., None] + spec[..., None]
        out[m] = px[m]
    return out


def render_scene(
    scene: Scene, size: tuple[int, int] | None = None, rng: np.random.Generator | None = None
) -> Rendered:
    """Draw ``scene`` at ``size`` (default: the size it was sampled for) with lighting drawn from ``rng``.

    Returns the RGB image and the visible mask of every object (silhouette minus nearer objects).
    """
    size = tuple(scene.size if size is None else size)  # type: ignore[assignment]
    rng = np.random.default_rng(0) if rng is None else rng
    w, h = size
    if tuple(scene.size) == size and len(scene.sprites) == len(scene.objects):
        sprites = scene.sprites
    else:
        sprites = [
            make_sprite(o.shape, o.size, o.x, o.z, o.rotation, scene.camera, size) for o in scene.objects
        ]
    lit = sample_lighting(rng)
    floor = _floor(size, lit)
    _shadow(floor, scene, size, lit)
    img = np.repeat(np.clip(floor + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    label = np.full((h, w), -1, np.int16)
    lt = _Light(scene, lit)
    for i in scene.painter_order():
        sp, o = sprites[i], scene.objects[i]
        x0, y0, x1, y1 = sp.box
        x1, y1 = min(x1, w), min(y1, h)
        m = sp.mask[: y1 - y0, : x1 - x0]
        if not m.any():
            continue
        colour = _shade(sp, o.color, o.material, lt, lit)[: y1 - y0, : x1 - x0]
        img[y0:y1, x0:x1][m] = np.clip(colour[m] + 0.5, 0, 255).astype(np.uint8)
        label[y0:y1, x0:x1][m] = i
    masks = label[None, :, :] == np.arange(len(scene.objects), dtype=np.int16)[:, None, None]
    return Rendered(img, masks)

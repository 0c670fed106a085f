"""Scene sampling and rendering: visibility, perspective, materials, determinism; and the synth CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from langground.cli.synth_cmd import synth
from langground.data.synthetic import (
    SynthConfig,
    generate_expressions,
    generate_questions,
    render_scene,
    sample_scene,
)
from langground.data.synthetic.geometry import make_sprite
from langground.data.synthetic.spec import COGENT

CFG = SynthConfig(images=1, size=(160, 120))


def _scenes(n: int = 8, cfg: SynthConfig = CFG, condition: str | None = "A"):
    for i in range(n):
        rng = np.random.default_rng(i)
        yield sample_scene(rng, cfg, condition, "testB" if i % 2 else "train"), rng


def test_every_object_keeps_its_minimum_visible_area() -> None:
    for scene, rng in _scenes():
        masks = render_scene(scene, None, rng).masks
        assert masks.shape == (len(scene.objects), 120, 160)
        assert not (masks.sum(axis=0) > 1).any()  # visible masks are disjoint
        for sprite, m in zip(scene.sprites, masks, strict=True):
            sil = int(sprite.mask.sum())
            vis = int(m.sum())
            assert vis >= CFG.min_visible_fraction * sil and vis >= CFG.min_visible_px()
            x0, y0, x1, y1 = sprite.box
            # visible mask = silhouette minus what is in front: never outside the silhouette
            assert not m[:, :x0].any() and not m[:y0].any() and not m[:, x1:].any() and not m[y1:].any()
            assert not (m[y0:y1, x0:x1] & ~sprite.mask).any()


def test_perspective_further_is_higher_and_smaller() -> None:
    cam = next(_scenes(1))[0].camera
    near = make_sprite("sphere", "large", 0.0, 9.0, 0.0, cam, (320, 240))
    far = make_sprite("sphere", "large", 0.0, 14.0, 0.0, cam, (320, 240))
    assert far.mask.sum() < 0.7 * near.mask.sum()
    assert far.box[3] < near.box[3]  # bottom edge higher in the image
    cube = make_sprite("cube", "large", 0.0, 10.0, 30.0, cam, (320, 240))
    assert sum(1 for kind, m, n in cube.parts if kind == "flat" and n[1] > 0.5 and m.any()) == 1  # top face
    cyl = make_sprite("cylinder", "large", 0.0, 10.0, 0.0, cam, (320, 240))
    top = cyl.parts[0][1]
    assert top.any() and top.sum() < 0.5 * cyl.mask.sum()  # an elliptic top, flattened by the view


def test_materials_and_colours_are_visible() -> None:
    cam = next(_scenes(1))[0].camera
    from langground.data.synthetic.scene import Scene, SceneObject

    def one(material: str, color: str) -> np.ndarray:
        obj = SceneObject("sphere", color, "large", material, 0.0, 10.0, 0.0)
        sc = Scene(
            [obj], cam, (320, 240), None, 0.05, 0.45, {r: [[]] for r in ("left", "right", "front", "behind")}
        )
        obj.pixel_coords = tuple(cam.project(np.array(obj.coords_3d), (320, 240)))
        r = render_scene(sc, None, np.random.default_rng(0))
        return r.image[r.masks[0]].astype(float)

    metal, rubber = one("metal", "red"), one("rubber", "red")
    assert metal.max(axis=0).min() > 230  # a white specular highlight
    assert rubber.max(axis=0).min() < 200  # matte: no white highlight
    for color, rgb in [("red", (173, 35, 35)), ("blue", (42, 75, 215)), ("green", (29, 105, 20))]:
        px = one("rubber", color)
        assert int(np.argmax(px.mean(axis=0))) == int(np.argmax(rgb))  # hue is kept under lighting


def test_sampling_and_rendering_are_pure_functions_of_the_rng() -> None:
    a, ra = next(_scenes(1))
    b, rb = next(_scenes(1))
    assert [o.attrs() for o in a.objects] == [o.attrs() for o in b.objects]
    assert np.array_equal(render_scene(a, None, ra).image, render_scene(b, None, rb).image)
    big = render_scene(a, (320, 240), np.random.default_rng(1))  # another size re-rasterises the sprites
    assert big.image.shape == (240, 320, 3) and big.masks.shape[1:] == (240, 320)


def test_condition_constrains_colours() -> None:
    for cond in ("A", "B"):
        for scene, _ in _scenes(6, condition=cond):
            assert all(o.color in COGENT[cond][o.shape] for o in scene.objects)


def test_generators_meet_the_per_image_bar() -> None:
    n_expr = n_q = 0
    for scene, rng in _scenes(10, SynthConfig(images=1)):
        exprs = generate_expressions(scene, rng, SynthConfig(images=1))
        n_expr += len(exprs)
        assert len({e.text for e in exprs}) == len(exprs)
        n_q += len(generate_questions(scene, rng, SynthConfig(images=1)))
    assert n_expr / 10 >= 5 and n_q / 10 >= 3


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(synth)
    return app


def test_cli_writes_a_world_and_prints_a_summary(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        _app(), ["--out", str(tmp_path / "w"), "--images", "4", "--size", "160x120", "-j", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "expressions/image" in res.output and "train" in res.output
    manifest = json.loads((tmp_path / "w" / "dataset.json").read_text())
    assert manifest["config"]["size"] == [160, 120] and manifest["config"]["images"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "160"], "WIDTHxHEIGHT"),
        (["--images", "0"], "images"),
        (["--no-target-rate", "1.5"], "no_target_rate"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(_app(), ["--out", str(tmp_path / "w"), *args])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    res = CliRunner().invoke(_app(), ["--out", str(tmp_path), "--images", "2"])
    assert res.exit_code == 2 and "not empty" in res.output

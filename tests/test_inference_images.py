"""Image inputs of every kind -> upright 8-bit RGB; unreadable files and bad expressions -> one-line errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from langground.errors import LanggroundError
from langground.inference.images import TruncationWarning, check_expressions, load_image


def rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def test_rgb_passes_through_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_array_equal(rgb(load_image(tmp_path / "a.png")), arr)
    np.testing.assert_array_equal(rgb(load_image(str(tmp_path / "a.png"))), arr)
    np.testing.assert_array_equal(rgb(load_image(Image.fromarray(arr))), arr)
    np.testing.assert_array_equal(rgb(load_image(arr)), arr)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[0, 0, 3] = 0  # transparent -> white
    arr[0, 1, 3] = 255  # opaque -> red
    arr[0, 2, 3] = 128  # half -> pink
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = rgb(load_image(tmp_path / "a.png"))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    assert out[0, 2, 0] == 255 and 120 <= out[0, 2, 1] <= 135


def test_grayscale_and_la(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = rgb(load_image(tmp_path / "g.png"))
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    la = Image.fromarray(grey).convert("LA")
    la.putalpha(0)
    assert (rgb(load_image(la)) == 255).all()


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (5, 5), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb(load_image(tmp_path / "p.png"))[2, 2], [10, 200, 30])
    pal.info["transparency"] = 1
    pal.save(tmp_path / "pt.png", transparency=1)
    np.testing.assert_array_equal(rgb(load_image(tmp_path / "pt.png"))[2, 2], [255, 255, 255])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = rgb(load_image(tmp_path / "d.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 128])
    np.testing.assert_array_equal(rgb(load_image(values))[0, :, 1], [0, 100, 255, 128])
    rgb16 = np.stack([values] * 3, axis=-1)
    np.testing.assert_array_equal(rgb(load_image(rgb16))[0, :, 2], [0, 100, 255, 128])


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # stored landscape 40 wide, 20 high
    arr[:10, :10] = (255, 0, 0)  # red block top-left as stored
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation 6: the viewer rotates 90 degrees clockwise
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = rgb(load_image(tmp_path / "r.jpg"))
    assert out.shape == (40, 20, 3)  # upright: portrait
    # rotating clockwise moves the top-left corner to the top-right
    assert out[2, 17, 0] > 200 and out[2, 17, 1] < 60
    assert out[2, 2, 0] < 60


def test_arrays_and_tensors():
    chw = np.full((3, 5, 6), 0.5, np.float32)
    assert rgb(load_image(chw)).shape == (5, 6, 3)
    assert rgb(load_image(chw))[0, 0, 0] == 128
    assert (rgb(load_image(np.ones((2, 3), bool))) == 255).all()
    t = torch.zeros((3, 4, 5), dtype=torch.uint8)
    assert rgb(load_image(t)).shape == (4, 5, 3)
    assert rgb(load_image(np.zeros((4, 5, 1), np.uint8))).shape == (4, 5, 3)
    with pytest.raises(LanggroundError, match="shape"):
        load_image(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(LanggroundError, match="expected a path"):
        load_image(42)


def test_large_and_tiny_images():
    assert load_image(np.zeros((1, 1, 3), np.uint8)).size == (1, 1)
    assert load_image(np.zeros((3000, 17, 3), np.uint8)).size == (17, 3000)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text("hello, not an image"), "not an image file"),
        (lambda p: p.write_bytes(b""), "not an image file"),
        (lambda p: None, "not found"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_unreadable_files_name_the_path(tmp_path, make, message):
    path = tmp_path / "photo.png"
    make(path)
    with pytest.raises(LanggroundError, match=message) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_image_names_the_path(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(LanggroundError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("text", ["", "   ", "\t\n", "?!", "..."])
def test_empty_expressions_are_refused(text):
    with pytest.raises(LanggroundError, match="expression 1"):
        check_expressions(["the red cube", text], max_length=10)


def test_long_expressions_warn_once_per_call():
    long = " ".join(["big"] * 30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_expressions([long, long, "a cube"], max_length=20) == [long, long, "a cube"]
    assert len(caught) == 1 and issubclass(caught[0].category, TruncationWarning)
    assert "2 expression(s)" in str(caught[0].message) and "20 words" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_expressions(["a cube"], max_length=20)

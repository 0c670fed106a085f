"""Image inputs of every kind -> upright 8-bit RGB; unreadable files and bad expressions -> one-line errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from langground.errors import LanggroundError
from langground.inference.images import LargeImageWarning, TruncationWarning, check_expressions, load_image


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


def write_blank_png(path, width: int, height: int) -> None:
    """A valid all-black 1-bit PNG of any size, written row by row: 20000x20000 is ~50 kB on disk."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_one_line_error(tmp_path, monkeypatch):
    """20000x20000 = 4e8 pixels is over twice PIL's limit: our message, not PIL's DecompressionBombError."""
    path = tmp_path / "huge.png"
    write_blank_png(path, 20000, 20000)
    assert path.stat().st_size < 200_000
    with monkeypatch.context() as m:  # a real PNG of that size: PIL opens it without its guard
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as im:
            assert im.size == (20000, 20000) and im.mode == "1"
    limit = 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(LanggroundError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: image has 400,000,000 pixels, more than the limit of {limit:,}")
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message and "\n" not in message


def test_large_image_warns_in_one_line(tmp_path, monkeypatch):
    """Above PIL's warning limit (a 10000x10000 photo at the default limit; a 60x50 image under a 2000-pixel
    limit here, which takes the same path without decoding 1e8 pixels): our one-line warning, not PIL's."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    Image.fromarray(np.full((50, 60, 3), 9, np.uint8)).save(tmp_path / "big.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = load_image(tmp_path / "big.jpg")
    assert img.size == (60, 50)
    assert [w.category for w in caught] == [LargeImageWarning]
    message = str(caught[0].message)
    assert (
        message.startswith(f"{tmp_path / 'big.jpg'}: large image (60x50 = 3,000 pixels")
        and "2,000" in message
    )
    Image.fromarray(np.zeros((80, 60, 3), np.uint8)).save(tmp_path / "bigger.png")  # 4800 > 2 x 2000
    with pytest.raises(LanggroundError, match="image has 4,800 pixels, more than the limit of 4,000"):
        load_image(tmp_path / "bigger.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under the limit: silent
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
        load_image(tmp_path / "big.jpg")

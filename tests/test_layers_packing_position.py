import math

import pytest
import torch

from langground.layers import PositionEmbeddingSine2d, pixel_pack, pixel_unpack


@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_pack_concatenates_local_neighbourhoods_and_recovers(s):
    x = torch.randn(2, 3, 16, 24)
    packed, size = pixel_pack(x, s)
    assert packed.shape == (2, 3 * s * s, 16 // s, 24 // s)
    # token (i, j) holds exactly the s x s block of every channel
    i, j = 1, 2
    block = x[:, :, i * s : (i + 1) * s, j * s : (j + 1) * s].reshape(2, -1)
    assert torch.equal(packed[:, :, i, j], block)
    assert torch.equal(pixel_unpack(packed, s, size), x)


def test_pack_pads_sizes_that_are_not_multiples():
    x = torch.randn(1, 2, 10, 13)
    packed, size = pixel_pack(x, 4)
    assert packed.shape == (1, 32, 3, 4)
    assert size == (10, 13)
    assert torch.equal(pixel_unpack(packed, 4, size), x)


def test_position_embedding_shape_range_and_uniqueness():
    pe = PositionEmbeddingSine2d(64)
    pos = pe(6, 9, torch.device("cpu"), torch.float32)
    assert pos.shape == (1, 64, 6, 9)
    assert pos.abs().max() <= 1.0
    flat = pos[0].flatten(1).T  # (54, 64)
    assert torch.cdist(flat, flat).add(torch.eye(54) * 10).min() > 1e-3  # every position is distinct
    # y half depends only on rows, x half only on columns
    assert torch.allclose(pos[0, :32, :, 0:1].expand(-1, -1, 9), pos[0, :32])
    assert torch.allclose(pos[0, 32:, 0:1, :].expand(-1, 6, -1), pos[0, 32:])


def test_position_embedding_rejects_bad_dim():
    with pytest.raises(ValueError, match="multiple of 4"):
        PositionEmbeddingSine2d(30)


def test_position_embedding_is_sine_cosine_of_normalised_coordinates():
    pos = PositionEmbeddingSine2d(16)(4, 8, torch.device("cpu"), torch.float32)[0]
    y = (torch.arange(4) + 0.5) / 4 * 2 * math.pi
    x = (torch.arange(8) + 0.5) / 8 * 2 * math.pi
    # first half: y; channel pairs (sin, cos) at frequency temperature^(2i/half), i = 0, 1, ...
    assert torch.allclose(pos[0, :, 0], torch.sin(y), atol=1e-6)
    assert torch.allclose(pos[1, :, 0], torch.cos(y), atol=1e-6)
    assert torch.allclose(pos[2, :, 0], torch.sin(y / 10000 ** (2 / 8)), atol=1e-6)
    assert torch.allclose(pos[8, 0], torch.sin(x), atol=1e-6)
    assert torch.allclose(pos[9, 0], torch.cos(x), atol=1e-6)

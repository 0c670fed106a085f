"""Transforms keep image, boxes, masks and text consistent; letterbox inverts exactly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from langground.data.collate import GroundingCollator
from langground.data.torch_dataset import GroundingTorchDataset
from langground.data.transforms import (
    Letterbox,
    ReferentSafeRandomCrop,
    TextAwareHorizontalFlip,
    TransformConfig,
    build_transforms,
    letterbox_params,
    preprocess_image,
    swap_left_right,
)
from langground.errors import DataError
from langground.text import Vocabulary
from langground.types import GroundingRecord


def _sample(h=240, w=320, box=(50, 100, 120, 150)):
    image = torch.zeros((3, h, w), dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[0, y0:y1, x0:x1] = 255  # the referent is the only red patch
    mask = torch.zeros((1, h, w), dtype=torch.uint8)
    mask[0, y0:y1, x0:x1] = 1
    return {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(h, w)
        ),
        "mask": tv_tensors.Mask(mask),
        "text": "the red block left of the ball",
    }


def _extent(mask2d: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask2d, as_tuple=True)
    return xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1


def test_swap_left_right_keeps_case_and_other_words():
    assert swap_left_right("Left of the rightmost ball, RIGHT") == "Right of the leftmost ball, LEFT"
    assert swap_left_right("the bright cube") == "the bright cube"  # 'bright' contains 'right'


@pytest.mark.parametrize(("h", "w"), [(240, 320), (320, 240), (100, 100), (37, 511)])
def test_letterbox_inverse_maps_box_back(h, w):
    sample = _sample(h, w, box=(5, 7, min(w, 30), min(h, 31)))
    out = Letterbox(128)(sample)
    assert out["image"].shape == (3, 128, 128)
    scale, pad_x, pad_y = out["letterbox"]
    _, new_h, new_w, _, _ = letterbox_params(h, w, 128)
    orig = sample["boxes"].as_subclass(torch.Tensor)
    back = (out["boxes"].as_subclass(torch.Tensor) - torch.tensor([pad_x, pad_y, pad_x, pad_y])) / scale
    # The resize scales x by new_w / w and y by new_h / h; the inverse divides by `scale` (exact on the long
    # side): a coordinate v on the short side comes back as v * new / (side * scale), nothing else
    # (measured: 1e-5 px of float error; the rounding itself moves (37, 511) by up to 0.9 px).
    exact = orig * torch.tensor([new_w / (w * scale), new_h / (h * scale)] * 2)
    assert torch.allclose(back, exact, atol=1e-3), (back - exact).abs().max()
    assert (back - orig).abs().max() <= max(abs(new_h - h * scale), abs(new_w - w * scale)) / scale + 1e-3
    # The mask moves with the box: its edges lie on the nearest-neighbour grid, < 1 canvas px from the
    # box's (measured at most 0.75).
    x0, y0, x1, y1 = _extent(out["mask"][0])
    bx = out["boxes"][0].tolist()
    assert max(abs(x0 - bx[0]), abs(x1 - bx[2]), abs(y0 - bx[1]), abs(y1 - bx[3])) < 1.0


def test_letterbox_params_rejects_empty_image():
    with pytest.raises(ValueError, match="positive"):
        letterbox_params(0, 10, 64)


def test_flip_moves_image_box_mask_and_text_together():
    torch.manual_seed(0)
    out = TextAwareHorizontalFlip(p=1.0)(_sample())
    assert out["text"] == "the red block right of the ball"
    assert out["boxes"][0].tolist() == [200.0, 100.0, 270.0, 150.0]
    assert _extent(out["mask"][0]) == (200, 100, 270, 150)
    red = out["image"][0] > 0
    assert torch.equal(red, out["mask"][0].bool())


def test_referent_safe_crop_never_cuts_the_referent():
    torch.manual_seed(1)
    crop = ReferentSafeRandomCrop(p=1.0, min_scale=0.3)
    sizes = set()
    for _ in range(30):
        out = crop(_sample())
        h, w = out["image"].shape[-2:]
        sizes.add((h, w))
        x0, y0, x1, y1 = out["boxes"][0].tolist()
        assert min(x0, y0) >= 0 and x1 <= w and y1 <= h
        assert (x1 - x0, y1 - y0) == (70.0, 50.0)  # whole referent kept
        assert out["mask"].sum().item() == 70 * 50
        assert torch.equal(out["image"][0] > 0, out["mask"][0].bool())
    assert len(sizes) > 5  # it really crops


def test_crop_skips_no_target_samples():
    sample = _sample()
    sample["boxes"] = tv_tensors.BoundingBoxes(torch.zeros((0, 4)), format="XYXY", canvas_size=(240, 320))
    out = ReferentSafeRandomCrop(p=1.0)(sample)
    assert out["image"].shape == (3, 240, 320)


def test_colour_jitter_has_no_hue_shift():
    pipeline = build_transforms(TransformConfig(input_size=64), train=True)
    jitter = [t for t in pipeline.transforms if type(t).__name__ == "ColorJitter"]
    assert jitter and jitter[0].hue is None


def test_preprocess_image_is_normalised_letterbox():
    img = Image.new("RGB", (200, 100), (124, 116, 104))  # ~ the ImageNet mean
    x, (scale, pad_x, pad_y) = preprocess_image(img, 64)
    assert x.shape == (3, 64, 64) and (scale, pad_x, pad_y) == (0.32, 0.0, 16.0)
    assert x.abs().max() < 0.05  # mean colour and padding both normalise to ~0


def _record(tmp_path, name="a.png", size=(240, 320), text="the cube left of the ball"):
    path = tmp_path / name
    Image.new("RGB", (size[1], size[0]), (10, 200, 30)).save(path)
    mask = np.zeros(size, np.uint8)
    mask[100:150, 50:120] = 1
    return GroundingRecord(
        "s1", 1, str(path), size, text, np.array([[50, 100, 120, 150]], np.float32), mask_loader=lambda: mask
    )


def test_dataset_and_collate_build_a_consistent_batch(tmp_path):
    record = _record(tmp_path)
    ds = GroundingTorchDataset(
        [record] * 3, build_transforms(TransformConfig(input_size=96), False), load_masks=True
    )
    vocab = Vocabulary.build([record.text])
    batch = GroundingCollator(vocab, max_text_length=4)([ds[i] for i in range(3)])
    assert batch.images.shape == (3, 3, 96, 96)
    assert batch.text.token_ids.shape == (3, 4)  # truncated to max_text_length
    assert batch.targets.masks.shape == (3, 1, 96, 96)
    scale, pad_x, pad_y = batch.transforms[0]
    cx, cy, w, h = (batch.targets.boxes[0][0] * 96).tolist()
    assert abs((cx - w / 2 - pad_x) / scale - 50) < 1e-3 and abs((cy + h / 2 - pad_y) / scale - 150) < 1e-3
    assert batch.targets.answers.tolist() == [-1, -1, -1]
    assert not batch.targets.no_target.any()


def test_dataset_reports_size_mismatch_and_bad_image(tmp_path):
    record = _record(tmp_path, size=(240, 320))
    record.image_size = (100, 100)
    ds = GroundingTorchDataset([record], build_transforms(TransformConfig(input_size=64), False))
    with pytest.raises(DataError, match="240x320 but the annotation of sample s1 says 100x100"):
        ds[0]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    record = GroundingRecord("s2", 2, str(bad), (10, 10), "x")
    with pytest.raises(DataError, match="bad.png: image fails to decode"):
        GroundingTorchDataset([record], build_transforms(TransformConfig(input_size=64), False))[0]


def test_image_cache_decodes_each_image_once_within_its_budget(tmp_path):
    a, b = _record(tmp_path, "a.png"), _record(tmp_path, "b.png")
    pipeline = build_transforms(TransformConfig(input_size=64), False)
    one_image_mb = 3 * 240 * 320 / 2**20
    ds = GroundingTorchDataset([a, b, a], pipeline, cache_mb=1.5 * one_image_mb)  # room for one image
    first = ds[0]["image"]
    ds[1]
    Path(a.image_path).unlink()
    Path(b.image_path).unlink()
    assert torch.equal(ds[2]["image"], first)  # served from memory
    with pytest.raises(DataError, match="b.png: image not found"):
        ds[1]  # over the budget: not cached, read again
    uncached = GroundingTorchDataset([a], pipeline)
    with pytest.raises(DataError, match="a.png: image not found"):
        uncached[0]


def test_light_records_and_indices_reach_the_batch(tmp_path):
    record = _record(tmp_path)
    ds = GroundingTorchDataset([record] * 2, build_transforms(TransformConfig(input_size=64), False))
    item = ds[1]
    assert item["index"] == 1 and item["record"].mask_loader is None and record.mask_loader is not None
    assert len(pickle.dumps(item["record"])) < 2000
    batch = GroundingCollator(Vocabulary.build([record.text]), 8)([ds[0], ds[1]])
    assert batch.indices == [0, 1]


def test_flip_of_several_texts_swaps_every_one_and_moves_their_phrase_spans():
    sample = _sample()
    sample["text"] = ["the block left of the ball", "the leftmost ball", "the red one"]
    sample["phrase_spans"] = [[(0, 9), (10, 26)], [(0, 17)], []]
    out = TextAwareHorizontalFlip(p=1.0)(sample)
    assert out["text"] == ["the block right of the ball", "the rightmost ball", "the red one"]
    assert out["phrase_spans"] == [[(0, 9), (10, 27)], [(0, 18)], []]
    assert [out["text"][0][a:b] for a, b in out["phrase_spans"][0]] == ["the block", "right of the ball"]
    assert out["boxes"][0].tolist() == [200.0, 100.0, 270.0, 150.0]  # one flip for all of them
    single = _sample()
    single["phrase_spans"] = [(8, 30)]
    out = TextAwareHorizontalFlip(p=1.0)(single)
    assert out["text"] == "the red block right of the ball" and out["phrase_spans"] == [(8, 31)]

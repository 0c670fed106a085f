"""Image sharing (``data.group_by_image``): one item per image with all its expressions, decoded and
augmented once; the collator's B images / N rows; evaluation gives the same metrics both ways."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from langground.config import Config
from langground.data.collate import GroundingCollator
from langground.data.torch_dataset import GroundingTorchDataset, GroupedByImageDataset
from langground.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, build_transforms
from langground.engine.builders import build_dataset, make_loader
from langground.engine.evaluate import evaluate_model
from langground.errors import DataError
from langground.text import Vocabulary
from langground.types import GroundingRecord, Phrase

# Two referents per image: a red patch on the left and a blue patch on the right.
RED, BLUE = (250, 10, 10), (10, 10, 250)


def _image(tmp_path: Path, name: str, size: tuple[int, int], colour=(0, 200, 0)) -> str:
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = colour
    img[10:30, 5:25] = RED
    img[10:30, w - 25 : w - 5] = BLUE
    path = tmp_path / name
    Image.fromarray(img).save(path)
    return str(path)


def _masked(size: tuple[int, int], box) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = 1
    return mask


def _rec(sid: str, path: str, size, box, text: str, **kw) -> GroundingRecord:
    box = np.asarray([box], np.float32)
    return GroundingRecord(
        sid, Path(path).stem, path, size, text, box, mask_loader=lambda: _masked(size, box[0]), **kw
    )


@pytest.fixture()
def records(tmp_path):
    """Three images, seven expressions, interleaved (grouping must reorder them)."""
    sizes = {"a": (40, 60), "b": (48, 96), "c": (40, 80)}
    green = {"a": 0, "b": 120, "c": 0}  # b is bright: the toy model below tells it from a and c
    paths = {k: _image(tmp_path, f"{k}.png", s, colour=(0, green[k], 0)) for k, s in sizes.items()}

    def left(k, sid, text="the red block on the left"):
        return _rec(sid, paths[k], sizes[k], (5, 10, 25, 30), text)

    def right(k, sid, text="the blue block on the right"):
        w = sizes[k][1]
        return _rec(sid, paths[k], sizes[k], (w - 25, 10, w - 5, 30), text)

    return [
        left("a", "a0"),
        right("b", "b0"),
        right("a", "a1", "the rightmost blue thing"),
        left("c", "c0"),
        left("b", "b1", "the left one"),
        right("c", "c1"),
        left("a", "a2", "red"),
    ]


def test_groups_follow_images_in_first_appearance_order_and_split_at_the_limit(records):
    pipeline = build_transforms(TransformConfig(input_size=32), train=False)
    ds = GroupedByImageDataset(records, pipeline)
    assert ds.groups == [[0, 2, 6], [1, 4], [3, 5]] and len(ds) == 3
    assert ds.item_lengths() == [6, 6, 6]  # the longest expression of each image (word count)
    capped = GroupedByImageDataset(records, pipeline, max_queries_per_image=2)
    assert capped.groups == [[0, 2], [6], [1, 4], [3, 5]]
    assert capped.item_lengths() == [6, 1, 6, 6]
    assert GroundingTorchDataset(records, pipeline).item_lengths() == [6, 6, 4, 6, 3, 6, 1]
    with pytest.raises(DataError, match="max_queries_per_image=0"):
        GroupedByImageDataset(records, pipeline, max_queries_per_image=0)


def _unnormalised(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (image * std + mean) * 255


def test_one_augmentation_per_image_moves_every_expression_together(records):
    cfg = TransformConfig(
        input_size=64,
        flip_prob=0.5,
        crop_prob=1.0,
        crop_min_scale=0.5,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
    )
    ds = GroupedByImageDataset(records, build_transforms(cfg, train=True), load_masks=True)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = ds[0]  # image a: left, right, left expressions
        image = _unnormalised(item["image"])
        exprs = item["expressions"]
        assert [e["index"] for e in exprs] == [0, 2, 6] and item["index"] == 0
        centres = []
        for e in exprs:
            (x0, y0, x1, y1), mask = e["boxes"][0].tolist(), e["mask"][0].bool()
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # the mask moved with the box (nearest-neighbour resize: within a pixel)
            assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
            assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
            colour = image[:, mask].mean(1)
            red = e["record"].text in ("the red block on the left", "red")
            assert (colour[0] > colour[2]) == red  # the box still holds its own patch
            centres.append((x0 + x1) / 2)
        flipped = centres[0] > centres[1]  # the red (left) referent now right of the blue one
        flips.add(flipped)
        texts = [e["text"] for e in exprs]
        if flipped:
            assert texts == ["the red block on the right", "the leftmost blue thing", "red"]
        else:
            assert texts == ["the red block on the left", "the rightmost blue thing", "red"]
    assert flips == {True, False}


def test_collator_stacks_images_once_and_maps_rows_to_them(records):
    pipeline = build_transforms(TransformConfig(input_size=32), train=False)
    grouped = GroupedByImageDataset(records, pipeline, max_queries_per_image=2)
    single = GroundingTorchDataset(records, pipeline)
    vocab = Vocabulary.build(r.text for r in records)
    collate = GroundingCollator(vocab, 8)
    batch = collate([grouped[i] for i in range(len(grouped))])
    assert batch.images.shape == (4, 3, 32, 32) and len(batch.text) == 7
    assert batch.text.image_index.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert batch.targets.image_index.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert batch.indices == [0, 2, 6, 1, 4, 3, 5]
    assert [r.sample_id for r in batch.records] == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]
    # per row the same image, transform, targets and tokens as one record per item
    ref = collate([single[i] for i in batch.indices])
    assert ref.text.image_index is None and ref.targets.image_index is None
    assert torch.equal(batch.text.images_per_text(batch.images), ref.images)
    assert batch.transforms == ref.transforms
    assert torch.equal(batch.text.token_ids, ref.text.token_ids)
    for mine, theirs in zip(batch.targets.boxes, ref.targets.boxes, strict=True):
        assert torch.allclose(mine, theirs)
    # one expression per image: no index at all
    solo = collate([grouped[1]])
    assert solo.text.image_index is None and solo.images.shape[0] == 1


def test_phrases_become_token_spans_with_their_boxes_after_the_flip(tmp_path):
    size = (40, 60)
    path = _image(tmp_path, "p.png", size)
    text = "the red block left of it and the blue block"
    record = GroundingRecord(
        "p0",
        "p",
        path,
        size,
        text,
        np.asarray([[5, 10, 25, 30], [35, 10, 55, 30]], np.float32),
        phrases=(
            Phrase((0, 24), np.asarray([[5, 10, 25, 30]], np.float32), "1"),
            Phrase((29, 43), np.asarray([[35, 10, 55, 30]], np.float32), "2"),
        ),
    )
    other = _rec("q0", path, size, (5, 10, 25, 30), "red")
    cfg = TransformConfig(input_size=60, flip_prob=1.0, brightness=0.0, contrast=0.0, saturation=0.0)
    ds = GroupedByImageDataset([record, other], build_transforms(cfg, train=True))
    item = ds[0]
    flipped = item["expressions"][0]
    assert flipped["text"] == "the red block right of it and the blue block"
    assert [flipped["text"][a:b] for a, b in flipped["phrase_spans"]] == [
        "the red block right of it",
        "the blue block",
    ]
    vocab = Vocabulary.build([flipped["text"], "red"])
    batch = GroundingCollator(vocab, max_text_length=7)([item])
    assert batch.phrases.spans.shape == (2, 2, 2)
    assert batch.phrases.spans[0].tolist() == [[0, 6], [0, 0]]  # the second phrase is cut off (7 tokens)
    assert batch.phrases.mask.tolist() == [[True, False], [False, False]]
    # flipped: the first phrase's box (x 5..25 of 60) is now x 35..55; canvas 60, pad_y 10
    assert torch.allclose(
        batch.targets.phrase_boxes[0][0], torch.tensor([[45 / 60, 30 / 60, 20 / 60, 20 / 60]])
    )
    assert [b.shape[0] for b in batch.targets.phrase_boxes[1]] == [0, 0]  # no phrases: padded queries
    assert GroundingCollator(vocab, 7, phrases=False)([item]).phrases is None


class PerExpressionModel(nn.Module):
    """Reads its image (pooled colour, per image) and its text (token ids): each expression's box
    depends on both, so a row paired with the wrong image or text changes its prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.9)  # identity in eval mode

    def forward(self, images: torch.Tensor, text, **_: object) -> dict[str, torch.Tensor]:
        colour = self.drop(images.mean(dim=(2, 3)))  # (B, 3)
        colour = text.images_per_text(colour)  # (N, 3)
        bright = colour[:, 1] > colour[:, 1].new_tensor(-0.6)
        odd = text.token_ids.sum(1) % 2 == 1
        left = bright ^ odd
        cx = torch.where(left, 0.25, 0.75)
        boxes = torch.stack(
            [cx, torch.full_like(cx, 0.5), torch.full_like(cx, 0.4), torch.full_like(cx, 0.5)], 1
        )
        return {"pred_boxes": boxes}


def test_evaluation_with_image_sharing_gives_the_same_metrics_and_predictions(records, tmp_path):
    for i, r in enumerate(records):
        r.family = "odd" if i % 2 else "even"
    vocab = Vocabulary.build(r.text for r in records)
    model = PerExpressionModel().eval()
    results = {}
    for grouped in (False, True):
        cfg = Config()
        cfg.model.task = "rec"
        cfg.transforms.input_size = 32
        cfg.data.group_by_image = grouped
        cfg.data.max_queries_per_image = 2 if grouped else None
        cfg.run.eval_batch_size = 2
        cfg.run.num_workers = 0
        out = tmp_path / f"pred-{grouped}.jsonl"
        res = evaluate_model(
            model, records, cfg, vocab, None, device=torch.device("cpu"), save_predictions=out
        )
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [row["sample_id"] for row in lines] == [r.sample_id for r in records]  # in record order
        rows = {row["sample_id"]: row["boxes"] for row in lines}
        results[grouped] = (res.metrics, rows)
    metrics, rows = results[False]
    assert 0 < metrics["rec/prec@0.5"] < 1  # some hits, some misses: the comparison means something
    assert results[True][0] == metrics
    assert results[True][1] == rows and len(rows) == len(records)


def test_builders_wire_group_by_image(records):
    cfg = Config()
    cfg.model.task = "rec"
    cfg.transforms.input_size = 32
    cfg.run.num_workers = 0
    assert type(build_dataset(records, cfg, None, train=False)) is GroundingTorchDataset
    cfg.data.group_by_image, cfg.data.max_queries_per_image = True, 2
    ds = build_dataset(records, cfg, None, train=True)
    assert isinstance(ds, GroupedByImageDataset) and len(ds) == 4
    vocab = Vocabulary.build(r.text for r in records)
    batches = list(make_loader(ds, vocab, cfg, cfg.run, batch_size=3))
    assert [b.images.shape[0] for b in batches] == [3, 1]  # batch_size counts images
    assert sum(len(b.text) for b in batches) == len(records)
    assert sorted(i for b in batches for i in b.indices) == list(range(len(records)))


def test_image_sharing_benchmark_runs_and_reports_both_modes():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_image_sharing.py"
    spec = importlib.util.spec_from_file_location("bench_image_sharing", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(images=6, expressions=8, steps=2, warmup=1)  # figures only; no timing asserted
    assert result["off"]["images_per_step"] == result["off"]["expressions_per_step"] == 8
    assert result["on"]["images_per_step"] < result["on"]["expressions_per_step"]  # images shared
    assert result["vision_mmacs_per_image"] > 10 * result["fusion_mmacs_per_expression"] > 0
    assert result["speedup"] > 0 and result["threads"] == 1

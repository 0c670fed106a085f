"""The synthetic world's caption views: ``task="phrase"`` (2-3 expressions of one image joined into a
caption, each a phrase with its box) and ``task="retrieval"`` (the rec records as captions)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from langground.config import Config
from langground.data import open_dataset
from langground.data.synth import SYNTH_TASKS, compose_groups
from langground.data.synthetic import SynthConfig, generate_world
from langground.engine.builders import build_dataset, build_vocab, make_loader
from langground.errors import DataError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(
        tmp_path_factory.mktemp("synth") / "world", SynthConfig(images=10, seed=3, size=(160, 120)), workers=1
    )


def test_phrase_captions_use_every_expression_once_with_its_box(world):
    rec = open_dataset(world, "synth", "all", task="rec")
    ds = open_dataset(world, "synth", "all", task="phrase")
    assert ds.task == "phrase" and ds.protocol.tasks == ("phrase",) and ds.splits == rec.splits
    by_id = {r.sample_id: r for r in rec}
    used = Counter()
    per_image = Counter(r.image_id for r in rec)
    for caption in ds:
        parts = caption.meta["expressions"]
        assert caption.sample_id == "+".join(parts) and caption.family == f"{len(parts)}_phrases"
        assert 2 <= len(parts) <= 3 or per_image[caption.image_id] == 1
        assert caption.text == " and ".join(by_id[p].text for p in parts)
        for phrase, sid in zip(caption.phrases, parts, strict=True):
            source = by_id[sid]
            assert caption.text[phrase.span[0] : phrase.span[1]] == source.text
            np.testing.assert_array_equal(phrase.boxes, source.boxes)
            assert (phrase.phrase_id, phrase.family) == (sid, source.family)
            assert source.image_id == caption.image_id and source.split == caption.split
        used.update(parts)
    assert used == Counter(list(by_id))  # every single-target expression in exactly one caption


def test_phrase_captions_are_deterministic(world):
    a = [(r.sample_id, r.text) for r in open_dataset(world, "synth", "train", task="phrase")]
    b = [(r.sample_id, r.text) for r in open_dataset(world, "synth", "train", task="phrase")]
    assert a == b and len(a) > 0
    # a pure function of the image and the expression ids, never a singleton group
    ids = [str(i) for i in range(7)]
    groups = compose_groups(list(range(7)), ids, image_id=5)
    assert groups == compose_groups(list(range(7)), ids, image_id=5)
    assert sorted(i for g in groups for i in g) == list(range(7)) and all(2 <= len(g) <= 3 for g in groups)
    # another image (or other ids) draws another order
    drawn = {str(compose_groups(list(range(7)), ids, image_id=k)) for k in range(10)}
    assert len(drawn) > 5
    assert [len(g) for g in compose_groups([0, 1, 2, 3], list("abcd"), 1)] == [2, 2]
    assert compose_groups([4], ["x"], 1) == [[4]]


def test_retrieval_view_is_the_rec_records(world):
    rec = open_dataset(world, "synth", "val", task="rec")
    ds = open_dataset(world, "synth", "val", task="retrieval")
    assert ds.task == "retrieval" and ds.protocol.tasks == ("retrieval",)
    assert [(r.sample_id, r.text, r.image_id) for r in ds] == [(r.sample_id, r.text, r.image_id) for r in rec]
    assert {"phrase", "retrieval"} <= set(SYNTH_TASKS)
    with pytest.raises(DataError, match="expected one of rec, res, gref, gres, vqa, phrase, retrieval"):
        open_dataset(world, "synth", "val", task="caption")


def test_phrase_batches_from_the_synthetic_world(world):
    torch.set_num_threads(1)
    cfg = Config()
    cfg.data.root, cfg.data.open_kwargs = str(world), {"task": "phrase"}
    cfg.model.task = "phrase"
    cfg.transforms.input_size = 64
    cfg.data.group_by_image = True
    cfg.run.num_workers = 0
    records = open_dataset(world, "synth", "train", task="phrase")
    vocab = build_vocab(records, cfg.data)
    loader = make_loader(build_dataset(records, cfg, None, train=True), vocab, cfg, cfg.run, batch_size=2)
    batch = next(iter(loader))
    n = len(batch.records)
    assert batch.phrases is not None and batch.phrases.spans.shape[:2] == batch.phrases.mask.shape
    assert batch.phrases.mask.sum(1).tolist() == [len(r.phrases) for r in batch.records]  # none cut off at 20
    for row in range(n):
        tokens = batch.text.tokens[row]
        words = batch.records[row].meta["expressions"]
        assert len(batch.targets.phrase_boxes[row]) == batch.phrases.num_queries
        for q in range(len(words)):
            start, end = batch.phrases.spans[row, q].tolist()
            assert 0 <= start < end <= len(tokens)
            assert batch.targets.phrase_boxes[row][q].shape == (1, 4)
        # consecutive phrases are separated by the one word "and"
        for q in range(len(words) - 1):
            assert tokens[batch.phrases.spans[row, q, 1]] == "and"
            assert batch.phrases.spans[row, q + 1, 0] == batch.phrases.spans[row, q, 1] + 1
    assert batch.images.shape[0] <= 2 and (batch.text.image_index is None or batch.text.image_index.max() < 2)

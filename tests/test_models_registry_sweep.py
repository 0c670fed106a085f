"""Every registered model, every task it supports: the model contract, gradients, safetensors round trip."""

import functools

import pytest
import torch
from safetensors.torch import load_file, save_file

from langground.losses import build_criterion
from langground.registry import create_model, list_models
from langground.types import Targets, TextBatch

VOCAB = 50
ANSWERS = 7
MODELS = list_models()


SIZE = 64  # small: a multiple of every backbone stride in the zoo


def _inputs(batch: int, size: int, length: int = 6):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, length - 2 :] = False
    ids[~mask] = 0
    words = [[f"w{int(i)}" for i in row[m]] for row, m in zip(ids, mask, strict=True)]
    return images, TextBatch(ids, mask, [" ".join(w) for w in words], words)


def _targets(batch: int, size: int) -> Targets:
    boxes = [torch.tensor([[0.5, 0.5, 0.3, 0.4]]), torch.tensor([[0.3, 0.6, 0.2, 0.2], [0.7, 0.3, 0.3, 0.2]])]
    boxes = (boxes * batch)[:batch]
    masks = torch.zeros(batch, 1, size, size)
    masks[:, :, size // 4 : size // 2, size // 4 : 3 * size // 4] = 1
    return Targets(boxes, masks, torch.zeros(batch, dtype=torch.bool), torch.arange(batch) % ANSWERS)


def _build(name: str, task: str):
    torch.manual_seed(0)
    return create_model(name, task=task, vocab_size=VOCAB, num_answers=ANSWERS, input_size=SIZE), SIZE


@functools.cache
def _tasks(name: str) -> tuple[str, ...]:
    return tuple(create_model(name, vocab_size=VOCAB, num_answers=ANSWERS, input_size=SIZE).supported_tasks)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_follow_the_contract_for_every_task(name):
    for task in _tasks(name):
        model, size = _build(name, task)
        assert model.task == task and model.vocab_size == VOCAB and model.input_size == size
        images, text = _inputs(2, size)
        with torch.no_grad():
            out = model.eval()(images, text)
        assert out, f"{name}/{task}: empty output"
        for key, value in out.items():
            if torch.is_tensor(value):
                assert torch.isfinite(value).all(), f"{name}/{task}: {key} has NaN/inf"
        if task in ("rec", "gref"):
            assert out["pred_boxes"].shape == (2, 4)
            assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
            if "pred_scores" in out:
                assert out["pred_scores"].shape == (2,)
        if task == "gref":
            n = out["pred_box_set"].shape[1]
            assert out["pred_box_set"].shape == (2, n, 4) and out["pred_box_logits"].shape == (2, n)
        if task in ("res", "gres"):
            m = out["pred_masks"]
            assert m.shape[:2] == (2, 1) and m.shape[-1] >= size // 4 and m.shape[-2] >= size // 4
        if task in ("gref", "gres"):
            assert out["pred_no_target"].shape == (2,)
        if task == "vqa":
            assert out["pred_answer"].shape == (2, ANSWERS)
        for stage, att in out.get("aux", {}).get("attention", {}).items():
            assert att.shape[:2] == (2, text.token_ids.shape[1]), stage


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_receives_a_gradient(name):
    for task in _tasks(name):
        model, size = _build(name, task)
        images, text = _inputs(2, size)
        targets = _targets(2, size)
        if task in ("gref", "gres"):
            targets.no_target[1] = True
            targets.boxes[1] = torch.zeros(0, 4)
        losses = build_criterion(task)(model.train()(images, text), targets)
        assert torch.isfinite(losses["loss"])
        losses["loss"].backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}/{task}: no gradient for {missing[:5]}"
        bad = [
            n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        assert not bad, f"{name}/{task}: non-finite gradient in {bad[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip_gives_identical_outputs(name, tmp_path):
    task = _tasks(name)[0]
    model, size = _build(name, task)
    images, text = _inputs(2, size)
    model.train()(images, text)  # move BN statistics away from their initial values
    model.eval()
    with torch.no_grad():
        before = model(images, text)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    rebuilt = create_model(name, **model.model_config)
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        after = rebuilt.eval()(images, text)
    for key, value in before.items():
        if torch.is_tensor(value):
            assert torch.equal(value, after[key]), key


@pytest.mark.parametrize("name", MODELS)
def test_bad_inputs_raise_clear_value_errors(name):
    model, size = _build(name, "rec" if "rec" in _tasks(name) else _tasks(name)[0])
    model.eval()
    images, text = _inputs(2, size)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(images[0], text)
    with pytest.raises(ValueError, match="3 channels"):
        model(images[:, :1], text)
    with pytest.raises(ValueError, match="batch-size mismatch: 1 images but 2 expressions"):
        model(images[:1], text)
    empty = TextBatch(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty text batch"):
        model(images[:0], empty)
    ids = text.token_ids.clone()
    ids[1, 3] = VOCAB + 7
    with pytest.raises(
        ValueError, match=rf"token id {VOCAB + 7} at \[1, 3\] is outside the vocabulary of {VOCAB} words"
    ):
        model(images, TextBatch(ids, text.attention_mask))
    no_words = TextBatch(text.token_ids, torch.zeros_like(text.attention_mask))
    with pytest.raises(ValueError, match="no tokens"):
        model(images, no_words)
    if model.size_divisor > 1:
        odd = size + model.size_divisor // 2
        with pytest.raises(ValueError, match="multiple of"):
            model(torch.randn(2, 3, odd, odd), text)


def test_sweep_found_the_laconvnets():
    assert {"laconvnet_t", "laconvnet_s", "laconvnet_b"} <= set(MODELS)

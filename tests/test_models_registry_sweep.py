"""Every registered model, every task it supports: the model contract, gradients, safetensors round trip,
clear errors for bad input; and the tiny model overfits 8 synthetic samples on every task.

Overfitting runs on ``laconvnet_t`` only (S and B take ~0.45 s per step at 64^2 on one core: minutes of
CPU; their heads and losses are the same modules as T's), for rec, gres and vqa: together they hold every
head (box, segmentation, no-target, VQA) and every loss term; gref and res are rec/gres with one head or
one term less, and cost another ~10 s on the shared cores.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.ops import box_convert, box_iou

from langground.losses import build_criterion
from langground.registry import create_model, list_models
from langground.types import PhraseQueries, Targets, TextBatch

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
    phrase_boxes = [[b] for b in boxes]  # task phrase: one query per row (its whole expression)
    return Targets(
        boxes, masks, torch.zeros(batch, dtype=torch.bool), torch.arange(batch) % ANSWERS, phrase_boxes
    )


def _forward(model, task: str, images, text):
    """The model's forward as the engine calls it: the phrase task passes its queries (one per row here:
    the whole expression, so the targets' one box per row is each query's box)."""
    if task != "phrase":
        return model(images, text)
    lengths = text.attention_mask.sum(1)
    spans = torch.stack([torch.zeros_like(lengths), lengths], -1)[:, None]  # (N, 1, 2)
    return model(images, text, PhraseQueries(spans, torch.ones(len(lengths), 1, dtype=torch.bool)))


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
            out = _forward(model.eval(), task, images, text)
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
        if task == "phrase":
            assert out["pred_boxes"].shape == (2, 1, 4)
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
        losses = build_criterion(task, model)(_forward(model.train(), task, images, text), targets)
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
    # gref + gres + vqa hold every head module (neck, box, seg, no-target, VQA); rec / res are subsets
    for task in [t for t in ("gref", "gres", "vqa") if t in _tasks(name)] or _tasks(name)[:1]:
        model, size = _build(name, task)
        images, text = _inputs(2, size)
        model.train()(images, text)  # move BN statistics away from their initial values
        model.eval()
        with torch.no_grad():
            before = model(images, text)
        save_file(model.state_dict(), tmp_path / f"{task}.safetensors")
        rebuilt = create_model(name, **model.model_config)
        rebuilt.load_state_dict(load_file(tmp_path / f"{task}.safetensors"))
        with torch.no_grad():
            after = rebuilt.eval()(images, text)
        assert before.keys() == after.keys()
        for key, value in before.items():
            if torch.is_tensor(value):
                assert torch.equal(value, after[key]), f"{name}/{task}: {key}"


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
    ids = text.token_ids.clone()
    ids[0, 0] = -3
    with pytest.raises(ValueError, match=r"token id -3 at \[0, 0\] is outside the vocabulary"):
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


@pytest.mark.parametrize("name", MODELS)
def test_text_longer_than_max_text_length_is_a_clear_value_error(name):
    model = create_model(name, vocab_size=VOCAB, input_size=SIZE, max_text_length=4).eval()
    images, text = _inputs(2, SIZE, length=6)
    with pytest.raises(ValueError, match="max_text_length=4"):
        model(images, text)


# ----------------------------------------------------------------------------- overfitting

COLORS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1)}
WORDS = ["<pad>", "<unk>", "the", *COLORS, "square"]


def synthetic_samples(size: int = 64, n: int = 8, seed: int = 0, absent: tuple[int, ...] = ()):
    """n images with two coloured squares; "the <colour> square" names one of them (alternately the
    first and the second drawn, so only reading the text gets them all), or, for samples in ``absent``,
    a colour that is not in the image (no target). VQA answer: the named square's quadrant."""
    g = torch.Generator().manual_seed(seed)
    images, ids, boxes, masks, answers, none = [], [], [], [], [], []
    for i in range(n):
        img = torch.full((3, size, size), -1.5)
        placed: list[tuple[int, int, int, str]] = []
        order = torch.randperm(4, generator=g).tolist()
        for c in order[:2]:
            while True:
                side = int(torch.randint(size // 6, size // 3, (1,), generator=g))
                x0, y0 = (int(v) for v in torch.randint(0, size - side, (2,), generator=g))
                if all(
                    x0 + side <= a or a + s <= x0 or y0 + side <= b or b + s <= y0 for a, b, s, _ in placed
                ):
                    break
            name = list(COLORS)[c]
            img[:, y0 : y0 + side, x0 : x0 + side] = torch.tensor(COLORS[name]).view(3, 1, 1)
            placed.append((x0, y0, side, name))
        mask = torch.zeros(1, size, size)
        if i in absent:
            name = list(COLORS)[order[2]]
            boxes.append(torch.zeros(0, 4))
            answers.append(-1)
            none.append(True)
        else:
            x0, y0, side, name = placed[i % 2]
            mask[:, y0 : y0 + side, x0 : x0 + side] = 1
            cx, cy = (x0 + side / 2) / size, (y0 + side / 2) / size
            boxes.append(torch.tensor([[cx, cy, side / size, side / size]]))
            answers.append(int(cx > 0.5) + 2 * int(cy > 0.5))
            none.append(False)
        images.append(img)
        masks.append(mask)
        ids.append([2, WORDS.index(name), WORDS.index("square")])
    ids_t = torch.tensor(ids)
    targets = Targets(boxes, torch.stack(masks), torch.tensor(none), torch.tensor(answers))
    return torch.stack(images), TextBatch(ids_t, ids_t != 0), targets


STEPS = {"rec": 80, "gref": 80, "res": 50, "gres": 50, "vqa": 40}


@pytest.mark.parametrize("task", ["rec", "gres", "vqa"])
def test_tiny_model_overfits_eight_synthetic_samples(task):
    torch.manual_seed(0)
    absent = (6, 7) if task in ("gref", "gres") else ()
    images, text, targets = synthetic_samples(absent=absent)
    model = create_model("laconvnet_t", task=task, vocab_size=len(WORDS), input_size=64, num_answers=4)
    criterion = build_criterion(task, model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(STEPS[task]):
        losses = criterion(model.train()(images, text), targets)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = float(losses["loss"].detach()) if first is None else first
    last = float(losses["loss"].detach())
    assert last < 0.5 * first, (first, last)  # dice keeps res/gres above ~0.4 x the start
    with torch.no_grad():  # judged in eval mode: BN running statistics, no dropout
        out = model.eval()(images, text)
    has = [i for i in range(8) if i not in absent]
    if task in ("rec", "gref"):
        gt = torch.cat([targets.boxes[i] for i in has])
        pred = out["pred_boxes"][has]
        iou = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy")).diag()
        assert (iou > 0.5).all(), iou
    if task in ("res", "gres"):
        pred = out["pred_masks"][has] > 0
        assert pred.shape[-1] >= 64 // 4  # stride 4 or finer
        gt = F.adaptive_avg_pool2d(targets.masks[has], pred.shape[-2:]) > 0.5
        iou = (pred & gt).flatten(1).sum(1) / (pred | gt).flatten(1).sum(1).clamp_min(1)
        assert (iou > 0.5).all(), iou
    if task in ("gref", "gres"):
        assert ((out["pred_no_target"] > 0) == targets.no_target).all(), out["pred_no_target"]
    if task == "vqa":
        assert out["pred_answer"].argmax(1).tolist() == targets.answers.tolist()
    # The checks above discriminate: the same model before training fails them (speed is a benchmark's job).
    torch.manual_seed(0)
    fresh = create_model("laconvnet_t", task=task, vocab_size=len(WORDS), input_size=64, num_answers=4).eval()
    with torch.no_grad():
        before = fresh(images, text)
    if task in ("rec", "gref"):
        iou0 = box_iou(
            box_convert(before["pred_boxes"][has], "cxcywh", "xyxy"), box_convert(gt, "cxcywh", "xyxy")
        )
        assert not (iou0.diag() > 0.5).all()
    if task in ("res", "gres"):
        pred0 = before["pred_masks"][has] > 0
        iou0 = (pred0 & gt).flatten(1).sum(1) / (pred0 | gt).flatten(1).sum(1).clamp_min(1)
        assert not (iou0 > 0.5).all()
    if task == "vqa":
        assert before["pred_answer"].argmax(1).tolist() != targets.answers.tolist()

"""Image sharing (``data.group_by_image``): train-step throughput of a TransVG-like toy model, on vs off.

    .venv/bin/python benchmarks/bench_image_sharing.py                  # world in a temp dir, 1 thread
    .venv/bin/python benchmarks/bench_image_sharing.py --steps 30 --images 48 --expressions 32

The toy model's vision does not read the text (TransVG, RefTR, SLAN's image tower): a small conv encoder
(a few M MACs at 128x128) runs once per IMAGE of the batch, then a light per-EXPRESSION fusion (one
text-query cross-attention over the 8x8 visual tokens, a box MLP). Off, every expression is its own
item: its image is decoded, augmented and encoded once per expression. On, one item is one image with all
its expressions: decoded, augmented and encoded once. Both runs train on the same synthetic world
(rec records, ~8 per image) with about the same number of expressions per step; a step is the whole
thing a user waits for: loading (``num_workers=0``), forward, backward and the optimiser update.
Figures: expressions per second; the speed-up is on / off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import RandomSampler
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import generalized_box_iou_loss

from langground.config import Config
from langground.data import open_dataset
from langground.data.synthetic import SynthConfig, generate_world
from langground.engine.builders import build_dataset, build_vocab, make_loader
from langground.types import TextBatch

SIZE = 128


class ToyTransVG(nn.Module):
    """Text-independent conv vision (once per image) + per-expression cross-attention fusion."""

    def __init__(self, vocab_size: int, dim: int = 64):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        # 128 -> 64 -> 32 -> 16 -> 8: the visual tokens
        self.vision = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, dim))
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 4))

    def forward(self, images: torch.Tensor, text: TextBatch, **_: Any) -> dict[str, torch.Tensor]:
        visual = self.vision(images).flatten(2).transpose(1, 2)  # (B, 64, dim): once per image
        visual = text.images_per_text(visual)  # (N, 64, dim): each expression's image
        mask = text.attention_mask.unsqueeze(-1).float()
        query = (self.embed(text.token_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (N, dim)
        attn = torch.softmax(torch.einsum("nd,ntd->nt", query, self.key(visual)) / query.shape[1] ** 0.5, -1)
        fused = torch.einsum("nt,ntd->nd", attn, self.value(visual))
        return {"pred_boxes": torch.sigmoid(self.head(torch.cat([fused, query], 1)))}


def _loss(outputs: dict[str, torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
    pred = outputs["pred_boxes"]
    target = torch.stack([b[0] for b in boxes])  # rec: one referent per expression (cxcywh)

    def xyxy(b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)

    return F.l1_loss(pred, target) + generalized_box_iou_loss(xyxy(pred), xyxy(target), reduction="mean")


def _config(root: Path, grouped: bool) -> Config:
    cfg = Config()
    cfg.data.root, cfg.data.open_kwargs = str(root), {"task": "rec"}
    cfg.data.group_by_image = grouped
    cfg.model.task = "rec"
    cfg.transforms.input_size = SIZE
    cfg.run.num_workers = 0
    return cfg


def _run(root: Path, grouped: bool, batch_size: int, steps: int, warmup: int) -> dict[str, float]:
    cfg = _config(root, grouped)
    records = open_dataset(root, "synth", "train", task="rec")
    vocab = build_vocab(records, cfg.data)
    dataset = build_dataset(records, cfg, None, train=True)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=10**6, generator=torch.Generator().manual_seed(0)
    )
    loader = iter(
        make_loader(dataset, vocab, cfg, cfg.run, batch_size=batch_size, sampler=sampler, drop_last=True)
    )
    torch.manual_seed(0)
    model = ToyTransVG(len(vocab)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, loading, expressions, images = [], [], 0, 0
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(loader)
        t1 = time.perf_counter()
        loss = _loss(model(**batch.model_inputs()), batch.targets.boxes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            loading.append(t1 - t0)
            expressions += len(batch.text)
            images += batch.images.shape[0]
    total = sum(times)
    return {
        "expressions_per_s": expressions / total,
        "images_per_step": images / steps,
        "expressions_per_step": expressions / steps,
        "median_step_ms": 1000 * statistics.median(times),
        "loading_ms_per_step": 1000 * sum(loading) / steps,  # decode + augment + collate
        "model_ms_per_step": 1000 * (total - sum(loading)) / steps,  # forward + backward + update
    }


def _macs(module: nn.Module, *inputs: Any) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 2


def run(
    root: Path | None = None, *, images: int = 48, expressions: int = 32, steps: int = 30, warmup: int = 5
) -> dict[str, Any]:
    """Throughput on vs off (1 thread); returns the figures and prints them as JSON."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if root is None:
            # expressions_per_image=11: about 8 single-target (rec) expressions per image remain
            root = generate_world(
                Path(tmp) / "world", SynthConfig(images=images, seed=0, expressions_per_image=11), workers=1
            )
        records = open_dataset(root, "synth", "train", task="rec")
        per_image = len(records) / len({r.image_id for r in records})
        off = _run(root, False, expressions, steps, warmup)
        on = _run(root, True, max(1, round(expressions / per_image)), steps, warmup)
    model = ToyTransVG(100).eval()
    vision = _macs(model.vision, torch.zeros(1, 3, SIZE, SIZE))
    full = _macs(
        model,
        torch.zeros(1, 3, SIZE, SIZE),
        TextBatch(torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool)),
    )
    result = {
        "expressions_per_image": round(per_image, 2),
        "vision_mmacs_per_image": round(vision / 1e6, 2),
        "fusion_mmacs_per_expression": round((full - vision) / 1e6, 3),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "off": {k: round(v, 2) for k, v in off.items()},
        "on": {k: round(v, 2) for k, v in on.items()},
        "speedup": round(on["expressions_per_s"] / off["expressions_per_s"], 2),
    }
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root", type=Path, default=None, help="an existing synthetic world (default: generate one)"
    )
    ap.add_argument("--images", type=int, default=48, help="images of the generated world")
    ap.add_argument("--expressions", type=int, default=32, help="expressions per step (off: the batch size)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    run(args.root, images=args.images, expressions=args.expressions, steps=args.steps, warmup=args.warmup)


if __name__ == "__main__":
    main()

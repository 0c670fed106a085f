"""Zero-shot referring-expression grounding from a SLAN pre-training checkpoint (never shown a box):
Prec@0.5 on the synthetic world's REC split, against box baselines.

    .venv/bin/python benchmarks/slan_zero_shot.py runs/slan-t-full --root data/synth-slan --split testA

- SLAN: the adapted region most similar to the expression in the ITC space (the ``rec`` head);
- largest region: the largest of the same model's kept regions (a text-blind choice among its proposals);
- random region: a kept region drawn uniformly (seeded);
- centre box: a box at the image centre with the mean referent size of the train split.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from langground.data import open_dataset
from langground.engine.builders import open_split
from langground.engine.checkpoint import load_checkpoint
from langground.engine.evaluate import evaluate_model
from langground.registry import create_model


class Baseline(nn.Module):
    """SLAN's rec outputs with ``pred_boxes`` replaced by a text-blind choice."""

    def __init__(self, model: nn.Module, kind: str, centre_size: tuple[float, float]):
        super().__init__()
        self.model, self.kind, self.centre_size = model, kind, centre_size
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, images, text, phrases=None) -> dict[str, Any]:
        out = dict(self.model(images, text))
        boxes, logits = out["aux"]["region_boxes"], out["aux"]["region_logits"]
        kept = logits > -1e3
        if self.kind == "largest":
            area = (boxes[..., 2] * boxes[..., 3]).masked_fill(~kept, -1)
            pick = area.argmax(1)
        elif self.kind == "random":
            pick = torch.stack([torch.multinomial(k.float(), 1, generator=self.gen)[0] for k in kept])
        else:
            w, h = self.centre_size
            out["pred_boxes"] = boxes.new_tensor([0.5, 0.5, w, h]).expand(boxes.shape[0], 4).clone()
            return out
        out["pred_boxes"] = boxes[torch.arange(boxes.shape[0]), pick]
        return out


def rec_model(run: Path) -> tuple[nn.Module, Any, Any]:
    ckpt = load_checkpoint(run)
    cfg = dict(ckpt.model.model_config)
    cfg["task"] = "rec"
    model = create_model(ckpt.config.model.name, **cfg)
    missing, unexpected = model.load_state_dict(ckpt.model.state_dict(), strict=False)
    assert not missing and all(k.startswith(("itm_head.", "mlm_head.")) for k in unexpected), (
        missing,
        unexpected,
    )
    return model.eval(), ckpt.config, ckpt.vocab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path)
    ap.add_argument("--root", default="data/synth-slan")
    ap.add_argument("--split", default="testA")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, config, vocab = rec_model(args.run)
    config = copy.deepcopy(config)
    config.model.task = "rec"
    config.data.dataset, config.data.root, config.data.open_kwargs = "synth", args.root, {"task": "rec"}
    config.data.group_by_image = False
    records = open_split(config.data, args.split, args.limit)
    train = open_dataset(args.root, "synth", "train", task="rec")
    side = [max(r.image_size) for r in train]
    wh = np.array(
        [[(b[2] - b[0]) / s, (b[3] - b[1]) / s] for r, s in zip(train, side, strict=True) for b in r.boxes]
    )
    centre = (float(wh[:, 0].mean()), float(wh[:, 1].mean()))
    cpu = torch.device("cpu")
    rows = [("SLAN zero-shot (region most similar to the expression)", model)]
    rows += [(f"{k} region", Baseline(model, k, centre)) for k in ("largest", "random")]
    rows.append(
        (
            f"centre box ({centre[0]:.2f} x {centre[1]:.2f} of the long side)",
            Baseline(model, "centre", centre),
        )
    )
    print(f"{args.split}: {len(records)} expressions, checkpoint {args.run}")
    print("| method | Prec@0.5 |\n|---|---|")
    for name, m in rows:
        res = evaluate_model(m, records, config, vocab, None, device=cpu, batch_size=32)
        print(f"| {name} | {100 * res.metrics['rec/prec@0.5']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

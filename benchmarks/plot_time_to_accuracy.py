"""Accuracy vs minutes of training, from the ``metrics.jsonl`` of finished runs (PIL; no matplotlib).

    .venv/bin/python benchmarks/plot_time_to_accuracy.py RUN[=LABEL] ... --out docs/img/time_to_accuracy.png

One line per run: validation Prec@0.5 (the preset's primary metric) at each evaluation, against the
training minutes spent by then (summed from the logged throughput: ``log_every`` steps of
``batch_size`` samples at ``samples_per_s``; evaluation time excluded, as the trainer's own clock). The
first run also gets one dashed line per expression family. The bar (90% within 10 minutes) is drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from langground.inference.style import PALETTE, font  # noqa: E402

SIZE, PAD = (980, 560), (70, 40, 260, 60)  # canvas; left, top, right (legend), bottom margins
BAR_ACC, BAR_MIN = 0.90, 10.0


def read_curve(run: Path, metric: str = "rec/prec@0.5") -> dict[str, Any]:
    """``{"minutes": [...], "value": [...], "family": {name: [...]}}`` at each validation of ``run``."""
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    batch = int(cfg["run"]["batch_size"]) * int(cfg["run"].get("grad_accum", 1))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds, last_step = 0.0, 0
    curve: dict[str, Any] = {"minutes": [], "value": [], "family": {}}
    for row in rows:
        if row.get("kind") == "train" and row.get("samples_per_s"):
            seconds += (row["step"] - last_step) * batch / row["samples_per_s"]
            last_step = row["step"]
        elif row.get("kind") == "val" and metric in row:
            curve["minutes"].append(seconds / 60)
            curve["value"].append(row[metric])
            for key, value in row.items():
                if key.startswith(f"{metric}/family/"):
                    curve["family"].setdefault(key.rsplit("/", 1)[-1], []).append(value)
    if not curve["value"]:
        raise SystemExit(f"{run}/metrics.jsonl: no validation rows with {metric}")
    return curve


def plot(curves: list[tuple[str, dict[str, Any]]], title: str) -> Image.Image:
    img = Image.new("RGB", SIZE, "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = PAD[0], PAD[1], SIZE[0] - PAD[2], SIZE[1] - PAD[3]
    x_max = max(BAR_MIN, *(m for _, c in curves for m in c["minutes"])) * 1.05

    def xy(minutes: float, value: float) -> tuple[float, float]:
        return left + (right - left) * minutes / x_max, bottom - (bottom - top) * value

    d.text((left, 10), title, fill=(0, 0, 0), font=font(15))
    for v in range(0, 101, 10):  # y grid, percent
        y = xy(0, v / 100)[1]
        d.line([(left, y), (right, y)], fill=(232, 232, 232))
        d.text((left - 36, y - 7), f"{v}%", fill=(80, 80, 80), font=font(11))
    for m in range(0, int(x_max) + 1, 2):
        x = xy(m, 0)[0]
        d.text((x - 4, bottom + 6), str(m), fill=(80, 80, 80), font=font(11))
    d.text(((left + right) // 2 - 60, bottom + 26), "minutes of training", fill=(0, 0, 0), font=font(12))
    d.rectangle([left, top, right, bottom], outline=(60, 60, 60))
    bx, by = xy(BAR_MIN, BAR_ACC)
    d.line([(left, by), (bx, by), (bx, bottom)], fill=(200, 0, 0), width=1)
    d.text((left + 6, by - 16), "bar: 90% within 10 min", fill=(200, 0, 0), font=font(11))
    legend_y = top
    for i, (label, c) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        pts = [xy(m, v) for m, v in zip(c["minutes"], c["value"], strict=True)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=3)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        d.line([(right + 14, legend_y + 8), (right + 40, legend_y + 8)], fill=color, width=3)
        d.text((right + 46, legend_y), f"{label}: {100 * c['value'][-1]:.1f}%", fill=(0, 0, 0), font=font(12))
        legend_y += 22
    if curves:  # the first run's families, thin
        label, c = curves[0]
        for j, (family, values) in enumerate(sorted(c["family"].items())):
            color = tuple(int(0.55 * ch + 0.45 * 255) for ch in PALETTE[(j + 3) % len(PALETTE)])
            pts = [xy(m, v) for m, v in zip(c["minutes"], values, strict=True)]
            if len(pts) > 1:
                d.line(pts, fill=color, width=1)
            d.line([(right + 14, legend_y + 8), (right + 40, legend_y + 8)], fill=color, width=1)
            d.text((right + 46, legend_y), f"{label} · {family}: {100 * values[-1]:.1f}%", fill=(0, 0, 0),
                   font=font(11))  # fmt: skip
            legend_y += 18
    return img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories, each optionally RUN=LABEL")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metric", default="rec/prec@0.5")
    p.add_argument("--title", default="LaConvNet-T on the synthetic world, 2 CPU cores: val Prec@0.5")
    args = p.parse_args(argv)
    curves = []
    for item in args.runs:
        path, _, label = item.partition("=")
        curves.append((label or Path(path).name, read_curve(Path(path), args.metric)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    plot(curves, args.title).save(tmp, "PNG")
    tmp.replace(args.out)
    print(json.dumps({label: round(100 * c["value"][-1], 2) for label, c in curves}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

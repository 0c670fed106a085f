"""``langground lads-stats RUN --data D --split S``: how a LADS checkpoint's gates vary over a split.

Writes ``lads-stats-<split>.json`` and ``lads-stats-<split>.png`` into ``--out`` (paper Fig. 4a-d and
Fig. 7; definitions in :mod:`langground.inference.lads_stats`) and prints a short summary.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import typer

from langground.cli._common import console, user_errors
from langground.errors import LanggroundError


def _write_text_atomically(text: str, out: Path) -> None:
    from langground._files import chmod_default

    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=out.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        chmod_default(tmp, directory=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_lads_stats(
    checkpoint: Path,
    data: Path,
    split: str,
    out: Path,
    *,
    dataset: str | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> tuple[dict, Path, Path]:
    """Gather, write and return the statistics: ``(stats, json path, png path)``."""
    from langground.cli._predict_paths import save_atomically
    from langground.engine.builders import open_split, resolve_device
    from langground.engine.checkpoint import load_checkpoint
    from langground.inference.lads_plot import draw_gate_stats
    from langground.inference.lads_stats import collect_gates, gate_statistics, is_gated

    if out.exists() and not out.is_dir():
        raise LanggroundError(f"--out {out}: is a file, expected a folder for the JSON and the PNG")
    dev = resolve_device(device, option="--device")
    ckpt = load_checkpoint(checkpoint, device=dev)
    if not is_gated(ckpt.model):
        raise LanggroundError(
            f"{ckpt.path}: holds a {ckpt.config.model.name!r} model, not a LADS one: lads-stats reads the "
            "gates of a LADS checkpoint (lads_t, lads_r50)"
        )
    data_cfg = ckpt.config.data
    data_cfg.root = str(data)
    if dataset is not None and dataset != data_cfg.dataset:
        data_cfg.dataset, data_cfg.open_kwargs = dataset, {}
    records = open_split(data_cfg, split, limit)
    texts = [r.text for r in records]
    gathered = collect_gates(ckpt.model, ckpt.vocab, texts, data_cfg.max_text_length, batch_size)
    stats = {
        "checkpoint": str(ckpt.path),
        "model": ckpt.config.model.name,
        "gates": getattr(ckpt.model.config, "gates", "learned"),
        "dataset": data_cfg.dataset,
        "split": split,
        **gate_statistics(ckpt.model, gathered),
    }
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"lads-stats-{split}.json", out / f"lads-stats-{split}.png"
    _write_text_atomically(json.dumps(stats, indent=1), json_path)
    title = f"{stats['model']} · {stats['dataset']} {split} · {stats['expressions']} expressions"
    save_atomically(draw_gate_stats(stats, title), png_path, "PNG")
    return stats, json_path, png_path


@user_errors
def lads_stats(
    checkpoint: Path = typer.Argument(
        ..., metavar="RUN", help="LADS checkpoint or run directory (its best/)."
    ),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset root directory."),
    split: str = typer.Option(..., "--split", help="Split whose expressions are read (e.g. testA)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for lads-stats-<split>.json/.png."),
    dataset: str = typer.Option(
        None, "--dataset", help="Dataset name for open_dataset (default: the run's)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N expressions of the split."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Expressions per gating pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """LADS gate statistics over a split (paper Fig. 4 and 7): selection rates per layer and filter,
    kept layers / filters per expression, never- and always-selected units, word-to-layer assignment."""
    stats, json_path, png_path = run_lads_stats(
        checkpoint, data, split, out, dataset=dataset, limit=limit, batch_size=batch_size, device=device
    )
    s, lay = stats["summary"], stats["layers"]
    console.print(
        f"{stats['model']} on {stats['dataset']} {split}: {stats['expressions']} expressions, "
        f"{stats['distinct_subnets']} distinct subnets",
        highlight=False,
    )
    for key, label in (("layer_gates", "layer gates"), ("filter_gates", "filter gates")):
        c = s[key]
        console.print(
            f"  {label}: {c['gates']}, never on {c['never']}, always on {c['always']}, dynamic "
            f"{c['dynamic']} ({100 * c['dynamic_fraction']:.0f}%)",
            highlight=False,
        )
    console.print(
        f"  kept per expression: backbone {lay['backbone']['mean']:.2f}/{lay['backbone']['total']} gated "
        f"bottlenecks, fusion {lay['fusion']['mean']:.2f}/{lay['fusion']['total']} sublayers",
        highlight=False,
    )
    console.print(f"wrote {json_path} and {png_path}", highlight=False)


__all__ = ["lads_stats", "run_lads_stats"]

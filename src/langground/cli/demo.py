"""``langground demo --out DIR`` (what ``make demo`` runs): grounding from nothing, on 2 CPU cores.

1. the synthetic world in ``DIR/data/synth`` (generated once, reused afterwards),
2. ``synth-laconvnet-t-<task>`` trained into ``DIR/run`` (resumed if interrupted, reused when finished),
3. its best weights evaluated on ``testA`` and the CoGenT condition-B split ``cogentB``, per family,
4. ``DIR/predictions_grid.png``: held-out scenes with their expressions, ground truth and predictions,
5. ``DIR/summary.json``: the figures.

``--task`` picks REC (default), RES, generalized REC or VQA; each has its own preset.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import typer

from langground.cli._common import console, err_console, user_errors
from langground.errors import LanggroundError
from langground.tasks import get_task

DEMO_PRESET = "synth-laconvnet-t-rec"
#: ``--task`` -> its preset; each trains LaConvNet-T from scratch in ~10 CPU minutes.
DEMO_TASKS = {
    "rec": DEMO_PRESET,
    "res": "synth-laconvnet-t-res",
    "gref": "synth-laconvnet-t-gref",
    "vqa": "synth-laconvnet-t-vqa",
}
EVAL_SPLITS = ("testA", "cogentB")
#: The bar of the issue: REC Prec@0.5 on synthetic testA within 10 minutes of training on 2 cores.
BAR = 0.90
#: The bars per task (only REC has one).
BARS = {"rec": {"prec@0.5": BAR, "minutes": 10.0}}


def _run_state(run_dir: Path, config: Any) -> str:
    """``fresh`` (nothing usable), ``resume`` (a checkpoint to continue from) or ``done`` (finished run)."""
    from langground.config import load_config
    from langground.engine import checkpoint as ckpt_io
    from langground.engine.train import RESULT_FILE, check_resume_config

    if not run_dir.exists():
        return "fresh"
    if not run_dir.is_dir():
        raise LanggroundError(f"{run_dir}: expected the demo's run directory, found a file")
    has_ckpt = ckpt_io.latest_checkpoint(run_dir) is not None
    if not has_ckpt:
        # Stopped before its first checkpoint: nothing to resume; the trainer wants an empty directory.
        if any(run_dir.iterdir()):
            shutil.rmtree(run_dir)
        return "fresh"
    check_resume_config(config, load_config(run_dir / ckpt_io.CONFIG), run_dir)
    result_file = run_dir / RESULT_FILE
    if result_file.is_file():
        try:
            done = json.loads(result_file.read_text())
        except (OSError, json.JSONDecodeError):
            return "resume"
        saved = load_config(run_dir / ckpt_io.CONFIG)
        same_length = (saved.run.epochs, saved.run.max_steps) == (config.run.epochs, config.run.max_steps)
        finished = done.get("status") == "time_limit" or done.get("step") == done.get("total_steps")
        if done.get("status") in ("completed", "time_limit") and finished and same_length:
            return "done"
    return "resume"


def _pick_examples(records: Any, count: int, seed: int = 0) -> list[Any]:
    """``count`` records spread over families (round-robin), over different images, reproducibly."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[int]] = defaultdict(list)
    for i in range(len(records)):
        by_family[records[i].family or "-"].append(i)
    queues = {f: list(rng.permutation(ix)) for f, ix in sorted(by_family.items())}
    chosen, images = [], set()
    while len(chosen) < count and any(queues.values()):
        for fam in list(queues):
            while queues[fam]:
                rec = records[int(queues[fam].pop())]
                if rec.image_id not in images:
                    chosen.append(rec)
                    images.add(rec.image_id)
                    break
            if len(chosen) >= count:
                break
    return chosen


def draw_grid(grounder: Any, samples: list[tuple[str, Any]], path: Path, title: str) -> None:
    """The prediction grid: one tile per (split, record), written atomically: the box for REC, the mask
    for RES (judged by mask IoU), every kept box for generalized REC, the answer against the truth for
    VQA."""
    from langground.cli.predict import save_atomically
    from langground.inference.images import load_image
    from langground.inference.visualize import draw_grounding_tile, grid

    tiles = []
    for split, rec in samples:
        image = load_image(rec.image_path)
        (result,) = grounder.predict(image, [rec.text])
        if grounder.answers_questions:
            answer = result.get("answer")
            ok = answer is not None and answer == rec.answer
            note = f"{split} · {rec.family or '-'} · {answer} (truth: {rec.answer})"
            tiles.append(draw_grounding_tile(image, rec.text, None, (), correct=ok, note=note))
            continue
        gt = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        # every kept box, best first (one for REC, several for generalized REC, none for "no target")
        boxes = [b["box"] for b in result["boxes"]]
        preds = [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in boxes]
        mask = result.get("mask")
        if mask is not None and "box" not in grounder.spec.heads:
            # A mask model is judged by its mask (as RES scores it), not by the mask's bounding box.
            ok, what = _mask_verdict(mask, rec.load_mask())
            preds = []
        else:
            ok, what = _tile_verdict(preds, gt, rec.no_target)
        note = f"{split} · {rec.family or '-'} · {what}"
        tiles.append(
            draw_grounding_tile(image, rec.text, preds, gt.tolist(), correct=ok, note=note, pred_mask=mask)
        )
    save_atomically(grid(tiles, cols=4, title=title), path, "PNG")


def _mask_verdict(pred: Any, truth: np.ndarray | None) -> tuple[bool, str]:
    """Hit (mask IoU >= 0.5) or miss of a mask tile; an empty truth is a no-target expression."""
    from langground.ops.masks import mask_iou

    pred_mask = np.asarray(pred) > 127 if pred is not None else None
    if truth is None or pred_mask is None:
        return False, "no mask"
    iou = mask_iou(pred_mask, np.asarray(truth) > 0)
    return bool(iou >= 0.5), f"mask IoU {iou:.2f}"


def _tile_verdict(preds: list[list[float]], gt: np.ndarray, no_target: bool) -> tuple[bool, str]:
    """Hit or miss of one tile: every referent matched at IoU >= 0.5 by a distinct box and no extra box
    (one box for REC: its IoU); an empty answer for a no-target expression."""
    from langground.ops.boxes import box_iou

    if no_target or not len(gt):
        return not preds, "no target: " + ("none predicted" if not preds else f"{len(preds)} box(es)")
    if not preds:
        return False, "no box predicted"
    iou = box_iou(np.asarray(preds, np.float32), gt)  # (P, G)
    if len(preds) == 1 and len(gt) == 1:
        return bool(iou[0, 0] >= 0.5), f"IoU {float(iou[0, 0]):.2f}"
    matched = int(((iou >= 0.5).any(axis=0)).sum())
    return matched == len(gt) and len(preds) == len(gt), f"{matched}/{len(gt)} found, {len(preds)} box(es)"


def _family_rows(metrics: dict[str, float], key: str = "rec/prec@0.5") -> dict[str, float]:
    prefix = f"{key}/family/"
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


@user_errors
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Demo directory (world, run, pictures)."),
    task: str = typer.Option(
        "rec", "--task", "-t", help=f"What the demo learns: {', '.join(DEMO_TASKS)} (each has its preset)."
    ),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="Preset to train (default: the task's demo preset)."
    ),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value: key.path=value."),
    examples: int = typer.Option(16, "--examples", min=1, help="Scenes in the prediction grid."),
) -> None:
    """Generate the synthetic world, train LaConvNet-T on it, evaluate, and draw predictions."""
    import torch

    from langground.config import load_preset
    from langground.engine import builders
    from langground.engine import checkpoint as ckpt_io
    from langground.engine.evaluate import evaluate_model, print_result
    from langground.engine.train import TrainingDiverged, train
    from langground.inference.grounder import Grounder

    if task not in DEMO_TASKS:
        raise LanggroundError(f"--task {task!r}: expected one of {', '.join(DEMO_TASKS)}")
    config = load_preset(preset or DEMO_TASKS[task], overrides)
    if not any(o.split("=", 1)[0].strip() == "data.root" for o in overrides):
        config.data.root = str(out / "data" / "synth")
    # The demo evaluates testA / cogentB itself (per family, with the grid); no test pass inside training.
    config.data.test_splits = []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LanggroundError(f"{out}: cannot create the demo directory ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise LanggroundError(f"{out}: demo directory is not writable")
    if config.run.num_threads:
        torch.set_num_threads(config.run.num_threads)

    # 1. the world
    root = Path(config.data.root)
    fresh_world = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    t0 = time.perf_counter()
    if fresh_world:
        console.print(
            f"[bold]1/4[/] generating the synthetic world ({config.data.synth}) in {root} ...",
            highlight=False,
        )
    builders.ensure_dataset(config.data, generate=True)
    world_s = time.perf_counter() - t0
    console.print(
        f"[bold]1/4[/] synthetic world: {root} ({f'generated in {world_s:.0f}s' if fresh_world else 'reused'})",
        highlight=False,
    )

    # 2. training
    run_dir = out / "run"
    state = _run_state(run_dir, config)
    if state == "done":
        console.print(f"[bold]2/4[/] training: reusing the finished run in {run_dir}", highlight=False)
    else:
        what = "resuming" if state == "resume" else "training"
        console.print(
            f"[bold]2/4[/] {what} {config.model.name} ({config.name}) -> {run_dir}", highlight=False
        )
        try:
            result = train(config, run_dir, resume=state == "resume", console=err_console)
        except TrainingDiverged as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        if result.status not in ("completed", "time_limit"):  # the time limit is part of the recipe
            err_console.print(
                f"training {result.status} at step {result.step}/{result.total_steps}; run the demo again to "
                "continue",
                highlight=False,
            )
            raise typer.Exit(code=130 if result.status == "interrupted" else 1)
    run_result = json.loads((run_dir / "result.json").read_text())
    train_min = float(run_result.get("train_seconds", 0.0)) / 60

    # 3. evaluation of the best weights
    ckpt = ckpt_io.load_checkpoint(run_dir, device="cpu")
    console.print(f"[bold]3/4[/] evaluating {ckpt.path} on {', '.join(EVAL_SPLITS)}", highlight=False)
    figures: dict[str, Any] = {}
    records_by_split = {}
    for split in EVAL_SPLITS:
        records = builders.open_split(config.data, split)
        records_by_split[split] = records
        res = evaluate_model(
            ckpt.model, records, ckpt.config, ckpt.vocab, ckpt.answers, device=torch.device("cpu")
        )
        print_result(res, console, title=f"{split} ({res.task}, {res.count} expressions)")
        figures[split] = split_figures(res.metrics, res.task, res.count)

    # 4. the picture grid
    grounder = Grounder.from_pretrained(ckpt.path, device="cpu")
    n_b = max(1, examples // 4)
    samples = [("testA", r) for r in _pick_examples(records_by_split["testA"], examples - n_b)]
    samples += [("cogentB", r) for r in _pick_examples(records_by_split["cogentB"], n_b, seed=1)]
    grid_path = out / "predictions_grid.png"
    primary = get_task(config.model.task).primary_metric
    a, b = (figures[sp]["value"] for sp in EVAL_SPLITS)
    legend = "answer vs truth" if grounder.answers_questions else "green: hit, red: miss, dashed white: truth"
    title = (
        f"{config.model.name} after {train_min:.1f} min of training: {primary} testA {100 * (a or 0):.1f}%, "
        f"CoGenT-B {100 * (b or 0):.1f}%   ({legend})"
    )
    draw_grid(grounder, samples, grid_path, title)

    summary = {
        "preset": config.name,
        "model": config.model.name,
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt.path),
        "train_minutes": round(train_min, 2),
        "steps": run_result.get("step"),
        "epochs": run_result.get("epoch"),
        "threads": config.run.num_threads,
        "task": config.model.task,
        "metric": primary,
        "bar": BARS.get(config.model.task),
        "splits": figures,
        "grid": str(grid_path),
    }
    with open(out / ".summary.json.tmp", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    os.replace(out / ".summary.json.tmp", out / "summary.json")
    figures_line = (
        f"testA {primary} = {100 * (a or 0):.2f}%  |  CoGenT-B {primary} = {100 * (b or 0):.2f}%  |  "
        f"{train_min:.1f} min of training"
    )
    if config.model.task in BARS:
        met = a is not None and a >= BAR and train_min <= 10.0
        figures_line += (
            f"  ->  bar (>= {100 * BAR:.0f}% within 10 min): {'[green]met[/]' if met else '[red]not met[/]'}"
        )
    console.print(f"[bold]4/4[/] {grid_path}\n{figures_line}", highlight=False)


def split_figures(metrics: dict[str, float], task: str, count: int) -> dict[str, Any]:
    """One split's figures for the summary: the task's primary metric (``value``) per family, its other
    headline metrics, and for REC the classic ``prec@0.5`` / ``miou`` / ``per_family_prec@0.5``."""
    primary = get_task(task).primary_metric
    prefix = primary.split("/")[0] + "/"
    out: dict[str, Any] = {
        "metric": primary,
        "value": metrics.get(primary),
        "count": count,
        "metrics": {k: v for k, v in metrics.items() if k.startswith(prefix) and "/family/" not in k},
        "per_family": _family_rows(metrics, primary),
    }
    if primary == "rec/prec@0.5":  # REC's classic keys
        out["prec@0.5"] = metrics.get("rec/prec@0.5")
        out["miou"] = metrics.get("rec/miou")
        out["per_family_prec@0.5"] = _family_rows(metrics)
    return out

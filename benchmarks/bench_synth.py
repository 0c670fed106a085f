"""Synthetic-world throughput: images per second on one core, per stage, and for a whole world.

    .venv/bin/python benchmarks/bench_synth.py --images 300            # stages + generate_world(workers=1)
    .venv/bin/python benchmarks/bench_synth.py --images 2000 --world-only

Reports wall-clock and CPU (process) time: on a shared machine CPU time is the per-core figure; wall
time is what a user waits for. The bar is >= 50 images/s per core at 320x240.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from langground.data.synthetic import SynthConfig, generate_world
from langground.data.synthetic.expressions import generate_expressions
from langground.data.synthetic.questions import generate_questions
from langground.data.synthetic.render import render_scene
from langground.data.synthetic.scene import sample_scene
from langground.data.synthetic.writer import build_image


def _stages(config: SynthConfig, n: int) -> dict[str, float]:
    """Mean CPU milliseconds per image of each stage (in-process, no pool)."""
    totals: dict[str, float] = defaultdict(float)
    for i in range(n):
        rng = np.random.default_rng(i)
        t = time.process_time()
        scene = sample_scene(rng, config, "A")
        totals["sample_scene"] += time.process_time() - t
        t = time.process_time()
        render_scene(scene, config.size, rng)
        totals["render_scene"] += time.process_time() - t
        t = time.process_time()
        generate_expressions(scene, rng, config)
        totals["expressions"] += time.process_time() - t
        t = time.process_time()
        generate_questions(scene, rng, config)
        totals["questions"] += time.process_time() - t
    tmp = Path(tempfile.mkdtemp())
    try:
        t = time.process_time()
        for i in range(n):
            build_image(i, "train", config, tmp)
        totals["build_image (all + RLE + PNG)"] = time.process_time() - t
    finally:
        shutil.rmtree(tmp)
    return {k: 1000.0 * v / n for k, v in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--world-only", action="store_true", help="skip the per-stage breakdown")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    config = SynthConfig(images=args.images, size=(w, h))
    if not args.world_only:
        print("per-stage CPU ms/image:")
        for k, v in _stages(config, min(args.images, 200)).items():
            print(f"  {k:32s} {v:7.2f}")
    root = Path(tempfile.mkdtemp())
    try:
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        out = generate_world(root / "world", config, workers=args.workers)
        wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        manifest = json.loads((out / "dataset.json").read_text())
    finally:
        shutil.rmtree(root)
    exprs = sum(c["expressions"] for c in manifest["counts"].values())
    print(f"generate_world: {args.images} images at {w}x{h}, workers={args.workers}")
    print(
        f"  wall {wall:.2f} s -> {args.images / wall:.1f} images/s ({args.images / wall / args.workers:.1f} per worker)"
    )
    if args.workers == 1:
        print(f"  CPU  {cpu:.2f} s -> {args.images / cpu:.1f} images/s per core")
    print(f"  expressions/image {exprs / args.images:.2f}")
    print(f"  expression families {manifest['expression_families']}")
    print(f"  question families {manifest['question_families']}")


if __name__ == "__main__":
    main()

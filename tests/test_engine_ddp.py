"""Distributed data parallel: two CPU processes under torchrun (gloo) train one tiny model together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from langground.data.synthetic import SynthConfig, generate_world
from langground.engine import checkpoint as ckpt_io
from langground.engine.logging import read_jsonl
from tiny_config import TINY_MODEL, TINY_RUN

TINY = [
    *TINY_MODEL,
    *TINY_RUN,
    "run.save_steps=2",
    "run.max_steps=4",
    "run.seed=5",
    "data.train_limit=16",  # 8 samples per rank: 2 steps per epoch, so 4 steps are 2 epochs
]

# Each rank runs the Trainer and reports what it saw: its local losses, the sampler's epochs and order,
# whether it logs, and a hash of its final weights.
WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from rich.console import Console
    from langground.config import load_preset
    from langground.engine.train import TrainHooks, Trainer

    out, run_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    rank = int(os.environ["RANK"])
    local = []
    console = Console(file=open(os.path.join(out, f"console{rank}.txt"), "w"), width=200)
    trainer = Trainer(load_preset("synth-laconvnet-t-rec", overrides), run_dir, console=console,
                      hooks=TrainHooks(after_step=lambda step, values: local.append({"step": step, **values})))
    trainer.setup()
    sampler, calls, orders = trainer.sampler, [], {}
    set_epoch, indices = sampler.set_epoch, sampler._indices

    def spy_set_epoch(epoch, start=0):
        calls.append([epoch, start])
        set_epoch(epoch, start)

    def spy_indices():
        order = indices()
        orders[str(sampler.epoch)] = order
        return order

    sampler.set_epoch, sampler._indices = spy_set_epoch, spy_indices
    result = trainer.fit()
    params = [p.detach().numpy().tobytes() for p in trainer.model.parameters()]
    weights = hashlib.sha256(b"".join(params)).hexdigest()
    report = {
        "rank": trainer.info.rank, "world_size": trainer.info.world_size, "is_main": trainer.is_main,
        "logs": trainer.logger.jsonl is not None, "local": local, "set_epoch": calls, "orders": orders,
        "weights": weights, "status": result.status, "val_count": result.val.get("rec/count"),
    }
    trainer.close()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    """
)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_two_processes_train_together(tmp_path):
    world = generate_world(tmp_path / "synth", SynthConfig(images=24, size=(96, 72), seed=0), workers=1)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
        str(run_dir),
        f"data.root={world}",
        *TINY,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    print(f"torchrun took {time.perf_counter() - t0:.1f}s")
    assert proc.returncode == 0, proc.stderr[-4000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["is_main"], r["logs"]) for r in reports] == [
        (0, 2, True, True),
        (1, 2, False, False),
    ]
    assert all(
        r["status"] == "completed" and [s["step"] for s in r["local"]] == [1, 2, 3, 4] for r in reports
    )
    # gradients were averaged: one model (the BatchNorm buffers are rank 0's, broadcast at each forward)
    assert reports[0]["weights"] == reports[1]["weights"]

    # data order: DistributedSampler's shards of (seed, epoch), set_epoch once per epoch
    for r in reports:
        assert r["set_epoch"] == [[0, 0], [1, 0]]
        for epoch in (0, 1):
            reference = DistributedSampler(range(16), num_replicas=2, rank=r["rank"], shuffle=True, seed=5)
            reference.set_epoch(epoch)
            assert r["orders"][str(epoch)] == list(reference)
    for epoch in ("0", "1"):
        assert sorted(reports[0]["orders"][epoch] + reports[1]["orders"][epoch]) == list(range(16))
    assert reports[0]["orders"]["0"] != reports[0]["orders"]["1"]

    # rank 0 alone logs; the logged losses are the mean over the ranks
    logged = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for row, a, b in zip(logged, reports[0]["local"], reports[1]["local"], strict=True):
        assert a["loss"] != b["loss"]  # the ranks saw different samples
        for key in ("loss", "loss_giou", "loss_l1", "loss_obj"):
            assert row[key] == pytest.approx((a[key] + b[key]) / 2, rel=1e-12)
    (val,) = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "val"]
    assert val["rec/count"] == 6 and all(r["val_count"] == 6 for r in reports)  # both shards, merged
    assert (tmp_path / "console1.txt").read_text() == "" and "training laconvnet_t" in (
        tmp_path / "console0.txt"
    ).read_text()
    assert [p.name for p in ckpt_io.list_checkpoints(run_dir)] == ["step-00000002", "step-00000004"]
    assert ckpt_io.load_trainer_state(run_dir / "checkpoints" / "step-00000004")["world_size"] == 2
    assert len(ckpt_io.load_trainer_state(run_dir / "checkpoints" / "step-00000004")["rng"]) == 2

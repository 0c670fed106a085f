"""Stateful, cross-rank losses under DDP: two CPU processes (torchrun, gloo) train a model whose criterion
all-reduces a batch statistic and gathers every rank's features into a queue; the state is the same on
both ranks, saved per rank with the trainer state, and a resumed run ends with the same state as an
uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from langground.data.synthetic import SynthConfig, generate_world
from langground.engine import checkpoint as ckpt_io
from langground.engine.logging import read_jsonl
from tiny_config import TINY_RUN

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    from rich.console import Console
    from langground.config import load_preset
    from langground.engine.train import TrainHooks, Trainer
    from toy_models import register_toy_models

    register_toy_models()
    out, run_dir, resume, overrides = sys.argv[2], sys.argv[3], sys.argv[4] == "resume", sys.argv[5:]
    rank = int(os.environ["RANK"])
    seen = []
    usage = None
    trainer = Trainer(load_preset("synth-laconvnet-t-rec", overrides), run_dir, resume=resume,
                      console=Console(file=open(os.devnull, "w")))
    trainer.setup()
    module = trainer.criterion.loss_modules["usage"]
    original = module.forward

    def spy(outputs, targets):
        seen.append(outputs["gates"].detach().float().mean(0).tolist())  # this rank's own batch
        return original(outputs, targets)

    module.forward = spy
    result = trainer.fit()
    state = {k: v.tolist() for k, v in trainer.criterion.state_dict().items()}
    trainer.close()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"state": state, "local_usage": seen, "status": result.status, "step": result.step}, f)
    """
)

TINY = [
    *TINY_RUN,
    "model.name=toy_gated_rec",
    "model.kwargs={}",
    "transforms.input_size=64",
    "run.ema=false",
    "run.seed=3",
    # a constant lr: the run stopped at step 2 and the one to step 4 then take the same first steps
    "schedule.name=constant",
    "schedule.warmup_epochs=0",
    "data.train_limit=16",  # 8 samples per rank: 2 steps of 4 per epoch
]


def _torchrun(tmp_path: Path, run_dir: Path, world: Path, resume: bool, *extra: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = tmp_path / ("out-resume" if resume else f"out-{run_dir.name}")
    out.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
        str(Path(__file__).parent), str(out), str(run_dir), "resume" if resume else "fresh",
        f"data.root={world}", *TINY, *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_cross_rank_loss_state_is_shared_saved_and_resumed(tmp_path):
    world = generate_world(tmp_path / "synth", SynthConfig(images=24, size=(96, 72), seed=0), workers=1)
    full = _torchrun(tmp_path, tmp_path / "full", world, False, "run.max_steps=4", "run.save_steps=2")
    assert all(r["status"] == "completed" and r["step"] == 4 for r in full)

    # One state on both ranks: the statistic is all-reduced and the queue holds both ranks' features.
    assert full[0]["state"] == full[1]["state"]
    assert full[0]["state"]["loss_modules.usage.filled"] == 4 * 2 * 4  # steps x ranks x batch
    # The all-reduced usage is the mean of the two ranks' own batches: replay the EMA from their means.
    ema = torch.zeros(4, dtype=torch.float64)
    for a, b in zip(full[0]["local_usage"], full[1]["local_usage"], strict=True):
        assert a != b  # the ranks saw different samples
        ema = (
            0.5 * ema
            + 0.5 * (torch.tensor(a, dtype=torch.float64) + torch.tensor(b, dtype=torch.float64)) / 2
        )
    assert torch.allclose(
        torch.tensor(full[0]["state"]["loss_modules.usage.usage_ema"]).double(), ema, atol=1e-6
    )
    logged = [r for r in read_jsonl(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    assert all("loss_usage" in r for r in logged)

    # Saved per rank with the trainer state.
    state = ckpt_io.load_trainer_state(tmp_path / "full" / "checkpoints" / "step-00000004")
    assert len(state["criterion"]) == 2
    assert (
        state["criterion"][0]["loss_modules.usage.queue"].tolist()
        == full[0]["state"]["loss_modules.usage.queue"]
    )

    # Stop at step 2, resume to 4: the same state as the uninterrupted run.
    _torchrun(tmp_path, tmp_path / "half", world, False, "run.max_steps=2", "run.save_steps=2")
    resumed = _torchrun(tmp_path, tmp_path / "half", world, True, "run.max_steps=4", "run.save_steps=2")
    assert resumed[0]["state"] == full[0]["state"] and resumed[1]["state"] == full[1]["state"]


RAGGED = textwrap.dedent(
    """
import torch, torch.distributed as dist
import torch.nn.functional as F
dist.init_process_group("gloo")
r = dist.get_rank()
from langground.ops import distributed as D
from langground.tasks.retrieval import contrastive_terms
from langground.types import Targets
torch.manual_seed(r)
nimg, ntxt = (2, 3) if r == 0 else (3, 5)
images = F.normalize(torch.randn(nimg, 4), dim=-1).requires_grad_()
texts = F.normalize(torch.randn(ntxt, 4), dim=-1).requires_grad_()
idx = torch.tensor([0, 1, 1] if r == 0 else [0, 1, 2, 2, 0])
t = Targets([torch.zeros(0, 4)] * ntxt, None, torch.zeros(ntxt, dtype=torch.bool), -torch.ones(ntxt, dtype=torch.long), image_index=idx)
loss = contrastive_terms({"pred_image_embed": images, "pred_text_embed": texts, "logit_scale": torch.tensor(5.0)}, t)["loss_itc"]
loss.backward()
allobj = [None, None]; dist.all_gather_object(allobj, (images.detach(), texts.detach(), idx))
I = torch.cat([a[0] for a in allobj]); T = torch.cat([a[1] for a in allobj])
off = 0 if r == 0 else 2; toff = 0 if r == 0 else 3
gidx = torch.cat([allobj[0][2], allobj[1][2] + 2])
t2i = F.cross_entropy(5 * texts.detach() @ I.t(), idx + off)
pos = (gidx[None] == torch.arange(off, off + nimg)[:, None]).float()
i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(5 * images.detach() @ T.t(), 1)).sum(1).mean()
import json, sys
open(sys.argv[1] + f"/rank{r}.json", "w").write(json.dumps([float(loss), float((t2i + i2t) / 2), bool(images.grad.abs().sum() > 0)]))
dist.barrier()
dist.destroy_process_group()
# Skip interpreter finalisation: gloo work objects still holding tensors of the autograd collectives
# can abort it (SIGABRT, 'terminate called without an active exception', pytorch/pytorch#179291);
# the results are written and the group is destroyed.
import os; sys.stdout.flush(); os._exit(0)
"""
)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_contrastive_loss_over_ranks_with_different_image_and_text_counts(tmp_path):
    """Whole images per batch give ranks different numbers of images and texts: the retrieval loss gathers
    both raggedly and equals the loss recomputed from every rank's rows."""
    script = tmp_path / "ragged.py"
    script.write_text(RAGGED)
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
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for r in (0, 1):
        loss, expected, has_grad = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert loss == pytest.approx(expected, rel=1e-6) and has_grad

"""SLAN: region filter, region adaptor, Eq. 3, ITC queues through a checkpoint, ITM hard negatives, MLM
masking, the model's pre-training and grounding outputs, and (2 processes, gloo) the cross-rank gathers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou

from langground.layers.region_adaptor import AdaptorLevel, roi_embed, sample_embed
from langground.layers.region_filter import filter_regions
from langground.layers.slan_objectives import (
    QueueContrastive,
    hard_negatives,
    mask_tokens,
    progressive_regression_loss,
)
from langground.losses import build_criterion
from langground.registry import create_model
from langground.types import PhraseQueries, Targets, TextBatch


def test_region_filter_normalises_sorts_thresholds_and_caps_by_hand():
    s = torch.tensor([[0.2, 0.8, 0.5, 0.1, 0.44, 0.6]])  # max 0.8 -> 0.25 1 0.625 0.125 0.55 0.75
    out = filter_regions(s, top_k=3, threshold=0.5)
    assert out.index.tolist() == [[1, 5, 2]]  # sorted, the first T = 3
    assert out.scores[0].tolist() == pytest.approx([1.0, 0.75, 0.625])
    assert out.keep.tolist() == [[True, True, True]]
    out = filter_regions(s, top_k=5, threshold=0.7)  # 0.625 and 0.55 fall under h
    assert out.index.tolist() == [[1, 5, 2, 4, 0]]
    assert out.keep.tolist() == [[True, True, False, False, False]]
    assert out.scores[0].tolist() == pytest.approx([1.0, 0.75, 0, 0, 0])
    everything = filter_regions(s, top_k=None, threshold=None)  # Table 6's first row
    assert everything.keep.all() and everything.index.shape == (1, 6)
    x = torch.arange(6.0).view(1, 6, 1)
    assert out.gather(x).flatten().tolist() == [1, 5, 2, 4, 0]


def test_box_sampling_equals_torchvision_roi_align_and_passes_gradients_to_boxes():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 8, 12)
    boxes = torch.tensor([[[0.4, 0.5, 0.3, 0.4], [0.7, 0.3, 0.2, 0.2]]] * 2, requires_grad=True)
    ours = sample_embed(f, boxes)
    assert torch.allclose(ours, roi_embed(f, boxes.detach()), atol=1e-5)
    rows = torch.tensor([1, 1, 0])  # pairs reading other images' maps
    assert torch.allclose(
        sample_embed(f, boxes[[0, 0, 1]].detach(), rows),
        roi_embed(f, boxes[[0, 0, 1]].detach(), rows),
        atol=1e-5,
    )
    ours.sum().backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0


def test_region_adaptor_moves_a_region_toward_the_word_similar_neighbour():
    torch.manual_seed(0)
    d = 8
    level = AdaptorLevel(d, heads=2, ratio=0.6, k=3, sim_temperature=0.05)
    with torch.no_grad():
        level.cell_proj.weight.copy_(torch.eye(d))
        level.cell_proj.bias.zero_()
    feature = torch.zeros(1, d, 30, 30)
    feature[0, 0] = 0.1  # background: another direction than the word
    feature[0, 1, 4:12, 18:26] = 5.0  # the word's direction, up and right of the region
    word = torch.zeros(1, 1, d)
    word[0, 0, 1] = 1.0
    level.attention = _Identity()  # Eq. 1 off: the words are exactly the hand-made one
    box = torch.tensor([[[0.5, 0.5, 0.1, 0.1]]])
    _, _, moved, s = level(torch.zeros(1, 1, d), torch.ones(1, 1, dtype=torch.bool), box, word,
                           torch.ones(1, 1, dtype=torch.bool), feature)  # fmt: skip
    # cell j = (a = j // 3 along x, b = j % 3 along y): the up-right cell is a = +1, b = -1 -> j = 6
    assert int(s[0, 0].argmax()) == 6
    dx, dy = (moved[0, 0, :2] - box[0, 0, :2]).tolist()
    assert dx > 0.1 and dy < -0.1  # toward the feature: right and up, about one cell (0.2)
    assert moved[0, 0, 2:].tolist() == pytest.approx([0.1, 0.1])  # p_w = p_h = 1 at the start


class _Identity(torch.nn.Module):
    def forward(self, regions, keep, words, mask):
        return regions, words


def test_progressive_regression_loss_by_hand():
    g = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])
    g1 = torch.tensor([[[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]])
    g2 = torch.tensor([[[0.4, 0.7, 0.2, 0.4], [0.9, 0.9, 0.1, 0.1]]])
    keep = torch.tensor([[True, False]])  # only the first region is kept
    out = progressive_regression_loss(g, [g1, g2], keep)
    mean = torch.tensor([0.5, 0.6, 0.2, 0.3])  # g_bar of region 0
    assert float(out["loss_reg_l1"]) == pytest.approx(float((g[0, 0] - mean).abs().sum()))  # 0 + .1 + 0 + .1
    xyxy = lambda b: torch.cat([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2])[None]  # noqa: E731
    giou = generalized_box_iou(xyxy(g[0, 0]), xyxy(mean))[0, 0]
    assert float(out["loss_reg_giou"]) == pytest.approx(float(1 - giou), rel=1e-5)
    # centres only (reg_sizes=False): the target keeps the detector's w, h
    centres = progressive_regression_loss(g, [g1, g2], keep, sizes=False)
    assert float(centres["loss_reg_l1"]) == pytest.approx(0.1)  # |0.5 - 0.6| in y only
    # g_bar is a target: only the detector's boxes get gradients
    g.requires_grad_(True)
    g1.requires_grad_(True)
    progressive_regression_loss(g, [g1, g2], keep)["loss_reg_l1"].backward()
    assert g.grad.abs().sum() > 0 and g1.grad is None


def test_hard_negatives_never_pick_a_positive():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(4, 6), dim=-1)
    index = torch.tensor([0, 0, 1, 2, 3, 3])
    texts = F.normalize(images[index] + 0.01 * torch.randn(6, 6), dim=-1)  # positives are the most similar
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        neg_img, neg_txt = hard_negatives(texts, images, texts, images, index, index, 0, 20.0, "sample", g)
        assert (neg_img != index).all()
        assert (index[neg_txt] != torch.arange(4)).all()
    hard_img, _ = hard_negatives(texts, images, texts, images, index, index, 0, 20.0, "hardest")
    sim = (texts @ images.t()).masked_fill(index[:, None] == torch.arange(4)[None], -9)
    assert hard_img.tolist() == sim.argmax(1).tolist()


def test_mlm_masks_fifteen_percent_of_real_tokens_and_never_padding():
    ids = torch.randint(2, 50, (400, 30))
    real = torch.ones_like(ids, dtype=torch.bool)
    real[:, 20:] = False  # padding
    ids[~real] = 0
    masked, labels, sel = mask_tokens(
        ids, real, mask_id=50, vocab_size=50, generator=torch.Generator().manual_seed(0)
    )
    assert not sel[:, 20:].any() and (labels[:, 20:] == -100).all()
    assert float(sel[:, :20].float().mean()) == pytest.approx(0.15, abs=0.01)
    assert (labels[sel] == ids[sel]).all() and (labels[~sel] == -100).all()
    assert float((masked[sel] == 50).float().mean()) == pytest.approx(0.8, abs=0.04)  # 80/10/10
    assert (masked[~sel] == ids[~sel]).all()


def _targets(index):
    n = len(index)
    return Targets([torch.zeros(0, 4)] * n, None, torch.zeros(n, dtype=torch.bool), -torch.ones(n, dtype=torch.long),
                   image_index=torch.tensor(index))  # fmt: skip


def test_itc_queue_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = QueueContrastive(dim=4, queue_size=5).train()
    out = {"pred_image_embed": F.normalize(torch.randn(2, 4), dim=-1),
           "pred_text_embed": F.normalize(torch.randn(3, 4), dim=-1), "logit_scale": torch.tensor(10.0)}  # fmt: skip
    first = module(out, _targets([0, 0, 1]))["loss_itc"]
    # by hand: no queue yet -> in-batch ITC
    logits = 10 * out["pred_text_embed"] @ out["pred_image_embed"].t()
    t2i = F.cross_entropy(logits, torch.tensor([0, 0, 1]))
    lp = (10 * out["pred_image_embed"] @ out["pred_text_embed"].t()).log_softmax(1)
    i2t = -((lp[0, 0] + lp[0, 1]) / 2 + lp[1, 2]) / 2
    assert float(first) == pytest.approx(float((t2i + i2t) / 2), rel=1e-5)
    assert int(module.filled_images) == 2 and int(module.filled_texts) == 3
    assert torch.equal(module.image_queue[:2], out["pred_image_embed"])
    torch.save(module.state_dict(), tmp_path / "itc.pt")
    restored = QueueContrastive(dim=4, queue_size=5).train()
    restored.load_state_dict(torch.load(tmp_path / "itc.pt"))
    second = {k: v.flip(0) if v.dim() else v for k, v in out.items()}
    assert float(module(second, _targets([0, 1, 1]))["loss_itc"]) == float(
        restored(second, _targets([0, 1, 1]))["loss_itc"]
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(module.state_dict().values(), restored.state_dict().values(), strict=True)
    )
    # the queue's rows are extra negatives: the loss with a filled queue differs from in-batch ITC
    in_batch = build_criterion("retrieval")(second, _targets([0, 1, 1]))["loss_itc"]
    assert float(restored(second, _targets([0, 1, 1]))["loss_itc"]) > float(in_batch)


def _batch(n_img=2, per=2, length=5, vocab=40):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (n_img * per, length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[-1, -2:] = False
    ids[~mask] = 0
    return (torch.randn(n_img, 3, 64, 64, generator=g),
            TextBatch(ids, mask, image_index=torch.arange(n_img).repeat_interleave(per)))  # fmt: skip


def test_pretraining_forward_gives_every_loss_and_the_criterion_replaces_in_batch_itc():
    torch.manual_seed(0)
    model = create_model("slan_t", vocab_size=40, input_size=64, dropout=0.0).train()
    images, text = _batch()
    out = model(images, text)
    assert set(out["losses"]) == {"loss_itm", "loss_mlm", "loss_reg_l1", "loss_reg_giou"}
    assert out["pred_image_embed"].shape == (2, 128) and out["pred_text_embed"].shape == (4, 128)
    crit = build_criterion("retrieval", model)
    losses = crit(out, _targets(text.image_index.tolist()))
    assert {"loss_itc", "loss_itm", "loss_mlm", "loss_reg_l1", "loss_reg_giou"} <= set(losses)
    assert int(crit.loss_modules["itc"].filled_images) == 2  # the queue module ran
    assert float(out["losses"]["loss_itm"].detach()) == pytest.approx(
        0.6931, abs=0.3
    )  # 2-way, near chance at init
    # no adaptor (Table 5's 0 rows): no regression loss, ITM / MLM on the unimodal features
    flat = create_model("slan_t", vocab_size=40, input_size=64, adaptor_levels=0).train()
    assert set(flat(images, text)["losses"]) == {"loss_itm", "loss_mlm"}


def test_grounding_picks_the_region_most_similar_to_the_expression_and_each_phrase():
    torch.manual_seed(0)
    model = create_model("slan_t", task="rec", vocab_size=40, input_size=64).eval()
    images, text = _batch()
    with torch.no_grad():
        out = model(images, text)
    best = out["aux"]["region_logits"].argmax(1)
    assert torch.equal(out["pred_boxes"], out["aux"]["region_boxes"][torch.arange(4), best])
    phrase = create_model("slan_t", task="phrase", vocab_size=40, input_size=64).eval()
    spans = torch.tensor([[[0, 2], [2, 4]]] * 4)
    with torch.no_grad():
        p = phrase(images, text, PhraseQueries(spans, torch.ones(4, 2, dtype=torch.bool)))
    assert p["pred_boxes"].shape == (4, 2, 4) and p["query_mask"].all()


DDP = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist, torch.nn.functional as F
    dist.init_process_group("gloo")
    r = dist.get_rank()
    sys.path.insert(0, sys.argv[2])
    from slan_ddp_inputs import step_inputs
    from langground.layers.slan_objectives import QueueContrastive, gathered_index, hard_negatives
    from langground.models.slan_parts import world
    module = QueueContrastive(4, 6).train()
    res = []
    for step in range(3):
        images, texts, index = step_inputs(step, rank=r)
        out = {"pred_image_embed": images, "pred_text_embed": texts, "logit_scale": torch.tensor(8.0)}
        t = type("T", (), {"image_index": index})()
        loss = module(out, t)["loss_itc"]
        gi, ai, off = gathered_index(texts, images, index)
        ni, nt = hard_negatives(texts, images, world(texts), world(images), gi, ai, off, 8.0, "hardest")
        res.append([float(loss), ni.tolist(), nt.tolist()])
    state = {k: v.tolist() for k, v in module.state_dict().items()}
    open(sys.argv[1] + f"/rank{r}.json", "w").write(json.dumps({"steps": res, "state": state}))
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter finalisation: gloo work objects still holding tensors of the autograd collectives
    # can abort it (SIGABRT, 'terminate called without an active exception', pytorch/pytorch#179291);
    # the results are written and the group is destroyed.
    import os; sys.stdout.flush(); os._exit(0)
    """
)
INPUTS = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    def step_inputs(step, rank=None):
        g = torch.Generator().manual_seed(100 + step)
        images = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
        local = torch.tensor([0, 0, 1, 2, 2, 1])  # each rank: 3 images, 6 captions
        glob = torch.cat([local, local + 3])
        texts = F.normalize(images[glob] + 0.8 * torch.randn(12, 4, generator=g), dim=-1)
        if rank is None:  # one process, the doubled batch: rank 0's rows then rank 1's
            return images, texts, glob
        return images[3 * rank : 3 * rank + 3], texts[6 * rank : 6 * rank + 6], local
    """
)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_two_ranks_gather_queues_and_hard_negatives_like_one_process_with_the_doubled_batch(tmp_path):
    (tmp_path / "w.py").write_text(DDP)
    (tmp_path / "slan_ddp_inputs.py").write_text(INPUTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "w.py"), str(tmp_path), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["state"] == ranks[1]["state"]  # every rank queued every rank's rows
    sys.path.insert(0, str(tmp_path))
    from slan_ddp_inputs import step_inputs

    from langground.layers.slan_objectives import gathered_index

    single = QueueContrastive(4, 6).train()
    for step in range(3):
        images, texts, index = step_inputs(step)
        loss = single({"pred_image_embed": images, "pred_text_embed": texts, "logit_scale": torch.tensor(8.0)},
                      _targets(index.tolist()))["loss_itc"]  # fmt: skip
        gi, ai, off = gathered_index(texts, images, index)
        ni, nt = hard_negatives(texts, images, texts, images, gi, ai, off, 8.0, "hardest")
        # the doubled batch's text and image means are the means of the two ranks' (equal counts)
        assert float(loss) == pytest.approx(
            (ranks[0]["steps"][step][0] + ranks[1]["steps"][step][0]) / 2, rel=1e-5
        )
        assert ni.tolist() == ranks[0]["steps"][step][1] + ranks[1]["steps"][step][1]
        assert nt.tolist() == ranks[0]["steps"][step][2] + ranks[1]["steps"][step][2]
    sys.path.remove(str(tmp_path))
    for k, v in single.state_dict().items():
        assert torch.allclose(v.float(), torch.tensor(ranks[0]["state"][k]).float(), atol=1e-6), k

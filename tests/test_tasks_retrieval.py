"""The retrieval task: contrastive loss (hand-checked), training through the engine, gallery R@K."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from langground.config import load_preset
from langground.data.synthetic import SynthConfig, generate_world
from langground.engine.builders import open_split
from langground.engine.checkpoint import load_checkpoint
from langground.engine.evaluate import evaluate_model
from langground.engine.train import train
from langground.losses import build_criterion
from langground.tasks import get_task
from langground.types import Targets
from tiny_config import TINY_RUN
from toy_models import registered_toy_models


def _targets(n: int, image_index: list[int] | None) -> Targets:
    return Targets(
        [torch.zeros(0, 4)] * n,
        None,
        torch.zeros(n, dtype=torch.bool),
        -torch.ones(n, dtype=torch.long),
        image_index=None if image_index is None else torch.tensor(image_index),
    )


def test_contrastive_loss_by_hand_with_several_texts_per_image():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(2, 5), dim=-1)
    texts = F.normalize(torch.randn(3, 5), dim=-1)
    index = [0, 0, 1]  # texts 0 and 1 describe image 0
    out = {"pred_image_embed": images, "pred_text_embed": texts, "logit_scale": torch.tensor(10.0)}
    loss = build_criterion("retrieval")(out, _targets(3, index))
    logits = 10.0 * texts @ images.t()
    t2i = -torch.stack([logits[n].log_softmax(0)[index[n]] for n in range(3)]).mean()
    i2t_logp = (10.0 * images @ texts.t()).log_softmax(1)
    i2t = -((i2t_logp[0, 0] + i2t_logp[0, 1]) / 2 + i2t_logp[1, 2]) / 2
    assert float(loss["loss_itc"]) == pytest.approx(float((t2i + i2t) / 2), rel=1e-6)
    assert float(loss["loss"]) == pytest.approx(float(loss["loss_itc"]))


def test_contrastive_loss_without_an_index_pairs_row_n_with_image_n():
    images = torch.eye(3)
    out = {"pred_image_embed": images, "pred_text_embed": images.clone()}  # default scale 1/0.07
    perfect = build_criterion("retrieval")(out, _targets(3, None))["loss_itc"]
    swapped = build_criterion("retrieval")({**out, "pred_text_embed": images[[1, 0, 2]]}, _targets(3, None))
    assert float(perfect) < 1e-5 < float(swapped["loss_itc"])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synth"
    return generate_world(root, SynthConfig(images=32, size=(96, 72), seed=1), workers=1)


def test_a_dual_encoder_trains_and_is_scored_over_the_gallery(world, tmp_path):
    with registered_toy_models():
        config = load_preset(
            "synth-laconvnet-t-rec",
            [
                f"data.root={world}",
                "model.name=toy_dual_encoder",
                "model.task=retrieval",
                "model.kwargs={}",
                "transforms.input_size=64",
                *TINY_RUN,
                "run.epochs=15",
                "run.batch_size=8",
                "run.ema=false",
                "optim.lr=0.01",
                "data.eval_limit=null",
            ],
        )
        result = train(config, tmp_path / "run", console=Console(file=io.StringIO()))
        assert result.status == "completed" and result.main_metric == "retrieval/rsum"
        ckpt = load_checkpoint(tmp_path / "run" / "best")
        records = open_split(ckpt.config.data, "train")  # a gallery of ~26 images
        kwargs = dict(device=torch.device("cpu"))
        by_8 = evaluate_model(ckpt.model, records, ckpt.config, ckpt.vocab, None, batch_size=8, **kwargs)
        by_3 = evaluate_model(ckpt.model, records, ckpt.config, ckpt.vocab, None, batch_size=3, **kwargs)

        # Batching does not change the gallery: every text once, every distinct image once.
        assert by_8.metrics == by_3.metrics
        images = {r.image_id for r in records}
        assert by_8.metrics["retrieval/count"] == len(records)
        assert by_8.metrics["retrieval/count/images"] == len(images)

        # With whole images per batch the vision tower sees each distinct image once, with the same metrics.
        ckpt.model.images_encoded = 0
        evaluate_model(ckpt.model, records, ckpt.config, ckpt.vocab, None, batch_size=8, **kwargs)
        assert ckpt.model.images_encoded == len(records)
        ckpt.config.data.group_by_image = True
        ckpt.model.images_encoded = 0
        grouped = evaluate_model(ckpt.model, records, ckpt.config, ckpt.vocab, None, batch_size=4, **kwargs)
        assert ckpt.model.images_encoded == len(images) < len(records)
        assert grouped.metrics == pytest.approx(by_8.metrics, abs=1e-6)
        ckpt.config.data.group_by_image = False

        # R@1 text->image by brute force over embeddings computed one record at a time.
        scorer = get_task("retrieval").output_scorer(None)
        from langground.engine.builders import Precision, build_dataset, make_loader
        from langground.engine.evaluate import iterate_outputs

        loader = make_loader(build_dataset(records, ckpt.config, None, train=False), ckpt.vocab, ckpt.config,
                             ckpt.config.run, batch_size=1)  # fmt: skip
        for batch, outputs, recs in iterate_outputs(
            ckpt.model, loader, torch.device("cpu"), Precision(None, False)
        ):
            scorer.update(recs, outputs, batch.text.image_index)
        sim, gt = scorer.similarity()
        ranks = np.array([(sim[t] > sim[t, gt[t]]).sum() for t in range(len(gt))])
        assert by_8.metrics["retrieval/r@1_t2i"] == pytest.approx(float((ranks == 0).mean()), abs=1e-6)
        # and the trained encoder is twice chance or better (1 / gallery size) on the images it trained on
        assert len(images) >= 20 and by_8.metrics["retrieval/r@1_t2i"] > 2 / len(images)

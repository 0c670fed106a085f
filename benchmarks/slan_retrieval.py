"""SLAN retrieval on a split's whole gallery: ITC ranking, ITM re-ranking of the ITC top-k (ALBEF's
protocol: inside the top-k the ITM match probability decides, outside it ranks last), and chance.

    .venv/bin/python benchmarks/slan_retrieval.py runs/slan-t-full runs/slan-t-noadaptor --split testA

Prints a markdown table of R@1/5/10 both ways, the mean recall (rsum / 6) and the rsum, x100.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from langground.engine.builders import Precision, build_dataset, make_loader, open_split
from langground.engine.checkpoint import load_checkpoint
from langground.engine.evaluate import iterate_outputs
from langground.engine.metrics.retrieval import retrieval_ranks

KS = (1, 5, 10)


def chance(num_images: int, captions: list[int], k: int) -> tuple[float, float]:
    """Expected R@k of a random ranking: t2i = k / I; i2t = 1 - C(T - c, k) / C(T, k) averaged over images."""
    t = sum(captions)
    i2t = np.mean([1 - math.comb(t - c, k) / math.comb(t, k) for c in captions])
    return min(k / num_images, 1.0), float(i2t)


def recalls(rank_t2i: np.ndarray, rank_i2t: np.ndarray) -> dict[str, float]:
    out = {f"r@{k}_i2t": float((rank_i2t < k).mean()) for k in KS}
    out.update({f"r@{k}_t2i": float((rank_t2i < k).mean()) for k in KS})
    out["mean"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def gallery(model, records, config, vocab):
    """ITC embeddings and the SLAN states of every image and text of ``records`` (grouped by image)."""
    config.data.group_by_image = True
    loader = make_loader(
        build_dataset(records, config, None, train=False), vocab, config, config.run, batch_size=16
    )
    img_ids, img_emb, txt_img, txt_emb, states, texts = [], [], [], [], [], []
    for batch, outputs, recs in iterate_outputs(model, loader, torch.device("cpu"), Precision(None, False)):
        index = batch.text.image_index.tolist()
        base = len(img_ids)
        ids_here = {}
        for rec, row in zip(recs, index, strict=True):
            ids_here.setdefault(row, rec.image_id)
        img_ids.extend(ids_here[r] for r in range(len(ids_here)))
        img_emb.append(outputs["pred_image_embed"])
        txt_emb.append(outputs["pred_text_embed"])
        txt_img.extend(base + r for r in index)
        states.append(model.encode_image(batch.images))
        texts.append(model.encode_text(batch.text))
    return img_ids, torch.cat(img_emb), torch.cat(txt_emb), np.array(txt_img), states, texts


@torch.no_grad()
def itm_matrix(model, states, texts, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """ITM match probability of (image, text) gallery pairs."""
    img_rows = [(b, j) for b, s in enumerate(states) for j in range(s["embed"].shape[0])]
    txt_rows = [(b, j) for b, (w, _) in enumerate(texts) for j in range(w.shape[0])]
    width = max(w.shape[1] for w, _ in texts)
    pad = lambda w: torch.nn.functional.pad(w, (0, 0, 0, width - w.shape[1]))  # noqa: E731
    words = torch.cat([pad(w) for w, _ in texts])
    masks = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in texts])
    flat = {k: torch.cat([s[k] for s in states]) for k in ("regions", "keep", "boxes")}
    flat["features"] = [
        torch.cat([s["features"][i] for s in states]) for i in range(len(states[0]["features"]))
    ]
    del img_rows, txt_rows
    out = {}
    for start in range(0, len(pairs), 256):
        chunk = torch.tensor(pairs[start : start + 256])
        regions, fused, _ = model.fuse(flat, chunk[:, 0], words[chunk[:, 1]], masks[chunk[:, 1]])
        keep = flat["keep"].index_select(0, chunk[:, 0])
        p = model.itm_head(model.cls_pair(regions, keep, fused)).softmax(-1)[:, 1]
        out.update({tuple(pr): float(v) for pr, v in zip(chunk.tolist(), p, strict=True)})
    return out


def evaluate(run: Path, split: str, rerank_k: int) -> tuple[dict[str, dict[str, float]], int, list[int]]:
    ckpt = load_checkpoint(run)
    records = open_split(ckpt.config.data, split)
    _, img, txt, txt_img, states, texts = gallery(ckpt.model, records, ckpt.config, ckpt.vocab)
    sim = (txt @ img.t()).numpy()
    pos = np.zeros(sim.shape, dtype=bool)
    pos[np.arange(len(txt_img)), txt_img] = True
    r_t, r_i = retrieval_ranks(sim, pos)
    rows = {"ITC": recalls(r_t, r_i)}
    if rerank_k and hasattr(ckpt.model, "itm_head"):
        k = rerank_k
        top_t2i = np.argsort(-sim, axis=1)[:, :k]  # (T, k) images per text
        top_i2t = np.argsort(-sim, axis=0)[:k].T  # (I, k) texts per image
        pairs = sorted({(int(i), t) for t in range(sim.shape[0]) for i in top_t2i[t]}
                       | {(i, int(t)) for i in range(sim.shape[1]) for t in top_i2t[i]})  # fmt: skip
        itm = itm_matrix(ckpt.model, states, texts, pairs)
        s_t2i = np.full(sim.shape, -100.0)
        s_i2t = np.full(sim.shape, -100.0)
        for t in range(sim.shape[0]):
            for i in top_t2i[t]:
                s_t2i[t, i] = itm[(int(i), t)]
        for i in range(sim.shape[1]):
            for t in top_i2t[i]:
                s_i2t[t, i] = itm[(i, int(t))]
        rt, _ = retrieval_ranks(s_t2i, pos)
        _, ri = retrieval_ranks(s_i2t, pos)
        rows[f"ITC + ITM re-rank (top {k})"] = recalls(rt, ri)
    return rows, sim.shape[1], pos.sum(0).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="testA")
    ap.add_argument("--rerank-k", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = []
    n_img = caps = None
    for run in args.runs:
        rows, n_img, caps = evaluate(run, args.split, args.rerank_k)
        table += [(f"{run.name}: {name}", r) for name, r in rows.items()]
    ch = {f"r@{k}_{d}": chance(n_img, caps, k)[0 if d == "t2i" else 1] for k in KS for d in ("t2i", "i2t")}
    ch["mean"] = sum(ch.values()) / 6
    table.append(("chance (random ranking)", ch))
    cols = [f"r@{k}_i2t" for k in KS] + [f"r@{k}_t2i" for k in KS] + ["mean"]
    print(f"split {args.split}: {n_img} images, {sum(caps)} captions")
    print("| model | " + " | ".join(c.replace("r@", "R@") for c in cols) + " | rsum |")
    print("|---" * (len(cols) + 2) + "|")
    for name, r in table:
        print(f"| {name} | " + " | ".join(f"{100 * r[c]:.1f}" for c in cols) + f" | {600 * r['mean']:.1f} |")


if __name__ == "__main__":
    main()

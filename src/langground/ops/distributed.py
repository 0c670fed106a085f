"""Collectives for models and losses that need the whole distributed batch (pure functions: a no-op in a
single process). Gradients flow through both (``torch.distributed.nn``), so a loss over the gathered batch
trains every rank's share."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (batch statistics such as LADS's gate usage), differentiable."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM) / world_size()


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (equal shapes), differentiable; rank r's rows come r-th."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def row_counts(x: Tensor) -> list[int]:
    """Every rank's number of rows of ``x`` (dim 0), in rank order."""
    if not is_distributed():
        return [x.shape[0]]
    return all_gather_cat(torch.tensor([x.shape[0]], device=x.device)).tolist()


def all_gather_ragged(x: Tensor, counts: list[int] | None = None) -> Tensor:
    """:func:`all_gather_cat` for rows whose count differs by rank (pad to the largest, gather, drop the
    padding), differentiable; ``counts`` from :func:`row_counts` when the caller has them."""
    counts = row_counts(x) if counts is None else counts
    if len(counts) == 1:
        return x
    pad = max(counts) - x.shape[0]
    padded = all_gather_cat(
        torch.nn.functional.pad(x, (0, 0, 0, pad)) if x.dim() > 1 else torch.nn.functional.pad(x, (0, pad))
    )
    return torch.cat([c[:n] for c, n in zip(padded.split(max(counts)), counts, strict=True)])

"""Distributed data parallel through ``torchrun``: process group, rank helpers, samplers, object gathering.

``torchrun --nproc_per_node N -m langground.cli train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` reads them and joins the group (``nccl`` on CUDA, ``gloo`` on CPU). Without
them everything here degrades to a single process, so the same code path trains on one CPU.

Data order is a pure function of ``(seed, epoch)``: :class:`ResumableSampler` draws the permutation of
``torch.utils.data.DistributedSampler`` (``set_epoch`` semantics) and can skip the samples an interrupted
run already consumed. Each index comes out as ``(epoch, index)`` so that :class:`SeededDataset` can seed
the sample's random augmentation from ``(seed, epoch, index)``: the same pixels whatever the number of
data-loader workers, the rank, or where a run was resumed.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world() -> DistInfo:
    """Rank and world size from the torchrun environment (single process when absent)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by the environment; a no-op for a single process."""
    info = env_world()
    if info.world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(
            backend=backend,
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    return info


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def is_main() -> bool:
    return current().is_main


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` for a single process."""
    info = current()
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over ranks of a dict of scalars (same keys in the same order on every rank)."""
    info = current()
    if not info.enabled or not values:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(values, t.tolist(), strict=True)}


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on some rank (e.g. a non-finite loss, a stop request)."""
    if not current().enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class ResumableSampler(Sampler[tuple[int, int]]):
    """DistributedSampler's order for ``(seed, epoch)``, this rank's share, from sample ``start`` on.

    Yields ``(epoch, index)`` pairs. Training shuffles and pads to equal shards (``drop_last=False``
    like DistributedSampler); ``start`` is the number of this rank's samples already consumed.
    """

    def __init__(
        self,
        size: int,
        info: DistInfo,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        curriculum_epochs: int = 0,
    ):
        self.size, self.info, self.seed, self.shuffle = size, info, seed, shuffle
        self.epoch, self.start = 0, 0
        # Length curriculum ("baby steps"): epoch e < E draws only from the (e+1)/(E+1) shortest
        # expressions, repeated to a full epoch; from epoch E on, every record. Epochs keep their length,
        # so step counts, schedules and exact resume are unchanged.
        self.curriculum_epochs = curriculum_epochs if lengths is not None else 0
        self.by_length = sorted(range(size), key=lambda i: (lengths[i], i)) if self.curriculum_epochs else []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def pool(self, epoch: int) -> list[int]:
        """The records epoch ``epoch`` draws from (all of them once the curriculum is over)."""
        if epoch >= self.curriculum_epochs:
            return list(range(self.size))
        keep = max(1, self.size * (epoch + 1) // (self.curriculum_epochs + 1))
        return sorted(self.by_length[:keep])

    def _indices(self) -> list[int]:
        pool = self.pool(self.epoch)
        base = DistributedSampler(
            range(self.size),  # type: ignore[arg-type]
            num_replicas=self.info.world_size,
            rank=self.info.rank,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        base.set_epoch(self.epoch)
        if len(pool) == self.size:
            return list(base)
        return [pool[i % len(pool)] for i in base]  # the shuffled positions, folded onto the pool

    def per_rank(self) -> int:
        """Samples of one rank per epoch."""
        return -(-self.size // self.info.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self._indices()[self.start :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)


def shard_indices(size: int, info: DistInfo) -> list[int]:
    """Evaluation shard of this rank: every sample exactly once over all ranks (no padding)."""
    return list(range(info.rank, size, info.world_size))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation (SplitMix64-style mixing of the three ints)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    return x & (2**63 - 1)


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is drawn under its own torch seed.

    The transforms (torchvision v2) draw from torch's global generator; forking it per sample makes the
    augmentation a function of ``(seed, epoch, index)`` only. Plain ``index`` keys are passed through.
    """

    def __init__(self, dataset: Sequence[Any] | Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            epoch, index = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                return self.dataset[index]
        return self.dataset[key]

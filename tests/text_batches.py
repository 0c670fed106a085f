"""Random expression batches for model tests: ``(n, length)`` word ids below ``vocab`` (ids 0 and 1 are
<pad> and <unk>), the last row padded at its end so that masks matter."""

from __future__ import annotations

import torch

from langground.types import TextBatch


def random_text(n: int, vocab: int, length: int = 6, seed: int = 0, padded: int = 2) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[-1, length - padded :] = False
    ids[~mask] = 0
    return TextBatch(ids, mask)

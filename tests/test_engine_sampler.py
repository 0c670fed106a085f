"""The resumable training order and its length curriculum."""

from __future__ import annotations

from torch.utils.data import DistributedSampler

from langground.engine.distributed import DistInfo, ResumableSampler

LENGTHS = [7, 3, 9, 3, 5, 12, 4, 6, 8, 2, 10, 11]  # words per expression of 12 records


def order(sampler: ResumableSampler, epoch: int, start: int = 0) -> list[int]:
    sampler.set_epoch(epoch, start)
    return [i for _, i in sampler]


def test_without_curriculum_the_order_is_distributed_samplers():
    for rank in (0, 1):
        s = ResumableSampler(12, DistInfo(rank, 2), seed=5)
        ref = DistributedSampler(range(12), num_replicas=2, rank=rank, shuffle=True, seed=5)
        ref.set_epoch(3)
        assert order(s, 3) == list(ref) and len(s) == 6


def test_curriculum_grows_from_the_shortest_expressions_to_all():
    s = ResumableSampler(12, DistInfo(), seed=0, lengths=LENGTHS, curriculum_epochs=2)
    shortest = sorted(range(12), key=lambda i: LENGTHS[i])
    assert s.pool(0) == sorted(shortest[:4])  # 1/3 of the records: lengths 2, 3, 3, 4
    assert s.pool(1) == sorted(shortest[:8])
    assert s.pool(2) == list(range(12))
    for epoch in (0, 1):
        got = order(s, epoch)
        assert len(got) == 12 and set(got) == set(s.pool(epoch))  # a full epoch of the pool only
        counts = [got.count(i) for i in s.pool(epoch)]
        assert max(counts) - min(counts) <= 1  # repeated evenly
    plain = ResumableSampler(12, DistInfo(), seed=0)
    assert order(s, 2) == order(plain, 2)  # curriculum over: the usual order
    assert order(s, 0) != order(s, 1)


def test_curriculum_resumes_mid_epoch_and_shards_disjointly():
    s = ResumableSampler(12, DistInfo(), seed=1, lengths=LENGTHS, curriculum_epochs=2)
    full = order(s, 1)
    assert order(s, 1, start=5) == full[5:] and len(s) == 7
    shards = [
        order(ResumableSampler(12, DistInfo(r, 2), 1, lengths=LENGTHS, curriculum_epochs=2), 0)
        for r in (0, 1)
    ]
    assert sorted(shards[0] + shards[1]) == sorted(order(s, 0))  # the ranks split one epoch


def test_item_lengths_come_from_the_dataset_when_it_has_them():
    from types import SimpleNamespace

    from langground.engine.builders import item_lengths

    records = [SimpleNamespace(text=t) for t in ("the red cube", "a ball", "left  of   the  big one")]
    assert item_lengths(records, object()) == [3, 2, 5]  # one item per record: its words

    class Grouped:  # one item per image, holding several expressions
        def item_lengths(self):
            return [4, 1]

    assert item_lengths(records, Grouped()) == [4, 1]

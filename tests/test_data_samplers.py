"""TrainingSampler / InferenceSampler sharding and aspect-ratio grouping."""

import itertools

import pytest
import torch

from resnet_backbones.data.samplers import (
    AspectRatioGroupedDataset,
    InferenceSampler,
    TrainingSampler,
)


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_training_sampler_is_seeded_shuffled_and_endless():
    a = take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    assert a == take(TrainingSampler(10, seed=3, rank=0, world_size=1), 30)
    assert a != take(TrainingSampler(10, seed=4, rank=0, world_size=1), 30)
    for epoch in range(3):  # every epoch is a permutation, and epochs differ
        assert sorted(a[10 * epoch : 10 * epoch + 10]) == list(range(10))
    assert a[:10] != list(range(10)) and a[:10] != a[10:20]
    assert take(TrainingSampler(4, shuffle=False, seed=0, rank=0, world_size=1), 6) == [
        0,
        1,
        2,
        3,
        0,
        1,
    ]


def test_training_sampler_shards_of_two_ranks_are_disjoint_and_cover():
    size = 10
    r0 = take(TrainingSampler(size, seed=7, rank=0, world_size=2), 5 * 4)
    r1 = take(TrainingSampler(size, seed=7, rank=1, world_size=2), 5 * 4)
    for epoch in range(4):
        s0, s1 = set(r0[5 * epoch : 5 * epoch + 5]), set(r1[5 * epoch : 5 * epoch + 5])
        assert not s0 & s1 and s0 | s1 == set(range(size))
    full = take(TrainingSampler(size, seed=7, rank=0, world_size=1), 40)
    assert full[0::2] == r0 and full[1::2] == r1


def test_training_sampler_rejects_empty_dataset():
    with pytest.raises(ValueError, match="empty"):
        TrainingSampler(0, seed=0)


@pytest.mark.parametrize("size,world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_inference_sampler_contiguous_disjoint_complete(size, world):
    shards = [list(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)]
    assert sum(shards, []) == list(range(size))  # contiguous, in order, each index once
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(InferenceSampler(size, rank=r, world_size=world)) for r in range(world)] == list(
        map(len, shards)
    )


def test_aspect_ratio_grouping_batches_same_orientation():
    items = [
        {"width": w, "height": h, "i": i}
        for i, (w, h) in enumerate([(4, 2), (2, 4), (2, 4), (5, 3), (3, 3), (6, 2)])
    ]
    batches = list(AspectRatioGroupedDataset(items, 2))
    for b in batches:
        assert len(b) == 2
        assert len({d["width"] > d["height"] for d in b}) == 1
    assert [[d["i"] for d in b] for b in batches] == [[1, 2], [0, 3]]
    tensors = [
        {"image": torch.zeros(3, 2, 5)},
        {"image": torch.zeros(3, 5, 2)},
        {"image": torch.zeros(3, 2, 6)},
    ]
    assert [len(b) for b in AspectRatioGroupedDataset(tensors, 2)] == [2]

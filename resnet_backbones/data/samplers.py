"""Which dataset indices each process sees, and how mapped samples are grouped into batches.

* :class:`TrainingSampler`: an endless stream of shuffled epochs, identical on every rank (same
  seed), of which rank ``r`` of ``W`` takes positions ``r, r + W, ...``.
* :class:`InferenceSampler`: each rank a contiguous, disjoint slice; together every index once.
* :class:`AspectRatioGroupedDataset`: batches of samples that are all landscape or all portrait,
  so padding to a common size wastes little (detectron2's aspect-ratio grouping).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, Sampler

__all__ = [
    "TrainingSampler",
    "InferenceSampler",
    "AspectRatioGroupedDataset",
    "get_rank_and_world_size",
    "shared_random_seed",
]


def get_rank_and_world_size() -> Tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shared_random_seed() -> int:
    """A random seed, the same on all ranks (rank 0's, broadcast) when distributed."""
    seed = int(np.random.randint(2**31))
    if get_rank_and_world_size()[1] > 1:
        backend = dist.get_backend()
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        t = torch.tensor([seed], dtype=torch.int64, device=device)
        dist.broadcast(t, src=0)
        seed = int(t.item())
    return seed


def _check_rank(rank: Optional[int], world_size: Optional[int]) -> Tuple[int, int]:
    auto_rank, auto_world = get_rank_and_world_size()
    rank = auto_rank if rank is None else int(rank)
    world_size = auto_world if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


class TrainingSampler(Sampler[int]):
    """Endless indices in ``[0, size)``: a new permutation per epoch (or ``0..size-1`` repeated).

    ``seed`` must be the same on every rank (None: :func:`shared_random_seed`). ``rank`` and
    ``world_size`` default to torch.distributed's.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"TrainingSampler(size={size!r}): the dataset is empty; need size > 0")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _check_rank(rank, world_size)

    @property
    def seed(self) -> int:
        return self._seed

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class InferenceSampler(Sampler[int]):
    """Each rank gets a contiguous slice; slice sizes differ by at most one; no index twice."""

    def __init__(
        self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None
    ) -> None:
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"InferenceSampler: size must be a non-negative int, got {size!r}")
        self._size = size
        self._rank, self._world_size = _check_rank(rank, world_size)
        self._local_indices = range(*self.shard_bounds(size, self._rank, self._world_size))

    @staticmethod
    def shard_bounds(size: int, rank: int, world_size: int) -> Tuple[int, int]:
        """[begin, end) of ``rank``'s slice; the first ``size % world_size`` ranks get one extra."""
        base, extra = divmod(size, world_size)
        begin = rank * base + min(rank, extra)
        return begin, begin + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)


class AspectRatioGroupedDataset(IterableDataset):
    """Batch an iterable of mapped dicts so that each batch is all ``width > height`` or all not.

    Batches are lists of ``batch_size`` dicts, emitted as soon as one orientation has enough.
    """

    def __init__(
        self,
        dataset: Iterable[Dict[str, Any]],
        batch_size: int,
        initial: Optional[Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]] = None,
    ) -> None:
        """``initial``: (landscape, portrait) samples already waiting, when resuming mid-stream."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.initial = initial

    @staticmethod
    def is_portrait(d: Dict[str, Any]) -> int:
        """The bucket of a sample: 0 if wider than tall, else 1 (from width/height, else the
        image)."""
        if "width" in d and "height" in d:
            return int(d["width"] <= d["height"])
        h, w = d["image"].shape[-2:]
        return int(w <= h)

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        buckets: List[List[Dict[str, Any]]] = (
            [list(b) for b in self.initial] if self.initial else [[], []]
        )
        for d in self.dataset:
            bucket = buckets[self.is_portrait(d)]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                bucket.clear()
                yield batch

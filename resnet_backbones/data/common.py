"""The parts of a data loader that run in worker processes, and how their results come back.

* :class:`SerializedList`: dataset dicts pickled into one buffer that workers share.
* :class:`MapStream` / :class:`MappedList`: apply the mapper to a sampler's stream (training) or to
  indices (testing); an exception becomes a :class:`_Failure` record naming the file, which
  :func:`checked` re-raises in the main process as one :class:`DataLoadError`.
* Per-sample seeding: each sample's augmentation RNGs are seeded from (seed, rank, stream position),
  so batches do not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import random
import traceback
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

__all__ = [
    "DataLoadError",
    "SerializedList",
    "MapStream",
    "MappedList",
    "checked",
    "is_skipped",
    "worker_init_reset_seed",
]

Mapper = Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]


class DataLoadError(RuntimeError):
    """Mapping one dataset dict failed (possibly in a worker); names the file and the cause."""

    def __init__(
        self, message: str, file_name: Optional[str] = None, worker_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.file_name = file_name
        self.worker_traceback = worker_traceback


class SerializedList(Dataset):
    """The dicts pickled into one numpy buffer: workers then share it instead of copying Python
    objects on access (reference counts would otherwise touch, and duplicate, every page); as in
    detectron2."""

    def __init__(self, items: Sequence[Dict[str, Any]]) -> None:
        blobs = [
            np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
            for x in items
        ]
        self._addr = np.cumsum(np.asarray([len(b) for b in blobs], dtype=np.int64))
        self._data = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._addr)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        start = 0 if idx == 0 else int(self._addr[idx - 1])
        return pickle.loads(memoryview(self._data[start : int(self._addr[idx])]))


# ----------------------------------------------------------------------------- mapping safely


class _Failure:
    """What a worker sends back instead of raising: the file and the error, to re-raise in the
    main process."""

    def __init__(self, dataset_dict: Dict[str, Any], exc: BaseException) -> None:
        self.file_name = dataset_dict.get("file_name") if isinstance(dataset_dict, dict) else None
        self.image_id = dataset_dict.get("image_id") if isinstance(dataset_dict, dict) else None
        self.error = f"{type(exc).__name__}: {exc}"
        self.traceback = traceback.format_exc()

    def raise_(self) -> None:
        raise DataLoadError(
            f"failed to load {self.file_name or '<no file_name>'} "
            f"(image_id={self.image_id!r}): {self.error}",
            self.file_name,
            self.traceback,
        )


_SKIPPED = "__rb_skipped_sample__"  # the mapper returned None (detectron2: drop this sample)


def _map_safely(mapper: Mapper, dataset_dict: Dict[str, Any]) -> Any:
    try:
        out = mapper(dataset_dict)
    except Exception as e:  # noqa: BLE001 -- re-raised in the main process by checked()
        return _Failure(dataset_dict, e)
    return _SKIPPED if out is None else out


def checked(items: Iterator[Any]) -> Iterator[Dict[str, Any]]:
    """Pass mapped dicts on; raise failures; drop skipped samples.

    Before raising, the DataLoader iterator is released, so that its workers stop now rather than
    whenever the garbage collector frees the exception's traceback (which would keep it alive).
    """
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        if isinstance(item, _Failure):
            del items
            item.raise_()
        if is_skipped(item):
            continue
        yield item


def is_skipped(item: Any) -> bool:
    """Whether the mapper returned None for this sample (detectron2: drop it)."""
    return isinstance(item, str) and item == _SKIPPED


@contextlib.contextmanager
def sample_rng(base_seed: int, rank: int, position: int) -> Iterator[None]:
    """Seed the RNGs a mapper may use (``np.random``, ``random``, torch's CPU generator) from the
    sample's place in the stream, not from the worker; restore them afterwards, so that with
    NUM_WORKERS=0 the training loop's own random state is left alone."""
    seed = int(np.random.SeedSequence([base_seed, rank, position]).generate_state(1)[0])
    saved = np.random.get_state(), random.getstate(), torch.get_rng_state()
    np.random.seed(seed)
    random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
        torch.set_rng_state(saved[2])


def worker_init_reset_seed(worker_id: int) -> None:
    """Give each worker distinct, reproducible RNG states (from the DataLoader's seeded
    generator)."""
    seed = torch.initial_seed() % 2**31
    np.random.seed(seed)
    random.seed(seed)


class MapStream(IterableDataset):
    """Mapped samples in sampler order; worker ``i`` of ``n`` maps stream positions ``i mod n``, and
    the DataLoader, asking its workers in turn, hands them back in stream order."""

    def __init__(
        self,
        dataset: Dataset,
        mapper: Mapper,
        sampler: Iterable[int],
        base_seed: int,
        rank: int,
        start: int = 0,
    ) -> None:
        self.dataset, self.mapper, self.sampler = dataset, mapper, sampler
        self.base_seed, self.rank, self.start = base_seed, rank, start

    def map_at(self, position: int, index: int) -> Any:
        """The mapped sample at stream ``position`` (dataset ``index``), with that position's RNG
        seed."""
        with sample_rng(self.base_seed, self.rank, position):
            return _map_safely(self.mapper, self.dataset[index])

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = itertools.islice(self.sampler, self.start, None)
        for pos, idx in enumerate(stream, start=self.start):
            if (pos - self.start) % nworkers == wid:
                yield self.map_at(pos, idx)


class MappedList(Dataset):
    """``mapper(dataset[i])`` for index ``i``, with failures returned as records (see
    :func:`checked`)."""

    def __init__(self, dataset: Dataset, mapper: Mapper) -> None:
        self.dataset, self.mapper = dataset, mapper

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        return _map_safely(self.mapper, self.dataset[idx])

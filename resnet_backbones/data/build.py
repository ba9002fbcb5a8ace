"""Data loaders with detectron2's semantics: a batch is a list of mapped dicts.

* training: an endless :class:`TrainingSampler` stream; ``SOLVER.IMS_PER_BATCH`` is the *global*
  batch, so each of W ranks gets ``IMS_PER_BATCH / W`` images; batches are aspect-ratio grouped if
  ``DATALOADER.ASPECT_RATIO_GROUPING``; ``DATALOADER.NUM_WORKERS`` worker processes.
* testing: each rank a contiguous slice (:class:`InferenceSampler`), batch size 1.

Randomness is reproducible and independent of the number of workers: every sample's augmentation
RNG (``np.random``, ``random``, ``torch``) is seeded from (seed, rank, position in the stream), with
seed = ``SEED`` (or a shared random one when negative), and worker ``i`` maps positions
``i, i + n, ...`` which the DataLoader hands back in order. A mapper error inside a worker comes
back to the main process as one :class:`DataLoadError` naming the file, not as a worker traceback.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from .catalog import DatasetCatalog, MetadataCatalog
from .common import (
    DataLoadError,
    MappedList,
    Mapper,
    MapStream,
    SerializedList,
    checked,
    worker_init_reset_seed,
)
from .dataset_mapper import DatasetMapper
from .datasets.annotation_checks import bad_annotation_policy, resolve_policy
from .samplers import (
    AspectRatioGroupedDataset,
    InferenceSampler,
    TrainingSampler,
    get_rank_and_world_size,
    shared_random_seed,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DataLoadError",
    "get_detection_dataset_dicts",
    "filter_images_with_only_crowd_annotations",
    "build_detection_train_loader",
    "build_detection_test_loader",
]


# ------------------------------------------------------------------------------------ datasets


def _source_of(name: str) -> str:
    meta = MetadataCatalog.get(name) if name in MetadataCatalog else None
    src = meta and (meta.get("json_file") or meta.get("dirname"))
    return f" (source: {src})" if src else ""


def filter_images_with_only_crowd_annotations(
    dataset_dicts: List[Dict[str, Any]],
) -> List[Dict[str, Any]]:
    """Keep images with at least one non-crowd annotation (DATALOADER.FILTER_EMPTY_ANNOTATIONS)."""
    kept = [
        d for d in dataset_dicts if any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", ()))
    ]
    removed = len(dataset_dicts) - len(kept)
    if removed:
        logger.info(
            "Removed %d images with no usable annotations. %d images left.", removed, len(kept)
        )
    return kept


def _check_consistency(names: Sequence[str], key: str = "thing_classes") -> None:
    values = {n: MetadataCatalog.get(n).get(key) for n in names}
    known = {n: v for n, v in values.items() if v is not None}
    if len({tuple(v) for v in known.values()}) > 1:
        listing = "; ".join(f"{n}: {list(v)}" for n, v in known.items())
        raise ValueError(f"datasets {list(names)} disagree on metadata '{key}': {listing}")


def _check_has_masks(name: str, dicts: Sequence[Dict[str, Any]]) -> None:
    for d in dicts:
        for a in d.get("annotations", ()):
            if a.get("iscrowd", 0) == 0 and "segmentation" not in a:
                raise ValueError(
                    f"dataset '{name}' has no instance masks: annotation of "
                    f"{d.get('file_name')} has no 'segmentation'{_source_of(name)}; "
                    "MODEL.MASK_ON needs masks (train boxes only with MODEL.MASK_ON=False, or "
                    "regenerate a shapes dataset: it now writes polygons)"
                )


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    check_consistency: bool = True,
    on_bad_annotation: Optional[str] = None,
    require_masks: bool = False,
) -> List[Dict[str, Any]]:
    """Load and concatenate registered datasets; refuse empty ones with an error naming them.

    ``require_masks`` (MODEL.MASK_ON at training time) refuses a dataset whose (non-crowd)
    annotations have no ``segmentation``, e.g. a shapes dataset written before masks existed.

    ``on_bad_annotation`` ("skip"/"error", usually DATALOADER.ON_BAD_ANNOTATION) is what the
    loaders do with a bad single annotation. ``filter_empty`` drops images without non-crowd boxes.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("no dataset names given (is DATASETS.TRAIN / DATASETS.TEST empty?)")
    dicts: List[Dict[str, Any]] = []
    with bad_annotation_policy(resolve_policy(on_bad_annotation)):
        for name in names:
            loaded = DatasetCatalog.get(name)
            if not isinstance(loaded, list):
                raise TypeError(
                    f"the loader of dataset '{name}' returned {type(loaded).__name__}, "
                    "expected a list of dicts"
                )
            if not loaded:
                raise ValueError(f"dataset '{name}' is empty{_source_of(name)}")
            if require_masks:
                _check_has_masks(name, loaded)
            dicts.extend(loaded)
    if check_consistency and len(names) > 1:
        _check_consistency(names)
    if filter_empty and any("annotations" in d for d in dicts):
        dicts = filter_images_with_only_crowd_annotations(dicts)
        if not dicts:
            raise ValueError(
                f"no image of {names} has a usable annotation; nothing to train on "
                "(set DATALOADER.FILTER_EMPTY_ANNOTATIONS=False to keep images without boxes)"
            )
    return dicts


# -------------------------------------------------------------------------------------- loaders


def _trivial_batch(batch: List[Any]) -> List[Any]:
    return batch


def _identity(sample: Any) -> Any:
    return sample


class TrainLoader:
    """Endless iterable of batches (lists of ``batch_size`` mapped dicts) for one rank.

    Each ``iter()`` starts a fresh DataLoader at batch 0, or at batch ``n`` after
    ``skip_batches(n)``, which positions the stream without loading the skipped images (used to
    resume training). The position is exact when the mapper returns a dict for every sample and
    keeps its width/height (DatasetMapper does); otherwise the skipped batches are loaded.
    """

    def __init__(
        self,
        stream: MapStream,
        batch_size: int,
        aspect_ratio_grouping: bool,
        num_workers: int,
        seed: int,
        portrait: Optional[List[int]] = None,
    ) -> None:
        self.stream, self.batch_size, self.aspect_ratio_grouping = (
            stream,
            batch_size,
            aspect_ratio_grouping,
        )
        self.num_workers, self.seed = num_workers, seed
        self._portrait = (
            portrait  # bucket of each dataset index, if every dict has width and height
        )
        self._start_batch = 0

    def skip_batches(self, n: int) -> None:
        """Make the next ``iter()`` begin with batch ``n`` (counted from the start of the
        stream)."""
        if n < 0:
            raise ValueError(f"skip_batches: n must be >= 0, got {n}")
        self._start_batch = int(n)

    def _resume_point(self, n: int) -> Tuple[int, List[List[Tuple[int, int]]]]:
        """Stream position after batch ``n - 1``, and the (position, index) samples waiting in
        the buckets."""
        if n == 0 or not self.aspect_ratio_grouping:
            return n * self.batch_size, [[], []]
        assert self._portrait is not None
        buckets: List[List[Tuple[int, int]]] = [[], []]
        emitted = 0
        pos = -1
        for pos, idx in enumerate(self.stream.sampler):
            if emitted == n:
                break
            bucket = buckets[self._portrait[idx]]
            bucket.append((pos, idx))
            if len(bucket) == self.batch_size:
                bucket.clear()
                emitted += 1
        else:
            pos += 1
        return pos, buckets

    def _loader(self, start: int) -> DataLoader:
        stream = MapStream(
            self.stream.dataset,
            self.stream.mapper,
            self.stream.sampler,
            self.seed,
            self.stream.rank,
            start,
        )
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            worker_init_fn=worker_init_reset_seed,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        n = self._start_batch
        exact = n == 0 or not self.aspect_ratio_grouping or self._portrait is not None
        start, waiting = self._resume_point(n) if exact else (0, [[], []])
        samples = checked(iter(self._loader(start)))
        if self.aspect_ratio_grouping:
            initial = tuple(
                [d for d in checked(iter([self.stream.map_at(p, i) for p, i in b]))]
                for b in waiting
            )
            batches = iter(AspectRatioGroupedDataset(samples, self.batch_size, initial))  # type: ignore[arg-type]
        else:
            batches = self._plain_batches(samples)
        if not exact:
            batches = itertools.islice(batches, n, None)
        yield from batches

    def _plain_batches(self, samples: Iterator[Dict[str, Any]]) -> Iterator[List[Dict[str, Any]]]:
        while True:
            batch = list(itertools.islice(samples, self.batch_size))
            if len(batch) < self.batch_size:  # only a finite custom sampler ends
                return
            yield batch


class InferenceLoader:
    """Finite iterable of batches (lists of one mapped dict) over this rank's slice; has ``len``."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            try:
                batch = list(checked(iter(batch)))
            except DataLoadError:
                del batches  # stop the workers now (see checked)
                raise
            if batch:
                yield batch


def _per_rank_batch_size(total: int, world_size: int) -> int:
    if total <= 0 or total % world_size != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    return total // world_size


def build_detection_train_loader(
    cfg: Any,
    mapper: Optional[Mapper] = None,
    *,
    dataset: Optional[Sequence[Dict[str, Any]]] = None,
    sampler: Optional[TrainingSampler] = None,
) -> TrainLoader:
    """Endless training batches of this rank: ``IMS_PER_BATCH / world_size`` mapped dicts each.

    ``dataset`` defaults to DATASETS.TRAIN (filtered per DATALOADER.FILTER_EMPTY_ANNOTATIONS),
    ``mapper`` to ``DatasetMapper(cfg, True)``, ``sampler`` to DATALOADER.SAMPLER_TRAIN.
    """
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            on_bad_annotation=cfg.DATALOADER.ON_BAD_ANNOTATION,
            require_masks=bool(cfg.MODEL.MASK_ON),
        )
    if len(dataset) == 0:
        raise ValueError("build_detection_train_loader: the training dataset is empty")
    mapper = mapper if mapper is not None else DatasetMapper(cfg, True)
    rank, world_size = get_rank_and_world_size()
    batch_size = _per_rank_batch_size(cfg.SOLVER.IMS_PER_BATCH, world_size)
    seed = int(cfg.SEED) if cfg.SEED >= 0 else shared_random_seed()
    if sampler is None:
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            raise ValueError(
                f"DATALOADER.SAMPLER_TRAIN={cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported "
                "(supported: 'TrainingSampler')"
            )
        sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed)
    portrait = None
    if not isinstance(dataset, Dataset) and all("width" in d and "height" in d for d in dataset):
        portrait = [int(d["width"] <= d["height"]) for d in dataset]
    stored = dataset if isinstance(dataset, Dataset) else SerializedList(dataset)
    stream = MapStream(stored, mapper, sampler, seed, rank)
    return TrainLoader(
        stream,
        batch_size,
        bool(cfg.DATALOADER.ASPECT_RATIO_GROUPING),
        int(cfg.DATALOADER.NUM_WORKERS),
        seed,
        portrait,
    )


def build_detection_test_loader(
    cfg: Any,
    dataset_name: Union[str, Sequence[str]],
    mapper: Optional[Mapper] = None,
    *,
    num_workers: Optional[int] = None,
) -> InferenceLoader:
    """Batches of one mapped dict over this rank's contiguous slice of ``dataset_name`` (no
    filtering)."""
    dataset = get_detection_dataset_dicts(
        dataset_name, filter_empty=False, on_bad_annotation=cfg.DATALOADER.ON_BAD_ANNOTATION
    )
    mapper = mapper if mapper is not None else DatasetMapper(cfg, False)
    mapped = MappedList(SerializedList(dataset), mapper)
    loader = DataLoader(
        mapped,
        batch_size=1,
        sampler=InferenceSampler(len(dataset)),
        num_workers=int(cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers),
        collate_fn=_trivial_batch,
        worker_init_fn=worker_init_reset_seed,
    )
    return InferenceLoader(loader)

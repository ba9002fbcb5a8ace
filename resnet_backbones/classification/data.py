"""Classification data: ImageFolder and CIFAR-10 datasets, the standard transforms, and loaders.

* :func:`build_transform`: ImageNet training (``RandomResizedCrop`` + horizontal flip) and
  validation (resize ``SIZE * 256 / 224``, center crop ``SIZE``) pipelines, or CIFAR's (4-pixel
  padding, random 32x32 crop, flip / the image itself), ending in :class:`ToModelInput`.
* :class:`ToModelInput`: a PIL image (RGB) -> ``(3, H, W)`` float tensor in the network's channel
  order, 0-255 values normalized by the pixel mean and std (detectron2's input convention).
* :func:`read_cifar10_batch` / :class:`CIFAR10`: the CIFAR-10 "python version" batches
  (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``) read with the restricted
  unpickler of :mod:`resnet_backbones.checkpoint.safe_pickle`: a batch file can hold only plain
  containers and numpy arrays, so a tampered file cannot run code.
* :func:`build_train_loader`: an endless, exactly resumable stream of training batches;
  :func:`build_test_loader`: each process a disjoint slice of the validation set.

Reproducibility: the training order comes from
:class:`~resnet_backbones.data.samplers.TrainingSampler` (a new permutation per epoch from
``seed``, the same on every process, of which process ``r`` of ``W`` takes positions
``r, r + W, ...``), and the augmentation of each sample is drawn from RNGs seeded with
``(seed, rank, position in the stream)``. A batch therefore does not depend on the number of
loader workers, and ``start_iter`` starts the stream exactly where an interrupted run left it.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..checkpoint.safe_pickle import safe_load
from ..data.samplers import InferenceSampler, TrainingSampler, get_rank_and_world_size

__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "ToModelInput",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "build_transform",
    "find_cifar10_dir",
    "read_cifar10_batch",
    "resize_size",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"


# ------------------------------------------------------------------------------ transforms
class ToModelInput:
    """PIL image or ``HxWx3`` uint8 RGB array -> normalized ``(3, H, W)`` float32 tensor.

    ``input_format`` is the channel order the network expects ("BGR" or "RGB"); ``pixel_mean`` and
    ``pixel_std`` are given in that order on the 0-255 scale (detectron2's MODEL.PIXEL_MEAN/STD).
    """

    def __init__(
        self,
        input_format: str = "BGR",
        pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
        pixel_std: Sequence[float] = (57.375, 57.120, 58.395),
    ) -> None:
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {input_format!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or any(s <= 0 for s in pixel_std):
            raise ValueError(
                f"need 3 pixel means and 3 positive stds, got {list(pixel_mean)}, {list(pixel_std)}"
            )
        self.input_format = input_format
        self.mean = torch.tensor([float(m) for m in pixel_mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in pixel_std]).view(3, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        array = np.ascontiguousarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {array.shape}")
        if self.input_format == "BGR":
            array = np.ascontiguousarray(array[:, :, ::-1])
        tensor = torch.from_numpy(array).permute(2, 0, 1).float()
        return (tensor - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"ToModelInput(input_format={self.input_format}, "
            f"pixel_mean={self.mean.flatten().tolist()}, "
            f"pixel_std={self.std.flatten().tolist()})"
        )


def resize_size(cfg: Any) -> int:
    """The validation resize of the short side: ``INPUT.RESIZE_SIZE``, or ``SIZE x 256 / 224``."""
    return int(cfg.INPUT.RESIZE_SIZE) or int(round(int(cfg.INPUT.SIZE) * 256 / 224))


def build_transform(cfg: Any, is_train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """The training or validation transform of ``cfg.INPUT`` (see the module docstring)."""
    from torchvision import transforms as T

    size = int(cfg.INPUT.SIZE)
    if size < 8:
        raise ValueError(f"INPUT.SIZE must be >= 8, got {size}")
    ops: List[Any] = []
    if cfg.INPUT.PAD_CROP:
        if is_train:
            ops.append(
                T.RandomCrop(size, padding=int(cfg.INPUT.PADDING), fill=0, padding_mode="constant")
            )
            if cfg.INPUT.RANDOM_FLIP:
                ops.append(T.RandomHorizontalFlip())
        else:
            ops.append(T.CenterCrop(size))  # the image itself when it is SIZE x SIZE (CIFAR)
    elif is_train:
        ops.append(
            T.RandomResizedCrop(
                size,
                scale=(float(cfg.INPUT.MIN_SCALE), float(cfg.INPUT.MAX_SCALE)),
                ratio=tuple(float(r) for r in cfg.INPUT.RATIO),
                antialias=True,
            )
        )
        if cfg.INPUT.RANDOM_FLIP:
            ops.append(T.RandomHorizontalFlip())
    else:
        ops += [T.Resize(resize_size(cfg), antialias=True), T.CenterCrop(size)]
    ops.append(ToModelInput(cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD))
    return T.Compose(ops)


# ------------------------------------------------------------------------------ CIFAR-10
def _get(batch: dict, key: str) -> Any:
    """``batch[key]`` for str keys (latin1 pickles) or bytes keys (pickles written with bytes
    keys)."""
    if key in batch:
        return batch[key]
    return batch.get(key.encode("ascii"))


def read_cifar10_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file: ``(images N x 32 x 32 x 3 uint8 RGB, labels N int64)``.

    The file is a pickled dict with ``data`` (``N x 3072`` uint8: 1024 red, 1024 green, 1024 blue
    values per image, row-major) and ``labels`` (N ints); it is read with the restricted
    unpickler, which refuses any global other than plain containers and numpy arrays.

    Raises:
        FileNotFoundError: no such file.
        resnet_backbones.checkpoint.UnsafePickleError: the file names a forbidden global.
        ValueError: the file is not a CIFAR-10 batch (the message names the file and the problem).
    """
    path = os.fspath(path)
    batch = safe_load(path)
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path}: not a CIFAR-10 batch: holds a {type(batch).__name__}, expected a dict"
        )
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        keys = [k.decode("latin1") if isinstance(k, bytes) else str(k) for k in batch]
        raise ValueError(
            f"{path}: not a CIFAR-10 batch: expected keys 'data' and 'labels', found {keys}"
        )
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: 'data' must be an N x 3072 uint8 array, got {data.dtype} {data.shape}"
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{path}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def find_cifar10_dir(root: str) -> str:
    """The folder holding the CIFAR-10 batches: ``root`` or ``root/cifar-10-batches-py``."""
    root = os.path.expanduser(os.fspath(root))
    for candidate in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(candidate, CIFAR10_TEST_BATCH)) or os.path.isfile(
            os.path.join(candidate, CIFAR10_TRAIN_BATCHES[0])
        ):
            return candidate
    raise FileNotFoundError(
        f"no CIFAR-10 python batches in '{root}' "
        f"(nor in '{os.path.join(root, 'cifar-10-batches-py')}'): "
        f"expected data_batch_1 .. data_batch_5 and test_batch, as in cifar-10-python.tar.gz from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html"
    )


class CIFAR10(Dataset):
    """CIFAR-10 from its python batches: ``train`` = data_batch_1..5, else test_batch.

    Items are ``(transform(PIL image), label)``. ``classes`` comes from ``batches.meta`` when
    present.
    """

    def __init__(self, root: str, train: bool = True, transform: Optional[Callable] = None) -> None:
        self.root = find_cifar10_dir(root)
        names = CIFAR10_TRAIN_BATCHES if train else (CIFAR10_TEST_BATCH,)
        missing = [n for n in names if not os.path.isfile(os.path.join(self.root, n))]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 in '{self.root}': missing {', '.join(missing)}")
        parts = [read_cifar10_batch(os.path.join(self.root, n)) for n in names]
        self.data = np.concatenate([p[0] for p in parts])
        self.targets = np.concatenate([p[1] for p in parts]).tolist()
        self.classes = list(CIFAR10_CLASSES)
        meta_path = os.path.join(self.root, "batches.meta")
        if os.path.isfile(meta_path):
            meta = safe_load(meta_path)
            names_ = _get(meta, "label_names") if isinstance(meta, dict) else None
            if names_ is not None and len(names_) == len(CIFAR10_CLASSES):
                self.classes = [
                    n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names_
                ]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image: Any = Image.fromarray(self.data[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# ------------------------------------------------------------------------------ datasets
def build_dataset(cfg: Any, is_train: bool, transform: Optional[Callable] = None) -> Dataset:
    """The training or validation dataset of ``cfg.DATA`` with :func:`build_transform` (or
    ``transform``).

    The dataset has ``classes`` (names, index order). Missing folders raise ``FileNotFoundError``
    naming the expected layout.
    """
    transform = transform if transform is not None else build_transform(cfg, is_train)
    kind = cfg.DATA.DATASET
    path = os.path.expanduser(str(cfg.DATA.PATH))
    if not path:
        raise FileNotFoundError(
            "DATA.PATH is empty: pass --data (an ImageFolder root or the CIFAR-10 folder)"
        )
    if kind == "cifar10":
        return CIFAR10(path, train=is_train, transform=transform)
    if kind != "imagefolder":
        raise ValueError(f"DATA.DATASET must be 'imagefolder' or 'cifar10', got {kind!r}")
    from torchvision.datasets import ImageFolder

    split = cfg.DATA.TRAIN_SPLIT if is_train else cfg.DATA.VAL_SPLIT
    folder = os.path.join(path, split)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"ImageFolder split '{folder}' does not exist: "
            f"--data must hold {cfg.DATA.TRAIN_SPLIT}/ and "
            f"{cfg.DATA.VAL_SPLIT}/, each with one sub-folder of images per class"
        )
    try:
        return ImageFolder(folder, transform=transform)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"ImageFolder split '{folder}': {e}") from None


# ------------------------------------------------------------------------------ loaders
def _sample_seed(base_seed: int, rank: int, position: int) -> int:
    return int(np.random.SeedSequence([base_seed, rank, position]).generate_state(1)[0])


def _load_sample(dataset: Dataset, index: int, seed: int, in_worker: bool) -> Tuple[Any, int]:
    """``dataset[index]`` with the python, numpy and torch (CPU) RNGs seeded by ``seed``.

    In the main process (no loader workers) the global RNG states are restored afterwards, so
    that data loading does not disturb the training process's own random streams. (Only the CPU
    generator of torch is seeded: ``torch.manual_seed`` would also reseed every CUDA device.)
    """
    gen = torch.default_generator
    saved = None if in_worker else (random.getstate(), np.random.get_state(), gen.get_state())
    try:
        random.seed(seed)
        np.random.seed(seed)
        gen.manual_seed(seed)
        return dataset[index]
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            gen.set_state(saved[2])


def _collate(samples: List[Tuple[Any, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([s[0] for s in samples])
    labels = torch.as_tensor([s[1] for s in samples], dtype=torch.int64)
    return images, labels


class _BatchStream(IterableDataset):
    """Collated training batches from batch ``start_batch`` on; worker ``w`` of ``n`` builds batches
    ``b`` with ``b % n == w`` (the DataLoader returns them round-robin, i.e. in order)."""

    def __init__(
        self,
        dataset: Dataset,
        sampler: TrainingSampler,
        batch_size: int,
        seed: int,
        rank: int,
        start_batch: int,
    ) -> None:
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.seed, self.rank, self.start_batch = seed, rank, start_batch

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info is not None else (0, 1)
        indices = itertools.islice(iter(self.sampler), self.start_batch * self.batch_size, None)
        for b in itertools.count(self.start_batch):
            chunk = list(itertools.islice(indices, self.batch_size))
            if len(chunk) < self.batch_size:
                return
            if b % nworkers != wid:
                continue
            first = b * self.batch_size
            yield _collate(
                [
                    _load_sample(
                        self.dataset,
                        idx,
                        _sample_seed(self.seed, self.rank, first + i),
                        info is not None,
                    )
                    for i, idx in enumerate(chunk)
                ]
            )


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker decodes and augments one batch at a time


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    start_iter: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Endless ``(images, labels)`` batches of this process, starting at iteration ``start_iter``.

    ``batch_size`` is per process. The stream is the same whatever ``num_workers`` is, and the
    batch at iteration ``i`` is the same whether the run started at 0 or resumed at ``i``.
    """
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    rank, _ = get_rank_and_world_size()
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed)
    stream = _BatchStream(dataset, sampler, batch_size, seed, rank, start_iter)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        pin_memory=pin_memory,
    )


def build_test_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Optional[Callable[[List[Tuple[Any, int]]], Any]] = None,
) -> DataLoader:
    """Batches over this process's contiguous slice of ``dataset`` (all processes together: each
    image once). ``collate_fn`` (default: stack the images) builds a batch from its samples."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=InferenceSampler(len(dataset)),
        num_workers=num_workers,
        collate_fn=collate_fn or _collate,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory,
    )

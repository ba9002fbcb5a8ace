"""Random augmentations: each draws its parameters (with ``np.random``, as detectron2 does, so the
data loader can seed every sample) and returns the deterministic :class:`Transform` to apply."""

from __future__ import annotations

import sys
from typing import List, Sequence, Tuple, Union

import numpy as np

from .transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [
    "Augmentation",
    "ResizeShortestEdge",
    "RandomFlip",
    "RandomCrop",
    "apply_augmentations",
]


class Augmentation:
    """Decides a transform for one image."""

    def get_transform(self, image: np.ndarray) -> Transform:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k.lstrip('_')}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class ResizeShortestEdge(Augmentation):
    """Scale so the short side is a sampled length, unless the long side would exceed ``max_size``.

    ``sample_style="choice"`` picks one of ``short_edge_length``; ``"range"`` draws an integer in
    ``[min, max]`` of its two values. A length of 0 leaves the image unchanged (detectron2's rules).
    """

    def __init__(
        self,
        short_edge_length: Union[int, Sequence[int]],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
    ) -> None:
        if isinstance(short_edge_length, (int, np.integer)):
            short_edge_length = (int(short_edge_length), int(short_edge_length))
        lengths = tuple(int(v) for v in short_edge_length)
        if sample_style not in ("range", "choice"):
            raise ValueError(
                "ResizeShortestEdge: sample_style must be 'range' or 'choice', "
                f"got {sample_style!r}"
            )
        if not lengths:
            raise ValueError("ResizeShortestEdge: short_edge_length is empty")
        if sample_style == "range" and len(lengths) != 2:
            raise ValueError(
                f"ResizeShortestEdge: sample_style='range' needs (min, max), got {lengths} "
                "(set INPUT.MIN_SIZE_TRAIN_SAMPLING='choice' to pick one of several sizes)"
            )
        if any(v < 0 for v in lengths) or max_size <= 0:
            raise ValueError(
                "ResizeShortestEdge: sizes must be >= 0 and max_size > 0, "
                f"got {lengths}, {max_size}"
            )
        self.short_edge_length, self.max_size, self.sample_style = (
            lengths,
            int(max_size),
            sample_style,
        )

    def _sample_length(self) -> int:
        if self.sample_style == "range":
            return int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        return int(np.random.choice(self.short_edge_length))

    @staticmethod
    def get_output_shape(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
        """(new_h, new_w) for an ``h`` x ``w`` image, rounded to the nearest integer."""
        size = float(short_edge)
        scale = size / min(h, w)
        # The short side gets exactly ``size`` (no float round-off), as in detectron2.
        new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
        if max(new_h, new_w) > max_size:
            shrink = max_size / max(new_h, new_w)
            new_h, new_w = new_h * shrink, new_w * shrink
        return int(new_h + 0.5), int(new_w + 0.5)

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        size = self._sample_length()
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)


class RandomFlip(Augmentation):
    """Flip horizontally (or vertically) with probability ``prob``."""

    def __init__(
        self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False
    ) -> None:
        if horizontal == vertical:
            raise ValueError("RandomFlip: choose exactly one of horizontal=True or vertical=True")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {prob}")
        self.prob, self.horizontal, self.vertical = float(prob), horizontal, vertical

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if np.random.uniform() >= self.prob:
            return NoOpTransform()
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class RandomCrop(Augmentation):
    """Cut a random window (INPUT.CROP, detectron2's four types) out of the image.

    ``crop_type`` "relative": ``crop_size`` (h, w) fractions of the image; "relative_range": each
    fraction drawn in ``[crop_size, 1]``; "absolute": ``crop_size`` pixels (at most the image);
    "absolute_range": each side drawn in ``[crop_size[0], crop_size[1]]`` pixels (at most the
    image). The window's corner is drawn uniformly.
    """

    TYPES = ("relative_range", "relative", "absolute", "absolute_range")

    def __init__(self, crop_type: str, crop_size: Sequence[float]) -> None:
        if crop_type not in self.TYPES:
            raise ValueError(f"INPUT.CROP.TYPE must be one of {self.TYPES}, got {crop_type!r}")
        size = tuple(float(v) for v in crop_size)
        if len(size) != 2:
            raise ValueError(f"INPUT.CROP.SIZE must have 2 values, got {list(crop_size)}")
        if crop_type.startswith("relative") and not all(0 < v <= 1 for v in size):
            raise ValueError(f"INPUT.CROP.SIZE of type {crop_type!r} must be in (0, 1], got {size}")
        if crop_type.startswith("absolute") and not all(v >= 1 for v in size):
            raise ValueError(f"INPUT.CROP.SIZE of type {crop_type!r} must be >= 1, got {size}")
        if crop_type == "absolute_range" and size[0] > size[1]:
            raise ValueError(f"INPUT.CROP.SIZE of type 'absolute_range' needs min <= max: {size}")
        self.crop_type, self.crop_size = crop_type, size

    def get_crop_size(self, h: int, w: int) -> Tuple[int, int]:
        """(crop_h, crop_w) for an ``h`` x ``w`` image."""
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            lo = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = lo + np.random.rand(2) * (1 - lo)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        a, b = int(self.crop_size[0]), int(self.crop_size[1])
        if self.crop_type == "absolute":
            return min(a, h), min(b, w)
        ch = int(np.random.randint(min(h, a), min(h, b) + 1))
        cw = int(np.random.randint(min(w, a), min(w, b) + 1))
        return ch, cw

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        ch, cw = self.get_crop_size(h, w)
        ch, cw = max(1, min(ch, h)), max(1, min(cw, w))
        y0 = int(np.random.randint(h - ch + 1))
        x0 = int(np.random.randint(w - cw + 1))
        return CropTransform(x0, y0, cw, ch)


def apply_augmentations(
    augmentations: Sequence[Augmentation], image: np.ndarray
) -> Tuple[np.ndarray, TransformList]:
    """Apply each augmentation in turn; returns the new image and the transforms, for the boxes."""
    done: List[Transform] = []
    for aug in augmentations:
        t = aug.get_transform(image)
        image = t.apply_image(image)
        done.append(t)
    return image, TransformList(done)

"""Deterministic geometric transforms, each applied the same way to an image and to its boxes.

A transform knows its parameters (sizes, flip width); :mod:`.augmentation` decides them at random.
Boxes are Nx4 XYXY_ABS arrays in continuous pixel coordinates (a pixel covers [x, x + 1)).
"""

from __future__ import annotations

from typing import Iterable, List

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "Transform",
    "NoOpTransform",
    "ResizeTransform",
    "HFlipTransform",
    "VFlipTransform",
    "TransformList",
]


class Transform:
    """Base class: subclasses define ``apply_image`` and ``apply_coords``; boxes follow the
    corners."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Transform Nx2 (x, y) points."""
        raise NotImplementedError

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """Transform Nx4 XYXY boxes: the box around the four transformed corners."""
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        idx = np.array([[0, 1], [2, 1], [0, 3], [2, 3]]).flatten()
        corners = self.apply_coords(box[:, idx].reshape(-1, 2)).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class NoOpTransform(Transform):
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords


class ResizeTransform(Transform):
    """Resize an ``h`` x ``w`` image to ``new_h`` x ``new_w`` (bilinear, through PIL for uint8
    images as detectron2 does, so that pixels match models trained with it); coordinates scale
    exactly."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        self.h, self.w, self.new_h, self.new_w = int(h), int(w), int(new_h), int(new_w)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects a {self.h}x{self.w} image, "
                f"got {img.shape[0]}x{img.shape[1]}"
            )
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (1, 3, 4)):
            squeeze = img.ndim == 3 and img.shape[2] == 1
            pil = Image.fromarray(img[:, :, 0] if squeeze else img)
            out = np.asarray(pil.resize((self.new_w, self.new_h), Image.BILINEAR))
            return out[:, :, None] if squeeze else out
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords


class HFlipTransform(Transform):
    """Mirror left-right in an image of width ``width``: x -> width - x."""

    def __init__(self, width: int) -> None:
        self.width = int(width)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class VFlipTransform(Transform):
    """Mirror top-bottom in an image of height ``height``: y -> height - y."""

    def __init__(self, height: int) -> None:
        self.height = int(height)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 1] = self.height - coords[:, 1]
        return coords


class TransformList(Transform):
    """Several transforms applied in order."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        flat: List[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, TransformList) else [t])
        self.transforms = flat

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            img = t.apply_image(img)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            box = t.apply_box(box)
        return np.asarray(box, dtype=np.float64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self.transforms)

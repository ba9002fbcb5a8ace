"""Geometric augmentations for detection: ResizeShortestEdge and RandomFlip, applied alike to images
and boxes (detectron2's names and semantics)."""

from .augmentation import (
    Augmentation,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
)
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
    "RandomCrop",
    "RandomFlip",
    "ResizeShortestEdge",
    "apply_augmentations",
    "CropTransform",
    "HFlipTransform",
    "NoOpTransform",
    "ResizeTransform",
    "Transform",
    "TransformList",
    "VFlipTransform",
]

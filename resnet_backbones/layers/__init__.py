"""Small building blocks shared by the backbone and the detector."""

from .batch_norm import FrozenBatchNorm2d, NormSpec, convert_frozen_batchnorm, get_norm
from .mask_ops import paste_masks_in_image
from .shape_spec import ShapeSpec
from .wrappers import Conv2d

__all__ = [
    "Conv2d",
    "FrozenBatchNorm2d",
    "NormSpec",
    "ShapeSpec",
    "convert_frozen_batchnorm",
    "get_norm",
    "paste_masks_in_image",
]

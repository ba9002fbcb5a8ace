"""Data structures shared by data loading, the detector and the evaluators (detectron2's API)."""

from .boxes import Boxes, BoxMode, pairwise_iou
from .image_list import ImageList
from .instances import Instances
from .masks import BitMasks, PolygonMasks, polygons_to_bitmask

__all__ = [
    "BitMasks",
    "Boxes",
    "BoxMode",
    "ImageList",
    "Instances",
    "PolygonMasks",
    "pairwise_iou",
    "polygons_to_bitmask",
]

"""Dataset loaders (COCO json, PASCAL VOC xml) and the builtin registrations (detectron2's
names)."""

from . import builtin as _builtin
from .annotation_checks import BadAnnotationError, bad_annotation_policy
from .builtin_meta import COCO_CATEGORIES, VOC_CLASSES
from .coco import load_coco_json, register_coco_instances
from .pascal_voc import load_voc_instances, register_pascal_voc

_builtin.register_all()

__all__ = [
    "BadAnnotationError",
    "bad_annotation_policy",
    "COCO_CATEGORIES",
    "VOC_CLASSES",
    "load_coco_json",
    "register_coco_instances",
    "load_voc_instances",
    "register_pascal_voc",
]

"""Register detectron2's builtin dataset names (and the synthetic shapes) under one root.

The root is ``$RB_DATASETS`` (default ``./datasets``, relative to the working directory as in
detectron2); datasets/README.md describes each layout. Registration only records paths: nothing is
read until ``DatasetCatalog.get(name)``, so importing works without any dataset on disk.
"""

from __future__ import annotations

import os
from typing import Dict, Tuple

from ..catalog import DatasetCatalog
from .builtin_meta import coco_metadata
from .coco import register_coco_instances
from .pascal_voc import register_pascal_voc

# name -> (image_root, json_file), relative to the root; detectron2's names and paths.
COCO_SPLITS: Dict[str, Tuple[str, str]] = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": (
        "coco/val2014",
        "coco/annotations/instances_valminusminival2014.json",
    ),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}

# name -> (directory, split, year), relative to the root.
VOC_SPLITS: Dict[str, Tuple[str, str, int]] = {
    "voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "voc_2007_train": ("VOC2007", "train", 2007),
    "voc_2007_val": ("VOC2007", "val", 2007),
    "voc_2007_test": ("VOC2007", "test", 2007),
    "voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "voc_2012_train": ("VOC2012", "train", 2012),
    "voc_2012_val": ("VOC2012", "val", 2012),
}

SHAPES_SPLITS = ("train", "val")


def default_root() -> str:
    return os.path.expanduser(os.getenv("RB_DATASETS", "datasets"))


def register_all_coco(root: str) -> None:
    for name, (image_root, json_file) in COCO_SPLITS.items():
        register_coco_instances(
            name, coco_metadata(), os.path.join(root, json_file), os.path.join(root, image_root)
        )


def register_all_pascal_voc(root: str) -> None:
    for name, (dirname, split, year) in VOC_SPLITS.items():
        register_pascal_voc(name, os.path.join(root, dirname), split, year)


def register_all_shapes(root: str) -> None:
    """shapes_{train,val} (COCO json, COCO evaluator) and shapes_voc_{train,val} (same images,
    VOC xml)."""
    from ..shapes import SHAPES_CLASSES

    base = os.path.join(root, "shapes")
    meta = {
        "thing_classes": list(SHAPES_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPES_CLASSES))},
    }
    for split in SHAPES_SPLITS:
        json_file = os.path.join(base, "annotations", f"instances_{split}.json")
        register_coco_instances(f"shapes_{split}", dict(meta), json_file, os.path.join(base, split))
        # year 2012: area-under-curve AP (2007 would select VOC's 11-point metric).
        register_pascal_voc(
            f"shapes_voc_{split}", os.path.join(base, "VOC"), split, 2012, SHAPES_CLASSES
        )


def register_all(root: str | None = None) -> None:
    """Register every builtin name once (later calls are no-ops)."""
    if "coco_2017_train" in DatasetCatalog:
        return
    root = default_root() if root is None else root
    register_all_coco(root)
    register_all_pascal_voc(root)
    register_all_shapes(root)


__all__ = [
    "register_all",
    "register_all_coco",
    "register_all_pascal_voc",
    "register_all_shapes",
    "default_root",
    "COCO_SPLITS",
    "VOC_SPLITS",
]

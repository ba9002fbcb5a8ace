"""Datasets, their catalog, and the data path from files to model inputs."""

from . import (  # noqa: F401  (detectron2's submodule names)
    datasets,  # noqa: F401  (registers the builtin dataset names; reads no file)
    detection_utils,
    samplers,
    transforms,
)
from .build import (
    DataLoadError,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from .catalog import DatasetCatalog, Metadata, MetadataCatalog
from .dataset_mapper import DatasetMapper
from .datasets import (
    load_coco_json,
    load_voc_instances,
    register_coco_instances,
    register_pascal_voc,
)
from .samplers import AspectRatioGroupedDataset, InferenceSampler, TrainingSampler

__all__ = [
    "DatasetCatalog",
    "Metadata",
    "MetadataCatalog",
    "DataLoadError",
    "DatasetMapper",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "load_coco_json",
    "load_voc_instances",
    "register_coco_instances",
    "register_pascal_voc",
    "AspectRatioGroupedDataset",
    "InferenceSampler",
    "TrainingSampler",
]

"""resnet-backbones: paper-faithful, fast ResNet backbones and a Faster R-CNN C4 pipeline."""

from .config import get_cfg
from .data import DatasetCatalog, MetadataCatalog
from .engine import DefaultPredictor
from .modeling import build_model, create_model, list_models, prepare_model, register_model
from .modeling.backbone import create_backbone

__version__ = "0.1.0"

__all__ = [
    "get_cfg",
    "DatasetCatalog",
    "MetadataCatalog",
    "build_model",
    "prepare_model",
    "DefaultPredictor",
    "create_backbone",
    "create_model",
    "list_models",
    "register_model",
]

"""Whole-model architectures (GeneralizedRCNN), built by name from a config."""
from .build import META_ARCH_REGISTRY, build_model
from .rcnn import GeneralizedRCNN

__all__ = ["META_ARCH_REGISTRY", "build_model", "GeneralizedRCNN"]

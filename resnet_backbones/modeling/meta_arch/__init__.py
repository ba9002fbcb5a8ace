"""Whole-model architectures (GeneralizedRCNN), built by name from a config."""
from .build import META_ARCH_REGISTRY, build_model

__all__ = ["META_ARCH_REGISTRY", "build_model"]

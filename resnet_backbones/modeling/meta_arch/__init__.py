"""Whole-model architectures (GeneralizedRCNN, ProposalNetwork), built by name from a config."""

from .build import META_ARCH_REGISTRY, PREPARE_MODES, build_model, prepare_model
from .rcnn import GeneralizedRCNN, ProposalNetwork

__all__ = [
    "META_ARCH_REGISTRY",
    "PREPARE_MODES",
    "build_model",
    "prepare_model",
    "GeneralizedRCNN",
    "ProposalNetwork",
]

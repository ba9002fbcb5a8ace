"""Networks: backbones (modeling/backbone) and detectors (modeling/meta_arch, ...)."""

from .backbone import (
    BACKBONE_REGISTRY,
    Backbone,
    build_backbone,
    create_model,
    list_models,
    register_model,
)
from .fast_path import (
    optimize_detector_for_inference,
    optimize_detector_for_training,
    optimize_folding_state_dict,
    optimize_keeping_state_dict,
)
from .fuse import fold_batch_norm, freeze_for_inference, optimize_for_inference
from .meta_arch import (
    META_ARCH_REGISTRY,
    PREPARE_MODES,
    GeneralizedRCNN,
    ProposalNetwork,
    build_model,
    prepare_model,
)
from .test_time_augmentation import DatasetMapperTTA, GeneralizedRCNNWithTTA

__all__ = [
    "BACKBONE_REGISTRY",
    "Backbone",
    "build_backbone",
    "create_model",
    "list_models",
    "register_model",
    "META_ARCH_REGISTRY",
    "GeneralizedRCNN",
    "ProposalNetwork",
    "build_model",
    "prepare_model",
    "PREPARE_MODES",
    "fold_batch_norm",
    "freeze_for_inference",
    "optimize_for_inference",
    "optimize_detector_for_inference",
    "optimize_detector_for_training",
    "optimize_folding_state_dict",
    "optimize_keeping_state_dict",
    "DatasetMapperTTA",
    "GeneralizedRCNNWithTTA",
]

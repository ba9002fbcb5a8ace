"""ResNet backbones: blocks, stages, the network, and registries to find them by name."""

from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .registry import MODEL_REGISTRY, create_model, list_models, register_model
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    CifarStem,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResNet,
    ResNetBlockBase,
    build_resnet,
    build_resnet_backbone,
    create_backbone,
    make_stage,
)

__all__ = [
    "Backbone",
    "BACKBONE_REGISTRY",
    "build_backbone",
    "MODEL_REGISTRY",
    "create_model",
    "list_models",
    "register_model",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CifarStem",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "ResNetBlockBase",
    "build_resnet",
    "build_resnet_backbone",
    "create_backbone",
    "make_stage",
]

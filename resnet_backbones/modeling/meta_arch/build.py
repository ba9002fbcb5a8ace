"""Build the whole model from a config, through detectron2's ``META_ARCH_REGISTRY`` pattern."""
from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import build_from_registry

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Meta-architectures ``(cfg) -> nn.Module`` (``GeneralizedRCNN``), chosen by MODEL.META_ARCHITECTURE.
"""


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``cfg.MODEL.DEVICE``.

    Weights are not loaded here; use the checkpointer with ``cfg.MODEL.WEIGHTS``.
    """
    model = build_from_registry(META_ARCH_REGISTRY, cfg.MODEL.META_ARCHITECTURE,
                                "MODEL.META_ARCHITECTURE", "meta-architecture", cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model

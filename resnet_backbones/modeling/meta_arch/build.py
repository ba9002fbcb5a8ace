"""Build the whole model from a config, through detectron2's ``META_ARCH_REGISTRY`` pattern."""
from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Meta-architectures ``(cfg) -> nn.Module`` (``GeneralizedRCNN``), chosen by MODEL.META_ARCHITECTURE.
"""


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``cfg.MODEL.DEVICE``.

    Weights are not loaded here; use the checkpointer with ``cfg.MODEL.WEIGHTS``.
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:
        known = sorted(n for n, _ in META_ARCH_REGISTRY)
        raise KeyError(f"MODEL.META_ARCHITECTURE: unknown meta-architecture '{name}'; registered: {known}")
    model = META_ARCH_REGISTRY.get(name)(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model

"""Build a detection backbone from a config, through detectron2's ``BACKBONE_REGISTRY`` pattern."""

from __future__ import annotations

from typing import Optional

from fvcore.common.registry import Registry

from ...layers import ShapeSpec
from ...utils.registry import build_from_registry
from .backbone import Backbone

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbone builders ``(cfg, input_shape: ShapeSpec) -> Backbone``, chosen by MODEL.BACKBONE.NAME.
"""


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME``."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = build_from_registry(
        BACKBONE_REGISTRY, name, "MODEL.BACKBONE.NAME", "backbone builder", cfg, input_shape
    )
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"MODEL.BACKBONE.NAME '{name}' returned {type(backbone).__name__}, not a Backbone"
        )
    return backbone

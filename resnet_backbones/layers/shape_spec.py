"""``ShapeSpec``: what a feature map looks like, as in detectron2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (and, when known, height and width) of a feature map."""

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None

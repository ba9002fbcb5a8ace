"""The ``Backbone`` interface: named feature maps with known channels and strides (detectron2's)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Dict

import torch
from torch import nn

from ...layers import ShapeSpec


class Backbone(nn.Module, metaclass=ABCMeta):
    """A network that maps an image batch to a dict of named feature maps.

    Subclasses set ``_out_features``, ``_out_feature_channels`` and ``_out_feature_strides``.
    """

    _out_features: list[str]
    _out_feature_channels: Dict[str, int]
    _out_feature_strides: Dict[str, int]

    @abstractmethod
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]: ...

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be a multiple of this (0: no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """``{name: ShapeSpec(channels, stride)}`` for every output feature."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

"""The RPN head (Faster R-CNN, Sec. 3.1): a 3x3 conv + ReLU, then two sibling 1x1 convs.

``StandardRPNHead`` predicts, at every position of every input feature map, one objectness logit
and four box deltas for each of the A anchors of that position. Module names are detectron2's
(``conv``, ``objectness_logits``, ``anchor_deltas``), so its checkpoints load by name.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from fvcore.common.registry import Registry
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, ShapeSpec
from ...utils.registry import lookup
from ..anchor_generator import build_anchor_generator

__all__ = ["RPN_HEAD_REGISTRY", "StandardRPNHead", "build_rpn_head"]

RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
RPN_HEAD_REGISTRY.__doc__ = """
RPN heads ``(cfg, input_shape: list[ShapeSpec]) -> nn.Module``, chosen by MODEL.RPN.HEAD_NAME.
"""


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(nn.Module):
    """Shared conv(s) + objectness and anchor-delta predictors, applied to every feature map.

    Args:
        in_channels: channels of the input feature maps (all equal).
        num_anchors: anchors per position (A).
        box_dim: numbers per box delta (4).
        conv_dims: output channels of the hidden 3x3 convs; -1 keeps ``in_channels``. One entry
            builds a single conv named ``conv``; several build ``conv.conv0``, ``conv.conv1``, ...
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        box_dim: int = 4,
        conv_dims: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        conv_dims = list(conv_dims)
        if not conv_dims:
            raise ValueError(
                "MODEL.RPN.CONV_DIMS must have at least one entry (-1: input channels)"
            )
        channels = in_channels
        if len(conv_dims) == 1:
            out = channels if conv_dims[0] == -1 else conv_dims[0]
            self.conv = self._hidden_conv(channels, out)
            channels = out
        else:
            self.conv = nn.Sequential()
            for k, dim in enumerate(conv_dims):
                out = channels if dim == -1 else dim
                self.conv.add_module(f"conv{k}", self._hidden_conv(channels, out))
                channels = out
        self.objectness_logits = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * box_dim, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)

    @staticmethod
    def _hidden_conv(in_channels: int, out_channels: int) -> Conv2d:
        if out_channels <= 0:
            raise ValueError(
                f"MODEL.RPN.CONV_DIMS: conv output channels must be positive, got {out_channels}"
            )
        return Conv2d(in_channels, out_channels, kernel_size=3, padding=1, activation=F.relu)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: List[ShapeSpec]) -> Dict[str, Any]:
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                "StandardRPNHead needs equal channels on all input features, "
                f"got {sorted(channels)}"
            )
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = set(anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError(
                "StandardRPNHead needs the same number of anchors per position "
                f"on every feature map, got {anchor_generator.num_anchors}"
            )
        return {
            "in_channels": channels.pop(),
            "num_anchors": num_anchors.pop(),
            "box_dim": anchor_generator.box_dim,
            "conv_dims": cfg.MODEL.RPN.CONV_DIMS,
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per feature map: objectness logits ``(N, A, H, W)`` and deltas ``(N, A * 4, H, W)``."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def build_rpn_head(cfg: Any, input_shape: List[ShapeSpec]) -> nn.Module:
    """The RPN head named by ``cfg.MODEL.RPN.HEAD_NAME``."""
    name = cfg.MODEL.RPN.HEAD_NAME
    cls = lookup(RPN_HEAD_REGISTRY, name, "MODEL.RPN.HEAD_NAME", "RPN head")
    return cls(**cls.from_config(cfg, input_shape))

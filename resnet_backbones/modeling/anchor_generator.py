"""Anchors for the RPN: detectron2's ``DefaultAnchorGenerator`` semantics.

For every feature map of stride ``s`` and every grid cell ``(i, j)`` the anchors are the cell
anchors shifted by ``(offset * s + j * s, offset * s + i * s)``. Cell anchors are centred on the
origin, one per (size, aspect ratio) pair with sizes in the outer loop: a box of area ``size**2``
with ``height / width == aspect_ratio``. Anchors are ordered (row, column, cell anchor), which is
the order in which the RPN head's outputs are flattened.

Anchors are kept in non-persistent buffers: they follow ``model.to(device)`` but are not part of
the state dict (detectron2 checkpoints do not contain them either).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Union

import torch
from fvcore.common.registry import Registry
from torch import nn

from ..layers import ShapeSpec
from ..structures import Boxes
from ..utils.registry import lookup

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BufferList",
    "DefaultAnchorGenerator",
    "build_anchor_generator",
    "generate_cell_anchors",
]

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """
Anchor generators ``(cfg, input_shape: list[ShapeSpec]) -> nn.Module``, chosen by
MODEL.ANCHOR_GENERATOR.NAME.
"""


class BufferList(nn.Module):
    """Tensors that move with the module (``.to(device)``) but are not saved in its state dict."""

    def __init__(self, buffers: Sequence[torch.Tensor]) -> None:
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self._buffers.values())

    def __getitem__(self, index: int) -> torch.Tensor:
        return list(self._buffers.values())[index]


def _per_level(values: Any, num_levels: int, name: str) -> List[List[float]]:
    """Broadcast ``values`` (a list, or a list of lists with one entry per level) to every level."""
    values = list(values)
    if not values:
        raise ValueError(f"MODEL.ANCHOR_GENERATOR.{name} is empty")
    if not isinstance(values[0], (list, tuple)):
        return [[float(v) for v in values]] * num_levels
    if len(values) == 1:
        return [[float(v) for v in values[0]]] * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.{name} has {len(values)} lists for {num_levels} feature maps; "
            f"give one list (shared) or one per feature map"
        )
    return [[float(v) for v in level] for level in values]


def generate_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """``(len(sizes) * len(aspect_ratios), 4)`` XYXY anchors centred on (0, 0); sizes vary
    slowest."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            # height / width == ratio and width * height == area
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator(nn.Module):
    """Axis-aligned anchors for one or more feature maps.

    Args:
        sizes: per feature map, anchor sizes in input-image pixels (sqrt of the anchor area).
        aspect_ratios: per feature map, height / width ratios.
        strides: stride of each feature map.
        offset: anchor centre of the first cell, as a fraction of the stride (0.0 or 0.5).
    """

    box_dim: int = 4

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.num_features = len(self.strides)
        sizes = _per_level(sizes, self.num_features, "SIZES")
        aspect_ratios = _per_level(aspect_ratios, self.num_features, "ASPECT_RATIOS")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.ANCHOR_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        self.offset = float(offset)
        self.cell_anchors = BufferList(
            [generate_cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios)]
        )

    @classmethod
    def from_config(cls, cfg: Any, input_shape: List[ShapeSpec]) -> Dict[str, Any]:
        """Constructor arguments from ``cfg.MODEL.ANCHOR_GENERATOR`` and the feature strides."""
        a = cfg.MODEL.ANCHOR_GENERATOR
        return {
            "sizes": a.SIZES,
            "aspect_ratios": a.ASPECT_RATIOS,
            "strides": [shape.stride for shape in input_shape],
            "offset": a.OFFSET,
        }

    @property
    def num_cell_anchors(self) -> List[int]:
        return self.num_anchors

    @property
    def num_anchors(self) -> List[int]:
        """Anchors per grid cell, for each feature map (A in the RPN head's outputs)."""
        return [len(cell) for cell in self.cell_anchors]

    def _grid_anchors(self, grid_sizes: List[Sequence[int]]) -> List[torch.Tensor]:
        out = []
        for (height, width), stride, cell in zip(grid_sizes, self.strides, self.cell_anchors):
            start = self.offset * stride
            xs = torch.arange(
                start, width * stride, step=stride, dtype=torch.float32, device=cell.device
            )
            ys = torch.arange(
                start, height * stride, step=stride, dtype=torch.float32, device=cell.device
            )
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            out.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return out

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """One ``Boxes`` of ``H * W * A`` anchors per feature map (shared by all images)."""
        if len(features) != self.num_features:
            raise ValueError(
                f"anchor generator built for {self.num_features} feature maps, got {len(features)}"
            )
        grid_sizes = [tuple(f.shape[-2:]) for f in features]
        return [Boxes(anchors) for anchors in self._grid_anchors(grid_sizes)]

    def extra_repr(self) -> str:
        return f"strides={self.strides}, num_anchors={self.num_anchors}, offset={self.offset}"


def build_anchor_generator(cfg: Any, input_shape: Union[ShapeSpec, List[ShapeSpec]]) -> nn.Module:
    """The anchor generator named by ``cfg.MODEL.ANCHOR_GENERATOR.NAME``."""
    if isinstance(input_shape, ShapeSpec):
        input_shape = [input_shape]
    name = cfg.MODEL.ANCHOR_GENERATOR.NAME
    cls = lookup(ANCHOR_GENERATOR_REGISTRY, name, "MODEL.ANCHOR_GENERATOR.NAME", "anchor generator")
    return cls(**cls.from_config(cfg, input_shape))

"""Pool a fixed-size feature for each box (RoI) from one or more feature maps.

``ROIAlignV2`` is torchvision's ``roi_align(aligned=True)``: box coordinates are shifted by half a
pixel so that a box's continuous coordinates map onto feature-map coordinates without the
misalignment of the original RoIAlign (``ROIAlign``, ``aligned=False``). ``ROIPool`` is the
quantized Fast R-CNN pooling. The C4 detector pools from a single map (res4, stride 16); with
several maps (FPN) each box goes to level ``floor(canonical_level + log2(sqrt(area) / 224))``.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool

from ..structures import Boxes

__all__ = ["ROIPooler", "POOLER_TYPES", "convert_boxes_to_pooler_format", "assign_boxes_to_levels"]

POOLER_TYPES = ("ROIAlignV2", "ROIAlign", "ROIPool")


class _RoIOp(nn.Module):
    """One pooling op for one feature map: ``(features, rois (K, 5)) -> (K, C, out_h, out_w)``."""

    def __init__(
        self, kind: str, output_size: Tuple[int, int], spatial_scale: float, sampling_ratio: int
    ) -> None:
        super().__init__()
        self.kind = kind
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        rois = rois.to(dtype=x.dtype)
        if self.kind == "ROIPool":
            return roi_pool(x, rois, self.output_size, self.spatial_scale)
        return roi_align(
            x,
            rois,
            self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.kind == "ROIAlignV2",
        )

    def extra_repr(self) -> str:
        return (
            f"{self.kind}, output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}"
        )


def convert_boxes_to_pooler_format(box_lists: List[Boxes]) -> torch.Tensor:
    """``(K, 5)`` rows ``(image index, x0, y0, x1, y1)`` from per-image boxes."""
    tensors = [b.tensor for b in box_lists]
    indices = [
        torch.full((len(t), 1), i, dtype=t.dtype, device=t.device) for i, t in enumerate(tensors)
    ]
    return torch.cat([torch.cat(indices, dim=0), torch.cat(tensors, dim=0)], dim=1)


def assign_boxes_to_levels(
    box_lists: List[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: int,
    canonical_level: int,
) -> torch.Tensor:
    """Feature-map index (0-based from ``min_level``) of every box (FPN paper, Eq. 1)."""
    sizes = torch.sqrt(torch.cat([b.area() for b in box_lists]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    levels = levels.clamp(min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """Pool ``output_size`` features for each box from the feature map(s) of the given scales.

    Args:
        output_size: ``int`` or ``(h, w)``.
        scales: ``1 / stride`` of each feature map, finest first, each a power of 2.
        sampling_ratio: samples per bin side for RoIAlign (0: adaptive, ``ceil(roi_size / out)``).
        pooler_type: "ROIAlignV2" (detectron2's default), "ROIAlign" or "ROIPool".
    """

    def __init__(
        self,
        output_size: Union[int, Sequence[int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or (h, w), got {output_size}")
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.POOLER_TYPE: unknown pooler '{pooler_type}'; "
                f"expected one of {POOLER_TYPES}"
            )
        if not scales:
            raise ValueError("ROIPooler needs at least one feature-map scale")
        self.output_size = output_size
        self.pooler_type = pooler_type
        self.level_poolers = nn.ModuleList(
            _RoIOp(pooler_type, output_size, float(scale), int(sampling_ratio)) for scale in scales
        )
        min_level = -math.log2(scales[0])
        max_level = -math.log2(scales[-1])
        if not (
            math.isclose(min_level, round(min_level)) and math.isclose(max_level, round(max_level))
        ):
            raise ValueError(f"feature-map scales must be powers of 2, got {list(scales)}")
        self.min_level, self.max_level = int(round(min_level)), int(round(max_level))
        if len(scales) != self.max_level - self.min_level + 1:
            raise ValueError(
                f"feature-map scales must be consecutive powers of 2, got {list(scales)}"
            )
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be positive, got {canonical_box_size}")
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """``(sum of boxes, C, out_h, out_w)`` features, boxes in image order.

        ``x``: one ``(N, C, H, W)`` tensor per feature map; ``box_lists``: N ``Boxes`` in input
        image coordinates.
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(
                f"ROIPooler built for {len(self.level_poolers)} feature maps, got {len(x)}"
            )
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(f"{len(box_lists)} box lists for a batch of {x[0].shape[0]} images")
        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            if rois.shape[0] == 0:
                return x[0].new_zeros((0, x[0].shape[1]) + self.output_size)
            return self.level_poolers[0](x[0], rois)

        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        out = x[0].new_zeros((rois.shape[0], x[0].shape[1]) + self.output_size)
        for level, (features, pooler) in enumerate(zip(x, self.level_poolers)):
            idx = torch.nonzero(levels == level, as_tuple=True)[0]
            if idx.numel():
                out.index_put_((idx,), pooler(features, rois[idx]))
        return out

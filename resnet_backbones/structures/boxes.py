"""Axis-aligned boxes: ``BoxMode`` conversions and a ``Boxes`` container, with detectron2's API."""

from __future__ import annotations

from enum import IntEnum
from typing import Iterator, List, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.ops import box_iou


class BoxMode(IntEnum):
    """How a box is written; values equal detectron2's so serialized dicts stay compatible."""

    XYXY_ABS = 0  # (x0, y0, x1, y1) in absolute pixels
    XYWH_ABS = 1  # (x0, y0, w, h) in absolute pixels (COCO)

    @staticmethod
    def convert(box, from_mode: "BoxMode", to_mode: "BoxMode"):
        """Convert one box (list/tuple) or many (Nx4 array/tensor) between modes."""
        from_mode, to_mode = BoxMode(from_mode), BoxMode(to_mode)
        if from_mode == to_mode:
            return box
        single = isinstance(box, (list, tuple))
        if single:
            if len(box) != 4:
                raise ValueError(f"BoxMode.convert expects 4 numbers per box, got {box!r}")
            arr = torch.tensor([box], dtype=torch.float64)
        elif isinstance(box, np.ndarray):
            arr = torch.from_numpy(np.asarray(box)).clone()
        else:
            arr = box.clone()
        if from_mode == BoxMode.XYWH_ABS:
            arr[..., 2] += arr[..., 0]
            arr[..., 3] += arr[..., 1]
        else:
            arr[..., 2] -= arr[..., 0]
            arr[..., 3] -= arr[..., 1]
        if single:
            return type(box)(arr[0].tolist())
        if isinstance(box, np.ndarray):
            return arr.numpy()
        return arr


class Boxes:
    """An Nx4 float tensor of (x0, y0, x1, y1) boxes with the operations detectors need."""

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray, Sequence]) -> None:
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(np.asarray(tensor), dtype=torch.float32)
        if tensor.numel() == 0:
            tensor = tensor.reshape(-1, 4).to(
                dtype=torch.float32 if not tensor.is_floating_point() else tensor.dtype
            )
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects an Nx4 tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, device) -> "Boxes":
        return Boxes(self.tensor.to(device))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        b = self.tensor
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def clip(self, box_size: Tuple[int, int]) -> None:
        """Clip in place to an image of ``(height, width)``."""
        h, w = box_size
        x1 = self.tensor[:, 0].clamp(min=0, max=w)
        y1 = self.tensor[:, 1].clamp(min=0, max=h)
        x2 = self.tensor[:, 2].clamp(min=0, max=w)
        y2 = self.tensor[:, 3].clamp(min=0, max=h)
        self.tensor = torch.stack((x1, y1, x2, y2), dim=-1)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Mask of boxes whose width and height both exceed ``threshold``."""
        b = self.tensor
        return ((b[:, 2] - b[:, 0]) > threshold) & ((b[:, 3] - b[:, 1]) > threshold)

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        h, w = box_size
        b = self.tensor
        t = boundary_threshold
        return (b[:, 0] >= -t) & (b[:, 1] >= -t) & (b[:, 2] < w + t) & (b[:, 3] < h + t)

    def get_centers(self) -> torch.Tensor:
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def __getitem__(self, item) -> "Boxes":
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        return Boxes(self.tensor[item])

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
        if not boxes_list:
            return cls(torch.empty(0, 4))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """NxM IoU matrix (torchvision's ``box_iou``)."""
    return box_iou(boxes1.tensor, boxes2.tensor)

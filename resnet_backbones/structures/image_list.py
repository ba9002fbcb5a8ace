"""``ImageList``: differently sized images padded into one batch tensor, with their true sizes."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F


class ImageList:
    """A padded ``(N, C, H, W)`` tensor and each image's ``(h, w)`` before padding."""

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]) -> None:
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @staticmethod
    def from_tensors(
        tensors: Sequence[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> "ImageList":
        """Pad ``(C, H, W)`` tensors bottom-right to a common size, a multiple of
        ``size_divisibility``."""
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        for t in tensors:
            if t.dim() != 3 or t.shape[0] != tensors[0].shape[0]:
                raise ValueError(
                    "images must be (C, H, W) with equal C; "
                    f"got shapes {[tuple(x.shape) for x in tensors]}"
                )
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(s[0] for s in image_sizes)
        max_w = max(s[1] for s in image_sizes)
        if size_divisibility > 1:
            stride = size_divisibility
            max_h = (max_h + stride - 1) // stride * stride
            max_w = (max_w + stride - 1) // stride * stride
        if len(tensors) == 1:
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], (0, max_w - w, 0, max_h - h), value=pad_value).unsqueeze(0)
        else:
            batched = tensors[0].new_full(
                (len(tensors), tensors[0].shape[0], max_h, max_w), pad_value
            )
            for img, pad in zip(tensors, batched):
                pad[..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched.contiguous(), image_sizes)

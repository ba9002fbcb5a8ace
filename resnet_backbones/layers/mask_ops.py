"""Paste ``M x M`` mask predictions into the image, at their boxes (detectron2's
``paste_masks_in_image`` semantics)."""

from __future__ import annotations

from typing import Tuple, Union

import torch
from torch.nn import functional as F

__all__ = ["paste_masks_in_image"]


def paste_masks_in_image(
    masks: torch.Tensor,
    boxes: Union[torch.Tensor, "object"],
    image_shape: Tuple[int, int],
    threshold: float = 0.5,
) -> torch.Tensor:
    """Masks ``(N, M, M)`` of values in [0, 1] resampled into an image of ``image_shape``
    ``(h, w)``, mask ``i`` stretched over ``boxes[i]`` (x0, y0, x1, y1; a ``Boxes`` or an
    ``(N, 4)`` tensor).

    Each image pixel center is mapped into its box's mask and sampled bilinearly
    (``grid_sample``, ``align_corners=False``, zeros outside the mask). Returns ``(N, h, w)``
    bool (``value >= threshold``), or uint8 ``value * 255`` for a negative ``threshold``.
    On the CPU each mask is sampled only around its box (1 pixel of margin), as in detectron2;
    pixels outside that region are 0.
    """
    if masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"only square masks are supported, got {tuple(masks.shape)}")
    if not isinstance(boxes, torch.Tensor):
        boxes = boxes.tensor
    n = len(masks)
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    binary = threshold >= 0
    out = torch.zeros(
        n, img_h, img_w, device=boxes.device, dtype=torch.bool if binary else torch.uint8
    )
    if n == 0:
        return out
    if len(boxes) != n:
        raise ValueError(f"{len(boxes)} boxes for {n} masks")
    masks = masks[:, None] if masks.dtype.is_floating_point else masks[:, None].float()
    # CPU: one mask at a time, sampled only around its box; GPU: all masks over the whole image
    groups = [slice(i, i + 1) for i in range(n)] if boxes.device.type == "cpu" else [slice(0, n)]
    for g in groups:
        if boxes.device.type == "cpu":
            b = boxes[g][0]
            x0r, y0r = (b[:2].floor() - 1).clamp(min=0).to(torch.int64).tolist()
            x1r = int(b[2].ceil().add(1).clamp(max=img_w))
            y1r = int(b[3].ceil().add(1).clamp(max=img_h))
        else:
            x0r, y0r, x1r, y1r = 0, 0, img_w, img_h
        pasted = _sample(masks[g], boxes[g], x0r, y0r, x1r, y1r)
        out[g, y0r:y1r, x0r:x1r] = pasted >= threshold if binary else (pasted * 255).to(torch.uint8)
    return out


def _sample(
    masks: torch.Tensor, boxes: torch.Tensor, x0r: int, y0r: int, x1r: int, y1r: int
) -> torch.Tensor:
    """``(n, 1, M, M)`` masks sampled at the pixel centers of the image region
    ``[y0r, y1r) x [x0r, x1r)``, each stretched over its box: ``(n, y1r - y0r, x1r - x0r)``."""
    n = len(masks)
    x0, y0, x1, y1 = boxes.float().split(1, dim=1)
    xs = torch.arange(x0r, x1r, device=boxes.device, dtype=torch.float32) + 0.5
    ys = torch.arange(y0r, y1r, device=boxes.device, dtype=torch.float32) + 0.5
    gx = (xs - x0) / (x1 - x0) * 2 - 1  # (n, w'): pixel centers in the box's [-1, 1] frame
    gy = (ys - y0) / (y1 - y0) * 2 - 1  # (n, h')
    grid = torch.stack(
        [
            gx[:, None, :].expand(n, gy.size(1), gx.size(1)),
            gy[:, :, None].expand(n, gy.size(1), gx.size(1)),
        ],
        dim=3,
    )
    return F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)[:, 0]

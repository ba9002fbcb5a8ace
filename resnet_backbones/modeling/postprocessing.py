"""Map detections from the resized network input back to the original image."""

from __future__ import annotations

from typing import Union

import torch

from ..layers.mask_ops import paste_masks_in_image
from ..structures import Instances

__all__ = ["detector_postprocess"]


def detector_postprocess(
    results: Instances,
    output_height: Union[int, torch.Tensor],
    output_width: Union[int, torch.Tensor],
    mask_threshold: float = 0.5,
) -> Instances:
    """Rescale ``results`` (boxes in the coordinates of the image the network saw, of size
    ``results.image_size``) to an image of ``(output_height, output_width)``.

    Boxes (``pred_boxes``, or ``proposal_boxes`` for proposals) are scaled by the ratio of the
    sizes, clipped to the output image, and empty boxes are dropped. The input is modified in place
    (its boxes are scaled) and a new ``Instances`` of ``image_size == (output_height,
    output_width)`` is returned. ``pred_masks`` ``(N, 1, M, M)`` mask probabilities (Mask R-CNN)
    are pasted into the output image at the final boxes: ``(N, H, W)`` bool, ``>= mask_threshold``
    (:func:`~resnet_backbones.layers.mask_ops.paste_masks_in_image`).
    """
    in_h, in_w = results.image_size
    out_h = output_height.float() if isinstance(output_height, torch.Tensor) else output_height
    out_w = output_width.float() if isinstance(output_width, torch.Tensor) else output_width
    scale_x, scale_y = out_w / in_w, out_h / in_h
    out = Instances((int(output_height), int(output_width)), **results.get_fields())
    if out.has("pred_boxes"):
        boxes = out.pred_boxes
    elif out.has("proposal_boxes"):
        boxes = out.proposal_boxes
    else:
        raise ValueError(
            "detector_postprocess: results have neither 'pred_boxes' nor 'proposal_boxes'"
        )
    boxes.scale(scale_x, scale_y)
    boxes.clip(out.image_size)
    out = out[boxes.nonempty()]
    if out.has("pred_masks"):  # (N, 1, M, M) probabilities -> (N, H, W) bool, pasted at the boxes
        out.pred_masks = paste_masks_in_image(
            out.pred_masks[:, 0], out.pred_boxes, out.image_size, threshold=mask_threshold
        )
    return out

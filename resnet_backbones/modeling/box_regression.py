"""The R-CNN box parametrization (Girshick et al.) with detectron2's weights and clamp.

A box ``(x0, y0, x1, y1)`` has width ``w = x1 - x0``, height ``h = y1 - y0`` and centre
``(x0 + w/2, y0 + h/2)``. The deltas that turn a source box into a target box are::

    dx = wx * (tx - sx) / sw      dw = ww * log(tw / sw)
    dy = wy * (ty - sy) / sh      dh = wh * log(th / sh)

``apply_deltas`` inverts this, clamping ``dw`` and ``dh`` (after dividing by their weights) at
``scale_clamp = log(1000 / 16)`` so that a wild prediction cannot overflow ``exp``.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from ..structures import Boxes

__all__ = [
    "DEFAULT_SCALE_CLAMP",
    "Box2BoxTransform",
    "dense_box_regression_loss",
    "smooth_l1_loss",
    "BOX_REG_LOSS_TYPES",
]

# Largest allowed log-scale change of width/height: a box may grow at most 1000/16 times.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

BOX_REG_LOSS_TYPES = ("smooth_l1", "giou", "diou", "ciou")


class Box2BoxTransform:
    """Encode boxes as deltas relative to source boxes and decode them back.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the deltas; (1, 1, 1, 1) for the RPN and
            (10, 10, 5, 5) for the Fast R-CNN head in detectron2's configs.
        scale_clamp: upper bound of ``dw / ww`` and ``dh / wh`` when decoding.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4:
            raise ValueError(
                f"box regression weights must be 4 numbers (wx, wy, ww, wh), got {weights}"
            )
        self.weights: Tuple[float, float, float, float] = weights  # type: ignore[assignment]
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"Box2BoxTransform(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"

    @staticmethod
    def _centers_sizes(boxes: torch.Tensor):
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` deltas that map each ``src_boxes[i]`` onto ``target_boxes[i]``."""
        if not isinstance(src_boxes, torch.Tensor) or not isinstance(target_boxes, torch.Tensor):
            raise TypeError("get_deltas takes tensors; pass Boxes.tensor")
        sx, sy, sw, sh = self._centers_sizes(src_boxes)
        tx, ty, tw, th = self._centers_sizes(target_boxes)
        wx, wy, ww, wh = self.weights
        dx = wx * (tx - sx) / sw
        dy = wy * (ty - sy) / sh
        dw = ww * torch.log(tw / sw)
        dh = wh * torch.log(th / sh)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode ``deltas`` ``(N, k * 4)`` against ``boxes`` ``(N, 4)``; returns ``(N, k * 4)``.

        ``k > 1`` holds class-specific deltas; every group of four applies to the same box.
        Computation is in float32 whatever the input dtype.
        """
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        cx, cy, w, h = self._centers_sizes(boxes)
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pred_cx = dx * w[:, None] + cx[:, None]
        pred_cy = dy * h[:, None] + cy[:, None]
        pred_w = torch.exp(dw) * w[:, None]
        pred_h = torch.exp(dh) * h[:, None]
        x0 = pred_cx - 0.5 * pred_w
        y0 = pred_cy - 0.5 * pred_h
        x1 = pred_cx + 0.5 * pred_w
        y1 = pred_cy + 0.5 * pred_h
        return torch.stack((x0, y0, x1, y1), dim=-1).reshape(deltas.shape)


def smooth_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float, reduction: str = "none"
) -> torch.Tensor:
    """Huber-style smooth L1 (Fast R-CNN); ``beta < 1e-5`` is exactly L1
    (detectron2's default 0)."""
    diff = torch.abs(input - target)
    if beta < 1e-5:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction != "none":
        raise ValueError(f"unknown reduction {reduction!r}")
    return loss


def dense_box_regression_loss(
    anchors: List[Union[Boxes, torch.Tensor]],
    box2box_transform: Box2BoxTransform,
    pred_anchor_deltas: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """Summed box regression loss over the foreground entries of dense predictions.

    Args:
        anchors: per feature map, ``(R_l, 4)`` anchors (shared by the images).
        pred_anchor_deltas: per feature map, ``(N, R_l, 4)`` predicted deltas.
        gt_boxes: per image, ``(R, 4)`` matched ground-truth box of every anchor (R = sum R_l).
        fg_mask: ``(N, R)`` boolean, the entries that contribute.
        box_reg_loss_type: "smooth_l1" (on deltas; ``beta=0`` is plain L1) or "giou" / "diou" /
            "ciou" (on decoded boxes).
    Returns:
        the sum of the loss over foreground entries (not normalized).
    """
    anchors_t = torch.cat([a.tensor if isinstance(a, Boxes) else a for a in anchors], dim=0)
    pred = torch.cat(pred_anchor_deltas, dim=1)
    if box_reg_loss_type == "smooth_l1":
        gt_deltas = torch.stack([box2box_transform.get_deltas(anchors_t, g) for g in gt_boxes])
        return smooth_l1_loss(
            pred[fg_mask], gt_deltas[fg_mask], beta=smooth_l1_beta, reduction="sum"
        )
    iou_losses = {
        "giou": generalized_box_iou_loss,
        "diou": distance_box_iou_loss,
        "ciou": complete_box_iou_loss,
    }
    if box_reg_loss_type not in iou_losses:
        raise ValueError(
            f"unknown box regression loss type '{box_reg_loss_type}'; "
            f"expected one of {BOX_REG_LOSS_TYPES}"
        )
    pred_boxes = torch.stack([box2box_transform.apply_deltas(d, anchors_t) for d in pred])
    return iou_losses[box_reg_loss_type](
        pred_boxes[fg_mask], torch.stack(gt_boxes)[fg_mask], reduction="sum", eps=1e-7
    )

"""Mask R-CNN's mask head (He et al. 2017), with detectron2's names and initialization.

In the C4 model (``Res5ROIHeads`` with ``MODEL.MASK_ON``) the head reads the res5 output of each
foreground RoI (7x7), upsamples it 2x with a transposed convolution and predicts one ``M x M``
(14x14) mask logit map per class with a 1x1 conv:

    [NUM_CONV x (3x3 conv + norm + ReLU)] -> deconv 2x2 / 2 + ReLU -> 1x1 predictor

Training: per-pixel binary cross-entropy between the logits of each RoI's ground-truth class and
its mask cut to the RoI box (``gt_masks.crop_and_resize``). Inference: the sigmoid of the
predicted class's map becomes ``pred_masks`` ``(N, 1, M, M)``; ``detector_postprocess`` pastes
it into the image (:func:`~resnet_backbones.layers.mask_ops.paste_masks_in_image`).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from fvcore.common.registry import Registry
from fvcore.nn.weight_init import c2_msra_fill
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, ShapeSpec, get_norm
from ...precision import fp32_if_reduced
from ...structures import Instances
from ...utils.events import get_event_storage, has_event_storage
from ...utils.registry import lookup

__all__ = [
    "ROI_MASK_HEAD_REGISTRY",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
]

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Mask heads ``(cfg, input_shape: ShapeSpec) -> nn.Module``, chosen by MODEL.ROI_MASK_HEAD.NAME.
"""


def mask_rcnn_loss(pred_mask_logits: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
    """Mean per-pixel BCE-with-logits of the mask of each RoI's ground-truth class.

    ``pred_mask_logits``: ``(R, C, M, M)`` (``C == 1``: class-agnostic), one row per foreground
    proposal of ``instances`` (each with ``proposal_boxes``, ``gt_classes``, ``gt_masks``), in
    order. With no foreground RoI the loss is ``0 * pred_mask_logits.sum()`` (a zero that keeps
    the graph connected).
    """
    m = pred_mask_logits.size(2)
    if pred_mask_logits.size(3) != m:
        raise ValueError(f"mask predictions must be square, got {tuple(pred_mask_logits.shape)}")
    agnostic = pred_mask_logits.size(1) == 1
    classes, targets = [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        classes.append(inst.gt_classes.to(torch.int64))
        crops = inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, m)
        targets.append(crops.to(pred_mask_logits.device))
    if not targets:
        return pred_mask_logits.sum() * 0
    gt = torch.cat(targets)
    gt_bool = gt if gt.dtype == torch.bool else gt > 0.5
    if agnostic:
        logits = pred_mask_logits[:, 0]
    else:
        rows = torch.arange(len(pred_mask_logits), device=pred_mask_logits.device)
        logits = pred_mask_logits[rows, torch.cat(classes).to(pred_mask_logits.device)]
    if has_event_storage():  # detectron2's training metrics (threshold: logit 0)
        wrong = (logits > 0) != gt_bool
        num_pos = int(gt_bool.sum())
        storage = get_event_storage()
        storage.put_scalar("mask_rcnn/accuracy", 1 - int(wrong.sum()) / max(wrong.numel(), 1))
        storage.put_scalar(
            "mask_rcnn/false_positive",
            int((wrong & ~gt_bool).sum()) / max(gt_bool.numel() - num_pos, 1),
        )
        storage.put_scalar(
            "mask_rcnn/false_negative", int((wrong & gt_bool).sum()) / max(num_pos, 1)
        )
    return F.binary_cross_entropy_with_logits(logits, gt.to(logits.dtype), reduction="mean")


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: List[Instances]) -> None:
    """Set ``pred_masks`` ``(N_i, 1, M, M)`` (probabilities: sigmoid of the map of each
    detection's ``pred_classes``) on each image's detections, in place. Float32 under a
    reduced-precision autocast (the masks are then resampled into the image)."""
    pred_mask_logits = fp32_if_reduced(pred_mask_logits)
    if pred_mask_logits.size(1) == 1:
        probs = pred_mask_logits.sigmoid()
    else:
        classes = torch.cat([i.pred_classes for i in pred_instances]).to(pred_mask_logits.device)
        rows = torch.arange(len(classes), device=pred_mask_logits.device)
        probs = pred_mask_logits[rows, classes][:, None].sigmoid()
    for p, inst in zip(probs.split([len(i) for i in pred_instances]), pred_instances):
        inst.pred_masks = p


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(nn.Sequential):
    """``mask_fcn1..NUM_CONV`` (3x3 conv + norm + ReLU), ``deconv`` (2x2 stride-2 transposed conv)
    + ReLU, ``predictor`` (1x1 conv to ``num_classes`` maps, 1 if class-agnostic).

    Initialization as detectron2: MSRA fill (fan-out normal, zero bias) on the convs and the
    deconv, normal(std=0.001) weights and zero bias on the predictor.
    """

    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: List[int],
        conv_norm: str = "",
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(conv_dims) < 1:
            raise ValueError("conv_dims: at least the deconv's channels")
        self.loss_weight = float(loss_weight)
        channels = input_shape.channels
        for k, dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(
                channels,
                dim,
                kernel_size=3,
                padding=1,
                bias=not conv_norm,
                norm=get_norm(conv_norm, dim),
                activation=nn.ReLU(),
            )
            self.add_module(f"mask_fcn{k + 1}", conv)
            channels = dim
        self.deconv = nn.ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2)
        self.add_module("deconv_relu", nn.ReLU())
        self.predictor = nn.Conv2d(conv_dims[-1], num_classes, kernel_size=1)
        for name, layer in self.named_children():
            if name.startswith("mask_fcn") or name == "deconv":
                c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: ShapeSpec) -> Dict[str, Any]:
        h = cfg.MODEL.ROI_MASK_HEAD
        return {
            "input_shape": input_shape,
            "num_classes": 1 if h.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": [h.CONV_DIM] * (h.NUM_CONV + 1),
            "conv_norm": h.NORM,
        }

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x: torch.Tensor, instances: List[Instances]):  # type: ignore[override]
        """Training: ``{"loss_mask": ...}`` for the foreground proposals ``instances``;
        inference: ``instances`` with ``pred_masks`` set."""
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_loss(x, instances) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances


def build_mask_head(cfg: Any, input_shape: ShapeSpec) -> nn.Module:
    """The mask head named by ``cfg.MODEL.ROI_MASK_HEAD.NAME``."""
    name = cfg.MODEL.ROI_MASK_HEAD.NAME
    cls = lookup(ROI_MASK_HEAD_REGISTRY, name, "MODEL.ROI_MASK_HEAD.NAME", "mask head")
    return cls(**cls.from_config(cfg, input_shape))

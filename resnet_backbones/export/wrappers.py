"""Export-friendly forms of our models: plain tensors in, a tuple of tensors out.

* :class:`BackboneExportWrapper`: ``(N, 3, H, W) -> tuple`` of the backbone's feature maps in
  ``out_features`` order (or the logits of a classifier). Any input size.
* :class:`DetectorExportWrapper`: the inference path of our C4 ``GeneralizedRCNN`` for one image,
  ``(3, H, W)`` float in ``INPUT.FORMAT`` order, 0-255, already resized as the model expects ->
  ``(boxes (D, 4), scores (D,), classes (D,) int64)`` in the coordinates of that image; with
  ``MODEL.MASK_ON`` also ``masks (D, 1, M, M)``: the probabilities of each detection's class in
  its box (M = 14 for C4), not pasted into the image.

The detector wrapper computes exactly what ``model.inference(..., do_postprocess=False)`` computes
(same modules, weights and steps: RPN top-k, decoding, clipping, NMS, RoIAlign, res5, per-class
NMS), written with tensor operations only: no Python value of a tensor (a length, a ``bool``)
decides anything, so one trace is valid for every image of the traced size; a different number
of proposals or detections, or none at all, flows through the recorded graph. The anchors depend
on the feature-map size, so a trace (and an ONNX file) is specific to the height and width it was
made with; export once per input size.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import nms

__all__ = ["BackboneExportWrapper", "DetectorExportWrapper", "batched_nms_export"]


class BackboneExportWrapper(nn.Module):
    """``backbone(x)`` as a tuple: feature maps in ``out_features`` order, or ``(logits,)``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.output_names: List[str] = list(getattr(backbone, "_out_features", ["output"]))
        if not getattr(backbone, "_return_features", True):
            self.output_names = ["logits" if getattr(backbone, "num_classes", None) else "features"]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.backbone(x)
        if isinstance(out, dict):
            return tuple(out[name] for name in self.output_names)
        return (out,)


def batched_nms_export(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` (coordinate trick) that also traces for empty inputs.

    Boxes of different ``idxs`` are moved apart by ``idxs * (max coordinate + 1)`` so that one
    NMS never suppresses across groups; the maximum includes 0, so an empty input gives an empty
    result instead of failing in ``max()``. Boxes here are clipped to the image (non-negative).
    """
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    x0 = boxes[:, 0].clamp(min=0, max=width)
    y0 = boxes[:, 1].clamp(min=0, max=height)
    x1 = boxes[:, 2].clamp(min=0, max=width)
    y1 = boxes[:, 3].clamp(min=0, max=height)
    return torch.stack((x0, y0, x1, y1), dim=-1)


class DetectorExportWrapper(nn.Module):
    """One image through our C4 ``GeneralizedRCNN``'s inference path, tensors only.

    ``forward(image)``: ``image`` is ``(3, H, W)`` float, 0-255, in the model's ``INPUT.FORMAT``
    channel order, already resized (as the ``"image"`` of the model's inputs). Returns
    ``(boxes, scores, classes)``: ``(D, 4)`` float boxes ``(x0, y0, x1, y1)`` in that image's
    pixels, ``(D,)`` scores sorted in decreasing order, ``(D,)`` int64 class indices (0-based).
    With a mask head (``MODEL.MASK_ON``), a fourth output ``masks``: ``(D, 1, M, M)`` float
    probabilities, the mask of each detection's class in its box (``pred_masks`` of
    ``model.inference(..., do_postprocess=False)``: res5 and the mask head on the detection boxes;
    paste them into the image with ``resnet_backbones.layers.mask_ops.paste_masks_in_image``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        rpn = getattr(model, "proposal_generator", None)
        heads = getattr(model, "roi_heads", None)
        if rpn is None:
            raise ValueError(
                "DetectorExportWrapper needs a model with an RPN "
                "(MODEL.PROPOSAL_GENERATOR.NAME RPN)"
            )
        if heads is None:
            raise ValueError(
                f"DetectorExportWrapper needs a detector with RoI heads (GeneralizedRCNN); "
                f"{type(model).__name__} has none. An RPN-only ProposalNetwork cannot be exported "
                "as a detector: export its backbone (backbone_only=True, --backbone-only)"
            )
        if not (hasattr(heads, "res5") and hasattr(heads, "pooler")):
            raise ValueError(
                "DetectorExportWrapper supports the C4 head (Res5ROIHeads), "
                f"got {type(heads).__name__}"
            )
        if len(heads.pooler.level_poolers) != 1:
            raise ValueError("DetectorExportWrapper supports RoI pooling from one feature map (C4)")
        if heads.pooler.level_poolers[0].kind == "ROIPool":
            raise ValueError(
                "DetectorExportWrapper supports ROIAlign / ROIAlignV2 pooling, not ROIPool"
            )
        self.mask_on = bool(getattr(heads, "mask_on", False))
        if self.mask_on and not callable(getattr(heads.mask_head, "layers", None)):
            raise ValueError(
                "DetectorExportWrapper supports mask heads with a layers(x) -> logits method "
                f"(MaskRCNNConvUpsampleHead), got {type(heads.mask_head).__name__}"
            )
        self.model = model
        self.output_names: List[str] = ["boxes", "scores", "classes"] + (
            ["masks"] if self.mask_on else []
        )

    def forward(
        self, image: torch.Tensor
    ) -> Union[
        Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ]:
        model = self.model
        rpn, heads = model.proposal_generator, model.roi_heads
        height, width = int(image.shape[-2]), int(image.shape[-1])
        x = ((image - model.pixel_mean) / model.pixel_std).unsqueeze(0)
        divisor = model.backbone.size_divisibility
        if divisor > 1:  # pad bottom/right to a multiple, as ImageList.from_tensors does
            pad_h = (divisor - height % divisor) % divisor
            pad_w = (divisor - width % divisor) % divisor
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = model.backbone(x)

        # ---- RPN: top-k per feature map, decode, clip, drop small boxes, NMS per map
        feats = [features[f] for f in rpn.in_features]
        anchors = rpn.anchor_generator(feats)
        logits, deltas = rpn.rpn_head(feats)
        pre_topk, post_topk = rpn.pre_nms_topk[False], rpn.post_nms_topk[False]
        boxes_l, scores_l, levels_l = [], [], []
        for level, (anchors_l, logits_l, deltas_l) in enumerate(zip(anchors, logits, deltas)):
            logits_l = logits_l[0].permute(1, 2, 0).reshape(-1)
            deltas_l = (
                deltas_l[0]
                .view(-1, 4, deltas_l.shape[-2], deltas_l.shape[-1])
                .permute(2, 3, 0, 1)
                .reshape(-1, 4)
            )
            k = min(int(logits_l.shape[0]), pre_topk)
            top_scores, top_idx = logits_l.topk(k)
            boxes_l.append(
                rpn.box2box_transform.apply_deltas(deltas_l[top_idx], anchors_l.tensor[top_idx])
            )
            scores_l.append(top_scores)
            levels_l.append(torch.full((k,), level, dtype=torch.int64, device=top_scores.device))
        boxes, scores, levels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(levels_l)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes = _clip(boxes, height, width)
        keep = ((boxes[:, 2] - boxes[:, 0]) > rpn.min_box_size) & (
            (boxes[:, 3] - boxes[:, 1]) > rpn.min_box_size
        )
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms_export(boxes.float(), scores, levels, rpn.nms_thresh)[:post_topk]
        proposals = boxes[keep]

        # ---- C4 head: RoIAlign on the res4 map, res5, average pool, predictor
        feature = features[heads.in_features[0]]
        rois = torch.cat([torch.zeros_like(proposals[:, :1]), proposals], dim=1)
        pooled = heads.pooler.level_poolers[0](feature, rois)
        box_features = heads.res5(pooled).mean(dim=(2, 3))
        predictor = heads.box_predictor
        class_logits, box_deltas = predictor(box_features)
        probs = (
            torch.sigmoid(class_logits)
            if predictor.use_sigmoid_ce
            else F.softmax(class_logits, dim=-1)
        )
        pred = predictor.box2box_transform.apply_deltas(box_deltas, proposals)

        # ---- per-class score threshold and NMS (fast_rcnn_inference_single_image)
        finite = torch.isfinite(pred).all(dim=1) & torch.isfinite(probs).all(dim=1)
        pred, probs = pred[finite], probs[finite]
        scores = probs[:, :-1]
        num_reg_classes = pred.shape[1] // 4
        pred = _clip(pred.reshape(-1, 4), height, width).view(-1, num_reg_classes, 4)
        candidates = scores > predictor.test_score_thresh
        cand_roi, cand_cls = torch.nonzero(candidates, as_tuple=True)
        cand_boxes = pred[cand_roi, 0] if num_reg_classes == 1 else pred[candidates]
        cand_scores = scores[candidates]
        keep = batched_nms_export(
            cand_boxes.float(), cand_scores, cand_cls, predictor.test_nms_thresh
        )
        if predictor.test_topk_per_image >= 0:
            keep = keep[: predictor.test_topk_per_image]
        boxes, scores, classes = cand_boxes[keep], cand_scores[keep], cand_cls[keep]
        if not self.mask_on:
            return boxes, scores, classes

        # ---- mask head on the detections (Res5ROIHeads.forward_with_given_boxes)
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        mask_features = heads.res5(heads.pooler.level_poolers[0](feature, rois))
        mask_logits = heads.mask_head.layers(mask_features)
        if mask_logits.shape[1] == 1:  # class-agnostic
            masks = mask_logits.sigmoid()
        else:  # mask_rcnn_inference: the map of each detection's class
            rows = torch.arange(classes.shape[0], device=classes.device)
            masks = mask_logits[rows, classes][:, None].sigmoid()
        return boxes, scores, classes, masks

"""The Fast R-CNN box predictor: class scores and class-specific box deltas per RoI.

``FastRCNNOutputLayers`` maps a pooled RoI feature to ``K + 1`` class logits (index ``K`` is
background) and ``4 K`` box deltas (``4`` with class-agnostic regression). Losses: mean softmax
cross-entropy over the sampled RoIs, and a box loss summed over foreground RoIs (on their gt
class's deltas) divided by the number of sampled RoIs. Inference: softmax scores, decoded and
clipped boxes, score threshold, per-class NMS, top ``DETECTIONS_PER_IMAGE`` detections.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms

from ...layers import ShapeSpec
from ...precision import REDUCED_PRECISION_DTYPES, fp32_if_reduced
from ...structures import Boxes, Instances
from ...utils.events import get_event_storage, has_event_storage
from ..box_regression import Box2BoxTransform, dense_box_regression_loss

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference", "fast_rcnn_inference_single_image"]

# (class logits (R, K + 1), box deltas (R, 4K) or (R, 4))
Predictions = Tuple[torch.Tensor, torch.Tensor]


def fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Per image: detections (``pred_boxes``, ``scores``, ``pred_classes``) and the index of the
    RoI each detection came from."""
    results = [
        fast_rcnn_inference_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, torch.Tensor]:
    """``boxes`` ``(R, 4K)`` or ``(R, 4)``, ``scores`` ``(R, K + 1)`` -> detections of one image.

    A detection is a (RoI, class) pair with score above ``score_thresh``; NMS runs per class;
    ``topk_per_image < 0`` keeps all. Non-finite rows are dropped first.
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    roi_idx = torch.arange(boxes.shape[0], device=boxes.device)
    if not bool(finite.all()):
        boxes, scores, roi_idx = boxes[finite], scores[finite], roi_idx[finite]
    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_reg_classes, 4)

    candidates = scores > score_thresh
    cand_roi, cand_cls = torch.nonzero(candidates, as_tuple=True)
    if num_reg_classes == 1:
        cand_boxes = boxes[cand_roi, 0]
    else:
        cand_boxes = boxes[candidates]
    cand_scores = scores[candidates]

    keep = batched_nms(cand_boxes.float(), cand_scores, cand_cls, nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(cand_boxes[keep])
    result.scores = cand_scores[keep]
    result.pred_classes = cand_cls[keep]
    return result, roi_idx[cand_roi[keep]]


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on the pooled RoI feature: ``cls_score`` and ``bbox_pred``.

    Args:
        input_shape: shape of the per-RoI feature (flattened if it has height/width).
        box2box_transform: decodes ``bbox_pred`` against the proposals (weights (10, 10, 5, 5)).
        num_classes: foreground classes K.
        test_score_thresh, test_nms_thresh, test_topk_per_image: inference filtering.
        cls_agnostic_bbox_reg: one box per RoI instead of one per class.
        smooth_l1_beta: 0 gives L1 (detectron2's default).
        box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
        loss_weight: multipliers of ``loss_cls`` / ``loss_box_reg``.
        use_sigmoid_ce: per-class sigmoid cross-entropy instead of softmax.
    """

    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        use_sigmoid_ce: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        if num_classes <= 0:
            raise ValueError(f"MODEL.ROI_HEADS.NUM_CLASSES must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        num_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        box_dim = len(box2box_transform.weights)
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        self.bbox_pred = nn.Linear(input_size, num_reg_classes * box_dim)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0.0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.test_score_thresh = float(test_score_thresh)
        self.test_nms_thresh = float(test_nms_thresh)
        self.test_topk_per_image = int(test_topk_per_image)
        self.box_reg_loss_type = box_reg_loss_type
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_cls": float(loss_weight), "loss_box_reg": float(loss_weight)}
        self.loss_weight = dict(loss_weight)
        self.use_sigmoid_ce = bool(use_sigmoid_ce)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: ShapeSpec) -> Dict[str, Any]:
        """Every key of ``cfg.MODEL.ROI_BOX_HEAD`` / ``ROI_HEADS`` the predictor uses, read here
        only."""
        h = cfg.MODEL.ROI_BOX_HEAD
        if h.USE_FED_LOSS:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.USE_FED_LOSS=True (federated loss, for LVIS) is not supported"
            )
        return {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(weights=h.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_bbox_reg": h.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": h.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": h.BBOX_REG_LOSS_TYPE,
            "loss_weight": {"loss_box_reg": h.BBOX_REG_LOSS_WEIGHT},
            "use_sigmoid_ce": h.USE_SIGMOID_CE,
        }

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(R, K + 1)`` class logits and ``(R, 4K)`` (or ``(R, 4)``) box deltas, in float32.

        Under autocast the two linear layers run in float32 on float32 features (they cost ~1% of
        the res5 head, and bf16 logits visibly perturb the ranking of detections); losses, softmax
        scores and box decoding then stay float32 too. In fp32/fp64 this is the plain computation.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        if x.dtype in REDUCED_PRECISION_DTYPES or torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                x = fp32_if_reduced(x)
                return self.cls_score(x), self.bbox_pred(x)
        return self.cls_score(x), self.bbox_pred(x)

    # --------------------------------------------------------------------------------- losses
    def losses(
        self, predictions: Predictions, proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_box_reg`` for sampled proposals carrying ``gt_classes``
        (and ``gt_boxes`` where the image has ground truth)."""
        scores, deltas = predictions
        if proposals:
            gt_classes = torch.cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = torch.cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = torch.cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.int64, device=scores.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=scores.device)

        if has_event_storage():
            self._log_classification_stats(scores, gt_classes)
        if self.use_sigmoid_ce:
            loss_cls = self._sigmoid_cross_entropy(scores, gt_classes)
        elif scores.numel() == 0:
            loss_cls = scores.sum() * 0.0
        else:
            loss_cls = F.cross_entropy(scores, gt_classes, reduction="mean")
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    @torch.no_grad()
    def _log_classification_stats(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> None:
        """detectron2's metrics: accuracy over sampled RoIs, and on foreground RoIs."""
        total = gt_classes.numel()
        if total == 0:
            return
        pred = logits.argmax(dim=1)
        bg = logits.shape[1] - 1
        fg = (gt_classes >= 0) & (gt_classes < bg)
        num_fg = int(fg.sum().item())
        storage = get_event_storage()
        storage.put_scalar("fast_rcnn/cls_accuracy", (pred == gt_classes).sum().item() / total)
        if num_fg > 0:
            storage.put_scalar(
                "fast_rcnn/fg_cls_accuracy", (pred[fg] == gt_classes[fg]).sum().item() / num_fg
            )
            storage.put_scalar("fast_rcnn/false_negative", (pred[fg] == bg).sum().item() / num_fg)

    def _sigmoid_cross_entropy(
        self, logits: torch.Tensor, gt_classes: torch.Tensor
    ) -> torch.Tensor:
        if logits.numel() == 0:
            return logits.sum() * 0.0
        n = logits.shape[0]
        target = logits.new_zeros(n, self.num_classes + 1)
        target[torch.arange(n, device=logits.device), gt_classes] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits[:, :-1], target[:, :-1], reduction="none")
        return loss.sum() / n

    def box_reg_loss(
        self,
        proposal_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor,
    ) -> torch.Tensor:
        """Box loss of the foreground RoIs (gt class in [0, K)), divided by the number of RoIs."""
        box_dim = proposal_boxes.shape[1]
        fg = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes), as_tuple=True)[0]
        if pred_deltas.shape[1] == box_dim:
            fg_deltas = pred_deltas[fg]
        else:
            fg_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg, gt_classes[fg]]
        every = torch.ones((1, fg.numel()), dtype=torch.bool, device=pred_deltas.device)
        loss = dense_box_regression_loss(
            [proposal_boxes[fg]],
            self.box2box_transform,
            [fg_deltas.unsqueeze(0)],
            [gt_boxes[fg]],
            every,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return loss / max(gt_classes.numel(), 1.0)

    # ------------------------------------------------------------------------------ inference
    def predict_boxes(
        self, predictions: Predictions, proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, ``(R_i, 4K)`` (or ``(R_i, 4)``) decoded boxes."""
        if not proposals:
            return []
        _, deltas = predictions
        counts = [len(p) for p in proposals]
        boxes = torch.cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        return list(self.box2box_transform.apply_deltas(deltas, boxes).split(counts))

    def predict_probs(
        self, predictions: Predictions, proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per image, ``(R_i, K + 1)`` class probabilities (last column: background)."""
        scores, _ = predictions
        counts = [len(p) for p in proposals]
        probs = torch.sigmoid(scores) if self.use_sigmoid_ce else F.softmax(scores, dim=-1)
        return list(probs.split(counts, dim=0))

    def inference(
        self, predictions: Predictions, proposals: List[Instances]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """Detections per image in the (resized) input coordinates, and their RoI indices."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        return fast_rcnn_inference(
            boxes,
            scores,
            image_shapes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )

"""Region Proposal Network (Ren et al., Faster R-CNN, Sec. 3.1) with detectron2's semantics.

Training: anchors are matched to ground truth (IoU >= 0.7 positive, < 0.3 negative, plus each
ground truth's best anchors), ``BATCH_SIZE_PER_IMAGE`` anchors are sampled with at most
``POSITIVE_FRACTION`` positives, and both losses are sums over the sampled anchors divided by
``BATCH_SIZE_PER_IMAGE * num_images``. Proposals (both modes): the top ``PRE_NMS_TOPK`` anchors
by objectness per feature map are decoded, clipped to the image, filtered by ``MIN_SIZE``,
reduced by NMS per feature map and cut to ``POST_NMS_TOPK`` per image.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.common.registry import Registry
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms

from ...layers import ShapeSpec
from ...precision import fp32_if_reduced
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import get_event_storage, has_event_storage
from ...utils.registry import lookup
from ..anchor_generator import build_anchor_generator
from ..box_regression import Box2BoxTransform, dense_box_regression_loss
from ..matcher import Matcher
from ..sampling import subsample_labels
from .rpn_head import build_rpn_head

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "RPN",
    "build_proposal_generator",
    "find_top_rpn_proposals",
]

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
Proposal generators ``(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module``, chosen by
MODEL.PROPOSAL_GENERATOR.NAME.
"""


def find_top_rpn_proposals(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """Select the proposals of each image (see the module docstring for the steps).

    Args:
        proposals: per feature map, ``(N, R_l, 4)`` decoded boxes.
        pred_objectness_logits: per feature map, ``(N, R_l)`` logits.
    Returns:
        per image, ``Instances`` with ``proposal_boxes`` and ``objectness_logits``, sorted by
        decreasing objectness.
    """
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)[:, None]
    boxes_l, scores_l, levels_l = [], [], []
    for level, (boxes, logits) in enumerate(zip(proposals, pred_objectness_logits)):
        k = min(logits.shape[1], pre_nms_topk)
        top_scores, top_idx = logits.topk(k, dim=1)
        boxes_l.append(boxes[batch_idx, top_idx])
        scores_l.append(top_scores)
        levels_l.append(torch.full((k,), level, dtype=torch.int64, device=device))
    all_boxes = torch.cat(boxes_l, dim=1)
    all_scores = torch.cat(scores_l, dim=1)
    all_levels = torch.cat(levels_l, dim=0)

    results = []
    for n, image_size in enumerate(image_sizes):
        boxes, scores, levels = all_boxes[n], all_scores[n], all_levels
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            if training:
                raise FloatingPointError(
                    "RPN predicted Inf/NaN boxes or scores: training has diverged"
                )
            boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes = Boxes(boxes)
        boxes.clip(image_size)
        keep = boxes.nonempty(threshold=min_box_size)
        if not bool(keep.all()):
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes.tensor.float(), scores, levels, nms_thresh)[:post_nms_topk]
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """Region Proposal Network: anchors, head, anchor labelling and losses, proposal selection.

    ``forward(images, features, gt_instances)`` returns ``(proposals, losses)``; ``losses`` is
    ``{"loss_rpn_cls", "loss_rpn_loc"}`` in training and ``{}`` otherwise.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: Optional[Dict[str, float]] = None,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        # index 0: training, 1: inference
        self.pre_nms_topk = {True: int(pre_nms_topk[0]), False: int(pre_nms_topk[1])}
        self.post_nms_topk = {True: int(post_nms_topk[0]), False: int(post_nms_topk[1])}
        self.nms_thresh = float(nms_thresh)
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        self.loss_weight = dict(loss_weight or {"loss_rpn_cls": 1.0, "loss_rpn_loc": 1.0})
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = float(smooth_l1_beta)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: Dict[str, ShapeSpec]) -> Dict[str, Any]:
        """Every ``cfg.MODEL.RPN`` / ``PROPOSAL_GENERATOR`` key the RPN uses, read here only."""
        r = cfg.MODEL.RPN
        in_features = list(r.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.RPN.IN_FEATURES {missing} are not backbone outputs {sorted(input_shape)}"
            )
        shapes = [input_shape[f] for f in in_features]
        return {
            "in_features": in_features,
            "head": build_rpn_head(cfg, shapes),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(
                r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True
            ),
            "box2box_transform": Box2BoxTransform(weights=r.BBOX_REG_WEIGHTS),
            "batch_size_per_image": r.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": r.POSITIVE_FRACTION,
            "pre_nms_topk": (r.PRE_NMS_TOPK_TRAIN, r.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (r.POST_NMS_TOPK_TRAIN, r.POST_NMS_TOPK_TEST),
            "nms_thresh": r.NMS_THRESH,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "anchor_boundary_thresh": r.BOUNDARY_THRESH,
            "loss_weight": {
                "loss_rpn_cls": r.LOSS_WEIGHT,
                "loss_rpn_loc": r.BBOX_REG_LOSS_WEIGHT * r.LOSS_WEIGHT,
            },
            "box_reg_loss_type": r.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": r.SMOOTH_L1_BETA,
        }

    # ------------------------------------------------------------------------------ training
    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per image: anchor labels (1 / 0 / -1 after sampling) and matched gt boxes ``(R, 4)``."""
        anchors_all = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            gt_boxes = inst.gt_boxes
            iou = pairwise_iou(gt_boxes, anchors_all)
            matched_idxs, labels = self.anchor_matcher(iou)
            labels = labels.to(device=gt_boxes.device)
            if self.anchor_boundary_thresh >= 0:
                inside = anchors_all.inside_box(inst.image_size, self.anchor_boundary_thresh)
                labels[~inside] = -1
            labels = self._subsample_labels(labels)
            if len(gt_boxes) == 0:
                matched = torch.zeros_like(anchors_all.tensor)
            else:
                matched = gt_boxes.tensor[matched_idxs]
            gt_labels.append(labels)
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes

    def _subsample_labels(self, labels: torch.Tensor) -> torch.Tensor:
        pos_idx, neg_idx = subsample_labels(
            labels, self.batch_size_per_image, self.positive_fraction, 0
        )
        out = torch.full_like(labels, -1)
        out[pos_idx] = 1
        out[neg_idx] = 0
        return out

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Objectness BCE and box regression loss, summed over sampled anchors, divided by
        ``batch_size_per_image * num_images``."""
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)
        pos_mask = labels == 1
        if has_event_storage():  # detectron2's training metrics
            storage = get_event_storage()
            storage.put_scalar("rpn/num_pos_anchors", pos_mask.sum().item() / num_images)
            storage.put_scalar("rpn/num_neg_anchors", (labels == 0).sum().item() / num_images)
        loss_loc = dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        valid = labels >= 0
        loss_cls = F.binary_cross_entropy_with_logits(
            torch.cat(pred_objectness_logits, dim=1)[valid],
            labels[valid].to(torch.float32),
            reduction="sum",
        )
        normalizer = self.batch_size_per_image * num_images
        losses = {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    # ------------------------------------------------------------------------------- forward
    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)
        logits, deltas = self.rpn_head(feats)
        # (N, A, H, W) -> (N, H*W*A), matching the anchors' (row, column, anchor) order. Float32
        # from here on (a no-op in fp32/fp64): under autocast the head runs in low precision, but
        # box decoding, top-k, NMS and the losses must not.
        logits = [fp32_if_reduced(x.permute(0, 2, 3, 1).flatten(1)) for x in logits]
        box_dim = self.anchor_generator.box_dim
        # (N, A*4, H, W) -> (N, H*W*A, 4)
        deltas = [
            fp32_if_reduced(
                x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
                .permute(0, 3, 4, 1, 2)
                .flatten(1, -2)
            )
            for x in deltas
        ]
        if self.training:
            if gt_instances is None:
                raise ValueError(
                    "RPN needs gt_instances in training mode (inputs without 'instances'?)"
                )
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        else:
            losses = {}
        proposals = self.predict_proposals(anchors, logits, deltas, images.image_sizes)
        return proposals, losses

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Decode, select and NMS the proposals of each image (no gradient flows into them)."""
        proposals = self._decode_proposals(anchors, pred_anchor_deltas)
        return find_top_rpn_proposals(
            proposals,
            pred_objectness_logits,
            image_sizes,
            self.nms_thresh,
            self.pre_nms_topk[self.training],
            self.post_nms_topk[self.training],
            self.min_box_size,
            self.training,
        )

    def _decode_proposals(
        self, anchors: List[Boxes], pred_anchor_deltas: List[torch.Tensor]
    ) -> List[torch.Tensor]:
        """Per feature map, ``(N, R_l, 4)`` boxes from anchors and deltas."""
        out = []
        for anchors_l, deltas_l in zip(anchors, pred_anchor_deltas):
            n, _, box_dim = deltas_l.shape
            a = anchors_l.tensor.unsqueeze(0).expand(n, -1, -1).reshape(-1, box_dim)
            out.append(
                self.box2box_transform.apply_deltas(deltas_l.reshape(-1, box_dim), a).view(
                    n, -1, box_dim
                )
            )
        return out


def build_proposal_generator(cfg: Any, input_shape: Dict[str, ShapeSpec]) -> Optional[nn.Module]:
    """The proposal generator named by ``cfg.MODEL.PROPOSAL_GENERATOR.NAME``
    ("PrecomputedProposals": None)."""
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    cls = lookup(
        PROPOSAL_GENERATOR_REGISTRY, name, "MODEL.PROPOSAL_GENERATOR.NAME", "proposal generator"
    )
    return cls(**cls.from_config(cfg, input_shape))

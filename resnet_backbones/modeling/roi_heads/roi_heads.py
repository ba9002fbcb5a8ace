"""RoI heads: proposal sampling for training and the C4 box head (``Res5ROIHeads``).

In the C4 design (He et al. 2016, Sec. A; detectron2's ``Res5ROIHeads``) the backbone stops at
res4 and the res5 stage runs once per RoI: RoIAlign (14x14, stride-16 features) -> res5 (stride 2:
7x7, 2048 channels for R50) -> global average pooling -> the Fast R-CNN predictor.

Training samples ``BATCH_SIZE_PER_IMAGE`` proposals per image (ground-truth boxes appended to the
proposals first), at most ``POSITIVE_FRACTION`` of them foreground (IoU >= 0.5 with a ground
truth); the rest is background (class index K).

With ``MODEL.MASK_ON`` (Mask R-CNN C4, He et al. 2017) the same res5 output, before pooling, feeds
the mask head (:mod:`.mask_head`): in training that of the sampled foreground RoIs, at inference
res5 runs again on the final detection boxes.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.common.registry import Registry
from torch import nn

from ...layers import ShapeSpec
from ...precision import fp32_if_reduced
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import get_event_storage, has_event_storage
from ...utils.registry import lookup
from ..backbone.resnet import (  # noqa: F401 - RES5_HEAD_BLOCKS, res5_head_is_basic: old path
    RES5_HEAD_BLOCKS,
    _res5_head_args,
    build_res5_head,
    build_res5_head_from_config,
    res5_head_is_basic,
)
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..sampling import subsample_labels
from .fast_rcnn import FastRCNNOutputLayers
from .mask_head import build_mask_head

__all__ = [
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "Res5ROIHeads",
    "add_ground_truth_to_proposals",
    "build_roi_heads",
    "select_foreground_proposals",
]

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
RoI heads ``(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module``, chosen by MODEL.ROI_HEADS.NAME.
"""

# Objectness logit given to ground-truth boxes appended to the proposals: sigmoid(logit) ~ 1.
_GT_PROPOSAL_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def add_ground_truth_to_proposals(
    targets: List[Instances], proposals: List[Instances]
) -> List[Instances]:
    """Append each image's ground-truth boxes (after its proposals) as extra proposals."""
    if len(targets) != len(proposals):
        raise ValueError(f"{len(targets)} target lists for {len(proposals)} proposal lists")
    out = []
    for gt, props in zip(targets, proposals):
        gt_boxes = gt.gt_boxes.to(props.proposal_boxes.device)
        logits = (
            torch.full(
                (len(gt_boxes),),
                _GT_PROPOSAL_LOGIT,
                dtype=props.objectness_logits.dtype,
                device=props.objectness_logits.device,
            )
            if props.has("objectness_logits")
            else None
        )
        extra = Instances(props.image_size)
        extra.proposal_boxes = gt_boxes
        if logits is not None:
            extra.objectness_logits = logits
        out.append(Instances.cat([props, extra]))
    return out


def select_foreground_proposals(
    proposals: List[Instances], bg_label: int
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Each image's proposals of a foreground class (``0 <= gt_classes < bg_label``), and the bool
    masks that select them."""
    fg_proposals, fg_masks = [], []
    for props in proposals:
        classes = props.gt_classes
        fg = (classes != -1) & (classes != bg_label)
        fg_proposals.append(props[fg.nonzero().squeeze(1)])
        fg_masks.append(fg)
    return fg_proposals, fg_masks


class ROIHeads(nn.Module):
    """Shared training logic of RoI heads: match proposals to ground truth and sample them.

    Args:
        num_classes: foreground classes K (background is index K).
        batch_size_per_image: RoIs sampled per image.
        positive_fraction: maximum foreground fraction of the sample.
        proposal_matcher: IoU matcher (0.5; no low-quality matches).
        proposal_append_gt: add the ground-truth boxes to the proposals before sampling.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = bool(proposal_append_gt)

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        r = cfg.MODEL.ROI_HEADS
        return {
            "num_classes": r.NUM_CLASSES,
            "batch_size_per_image": r.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": r.POSITIVE_FRACTION,
            "proposal_matcher": Matcher(
                r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=False
            ),
            "proposal_append_gt": r.PROPOSAL_APPEND_GT,
        }

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampled proposal indices (foreground first) and their classes (K = background)."""
        if gt_classes.numel() > 0:
            classes = gt_classes[matched_idxs]
            classes[matched_labels == 0] = self.num_classes
            classes[matched_labels == -1] = -1
        else:
            classes = torch.full_like(matched_idxs, self.num_classes)
        fg_idx, bg_idx = subsample_labels(
            classes, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        sampled = torch.cat([fg_idx, bg_idx], dim=0)
        return sampled, classes[sampled]

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """Sampled proposals with ``gt_classes`` and, where the image has ground truth, every
        ``gt_*`` field of the matched target (``gt_boxes``, ...)."""
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        out = []
        num_fg = num_bg = 0
        for props, gt in zip(proposals, targets):
            iou = pairwise_iou(gt.gt_boxes, props.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            sampled, classes = self._sample_proposals(matched_idxs, matched_labels, gt.gt_classes)
            props = props[sampled]
            props.gt_classes = classes
            if len(gt) > 0:
                sampled_targets = matched_idxs[sampled]
                for name, value in gt.get_fields().items():
                    if name.startswith("gt_") and not props.has(name):
                        props.set(name, value[sampled_targets])
            if has_event_storage():
                num_bg += int((classes == self.num_classes).sum().item())
                num_fg += int(((classes >= 0) & (classes < self.num_classes)).sum().item())
            out.append(props)
        if has_event_storage():  # detectron2's training metrics (mean per image)
            storage = get_event_storage()
            storage.put_scalar("roi_head/num_fg_samples", num_fg / max(len(out), 1))
            storage.put_scalar("roi_head/num_bg_samples", num_bg / max(len(out), 1))
        return out

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        raise NotImplementedError


def make_res5_head_blocks(resnets_cfg: Any, preact: bool = False) -> Tuple[List[nn.Module], int]:
    """The blocks of the C4 res5 head and its output channels, from ``MODEL.RESNETS``.

    Kept for older callers. The head itself comes from
    :func:`~resnet_backbones.modeling.backbone.resnet.build_res5_head_from_config`, which also
    applies ``ZERO_INIT_RESIDUAL`` and, with ``PREACT``, adds the final norm and ReLU; here
    ``preact`` replaces ``PREACT`` and neither is added.
    """
    args = {**_res5_head_args(resnets_cfg), "preact": preact, "zero_init_residual": False}
    res5, out_channels = build_res5_head(**args)
    return [m for name, m in res5.named_children() if name.isdigit()], out_channels


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(ROIHeads):
    """The C4 box head: RoIAlign on one feature map, then res5, average pooling and the
    predictor; with ``MODEL.MASK_ON`` also Mask R-CNN's mask head (``mask_head``), which reads the
    unpooled res5 output (7x7) of the foreground RoIs in training and of the detections at
    inference."""

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        pooler: ROIPooler,
        res5: nn.Module,
        box_predictor: nn.Module,
        mask_head: Optional[nn.Module] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.in_features = list(in_features)
        self.pooler = pooler
        self.res5 = res5
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    @classmethod
    def _build_res5_block(cls, cfg: Any) -> Tuple[nn.Sequential, int]:
        """``(res5, out_channels)``: the backbone's res5 stage built alone, from ``MODEL.RESNETS``
        (:func:`~resnet_backbones.modeling.backbone.resnet.build_res5_head_from_config`, every
        backbone option, ``PREACT`` and ``ZERO_INIT_RESIDUAL`` included). Override it to build
        another head, as with detectron2's ``Res5ROIHeads._build_res5_block``."""
        return build_res5_head_from_config(cfg)

    @classmethod
    def from_config(cls, cfg: Any, input_shape: Dict[str, ShapeSpec]) -> Dict[str, Any]:  # type: ignore[override]
        """Every key the C4 head uses, read here only."""
        ret = super().from_config(cfg)
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1:
            raise ValueError(
                "Res5ROIHeads pools from one feature map, "
                f"MODEL.ROI_HEADS.IN_FEATURES={in_features}"
            )
        if in_features[0] not in input_shape:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {in_features} "
                f"is not a backbone output {sorted(input_shape)}"
            )
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("MODEL.KEYPOINT_ON: keypoint heads are not supported")
        h = cfg.MODEL.ROI_BOX_HEAD
        pooler = ROIPooler(
            output_size=h.POOLER_RESOLUTION,
            scales=(1.0 / input_shape[in_features[0]].stride,),
            sampling_ratio=h.POOLER_SAMPLING_RATIO,
            pooler_type=h.POOLER_TYPE,
        )
        res5, out_channels = cls._build_res5_block(cfg)
        predictor_shape = ShapeSpec(channels=out_channels, height=1, width=1)
        if cfg.MODEL.MASK_ON:  # reads res5's output: out_channels at half the pooler resolution
            size = h.POOLER_RESOLUTION // 2 if h.POOLER_RESOLUTION else None
            ret["mask_head"] = build_mask_head(
                cfg, ShapeSpec(channels=out_channels, height=size, width=size)
            )
        ret.update(
            in_features=in_features,
            pooler=pooler,
            res5=res5,
            box_predictor=FastRCNNOutputLayers(
                **FastRCNNOutputLayers.from_config(cfg, predictor_shape)
            ),
        )
        return ret

    def _shared_roi_transform(
        self, features: List[torch.Tensor], boxes: List[Boxes], pool: bool = False
    ) -> torch.Tensor:
        """res5 on the RoIAlign features of ``boxes``. ``pool``: the caller reads only the spatial
        mean, so a res5 that pools itself (the fast path's ``PooledRes5``, ``accepts_pool``) may
        return ``(R, C, 1, 1)``; a plain res5 returns its full output either way."""
        # RoIAlign in float32 (a no-op in fp32/fp64): under autocast the features are low precision,
        # and the pooler casts the box coordinates to the features' dtype.
        x = self.pooler([fp32_if_reduced(f) for f in features], boxes)
        if getattr(self.res5, "accepts_pool", False):
            return self.res5(x, pool=pool)
        return self.res5(x)

    def _res5_mean(self, x: torch.Tensor) -> torch.Tensor:
        """``x.mean(dim=[2, 3])``, by the res5's own ``spatial_mean`` where it has one (the fast
        path's: fast in bfloat16, channels_last gradient)."""
        mean = getattr(self.res5, "spatial_mean", None)
        if mean is None or x.shape[-2:] == (1, 1):
            return x.mean(dim=[2, 3])
        return mean(x).flatten(1)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """Training: ``([], {"loss_cls", "loss_box_reg"[, "loss_mask"]})``; inference:
        ``(detections, {})``, with ``pred_masks`` ``(N, 1, M, M)`` probabilities if masks are on.

        With the fast path's ``PooledRes5`` res5 returns its pooled ``(R, C, 1, 1)`` output where
        only the mean is read (the mean below is then a no-op); in training with a mask head it
        returns the 7x7 output, which the mask head reads too."""
        if self.training:
            if targets is None:
                raise ValueError("Res5ROIHeads needs targets in training mode")
            proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features],
            [p.proposal_boxes for p in proposals],
            pool=not (self.training and self.mask_on),
        )
        predictions = self.box_predictor(self._res5_mean(box_features))
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.mask_on:
                fg_proposals, fg_masks = select_foreground_proposals(proposals, self.num_classes)
                # the res5 output of the foreground RoIs, computed once for both heads
                mask_features = box_features[torch.cat(fg_masks, dim=0)]
                losses.update(self.mask_head(mask_features, fg_proposals))
            return [], losses
        detections, _ = self.box_predictor.inference(predictions, proposals)
        return self.forward_with_given_boxes(features, detections), {}

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """Inference on given detections (``pred_boxes``, ``pred_classes``): with a mask head, res5
        runs again on the detection boxes and the mask head sets ``pred_masks``; box-only models
        return ``instances`` as they are."""
        if self.training:
            raise RuntimeError("forward_with_given_boxes is for inference")
        if self.mask_on:
            x = self._shared_roi_transform(
                [features[f] for f in self.in_features], [i.pred_boxes for i in instances]
            )
            return self.mask_head(x, instances)
        return instances


def build_roi_heads(cfg: Any, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The RoI heads named by ``cfg.MODEL.ROI_HEADS.NAME``."""
    name = cfg.MODEL.ROI_HEADS.NAME
    cls = lookup(ROI_HEADS_REGISTRY, name, "MODEL.ROI_HEADS.NAME", "RoI heads")
    return cls(**cls.from_config(cfg, input_shape))

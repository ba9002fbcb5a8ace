"""RoI heads: proposal sampling and the C4 box head (res5 + Fast R-CNN predictor)."""

from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference, fast_rcnn_inference_single_image
from .mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    build_mask_head,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    Res5ROIHeads,
    ROIHeads,
    add_ground_truth_to_proposals,
    build_roi_heads,
    select_foreground_proposals,
)

__all__ = [
    "FastRCNNOutputLayers",
    "fast_rcnn_inference",
    "fast_rcnn_inference_single_image",
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "Res5ROIHeads",
    "add_ground_truth_to_proposals",
    "build_roi_heads",
    "select_foreground_proposals",
    "ROI_MASK_HEAD_REGISTRY",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
]

"""RoI heads: proposal sampling and the C4 box head (res5 + Fast R-CNN predictor)."""

from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference, fast_rcnn_inference_single_image
from .roi_heads import (
    ROI_HEADS_REGISTRY,
    Res5ROIHeads,
    ROIHeads,
    add_ground_truth_to_proposals,
    build_roi_heads,
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
]

"""Proposal recall (AR@100, AR@1000 for all / small / medium / large objects), as detectron2's
``COCOEvaluator`` reports it for RPN-only models (task ``"box_proposals"``).

The numbers are detectron2's, not COCOeval's: for each image the top-``limit`` proposals by
objectness are matched greedily to the non-crowd ground-truth boxes of the area range (repeatedly
take the best-covered box and the proposal covering it, then remove both); the recall at each IoU
threshold 0.5:0.95:0.05 is the fraction of those boxes covered at least that well, and AR is the
mean recall over the thresholds. Images without ground truth or without proposals count for
nothing, as in detectron2. Areas are the annotations' ``area`` fields (mask area where masks exist).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..structures import Boxes, BoxMode, Instances, pairwise_iou
from .tables import create_small_table

__all__ = [
    "AREA_RANGES",
    "PROPOSAL_LIMITS",
    "evaluate_box_proposals",
    "proposal_recall_metrics",
    "save_box_proposals",
]

#: Object area ranges, in pixels squared (detectron2's, the COCO ranges plus finer large ones).
AREA_RANGES: Dict[str, Tuple[float, float]] = {
    "all": (0**2, 1e5**2),
    "small": (0**2, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, 1e5**2),
    "96-128": (96**2, 128**2),
    "128-256": (128**2, 256**2),
    "256-512": (256**2, 512**2),
    "512-inf": (512**2, 1e5**2),
}
#: The proposals per image that AR is reported at, and the metric-name suffix of each area.
PROPOSAL_LIMITS = (100, 1000)
_AREA_SUFFIX = {"all": "", "small": "s", "medium": "m", "large": "l"}

_GroundTruth = Tuple[Boxes, torch.Tensor]  # non-crowd boxes (XYXY) and their areas


def _ground_truth(coco_api: Any, image_id: Any) -> _GroundTruth:
    """Non-crowd boxes (XYXY, float32, converted as detectron2 does) and their ``area``."""
    anns = [a for a in coco_api.loadAnns(coco_api.getAnnIds(imgIds=image_id)) if a["iscrowd"] == 0]
    boxes = torch.as_tensor([a["bbox"] for a in anns]).reshape(-1, 4)
    boxes = BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    return Boxes(boxes.to(torch.float32)), torch.as_tensor([a["area"] for a in anns])


def _matched_overlaps(proposals: Boxes, gt_boxes: Boxes) -> torch.Tensor:
    """The IoU with which each ground-truth box is covered under detectron2's greedy one-to-one
    matching (0 for boxes left without a proposal)."""
    # torchvision's IoU is 0/0 for two empty boxes; detectron2's is 0
    overlaps = torch.nan_to_num(pairwise_iou(proposals, gt_boxes), nan=0.0)
    covered = torch.zeros(len(gt_boxes))
    for j in range(min(len(proposals), len(gt_boxes))):
        max_overlaps, argmax_overlaps = overlaps.max(dim=0)  # best proposal of each box
        gt_ovr, gt_ind = max_overlaps.max(dim=0)  # the best-covered box
        box_ind = argmax_overlaps[gt_ind]
        covered[j] = overlaps[box_ind, gt_ind]
        overlaps[box_ind, :] = -1
        overlaps[:, gt_ind] = -1
    return covered


def _recall(
    per_image: Sequence[Tuple[Instances, _GroundTruth]],
    area: str,
    limit: Optional[int],
    thresholds: Optional[torch.Tensor],
) -> Dict[str, Any]:
    if area not in AREA_RANGES:
        raise ValueError(f"unknown area range {area!r}; choose one of {list(AREA_RANGES)}")
    low, high = AREA_RANGES[area]
    gt_overlaps: List[torch.Tensor] = []
    num_pos = 0
    for proposals, (gt_boxes, gt_areas) in per_image:
        if len(gt_boxes) == 0 or len(proposals) == 0:
            continue
        gt_boxes = gt_boxes[(gt_areas >= low) & (gt_areas <= high)]
        num_pos += len(gt_boxes)
        if len(gt_boxes) == 0:
            continue
        if limit is not None and len(proposals) > limit:
            proposals = proposals[:limit]
        gt_overlaps.append(_matched_overlaps(proposals.proposal_boxes, gt_boxes))
    overlaps = torch.cat(gt_overlaps) if gt_overlaps else torch.zeros(0, dtype=torch.float32)
    overlaps, _ = torch.sort(overlaps)
    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float32)
    recalls = torch.zeros_like(thresholds)
    for i, t in enumerate(thresholds):
        recalls[i] = (overlaps >= t).float().sum() / float(num_pos)
    return {
        "ar": recalls.mean(),
        "recalls": recalls,
        "thresholds": thresholds,
        "gt_overlaps": overlaps,
        "num_pos": num_pos,
    }


def _per_image(
    predictions: Sequence[Dict[str, Any]], coco_api: Any
) -> List[Tuple[Instances, _GroundTruth]]:
    """Each prediction's proposals sorted by objectness (best first) and its ground truth."""
    out = []
    for p in predictions:
        proposals = p["proposals"]
        proposals = proposals[proposals.objectness_logits.sort(descending=True)[1]]
        out.append((proposals, _ground_truth(coco_api, p["image_id"])))
    return out


def evaluate_box_proposals(
    predictions: Sequence[Dict[str, Any]],
    coco_api: Any,
    thresholds: Optional[torch.Tensor] = None,
    area: str = "all",
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Recall of ``predictions`` (``{"image_id", "proposals": Instances(proposal_boxes,
    objectness_logits)}`` per image, boxes in the annotations' coordinates) against
    ``coco_api``'s ground truth: detectron2's ``_evaluate_box_proposals``.

    Returns ``{"ar", "recalls", "thresholds", "gt_overlaps", "num_pos"}`` (``ar`` is a 0-1
    tensor; NaN when no ground-truth box falls in ``area``).
    """
    return _recall(_per_image(predictions, coco_api), area, limit, thresholds)


def proposal_recall_metrics(
    predictions: Sequence[Dict[str, Any]], coco_api: Any
) -> Dict[str, float]:
    """``{"AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", ...}`` on the 0-100 scale, the
    metrics (and the order) of detectron2's ``box_proposals`` task; logged as a table."""
    per_image = _per_image(predictions, coco_api)  # sort and read the ground truth once
    metrics = {}
    for limit in PROPOSAL_LIMITS:
        for area, suffix in _AREA_SUFFIX.items():
            stats = _recall(per_image, area, limit, None)
            metrics[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
    logging.getLogger(__name__).info("Proposal metrics: \n" + create_small_table(metrics))
    return metrics


def save_box_proposals(predictions: Sequence[Dict[str, Any]], output_dir: str) -> str:
    """Write ``box_proposals.pkl`` in detectron2's format (``boxes`` and ``objectness_logits``
    numpy arrays per image, ``ids``, ``bbox_mode`` XYXY_ABS: what detectron2's
    ``DATASETS.PROPOSAL_FILES_*`` read). Returns its path."""
    data = {
        "boxes": [p["proposals"].proposal_boxes.tensor.numpy() for p in predictions],
        "objectness_logits": [p["proposals"].objectness_logits.numpy() for p in predictions],
        "ids": [p["image_id"] for p in predictions],
        "bbox_mode": BoxMode.XYXY_ABS.value,
    }
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "box_proposals.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path

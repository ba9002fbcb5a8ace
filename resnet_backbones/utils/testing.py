"""Random detector weights with sane activations, for parity tests, precision tests and benchmarks.

A freshly initialized C4 detector has FrozenBN statistics of 0/1, so its activations grow or
vanish layer by layer and its scores are all alike: comparing two implementations, or fp32 with
bf16, on such a model says little. :func:`calibrate_random_detector_` gives every FrozenBN the
mean/variance of its input on real images and a random affine map, and enlarges the predictor
weights, so that the random model produces spread-out scores and boxes. (detectron2's
``utils/testing.py`` plays the same role there.) :func:`random_scene` and :func:`detector_inputs`
make the synthetic images and the model inputs that these comparisons run on.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["calibrate_random_detector_", "coco_ap", "detector_inputs", "random_scene"]


def random_scene(seed: int, height: int, width: int) -> Dict[str, torch.Tensor]:
    """A synthetic "shapes" scene (:func:`~resnet_backbones.data.shapes.render_detection_image`):
    ``{"image": (3, H, W) float32 BGR, "boxes": (G, 4) float32 XYXY, "classes": (G,) int64}``."""
    from ..data.shapes import render_detection_image

    img, objects = render_detection_image(seed, height, width)
    return {
        "image": torch.as_tensor(img.astype("float32").transpose(2, 0, 1)).contiguous(),
        "boxes": torch.tensor([b for _, b in objects], dtype=torch.float32).reshape(-1, 4),
        "classes": torch.tensor([c for c, _ in objects], dtype=torch.int64),
    }


def detector_inputs(
    scenes: Sequence[Dict[str, torch.Tensor]], *, with_gt: bool = False, d2: bool = False
) -> List[Dict[str, Any]]:
    """A detector's batched inputs for ``scenes`` (dicts as :func:`random_scene` returns them).

    Each input is ``{"image": scene["image"]}`` (the same tensor: the models do not modify their
    inputs), plus with ``with_gt`` ``"instances"`` holding copies of the boxes (``gt_boxes``) and
    classes (``gt_classes``). ``d2``: detectron2's ``Boxes``/``Instances`` instead of ours.
    """
    if d2:
        from detectron2.structures import Boxes, Instances
    else:
        from ..structures import Boxes, Instances
    batch = []
    for scene in scenes:
        d: Dict[str, Any] = {"image": scene["image"]}
        if with_gt:
            inst = Instances(tuple(scene["image"].shape[-2:]))
            inst.gt_boxes = Boxes(scene["boxes"].clone())
            inst.gt_classes = scene["classes"].clone()
            d["instances"] = inst
        batch.append(d)
    return batch


@torch.no_grad()
def calibrate_random_detector_(
    model: nn.Module,
    batched_inputs: List[Dict[str, Any]],
    residual_gain: Tuple[float, float] = (0.5, 1.5),
    seed: Optional[int] = None,
) -> nn.Module:
    """Calibrate ``model`` (a GeneralizedRCNN or ProposalNetwork with FrozenBN) in place on
    ``batched_inputs``; returns it in eval mode.

    Every FrozenBN gets the per-channel mean/variance of its input and a gamma drawn from
    [0.5, 1.5] -- except the last norm of each bottleneck's residual branch, whose gamma comes from
    ``residual_gain``. Small residual gains (e.g. (0.1, 0.3)) are what trained ResNets have; with
    gains ~1 a random 50-layer ResNet is chaotic (a 1e-7 input perturbation grows ~100x by res4),
    which matters when comparing precisions. Biases ~N(0, 0.1); RPN and box-predictor weights are
    redrawn larger so that objectness and class scores spread out. ``seed`` seeds torch first.
    """
    from ..layers import FrozenBatchNorm2d
    from ..modeling.backbone.resnet import BottleneckBlock

    if seed is not None:
        torch.manual_seed(seed)
    last = {id(b.conv3.norm) for b in model.modules() if isinstance(b, BottleneckBlock)}

    def calibrate(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))
        module.weight.uniform_(*(residual_gain if id(module) in last else (0.5, 1.5)))
        module.bias.normal_(0.0, 0.1)

    hooks = [
        m.register_forward_pre_hook(calibrate)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    model.eval()
    try:
        model(batched_inputs)
    finally:
        for h in hooks:
            h.remove()
    head = model.proposal_generator.rpn_head
    head.objectness_logits.weight.normal_(0.0, 0.05)
    head.anchor_deltas.weight.normal_(0.0, 0.02)
    if getattr(model, "roi_heads", None) is not None:  # none in an RPN-only ProposalNetwork
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.normal_(0.0, 0.1)
        predictor.bbox_pred.weight.normal_(0.0, 0.02)
    return model


def coco_ap(
    reference: Sequence[Any], detections: Sequence[Any], num_classes: int, iou_type: str = "bbox"
) -> float:
    """COCO AP@[.5:.95] (pycocotools) of ``detections`` with ``reference`` detections as ground
    truth (every reference detection is a ground-truth box; per-image ``Instances`` lists).
    ``iou_type="segm"`` scores the ``pred_masks`` (bool ``(N, H, W)``) instead of the boxes."""
    import io
    from contextlib import redirect_stdout

    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rles(instances: Any) -> List[Any]:
        if iou_type != "segm":
            return [None] * len(instances)
        masks = instances.pred_masks.cpu().numpy().astype(np.uint8)
        return [mask_util.encode(np.asfortranarray(m)) for m in masks]

    gt: Dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c + 1} for c in range(num_classes)],
    }
    dets = []
    for img_id, (ref, det) in enumerate(zip(reference, detections), start=1):
        h, w = ref.image_size
        gt["images"].append({"id": img_id, "height": h, "width": w})
        ref_boxes, ref_classes = ref.pred_boxes.tensor.tolist(), ref.pred_classes.tolist()
        for (x0, y0, x1, y1), c, rle in zip(ref_boxes, ref_classes, rles(ref)):
            ann = {
                "id": len(gt["annotations"]) + 1,
                "image_id": img_id,
                "category_id": c + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
            if rle is not None:
                ann.update(segmentation=rle, area=float(mask_util.area(rle)))
            gt["annotations"].append(ann)
        boxes, classes, scores = (
            det.pred_boxes.tensor.tolist(),
            det.pred_classes.tolist(),
            det.scores.tolist(),
        )
        for (x0, y0, x1, y1), c, sc, rle in zip(boxes, classes, scores, rles(det)):
            result = {
                "image_id": img_id,
                "category_id": c + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": sc,
            }
            if rle is not None:
                result["segmentation"] = rle
            dets.append(result)
    with redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not dets:
            return 0.0
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])

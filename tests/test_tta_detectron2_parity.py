"""Our test-time augmentation against detectron2's ``GeneralizedRCNNWithTTA``: same weights, same
images, same ``TEST.AUG``.

Runs only where detectron2 is installed (``/opt/d2env/bin/python -m pytest
tests/test_tta_detectron2_parity.py``). A narrow R50-C4 (calibrated random weights, loaded into
detectron2's model with ``strict=True``) runs on uint8 scenes given as the test loader gives them
(resized, with the original ``height``/``width``), through both TTA wrappers with three sizes and
flips. Scored with detectron2's TTA detections as ground truth, ours have COCO AP >= 0.98 (the
plain model, the inference fast path, and Mask R-CNN, whose pasted masks of matched detections
also agree).

detectron2 is run with ``batch_size=1``. Its default, 3, batches augmented images of different
sizes together, and the zero padding of the smaller ones changes their features (all of them: the
padding is inside the convolutions' reach, and a random network amplifies it), so that detectron2
at 3 disagrees with detectron2 at 1 (AP 0.37 on this random model). We batch only images of
one shape (a size and its flip: no padding), which computes what detectron2 at 1 computes; the
last test checks that ours disagrees with detectron2 at 3 exactly as much as detectron2 at 1 does.
"""

import os

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")
pytest.importorskip("pycocotools")

from detectron2.modeling import GeneralizedRCNNWithTTA as D2GeneralizedRCNNWithTTA  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from helpers import (  # noqa: E402
    NARROW,
    both_configs,
)

from resnet_backbones.modeling import (  # noqa: E402
    GeneralizedRCNNWithTTA,
    build_model,
    prepare_model,
)
from resnet_backbones.structures import Boxes, pairwise_iou  # noqa: E402
from resnet_backbones.utils.testing import (  # noqa: E402
    calibrate_random_detector_,
    coco_ap,
    detector_inputs,
    random_scene,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "configs", "Base-RCNN-C4.yaml")
NUM_CLASSES = NARROW[NARROW.index("MODEL.ROI_HEADS.NUM_CLASSES") + 1]
SCENES = [(11, 160, 224), (12, 192, 144), (13, 176, 176)]
REPORT_SIZE = 1.5  # the inputs are the test loader's: resized from images 1.5x larger
TTA = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "MODEL.RESNETS.DEPTH",
    50,
    *NARROW,
    "TEST.AUG.ENABLED",
    True,
    "TEST.AUG.MIN_SIZES",
    (128, 160, 224),
    "TEST.AUG.MAX_SIZE",
    320,
    "TEST.AUG.FLIP",
    True,
]


def _both_configs(extra=()):
    return both_configs(BASE, [*TTA, *extra])


def _inputs(scenes):
    batch = detector_inputs(scenes)
    for d in batch:
        d["image"] = d["image"].clamp(0, 255).round().to(torch.uint8)
        h, w = d["image"].shape[-2:]
        d["height"], d["width"] = int(h * REPORT_SIZE), int(w * REPORT_SIZE)
    return batch


def _models(mask_on):
    scenes = [random_scene(*s) for s in SCENES]
    d2_cfg, cfg = _both_configs(["MODEL.MASK_ON", mask_on])
    torch.manual_seed(0)
    ours = build_model(cfg)
    calibrate_random_detector_(ours, _inputs(scenes), seed=0)
    if mask_on:  # mask logits of O(1): masks that are not all ~0.5
        with torch.no_grad():
            w = ours.roi_heads.mask_head.predictor.weight
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    d2_model = d2_build_model(d2_cfg)
    d2_model.load_state_dict(ours.state_dict(), strict=True)
    return d2_cfg, cfg, d2_model.eval(), ours.eval(), scenes


def _run_both(mask_on, fast, d2_batch_size=1):
    d2_cfg, cfg, d2_model, ours, scenes = _models(mask_on)
    with torch.no_grad():
        d2_tta = D2GeneralizedRCNNWithTTA(d2_cfg, d2_model, batch_size=d2_batch_size)
        theirs = d2_tta(_inputs(scenes))
    if fast:
        ours = prepare_model(ours, cfg, "inference")
    mine = GeneralizedRCNNWithTTA(cfg, ours)(_inputs(scenes))
    return [r["instances"] for r in theirs], [r["instances"] for r in mine]


def _ap(theirs, mine, label):
    for t, m in zip(theirs, mine):
        assert m.image_size == t.image_size
        assert len(t) > 20, "too few detections for a meaningful comparison"
    ap = coco_ap(theirs, mine, NUM_CLASSES)
    print(
        f"{label}: detectron2 TTA {[len(t) for t in theirs]} detections, ours "
        f"{[len(m) for m in mine]}; AP of ours with detectron2's as ground truth {ap:.4f}"
    )
    return ap


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast_path"])
def test_tta_detections_match_detectron2(fast):
    theirs, mine = _run_both(mask_on=False, fast=fast)
    assert _ap(theirs, mine, "fast path" if fast else "plain") >= 0.98


def test_tta_masks_match_detectron2():
    theirs, mine = _run_both(mask_on=True, fast=False)
    assert _ap(theirs, mine, "mask") >= 0.98
    ious = []
    for t, m in zip(theirs, mine):
        assert m.pred_masks.shape == (len(m), *t.image_size)
        iou = pairwise_iou(Boxes(t.pred_boxes.tensor), m.pred_boxes)
        iou[t.pred_classes[:, None] != m.pred_classes[None, :]] = 0
        best, idx = iou.max(dim=1)
        for k in torch.where(best >= 0.99)[0]:
            a, b = t.pred_masks[k], m.pred_masks[idx[k]]
            union = (a | b).sum().item()
            ious.append((a & b).sum().item() / union if union else 1.0)
    print(f"mask IoU of {len(ious)} matched detections: min {min(ious):.4f}")
    assert len(ious) >= 0.9 * sum(len(t) for t in theirs)
    assert min(ious) >= 0.99


def test_difference_from_detectron2s_default_batches_is_its_padding():
    """detectron2 at its default batch_size=3 (sizes padded together): ours scores against it as
    detectron2's own unpadded run (batch_size=1) does."""
    d2_cfg, cfg, d2_model, ours, scenes = _models(False)
    with torch.no_grad():
        padded = D2GeneralizedRCNNWithTTA(d2_cfg, d2_model)(_inputs(scenes))
        unpadded = D2GeneralizedRCNNWithTTA(d2_cfg, d2_model, batch_size=1)(_inputs(scenes))
    mine = GeneralizedRCNNWithTTA(cfg, ours)(_inputs(scenes))
    padded, unpadded, mine = ([r["instances"] for r in x] for x in (padded, unpadded, mine))
    d2_self = coco_ap(padded, unpadded, NUM_CLASSES)
    ours_ap = _ap(padded, mine, "against detectron2 at batch_size=3")
    print(f"detectron2 batch_size=1 against detectron2 batch_size=3: AP {d2_self:.4f}")
    assert ours_ap == pytest.approx(d2_self, abs=0.02)

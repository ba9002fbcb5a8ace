"""Our Faster R-CNN C4 against detectron2's, with the same weights on the same images.

Runs only where detectron2 is installed (the side environment: ``/work/d2env/bin/python -m pytest
tests/test_detector_detectron2_parity.py``). Both models are built from the same YAML
(``configs/Base-RCNN-C4.yaml`` plus the overrides below, read by each library's own config code),
detectron2's model gets our state dict with ``strict=True`` (same names and shapes), and:

* state-dict names and shapes equal detectron2's for full-size R50-C4 and R101-C4;
* our YAML configs read by detectron2 equal its model-zoo configs, and read by us give its values;
* RPN proposals: >= 95% of detectron2's top-100 proposals per image have an IoU >= 0.99 match
  among ours;
* detections: COCO AP of ours, scored with detectron2's detections as ground truth, >= 0.98;
* ``DefaultPredictor`` (resize, BGR/RGB, weights loading) gives detectron2's predictor's output
  on an image of another size, each loading a checkpoint the other library saved;
* training losses on one batch (and the gradients of a few parameters) agree within 1%:
  (a) every anchor/proposal taken (sampling sizes above their counts, so sampling only permutes
  and the sums do not depend on it), and
  (b) detectron2's default sample sizes with the same seed: our sampler makes the same
  ``torch.randperm`` calls in the same order, so the same anchors and RoIs are drawn.

Random weights would give degenerate outputs (FrozenBN is an identity, heads are nearly zero), so
every FrozenBN gets running statistics measured on the test images and random affine values, and
the predictor layers get larger random weights; activations stay O(1).
A narrow R50 (stem 16, res2 32, width 8) keeps the test fast on a CPU.
"""

import os

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")
pycocotools = pytest.importorskip("pycocotools")

from detectron2.checkpoint import DetectionCheckpointer as D2DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.engine import DefaultPredictor as D2DefaultPredictor  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from helpers import NARROW as NARROW_C4  # noqa: E402
from helpers import (  # noqa: E402
    both_configs,
    flat_config,
)

from resnet_backbones import DefaultPredictor, get_cfg  # noqa: E402
from resnet_backbones.data.shapes import render_detection_image  # noqa: E402
from resnet_backbones.modeling import build_model  # noqa: E402
from resnet_backbones.structures import Boxes, pairwise_iou  # noqa: E402
from resnet_backbones.utils.testing import (  # noqa: E402
    calibrate_random_detector_,
    coco_ap,
    detector_inputs,
    random_scene,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "configs", "Base-RCNN-C4.yaml")
NARROW = ["MODEL.RESNETS.DEPTH", 50, *NARROW_C4]  # R50 at 1/8 width, 5 classes, 300 test proposals
NUM_CLASSES = NARROW[NARROW.index("MODEL.ROI_HEADS.NUM_CLASSES") + 1]
IMAGE_SIZES = [(160, 224), (192, 144)]  # different sizes: padding in the batch


def _both_configs(overrides, base=BASE):
    return both_configs(base, overrides)


def _images():
    return [random_scene(seed + 11, h, w) for seed, (h, w) in enumerate(IMAGE_SIZES)]


def _inputs(images, *, d2: bool, with_gt: bool, report_size=None):
    batch = detector_inputs(images, with_gt=with_gt, d2=d2)
    if report_size is not None:  # detections reported at another size: tests the rescaling
        for d in batch:
            h, w = d["image"].shape[-2:]
            d["height"], d["width"] = int(h * report_size), int(w * report_size)
    return batch


@torch.no_grad()
def _sane_random_weights(model, batch):
    """FrozenBN statistics measured on ``batch``, random affine values; larger predictor weights."""
    calibrate_random_detector_(model, batch, residual_gain=(0.5, 1.5))


@pytest.fixture(scope="module")
def models():
    """(detectron2 model, our model) with identical weights, and the test images."""
    torch.manual_seed(0)
    d2_cfg, cfg = _both_configs(NARROW)
    ours = build_model(cfg)
    d2_model = d2_build_model(d2_cfg)
    images = _images()
    _sane_random_weights(ours, _inputs(images, d2=False, with_gt=False))
    d2_model.load_state_dict(ours.state_dict(), strict=True)
    return d2_model.eval(), ours.eval(), images, (d2_cfg, cfg)


@pytest.mark.parametrize("depth", [50, 101])
def test_state_dict_names_and_shapes_equal_detectron2(depth):
    d2_cfg, cfg = _both_configs(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", depth])
    d2_sd = d2_build_model(d2_cfg).state_dict()
    sd = build_model(cfg).state_dict()
    # Same names (the order of registration may differ: our blocks register their shortcut last,
    # in torchvision's order; loading is by name).
    assert sorted(sd) == sorted(d2_sd)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in d2_sd.items()
    }
    # pixel statistics are non-persistent buffers in both
    assert "pixel_mean" not in sd and "pixel_std" not in sd


def test_rpn_proposals_match(models):
    d2_model, ours, images, _ = models
    with torch.no_grad():
        d2_in = _inputs(images, d2=True, with_gt=False)
        d2_images = d2_model.preprocess_image(d2_in)
        d2_props, _ = d2_model.proposal_generator(
            d2_images, d2_model.backbone(d2_images.tensor), None
        )
        our_in = _inputs(images, d2=False, with_gt=False)
        our_images = ours.preprocess_image(our_in)
        assert torch.equal(our_images.tensor, d2_images.tensor)
        our_props, _ = ours.proposal_generator(our_images, ours.backbone(our_images.tensor), None)
    for d2_p, p in zip(d2_props, our_props):
        top = d2_p.proposal_boxes.tensor[:100]
        assert len(top) == 100
        iou = pairwise_iou(Boxes(top), p.proposal_boxes)
        matched = (iou.max(dim=1).values >= 0.99).float().mean().item()
        iou_top = pairwise_iou(Boxes(top), Boxes(p.proposal_boxes.tensor[:100]))
        matched_top = (iou_top.max(dim=1).values >= 0.99).float().mean().item()
        print(
            f"RPN: {len(d2_p)} vs {len(p)} proposals; d2 top-100 matched (IoU>=0.99): "
            f"{matched:.3f} among all ours, {matched_top:.3f} among our top-100"
        )
        assert matched >= 0.95
        assert abs(len(d2_p) - len(p)) <= 0.05 * len(d2_p)


def _coco_ap(d2_results, our_results):
    """AP@[.5:.95] of our detections with detectron2's detections as ground truth."""
    return coco_ap(
        [r["instances"] for r in d2_results], [r["instances"] for r in our_results], NUM_CLASSES
    )


def test_detections_match(models):
    d2_model, ours, images, _ = models
    with torch.no_grad():
        d2_out = d2_model(_inputs(images, d2=True, with_gt=False, report_size=1.5))
        out = ours(_inputs(images, d2=False, with_gt=False, report_size=1.5))
    for d2_r, r, scene in zip(d2_out, out, images):
        d2_i, i = d2_r["instances"], r["instances"]
        h, w = scene["image"].shape[-2:]
        assert i.image_size == d2_i.image_size == (int(h * 1.5), int(w * 1.5))
        assert set(i.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert len(d2_i) > 10, "too few detections for a meaningful comparison"
        print(f"detections: detectron2 {len(d2_i)}, ours {len(i)}")
        if len(i) == len(d2_i):
            diff = (i.pred_boxes.tensor - d2_i.pred_boxes.tensor).abs().max().item()
            print(
                f"  same count; max |box diff| {diff:.2e}, classes equal: "
                f"{torch.equal(i.pred_classes, d2_i.pred_classes)}"
            )
    ap = _coco_ap(d2_out, out)
    print(f"COCO AP of ours vs detectron2-as-ground-truth: {ap:.4f}")
    assert ap >= 0.98


GRAD_CHECKED = [
    "backbone.res3.0.conv1.weight",
    "backbone.res4.5.conv3.weight",
    "proposal_generator.rpn_head.conv.weight",
    "proposal_generator.rpn_head.anchor_deltas.bias",
    "roi_heads.res5.0.shortcut.weight",
    "roi_heads.box_predictor.bbox_pred.weight",
]


def _losses(model, images, seed, d2: bool):
    """Training losses on ``images`` and the gradients of a few parameters."""
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    batch = _inputs(images, d2=d2, with_gt=True)
    if d2:
        with EventStorage():
            losses = model(batch)
    else:
        losses = model(batch)
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    grads = {k: params[k].grad.clone() for k in GRAD_CHECKED}
    model.zero_grad()
    model.eval()
    return {k: v.item() for k, v in losses.items()}, grads


@pytest.mark.parametrize(
    "take_all", [True, False], ids=["all-anchors-and-rois", "seeded-default-sampling"]
)
def test_training_losses_match(models, take_all):
    d2_model, ours, images, _ = models
    saved = {}
    if take_all:
        for m in (d2_model, ours):
            saved[id(m)] = (
                m.proposal_generator.batch_size_per_image,
                m.roi_heads.batch_size_per_image,
            )
            m.proposal_generator.batch_size_per_image = 100000
            m.roi_heads.batch_size_per_image = 100000
    try:
        d2_losses, d2_grads = _losses(d2_model, images, 123, d2=True)
        losses, grads = _losses(ours, images, 123, d2=False)
    finally:
        for m in (d2_model, ours):
            if id(m) in saved:
                m.proposal_generator.batch_size_per_image, m.roi_heads.batch_size_per_image = saved[
                    id(m)
                ]
    print(f"losses ({'take all' if take_all else 'seeded sampling'}):")
    for k in d2_losses:
        print(
            f"  {k}: detectron2 {d2_losses[k]:.6f}  ours {losses[k]:.6f}  "
            f"rel diff {abs(losses[k] - d2_losses[k]) / max(abs(d2_losses[k]), 1e-12):.2e}"
        )
    assert (
        list(losses)
        == list(d2_losses)
        == ["loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"]
    )
    for k in d2_losses:
        assert losses[k] == pytest.approx(d2_losses[k], rel=0.01), k
    for k in GRAD_CHECKED:
        rel = ((grads[k] - d2_grads[k]).norm() / d2_grads[k].norm().clamp(min=1e-20)).item()
        print(f"  grad {k}: |ours - d2| / |d2| = {rel:.2e}")
        assert rel < 0.01, k


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_default_predictor_matches(models, tmp_path, fmt):
    """Each predictor loads the other library's checkpoint; same detections on a resized image."""
    d2_model, ours, _, _ = models
    ours_file = tmp_path / "ours.pth"
    torch.save({"model": ours.state_dict()}, ours_file)
    D2DetectionCheckpointer(d2_model, save_dir=str(tmp_path)).save("d2_saved")
    overrides = NARROW + [
        "INPUT.MIN_SIZE_TEST",
        160,
        "INPUT.MAX_SIZE_TEST",
        200,
        "INPUT.FORMAT",
        fmt,
    ]
    if fmt == "RGB":
        overrides += ["MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]"]
    d2_cfg, cfg = _both_configs(overrides)
    d2_cfg.MODEL.WEIGHTS = str(ours_file)
    cfg.MODEL.WEIGHTS = str(tmp_path / "d2_saved.pth")
    d2_pred, pred = D2DefaultPredictor(d2_cfg), DefaultPredictor(cfg)
    report = pred.checkpointer.last_report
    assert report.ok and len(report.matched) == len(ours.state_dict())
    image, _ = render_detection_image(5, 150, 230)  # resized to 130x200 (long side capped)
    with torch.no_grad():
        d2_i = d2_pred(image)["instances"]
        i = pred(image)["instances"]
    assert i.image_size == d2_i.image_size == (150, 230)
    assert len(d2_i) > 10
    print(f"predictor ({fmt}): detectron2 {len(d2_i)}, ours {len(i)} detections")
    assert _coco_ap([{"instances": d2_i}], [{"instances": i}]) >= 0.98


@pytest.mark.parametrize(
    "ours, theirs, extra",
    [
        ("faster_rcnn_R50_C4.yaml", "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml", []),
        ("faster_rcnn_R101_C4.yaml", "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml", []),
        ("voc/faster_rcnn_R50_C4.yaml", "PascalVOC-Detection/faster_rcnn_R_50_C4.yaml", []),
        (
            "voc/faster_rcnn_R101_C4.yaml",
            "PascalVOC-Detection/faster_rcnn_R_50_C4.yaml",  # detectron2 has no R101 VOC config
            [
                "MODEL.RESNETS.DEPTH",
                "101",
                "MODEL.WEIGHTS",
                "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
            ],
        ),
    ],
)
def test_configs_equal_detectron2s(ours, theirs, extra):
    """Our YAML files, read by detectron2, give detectron2's config (except where the weights
    file lives); read by us, every key both libraries have has detectron2's value."""
    zoo = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
    if not os.path.isdir(zoo):
        pytest.skip("this detectron2 installation has no model_zoo/configs")
    ref = d2_get_cfg()
    ref.merge_from_file(os.path.join(zoo, theirs))
    ref.merge_from_list(extra)
    d2_view = d2_get_cfg()
    d2_view.merge_from_file(os.path.join(ROOT, "configs", ours))
    ref_flat, d2_flat = flat_config(ref), flat_config(d2_view)
    assert os.path.basename(d2_flat.pop("MODEL.WEIGHTS")) == os.path.basename(
        ref_flat.pop("MODEL.WEIGHTS")
    )
    assert d2_flat == ref_flat

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", ours))
    flat = flat_config(cfg)
    flat.pop("MODEL.WEIGHTS")
    differ = {k: (flat[k], v) for k, v in ref_flat.items() if k in flat and flat[k] != v}
    assert not differ, f"keys whose value differs from detectron2's (ours, detectron2): {differ}"

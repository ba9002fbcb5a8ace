"""The whole Faster R-CNN C4 model: construction, state-dict names, training and inference outputs.

Small models (``configs/shapes/faster_rcnn_tiny_C4.yaml``: ResNet-50 layout at 1/8 width) and
tiny images keep this fast on a CPU.
"""

import os
import re

import pytest
import torch
from helpers import tiny_cfg

import resnet_backbones
from resnet_backbones import build_model, get_cfg
from resnet_backbones.modeling.meta_arch import GeneralizedRCNN
from resnet_backbones.structures import Boxes, Instances
from resnet_backbones.utils.events import EventStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_KEYS = ["loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"]


SMALL_BATCHES = {  # fewer proposals and sampled anchors / RoIs than the yaml: fast on a CPU
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 48,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 64,
}


def two_box_image():
    """A 64x96 BGR image with two flat-coloured rectangles and their annotations."""
    img = torch.full((3, 64, 96), 60.0)
    img[:, 8:40, 10:40] = torch.tensor([200.0, 30.0, 30.0])[:, None, None]
    img[:, 20:56, 55:90] = torch.tensor([30.0, 200.0, 60.0])[:, None, None]
    inst = Instances((64, 96))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 8.0, 40.0, 40.0], [55.0, 20.0, 90.0, 56.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    return img, inst


# ------------------------------------------------------------------------------ construction
# detectron2's GeneralizedRCNN R50-C4 (80 classes): every key matches one of these patterns.
_NORM = r"(weight|norm\.(weight|bias|running_mean|running_var))"
R50_C4_KEY_PATTERNS = [
    rf"backbone\.stem\.conv1\.{_NORM}",
    rf"backbone\.res[234]\.\d+\.conv[123]\.{_NORM}",
    rf"backbone\.res[234]\.0\.shortcut\.{_NORM}",
    r"proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)",
    rf"roi_heads\.res5\.[012]\.conv[123]\.{_NORM}",
    rf"roi_heads\.res5\.0\.shortcut\.{_NORM}",
    r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)",
]
R50_C4_SHAPES = {
    "backbone.stem.conv1.weight": (64, 3, 7, 7),
    "backbone.res2.0.conv1.weight": (64, 64, 1, 1),
    "backbone.res4.5.conv3.weight": (1024, 256, 1, 1),
    "backbone.res4.5.conv3.norm.weight": (1024,),
    "proposal_generator.rpn_head.conv.weight": (1024, 1024, 3, 3),
    "proposal_generator.rpn_head.objectness_logits.weight": (15, 1024, 1, 1),
    "proposal_generator.rpn_head.anchor_deltas.weight": (60, 1024, 1, 1),
    "roi_heads.res5.0.conv1.weight": (512, 1024, 1, 1),  # stride in the 1x1
    "roi_heads.res5.0.shortcut.weight": (2048, 1024, 1, 1),
    "roi_heads.res5.2.conv3.norm.running_var": (2048,),
    "roi_heads.box_predictor.cls_score.weight": (81, 2048),
    "roi_heads.box_predictor.bbox_pred.weight": (320, 2048),
}


def test_r50_c4_state_dict_is_detectron2s():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", "faster_rcnn_R50_C4.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model, GeneralizedRCNN)
    sd = model.state_dict()
    # detectron2 0.6's R50-C4 has exactly 275 tensors holding 33,897,884 values
    assert len(sd) == 275
    assert sum(v.numel() for v in sd.values()) == 33_897_884
    for key in sd:
        assert any(re.fullmatch(p, key) for p in R50_C4_KEY_PATTERNS), key
    for p in R50_C4_KEY_PATTERNS:
        assert any(re.fullmatch(p, key) for key in sd), p
    blocks = {
        stage: len({k.split(".")[2] for k in sd if k.startswith(f"backbone.{stage}.")})
        for stage in ("res2", "res3", "res4")
    }
    assert blocks == {"res2": 3, "res3": 4, "res4": 6}
    assert not any(k.startswith("backbone.res5") for k in sd)
    for key, shape in R50_C4_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    # pixel statistics: non-persistent buffers from the config, as in detectron2
    buffers = dict(model.named_buffers())
    assert "pixel_mean" in buffers and "pixel_mean" not in sd and "pixel_std" not in sd
    assert buffers["pixel_mean"].flatten().tolist() == pytest.approx(cfg.MODEL.PIXEL_MEAN)
    assert buffers["pixel_mean"].shape == (3, 1, 1)
    # detectron2's freezing: stem and res2 frozen (FREEZE_AT 2), the rest trainable
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert (
        "backbone.res3.0.conv1.weight" in trainable
        and "backbone.res2.0.conv1.weight" not in trainable
    )
    assert (
        "roi_heads.res5.0.conv1.weight" in trainable
        and "proposal_generator.rpn_head.conv.weight" in trainable
    )


def test_build_model_reads_config_values():
    cfg = tiny_cfg(SMALL_BATCHES)
    model = build_model(cfg)
    rpn, heads = model.proposal_generator, model.roi_heads
    assert rpn.in_features == ["res4"] and heads.in_features == ["res4"]
    assert rpn.pre_nms_topk == {True: 2000, False: 1000} and rpn.post_nms_topk == {
        True: 48,
        False: 32,
    }
    assert rpn.nms_thresh == 0.7 and rpn.box2box_transform.weights == (1.0, 1.0, 1.0, 1.0)
    assert (
        rpn.anchor_matcher.allow_low_quality_matches
        and not heads.proposal_matcher.allow_low_quality_matches
    )
    assert heads.box_predictor.box2box_transform.weights == (10.0, 10.0, 5.0, 5.0)
    assert (
        heads.box_predictor.test_score_thresh == 0.05 and heads.box_predictor.test_nms_thresh == 0.5
    )
    assert heads.box_predictor.test_topk_per_image == 100
    assert heads.pooler.output_size == (14, 14) and heads.pooler.pooler_type == "ROIAlignV2"
    assert heads.pooler.level_poolers[0].spatial_scale == 1 / 16
    assert heads.num_classes == 3 and heads.proposal_append_gt
    assert model.pixel_std.flatten().tolist() == pytest.approx([57.375, 57.12, 58.395])
    assert resnet_backbones.build_model is build_model


def test_basic_block_res5_head_is_resnet18s_own_res5():
    """RES5_HEAD_BLOCK basic: the C4 head of a ResNet-18/34 is that network's res5 (2 / 3 basic
    blocks, first with stride 2, 8x the res2 width); the default stays detectron2's bottleneck."""
    from resnet_backbones.modeling.backbone.resnet import BasicBlock, BottleneckBlock

    for depth, num_blocks in ((18, 2), (34, 3)):
        cfg = tiny_cfg(
            SMALL_BATCHES,
            MODEL__RESNETS__DEPTH=depth,
            MODEL__RESNETS__RES2_OUT_CHANNELS=16,
            MODEL__RESNETS__STEM_OUT_CHANNELS=16,
            MODEL__RESNETS__RES5_HEAD_BLOCK="basic",
        )
        model = build_model(cfg)
        res5 = model.roi_heads.res5
        assert len(res5) == num_blocks and all(type(b) is BasicBlock for b in res5)
        assert res5[0].conv1.stride == (2, 2) and res5[0].conv1.in_channels == 64
        assert (
            res5[-1].out_channels == 128
            and model.roi_heads.box_predictor.cls_score.in_features == 128
        )
        img, inst = two_box_image()
        with EventStorage(0):
            model.train()
            losses = model([{"image": img, "instances": inst}])
        assert sorted(losses) == sorted(LOSS_KEYS) and all(
            torch.isfinite(v) for v in losses.values()
        )

    default = build_model(
        tiny_cfg(SMALL_BATCHES, MODEL__RESNETS__DEPTH=18, MODEL__RESNETS__RES2_OUT_CHANNELS=16)
    )
    assert len(default.roi_heads.res5) == 3 and all(
        type(b) is BottleneckBlock for b in default.roi_heads.res5
    )
    with pytest.raises(ValueError, match="RES5_HEAD_BLOCK='basic' needs .*DEPTH=50"):
        build_model(tiny_cfg(SMALL_BATCHES, MODEL__RESNETS__RES5_HEAD_BLOCK="basic"))
    with pytest.raises(ValueError, match="RES5_HEAD_BLOCK='wide'"):
        build_model(tiny_cfg(SMALL_BATCHES, MODEL__RESNETS__RES5_HEAD_BLOCK="wide"))


def test_cuda_device_without_cuda_fails_with_a_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tiny_cfg(SMALL_BATCHES, MODEL__DEVICE="cuda")
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        build_model(cfg)


def test_input_format_is_checked():
    cfg = tiny_cfg(SMALL_BATCHES, INPUT__FORMAT="YUV")
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        build_model(cfg)


def test_images_of_different_sizes_are_normalized_and_padded():
    model = build_model(tiny_cfg(SMALL_BATCHES))
    a, b = torch.full((3, 50, 70), 100.0), torch.full((3, 66, 40), 100.0)
    images = model.preprocess_image([{"image": a}, {"image": b}])
    assert images.tensor.shape == (2, 3, 66, 70) and images.image_sizes == [(50, 70), (66, 40)]
    expected = (100.0 - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(images.tensor[1, :, :66, :40], expected.expand(3, 66, 40))
    assert (images.tensor[1, :, :, 40:] == 0).all()  # padding after normalization is zero
    # a backbone that needs a size multiple of 32 gets it
    type(model.backbone).size_divisibility = property(lambda self: 32)
    try:
        assert model.preprocess_image([{"image": a}, {"image": b}]).tensor.shape == (2, 3, 96, 96)
    finally:
        del type(model.backbone).size_divisibility


# ---------------------------------------------------------------------------------- training
def test_training_returns_detectron2_loss_dict():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(SMALL_BATCHES)).train()
    img, inst = two_box_image()
    empty = Instances((48, 80))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    with EventStorage() as storage:
        losses = model(
            [
                {"image": img, "instances": inst},
                {"image": torch.rand(3, 48, 80) * 255, "instances": empty},
            ]
        )
    assert list(losses) == LOSS_KEYS
    # detectron2's training metrics go to the trainer's event storage
    logged = storage.latest()
    for name in (
        "rpn/num_pos_anchors",
        "rpn/num_neg_anchors",
        "roi_head/num_fg_samples",
        "roi_head/num_bg_samples",
        "fast_rcnn/cls_accuracy",
        "fast_rcnn/fg_cls_accuracy",
        "fast_rcnn/false_negative",
    ):
        assert name in logged, name
    assert logged["roi_head/num_fg_samples"][0] > 0  # the appended gt boxes at least
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
        assert v.item() >= 0
    sum(losses.values()).backward()
    head = model.proposal_generator.rpn_head
    assert head.objectness_logits.weight.grad is not None
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad is not None
    with pytest.raises(ValueError, match="instances"):
        model([{"image": img}])


def test_sgd_steps_lower_the_loss():
    """A few SGD steps on one fixed image with two boxes. Sampling sizes above the number of
    anchors / RoIs make every step see the same samples, so the loss is a deterministic function
    of the weights."""
    torch.manual_seed(0)
    cfg = tiny_cfg(
        SMALL_BATCHES,
        MODEL__RPN__BATCH_SIZE_PER_IMAGE=512,
        MODEL__ROI_HEADS__BATCH_SIZE_PER_IMAGE=512,
    )
    model = build_model(cfg).train()
    img, inst = two_box_image()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.005, momentum=0.9)
    history = []
    for _ in range(6):
        losses = model([{"image": img, "instances": inst}])
        loss = sum(losses.values())
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    first, last = sum(history[0].values()), sum(history[-1].values())
    assert last < 0.8 * first, history
    assert history[-1]["loss_rpn_cls"] < history[0]["loss_rpn_cls"], history


# --------------------------------------------------------------------------------- inference
def test_inference_output_structure_and_coordinates():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(SMALL_BATCHES)).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep everything
    img, _ = two_box_image()
    with torch.no_grad():
        out = model([{"image": img, "height": 128, "width": 192}, {"image": img[:, :40, :50]}])
    assert isinstance(out, list) and len(out) == 2 and all(set(o) == {"instances"} for o in out)
    big, small = out[0]["instances"], out[1]["instances"]
    assert big.image_size == (128, 192) and small.image_size == (40, 50)
    for inst, (h, w) in ((big, (128, 192)), (small, (40, 50))):
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= 100
        b = inst.pred_boxes.tensor
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 2] <= w).all()
            and (b[:, 1] >= 0).all()
            and (b[:, 3] <= h).all()
        )
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert inst.pred_classes.dtype == torch.int64 and inst.pred_classes.max() < 3
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    # the same image alone: without rescaling boxes are in the 64x96 input, with it exactly x2
    with torch.no_grad():
        raw = model.inference([{"image": img}], do_postprocess=False)[0]
        scaled = model([{"image": img, "height": 128, "width": 192}])[0]["instances"]
    raw = raw[raw.pred_boxes.nonempty()]  # postprocessing drops empty boxes
    assert raw.image_size == (64, 96) and len(raw) == len(scaled)
    torch.testing.assert_close(scaled.pred_boxes.tensor, raw.pred_boxes.tensor * 2)
    torch.testing.assert_close(scaled.scores, raw.scores)


def test_inference_with_no_detections():
    model = build_model(tiny_cfg(SMALL_BATCHES)).eval()
    model.roi_heads.box_predictor.test_score_thresh = 1.0  # nothing passes
    img, _ = two_box_image()
    with torch.no_grad():
        (out,) = model([{"image": img, "height": 32, "width": 48}])
    inst = out["instances"]
    assert len(inst) == 0 and inst.image_size == (32, 48)
    assert (
        inst.pred_boxes.tensor.shape == (0, 4)
        and inst.scores.shape == (0,)
        and inst.pred_classes.shape == (0,)
    )

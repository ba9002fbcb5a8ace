"""Our ResNets inside torchvision's detectors: C4 Faster R-CNN, its parts, and the FPN backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from helpers import tiny_cfg
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from resnet_backbones.data.shapes import SHAPES_CLASSES, render_detection_image
from resnet_backbones.integrations.torchvision import (
    C4_ANCHOR_SIZES,
    ResNetRes5BoxHead,
    ResNetRes5MaskHead,
    ResNetWithFPN,
    fasterrcnn_resnet_c4,
    maskrcnn_resnet_c4,
    resnet_c4_parts,
    resnet_c4_trunk,
    resnet_fpn_backbone,
    resnet_res5_box_head,
)
from resnet_backbones.layers import FrozenBatchNorm2d
from resnet_backbones.modeling.backbone import ResNet, create_backbone

NARROW = {"stem_out_channels": 16, "res2_out_channels": 16}  # resnet18 at 1/4 width: fast on a CPU


def shapes_batch(num_images: int = 2, size: int = 128, seed: int = 0):
    """torchvision inputs: RGB float images in [0, 1] and targets with labels 1..K
    (0 = background)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(num_images):
        bgr, anns = render_detection_image(rng, size, size)
        images.append(torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255)
        targets.append(
            {
                "boxes": torch.tensor([box for _, box in anns], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([cls + 1 for cls, _ in anns], dtype=torch.int64),
            }
        )
    return images, targets


def test_c4_detector_is_torchvision_faster_rcnn_with_our_trunk_and_res5_head():
    model = fasterrcnn_resnet_c4("resnet50", num_classes=4)
    assert isinstance(model, FasterRCNN)
    assert isinstance(model.backbone, ResNet) and model.backbone.out_channels == 1024
    assert model.backbone.stage_names == ("res2", "res3", "res4")
    head = model.roi_heads.box_head
    assert isinstance(head, ResNetRes5BoxHead) and (head.in_channels, head.out_channels) == (
        1024,
        2048,
    )
    assert len(head.res5) == 3 and head.res5[0].stride == 2
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, FastRCNNPredictor)
    assert (predictor.cls_score.in_features, predictor.cls_score.out_features) == (2048, 4)
    assert predictor.bbox_pred.out_features == 16
    pool = model.roi_heads.box_roi_pool
    assert isinstance(pool, MultiScaleRoIAlign) and pool.featmap_names == ["res4"]
    assert pool.output_size == (14, 14)
    anchors = model.rpn.anchor_generator
    assert anchors.sizes == (C4_ANCHOR_SIZES,) and anchors.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert anchors.num_anchors_per_location() == [15]
    # From scratch (torchvision's convention): trainable BatchNorm2d, nothing frozen.
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms)
    assert all(p.requires_grad for p in model.parameters())
    keys = list(model.state_dict())
    assert (
        "backbone.res4.5.conv3.weight" in keys and "roi_heads.box_head.res5.2.conv3.weight" in keys
    )


def test_c4_train_loss_goes_down_and_inference_returns_detections():
    torch.manual_seed(0)
    model = fasterrcnn_resnet_c4(
        "resnet18",
        num_classes=len(SHAPES_CLASSES) + 1,
        min_size=128,
        max_size=128,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
        **NARROW,
    )
    assert model.backbone.out_channels == 64 and model.roi_heads.box_head.out_channels == 128
    images, targets = shapes_batch()
    steps = sgd_steps(model, images, targets, steps=10, lr=0.02)
    assert all(
        set(step) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        for step in steps
    )
    losses = [sum(step.values()) for step in steps]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == {"boxes", "labels", "scores"}
        n = len(out["scores"])
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,)
        if n:
            assert out["labels"].min() >= 1 and out["labels"].max() <= len(SHAPES_CLASSES)
            assert out["boxes"][:, 2:].max() <= 128


@pytest.mark.parametrize("as_file", [False, True])
def test_weights_from_torchvision_checkpoint_reproduce_torchvision(tmp_path, as_file):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    weights = tv.state_dict()
    if as_file:
        weights = tmp_path / "tv_r50.pth"
        torch.save(tv.state_dict(), weights)
    trunk, head = resnet_c4_parts("resnet50", weights=weights)
    trunk.eval()
    # torchvision weights: the stride goes in the 3x3 conv (stride_in_1x1 followed the weights).
    assert trunk.res3[0].conv1.stride == (1, 1) and trunk.res3[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c4 = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
        ours = trunk(x)["res4"]
        torch.testing.assert_close(ours, c4, rtol=1e-4, atol=1e-4)
        pooled = torch.flatten(tv.avgpool(tv.layer4(c4)), 1)
        torch.testing.assert_close(head(c4), pooled, rtol=1e-4, atol=1e-4)


def test_trunk_and_head_builders_and_errors():
    trunk = resnet_c4_trunk("resnet18", norm="BN", freeze_at=0)
    assert trunk.out_channels == 256 and trunk(torch.zeros(1, 3, 64, 64))["res4"].shape == (
        1,
        256,
        4,
        4,
    )
    head = resnet_res5_box_head("preact_resnet18")
    assert head.post_norm is not None
    assert head(torch.zeros(3, 256, 14, 14)).shape == (3, 512)
    with pytest.raises(ValueError, match="CIFAR"):
        resnet_c4_trunk("resnet20_cifar")
    with pytest.raises(TypeError, match="box_head"):
        fasterrcnn_resnet_c4("resnet18", num_classes=2, box_head=torch.nn.Identity())


def test_fpn_backbone_matches_torchvision_interface():
    backbone = resnet_fpn_backbone("resnet18", trainable_layers=3, **NARROW)
    assert isinstance(backbone, ResNetWithFPN) and backbone.out_channels == 256
    out = backbone(torch.zeros(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1]
    assert all(v.shape[1] == 256 for v in out.values())
    body = backbone.body
    assert not any(p.requires_grad for p in body.res2.parameters())
    assert all(p.requires_grad for p in body.res3.parameters())
    frozen = resnet_fpn_backbone("resnet18", trainable_layers=0, returned_layers=[2, 3], **NARROW)
    assert not any(p.requires_grad for p in frozen.body.parameters())
    assert frozen.body.stage_names == ("res2", "res3", "res4")  # res5 is not built
    assert list(frozen(torch.zeros(1, 3, 64, 64))) == ["0", "1", "pool"]
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_fpn_backbone("resnet18", trainable_layers=6)

    # torchvision's FasterRCNN takes it as it takes its own resnet_fpn_backbone.
    model = FasterRCNN(backbone, num_classes=4, min_size=64, max_size=64).eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 64, 64)])
    assert set(det) == {"boxes", "labels", "scores"}


def _builder_from_detector_file(builder, tmp_path, **cfg_overrides):
    """The tiny C4 detector (``tiny_cfg(**cfg_overrides)``) saved as a detectron2-layout file,
    and ``builder``'s ResNet-50 of the same narrow widths loaded from it; both in eval mode."""
    from resnet_backbones import build_model
    from resnet_backbones.checkpoint import save_checkpoint

    torch.manual_seed(0)
    detector = build_model(tiny_cfg(**cfg_overrides)).eval()
    save_checkpoint(tmp_path / "c4.pkl", detector.state_dict())
    model = builder(
        "resnet50",
        num_classes=4,
        weights=tmp_path / "c4.pkl",
        stem_out_channels=16,
        res2_out_channels=32,
        width_per_group=8,
    ).eval()
    return detector, model


def test_weights_from_a_c4_detector_checkpoint(tmp_path):
    """A detectron2-layout C4 detector file (ours or detectron2's) fills trunk and res5 head."""
    detector, model = _builder_from_detector_file(fasterrcnn_resnet_c4, tmp_path)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c4 = detector.backbone(x)["res4"]
        torch.testing.assert_close(model.backbone(x)["res4"], c4, rtol=1e-5, atol=1e-5)
        rois = torch.randn(5, c4.shape[1], 14, 14)
        expected = detector.roi_heads.res5(rois).mean(dim=(2, 3))
        torch.testing.assert_close(model.roi_heads.box_head(rois), expected, rtol=1e-5, atol=1e-5)


def test_c4_norm_follows_torchvision_convention_frozen_bn_only_with_weights():
    state = create_backbone("resnet18", out_features=("res5",), **NARROW).state_dict()
    model = fasterrcnn_resnet_c4("resnet18", num_classes=4, weights=state, **NARROW)
    # Pretrained: detectron2's C4 defaults, FrozenBN everywhere, stem and res2 frozen.
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    assert not any(p.requires_grad for p in model.backbone.res2.parameters())
    assert all(p.requires_grad for p in model.backbone.res3.parameters())
    assert all(p.requires_grad for p in model.roi_heads.box_head.parameters())
    # An explicit norm / freeze_at wins over the convention, with or without weights.
    explicit = fasterrcnn_resnet_c4(
        "resnet18", num_classes=4, norm="FrozenBN", freeze_at=2, **NARROW
    )
    assert isinstance(explicit.backbone.res3[0].conv1.norm, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in explicit.backbone.res2.parameters())
    # (stem and res2 frozen: converted to FrozenBN, they keep BatchNorm's counter key, which the
    # FrozenBN checkpoint lacks; strict loading still succeeds)
    explicit = fasterrcnn_resnet_c4("resnet18", num_classes=4, weights=state, norm="BN", **NARROW)
    assert type(explicit.backbone.res3[0].conv1.norm) is torch.nn.BatchNorm2d
    assert isinstance(explicit.backbone.stem.conv1.norm, FrozenBatchNorm2d)
    # The FPN builder too.
    assert type(resnet_fpn_backbone("resnet18", **NARROW).body.res3[0].conv1.norm) is (
        torch.nn.BatchNorm2d
    )
    fpn = resnet_fpn_backbone("resnet18", weights=state, **NARROW)
    assert isinstance(fpn.body.res3[0].conv1.norm, FrozenBatchNorm2d)


def test_c4_from_scratch_r50_trains_without_diverging():
    """Issue 16: with FrozenBN at its identity init, a from-scratch R50-C4 went 39.5 -> 551727 ->
    nan in six SGD steps at lr 0.005; with trainable BN (the default without weights) it does
    not."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet_c4(
        "resnet50",
        num_classes=4,
        min_size=128,
        max_size=128,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
    )
    images, targets = shapes_batch()
    losses = [sum(step.values()) for step in sgd_steps(model, images, targets, steps=6, lr=0.005)]
    assert all(np.isfinite(losses)) and max(losses) < 2 * losses[0], losses


def sgd_steps(model, images, targets, *, steps: int, lr: float):
    """``steps`` SGD steps (momentum 0.9) of a torchvision detector in training mode; the loss
    terms of each step as floats."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    model.train()
    history = []
    for _ in range(steps):
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in loss_dict.items()})
    return history


def mask_batch(num_images: int = 2, size: int = 128, seed: int = 0):
    """torchvision Mask R-CNN inputs: noisy RGB images with filled ellipses (label 1) and
    rectangles (label 2), their boxes and (n, H, W) uint8 masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    images, targets = [], []
    for _ in range(num_images):
        image = rng.uniform(0.0, 0.3, (3, size, size))
        boxes, labels, masks = [], [], []
        for label in (1, 2):
            w, h = rng.uniform(30, 60, 2)
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            if label == 1:
                cx, cy = x0 + w / 2, y0 + h / 2
                mask = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
            else:
                mask = (xx >= x0) & (xx <= x0 + w) & (yy >= y0) & (yy <= y0 + h)
            image[:, mask] = rng.uniform(0.6, 1.0, (3, 1))
            ys, xs = np.nonzero(mask)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(label)
            masks.append(mask)
        # A later shape may cover part of an earlier one: keep the masks of what is visible.
        masks[0] &= ~masks[1]
        images.append(torch.from_numpy(image).float())
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
            }
        )
    return images, targets


def test_mask_rcnn_c4_is_torchvision_mask_rcnn_with_shared_res5():
    model = maskrcnn_resnet_c4("resnet50", num_classes=4)
    assert isinstance(model, MaskRCNN) and isinstance(model.backbone, ResNet)
    assert model.backbone.stage_names == ("res2", "res3", "res4")
    heads = model.roi_heads
    assert isinstance(heads.box_head, ResNetRes5BoxHead)
    assert isinstance(heads.mask_head, ResNetRes5MaskHead)
    # detectron2's C4: one res5, run on the box RoIs and on the mask RoIs.
    assert heads.mask_head.res5 is heads.box_head.res5
    for pool in (heads.box_roi_pool, heads.mask_roi_pool):
        assert isinstance(pool, MultiScaleRoIAlign) and pool.featmap_names == ["res4"]
        assert pool.output_size == (14, 14) and pool.sampling_ratio == 0
    predictor = heads.mask_predictor
    assert isinstance(predictor, MaskRCNNPredictor)
    assert (predictor.conv5_mask.in_channels, predictor.conv5_mask.out_channels) == (2048, 256)
    assert predictor.mask_fcn_logits.out_channels == 4
    rois = torch.randn(3, 1024, 14, 14)
    with torch.no_grad():
        assert predictor(heads.mask_head(rois)).shape == (3, 4, 14, 14)  # detectron2's C4: 14x14
    # Same norm convention as fasterrcnn_resnet_c4.
    assert type(model.backbone.res3[0].conv1.norm) is torch.nn.BatchNorm2d
    with pytest.raises(TypeError, match="mask_head"):
        maskrcnn_resnet_c4("resnet18", num_classes=2, mask_head=torch.nn.Identity())


def test_mask_rcnn_c4_trains_and_infers_masks():
    torch.manual_seed(0)
    size = 128
    model = maskrcnn_resnet_c4(
        "resnet18",
        num_classes=3,
        min_size=size,
        max_size=size,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
        box_score_thresh=0.0,
        box_detections_per_img=5,
        **NARROW,
    )
    images, targets = mask_batch(size=size)
    steps = sgd_steps(model, images, targets, steps=8, lr=0.01)
    keys = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(set(step) == keys for step in steps)
    mask_losses = [step["loss_mask"] for step in steps]
    losses = [sum(step.values()) for step in steps]
    assert all(np.isfinite(losses)) and all(np.isfinite(mask_losses))
    assert np.mean(mask_losses[-3:]) < np.mean(mask_losses[:3]), mask_losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        n = len(out["scores"])
        assert 0 < n <= 5
        assert out["masks"].shape == (n, 1, size, size) and out["masks"].dtype == torch.float32
        assert out["masks"].min() >= 0 and out["masks"].max() <= 1
        assert out["masks"].max() > 0  # pasted into its box, not empty


def test_mask_rcnn_c4_weights_from_our_mask_rcnn_checkpoint(tmp_path):
    """A MASK_ON C4 detector file fills trunk and the shared res5 (its mask head, whose names
    and class layout differ from torchvision's, is not loaded); with weights: FrozenBN."""
    detector, model = _builder_from_detector_file(maskrcnn_resnet_c4, tmp_path, MODEL__MASK_ON=True)
    assert isinstance(model.backbone.res3[0].conv1.norm, FrozenBatchNorm2d)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c4 = detector.backbone(x)["res4"]
        torch.testing.assert_close(model.backbone(x)["res4"], c4, rtol=1e-5, atol=1e-5)
        rois = torch.randn(3, c4.shape[1], 14, 14)
        expected = detector.roi_heads.res5(rois)
        torch.testing.assert_close(model.roi_heads.mask_head(rois), expected, rtol=1e-5, atol=1e-5)

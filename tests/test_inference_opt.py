"""The detector fast paths (``modeling/fast_path.py``) compute what the unoptimized model computes.

* ``roi_align_subsampled`` equals ``torchvision.ops.roi_align(...)[:, :, ::2, ::2]`` (values and
  gradients, 1e-5 relative; measured ~2e-7), for aligned/unaligned, fixed/adaptive sampling,
  empty, degenerate and out-of-image boxes.
* The res5 head with the subsampled pooler equals the original head (1e-5).
* ``FrozenBNConv2d`` equals conv + FrozenBN, forward and weight gradient (1e-5).
* ``optimize_detector_for_inference``: backbone features, RoI-head outputs on the same proposals
  within 1e-4 relative of the unoptimized model, and the same detections (matched boxes, classes,
  scores within 1e-4); ``DefaultPredictor(cfg, optimize=True)`` agrees with the default predictor.
* ``optimize_detector_for_training``: same state dict (names and values) and the same parameter
  objects; losses and gradients within 1e-4 relative given the same proposals and sampling.
"""

import copy

import pytest
import torch
from helpers import calibrated_narrow_c4, scene_inputs, tiny_cfg
from helpers import narrow_c4_cfg as _cfg
from torchvision.ops import roi_align

from resnet_backbones.data.shapes import render_detection_image
from resnet_backbones.layers import Conv2d, FrozenBatchNorm2d
from resnet_backbones.modeling import build_model
from resnet_backbones.modeling.fast_path import (
    RES5_CHUNK_SIZE,
    FrozenBNConv2d,
    PooledRes5,
    PreprojectedBottleneck,
    ProjectingROIPooler,
    SubsampledROIPooler,
    fuse_frozen_bn_into_convs,
    optimize_detector_for_inference,
    optimize_detector_for_training,
    project_res5_input_before_pooling,
    roi_align_subsampled,
    subsample_res5_roi_pooling,
)
from resnet_backbones.structures import Boxes, Instances, pairwise_iou
from resnet_backbones.utils.events import EventStorage

TOL = 1e-4


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------- RoIAlign
def _rois(k=300, n=2, h=30, w=40, stride=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(k, 2, generator=g) * torch.tensor([w * stride, h * stride]) - 40
    wh = torch.rand(k, 2, generator=g) ** 2 * 500 + 0.5
    rois = torch.cat([torch.randint(0, n, (k, 1), generator=g).float(), xy0, xy0 + wh], dim=1)
    rois[:4, 3:] = rois[:4, 1:3]  # empty boxes
    rois[4:8, 1:] = torch.tensor([-300.0, -300.0, 2000.0, 2000.0])  # far larger than the image
    rois[8:12, 1:] = torch.tensor([900.0, 700.0, 950.0, 760.0])  # outside the image
    rois[12:14, 1:] = torch.tensor([50.0, 60.0, 40.0, 30.0])  # x1 < x0
    return rois


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_subsampled_equals_torchvision(aligned, sampling_ratio):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 30, 40)
    rois = _rois()
    ref = roi_align(x, rois, (14, 14), 1 / 16, sampling_ratio, aligned)[:, :, ::2, ::2]
    for features in (x, x.contiguous(memory_format=torch.channels_last)):
        out = roi_align_subsampled(features, rois, (14, 14), 1 / 16, sampling_ratio, aligned, 2)
        assert out.shape == ref.shape == (300, 16, 7, 7)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert rel(out, ref) <= 1e-5


def test_roi_align_subsampled_other_sizes_and_strides():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 30, 40)
    rois = _rois(k=100)
    for size, stride in [((7, 5), 1), ((7, 7), 2), ((14, 14), 3)]:
        ref = roi_align(x, rois, size, 1 / 16, 0, True)[:, :, ::stride, ::stride]
        out = roi_align_subsampled(x, rois, size, 1 / 16, 0, True, stride)
        assert out.shape == ref.shape
        assert rel(out, ref) <= 1e-5
    empty = roi_align_subsampled(x, rois[:0], (14, 14), 1 / 16, 0, True, 2)
    assert empty.shape == (0, 8, 7, 7)


def test_roi_align_subsampled_gradient_equals_torchvision():
    torch.manual_seed(2)
    x = torch.randn(2, 16, 30, 40)
    rois = _rois(k=200)
    upstream = torch.randn(200, 16, 7, 7)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    roi_align(a, rois, (14, 14), 1 / 16, 0, True)[:, :, ::2, ::2].backward(upstream)
    roi_align_subsampled(b, rois, (14, 14), 1 / 16, 0, True, 2).backward(upstream)
    assert rel(b.grad, a.grad) <= 1e-5


def test_roi_align_subsampled_gradcheck():
    rois = torch.tensor(
        [[0, 10.0, 20, 90, 70], [1, 0, 0, 50, 40], [0, 30, 5, 95, 60]], dtype=torch.float64
    )
    x = torch.randn(2, 2, 8, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: roi_align_subsampled(f, rois, (4, 4), 1 / 8, 0, True, 2), (x,)
    )


def test_roi_align_subsampled_under_autocast_returns_the_feature_dtype():
    x = torch.randn(1, 8, 20, 20)
    rois = _rois(k=20, n=1, h=20, w=20)
    ref = roi_align(x, rois, (14, 14), 1 / 16, 0, True)[:, :, ::2, ::2]
    out = roi_align_subsampled(x.bfloat16(), rois, (14, 14), 1 / 16, 0, True, 2)
    assert out.dtype == torch.bfloat16
    assert (
        rel(out, roi_align(x.bfloat16().float(), rois, (14, 14), 1 / 16, 0, True)[:, :, ::2, ::2])
        <= 1e-2
    )
    assert rel(out, ref) <= 2e-2


# ---------------------------------------------------------------------------- detector


CALIBRATION = ((3, 192, 256), (4, 160, 224))  # (seed, height, width) of the calibration images


@pytest.fixture(scope="module")
def model():
    return calibrated_narrow_c4(scene_inputs(*CALIBRATION))


def _same_detections(a: Instances, b: Instances):
    assert len(a) == len(b) and len(a) > 10
    iou = pairwise_iou(a.pred_boxes, b.pred_boxes)
    iou[a.pred_classes[:, None] != b.pred_classes[None, :]] = 0
    best, idx = iou.max(dim=1)
    assert best.min() > 0.999
    assert (a.scores - b.scores[idx]).abs().max() <= TOL


def test_subsampled_res5_head_equals_original(model):
    heads = copy.deepcopy(model.roi_heads)
    torch.manual_seed(1)
    feats = [torch.randn(2, 128, 12, 16)]
    boxes = [
        Boxes(_rois(k=60, n=1, h=12, w=16)[:, 1:]),
        Boxes(_rois(k=40, n=1, h=12, w=16, seed=1)[:, 1:]),
    ]
    with torch.no_grad():
        ref = heads._shared_roi_transform(feats, boxes)
        assert subsample_res5_roi_pooling(heads)
        assert isinstance(heads.pooler, SubsampledROIPooler)
        assert heads.res5[0].conv1.stride == (1, 1) and heads.res5[0].shortcut.stride == (1, 1)
        out = heads._shared_roi_transform(feats, boxes)
        assert subsample_res5_roi_pooling(heads)  # idempotent
    assert out.shape == ref.shape
    assert rel(out, ref) <= 1e-5
    assert sorted(heads.state_dict()) == sorted(model.roi_heads.state_dict())


def test_subsampling_does_not_apply_with_the_stride_in_the_3x3():
    heads = build_model(_cfg(["MODEL.RESNETS.STRIDE_IN_1X1", "False"])).roi_heads
    pooler = heads.pooler
    assert not subsample_res5_roi_pooling(heads)
    assert heads.pooler is pooler and heads.res5[0].conv2.stride == (2, 2)


def test_res5_input_projected_before_pooling_equals_the_folded_head(model):
    folded = optimize_detector_for_inference(model, project_res5_input=False, winograd=False)
    assert type(folded.roi_heads.pooler) is SubsampledROIPooler
    heads = copy.deepcopy(folded.roi_heads)
    assert project_res5_input_before_pooling(heads)
    assert type(heads.pooler) is ProjectingROIPooler
    assert type(heads.res5[0]) is PreprojectedBottleneck
    assert project_res5_input_before_pooling(heads)  # idempotent
    reference = folded.roi_heads.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in heads.state_dict().items())
    assert heads.state_dict().keys() == reference.keys()
    in_channels = heads.res5[0].conv1.in_channels
    torch.manual_seed(2)
    feats = [torch.randn(2, in_channels, 6, 8).contiguous(memory_format=torch.channels_last)]
    many = [  # 100 RoIs x 49 bins > 2 x 6 x 8 positions: the pooler projects
        Boxes(_rois(k=60, n=1, h=6, w=8)[:, 1:]),
        Boxes(_rois(k=40, n=1, h=6, w=8, seed=1)[:, 1:]),
    ]
    few = [Boxes(_rois(k=1, n=1, h=6, w=8, seed=2)[:, 1:] + 20), Boxes(torch.zeros(0, 4))]
    with torch.no_grad():
        for boxes, channels in ((many, heads.res5[0].projected_channels), (few, in_channels)):
            assert heads.pooler(feats, boxes).shape[1] == channels
            ref = folded.roi_heads._shared_roi_transform(feats, boxes)
            out = heads._shared_roi_transform(feats, boxes)
            assert out.shape == ref.shape and rel(out, ref) <= 1e-5
    # the unprojected input still goes through the block as before
    assert not project_res5_input_before_pooling(model.roi_heads)  # not subsampled, not folded
    torchvision_style = build_model(_cfg(["MODEL.RESNETS.STRIDE_IN_1X1", "False"]))
    assert not project_res5_input_before_pooling(
        optimize_detector_for_inference(torchvision_style).roi_heads
    )


def test_frozen_bn_conv_equals_conv_then_frozen_bn():
    torch.manual_seed(0)
    norm = FrozenBatchNorm2d(8)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.normal_()
    conv = Conv2d(4, 8, kernel_size=3, padding=1, bias=False, norm=norm, activation=torch.relu)
    fused = copy.deepcopy(conv)
    assert fuse_frozen_bn_into_convs(fused) == 1 and type(fused) is FrozenBNConv2d
    assert fused.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(2, 4, 9, 9)
    y0, y1 = conv(x.requires_grad_()), fused(x)
    assert rel(y1, y0) <= 1e-5
    g = torch.randn_like(y0)
    (gw0,) = torch.autograd.grad(y0, conv.weight, g)
    (gw1,) = torch.autograd.grad(y1, fused.weight, g)
    assert rel(gw1, gw0) <= 1e-5


def test_optimize_for_inference_same_outputs(model):
    fast = optimize_detector_for_inference(model)
    assert (
        fast is not model
        and isinstance(model.roi_heads.pooler, type(fast.roi_heads.pooler)) is False
    )
    assert type(fast.roi_heads.res5) is PooledRes5
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())  # folded
    batch = scene_inputs((9, 192, 256), (10, 160, 224))
    with torch.no_grad():
        images = model.preprocess_image(batch)
        f0, f1 = model.backbone(images.tensor), fast.backbone(images.tensor)
        assert rel(f1["res4"], f0["res4"]) <= TOL
        # the RoI heads on the same features and proposals
        proposals, _ = model.proposal_generator(images, f0, None)
        boxes = [p.proposal_boxes for p in proposals]
        p0 = model.roi_heads.box_predictor(
            model.roi_heads._shared_roi_transform([f0["res4"]], boxes).mean(dim=[2, 3])
        )
        p1 = fast.roi_heads.box_predictor(
            fast.roi_heads._shared_roi_transform([f0["res4"]], boxes).mean(dim=[2, 3])
        )
        assert rel(p1[0], p0[0]) <= TOL and rel(p1[1], p0[1]) <= TOL
        d0, _ = model.roi_heads(images, f0, proposals)
        d1, _ = fast.roi_heads(images, f0, proposals)
    for a, b in zip(d0, d1):
        _same_detections(a, b)


def test_pooled_res5_chunks_rois_at_inference_only(model):
    fast = optimize_detector_for_inference(model, res5_chunk_size=7)
    res5 = fast.roi_heads.res5
    assert res5.chunk_size == 7
    x = torch.randn(30, *_res5_input_shape(fast)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        chunked = res5(x)
        res5.chunk_size = None
        whole = res5(x)
    assert chunked.shape == whole.shape == (30, whole.shape[1], 1, 1)
    assert rel(chunked, whole) <= 1e-6  # the same RoIs in the same order
    # with batch statistics (training mode) chunks would change every output: never chunked there
    train_res5 = copy.deepcopy(model.roi_heads.res5)
    for m in train_res5.modules():
        if isinstance(m, Conv2d) and isinstance(m.norm, FrozenBatchNorm2d):
            m.norm = torch.nn.BatchNorm2d(m.out_channels)
    train_res5.__class__ = PooledRes5
    train_res5.train()
    x = torch.randn(12, *_res5_input_shape(model))
    with torch.no_grad():
        expected = train_res5(x)
        train_res5.chunk_size = 5
        assert torch.equal(train_res5(x), expected)
    untouched = copy.deepcopy(model)
    keys = list(untouched.state_dict())
    with pytest.raises(ValueError, match="res5_chunk_size"):
        optimize_detector_for_inference(untouched, res5_chunk_size=-1, inplace=True)
    assert list(untouched.state_dict()) == keys  # rejected before anything was folded
    # the training fast path chunks too, in its periodic evaluations (eval mode) only
    trained = optimize_detector_for_training(copy.deepcopy(model))
    assert trained.roi_heads.res5.chunk_size == RES5_CHUNK_SIZE


def _res5_input_shape(m):
    conv1 = m.roi_heads.res5[0].conv1
    size = m.roi_heads.pooler.output_size
    side = size[0] if isinstance(size, (tuple, list)) else size
    if tuple(conv1.stride) == (1, 1) and isinstance(m.roi_heads.pooler, SubsampledROIPooler):
        side = len(range(0, side, m.roi_heads.pooler.stride))
    return (conv1.in_channels, side, side)


def test_default_predictor_optimize_switch(model, tmp_path):
    from resnet_backbones import DefaultPredictor

    weights = tmp_path / "narrow.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg = _cfg(
        ["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", 192, "INPUT.MAX_SIZE_TEST", 256]
    )
    img, _ = render_detection_image(21, 192, 256)
    plain, fast = DefaultPredictor(cfg), DefaultPredictor(cfg, optimize=True)
    assert isinstance(fast.model.roi_heads.pooler, SubsampledROIPooler)
    a, b = plain(img)["instances"], fast(img)["instances"]
    assert len(a) > 10
    # end to end, proposal selection (top-k, NMS) can flip on ~1e-6 differences: compare the
    # confident detections
    keep = a.scores > 0.3
    iou = pairwise_iou(a.pred_boxes[keep], b.pred_boxes)
    iou[a.pred_classes[keep][:, None] != b.pred_classes[None, :]] = 0
    assert (iou.max(dim=1).values > 0.99).float().mean() >= 0.95


def test_optimize_for_training_same_state_losses_and_gradients():
    # Residual-branch gains of trained ResNets (0.1-0.3): with gains ~1 a random 50-layer ResNet is
    # chaotic, and its gradients change by ~7% between 1 and 2 threads (summation order alone).
    model = calibrated_narrow_c4(scene_inputs(*CALIBRATION), residual_gain=(0.1, 0.3))
    plain = copy.deepcopy(model).train()
    fast = copy.deepcopy(model).train()
    params_before = dict(fast.named_parameters())
    sd_before = {k: v.clone() for k, v in fast.state_dict().items()}
    assert optimize_detector_for_training(fast) is fast
    assert dict(fast.named_parameters()) == params_before  # same objects
    sd_after = fast.state_dict()
    assert sorted(sd_after) == sorted(sd_before)
    assert all(torch.equal(sd_after[k], sd_before[k]) for k in sd_before)
    assert isinstance(fast.roi_heads.pooler, SubsampledROIPooler)
    assert any(type(m) is FrozenBNConv2d for m in fast.modules())

    batch = scene_inputs((5, 192, 256), (6, 160, 224), with_gt=True)
    results = {}
    for name, m in (("plain", plain), ("fast", fast)):
        m.zero_grad(set_to_none=True)
        with EventStorage():
            images = m.preprocess_image(batch)
            targets = [x["instances"] for x in batch]
            features = m.backbone(images.tensor)
            torch.manual_seed(0)
            rpn_losses = m.proposal_generator.losses(
                *_rpn_loss_inputs(m, images, features, targets)
            )
            # the same proposals for both models (selection can flip on ~1e-6 differences)
            proposals = (
                results["plain"]["proposals"] if name == "fast" else _proposals(m, images, features)
            )
            torch.manual_seed(1)
            _, det_losses = m.roi_heads(images, features, proposals, targets)
        losses = {**rpn_losses, **det_losses}
        sum(losses.values()).backward()
        grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
        results[name] = {
            "losses": losses,
            "grads": grads,
            "features": features["res4"].detach(),
            "proposals": proposals,
        }
    a, b = results["plain"], results["fast"]
    assert rel(b["features"], a["features"]) <= TOL
    for k in a["losses"]:
        assert abs(b["losses"][k].item() - a["losses"][k].item()) <= TOL * max(
            abs(a["losses"][k].item()), 1e-3
        ), k
    assert sorted(a["grads"]) == sorted(b["grads"])
    diffs = {k: rel(b["grads"][k], a["grads"][k]) for k in a["grads"]}
    # Weight gradients are sums over ~50k RoI positions with cancellation: another summation order
    # (channels_last kernels, the scale applied before or after the sum) moves them by ~1e-4 of
    # their maximum in the heads. The backbone's also pass the RPN head's ReLU, whose near-zero
    # inputs flip sign under ~1e-6 forward differences: ~1e-3 (for scale: the unoptimized model
    # run with 1 and with 2 threads differs by ~1e-4).
    assert max(v for k, v in diffs.items() if k.startswith("roi_heads")) <= 1e-3
    assert max(diffs.values()) <= 5e-3, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]


def _rpn_loss_inputs(m, images, features, targets):
    rpn = m.proposal_generator
    feats = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(feats)
    logits, deltas = rpn.rpn_head(feats)
    logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    deltas = [
        x.view(x.shape[0], -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        for x in deltas
    ]
    gt_labels, gt_boxes = rpn.label_and_sample_anchors(anchors, targets)
    return anchors, logits, gt_labels, deltas, gt_boxes


def _proposals(m, images, features):
    with torch.no_grad():
        was = m.training
        m.proposal_generator.eval()
        props, _ = m.proposal_generator(images, features, None)
        m.proposal_generator.train(was)
    return [p for p in props]


def test_model_fast_path_key_in_trainer_and_predictor(tmp_path):
    """MODEL.FAST_PATH (default on) through prepare_model: training keeps detectron2's state dict,
    DefaultPredictor folds BN into the convs; off, both run exactly the plain model."""
    from resnet_backbones import DefaultPredictor
    from resnet_backbones.engine import DefaultTrainer
    from resnet_backbones.layers import FrozenBatchNorm2d
    from resnet_backbones.modeling import prepare_model
    from resnet_backbones.modeling.fast_path import FrozenBNConv2d, SubsampledROIPooler

    # detectron2's fine-tuning norm (the shapes configs use BN)
    cfg = tiny_cfg(MODEL__RESNETS__NORM="FrozenBN")
    assert cfg.MODEL.FAST_PATH
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.FAST_PATH = False
    torch.manual_seed(0)
    fast = prepare_model(DefaultTrainer.build_model(cfg), cfg, "train")
    torch.manual_seed(0)
    plain = prepare_model(DefaultTrainer.build_model(plain_cfg), plain_cfg, "train")
    assert isinstance(fast.roi_heads.pooler, SubsampledROIPooler)
    assert any(isinstance(m, FrozenBNConv2d) for m in fast.modules())
    assert not isinstance(plain.roi_heads.pooler, SubsampledROIPooler)
    assert not any(isinstance(m, FrozenBNConv2d) for m in plain.modules())
    fast_sd, plain_sd = fast.state_dict(), plain.state_dict()
    assert list(fast_sd) == list(plain_sd)
    assert all(torch.equal(fast_sd[k], plain_sd[k]) for k in plain_sd)

    weights = tmp_path / "w.pth"
    torch.save({"model": plain_sd}, weights)
    img, _ = render_detection_image(3, 160, 200)
    outs = {}
    for name, c in (("fast", cfg), ("plain", plain_cfg)):
        c = c.clone()
        c.merge_from_list(["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"])
        predictor = DefaultPredictor(c)
        assert isinstance(predictor.model.roi_heads.pooler, SubsampledROIPooler) == (name == "fast")
        # the inference fast path folds every FrozenBN into its conv (the training one keeps them)
        folded = not any(isinstance(m, FrozenBatchNorm2d) for m in predictor.model.modules())
        assert folded == (name == "fast")
        outs[name] = predictor(img)["instances"]
    assert len(outs["fast"]) == len(outs["plain"]) > 0
    assert torch.allclose(outs["fast"].scores, outs["plain"].scores, atol=1e-4)
    assert torch.allclose(
        outs["fast"].pred_boxes.tensor, outs["plain"].pred_boxes.tensor, atol=1e-2
    )


def test_prepare_model_modes_and_scope():
    """prepare_model is the one place MODEL.FAST_PATH and TEST.AMP.SCOPE take effect: "inference"
    folds BN (state dict changes, eval mode), "export" folds BN only (plain RoIAlign and res5,
    which trace), "train" keeps the state dict; the scope comes from the config; a bad mode or
    scope is refused naming it."""
    from resnet_backbones.layers import FrozenBatchNorm2d
    from resnet_backbones.modeling import build_model, prepare_model
    from resnet_backbones.modeling.fast_path import PooledRes5, SubsampledROIPooler

    cfg = tiny_cfg(TEST__AMP__SCOPE="all", MODEL__RESNETS__NORM="FrozenBN")

    def frozen_bns(m):
        return sum(isinstance(x, FrozenBatchNorm2d) for x in m.modules())

    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.inference_amp_scope == "roi_heads" and frozen_bns(model) > 0
    inference = prepare_model(model, cfg, "inference")
    assert inference is model and not model.training and frozen_bns(model) == 0
    assert model.inference_amp_scope == "all"
    assert isinstance(model.roi_heads.pooler, SubsampledROIPooler)
    assert isinstance(model.roi_heads.res5, PooledRes5)

    exported = prepare_model(build_model(cfg).train(), cfg, "export")
    assert not exported.training and frozen_bns(exported) == 0
    assert not isinstance(exported.roi_heads.pooler, SubsampledROIPooler)
    assert not isinstance(exported.roi_heads.res5, PooledRes5)

    plain_cfg = cfg.clone()
    plain_cfg.MODEL.FAST_PATH = False
    plain = build_model(plain_cfg)
    keys = list(plain.state_dict())
    for mode in ("inference", "export"):
        assert list(prepare_model(plain, plain_cfg, mode).state_dict()) == keys
        assert frozen_bns(plain) > 0 and not plain.training
    with pytest.raises(ValueError, match="mode must be one of .*'deploy'"):
        prepare_model(plain, cfg, "deploy")
    cfg.TEST.AMP.SCOPE = "backbone"
    with pytest.raises(ValueError, match="TEST.AMP.SCOPE"):
        prepare_model(plain, cfg, "inference")

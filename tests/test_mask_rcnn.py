"""Mask R-CNN C4 (MODEL.MASK_ON): the mask head on res5's output, its loss, inference and pasting,
detectron2's state-dict names, and the fast path."""

import copy

import numpy as np
import pytest
import torch
from helpers import narrow_c4_cfg, scene_inputs, tiny_cfg

from resnet_backbones.layers import paste_masks_in_image
from resnet_backbones.modeling import build_model, prepare_model
from resnet_backbones.modeling.fast_path import (
    RES5_CHUNK_SIZE,
    PooledRes5,
    SubsampledROIPooler,
    optimize_keeping_state_dict,
)
from resnet_backbones.modeling.roi_heads import MaskRCNNConvUpsampleHead, mask_rcnn_loss
from resnet_backbones.structures import Boxes, Instances, PolygonMasks
from resnet_backbones.utils.events import EventStorage
from resnet_backbones.utils.testing import calibrate_random_detector_

SMALL = {"MODEL.RPN.POST_NMS_TOPK_TRAIN": 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 32}


def inner_square(box):
    """A polygon inside ``box``: the middle half of each side (a quarter of the box)."""
    x0, y0, x1, y1 = [float(v) for v in box]
    w, h = x1 - x0, y1 - y0
    a, b, c, d = x0 + w / 4, y0 + h / 4, x1 - w / 4, y1 - h / 4
    return [np.array([a, b, c, b, c, d, a, d])]


def with_masks(batch):
    for d in batch:
        inst = d["instances"]
        inst.gt_masks = PolygonMasks([inner_square(b) for b in inst.gt_boxes.tensor])
    return batch


def test_mask_head_layout_init_and_names():
    cfg = tiny_cfg(MODEL__MASK_ON=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    head = model.roi_heads.mask_head
    assert isinstance(head, MaskRCNNConvUpsampleHead)
    res5_out = head.deconv.in_channels
    assert res5_out == model.roi_heads.res5[-1].conv3.out_channels  # reads res5's output
    assert head.predictor.out_channels == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    sd = model.state_dict()
    for name in ("deconv.weight", "deconv.bias", "predictor.weight", "predictor.bias"):
        assert f"roi_heads.mask_head.{name}" in sd
    assert [k for k in sd if "mask_head" in k] == [
        "roi_heads.mask_head.deconv.weight",
        "roi_heads.mask_head.deconv.bias",
        "roi_heads.mask_head.predictor.weight",
        "roi_heads.mask_head.predictor.bias",
    ]
    assert sd["roi_heads.mask_head.deconv.weight"].shape == (res5_out, 256, 2, 2)
    assert float(head.predictor.weight.detach().std()) < 0.002 and not head.predictor.bias.any()
    assert not head.deconv.bias.any() and float(head.deconv.weight.detach().std()) > 0.01
    # options: convs before the deconv (with a norm), class-agnostic masks
    cfg = tiny_cfg(
        MODEL__MASK_ON=True,
        MODEL__ROI_MASK_HEAD__NUM_CONV=2,
        MODEL__ROI_MASK_HEAD__NORM="GN",
        MODEL__ROI_MASK_HEAD__CONV_DIM=64,
        MODEL__ROI_MASK_HEAD__CLS_AGNOSTIC_MASK=True,
    )
    head = build_model(cfg).roi_heads.mask_head
    assert [n for n, _ in head.named_children()] == [
        "mask_fcn1",
        "mask_fcn2",
        "deconv",
        "deconv_relu",
        "predictor",
    ]
    assert head.mask_fcn1.norm is not None and head.predictor.out_channels == 1
    assert "roi_heads.mask_head" not in str(list(build_model(tiny_cfg()).state_dict()))


def test_mask_loss_selects_the_gt_class_channel_and_is_zero_without_foreground():
    inst = Instances((40, 40))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 20, 20]]))
    inst.gt_classes = torch.tensor([1])
    inst.gt_masks = PolygonMasks([[np.array([0.0, 0, 20, 0, 20, 20, 0, 20])]])  # all foreground
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1] = 10.0  # confident and right in the gt class's channel only
    assert float(mask_rcnn_loss(logits, [inst])) < 1e-4
    logits[0, 1] = -10.0
    assert float(mask_rcnn_loss(logits, [inst])) > 9
    empty = torch.zeros(0, 3, 4, 4, requires_grad=True)
    loss = mask_rcnn_loss(empty, [inst[:0]])
    assert float(loss) == 0 and loss.requires_grad


def test_paste_masks_in_image():
    masks = torch.zeros(2, 4, 4)
    masks[0] = 1.0  # a full mask fills its box
    masks[1, :2] = 1.0  # the upper half of the box
    boxes = torch.tensor([[2.0, 3.0, 10.0, 9.0], [0.0, 0.0, 20.0, 20.0]])
    out = paste_masks_in_image(masks, boxes, (24, 30))
    assert out.shape == (2, 24, 30) and out.dtype == torch.bool
    expected = torch.zeros(24, 30, dtype=torch.bool)
    expected[3:9, 2:10] = True
    assert torch.equal(out[0], expected)
    # bilinear with zeros outside the mask: the corners are rounded off
    assert out[1, 2:8, :20].all() and out[1, :10, 2:18].all()
    assert not out[1, 0, 0] and not out[1, 9, 19]
    assert not out[1, 10:].any() and not out[1, :, 20:].any()
    soft = paste_masks_in_image(masks, boxes, (24, 30), threshold=-1)  # uint8 0..255
    assert soft.dtype == torch.uint8 and int(soft[0, 5, 5]) == 255 and int(soft[0, 20, 20]) == 0
    assert paste_masks_in_image(masks[:0], boxes[:0], (5, 6)).shape == (0, 5, 6)


def test_training_returns_a_finite_mask_loss_that_decreases():
    cfg = tiny_cfg(SMALL, MODEL__MASK_ON=True)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = with_masks(scene_inputs((1, 160, 192), with_gt=True))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    with EventStorage():
        for _ in range(10):
            out = model(batch)
            assert set(out) >= {"loss_cls", "loss_box_reg", "loss_mask"}
            assert torch.isfinite(out["loss_mask"])
            losses.append(float(out["loss_mask"]))
            opt.zero_grad()
            sum(out.values()).backward()
            opt.step()
    assert losses[0] == pytest.approx(np.log(2), abs=0.05)  # predictor starts near 0
    assert max(losses[-3:]) < 0.9 * losses[0]


def _calibrated(extra=()):
    batch = scene_inputs((3, 160, 200))
    torch.manual_seed(0)
    cfg = narrow_c4_cfg(["MODEL.MASK_ON", True, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *extra])
    model = calibrate_random_detector_(build_model(cfg), batch, seed=0)
    with torch.no_grad():  # a mask head whose outputs are not all ~0.5
        torch.manual_seed(1)
        model.roi_heads.mask_head.predictor.weight.normal_(std=0.05)
    return cfg, model.eval(), batch


def test_inference_returns_bool_masks_of_the_original_image_size():
    cfg, model, batch = _calibrated()
    inputs = [{**batch[0], "height": 240, "width": 300}]  # the original image was larger
    with torch.no_grad():
        inst = model(inputs)[0]["instances"]
        raw = model.inference(inputs, do_postprocess=False)[0]
    assert len(inst) > 0
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (len(inst), 240, 300)
    assert raw.pred_masks.shape == (len(raw), 1, 14, 14)
    assert 0 <= float(raw.pred_masks.min()) and float(raw.pred_masks.max()) <= 1
    assert inst.pred_masks.any()
    # masks lie inside their (1-pixel padded) boxes
    for m, b in zip(inst.pred_masks, inst.pred_boxes.tensor):
        ys, xs = torch.where(m)
        if len(xs):
            assert xs.min() >= b[0] - 1 and xs.max() <= b[2] + 1
            assert ys.min() >= b[1] - 1 and ys.max() <= b[3] + 1


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_fast_path_gives_the_same_detections_and_masks(mode):
    cfg, plain, batch = _calibrated()
    fast = prepare_model(copy.deepcopy(plain), cfg, mode).eval()
    # res5 pools and chunks where only the mean is read, and gives the mask head its 7x7 output
    res5 = fast.roi_heads.res5
    assert type(res5) is PooledRes5 and res5.chunk_size == RES5_CHUNK_SIZE
    assert isinstance(fast.roi_heads.pooler, SubsampledROIPooler)
    res5.chunk_size = 5  # several chunks for the few detections of the tiny model too
    with torch.no_grad():
        a = plain.inference(batch, do_postprocess=False)[0]
        b = fast.inference(batch, do_postprocess=False)[0]
        pa, pb = plain(batch)[0]["instances"], fast(batch)[0]["instances"]
    assert len(a) == len(b) > 0
    # float rounding only (measured: scores 4e-5, mask probabilities 1e-4, boxes 2e-3 pixels; the
    # random detector's box regression amplifies the ~1e-6 relative feature differences)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-2)
    assert torch.allclose(a.scores, b.scores, atol=1e-4)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.allclose(a.pred_masks, b.pred_masks, atol=5e-4)
    agree = (pa.pred_masks == pb.pred_masks).float().mean()
    assert float(agree) > 0.999
    assert len(pa) > res5.chunk_size
    inter = (pa.pred_masks & pb.pred_masks).flatten(1).sum(1).float()
    union = (pa.pred_masks | pb.pred_masks).flatten(1).sum(1).float()
    iou = inter[union > 0] / union[union > 0]
    # mean IoU 0.99+; the random head's probabilities sit near the 0.5 threshold, so a boundary
    # pixel can flip under float rounding (measured: 1 of a 96-pixel mask, IoU 0.9896)
    assert len(iou) > 0 and float(iou.mean()) >= 0.99 and float(iou.min()) >= 0.95


def test_pooled_res5_unpooled_output_is_chunked_and_equals_the_plain_res5():
    _, plain, _ = _calibrated()
    fast = prepare_model(copy.deepcopy(plain), tiny_cfg(), "train").eval()
    res5 = fast.roi_heads.res5
    res5.chunk_size = 4
    x = torch.randn(11, *_res5_input_shape(fast.roi_heads))
    x = x.contiguous(memory_format=torch.channels_last)
    calls = []
    hook = res5[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        full, pooled = res5(x, pool=False), res5(x)
    hook.remove()
    assert calls == [4, 4, 3, 4, 4, 3]
    assert full.shape[-2:] != (1, 1) and pooled.shape[-2:] == (1, 1)
    torch.testing.assert_close(pooled, full.mean(dim=(2, 3), keepdim=True), rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.roi_heads._res5_mean(full), full.mean(dim=(2, 3)))


def _res5_input_shape(heads):
    c = heads.res5[0].conv1.in_channels
    # the subsampled pooler: conv1 has stride 1 and reads the 7x7 bins directly
    size = heads.pooler.output_size[0] // heads.pooler.stride
    return c, size, size


def test_training_fast_path_gives_the_same_losses_and_gradients_with_masks():
    cfg = tiny_cfg(SMALL, MODEL__MASK_ON=True)
    torch.manual_seed(0)
    plain = build_model(cfg).train()
    with torch.no_grad():
        torch.manual_seed(1)
        plain.roi_heads.mask_head.predictor.weight.normal_(std=0.05)
    fast = optimize_keeping_state_dict(copy.deepcopy(plain))
    assert type(fast.roi_heads.res5) is PooledRes5
    assert isinstance(fast.roi_heads.pooler, SubsampledROIPooler)
    batch = with_masks(scene_inputs((2, 160, 192), with_gt=True))
    out, grads = {}, {}
    for name, m in (("plain", plain), ("fast", fast)):
        torch.manual_seed(3)  # the same proposal sampling
        with EventStorage():
            losses = m(batch)
        assert torch.isfinite(losses["loss_mask"])
        m.zero_grad()
        sum(losses.values()).backward()
        out[name] = {k: float(v) for k, v in losses.items()}
        grads[name] = m.roi_heads.mask_head.deconv.weight.grad.clone()
    assert out["plain"].keys() == out["fast"].keys() >= {"loss_mask", "loss_cls"}
    for k in out["plain"]:
        assert out["fast"][k] == pytest.approx(out["plain"][k], abs=1e-4), k
    assert grads["plain"].abs().sum() > 0
    # relative to the gradient's norm: ReLU inputs near 0 flip under ~1e-6 forward differences
    err = (grads["fast"] - grads["plain"]).norm() / grads["plain"].norm()
    assert float(err) < 1e-2


def test_basic_block_res5_head_has_a_mask_head():
    cfg = tiny_cfg(
        SMALL,
        MODEL__MASK_ON=True,
        MODEL__RESNETS__DEPTH=18,
        MODEL__RESNETS__RES2_OUT_CHANNELS=16,
        MODEL__RESNETS__RES5_HEAD_BLOCK="basic",
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.roi_heads.mask_head.deconv.in_channels == 8 * 16
    batch = with_masks(scene_inputs((2, 160, 160), with_gt=True))
    with EventStorage():
        loss = model.train()(batch)["loss_mask"]
    assert torch.isfinite(loss)
    loss.backward()
    assert model.roi_heads.mask_head.deconv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        inst = model.eval()(scene_inputs((2, 160, 160)))[0]["instances"]
    assert inst.pred_masks.shape[1:] == (160, 160)


def test_bfloat16_autocast_gives_float32_mask_probabilities():
    _, model, batch = _calibrated()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.inference(batch, do_postprocess=False)[0]
        inst = model(batch)[0]["instances"]
    assert len(raw) > 0 and raw.pred_masks.dtype == torch.float32
    assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape[1:] == (160, 200)

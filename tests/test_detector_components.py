"""Building blocks of the Faster R-CNN C4 detector, checked against hand-computed values.

Anchors, the box transform, the matcher, the sampler, RoIAlignV2, proposal selection, Fast R-CNN
inference and the rescaling of detections; each with detectron2's semantics.
"""

import math

import pytest
import torch

from resnet_backbones import get_cfg
from resnet_backbones.layers import ShapeSpec
from resnet_backbones.modeling.anchor_generator import (
    DefaultAnchorGenerator,
    build_anchor_generator,
)
from resnet_backbones.modeling.box_regression import Box2BoxTransform, smooth_l1_loss
from resnet_backbones.modeling.matcher import Matcher
from resnet_backbones.modeling.poolers import ROIPooler
from resnet_backbones.modeling.postprocessing import detector_postprocess
from resnet_backbones.modeling.proposal_generator import find_top_rpn_proposals
from resnet_backbones.modeling.roi_heads import fast_rcnn_inference_single_image
from resnet_backbones.modeling.sampling import subsample_labels
from resnet_backbones.structures import Boxes, Instances

S2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------ anchors
def test_default_config_anchors_by_hand():
    """SIZES [[32..512]], ratios 0.5/1/2, offset 0: 15 anchors per cell, sizes vary slowest."""
    gen = build_anchor_generator(get_cfg(), [ShapeSpec(channels=8, stride=16)])
    assert gen.num_anchors == [15]
    cell = gen.cell_anchors[0]
    # size 32, ratio 0.5 (h/w): w = 32*sqrt(2), h = 32/sqrt(2)
    torch.testing.assert_close(cell[0], torch.tensor([-16 * S2, -8 * S2, 16 * S2, 8 * S2]))
    torch.testing.assert_close(cell[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    torch.testing.assert_close(cell[2], torch.tensor([-8 * S2, -16 * S2, 8 * S2, 16 * S2]))
    torch.testing.assert_close(
        cell[4], torch.tensor([-32.0, -32.0, 32.0, 32.0])
    )  # size 64, ratio 1
    torch.testing.assert_close(
        cell[13], torch.tensor([-256.0, -256.0, 256.0, 256.0])
    )  # 512, ratio 1
    areas = (cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1])
    expected_areas = [float(s * s) for s in (32, 64, 128, 256, 512) for _ in range(3)]
    torch.testing.assert_close(areas, torch.tensor(expected_areas))
    # anchors are not saved in checkpoints (detectron2's non-persistent buffers)
    assert gen.state_dict() == {}


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_anchor_order_and_shifts(offset):
    gen = DefaultAnchorGenerator(
        sizes=[[32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[16], offset=offset
    )
    (anchors,) = gen([torch.zeros(1, 8, 2, 3)])  # 2 rows, 3 columns
    assert isinstance(anchors, Boxes) and anchors.tensor.shape == (2 * 3 * 3, 4)
    # (row, column, anchor) order: row 1, column 2, anchor 1 (ratio 1) -> index (1*3 + 2)*3 + 1
    c = offset * 16
    torch.testing.assert_close(
        anchors.tensor[(1 * 3 + 2) * 3 + 1],
        torch.tensor([c + 32 - 16, c + 16 - 16, c + 32 + 16, c + 16 + 16]),
    )
    torch.testing.assert_close(
        anchors.tensor[0], torch.tensor([c - 16 * S2, c - 8 * S2, c + 16 * S2, c + 8 * S2])
    )
    centers = anchors.get_centers()[1::3]
    expected = torch.tensor([[c + 16 * x, c + 16 * y] for y in range(2) for x in range(3)])
    torch.testing.assert_close(centers, expected)


def test_anchor_generator_rejects_bad_offset():
    with pytest.raises(ValueError, match="OFFSET"):
        DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[16], offset=1.0)


# ------------------------------------------------------------------------------ box transform
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_transform_round_trip(weights):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    src = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 80], dim=1)
    xy = torch.rand(50, 2, generator=g) * 100
    dst = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 80], dim=1)
    t = Box2BoxTransform(weights)
    deltas = t.get_deltas(src, dst)
    torch.testing.assert_close(t.apply_deltas(deltas, src), dst, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(t.get_deltas(src, src), torch.zeros(50, 4), atol=1e-6, rtol=0)


def test_box_transform_by_hand_and_clamp():
    t = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    src = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    dst = torch.tensor([[2.0, 0.0, 22.0, 20.0]])  # centre (12, 10), size 20 x 20
    torch.testing.assert_close(
        t.get_deltas(src, dst), torch.tensor([[10 * 7 / 10, 0.0, 5 * math.log(2.0), 0.0]])
    )
    assert t.scale_clamp == pytest.approx(math.log(1000.0 / 16))
    # a huge dw is clamped at log(1000/16): width grows at most 62.5 times
    out = t.apply_deltas(torch.tensor([[0.0, 0.0, 1000.0, 0.0]]), src)
    torch.testing.assert_close(out, torch.tensor([[5 - 312.5, 0.0, 5 + 312.5, 20.0]]))
    # class-specific deltas: (N, 4K) in, (N, 4K) out
    assert t.apply_deltas(torch.zeros(1, 12), src).shape == (1, 12)
    torch.testing.assert_close(t.apply_deltas(torch.zeros(1, 12), src), src.repeat(1, 3))


def test_smooth_l1_beta_zero_is_l1():
    a, b = torch.tensor([0.0, 1.0, -3.0]), torch.tensor([0.5, 1.0, 0.0])
    assert smooth_l1_loss(a, b, beta=0.0, reduction="sum").item() == pytest.approx(3.5)
    assert smooth_l1_loss(a, b, beta=1.0, reduction="sum").item() == pytest.approx(0.125 + 0 + 2.5)


# ------------------------------------------------------------------------------------ matcher
IOU = torch.tensor([[0.80, 0.50, 0.20, 0.00, 0.69], [0.10, 0.65, 0.25, 0.00, 0.30]])


def test_rpn_matcher_with_low_quality_matches():
    m = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = m(IOU)
    assert matches.tolist() == [0, 1, 1, 0, 0]
    # pred 1: 0.65 is ignored (-1) by the thresholds, but it is gt 1's best -> positive
    assert labels.tolist() == [1, 1, 0, 0, -1]
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8


def test_roi_matcher_and_edges():
    m = Matcher([0.5], [0, 1], allow_low_quality_matches=False)
    _, labels = m(IOU)
    assert labels.tolist() == [1, 1, 0, 0, 1]  # 0.5 is positive (>= threshold)
    matches, labels = m(torch.zeros(0, 4))  # no ground truth: everything background
    assert matches.tolist() == [0, 0, 0, 0] and labels.tolist() == [0, 0, 0, 0]
    # detectron2's rule: ties at a gt's best IoU are all positive, even at IoU 0
    _, labels = Matcher([0.3, 0.7], [0, -1, 1], True)(torch.tensor([[0.0, 0.0]]))
    assert labels.tolist() == [1, 1]
    with pytest.raises(ValueError):
        Matcher([0.7, 0.3], [0, -1, 1])
    with pytest.raises(ValueError):
        Matcher([0.3, 0.7], [0, 1])


# ------------------------------------------------------------------------------------ sampler
def test_subsample_labels_counts_and_fraction():
    labels = torch.full((400,), 0)
    labels[:10] = 1
    labels[10:15] = -1
    torch.manual_seed(0)
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert len(pos) == 10 and len(neg) == 246  # few positives: negatives fill the batch
    assert set(pos.tolist()) == set(range(10))
    assert (labels[neg] == 0).all() and len(set(neg.tolist())) == 246

    labels[:200] = 1
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert len(pos) == 128 and len(neg) == 128
    assert (labels[pos] == 1).all()


def test_subsample_labels_with_class_labels():
    """RoI sampling: classes 0..K-1 foreground, K (=3) background, -1 ignored."""
    classes = torch.tensor([0, 2, 3, 3, 3, -1, 1, 3])
    pos, neg = subsample_labels(classes, 4, 0.25, 3)
    assert len(pos) == 1 and classes[pos].item() in (0, 1, 2)
    assert len(neg) == 3 and (classes[neg] == 3).all()


def test_subsample_labels_same_draws_for_same_seed():
    labels = torch.randint(-1, 2, (1000,))
    torch.manual_seed(7)
    a = subsample_labels(labels, 64, 0.5, 0)
    torch.manual_seed(7)
    b = subsample_labels(labels, 64, 0.5, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------- pooler
def test_roialignv2_is_half_pixel_aligned():
    """On a ramp f(y, x) = x bilinear sampling is exact: bin centres read off directly."""
    feat = torch.arange(8, dtype=torch.float32).repeat(8, 1)[None, None]  # (1, 1, 8, 8), value = x
    box = [Boxes(torch.tensor([[0.0, 0.0, 64.0, 64.0]]))]  # 4x4 feature cells at stride 16
    v2 = ROIPooler(2, scales=(1 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2")(([feat]), box)
    # aligned: the box starts at -0.5 in sample coordinates -> bin centres at x = 0.5 and 2.5
    torch.testing.assert_close(v2[0, 0], torch.tensor([[0.5, 2.5], [0.5, 2.5]]))
    v1 = ROIPooler(2, scales=(1 / 16,), sampling_ratio=0, pooler_type="ROIAlign")([feat], box)
    torch.testing.assert_close(v1[0, 0], torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    empty = ROIPooler(14, scales=(1 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2")(
        [feat], [Boxes(torch.zeros(0, 4))]
    )
    assert empty.shape == (0, 1, 14, 14)


def test_pooler_batches_boxes_in_image_order():
    feats = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 2.0)])
    boxes = [
        Boxes(torch.tensor([[0.0, 0.0, 32.0, 32.0]])),
        Boxes(torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 2)),
    ]
    out = ROIPooler(3, scales=(1 / 16,), sampling_ratio=2, pooler_type="ROIAlignV2")([feats], boxes)
    assert out.shape == (3, 1, 3, 3)
    assert out[:, 0, 1, 1].tolist() == [1.0, 2.0, 2.0]


# ---------------------------------------------------------------------------------- proposals
def test_find_top_rpn_proposals_by_hand():
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 10.0, 10.0],  # best
                [0.0, 0.0, 10.0, 10.5],  # IoU 0.95 with the best: suppressed
                [20.0, 20.0, 30.0, 30.0],
                [-5.0, -5.0, 40.0, 12.0],  # clipped to the 32x32 image
                [5.0, 5.0, 5.0, 9.0],
            ]
        ]
    )  # empty after clipping: removed
    logits = torch.tensor([[5.0, 4.0, 1.0, 3.0, 10.0]])
    (res,) = find_top_rpn_proposals(
        [boxes],
        [logits],
        [(32, 32)],
        nms_thresh=0.7,
        pre_nms_topk=5,
        post_nms_topk=2,
        min_box_size=0.0,
        training=False,
    )
    assert res.image_size == (32, 32)
    expected = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 32.0, 12.0]])
    torch.testing.assert_close(res.proposal_boxes.tensor, expected)
    torch.testing.assert_close(res.objectness_logits, torch.tensor([5.0, 3.0]))
    # pre-NMS top-k drops the low-scoring box first
    (res,) = find_top_rpn_proposals([boxes], [logits], [(32, 32)], 0.7, 3, 10, 0.0, False)
    assert res.objectness_logits.tolist() == [5.0]
    with pytest.raises(FloatingPointError):
        find_top_rpn_proposals([boxes * float("nan")], [logits], [(32, 32)], 0.7, 5, 5, 0.0, True)


def test_fast_rcnn_inference_by_hand():
    # two RoIs, two classes (+ background); class-specific boxes (R, 8)
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 10.0, 10.0, 50.0, 50.0, 90.0, 90.0],
        ]
    )
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.04, 0.36]])
    res, idx = fast_rcnn_inference_single_image(
        boxes, scores, (60, 80), score_thresh=0.05, nms_thresh=0.5, topk_per_image=100
    )
    # class 0: RoI 1's box overlaps RoI 0's (IoU 0.81) -> suppressed; class 1: RoI 1's 0.04 < 0.05
    assert res.pred_classes.tolist() == [0, 1]
    torch.testing.assert_close(res.scores, torch.tensor([0.7, 0.2]))
    torch.testing.assert_close(
        res.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    )
    assert idx.tolist() == [0, 0]
    res, _ = fast_rcnn_inference_single_image(boxes, scores, (60, 80), 0.05, 0.5, topk_per_image=1)
    assert len(res) == 1
    # boxes are clipped to the image: RoI 1 class 1 box (50..90) in a 60x80 image
    scores2 = torch.tensor([[0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    res, _ = fast_rcnn_inference_single_image(boxes, scores2, (60, 80), 0.5, 0.5, 100)
    torch.testing.assert_close(res.pred_boxes.tensor, torch.tensor([[50.0, 50.0, 80.0, 60.0]]))


def test_detector_postprocess_rescales_and_clips():
    r = Instances((100, 200))
    r.pred_boxes = Boxes(
        torch.tensor([[10.0, 20.0, 50.0, 60.0], [190.0, 90.0, 210.0, 110.0], [5.0, 5.0, 5.0, 9.0]])
    )
    r.scores = torch.tensor([0.9, 0.8, 0.7])
    r.pred_classes = torch.tensor([0, 1, 2])
    out = detector_postprocess(r, 200, 400)
    assert out.image_size == (200, 400)
    # scaled x2, clipped to 400x200, the empty box removed
    expected = torch.tensor([[20.0, 40.0, 100.0, 120.0], [380.0, 180.0, 400.0, 200.0]])
    torch.testing.assert_close(out.pred_boxes.tensor, expected)
    assert out.pred_classes.tolist() == [0, 1]

"""PolygonMasks / BitMasks (resnet_backbones.structures.masks) on hand-made shapes."""

import numpy as np
import pytest
import torch

from resnet_backbones.structures import BitMasks, Boxes, Instances, PolygonMasks


def square(x0, y0, x1, y1):
    return [np.array([x0, y0, x1, y0, x1, y1, x0, y1], dtype=np.float64)]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_square_polygon_fills_its_own_box():
    masks = PolygonMasks([square(10, 20, 30, 40)])
    out = masks.crop_and_resize(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), 8)
    assert out.shape == (1, 8, 8) and out.dtype == torch.bool
    assert out.all()


def test_square_polygon_in_a_larger_box_fills_the_expected_quarter():
    # the square covers the left-top quarter of the box [0, 0, 40, 40]
    masks = PolygonMasks([square(0, 0, 20, 20)])
    out = masks.crop_and_resize(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), 8)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(out, expected)
    # a box beside the square sees nothing
    empty = masks.crop_and_resize(torch.tensor([[25.0, 25.0, 40.0, 40.0]]), 8)
    assert not empty.any()


def test_bitmask_and_polygon_of_the_same_shape_agree():
    h, w = 64, 80
    poly = [np.array([10, 12, 50, 8, 60, 40, 30, 55, 12, 35], dtype=np.float64)]
    pm = PolygonMasks([poly])
    bm = BitMasks.from_polygon_masks(pm, h, w)
    assert bm.tensor.shape == (1, h, w)
    boxes = torch.tensor([[8.0, 5.0, 62.0, 58.0]])
    a = pm.crop_and_resize(boxes, 28)[0]
    b = bm.crop_and_resize(boxes, 28)[0]
    assert b.dtype == torch.bool
    assert iou(a, b) > 0.95
    # area and boxes agree as well
    assert abs(float(pm.area()[0]) - float(bm.area()[0])) / float(pm.area()[0]) < 0.05
    pb, bb = pm.get_bounding_boxes().tensor[0], bm.get_bounding_boxes().tensor[0]
    assert torch.allclose(pb, torch.tensor([10.0, 8.0, 60.0, 55.0]))
    assert (pb - bb).abs().max() <= 1.0


def test_polygon_area_shoelace_and_bounding_boxes():
    pm = PolygonMasks([square(0, 0, 4, 3), square(1, 1, 2, 2) + square(5, 5, 7, 7)])
    assert torch.allclose(pm.area(), torch.tensor([12.0, 5.0]))
    assert torch.allclose(
        pm.get_bounding_boxes().tensor, torch.tensor([[0.0, 0, 4, 3], [1, 1, 7, 7]])
    )


def test_indexing_cat_and_to():
    pm = PolygonMasks([square(0, 0, 1, 1), square(0, 0, 2, 2), square(0, 0, 3, 3)])
    assert len(pm) == 3
    assert len(pm[1]) == 1 and pm[1].polygons[0][0][2] == 2
    assert [p[0][2] for p in pm[torch.tensor([2, 0])].polygons] == [3, 1]
    assert [p[0][2] for p in pm[torch.tensor([False, True, True])].polygons] == [2, 3]
    assert [p[0][2] for p in pm[1:].polygons] == [2, 3]
    assert len(PolygonMasks.cat([pm, pm[0]])) == 4
    assert pm.to("cpu") is pm

    bm = BitMasks(torch.rand(3, 5, 6) > 0.5)
    assert torch.equal(bm[torch.tensor([True, False, True])].tensor, bm.tensor[[0, 2]])
    assert bm[1].tensor.shape == (1, 5, 6)
    assert torch.equal(BitMasks.cat([bm, bm[0]]).tensor[3], bm.tensor[0])
    assert bm.to("cpu").tensor.shape == (3, 5, 6)


def test_instances_carry_gt_masks_through_indexing_and_cat():
    inst = Instances((50, 50))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]))
    inst.gt_masks = PolygonMasks([square(0, 0, 10, 10), square(5, 5, 20, 20)])
    sub = inst[torch.tensor([1])]
    assert isinstance(sub.gt_masks, PolygonMasks) and sub.gt_masks.polygons[0][0][0] == 5
    assert len(inst[0].gt_masks) == 1
    both = Instances.cat([inst, sub])
    assert isinstance(both.gt_masks, PolygonMasks) and len(both.gt_masks) == 3
    inst.gt_masks = BitMasks(torch.zeros(2, 50, 50, dtype=torch.bool))
    assert len(Instances.cat([inst, inst[1:]]).gt_masks) == 3


def test_bad_input_raises():
    with pytest.raises(ValueError):
        PolygonMasks([[np.array([0.0, 0.0, 1.0, 1.0])]])  # two points
    with pytest.raises(ValueError):
        BitMasks(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        PolygonMasks([square(0, 0, 1, 1)]).crop_and_resize(torch.zeros(2, 4), 4)
    empty = PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 6)
    assert empty.shape == (0, 6, 6)

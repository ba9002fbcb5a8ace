"""Boxes, BoxMode, Instances and ImageList behave like detectron2's."""

import pickle

import numpy as np
import pytest
import torch

from resnet_backbones.structures import Boxes, BoxMode, ImageList, Instances, pairwise_iou


def test_box_mode_round_trip_for_lists_arrays_and_tensors():
    assert BoxMode.convert([1, 2, 3, 4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [1, 2, 4, 6]
    arr = np.array([[1.0, 2, 4, 6]])
    back = BoxMode.convert(
        BoxMode.convert(arr, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    )
    np.testing.assert_array_equal(back, arr)
    t = torch.tensor([[0.0, 0, 10, 5]])
    assert BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist() == [[0, 0, 10, 5]]
    with pytest.raises(ValueError, match="4 numbers"):
        BoxMode.convert([1, 2, 3], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)


def test_boxes_area_clip_nonempty_and_iou():
    b = Boxes(torch.tensor([[-5.0, 0, 10, 10], [5, 5, 5, 20]]))
    assert b.area().tolist() == [150, 0]
    assert b.nonempty().tolist() == [True, False]
    b.clip((8, 6))
    assert b.tensor.tolist() == [[0, 0, 6, 8], [5, 5, 5, 8]]
    iou = pairwise_iou(Boxes([[0, 0, 2, 2]]), Boxes([[1, 0, 3, 2], [0, 0, 2, 2]]))
    assert iou[0].tolist() == pytest.approx([1 / 3, 1.0])
    with pytest.raises(ValueError, match="Nx4"):
        Boxes(torch.zeros(3, 5))


def test_instances_fields_indexing_cat_and_length_checks():
    inst = Instances((10, 20), scores=torch.tensor([0.9, 0.1, 0.5]))
    inst.pred_classes = torch.tensor([0, 1, 2])
    kept = inst[inst.scores > 0.3]
    assert len(kept) == 2 and kept.pred_classes.tolist() == [0, 2]
    assert len(Instances.cat([kept, inst])) == 5
    with pytest.raises(ValueError, match="length 2 to Instances of length 3"):
        inst.pred_boxes = Boxes(torch.zeros(2, 4))
    with pytest.raises(AttributeError, match="Cannot find field 'gt_boxes'"):
        _ = inst.gt_boxes


def test_instances_pickle_round_trip():
    # DataLoader workers send Instances through pickle.
    inst = Instances((3, 4), gt_boxes=Boxes(torch.rand(2, 4)), gt_classes=torch.tensor([1, 2]))
    again = pickle.loads(pickle.dumps(inst))
    assert again.image_size == (3, 4)
    assert torch.equal(again.gt_boxes.tensor, inst.gt_boxes.tensor)
    assert again.gt_classes.tolist() == [1, 2]


def test_image_list_pads_to_the_size_divisibility():
    images = ImageList.from_tensors(
        [torch.ones(3, 5, 7), torch.ones(3, 9, 4)], size_divisibility=4, pad_value=-1
    )
    assert images.tensor.shape == (2, 3, 12, 8)
    assert images.image_sizes == [(5, 7), (9, 4)]
    assert images[1].shape == (3, 9, 4) and bool((images[1] == 1).all())
    assert images.tensor[0, 0, 5:, :].eq(-1).all() and images.tensor[0, 0, :, 7:].eq(-1).all()

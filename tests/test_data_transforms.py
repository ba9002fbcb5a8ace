"""Resize and flip move images and boxes together; DatasetMapper applies them to a dataset dict."""

import numpy as np
import pytest
import torch
from helpers import tiny_cfg

from resnet_backbones.data import DatasetMapper
from resnet_backbones.data.detection_utils import (
    annotations_to_instances,
    build_augmentation,
    filter_empty_instances,
    read_image,
    transform_instance_annotations,
    transformed_instances,
)
from resnet_backbones.data.transforms import (
    HFlipTransform,
    NoOpTransform,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    VFlipTransform,
    apply_augmentations,
)
from resnet_backbones.structures import BoxMode


def box_image(h, w, box):
    """A black image with a white filled XYXY box (integer pixel edges)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return img


def white_box(img):
    ys, xs = np.nonzero(img[:, :, 0] > 127)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_hflip_mirrors_boxes_and_pixels():
    img = box_image(20, 30, (2, 3, 10, 15))
    t = HFlipTransform(30)
    assert np.allclose(t.apply_box(np.array([[2, 3, 10, 15]])), [[30 - 10, 3, 30 - 2, 15]])
    assert white_box(t.apply_image(img)) == [20, 3, 28, 15]
    v = VFlipTransform(20)
    assert np.allclose(v.apply_box(np.array([[2, 3, 10, 15]])), [[2, 20 - 15, 10, 20 - 3]])
    assert white_box(v.apply_image(img)) == [2, 5, 10, 17]


def test_resize_scales_boxes_exactly():
    t = ResizeTransform(20, 30, 50, 60)
    box = np.array([[1.5, 2.0, 10.0, 19.0]])
    assert np.allclose(t.apply_box(box), [[1.5 * 2, 2.0 * 2.5, 10.0 * 2, 19.0 * 2.5]])
    out = t.apply_image(box_image(20, 30, (2, 4, 10, 12)))
    assert out.shape == (50, 60, 3)
    assert white_box(out) == pytest.approx([4, 10, 20, 30], abs=1)


@pytest.mark.parametrize(
    "h,w,short,max_size,expected",
    [
        (480, 640, 800, 1333, (800, 1067)),  # 640 * 800 / 480 = 1066.67
        (640, 480, 800, 1333, (1067, 800)),
        (100, 400, 800, 1333, (333, 1333)),  # long side capped
        (50, 50, 20, 1000, (20, 20)),
    ],
)
def test_resize_shortest_edge_output_shape(h, w, short, max_size, expected):
    t = ResizeShortestEdge(short, max_size, "choice").get_transform(np.zeros((h, w, 3), np.uint8))
    assert (t.new_h, t.new_w) == expected


def test_resize_shortest_edge_choice_and_range():
    img = np.zeros((10, 20, 3), np.uint8)
    np.random.seed(0)
    choice = {
        ResizeShortestEdge((4, 6, 8), 1000, "choice").get_transform(img).new_h for _ in range(60)
    }
    assert choice == {4, 6, 8}
    ranged = {
        ResizeShortestEdge((4, 8), 1000, "range").get_transform(img).new_h for _ in range(200)
    }
    assert ranged == {4, 5, 6, 7, 8}
    assert isinstance(ResizeShortestEdge(0, 1000, "choice").get_transform(img), NoOpTransform)
    with pytest.raises(ValueError, match="range"):
        ResizeShortestEdge((4, 6, 8), 1000, "range")


def test_random_flip_probability_and_direction():
    img = np.zeros((10, 20, 3), np.uint8)
    np.random.seed(1)
    kinds = [type(RandomFlip(0.5).get_transform(img)) for _ in range(200)]
    assert 60 < kinds.count(HFlipTransform) < 140 and kinds.count(
        NoOpTransform
    ) == 200 - kinds.count(HFlipTransform)
    assert isinstance(
        RandomFlip(1.0, horizontal=False, vertical=True).get_transform(img), VFlipTransform
    )
    with pytest.raises(ValueError):
        RandomFlip(0.5, horizontal=True, vertical=True)


def test_augmented_box_follows_the_pixels():
    """Resize then flip: the transformed annotation box is where the white pixels went."""
    img = box_image(40, 60, (6, 8, 30, 28))
    augs = [ResizeShortestEdge(80, 1000, "choice"), RandomFlip(1.0)]
    out, transforms = apply_augmentations(augs, img)
    ann = {"bbox": [6, 8, 24, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    ann = transform_instance_annotations(ann, transforms, out.shape[:2])
    assert ann["bbox_mode"] == BoxMode.XYXY_ABS
    assert np.allclose(ann["bbox"], [120 - 60, 16, 120 - 12, 56])
    assert np.allclose(white_box(out), ann["bbox"], atol=1)


def test_annotations_to_instances_clips_and_filter_drops_empty():
    annos = [
        {"bbox": [-5, 2, 10, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3},
        {
            "bbox": [50, 2, 70, 8],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": 1,
        },  # outside: empty after clip
    ]
    inst = annotations_to_instances(annos, (20, 40))
    assert inst.gt_boxes.tensor.tolist() == [[0, 2, 10, 8], [40, 2, 40, 8]]
    assert inst.gt_classes.dtype == torch.int64
    kept = filter_empty_instances(inst)
    assert len(kept) == 1 and kept.gt_classes.tolist() == [3]


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_transformed_instances_equals_the_per_annotation_path(flip):
    """The mapper's vectorized box path gives exactly detectron2's per-annotation numbers (mixed box
    modes, boxes leaving the image, no annotation at all)."""
    rng = np.random.default_rng(0)
    img = np.zeros((37, 53, 3), dtype=np.uint8)
    out, transforms = apply_augmentations(
        [ResizeShortestEdge(90, 1000, "choice"), RandomFlip(flip)], img
    )
    annos = [
        {
            "bbox": list(rng.uniform(-10, 60, 2)) + list(rng.uniform(1, 30, 2)),
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": int(i % 3),
        }
        for i in range(6)
    ] + [{"bbox": [40.5, 30.25, 70.0, 45.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2}]
    expected = annotations_to_instances(
        [transform_instance_annotations(dict(a), transforms, out.shape[:2]) for a in annos],
        out.shape[:2],
    )
    got = transformed_instances(annos, transforms, out.shape[:2])
    assert (
        torch.equal(got.gt_boxes.tensor, expected.gt_boxes.tensor)
        and got.gt_boxes.tensor.dtype == torch.float32
    )
    assert torch.equal(got.gt_classes, expected.gt_classes)
    assert annos[-1]["bbox"] == [40.5, 30.25, 70.0, 45.0]  # the dataset's dicts are left alone
    empty = transformed_instances([], transforms, out.shape[:2])
    assert empty.gt_boxes.tensor.shape == (0, 4) and empty.gt_classes.dtype == torch.int64


def test_read_image_formats(tmp_path):
    import cv2

    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    cv2.imwrite(str(tmp_path / "a.png"), bgr)
    assert read_image(str(tmp_path / "a.png"), "BGR")[0, 0].tolist() == [200, 0, 0]
    assert read_image(str(tmp_path / "a.png"), "RGB")[0, 0].tolist() == [0, 0, 200]
    assert read_image(str(tmp_path / "a.png"), "L").shape == (4, 5, 1)


SMALL_INPUT = {  # the defaults with 32-pixel images
    "INPUT.MIN_SIZE_TRAIN": (32,),
    "INPUT.MAX_SIZE_TRAIN": 100,
    "INPUT.MIN_SIZE_TEST": 32,
    "INPUT.MAX_SIZE_TEST": 100,
}


def test_dataset_mapper_train_and_test(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), box_image(16, 24, (2, 4, 10, 12)))
    d = {
        "file_name": str(tmp_path / "a.png"),
        "height": 16,
        "width": 24,
        "image_id": 1,
        "annotations": [
            {"bbox": [2, 4, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
            {"bbox": [0, 0, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
        ],
    }
    cfg = tiny_cfg(SMALL_INPUT, config_file=None, INPUT__RANDOM_FLIP="none")
    out = DatasetMapper(cfg, is_train=True)(d)
    assert out["image"].shape == (3, 32, 48) and out["image"].dtype == torch.uint8
    assert out["instances"].gt_boxes.tensor.tolist() == [[4, 8, 20, 24]]  # x2 scale; crowd dropped
    assert out["instances"].gt_classes.tolist() == [2]
    assert "annotations" in d and d["annotations"][0]["bbox"] == [2, 4, 8, 8]  # input untouched
    test_out = DatasetMapper(cfg, is_train=False)(d)
    assert "annotations" not in test_out and "instances" not in test_out
    small = tiny_cfg(SMALL_INPUT, config_file=None)
    assert [type(a) for a in build_augmentation(small, True)] == [ResizeShortestEdge, RandomFlip]
    assert [type(a) for a in build_augmentation(small, False)] == [ResizeShortestEdge]

"""Instance masks on the data side: polygons and RLE through the transforms, ``gt_masks`` from the
mapper (INPUT.MASK_FORMAT), degenerate polygons per DATALOADER.ON_BAD_ANNOTATION, the shapes
generator's segmentation polygons, and a tiny Mask R-CNN trained from the data loader."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from helpers import tiny_cfg
from pycocotools import mask as mask_util

from resnet_backbones.data import DatasetCatalog, MetadataCatalog
from resnet_backbones.data.build import build_detection_train_loader, get_detection_dataset_dicts
from resnet_backbones.data.dataset_mapper import DatasetMapper
from resnet_backbones.data.datasets import BadAnnotationError, load_coco_json
from resnet_backbones.data.datasets.coco import register_coco_instances
from resnet_backbones.data.detection_utils import (
    annotations_to_instances,
    transform_instance_annotations,
    transformed_instances,
)
from resnet_backbones.data.shapes import (
    SHAPES_CLASSES,
    _stream_rng,
    generate_shapes_dataset,
    render_scene,
)
from resnet_backbones.data.transforms import (
    CropTransform,
    HFlipTransform,
    ResizeTransform,
    TransformList,
    VFlipTransform,
)
from resnet_backbones.modeling import build_model
from resnet_backbones.structures import BitMasks, BoxMode, PolygonMasks
from resnet_backbones.utils.events import EventStorage

H, W = 40, 60


def rect_poly(x0, y0, x1, y1):
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def poly_box(polys):
    xy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys])
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


TRANSFORMS = {
    "resize": ResizeTransform(H, W, 80, 90),
    "hflip": HFlipTransform(W),
    "vflip": VFlipTransform(H),
    "crop": CropTransform(5, 4, 40, 30),
    "resize+hflip": TransformList([ResizeTransform(H, W, 20, 30), HFlipTransform(30)]),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_polygon_moves_with_its_box(name):
    """An axis-aligned rectangle's polygon, transformed, has the transformed box as its box."""
    t = TRANSFORMS[name]
    out_h, out_w = t.apply_image(np.zeros((H, W, 3), np.uint8)).shape[:2]
    anno = {
        "bbox": [10.0, 8.0, 22.0, 15.0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "segmentation": [rect_poly(10, 8, 32, 23)],
        "category_id": 0,
    }
    out = transform_instance_annotations(dict(anno), t, (out_h, out_w))
    np.testing.assert_allclose(poly_box(out["segmentation"]), out["bbox"], atol=1e-9)
    # transformed_instances (the mapper's path) agrees, and leaves the dict alone
    inst = transformed_instances([anno], t, (out_h, out_w), "polygon")
    assert anno["segmentation"] == [rect_poly(10, 8, 32, 23)]
    np.testing.assert_allclose(
        inst.gt_masks.get_bounding_boxes().tensor[0].numpy(), out["bbox"], atol=1e-4
    )
    # and the rasterized polygon is where the transformed image puts the rectangle's pixels
    img = np.zeros((H, W), np.uint8)
    img[8:23, 10:32] = 1
    moved = t.apply_segmentation(img).astype(bool)
    bm = BitMasks.from_polygon_masks(inst.gt_masks, out_h, out_w).tensor[0].numpy()
    assert (bm & moved).sum() / (bm | moved).sum() > 0.85  # a misplaced mask: ~0


def test_crop_clips_polygons_and_drops_outside_ones():
    t = CropTransform(10, 10, 20, 20)
    inside, partly, outside = (
        rect_poly(12, 12, 18, 18),
        rect_poly(0, 15, 20, 25),
        rect_poly(0, 0, 5, 5),
    )
    out = t.apply_polygons([inside, partly, outside])
    assert len(out) == 2
    np.testing.assert_allclose(poly_box([out[0]]), [2, 2, 8, 8])
    np.testing.assert_allclose(poly_box([out[1]]), [0, 5, 10, 15])  # clipped at the left edge
    inst = transformed_instances(
        [
            {
                "bbox": [0, 0, 5, 5],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0,
                "segmentation": [outside],
            },
        ],
        t,
        (20, 20),
        "polygon",
    )
    assert inst.gt_masks.nonempty().tolist() == [False]


@pytest.mark.parametrize("compressed", [True, False])
def test_rle_crowd_region_through_flip_and_resize(compressed):
    mask = np.zeros((H, W), np.uint8)
    mask[5:20, 3:17] = 1
    mask[30:35, 40:58] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    if compressed:
        rle["counts"] = rle["counts"].decode("ascii")  # as json stores it
    else:  # uncompressed: counts as a list of run lengths
        flat = mask.flatten(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        rle = {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}
    anno = {
        "bbox": [3, 5, 55, 30],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": 1,
        "iscrowd": 1,
        "segmentation": rle,
    }
    flipped = transform_instance_annotations(dict(anno), HFlipTransform(W), (H, W))
    np.testing.assert_array_equal(flipped["segmentation"], mask[:, ::-1])
    big = transform_instance_annotations(dict(anno), ResizeTransform(H, W, 2 * H, 2 * W), (80, 120))
    np.testing.assert_array_equal(big["segmentation"], np.kron(mask, np.ones((2, 2), np.uint8)))
    inst = annotations_to_instances([big], (80, 120), mask_format="bitmask")
    assert isinstance(inst.gt_masks, BitMasks) and int(inst.gt_masks.area()[0]) == 4 * mask.sum()
    with pytest.raises(ValueError, match="MASK_FORMAT='bitmask'"):
        annotations_to_instances([big], (80, 120), mask_format="polygon")


def _image_dict(tmp_path, with_segmentation=True):
    img = np.full((H, W, 3), 90, np.uint8)
    img[8:23, 10:32] = 200
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), img)
    anns = [
        {"bbox": [10, 8, 22, 15], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
        {"bbox": [40, 20, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
    ]
    if with_segmentation:
        anns[0]["segmentation"] = [rect_poly(10, 8, 32, 23)]
        anns[1]["segmentation"] = [[40.0, 20.0, 50.0, 20.0, 45.0, 30.0]]
    return {"file_name": str(path), "height": H, "width": W, "image_id": 1, "annotations": anns}


def _mapper_cfg(**kw):
    return tiny_cfg(
        INPUT__MIN_SIZE_TRAIN=(80,), INPUT__MAX_SIZE_TRAIN=1000, INPUT__RANDOM_FLIP="none", **kw
    )


@pytest.mark.parametrize("fmt,cls", [("polygon", PolygonMasks), ("bitmask", BitMasks)])
def test_mapper_gives_gt_masks_in_the_mask_format(tmp_path, fmt, cls):
    d = _image_dict(tmp_path)
    out = DatasetMapper(_mapper_cfg(MODEL__MASK_ON=True, INPUT__MASK_FORMAT=fmt), True)(d)
    inst = out["instances"]
    assert out["image"].shape == (3, 80, 120)
    assert isinstance(inst.gt_masks, cls) and len(inst.gt_masks) == 2
    if fmt == "bitmask":
        assert inst.gt_masks.tensor.shape == (2, 80, 120)
        boxes = inst.gt_masks.get_bounding_boxes().tensor
        torch.testing.assert_close(boxes[0], inst.gt_boxes.tensor[0], atol=1.01, rtol=0)
    else:
        torch.testing.assert_close(
            inst.gt_masks.get_bounding_boxes().tensor, inst.gt_boxes.tensor, atol=1e-4, rtol=0
        )
    assert d["annotations"][0]["segmentation"] == [rect_poly(10, 8, 32, 23)]  # untouched
    # without MASK_ON the masks are ignored
    plain = DatasetMapper(_mapper_cfg(), True)(d)["instances"]
    assert not plain.has("gt_masks")
    torch.testing.assert_close(plain.gt_boxes.tensor, inst.gt_boxes.tensor)


def test_mapper_refuses_mask_training_without_segmentation(tmp_path):
    d = _image_dict(tmp_path, with_segmentation=False)
    assert "instances" in DatasetMapper(_mapper_cfg(), True)(d)  # boxes only: fine
    with pytest.raises(ValueError, match=r"img\.png.*no 'segmentation'"):
        DatasetMapper(_mapper_cfg(MODEL__MASK_ON=True), True)(d)


BAD_POLYGONS = {
    "polygon with fewer than 3 points": [[10.0, 10.0, 20.0, 20.0]],
    "zero-area polygon": [[10.0, 10.0, 20.0, 20.0, 30.0, 30.0]],
    "polygon outside the image": [[100.0, 10.0, 120.0, 10.0, 110.0, 30.0]],
    "malformed segmentation": [[10.0, 10.0, "x", 20.0, 30.0, 30.0]],
}


def _coco_json(tmp_path, bad_segm):
    good = rect_poly(10, 8, 32, 23)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 8, 22, 15],
                "area": 330,
                "iscrowd": 0,
                "segmentation": [good],
            },
            {
                "id": 8,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 10, 20, 20],
                "area": 50,
                "iscrowd": 0,
                "segmentation": bad_segm,
            },
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("kind", sorted(BAD_POLYGONS))
def test_degenerate_polygons_follow_on_bad_annotation(tmp_path, caplog, kind):
    path = _coco_json(tmp_path, BAD_POLYGONS[kind])
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(path, tmp_path, on_bad_annotation="skip")
    assert [a["segmentation"] for a in dicts[0]["annotations"]] == [[rect_poly(10, 8, 32, 23)]]
    assert "ann.json" in caplog.text and kind in caplog.text and "annotation id 8" in caplog.text
    with pytest.raises(BadAnnotationError, match=rf"ann\.json: {kind}: annotation id 8 "):
        load_coco_json(path, tmp_path, on_bad_annotation="error")


def test_load_coco_json_keeps_polygons_and_compresses_rle(tmp_path):
    path = _coco_json(tmp_path, {"size": [H, W], "counts": [5, 10, H * W - 15]})
    dicts = load_coco_json(path, tmp_path, on_bad_annotation="error")
    rle = dicts[0]["annotations"][1]["segmentation"]
    assert isinstance(rle["counts"], bytes) and int(mask_util.area(rle)) == 10


def test_shapes_segmentation_matches_the_drawn_pixels(tmp_path):
    root = tmp_path / "shapes"
    kw = dict(
        num_train=6, num_val=0, seed=3, num_cls_train=0, num_cls_val=0, min_size=96, max_size=160
    )
    generate_shapes_dataset(root, **kw)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    ious = []
    for i, img in enumerate(coco["images"]):
        rng = _stream_rng(3, "train", i)  # the generator's stream of this image
        h, w = (int(v) for v in rng.integers(96, 161, size=2))
        scene = render_scene(rng, h, w)
        anns = by_image.get(img["id"], [])
        assert len(anns) == len(scene.instances)
        for k, (a, inst) in enumerate(zip(anns, scene.instances), start=1):
            assert a["segmentation"] == inst.segmentation and len(a["segmentation"]) >= 1
            rles = mask_util.frPyObjects(a["segmentation"], h, w)
            m = mask_util.decode(mask_util.merge(rles)).astype(bool)
            drawn = scene.label_map == k
            ious.append((m & drawn).sum() / (m | drawn).sum())
            assert a["area"] == pytest.approx(drawn.sum(), rel=0.15)
    assert len(ious) >= 6 and min(ious) > 0.9
    # deterministic: the same seed writes the same json
    generate_shapes_dataset(tmp_path / "again", **kw)
    again = (tmp_path / "again" / "annotations" / "instances_train.json").read_text()
    assert again == (root / "annotations" / "instances_train.json").read_text()
    # and the VOC side has boxes only
    xml = next((root / "VOC" / "Annotations").glob("*.xml")).read_text()
    assert "<bndbox>" in xml and "<segmentation" not in xml and "<polygon" not in xml


def _register(name, root, split="train"):
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(
        name,
        {"thing_classes": list(SHAPES_CLASSES)},
        str(root / "annotations" / f"instances_{split}.json"),
        str(root / split),
    )


def test_old_shapes_dataset_without_masks_trains_boxes_and_refuses_masks(tmp_path):
    root = tmp_path / "old"
    generate_shapes_dataset(
        root,
        num_train=2,
        num_val=0,
        seed=1,
        num_cls_train=0,
        num_cls_val=0,
        min_size=64,
        max_size=64,
    )
    path = root / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    for a in coco["annotations"]:
        del a["segmentation"]  # as written before FORMAT_VERSION 2
    path.write_text(json.dumps(coco))
    _register("rbtest_old_shapes", root)
    dicts = get_detection_dataset_dicts("rbtest_old_shapes")
    sample = DatasetMapper(_mapper_cfg(), True)(dicts[0])
    assert len(sample["instances"]) > 0 and not sample["instances"].has("gt_masks")
    with pytest.raises(ValueError, match="dataset 'rbtest_old_shapes' has no instance masks"):
        get_detection_dataset_dicts("rbtest_old_shapes", require_masks=True)
    cfg = _mapper_cfg(MODEL__MASK_ON=True)
    cfg.DATASETS.TRAIN = ("rbtest_old_shapes",)
    with pytest.raises(ValueError, match="rbtest_old_shapes' has no instance masks"):
        build_detection_train_loader(cfg)


@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_tiny_mask_rcnn_trains_from_the_data_loader(tmp_path, fmt):
    root = tmp_path / "shapes"
    generate_shapes_dataset(
        root,
        num_train=2,
        num_val=0,
        seed=0,
        num_cls_train=0,
        num_cls_val=0,
        min_size=96,
        max_size=96,
    )
    _register("rbtest_mask_shapes", root)
    cfg = tiny_cfg(
        MODEL__MASK_ON=True,
        INPUT__MASK_FORMAT=fmt,
        INPUT__MIN_SIZE_TRAIN=(96,),
        INPUT__MAX_SIZE_TRAIN=160,
        DATALOADER__NUM_WORKERS=0,
        SOLVER__IMS_PER_BATCH=2,
        MODEL__RPN__POST_NMS_TOPK_TRAIN=64,
        MODEL__ROI_HEADS__BATCH_SIZE_PER_IMAGE=32,
        SEED=0,
    )
    cfg.DATASETS.TRAIN = ("rbtest_mask_shapes",)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = iter(build_detection_train_loader(cfg))
    expected = PolygonMasks if fmt == "polygon" else BitMasks
    with EventStorage():
        for _ in range(3):
            batch = next(loader)
            for d in batch:
                assert isinstance(d["instances"].gt_masks, expected)
                assert len(d["instances"].gt_masks) == len(d["instances"]) > 0
            losses = model(batch)
            assert torch.isfinite(losses["loss_mask"]) and float(losses["loss_mask"]) > 0
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()


@pytest.mark.parametrize(
    "crop_type,size,expected",
    [
        ("relative", (0.5, 0.25), (20, 15)),
        ("absolute", (30, 100), (30, 60)),
    ],
)
def test_random_crop_sizes(crop_type, size, expected):
    from resnet_backbones.data.transforms import RandomCrop

    np.random.seed(0)
    t = RandomCrop(crop_type, size).get_transform(np.zeros((H, W, 3), np.uint8))
    assert isinstance(t, CropTransform) and (t.h, t.w) == expected
    assert 0 <= t.x0 <= W - t.w and 0 <= t.y0 <= H - t.h
    for crop_type, size in (("relative_range", (0.5, 0.8)), ("absolute_range", (10, 30))):
        for _ in range(20):
            t = RandomCrop(crop_type, size).get_transform(np.zeros((H, W, 3), np.uint8))
            lo_h, lo_w = (20, 48) if crop_type == "relative_range" else (10, 10)
            hi_h, hi_w = (H, W) if crop_type == "relative_range" else (30, 30)
            assert lo_h <= t.h <= hi_h and lo_w <= t.w <= hi_w
    with pytest.raises(ValueError, match="INPUT.CROP.TYPE"):
        RandomCrop("middle", (0.5, 0.5))


def test_mapper_crop_recomputes_boxes_from_masks(tmp_path):
    d = _image_dict(tmp_path)
    cfg = _mapper_cfg(
        MODEL__MASK_ON=True,
        INPUT__CROP__ENABLED=True,
        INPUT__CROP__TYPE="absolute",
        INPUT__CROP__SIZE=[30, 36],
    )
    mapper = DatasetMapper(cfg, True)
    assert mapper.recompute_boxes and type(mapper.augmentations[0]).__name__ == "RandomCrop"
    assert not DatasetMapper(_mapper_cfg(MODEL__MASK_ON=True), True).recompute_boxes
    seen = 0
    for seed in range(8):
        np.random.seed(seed)
        out = mapper(d)
        inst = out["instances"]
        assert out["image"].shape == (3, 80, 96)  # 30x36 crop, short side resized to 80
        torch.testing.assert_close(
            inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor, atol=1e-4, rtol=0
        )
        for polys in inst.gt_masks:
            xy = np.concatenate(polys).reshape(-1, 2)
            assert xy.min() >= -1e-6 and xy[:, 0].max() <= 96 + 1e-6 and xy[:, 1].max() <= 80
        seen += len(inst)
    assert seen > 0

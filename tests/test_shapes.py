"""Tests of the synthetic shapes dataset generator and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from resnet_backbones.data.shapes import (
    SHAPES_CLASSES,
    RenderParams,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    load_shapes_summary,
    render_classification_image,
    render_detection_image,
    render_scene,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=20, num_val=8, seed=3, num_cls_train=13, num_cls_val=6)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "ds"
    summary = generate_shapes_dataset(root, **SMALL)
    return root, summary


def _tree_bytes(root: Path) -> Dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- in-memory rendering


def test_render_detection_image_api():
    img, anns = render_detection_image(0, 120, 150)
    assert img.shape == (120, 150, 3) and img.dtype == np.uint8
    assert len(anns) >= 1
    for class_id, box in anns:
        assert 0 <= class_id < len(SHAPES_CLASSES)
        assert len(box) == 4
    again, anns2 = render_detection_image(np.random.default_rng(0), 120, 150)
    assert np.array_equal(img, again) and anns == anns2
    other, _ = render_detection_image(1, 120, 150)
    assert not np.array_equal(img, other)


@pytest.mark.parametrize("seed", range(8))
def test_boxes_are_tight_boxes_of_visible_pixels(seed):
    params = RenderParams(min_objects=4, max_objects=8)
    scene = render_scene(seed, 160 + 8 * seed, 200 - 5 * seed, params)
    h, w = scene.label_map.shape
    assert len(scene.instances) >= 1
    for k, inst in enumerate(scene.instances, start=1):
        x0, y0, x1, y1 = inst.box
        assert all(float(v).is_integer() for v in inst.box)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        x0, y0, x1, y1 = (int(v) for v in inst.box)
        mine = scene.label_map == k
        assert mine.sum() == inst.visible_area > 0
        assert (
            not mine[:y0].any()
            and not mine[y1:].any()
            and not mine[:, :x0].any()
            and not mine[:, x1:].any()
        )
        # every border row/column of the box holds visible pixels of the shape
        assert mine[y0, x0:x1].any() and mine[y1 - 1, x0:x1].any()
        assert mine[y0:y1, x0].any() and mine[y0:y1, x1 - 1].any()
        assert inst.visible_area >= params.min_visible_fraction * inst.full_area


def test_shapes_differ_from_background():
    """Shape pixels stand out from the pixels just outside the shape (the task is learnable)."""
    scene = render_scene(5, 200, 200, RenderParams(min_objects=3, max_objects=3))
    img = scene.image.astype(np.float32)
    for k, inst in enumerate(scene.instances, start=1):
        mine = (scene.label_map == k).astype(np.uint8)
        inner = cv2.erode(mine, np.ones((3, 3), np.uint8)).astype(bool)
        ring = cv2.dilate(mine, np.ones((7, 7), np.uint8)).astype(bool) & (scene.label_map == 0)
        if inner.sum() < 10 or ring.sum() < 10:
            continue
        assert np.abs(img[inner].mean(0) - img[ring].mean(0)).max() > 20


def test_render_classification_image():
    for class_id in range(3):
        img = render_classification_image(7, class_id, 48)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert np.array_equal(render_classification_image(7, 1), render_classification_image(7, 1))
    with pytest.raises(ValueError, match="class_id"):
        render_classification_image(0, 3)


# ----------------------------------------------------------------------------- files on disk


def test_same_seed_gives_identical_files(small, tmp_path):
    root, _ = small
    generate_shapes_dataset(tmp_path / "again", **SMALL)
    assert _tree_bytes(root) == _tree_bytes(tmp_path / "again")


def test_different_seed_differs_and_images_do_not_depend_on_counts(small, tmp_path):
    root, _ = small
    other = tmp_path / "other"
    generate_shapes_dataset(other, num_train=3, num_val=0, seed=4, num_cls_train=0, num_cls_val=0)
    assert (root / "train/train_000000.jpg").read_bytes() != (
        other / "train/train_000000.jpg"
    ).read_bytes()
    ann = (root / "annotations/instances_train.json").read_bytes()
    assert ann != (other / "annotations/instances_train.json").read_bytes()
    fewer = tmp_path / "fewer"
    generate_shapes_dataset(
        fewer, num_train=3, num_val=0, seed=SMALL["seed"], num_cls_train=0, num_cls_val=0
    )
    assert (root / "train/train_000002.jpg").read_bytes() == (
        fewer / "train/train_000002.jpg"
    ).read_bytes()


def test_coco_json_matches_summary_and_images(small):
    root, summary = small
    assert json.loads((root / "summary.json").read_text()) == {
        k: v for k, v in summary.items() if k != "seconds"
    }
    for split in ("train", "val"):
        paths = summary["paths"]["coco"][split]
        coco = COCO(str(root / paths["json_file"]))
        stats = summary["detection"][split]
        assert len(coco.getImgIds()) == stats["images"] == SMALL[f"num_{split}"]
        assert len(coco.getAnnIds()) == stats["instances"] > 0
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CLASSES)
        assert coco.getCatIds() == [1, 2, 3]
        for cat_id, name in enumerate(SHAPES_CLASSES, start=1):
            assert len(coco.getAnnIds(catIds=[cat_id])) == stats["instances_per_class"][name]
        for img in coco.loadImgs(coco.getImgIds()):
            arr = cv2.imread(str(root / paths["image_root"] / img["file_name"]))
            assert arr.shape == (img["height"], img["width"], 3)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                x, y, w, h = ann["bbox"]
                assert all(isinstance(v, float) for v in ann["bbox"])
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= img["width"] and y + h <= img["height"]
                assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0


def test_voc_agrees_with_coco(small):
    root, _ = small
    voc = root / "VOC"
    for split in ("train", "val"):
        coco = json.loads((root / f"annotations/instances_{split}.json").read_text())
        ids = (voc / "ImageSets/Main" / f"{split}.txt").read_text().split()
        assert [f"{i}.jpg" for i in ids] == [im["file_name"] for im in coco["images"]]
        names = {c["id"]: c["name"] for c in coco["categories"]}
        for im in coco["images"]:
            file_id = im["file_name"][:-4]
            assert (voc / "JPEGImages" / im["file_name"]).read_bytes() == (
                root / split / im["file_name"]
            ).read_bytes()
            tree = ET.parse(voc / "Annotations" / f"{file_id}.xml").getroot()
            assert tree.findtext("filename") == im["file_name"]
            assert (
                int(tree.findtext("size/width")) == im["width"]
                and int(tree.findtext("size/height")) == im["height"]
            )
            voc_boxes = []
            for obj in tree.findall("object"):
                assert obj.findtext("difficult") == "0"
                b = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                assert 1 <= b[0] <= b[2] <= im["width"] and 1 <= b[1] <= b[3] <= im["height"]
                voc_boxes.append((obj.findtext("name"), b))
            coco_boxes = [
                (
                    names[a["category_id"]],
                    [
                        int(a["bbox"][0]) + 1,
                        int(a["bbox"][1]) + 1,
                        int(a["bbox"][0] + a["bbox"][2]),
                        int(a["bbox"][1] + a["bbox"][3]),
                    ],
                )
                for a in coco["annotations"]
                if a["image_id"] == im["id"]
            ]
            assert voc_boxes == coco_boxes


def test_classification_folders(small):
    root, summary = small
    for split in ("train", "val"):
        total = SMALL[f"num_cls_{split}"]
        base = root / summary["paths"]["classification"][split]
        assert sorted(p.name for p in base.iterdir()) == sorted(SHAPES_CLASSES)
        counts = {c: len(list((base / c).glob("*.jpg"))) for c in SHAPES_CLASSES}
        assert counts == summary["classification"][split]
        assert sum(counts.values()) == total
        assert max(counts.values()) - min(counts.values()) <= 1
        img = cv2.imread(str(next((base / "circle").glob("*.jpg"))))
        assert img.shape == (64, 64, 3)


# ----------------------------------------------------------------------------- errors, overwrite


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_train=-1), "num_train"),
        (dict(num_val=True), "num_val"),
        (dict(seed=-2), "seed"),
        (dict(min_size=300, max_size=200), "min_size"),
        (dict(jpeg_quality=0), "jpeg_quality"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_shapes_dataset(tmp_path / "x", **{"num_train": 1, "num_val": 1, **kwargs})
    assert not (tmp_path / "x").exists()


def test_invalid_render_params():
    with pytest.raises(ValueError, match="max_objects"):
        RenderParams(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="min_visible_fraction"):
        RenderParams(min_visible_fraction=0)


def test_overwrite_policy(tmp_path):
    tiny = dict(num_val=1, num_cls_train=0, num_cls_val=0)
    root = tmp_path / "ds"
    generate_shapes_dataset(root, num_train=4, **tiny)
    generate_shapes_dataset(
        root, num_train=2, **tiny
    )  # only managed entries: regenerated, stale files gone
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        "train_000000.jpg",
        "train_000001.jpg",
    ]
    assert len(list((root / "VOC/Annotations").iterdir())) == 3
    (root / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="mine.txt"):
        generate_shapes_dataset(root, num_train=1, **tiny)
    assert len(list((root / "train").iterdir())) == 2  # nothing deleted on refusal
    generate_shapes_dataset(root, num_train=1, force=True, **tiny)
    assert (root / "mine.txt").read_text() == "user data"
    assert len(list((root / "train").iterdir())) == 1


def test_ensure_shapes_dataset_skips_when_parameters_match(tmp_path):
    root = tmp_path / "ds"
    tiny = dict(num_train=2, num_val=1, num_cls_train=3, num_cls_val=3)
    first = ensure_shapes_dataset(root, **tiny)
    assert "seconds" in first  # generated
    stamp = (root / "train/train_000000.jpg").stat().st_mtime_ns
    second = ensure_shapes_dataset(root, **tiny)
    assert "seconds" not in second and second == load_shapes_summary(root)
    assert (root / "train/train_000000.jpg").stat().st_mtime_ns == stamp
    third = ensure_shapes_dataset(root, **{**tiny, "seed": 1})
    assert third["params"]["seed"] == 1
    with pytest.raises(TypeError, match="bogus"):
        ensure_shapes_dataset(root, bogus=1)


# ----------------------------------------------------------------------------------- CLI


def test_cli_runs_and_prints_summary(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        str(REPO / "datasets/prepare_shapes.py"),
        "--output",
        str(out),
        "--num-train",
        "4",
        "--num-val",
        "2",
        "--seed",
        "1",
        "--num-cls-train",
        "3",
        "--num-cls-val",
        "3",
        "--image-size",
        "96",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "detection train: 4 images" in proc.stdout and "detection val  : 2 images" in proc.stdout
    assert "classification train: 3 images" in proc.stdout
    summary = load_shapes_summary(out)
    assert (
        summary is not None and summary["params"]["min_size"] == summary["params"]["max_size"] == 96
    )


def test_cli_reports_errors(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "datasets"))
    try:
        import prepare_shapes
    finally:
        sys.path.pop(0)
    assert prepare_shapes.main(["--output", str(tmp_path / "x"), "--num-train", "-3"]) == 2
    assert "num_train must be a non-negative integer" in capsys.readouterr().err

"""Parity with detectron2 (skipped when it is not installed): the same predictions on the same tiny
VOC-style folder give the same numbers from both libraries' evaluators.

Run in the venv that has detectron2:  python -m pytest tests/test_voc_eval_detectron2_parity.py
"""

from __future__ import annotations

import json
from typing import Dict, List

import numpy as np
import pytest
import torch

d2 = pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog as D2DatasetCatalog  # noqa: E402
from detectron2.data import MetadataCatalog as D2MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_pascal_voc  # noqa: E402
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator  # noqa: E402
from detectron2.evaluation import PascalVOCDetectionEvaluator as D2VOCEvaluator  # noqa: E402
from detectron2.structures import Boxes as D2Boxes  # noqa: E402
from detectron2.structures import Instances as D2Instances  # noqa: E402
from helpers import VocObject, write_voc  # noqa: E402

from resnet_backbones.data.catalog import DatasetCatalog, MetadataCatalog  # noqa: E402
from resnet_backbones.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator  # noqa: E402
from resnet_backbones.structures import Boxes, BoxMode, Instances  # noqa: E402

CLASSES = ["cat", "dog", "bird", "boat"]  # "boat": ground truth but never predicted


def random_voc(
    root: str, seed: int, num_images: int = 30, duplicates: bool = True
) -> Dict[str, List[VocObject]]:
    """A VOC folder of random 500x375 annotations (some difficult objects, duplicated boxes, images
    without objects); returns them."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(num_images):
        name = f"{2008 + i:06d}"
        objs = []
        for _ in range(int(rng.integers(0, 7))):
            x0, y0 = int(rng.integers(1, 400)), int(rng.integers(1, 300))
            box = (
                x0,
                y0,
                min(x0 + int(rng.integers(4, 120)), 500),
                min(y0 + int(rng.integers(4, 120)), 375),
            )
            objs.append((CLASSES[int(rng.integers(len(CLASSES)))], box, int(rng.random() < 0.2)))
            if rng.random() < 0.1 and duplicates:
                objs.append(objs[-1])
        images[name] = objs
    write_voc(root, images, size=(500, 375))
    return images


def make_predictions(images, seed: int):
    """Per image (boxes xyxy 0-based float32, scores float32, classes): jittered ground truth,
    random boxes, tied scores, one image without predictions, never the class 'boat'."""
    rng = np.random.default_rng(seed + 100)
    preds = {}
    for k, (name, objs) in enumerate(images.items()):
        if k == 2:
            continue
        boxes, scores, classes = [], [], []
        for cls, (x0, y0, x1, y1), _ in objs * 2:
            if cls == "boat":
                continue
            j = rng.normal(0, 4, 4)
            boxes.append([x0 - 1 + j[0], y0 - 1 + j[1], x1 + j[2], y1 + j[3]])
            scores.append(float(rng.random()) if rng.random() < 0.7 else 0.5)
            classes.append(CLASSES.index(cls) if rng.random() < 0.85 else int(rng.integers(3)))
        for _ in range(int(rng.integers(0, 6))):
            x0, y0 = rng.uniform(0, 420), rng.uniform(0, 300)
            boxes.append([x0, y0, x0 + rng.uniform(3, 80), y0 + rng.uniform(3, 70)])
            scores.append(float(rng.random()))
            classes.append(int(rng.integers(3)))
        preds[name] = (
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32),
            np.asarray(classes, np.int64),
        )
    return preds


def run_both(ours, theirs, preds, image_size=(375, 500)):
    ours.reset()
    theirs.reset()
    for image_id, (boxes, scores, classes) in preds.items():
        inputs = [{"image_id": image_id, "height": image_size[0], "width": image_size[1]}]
        a = Instances(
            image_size,
            pred_boxes=Boxes(torch.from_numpy(boxes)),
            scores=torch.from_numpy(scores),
            pred_classes=torch.from_numpy(classes),
        )
        b = D2Instances(
            image_size,
            pred_boxes=D2Boxes(torch.from_numpy(boxes)),
            scores=torch.from_numpy(scores),
            pred_classes=torch.from_numpy(classes),
        )
        ours.process(inputs, [{"instances": a}])
        theirs.process(inputs, [{"instances": b}])
    return ours.evaluate(), theirs.evaluate()


@pytest.fixture
def voc(tmp_path, request):
    images = random_voc(str(tmp_path), seed=len(request.node.name))
    names = []

    def register(name, year, dirname=str(tmp_path)):
        register_pascal_voc(name, dirname, "test", year, CLASSES)
        MetadataCatalog.get(name).set(
            thing_classes=CLASSES, dirname=dirname, split="test", year=year
        )
        names.append(name)

    yield tmp_path, images, register
    for name in names:
        D2DatasetCatalog.remove(name)
        D2MetadataCatalog.remove(name)
        MetadataCatalog.pop(name, None)
        DatasetCatalog.pop(name, None)


@pytest.mark.parametrize("year", [2007, 2012])
@pytest.mark.parametrize("seed", [0, 1])
def test_voc_evaluator_equals_detectron2(voc, year, seed):
    root, images, register = voc
    name = f"_parity_voc_{year}_{seed}"
    register(name, year)
    preds = make_predictions(images, seed)
    ours, theirs = run_both(PascalVOCDetectionEvaluator(name), D2VOCEvaluator(name), preds)
    print(
        f"\nVOC{year} seed {seed}: "
        f"ours {dict((k, ours['bbox'][k]) for k in ('AP', 'AP50', 'AP75'))}, "
        f"detectron2 {dict(theirs['bbox'])}"
    )
    for key in ("AP", "AP50", "AP75"):
        assert ours["bbox"][key] == pytest.approx(float(theirs["bbox"][key]), abs=1e-9, rel=0), key
    assert 0 < ours["bbox"]["AP"] < 100


@pytest.mark.parametrize("year", [2007, 2012])
def test_voc_perfect_detections_are_100_in_both(voc, year):
    root, _, register = voc
    # without duplicated boxes: of two identical ground truths the devkit can only ever match the
    # first
    images = random_voc(str(root / "nodup"), seed=5, duplicates=False)
    name = f"_parity_voc_perfect_{year}"
    register(name, year, str(root / "nodup"))
    preds = {}
    for image_id, objs in images.items():
        boxes = np.asarray(
            [[x0 - 1, y0 - 1, x1, y1] for _, (x0, y0, x1, y1), _ in objs], np.float32
        ).reshape(-1, 4)
        preds[image_id] = (
            boxes,
            np.full(len(objs), 0.9, np.float32),
            np.asarray([CLASSES.index(c) for c, _, _ in objs], np.int64),
        )
    ours, theirs = run_both(PascalVOCDetectionEvaluator(name), D2VOCEvaluator(name), preds)
    for key in ("AP", "AP50", "AP75"):
        assert ours["bbox"][key] == pytest.approx(100.0, abs=1e-9)
        assert float(theirs["bbox"][key]) == pytest.approx(100.0, abs=1e-9)


def test_coco_evaluator_on_converted_voc_equals_detectron2(voc, tmp_path):
    """Both COCOEvaluators convert the same registered dataset to COCO json and give the same AP."""
    root, images, register = voc
    name = "_parity_coco_from_voc"
    register(name, 2012)
    d2_dicts = D2DatasetCatalog.get(name)
    DatasetCatalog.register(
        name,
        lambda: [
            dict(
                d,
                annotations=[
                    dict(a, bbox_mode=BoxMode(int(a["bbox_mode"]))) for a in d["annotations"]
                ],
            )
            for d in d2_dicts
        ],
    )
    preds = make_predictions(images, 3)
    ours_ev = COCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "ours"))
    theirs_ev = D2COCOEvaluator(
        name, distributed=False, output_dir=str(tmp_path / "d2"), use_fast_impl=False
    )
    ours, theirs = run_both(ours_ev, theirs_ev, preds)
    ours_json = json.loads((tmp_path / "ours" / f"{name}_coco_format.json").read_text())
    d2_json = json.loads((tmp_path / "d2" / f"{name}_coco_format.json").read_text())
    for key in ("images", "annotations", "categories"):
        assert ours_json[key] == d2_json[key], key
    print(f"\nCOCO on VOC: ours AP {ours['bbox']['AP']}, detectron2 AP {theirs['bbox']['AP']}")
    for key, value in theirs["bbox"].items():
        assert ours["bbox"][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key

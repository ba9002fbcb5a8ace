"""Pascal VOC evaluation: a hand-computed case, perfect detections, a plain loop implementation of
the devkit algorithm as an independent reference on random data, and clear errors."""

from __future__ import annotations

import math
import os
from typing import Dict, List

import numpy as np
import pytest
import torch
from helpers import write_voc

from resnet_backbones.data.catalog import MetadataCatalog
from resnet_backbones.evaluation import PascalVOCDetectionEvaluator
from resnet_backbones.structures import Boxes, Instances


def register(name: str, root: str, year: int, classes: List[str]) -> None:
    MetadataCatalog.pop(name, None)
    MetadataCatalog.get(name).set(
        thing_classes=classes, dirname=root, split="test", year=year, evaluator_type="pascal_voc"
    )


def instances(boxes, scores, classes) -> Instances:
    inst = Instances((400, 500))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def run(name: str, preds: Dict[str, Instances]) -> Dict[str, float]:
    ev = PascalVOCDetectionEvaluator(name)
    ev.reset()
    for image_id, inst in preds.items():
        ev.process([{"image_id": image_id, "height": 400, "width": 500}], [{"instances": inst}])
    return ev.evaluate()["bbox"]


def pred_box(x0, y0, x1, y1):
    """The 0-based model box whose VOC (1-based inclusive) version is (x0, y0, x1, y1)."""
    return [x0 - 1, y0 - 1, x1, y1]


GT = {
    "img1": [("cat", (1, 1, 10, 10), 0), ("cat", (21, 21, 30, 30), 1), ("dog", (1, 1, 20, 20), 0)],
    "img2": [("cat", (11, 11, 20, 20), 0)],
}


@pytest.mark.parametrize("year", [2007, 2012])
def test_hand_computed_ap(tmp_path, year):
    write_voc(str(tmp_path), GT)
    name = f"_voc_hand_{year}"
    register(name, str(tmp_path), year, ["cat", "dog"])
    preds = {
        # cat: p1 exact A (0.9) TP; p2 exact difficult B (0.8) ignored; p3 A again (0.7) FP;
        #      p4 exact D (0.6) TP
        # dog: q2 on img2 without dogs (0.95) FP; q1 20x16 inside the 20x20 dog C (0.5):
        #      IoU 320/400 = 0.8, a TP for thresholds 0.50..0.75 and a FP from 0.80 on
        #      (the test is IoU > threshold)
        "img1": instances(
            [
                pred_box(1, 1, 10, 10),
                pred_box(21, 21, 30, 30),
                pred_box(1, 1, 10, 10),
                pred_box(1, 1, 20, 16),
            ],
            [0.9, 0.8, 0.7, 0.5],
            [0, 0, 0, 1],
        ),
        "img2": instances(
            [pred_box(11, 11, 20, 20), pred_box(100, 100, 150, 150)], [0.6, 0.95], [0, 1]
        ),
    }
    res = run(name, preds)
    # cat (npos = 2: the difficult B is not counted), in score order: TP, -, FP, TP
    #   recall 0.5, 0.5, 0.5, 1.0; precision 1, 1, 1/2, 2/3 at every threshold (IoU 1)
    #   area metric: 0.5 * 1 + 0.5 * 2/3 = 5/6
    #   11-point: recall >= 0, .1, ..., .5 -> max precision 1 (6 points);
    #             >= .6 ... 1 -> 2/3 (5 points)
    #             (6 + 5 * 2/3) / 11 = 28/33
    # dog (npos = 1), in score order: FP, TP  -> recall 0, 1; precision 0, 1/2
    #   thresholds <= 0.75: area 1 * 1/2 = 1/2; 11-point: 11 * (1/2) / 11 = 1/2.
    #   Thresholds >= 0.80: 0
    cat = 28 / 33 if year == 2007 else 5 / 6
    ap50 = (cat + 0.5) / 2 * 100
    ap80 = cat / 2 * 100
    assert res["AP50"] == pytest.approx(ap50, abs=1e-9)
    assert res["AP75"] == pytest.approx(ap50, abs=1e-9)
    assert res["AP"] == pytest.approx((6 * ap50 + 4 * ap80) / 10, abs=1e-9)
    assert res["AP-cat"] == pytest.approx(cat * 100, abs=1e-9)
    assert res["AP50-dog"] == pytest.approx(50.0, abs=1e-9)
    assert res["AP-dog"] == pytest.approx(6 * 50.0 / 10, abs=1e-9)


@pytest.mark.parametrize("year", [2007, 2012])
def test_perfect_detections_score_100(tmp_path, year):
    write_voc(str(tmp_path), GT)
    name = f"_voc_perfect_{year}"
    register(name, str(tmp_path), year, ["cat", "dog"])
    preds = {}
    for image_id, objs in GT.items():
        preds[image_id] = instances(
            [pred_box(*b) for _, b, _ in objs],
            [0.9] * len(objs),
            [["cat", "dog"].index(c) for c, _, _ in objs],
        )
    res = run(name, preds)
    for key in ("AP", "AP50", "AP75"):
        assert res[key] == pytest.approx(100.0, abs=1e-9)


# ---------------------------------------------------------------------------- independent reference
def reference_voc(
    root: str, classes: List[str], preds: Dict[str, Instances], use_07: bool
) -> Dict[str, float]:
    """A direct loop implementation of the devkit's algorithm (with detectron2's text rounding)."""
    import xml.etree.ElementTree as ET

    names = [
        n.strip() for n in open(os.path.join(root, "ImageSets", "Main", "test.txt")) if n.strip()
    ]
    gts = {}
    for n in names:
        objs = []
        for o in ET.parse(os.path.join(root, "Annotations", f"{n}.xml")).findall("object"):
            bb = o.find("bndbox")
            objs.append(
                (
                    o.find("name").text,
                    [float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")],
                    int(o.find("difficult").text),
                )
            )
        gts[n] = objs
    dets: Dict[int, list] = {c: [] for c in range(len(classes))}
    for image_id, inst in preds.items():
        for box, score, cls in zip(
            inst.pred_boxes.tensor.numpy(), inst.scores.tolist(), inst.pred_classes.tolist()
        ):
            x0, y0, x1, y1 = box
            x0 += 1
            y0 += 1
            dets[cls].append(
                (image_id, float(f"{score:.3f}"), [float(f"{v:.1f}") for v in (x0, y0, x1, y1)])
            )
    aps = {t: [] for t in range(50, 100, 5)}
    for c, cname in enumerate(classes):
        for t in aps:
            recs = {n: [(b, d) for name, b, d in gts[n] if name == cname] for n in names}
            taken = {n: [False] * len(recs[n]) for n in names}
            npos = sum(1 for n in names for _, d in recs[n] if not d)
            conf = np.array([d[1] for d in dets[c]])
            order = np.argsort(-conf)
            tp, fp = np.zeros(len(order)), np.zeros(len(order))
            for k, i in enumerate(order):
                image_id, _, bb = dets[c][i]
                best, best_j = -np.inf, -1
                for j, (g, _) in enumerate(recs[image_id]):
                    iw = max(min(g[2], bb[2]) - max(g[0], bb[0]) + 1.0, 0.0)
                    ih = max(min(g[3], bb[3]) - max(g[1], bb[1]) + 1.0, 0.0)
                    inter = iw * ih
                    union = (
                        (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                        + (g[2] - g[0] + 1.0) * (g[3] - g[1] + 1.0)
                        - inter
                    )
                    if inter / union > best:
                        best, best_j = inter / union, j
                if best > t / 100.0:
                    if not recs[image_id][best_j][1]:
                        if not taken[image_id][best_j]:
                            tp[k] = 1.0
                            taken[image_id][best_j] = True
                        else:
                            fp[k] = 1.0
                else:
                    fp[k] = 1.0
            tp, fp = np.cumsum(tp), np.cumsum(fp)
            rec = tp / float(npos)
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            if use_07:
                ap = 0.0
                for r in np.arange(0.0, 1.1, 0.1):
                    ap += (np.max(prec[rec >= r]) if np.sum(rec >= r) else 0) / 11.0
            else:
                mrec = np.concatenate(([0.0], rec, [1.0]))
                mpre = np.concatenate(([0.0], prec, [0.0]))
                for i in range(len(mpre) - 1, 0, -1):
                    mpre[i - 1] = max(mpre[i - 1], mpre[i])
                idx = np.where(mrec[1:] != mrec[:-1])[0]
                ap = np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])
            aps[t].append(ap * 100)
    m = {t: np.mean(v) for t, v in aps.items()}
    return {"AP": float(np.mean(list(m.values()))), "AP50": float(m[50]), "AP75": float(m[75])}


def random_voc(root: str, seed: int, classes: List[str], num_images: int = 25):
    """Random VOC ground truth of all classes but the last (some difficult, some duplicated boxes)
    and jittered/random predictions with scores rounded to 2 decimals (ties); one image without
    predictions."""
    rng = np.random.default_rng(seed)
    images, preds = {}, {}
    for i in range(num_images):
        objs = []
        for _ in range(int(rng.integers(0, 6))):
            x0, y0 = int(rng.integers(1, 400)), int(rng.integers(1, 300))
            box = (x0, y0, x0 + int(rng.integers(5, 100)), y0 + int(rng.integers(5, 100)))
            objs.append(
                (classes[int(rng.integers(len(classes) - 1))], box, int(rng.random() < 0.2))
            )
            if rng.random() < 0.1:
                objs.append(objs[-1])
        name = f"{i:06d}"
        images[name] = objs
        if i == 3:
            continue
        boxes, scores, cls = [], [], []
        for c, (x0, y0, x1, y1), _ in objs * 2:
            j = rng.normal(0, 3, 4)
            boxes.append([x0 - 1 + j[0], y0 - 1 + j[1], x1 + j[2], y1 + j[3]])
            scores.append(round(float(rng.random()), 2))
            cls.append(
                classes.index(c) if rng.random() < 0.9 else int(rng.integers(len(classes) - 1))
            )
        for _ in range(int(rng.integers(0, 5))):
            x0, y0 = rng.uniform(0, 400), rng.uniform(0, 300)
            boxes.append([x0, y0, x0 + rng.uniform(5, 100), y0 + rng.uniform(5, 100)])
            scores.append(round(float(rng.random()), 2))
            cls.append(int(rng.integers(len(classes) - 1)))
        preds[name] = instances(boxes, scores, cls)
    write_voc(root, images)
    return preds


@pytest.mark.parametrize("year", [2007, 2012])
def test_matches_loop_reference_on_random_data(tmp_path, year):
    classes = ["a", "b", "c"]  # "c" has neither ground truth nor predictions: AP 0
    preds = random_voc(str(tmp_path), seed=year, classes=classes)
    name = f"_voc_random_{year}"
    register(name, str(tmp_path), year, classes)
    res = run(name, preds)
    ref = reference_voc(str(tmp_path), classes, preds, year == 2007)
    for key in ("AP", "AP50", "AP75"):
        assert res[key] == ref[key], key  # same operations in the same order: bit-identical
    assert 0 < res["AP"] < 100


def test_clear_errors(tmp_path):
    write_voc(str(tmp_path), GT)
    with pytest.raises(KeyError, match="not registered"):
        PascalVOCDetectionEvaluator("_voc_no_such_dataset")
    MetadataCatalog.pop("_voc_incomplete", None)
    MetadataCatalog.get("_voc_incomplete").set(thing_classes=["cat"])
    with pytest.raises(ValueError, match="dirname"):
        PascalVOCDetectionEvaluator("_voc_incomplete")
    register("_voc_err", str(tmp_path), 2012, ["cat", "dog"])
    ev = PascalVOCDetectionEvaluator("_voc_err")
    with pytest.raises(ValueError, match="has class 2, but dataset '_voc_err' has 2 classes"):
        ev.process([{"image_id": "img1"}], [{"instances": instances([[0, 0, 5, 5]], [0.5], [2])}])
    ev.reset()
    ev.process([{"image_id": "nope"}], [{"instances": instances([[0, 0, 5, 5]], [0.5], [0])}])
    with pytest.raises(ValueError, match="not in .*test.txt"):
        ev.evaluate()
    os.remove(tmp_path / "Annotations" / "img2.xml")
    ev.reset()
    with pytest.raises(FileNotFoundError, match="img2.xml"):
        ev.evaluate()


def test_no_predictions_gives_zero(tmp_path):
    write_voc(str(tmp_path), GT)
    register("_voc_empty", str(tmp_path), 2012, ["cat", "dog"])
    res = run("_voc_empty", {"img1": instances([], [], [])})
    assert res["AP"] == 0.0 and res["AP50"] == 0.0 and not math.isnan(res["AP75"])

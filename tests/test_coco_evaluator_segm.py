"""COCOEvaluator's mask AP ("segm"): the same 12 numbers as pycocotools on the results json it
writes (polygon and crowd-RLE ground truth, an image without objects, overlapping, empty and
perfect predicted masks), RLE masks in the results json and instances_predictions.pth, the
pycocotools fallback of the fast backend, ground truth converted from dataset dicts."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math

import numpy as np
import pytest
import torch
from helpers import evaluate_pairs
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from resnet_backbones.data.catalog import DatasetCatalog, MetadataCatalog
from resnet_backbones.evaluation import instances_to_coco_json
from resnet_backbones.evaluation.coco_evaluation import SEGM_FALLBACK_MESSAGE, encode_masks
from resnet_backbones.evaluation.fast_coco_eval import quiet_coco
from resnet_backbones.structures import Boxes, BoxMode, Instances

# pycocotools' mask.decode with numpy 2 (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
H, W = 150, 210  # not square, so that a transposed (C-order) encoding would show
CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}]
LOGGER = "resnet_backbones.evaluation"


# ----------------------------------------------------------------------------- synthetic data
def _polygon(rng):
    """A random convex-ish polygon (a jittered ellipse) of a size between small and large."""
    size = float(np.exp(rng.uniform(np.log(5), np.log(70))))
    cx, cy = rng.uniform(size / 2, W - size / 2), rng.uniform(size / 2, H - size / 2)
    angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
    rx, ry = size * rng.uniform(0.5, 1.0), size * rng.uniform(0.5, 1.0)
    xs = np.clip(cx + rx * np.cos(angles), 0, W - 1)
    ys = np.clip(cy + ry * np.sin(angles), 0, H - 1)
    return [float(round(v, 2)) for xy in zip(xs, ys) for v in xy]


def _decode(segmentation):
    """A segmentation (polygons, uncompressed RLE or RLE with str counts) as a bool (H, W)
    mask."""
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
        rle = dict(segmentation, counts=segmentation["counts"].encode())
        return mask_util.decode(rle).astype(bool)
    rles = mask_util.frPyObjects(segmentation, H, W)
    rle = mask_util.merge(rles) if isinstance(rles, list) else rles
    return mask_util.decode(rle).astype(bool)


def _uncompressed_rle(mask):
    """COCO's crowd format: run lengths of the column-major mask, starting with zeros."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [H, W], "counts": counts}


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float(xs.min()),
        float(ys.min()),
        float(xs.max() + 1 - xs.min()),
        float(ys.max() + 1 - ys.min()),
    ]


def make_segm_coco(seed, num_images=10):
    """Ground truth with polygons (some with two parts), a crowd RLE region, an image without
    objects, a category without ground truth ("bird"); per image a list of predicted
    (category_id, score, mask): perfect, shifted, two overlapping ones, an empty one, one on the
    crowd region and false positives."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], {}
    for i in range(num_images):
        iid = 100 + i
        images.append({"id": iid, "width": W, "height": H, "file_name": f"{iid}.jpg"})
        preds[iid] = []
        if i == 1:  # an image without objects, with one false positive
            mask = np.zeros((H, W), dtype=bool)
            mask[10:40, 20:60] = True
            preds[iid].append((3, 0.7, mask))
            continue
        gt_masks = []
        for k in range(int(rng.integers(1, 5))):
            seg = [_polygon(rng)] + ([_polygon(rng)] if rng.random() < 0.2 else [])
            if i % 4 == 2 and k == 0:  # a large object (area > 96 ** 2)
                seg = [[20.0, 20.0, 150.5, 20.0, 150.5, 130.5, 20.0, 130.5]]
            mask = _decode(seg)
            if not mask.any():
                continue
            cat = int(rng.choice([3, 7]))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": cat,
                    "segmentation": seg,
                    "area": float(
                        mask_util.area(mask_util.merge(mask_util.frPyObjects(seg, H, W)))
                    ),
                    "bbox": _bbox(mask),
                    "iscrowd": 0,
                }
            )
            gt_masks.append((cat, mask))
        if i % 3 == 0:  # a crowd region as uncompressed RLE, and a detection inside it
            crowd = np.zeros((H, W), dtype=bool)
            crowd[100:140, 120:200] = True
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": 7,
                    "segmentation": _uncompressed_rle(crowd),
                    "area": float(crowd.sum()),
                    "bbox": _bbox(crowd),
                    "iscrowd": 1,
                }
            )
            inside = np.zeros((H, W), dtype=bool)
            inside[105:130, 130:170] = True
            preds[iid].append((7, round(float(rng.random()), 2), inside))
        for j, (cat, mask) in enumerate(gt_masks):
            score = round(float(rng.uniform(0.3, 1.0)), 2)
            if j == 0:  # perfect
                preds[iid].append((cat, score, mask))
            elif j == 1:  # shifted
                preds[iid].append((cat, score, np.roll(mask, (2, 3), axis=(0, 1))))
            else:  # two overlapping masks: the object grown, and the object with a neighbour strip
                grown = mask | np.roll(mask, 1, axis=0) | np.roll(mask, 1, axis=1)
                preds[iid].append((cat, score, grown))
                strip = mask.copy()
                strip[:, : W // 3] = True
                preds[iid].append((cat, round(score / 2, 2), strip))
        preds[iid].append((3, 0.5, np.zeros((H, W), dtype=bool)))  # an empty mask
        if rng.random() < 0.5:  # a false positive of the category without ground truth
            fp = np.zeros((H, W), dtype=bool)
            fp[5:25, 5:25] = True
            preds[iid].append((9, 0.4, fp))
    gt = {"images": images, "annotations": anns, "categories": copy.deepcopy(CATS)}
    return gt, preds


def _pairs(gt, preds, mapping, with_masks=True):
    """Per-image (input, output) pairs with Instances as a Mask R-CNN gives them."""
    pairs = []
    for img in gt["images"]:
        ps = preds[img["id"]]
        masks = torch.from_numpy(np.asarray([m for _, _, m in ps], dtype=bool).reshape(-1, H, W))
        xywh = torch.tensor([_bbox(m) for _, _, m in ps], dtype=torch.float32).reshape(-1, 4)
        inst = Instances((H, W))
        inst.pred_boxes = Boxes(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        inst.scores = torch.tensor([s for _, s, _ in ps], dtype=torch.float32)
        inst.pred_classes = torch.tensor([mapping[c] for c, _, _ in ps], dtype=torch.int64)
        if with_masks:
            inst.pred_masks = masks
        pairs.append(({"image_id": img["id"], "height": H, "width": W}, {"instances": inst}))
    return pairs


def _register(name, gt, tmp_path):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(gt))
    mapping = {c["id"]: i for i, c in enumerate(gt["categories"])}
    MetadataCatalog.get(name).set(
        json_file=str(path),
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id=mapping,
    )
    return mapping


@pytest.fixture
def segm_dataset(tmp_path, request):
    name = f"_test_segm_{request.node.name}"
    gt, preds = make_segm_coco(5)
    mapping = _register(name, gt, tmp_path)
    yield name, gt, preds, mapping
    MetadataCatalog.pop(name, None)
    DatasetCatalog.pop(name, None)


def _evaluate(name, pairs, **kwargs):
    return evaluate_pairs(name, pairs, 3, **kwargs)


def reference_segm(gt, results):
    """pycocotools' mask AP on result dicts, computed here: as detectron2 does, the results' boxes
    are dropped so that loadRes takes the detections' areas from their masks."""
    coco = quiet_coco(copy.deepcopy(gt))
    dts = [{k: v for k, v in r.items() if k != "bbox"} for r in copy.deepcopy(results)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dts), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(s * 100) if s >= 0 else float("nan") for k, s in zip(STAT_KEYS, ev.stats)}
    precision = ev.eval["precision"]
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = next(c["name"] for c in gt["categories"] if c["id"] == cat_id)
        stats[f"AP-{name}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return stats


def _same(a, b):
    """Equal dicts of floats (keys in the same order), NaN equal to NaN."""
    return list(a) == list(b) and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


# ----------------------------------------------------------------------------- tests
def test_encode_masks_round_trip_fortran_order():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 11)) < 0.4
    masks[1] = False  # an empty mask
    rles = encode_masks(torch.from_numpy(masks))
    assert all(isinstance(r["counts"], str) and r["size"] == [7, 11] for r in rles)
    decoded = mask_util.decode([dict(r, counts=r["counts"].encode()) for r in rles])
    assert decoded.shape == (7, 11, 3)
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), masks)
    assert encode_masks(torch.zeros(0, 7, 11, dtype=torch.bool)) == []
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        encode_masks(torch.zeros(7, 11, dtype=torch.bool))
    with pytest.raises(ValueError, match="binary"):
        encode_masks(torch.full((1, 7, 11), 0.7))
    # 0/1 integers are the same masks as bools
    assert encode_masks(torch.from_numpy(masks.astype(np.uint8))) == rles
    inst = Instances(
        (7, 11),
        pred_boxes=Boxes(torch.zeros(2, 4)),
        scores=torch.tensor([0.5, 0.4]),
        pred_classes=torch.tensor([0, 1]),
        pred_masks=torch.from_numpy(masks[:2]),
    )
    out = instances_to_coco_json(inst, 42)
    assert [r["segmentation"] for r in out] == rles[:2]
    json.dumps(out)  # counts are str: json can hold them
    inst.remove("pred_masks")
    assert all("segmentation" not in r for r in instances_to_coco_json(inst, 42))


def test_segm_equals_pycocotools_on_written_results(segm_dataset, tmp_path, caplog):
    name, gt, preds, mapping = segm_dataset
    pairs = _pairs(gt, preds, mapping)
    out_dir = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ev, res = _evaluate(name, pairs, tasks=("bbox", "segm"), output_dir=str(out_dir))
        again = ev.evaluate()
    assert list(res) == ["bbox", "segm"]
    results = json.loads((out_dir / "coco_instances_results.json").read_text())
    assert len(results) == sum(len(p) for p in preds.values())
    for r in results:
        seg = r["segmentation"]
        assert isinstance(seg["counts"], str) and seg["size"] == [H, W]
        assert set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    # the masks in the json are the predicted ones (in the same order)
    flat = [m for img in gt["images"] for _, _, m in preds[img["id"]]]
    decoded = mask_util.decode(
        [dict(r["segmentation"], counts=r["segmentation"]["counts"].encode()) for r in results]
    )
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), np.stack(flat))
    # exactly pycocotools' 12 numbers and per-category AP, computed here on the written json
    ref = reference_segm(gt, results)
    assert list(res["segm"])[:12] == STAT_KEYS
    assert [k for k in res["segm"] if k.startswith("AP-")] == ["AP-cat", "AP-dog", "AP-bird"]
    assert _same(res["segm"], ref)
    assert 0 < res["segm"]["AP"] < 100 and math.isnan(res["segm"]["AP-bird"])
    assert _same(again["segm"], res["segm"]) and _same(again["bbox"], res["bbox"])
    # the pth holds the processed predictions, with the same RLE masks
    saved = torch.load(out_dir / "instances_predictions.pth", weights_only=False)
    saved_segs = [r["segmentation"] for p in saved for r in p["instances"]]
    assert saved_segs == [r["segmentation"] for r in results]
    log = caplog.text
    assert log.count(SEGM_FALLBACK_MESSAGE) == 1  # once, though evaluated twice
    assert "Per-category segm AP" in log and "Evaluation results for segm" in log
    assert "Per-category bbox AP" in log


def test_segm_backends_and_derived_tasks_agree(segm_dataset, caplog):
    name, gt, preds, mapping = segm_dataset
    pairs = _pairs(gt, preds, mapping)
    _, fast = _evaluate(name, pairs, tasks=("bbox", "segm"))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        # only what the two evaluations below log (an earlier test may have left the logger at
        # INFO, and then the evaluation above was captured too)
        caplog.clear()
        _, derived = _evaluate(name, pairs)  # tasks from the predictions: they have masks
        _, ref = _evaluate(name, pairs, tasks=("segm",), backend="pycocotools")
    assert list(derived) == ["bbox", "segm"] and list(ref) == ["segm"]
    assert _same(derived["segm"], fast["segm"]) and _same(derived["bbox"], fast["bbox"])
    assert _same(ref["segm"], fast["segm"])
    assert caplog.text.count(SEGM_FALLBACK_MESSAGE) == 1  # the pycocotools backend needs none
    # the box results do not depend on the masks
    _, boxes_only = _evaluate(name, _pairs(gt, preds, mapping, with_masks=False))
    assert list(boxes_only) == ["bbox"] and _same(boxes_only["bbox"], fast["bbox"])


def test_perfect_masks_score_100(segm_dataset):
    name, gt, _, mapping = segm_dataset
    preds = {img["id"]: [] for img in gt["images"]}
    for a in gt["annotations"]:
        if not a["iscrowd"]:
            preds[a["image_id"]].append((a["category_id"], 1.0, _decode(a["segmentation"])))
    res = _evaluate(name, _pairs(gt, preds, mapping), tasks=("segm",))[1]["segm"]
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert res[k] == pytest.approx(100.0, abs=1e-9), k


def test_box_only_predictions_and_missing_masks(segm_dataset, tmp_path):
    name, gt, preds, mapping = segm_dataset
    pairs = _pairs(gt, preds, mapping, with_masks=False)
    out_dir = tmp_path / "boxes"
    _, res = _evaluate(name, pairs, output_dir=str(out_dir))
    assert list(res) == ["bbox"]
    results = json.loads((out_dir / "coco_instances_results.json").read_text())
    assert results and all("segmentation" not in r for r in results)
    with pytest.raises(ValueError, match="have no 'segmentation'.*pred_masks"):
        _evaluate(name, pairs, tasks=("bbox", "segm"))


def _dicts_from_coco(gt, with_segmentation=True, rle_bytes=False):
    """detectron2-style dataset dicts of a COCO dict (contiguous ids; crowd RLE compressed with
    bytes counts when ``rle_bytes``)."""
    mapping = {c["id"]: i for i, c in enumerate(gt["categories"])}
    dicts = []
    for img in gt["images"]:
        anns = []
        for a in gt["annotations"]:
            if a["image_id"] != img["id"]:
                continue
            d = {
                "bbox": a["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": mapping[a["category_id"]],
                "iscrowd": a["iscrowd"],
            }
            if with_segmentation:
                seg = a["segmentation"]
                if rle_bytes and isinstance(seg, dict):
                    seg = mask_util.encode(np.asfortranarray(_decode(seg).astype(np.uint8)))
                d["segmentation"] = seg
            anns.append(d)
        dicts.append(dict(img, image_id=img["id"], annotations=anns))
    return dicts


def _register_dicts(name, dicts, gt):
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(gt["categories"])},
    )


def test_dataset_without_json_keeps_segmentation(tmp_path):
    gt, preds = make_segm_coco(7, num_images=6)
    name = "_test_segm_converted"
    _register_dicts(name, _dicts_from_coco(gt, rle_bytes=True), gt)
    try:
        out_dir = tmp_path / "conv"
        ev, res = _evaluate(name, _pairs(gt, preds, mapping_of(gt)), output_dir=str(out_dir))
        converted = json.loads((out_dir / f"{name}_coco_format.json").read_text())
        segs = [a["segmentation"] for a in converted["annotations"]]
        assert len(segs) == len(gt["annotations"])
        crowd = [a for a in converted["annotations"] if a["iscrowd"]]
        assert crowd and all(isinstance(a["segmentation"]["counts"], str) for a in crowd)
        crowd_gt = [a for a in gt["annotations"] if a["iscrowd"]]
        for a, b in zip(crowd, crowd_gt):
            mask = _decode(b["segmentation"])
            assert np.array_equal(_decode(a["segmentation"]), mask)
            assert a["area"] == float(mask.sum())
        results = json.loads((out_dir / "coco_instances_results.json").read_text())
        assert list(res) == ["bbox", "segm"]
        assert _same(res["segm"], reference_segm(converted, results))
    finally:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


def mapping_of(gt):
    return {c["id"]: i for i, c in enumerate(gt["categories"])}


def test_ground_truth_without_masks_skips_segm(tmp_path, caplog):
    gt, preds = make_segm_coco(7, num_images=4)
    name = "_test_segm_no_gt_masks"
    _register_dicts(name, _dicts_from_coco(gt, with_segmentation=False), gt)
    try:
        pairs = _pairs(gt, preds, mapping_of(gt))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            _, res = _evaluate(name, pairs, output_dir=str(tmp_path))
            _, explicit = _evaluate(name, pairs, tasks=("segm",), output_dir=str(tmp_path))
        assert list(res) == ["bbox"] and explicit == {}
        assert "segm evaluation skipped" in caplog.text and "has no masks" in caplog.text
        _, boxes = _evaluate(
            name, _pairs(gt, preds, mapping_of(gt), with_masks=False), output_dir=str(tmp_path)
        )
        assert _same(boxes["bbox"], res["bbox"])
    finally:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


def test_ground_truth_with_some_masks_missing_is_an_error(tmp_path):
    gt, preds = make_segm_coco(7, num_images=4)
    del gt["annotations"][0]["segmentation"]
    name = "_test_segm_partial_gt"
    mapping = _register(name, gt, tmp_path)
    try:
        with pytest.raises(
            ValueError, match="1 of .* ground-truth annotations .* no 'segmentation'"
        ):
            _evaluate(name, _pairs(gt, preds, mapping), tasks=("segm",))
    finally:
        MetadataCatalog.pop(name, None)

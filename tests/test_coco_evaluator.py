"""COCO evaluation: the fast backend equals pycocotools exactly; COCOEvaluator's API, files and
errors; inference_on_dataset; distributed gathering."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
from helpers import evaluate_pairs
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from resnet_backbones.data.catalog import DatasetCatalog, MetadataCatalog
from resnet_backbones.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    FastCOCOeval,
    evaluate_predictions_on_coco,
    inference_on_dataset,
    print_csv_format,
)
from resnet_backbones.evaluation.fast_coco_eval import _box_iou, quiet_coco
from resnet_backbones.structures import Boxes, BoxMode, Instances

STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


# ----------------------------------------------------------------------------- synthetic data
def make_coco(seed, num_images=120, num_cats=8, gt_per=5, dets_per=30, crowd=0.1, empty=0.1):
    """Random GT and results with crowd boxes, empty images, categories without GT (the last two),
    duplicated GT boxes (IoU ties), rounded scores (score ties), exact copies of GT boxes, GT areas
    on the small/medium/large boundaries and images with more than 100 detections of one
    category."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 4 * num_cats), num_cats, replace=False).tolist())
    gt_cats = cat_ids[:-2]
    images, anns, dets = [], [], []
    for i in range(num_images):
        iid = 1000 + 3 * i
        images.append({"id": iid, "width": 640, "height": 480, "file_name": f"{iid}.jpg"})
        gts = []
        for _ in range(0 if rng.random() < empty else int(rng.poisson(gt_per))):
            s = float(np.exp(rng.uniform(np.log(4), np.log(300))))
            w, h = s * rng.uniform(0.5, 1.5), s * rng.uniform(0.5, 1.5)
            box = [
                round(float(rng.uniform(0, 600)), 2),
                round(float(rng.uniform(0, 450)), 2),
                round(w, 2),
                round(h, 2),
            ]
            area = float(box[2] * box[3] * rng.uniform(0.6, 1.0))
            if rng.random() < 0.1:
                area = float(rng.choice([32.0**2, 96.0**2]))
            a = {
                "id": len(anns) + 1,
                "image_id": iid,
                "category_id": int(rng.choice(gt_cats)),
                "bbox": box,
                "area": area,
                "iscrowd": int(rng.random() < crowd),
            }
            anns.append(a)
            gts.append(a)
            if rng.random() < 0.05:  # exact duplicate ground truth
                anns.append(dict(a, id=len(anns) + 1))
        n_dets = int(rng.integers(0, 2 * dets_per)) if i % 17 else 130  # some images exceed maxDets
        for _ in range(n_dets):
            if gts and rng.random() < 0.6:
                g = gts[int(rng.integers(len(gts)))]
                x, y, w, h = g["bbox"]
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                box = [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)]
                if rng.random() < 0.1:
                    box = list(g["bbox"])
                c = g["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
            else:
                s = float(np.exp(rng.uniform(np.log(4), np.log(300))))
                box = [rng.uniform(0, 600), rng.uniform(0, 450), s, s * rng.uniform(0.5, 2)]
                c = int(rng.choice(cat_ids)) if i % 17 else gt_cats[0]
            dets.append(
                {
                    "image_id": iid,
                    "category_id": c,
                    "bbox": [float(v) for v in box],
                    "score": round(float(rng.random()), 2),
                }
            )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids],
    }
    return gt, dets


def run_pycocotools(gt, dets, max_dets=None):
    coco = quiet_coco(copy.deepcopy(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        if max_dets:
            ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def run_fast(gt, dets, max_dets=None):
    ev = FastCOCOeval(quiet_coco(copy.deepcopy(gt)), copy.deepcopy(dets))
    if max_dets:
        ev.params.maxDets = max_dets
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# ----------------------------------------------------------------------------- fast == pycocotools
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_backend_identical_to_pycocotools(seed):
    gt, dets = make_coco(seed)
    ref, fast = run_pycocotools(gt, dets), run_fast(gt, dets)
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(ref.eval[key], fast.eval[key]), key
    assert np.array_equal(
        np.asarray(ref.stats), np.asarray(fast.stats)
    )  # all 12 numbers, bit for bit
    assert (np.asarray(ref.stats)[:6] > 0).all()


def test_fast_backend_identical_dense_and_custom_max_dets():
    # few categories and many detections per image: truncation at maxDets matters; heavy crowd
    gt, dets = make_coco(7, num_images=50, num_cats=4, gt_per=8, dets_per=90, crowd=0.3)
    gt["annotations"][0]["id"] = 0  # pycocotools reads a match to gt id 0 as "unmatched"
    for max_dets in ([1, 10, 100], [1, 10, 40], [2, 5, 300]):
        ref, fast = run_pycocotools(gt, dets, max_dets), run_fast(gt, dets, max_dets)
        for key in ("precision", "recall", "scores"):
            assert np.array_equal(ref.eval[key], fast.eval[key]), (max_dets, key)


def test_fast_backend_iou_bit_identical_to_pycocotools():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.uniform(0, 100, (300, 2)), rng.uniform(0.5, 80, (300, 2))], axis=1)
    g = np.concatenate([rng.uniform(0, 100, (40, 2)), rng.uniform(0.5, 80, (40, 2))], axis=1)
    crowd = rng.random(40) < 0.3
    ref = mask_util.iou(d.tolist(), g.tolist(), crowd.astype(np.uint8).tolist())
    di, gi = np.meshgrid(np.arange(300), np.arange(40), indexing="ij")
    ours = _box_iou(d[di.ravel()], g[gi.ravel()], crowd[gi.ravel()]).reshape(300, 40)
    assert np.array_equal(ref, ours)


def test_fast_backend_rejects_detections_on_unknown_images():
    gt, dets = make_coco(0, num_images=5)
    dets.append(
        {
            "image_id": 999999,
            "category_id": gt["categories"][0]["id"],
            "bbox": [0, 0, 5, 5],
            "score": 0.5,
        }
    )
    with pytest.raises(ValueError, match="not in the ground truth"):
        FastCOCOeval(quiet_coco(gt), dets).evaluate()


# ----------------------------------------------------------------------------- COCOEvaluator
def _register(name, gt, tmp_path):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(gt))
    cat_ids = [c["id"] for c in gt["categories"]]
    MetadataCatalog.get(name).set(
        json_file=str(path),
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)},
    )
    return {c: i for i, c in enumerate(cat_ids)}


@pytest.fixture
def dataset(tmp_path, request):
    name = f"_test_coco_{request.node.name}"
    gt, dets = make_coco(3, num_images=40)
    mapping = _register(name, gt, tmp_path)
    yield name, gt, dets, mapping
    MetadataCatalog.pop(name, None)
    DatasetCatalog.pop(name, None)


def _outputs(gt, dets, mapping):
    """Per-image (input, output) pairs, detections given as XYXY Instances with contiguous
    classes."""
    per_image = {img["id"]: [] for img in gt["images"]}
    for d in dets:
        per_image[d["image_id"]].append(d)
    pairs = []
    for img in gt["images"]:
        ds = per_image[img["id"]]
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float32).reshape(-1, 4)
        inst = Instances((img["height"], img["width"]))
        inst.pred_boxes = Boxes(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        inst.scores = torch.tensor([d["score"] for d in ds], dtype=torch.float32)
        inst.pred_classes = torch.tensor([mapping[d["category_id"]] for d in ds], dtype=torch.int64)
        pairs.append(
            (
                {
                    "image_id": img["id"],
                    "height": img["height"],
                    "width": img["width"],
                    "file_name": img["file_name"],
                },
                {"instances": inst},
            )
        )
    return pairs


def _same(a, b):
    """Equal dicts of floats, NaN equal to NaN."""
    return list(a) == list(b) and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def _evaluate(name, pairs, **kwargs):
    return evaluate_pairs(name, pairs, 4, **kwargs)


def test_coco_evaluator_backends_agree_and_report_all_metrics(dataset, tmp_path, caplog):
    name, gt, dets, mapping = dataset
    pairs = _outputs(gt, dets, mapping)
    with caplog.at_level(logging.INFO, logger="resnet_backbones.evaluation"):
        ev_fast, fast = _evaluate(name, pairs, output_dir=str(tmp_path / "out"))
    _, ref = _evaluate(name, pairs, backend="pycocotools")
    assert list(fast) == ["bbox"]
    keys = list(fast["bbox"])
    assert keys[:12] == STAT_KEYS
    assert keys[12:] == [f"AP-{c['name']}" for c in gt["categories"]]
    assert _same(fast["bbox"], ref["bbox"])
    # categories without ground truth have NaN AP; the others a number in [0, 100]
    assert math.isnan(fast["bbox"][keys[-1]]) and 0 <= fast["bbox"]["AP"] <= 100
    # same numbers as pycocotools on the results json the evaluator wrote (dataset ids)
    results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in results} <= set(mapping)
    ref_stats = run_pycocotools(gt, results).stats
    expected = [float(s * 100) if s >= 0 else float("nan") for s in ref_stats]
    assert _same(dict(zip(STAT_KEYS, expected)), {k: fast["bbox"][k] for k in STAT_KEYS})
    saved = torch.load(tmp_path / "out" / "instances_predictions.pth", weights_only=False)
    assert len(saved) == len(gt["images"]) and {"image_id", "instances"} <= set(saved[0])
    log = caplog.text
    assert (
        "Per-category bbox AP" in log
        and "| category" in log
        and "Evaluation results for bbox" in log
    )
    # evaluating twice gives the same numbers (predictions are not modified in place)
    assert _same(ev_fast.evaluate()["bbox"], fast["bbox"])


def test_perfect_detections_score_100(dataset):
    name, gt, _, mapping = dataset
    regular = [a for a in gt["annotations"] if not a["iscrowd"]]
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in regular
    ]
    pairs = _outputs(gt, dets, mapping)
    by_id = {inp["image_id"]: out for inp, out in pairs}
    loader = [[inp for inp, _ in pairs[i : i + 3]] for i in range(0, len(pairs), 3)]
    for backend in ("fast", "pycocotools"):
        # through inference_on_dataset, with a "model" that returns the ground truth
        evaluator = COCOEvaluator(name, distributed=False, backend=backend)
        res = inference_on_dataset(
            lambda batch: [by_id[x["image_id"]] for x in batch], loader, evaluator
        )["bbox"]
        for k in ("AP", "AP50", "AP75", "AR100"):
            assert res[k] == pytest.approx(100.0, abs=1e-9), (backend, k)


def test_dataset_without_json_is_converted(tmp_path):
    name = "_test_coco_no_json"
    dicts = [
        {
            "file_name": f"{i}.jpg",
            "image_id": i,
            "height": 100,
            "width": 120,
            "annotations": [
                {
                    "bbox": [10.0 * i, 5.0, 10.0 * i + 40.0, 60.0],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": i % 2,
                }
            ],
        }
        for i in range(4)
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    try:
        with pytest.raises(ValueError, match="output_dir"):
            COCOEvaluator(name)
        ev = COCOEvaluator(name, distributed=False, output_dir=str(tmp_path))
        assert os.path.isfile(tmp_path / f"{name}_coco_format.json")
        ev.reset()
        for d in dicts:
            inst = Instances((100, 120))
            inst.pred_boxes = Boxes(torch.tensor([d["annotations"][0]["bbox"]]))
            inst.scores = torch.tensor([0.9])
            inst.pred_classes = torch.tensor([d["annotations"][0]["category_id"]])
            ev.process([{"image_id": d["image_id"]}], [{"instances": inst}])
        res = ev.evaluate()["bbox"]
        assert res["AP"] == pytest.approx(100.0) and res["AP-a"] == pytest.approx(100.0)
    finally:
        DatasetCatalog.pop(name)
        MetadataCatalog.pop(name)


def test_clear_errors(dataset, tmp_path):
    name, gt, dets, mapping = dataset
    with pytest.raises(KeyError, match="not registered.*did you mean"):
        COCOEvaluator(name + "x")
    with pytest.raises(ValueError, match="'bbox' and 'segm', got \\('keypoints',\\)"):
        COCOEvaluator(name, tasks=("keypoints",))
    with pytest.raises(ValueError, match="'bbox' and 'segm'"):
        COCOEvaluator(name, tasks=())
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(name, backend="detectron2")
    with pytest.raises(ValueError, match="max_dets_per_image"):
        COCOEvaluator(name, max_dets_per_image=5)
    ev = COCOEvaluator(name, distributed=False)
    inp, out = _outputs(gt, dets, mapping)[0]
    assert len(out["instances"]) > 0
    out["instances"].pred_classes[-1] = len(mapping)
    with pytest.raises(ValueError, match="has class 8, but dataset .* has 8 classes"):
        ev.process([inp], [out])
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        ev.process([inp, inp], [out])
    with pytest.raises(ValueError, match="not in the ground truth"):
        inst = Instances(
            (10, 10),
            pred_boxes=Boxes(torch.tensor([[0.0, 0, 5, 5]])),
            scores=torch.tensor([0.5]),
            pred_classes=torch.tensor([0]),
        )
        ev.reset()
        ev.process([{"image_id": 123456789}], [{"instances": inst}])
        ev.evaluate()


def test_no_predictions_and_empty_predictions(dataset, caplog):
    name, gt, _, _ = dataset
    ev = COCOEvaluator(name, distributed=False)
    ev.reset()
    assert ev.evaluate() == {}
    empty = Instances(
        (480, 640),
        pred_boxes=Boxes(torch.zeros(0, 4)),
        scores=torch.zeros(0),
        pred_classes=torch.zeros(0, dtype=torch.int64),
    )
    ev.process([{"image_id": gt["images"][0]["id"]}], [{"instances": empty}])
    res = ev.evaluate()["bbox"]
    assert set(STAT_KEYS) <= set(res) and all(math.isnan(res[k]) for k in STAT_KEYS)


def test_max_dets_per_image_and_img_ids(dataset):
    name, gt, dets, mapping = dataset
    pairs = _outputs(gt, dets, mapping)
    res = _evaluate(name, pairs, max_dets_per_image=20)[1]["bbox"]
    assert "AR20" in res and "AR100" not in res
    results = [dict(d) for d in dets]
    ids = [img["id"] for img in gt["images"][:10]]
    fast = evaluate_predictions_on_coco(
        quiet_coco(copy.deepcopy(gt)), results, img_ids=ids, max_dets_per_image=[1, 10, 20]
    )
    ref = evaluate_predictions_on_coco(
        quiet_coco(copy.deepcopy(gt)),
        results,
        backend="pycocotools",
        img_ids=ids,
        max_dets_per_image=[1, 10, 20],
    )
    assert np.array_equal(fast.stats, ref.stats)


# ----------------------------------------------------------------------------- inference_on_dataset
class _Recorder(DatasetEvaluator):
    def __init__(self, key="count"):
        self.key = key
        self.n = 0

    def reset(self):
        self.n = 0

    def process(self, inputs, outputs):
        self.n += len(outputs)

    def evaluate(self):
        return {self.key: {"n": self.n}}


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.seen = []

    def forward(self, batch):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return [{"instances": None} for _ in batch]


def test_inference_on_dataset_modes_progress_and_results(capsys):
    model = _Model().train()
    loader = [[{"image_id": i}] * 2 for i in range(7)]
    results = inference_on_dataset(model, loader, [_Recorder("a"), _Recorder("b")])
    assert results == {"a": {"n": 14}, "b": {"n": 14}}
    assert (
        model.seen == [(False, False)] * 7 and model.training
    )  # eval + no_grad inside, mode restored
    err = capsys.readouterr().err
    # tqdm's bar ends at 7/7 batches with elapsed<remaining (the ETA)
    assert re.search(r"Inference: 100%\|.*\| 7/7 \[\d\d:\d\d<\d\d:\d\d", err), err
    assert inference_on_dataset(model, loader, None) == {}
    with pytest.raises(ValueError, match="same key"):
        DatasetEvaluators([_Recorder(), _Recorder()]).evaluate()


def test_print_csv_format(caplog):
    with caplog.at_level(logging.INFO):
        print_csv_format({"bbox": {"AP": 1.0, "AP50": 2.0, "AP-cat": 3.0}})
    assert "copypaste: AP,AP50" in caplog.text and "AP-cat" not in caplog.text


# ----------------------------------------------------------------------------- distributed
def _worker(rank, world, init_file, gt, dets, mapping, out_file):
    import torch.distributed as dist

    from resnet_backbones.utils import comm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    name = "_test_coco_dist"
    path = os.path.join(os.path.dirname(out_file), "gt.json")
    MetadataCatalog.get(name).set(
        json_file=path,
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id={c: i for c, i in mapping.items()},
    )
    pairs = _outputs(gt, dets, mapping)[rank::world]
    ev = COCOEvaluator(name)  # distributed=True
    ev.reset()
    for inp, out in pairs:
        ev.process([inp], [out])
    res = ev.evaluate()
    assert comm.all_gather(rank) == list(range(world))
    assert comm.gather(rank) == (list(range(world)) if rank == 0 else [])
    assert comm.get_world_size() == world and comm.is_main_process() == (rank == 0)
    assert len(set(comm.all_gather(comm.shared_random_seed()))) == 1
    reduced = comm.reduce_dict({"x": torch.tensor(float(rank))})
    assert rank != 0 or reduced["x"].item() == 0.5
    comm.synchronize()
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_distributed_gather_evaluates_on_main_process_only(dataset, tmp_path):
    name, gt, dets, mapping = dataset
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    # fork: no re-import of torch in the children, which keeps this test fast
    torch.multiprocessing.start_processes(
        _worker,
        args=(2, str(tmp_path / "init"), gt, dets, mapping, str(tmp_path / "res")),
        nprocs=2,
        start_method="fork",
    )
    r0 = json.loads((tmp_path / "res.0").read_text())
    r1 = json.loads((tmp_path / "res.1").read_text())
    single = _evaluate(name, _outputs(gt, dets, mapping))[1]
    assert r1 == {}
    assert (
        r0["bbox"]["AP"] == single["bbox"]["AP"] and r0["bbox"]["AR100"] == single["bbox"]["AR100"]
    )

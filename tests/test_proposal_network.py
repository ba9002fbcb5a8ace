"""RPN-only models: ``ProposalNetwork`` (``MODEL.META_ARCHITECTURE "ProposalNetwork"``,
``configs/rpn_R50_C4.yaml``) and detectron2's proposal recall in ``COCOEvaluator`` (task
``"box_proposals"``: AR@100 / AR@1000, all / small / medium / large).

* recall numbers worked out by hand: thresholds 0.5:0.95:0.05, crowd boxes excluded, area ranges,
  the top-``limit`` proposals by objectness, detectron2's greedy one-to-one matching;
* ``COCOEvaluator`` on proposal outputs: detectron2's metric names in its order, its files;
* the model: RPN losses in training, rescaled proposals at inference equal to the RPN's own, the
  same proposals as a ``GeneralizedRCNN`` with the same weights; ``prepare_model`` (fast path) in
  both modes; ``TEST.AMP.SCOPE``; ``DefaultTrainer`` trains and evaluates it; the predictor
  returns proposals; export refuses it with a clear error.

The comparisons with detectron2 are in ``test_proposal_eval_detectron2_parity.py``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
from helpers import (
    logging_state,
    narrow_c4_cfg,
    restore_logging_state,
    scene_inputs,
    tiny_cfg,
)

from resnet_backbones import get_cfg
from resnet_backbones.data import DatasetCatalog
from resnet_backbones.data.datasets import register_coco_instances
from resnet_backbones.evaluation import COCOEvaluator, evaluate_box_proposals
from resnet_backbones.evaluation.fast_coco_eval import quiet_coco
from resnet_backbones.modeling import build_model, prepare_model
from resnet_backbones.modeling.meta_arch import GeneralizedRCNN, ProposalNetwork
from resnet_backbones.structures import Boxes, Instances
from resnet_backbones.utils.testing import calibrate_random_detector_

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RPN_CONFIG = os.path.join(ROOT, "configs", "rpn_R50_C4.yaml")
#: detectron2's box_proposals metrics, in its order
AR_KEYS = [f"AR{s}@{n}" for n in (100, 1000) for s in ("", "s", "m", "l")]
SCENES = [(21, 160, 224), (22, 192, 144)]


# ------------------------------------------------------------------------------ synthetic data
def proposal_dataset(
    seed: int, num_images: int = 30
) -> Tuple[Dict[str, Any], List[Tuple[int, np.ndarray, np.ndarray]]]:
    """A COCO ground truth and proposals ``(image_id, (N, 4) XYXY float32, (N,) logits)`` per
    image: objects of every area range (some exactly on the 32^2 / 96^2 boundaries, some crowd,
    integer and float boxes), images without objects, an image without proposals, images with
    more than 1000 proposals, jittered copies of the objects and random boxes, tied logits."""
    rng = np.random.default_rng(seed)
    images, anns, proposals = [], [], []
    for i in range(num_images):
        iid = 500 + 7 * i
        images.append({"id": iid, "width": 640, "height": 480, "file_name": f"{iid}.jpg"})
        objects = []
        for _ in range(0 if i % 9 == 4 else int(rng.poisson(6))):
            side = float(np.exp(rng.uniform(np.log(6), np.log(300))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            box = [float(rng.uniform(0, 600)), float(rng.uniform(0, 420)), w, h]
            box = [round(v) for v in box] if rng.random() < 0.3 else [round(v, 2) for v in box]
            area = float(box[2] * box[3] * rng.uniform(0.7, 1.0))
            if rng.random() < 0.1:
                area = float(rng.choice([32.0**2, 96.0**2]))
            ann = {
                "id": len(anns) + 1,
                "image_id": iid,
                "category_id": 1,
                "bbox": box,
                "area": area,
                "iscrowd": int(rng.random() < 0.1),
            }
            anns.append(ann)
            objects.append(box)
        n = 0 if i == 7 else int(rng.choice([30, 150, 600, 1300]))
        boxes = np.zeros((n, 4), np.float32)
        for k in range(n):
            if objects and rng.random() < 0.4:
                x, y, w, h = objects[int(rng.integers(len(objects)))]
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                x0, y0 = x + j[0], y + j[1]
                boxes[k] = [x0, y0, x0 + max(w + j[2], 1.0), y0 + max(h + j[3], 1.0)]
            else:
                side = float(np.exp(rng.uniform(np.log(4), np.log(400))))
                x0, y0 = rng.uniform(0, 600), rng.uniform(0, 450)
                boxes[k] = [x0, y0, x0 + side, y0 + side * rng.uniform(0.5, 2)]
        logits = np.round(rng.normal(0, 3, n), 1).astype(np.float32)  # ties
        proposals.append((iid, boxes, logits))
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    return gt, proposals


def register_json(name: str, gt: Dict[str, Any], directory: str) -> str:
    """Write ``gt`` as ``<directory>/<name>.json`` and register it as a COCO dataset."""
    path = os.path.join(directory, f"{name}.json")
    with open(path, "w") as f:
        json.dump(gt, f)
    meta = {"thing_classes": ["thing"], "thing_dataset_id_to_contiguous_id": {1: 0}}
    register_coco_instances(name, meta, path, directory)
    return path


def _proposals(boxes: Sequence[Sequence[float]], logits: Sequence[float]) -> Instances:
    inst = Instances((480, 640))
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.objectness_logits = torch.tensor(logits, dtype=torch.float32)
    return inst


def _ann(aid: int, iid: int, xywh: Sequence[float], crowd: int = 0) -> Dict[str, Any]:
    return {
        "id": aid,
        "image_id": iid,
        "category_id": 1,
        "bbox": list(xywh),
        "area": float(xywh[2] * xywh[3]),
        "iscrowd": crowd,
    }


def _hand_example() -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Image 1: a large box A covered at IoU 0.775 by a proposal in the top 100 and exactly by the
    103rd; a crowd box C covered exactly by the best proposal; 101 far-away boxes in between.
    Image 2: a small box S covered at IoU 0.62. Proposals given out of order."""
    gt = {
        "images": [{"id": i, "width": 640, "height": 480} for i in (1, 2)],
        "annotations": [
            _ann(1, 1, [10, 10, 100, 100]),  # A, 100x100: large
            _ann(2, 1, [300, 300, 50, 50], crowd=1),  # C
            _ann(3, 2, [5, 5, 20, 20]),  # S, 20x20: small
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    far = [[400 + k, 0, 420 + k, 20] for k in range(101)]
    boxes = far + [[10, 10, 110, 87.5], [300, 300, 350, 350], [10, 10, 110, 110]]
    logits = [1.0 - 0.001 * k for k in range(101)] + [5.0, 9.0, -10.0]
    order = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0)).tolist()
    image1 = _proposals([boxes[k] for k in order], [logits[k] for k in order])
    image2 = _proposals([[5, 5, 25, 17.4], [200, 200, 260, 260]], [0.0, 3.0])
    return gt, [{"image_id": 1, "proposals": image1}, {"image_id": 2, "proposals": image2}]


# ----------------------------------------------------------------------------------- the recall
def test_recall_worked_out_by_hand():
    gt, predictions = _hand_example()
    coco = quiet_coco(gt)
    # A at 0.775 meets the thresholds 0.50..0.75 (6 of 10), S at 0.62 meets 0.50..0.60 (3 of 10);
    # the crowd box C does not count; within 1000 proposals A is covered exactly (10 of 10).
    expected = {
        ("all", 100): 0.45,  # (3 * 2/2 + 3 * 1/2) / 10
        ("all", 1000): 0.65,  # (3 * 2/2 + 7 * 1/2) / 10
        ("small", 100): 0.3,
        ("small", 1000): 0.3,
        ("large", 100): 0.6,
        ("large", 1000): 1.0,
    }
    for (area, limit), ar in expected.items():
        stats = evaluate_box_proposals(predictions, coco, area=area, limit=limit)
        assert stats["ar"].item() == pytest.approx(ar, abs=1e-6), (area, limit)
        assert stats["num_pos"] == {"all": 2, "small": 1, "large": 1}[area]
    medium = evaluate_box_proposals(predictions, coco, area="medium", limit=100)
    assert medium["num_pos"] == 0 and math.isnan(medium["ar"].item())
    stats = evaluate_box_proposals(predictions, coco, area="all", limit=None)
    assert stats["thresholds"].tolist() == pytest.approx([0.5 + 0.05 * k for k in range(10)])
    assert stats["gt_overlaps"].tolist() == pytest.approx([0.62, 1.0])


def test_greedy_one_to_one_matching():
    """One proposal covering two overlapping boxes counts for one of them only (detectron2's
    greedy matching: the best-covered box takes it); an image without proposals is skipped, so
    its objects do not count."""
    gt = {
        "images": [{"id": i, "width": 640, "height": 480} for i in (1, 2)],
        "annotations": [
            _ann(1, 1, [100, 100, 100, 100]),
            _ann(2, 1, [100, 100, 100, 90]),  # IoU 0.9 with the proposal
            _ann(3, 2, [10, 10, 50, 50]),
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    predictions = [
        {"image_id": 1, "proposals": _proposals([[100, 100, 200, 200]], [1.0])},
        {"image_id": 2, "proposals": _proposals([], [])},
    ]
    stats = evaluate_box_proposals(predictions, quiet_coco(gt), area="all", limit=100)
    assert stats["num_pos"] == 2
    assert stats["gt_overlaps"].tolist() == [0.0, 1.0]
    assert stats["ar"].item() == pytest.approx(0.5)


def test_unknown_area_range_is_refused():
    gt, predictions = _hand_example()
    with pytest.raises(ValueError, match="unknown area range 'huge'"):
        evaluate_box_proposals(predictions, quiet_coco(gt), area="huge")


def test_coco_evaluator_reports_box_proposals(tmp_path, unregister):
    gt, predictions = _hand_example()
    unregister.append("rbtest_proposals_hand")
    register_json("rbtest_proposals_hand", gt, str(tmp_path))
    out_dir = tmp_path / "out"
    evaluator = COCOEvaluator("rbtest_proposals_hand", distributed=False, output_dir=str(out_dir))
    evaluator.reset()
    for p in predictions:
        evaluator.process([{"image_id": p["image_id"]}], [{"proposals": p["proposals"]}])
    results = evaluator.evaluate()
    assert list(results) == ["box_proposals"]
    metrics = results["box_proposals"]
    assert list(metrics) == AR_KEYS
    expected = [45.0, 30.0, math.nan, 60.0, 65.0, 30.0, math.nan, 100.0]
    for key, want in zip(AR_KEYS, expected):
        got = metrics[key]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-4), key
    with open(out_dir / "box_proposals.pkl", "rb") as f:
        saved = pickle.load(f)
    assert saved["ids"] == [1, 2] and saved["bbox_mode"] == 0  # XYXY_ABS
    assert np.array_equal(saved["boxes"][1], predictions[1]["proposals"].proposal_boxes.tensor)
    assert np.array_equal(
        saved["objectness_logits"][0], predictions[0]["proposals"].objectness_logits
    )
    assert (out_dir / "instances_predictions.pth").is_file()


def test_coco_evaluator_detections_and_proposals_together(tmp_path, unregister):
    """Outputs with both ``instances`` and ``proposals`` give both tasks."""
    gt, predictions = _hand_example()
    unregister.append("rbtest_proposals_both")
    register_json("rbtest_proposals_both", gt, str(tmp_path))
    evaluator = COCOEvaluator("rbtest_proposals_both", distributed=False)
    for p in predictions:
        inst = Instances(p["proposals"].image_size)
        inst.pred_boxes = p["proposals"].proposal_boxes.clone()
        inst.scores = p["proposals"].objectness_logits.sigmoid()
        inst.pred_classes = torch.zeros(len(inst), dtype=torch.int64)
        evaluator.process(
            [{"image_id": p["image_id"]}], [{"instances": inst, "proposals": p["proposals"]}]
        )
    results = evaluator.evaluate()
    assert set(results) == {"box_proposals", "bbox"}
    assert results["box_proposals"]["AR@1000"] == pytest.approx(65.0, abs=1e-4)
    assert 0 < results["bbox"]["AP"] <= 100


def test_coco_evaluator_random_proposals_match_direct_computation(tmp_path, unregister):
    """Through process/evaluate (dataset json on disk, CPU copies) the numbers are those of
    :func:`evaluate_box_proposals` on the same proposals."""
    gt, proposals = proposal_dataset(3, num_images=12)
    unregister.append("rbtest_proposals_random")
    register_json("rbtest_proposals_random", gt, str(tmp_path))
    evaluator = COCOEvaluator("rbtest_proposals_random", distributed=False)
    predictions = []
    for iid, boxes, logits in proposals:
        p = {"image_id": iid, "proposals": _proposals(boxes.tolist(), logits.tolist())}
        predictions.append(p)
        evaluator.process([{"image_id": iid}], [{"proposals": p["proposals"]}])
    metrics = evaluator.evaluate()["box_proposals"]
    coco = quiet_coco(gt)
    for limit in (100, 1000):
        for area, suffix in (("all", ""), ("small", "s"), ("medium", "m"), ("large", "l")):
            ar = evaluate_box_proposals(predictions, coco, area=area, limit=limit)["ar"].item()
            assert metrics[f"AR{suffix}@{limit}"] == pytest.approx(ar * 100, rel=1e-6)
    assert 0 < metrics["AR@100"] < metrics["AR@1000"] < 100


# ------------------------------------------------------------------------------------ the model
def _rpn_cfg(extra: Sequence[Any] = ()):
    return narrow_c4_cfg(["MODEL.META_ARCHITECTURE", "ProposalNetwork", *extra])


@pytest.fixture(scope="module")
def calibrated():
    """(ProposalNetwork, GeneralizedRCNN) of the narrow R50-C4, the same calibrated random
    backbone and RPN weights; eval mode."""
    torch.manual_seed(0)
    model = build_model(_rpn_cfg())
    calibrate_random_detector_(model, scene_inputs(*SCENES), seed=0)
    detector = build_model(narrow_c4_cfg())
    missing, unexpected = detector.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("roi_heads.") for k in missing)
    return model.eval(), detector.eval()


def test_config_builds_detectron2s_rpn_r50_c4():
    cfg = get_cfg()
    cfg.merge_from_file(RPN_CONFIG)
    assert cfg.MODEL.META_ARCHITECTURE == "ProposalNetwork"
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST) == (12000, 2000)
    assert (cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN) == (12000, 2000)
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.OUT_FEATURES == ["res4"]
    assert cfg.SOLVER.MAX_ITER == 90000 and cfg.SOLVER.STEPS == (60000, 80000)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert type(model) is ProposalNetwork
    sd = model.state_dict()
    assert {k.split(".")[0] for k in sd} == {"backbone", "proposal_generator"}
    assert not any(k.startswith("backbone.res5") for k in sd)
    assert sd["proposal_generator.rpn_head.conv.weight"].shape == (1024, 1024, 3, 3)
    assert sd["proposal_generator.rpn_head.objectness_logits.weight"].shape == (15, 1024, 1, 1)


def test_training_returns_the_rpn_losses():
    torch.manual_seed(0)
    model = build_model(_rpn_cfg()).train()
    losses = model(scene_inputs(*SCENES, with_gt=True))
    assert sorted(losses) == ["loss_rpn_cls", "loss_rpn_loc"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["proposal_generator.rpn_head.conv.weight"].abs().sum() > 0
    assert grads["backbone.res4.0.conv1.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="training inputs need 'instances'"):
        model(scene_inputs(*SCENES))


def test_inference_gives_rescaled_rpn_proposals(calibrated):
    model, _ = calibrated
    batch = scene_inputs(*SCENES)
    for d in batch:  # reported at 1.5x the input size
        h, w = d["image"].shape[-2:]
        d["height"], d["width"] = int(h * 1.5), int(w * 1.5)
    with torch.no_grad():
        out = model(batch)
        images = model.preprocess_image(batch)
        raw, _ = model.proposal_generator(images, model.backbone(images.tensor), None)
    assert len(out) == len(batch)
    for o, r, d in zip(out, raw, batch):
        assert list(o) == ["proposals"]
        p = o["proposals"]
        assert set(p.get_fields()) == {"proposal_boxes", "objectness_logits"}
        assert p.image_size == (d["height"], d["width"])
        assert 50 < len(p) <= 300  # MODEL.RPN.POST_NMS_TOPK_TEST of NARROW
        assert torch.all(p.objectness_logits[:-1] >= p.objectness_logits[1:])
        h, w = d["image"].shape[-2:]
        scaled = r.proposal_boxes.tensor * torch.tensor([d["width"] / w, d["height"] / h] * 2)
        scaled[:, 0::2] = scaled[:, 0::2].clamp(0, d["width"])
        scaled[:, 1::2] = scaled[:, 1::2].clamp(0, d["height"])
        keep = (scaled[:, 2] > scaled[:, 0]) & (scaled[:, 3] > scaled[:, 1])
        assert torch.allclose(p.proposal_boxes.tensor, scaled[keep], atol=1e-4)
        assert torch.equal(p.objectness_logits, r.objectness_logits[keep])


def test_same_proposals_as_generalized_rcnn_with_the_same_weights(calibrated):
    model, detector = calibrated
    batch = scene_inputs(*SCENES)
    with torch.no_grad():
        out = model(batch)
        images = detector.preprocess_image(batch)
        theirs, _ = detector.proposal_generator(images, detector.backbone(images.tensor), None)
    for o, t in zip(out, theirs):
        assert torch.equal(o["proposals"].proposal_boxes.tensor, t.proposal_boxes.tensor)


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_prepare_model_fast_path(calibrated, mode):
    """``prepare_model`` handles a model without RoI heads; outputs match the plain model."""
    model, _ = calibrated
    cfg = _rpn_cfg(["MODEL.FAST_PATH", "True"])
    fast = build_model(cfg)
    fast.load_state_dict(model.state_dict())
    fast = prepare_model(fast, cfg, mode)
    assert type(fast) is ProposalNetwork
    batch = scene_inputs(*SCENES, with_gt=(mode == "train"))
    if mode == "train":
        model.train()
        try:
            torch.manual_seed(5)
            plain = model(batch)
            torch.manual_seed(5)
            losses = fast.train()(batch)
        finally:
            model.eval()
        for k in plain:
            assert losses[k].item() == pytest.approx(plain[k].item(), rel=1e-3), k
        return
    with torch.no_grad():
        plain, out = model(batch), fast(batch)
    for a, b in zip(plain, out):
        a, b = a["proposals"], b["proposals"]
        n = min(50, len(a))
        assert torch.allclose(a.proposal_boxes.tensor[:n], b.proposal_boxes.tensor[:n], atol=1e-2)


def test_amp_scope(calibrated):
    """Under a bfloat16 autocast, the default TEST.AMP.SCOPE ("roi_heads") keeps the whole
    ProposalNetwork in float32 (same proposals); "all" runs it in bfloat16."""
    model, _ = calibrated
    batch = scene_inputs(SCENES[0])
    with torch.no_grad():
        ref = model(batch)[0]["proposals"]
        try:
            for scope, same in (("roi_heads", True), ("all", False)):
                model.inference_amp_scope = scope
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    p = model(batch)[0]["proposals"]
                assert torch.equal(p.proposal_boxes.tensor, ref.proposal_boxes.tensor) == same
        finally:
            model.inference_amp_scope = "roi_heads"


def test_parts_constructor_and_errors():
    cfg = _rpn_cfg()
    parts = ProposalNetwork.from_config(cfg)
    model = ProposalNetwork(**parts)
    assert model.backbone is parts["backbone"]
    with pytest.raises(TypeError, match="not both"):
        ProposalNetwork(cfg, backbone=parts["backbone"])
    with pytest.raises(ValueError, match="needs a proposal generator"):
        build_model(_rpn_cfg(["MODEL.PROPOSAL_GENERATOR.NAME", "PrecomputedProposals"]))
    with pytest.raises(ValueError, match="MODEL.MASK_ON: a ProposalNetwork predicts proposals"):
        build_model(_rpn_cfg(["MODEL.MASK_ON", "True"]))
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        ProposalNetwork(**{**parts, "input_format": "YUV"})
    assert isinstance(build_model(narrow_c4_cfg()), GeneralizedRCNN)


# ---------------------------------------------------------------------- training and tools
@pytest.fixture
def shapes_rpn(tmp_path, unregister):
    """A tiny shapes dataset registered as rbtest_rpn_{train,val}; the ProposalNetwork config."""
    from resnet_backbones.data.shapes import generate_shapes_dataset

    root = tmp_path / "shapes"
    generate_shapes_dataset(
        root, num_train=4, num_val=2, seed=0, num_cls_train=0, num_cls_val=0, min_size=96,
        max_size=128,
    )  # fmt: skip
    for split in ("train", "val"):
        name = f"rbtest_rpn_{split}"
        unregister.append(name)
        if name in DatasetCatalog:
            DatasetCatalog.pop(name)
        register_coco_instances(
            name, {}, str(root / "annotations" / f"instances_{split}.json"), str(root / split)
        )
    return tiny_cfg(
        {
            "MODEL.META_ARCHITECTURE": "ProposalNetwork",
            "DATASETS.TRAIN": ("rbtest_rpn_train",),
            "DATASETS.TEST": ("rbtest_rpn_val",),
            "DATALOADER.NUM_WORKERS": 0,
            "SOLVER.IMS_PER_BATCH": 2,
            "SOLVER.MAX_ITER": 2,
            "SOLVER.WARMUP_ITERS": 1,
            "SOLVER.STEPS": (1,),
            "SOLVER.CHECKPOINT_PERIOD": 100,
            "TEST.EVAL_PERIOD": 2,
            "INPUT.MIN_SIZE_TRAIN": (96,),
            "INPUT.MIN_SIZE_TEST": 96,
            "OUTPUT_DIR": str(tmp_path / "out"),
        }
    )


def test_default_trainer_trains_and_evaluates_proposals(shapes_rpn):
    from resnet_backbones.engine import DefaultTrainer

    cfg = shapes_rpn
    saved = logging_state()  # the trainer sets up the package's loggers
    try:
        trainer = DefaultTrainer(cfg)
        assert type(trainer.model) is ProposalNetwork
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.resume_or_load(resume=False)
        results = trainer.train()
    finally:
        restore_logging_state(saved)
    assert list(results) == ["box_proposals"]
    assert list(results["box_proposals"]) == AR_KEYS
    assert 0 <= results["box_proposals"]["AR@100"] <= 100
    after = trainer.model.state_dict()
    assert not torch.equal(
        after["proposal_generator.rpn_head.conv.weight"],
        before["proposal_generator.rpn_head.conv.weight"],
    )
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    loaded = build_model(cfg)
    missing, unexpected = loaded.load_state_dict(
        torch.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), weights_only=False)["model"]
    )
    assert not missing and not unexpected


def test_predictor_returns_proposals_and_export_refuses(tmp_path, calibrated):
    from resnet_backbones.data.shapes import render_detection_image
    from resnet_backbones.engine import DefaultPredictor
    from resnet_backbones.export import export_model

    model, _ = calibrated
    weights = tmp_path / "rpn.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg = _rpn_cfg(["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", 128])
    image, _ = render_detection_image(3, 150, 200)
    out = DefaultPredictor(cfg)(image)
    assert list(out) == ["proposals"] and out["proposals"].image_size == (150, 200)
    assert len(out["proposals"]) > 0
    with pytest.raises(ValueError, match="ProposalNetwork has none.*--backbone-only"):
        export_model(cfg, "torchscript", str(tmp_path / "export"))

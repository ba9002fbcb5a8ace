"""RPN-only models and proposal recall against detectron2.

Runs only where detectron2 is installed (``/opt/d2env/bin/python -m pytest
tests/test_proposal_eval_detectron2_parity.py``):

* the same proposals through our ``COCOEvaluator`` and detectron2's give equal ``box_proposals``
  numbers (same names, same order, equal floats), and ``evaluate_box_proposals`` equals
  detectron2's ``_evaluate_box_proposals`` (recall per threshold) for every area range and limit;
* ``configs/rpn_R50_C4.yaml`` read by detectron2 equals its ``COCO-Detection/rpn_R_50_C4_1x.yaml``
  and read by us gives its values; state-dict names and shapes equal detectron2's
  ``ProposalNetwork``'s;
* the same calibrated random narrow R50-C4 RPN weights (loaded into detectron2's model with
  ``strict=True``) on the same images: >= 99% of detectron2's proposals have an IoU >= 0.99 match
  among ours, both reported at another size; each library's evaluator on its own proposals gives
  AR within 0.5 points; the training losses agree within 1% (same seed, same sampling).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")

from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog as D2DatasetCatalog  # noqa: E402
from detectron2.data import MetadataCatalog as D2MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator  # noqa: E402
from detectron2.evaluation.coco_evaluation import (  # noqa: E402
    _evaluate_box_proposals as d2_evaluate_box_proposals,
)
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import Boxes as D2Boxes  # noqa: E402
from detectron2.structures import Instances as D2Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from helpers import (  # noqa: E402
    both_configs,
    flat_config,
)
from test_proposal_network import AR_KEYS, proposal_dataset, register_json  # noqa: E402

from resnet_backbones import get_cfg  # noqa: E402
from resnet_backbones.evaluation import COCOEvaluator, evaluate_box_proposals  # noqa: E402
from resnet_backbones.evaluation.fast_coco_eval import quiet_coco  # noqa: E402
from resnet_backbones.evaluation.proposal_recall import AREA_RANGES  # noqa: E402
from resnet_backbones.modeling import build_model  # noqa: E402
from resnet_backbones.structures import Boxes, Instances, pairwise_iou  # noqa: E402
from resnet_backbones.utils.testing import (  # noqa: E402
    calibrate_random_detector_,
    detector_inputs,
    random_scene,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RPN_CONFIG = os.path.join(ROOT, "configs", "rpn_R50_C4.yaml")
# configs/rpn_R50_C4.yaml (12000 / 2000 test proposals) with an R50 at 1/8 width
NARROW_RPN = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP",
    "8",
]
SCENES = [(31, 224, 320), (32, 256, 192), (33, 192, 192)]
REPORT_SIZE = 1.5


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _instances(image_size, boxes, logits, d2: bool):
    inst = (D2Instances if d2 else Instances)(image_size)
    inst.proposal_boxes = (D2Boxes if d2 else Boxes)(torch.as_tensor(boxes).clone())
    inst.objectness_logits = torch.as_tensor(logits).clone()
    return inst


@pytest.fixture
def d2_unregister():
    names = []
    yield names
    for name in names:
        D2DatasetCatalog.pop(name, None)
        D2MetadataCatalog.pop(name, None)


def _register_both(name, gt, directory, unregister, d2_unregister):
    from detectron2.data.datasets import register_coco_instances as d2_register

    path = register_json(name, gt, directory)
    unregister.append(name)
    d2_register(name, {}, path, directory)
    d2_unregister.append(name)


# ------------------------------------------------------------------- the same proposals, evaluated
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluator_equals_detectron2s_on_the_same_proposals(
    seed, tmp_path, unregister, d2_unregister
):
    gt, proposals = proposal_dataset(seed)
    name = f"rbtest_d2_proposals_{seed}"
    _register_both(name, gt, str(tmp_path), unregister, d2_unregister)
    ours = COCOEvaluator(name, distributed=False)
    theirs = D2COCOEvaluator(name, distributed=False)
    for e in (ours, theirs):
        e.reset()
    for iid, boxes, logits in proposals:
        size = (480, 640)
        ours.process([{"image_id": iid}], [{"proposals": _instances(size, boxes, logits, False)}])
        theirs.process([{"image_id": iid}], [{"proposals": _instances(size, boxes, logits, True)}])
    ours_res, d2_res = ours.evaluate(), theirs.evaluate()
    print(f"seed {seed}: ours {ours_res['box_proposals']}\n        d2   {d2_res['box_proposals']}")
    assert list(ours_res) == list(d2_res) == ["box_proposals"]
    assert list(ours_res["box_proposals"]) == list(d2_res["box_proposals"]) == AR_KEYS
    for key in AR_KEYS:
        assert _same(ours_res["box_proposals"][key], d2_res["box_proposals"][key]), key
    assert 0 < d2_res["box_proposals"]["AR@100"] < d2_res["box_proposals"]["AR@1000"]


def test_recall_per_threshold_equals_detectron2s_for_every_area_and_limit():
    gt, proposals = proposal_dataset(2)
    coco = quiet_coco(gt)
    ours = [
        {"image_id": i, "proposals": _instances((480, 640), b, s, False)} for i, b, s in proposals
    ]
    d2 = [{"image_id": i, "proposals": _instances((480, 640), b, s, True)} for i, b, s in proposals]
    for area in AREA_RANGES:
        for limit in (None, 10, 100, 1000):
            a = evaluate_box_proposals(ours, coco, area=area, limit=limit)
            b = d2_evaluate_box_proposals(d2, coco, area=area, limit=limit)
            assert a["num_pos"] == b["num_pos"], (area, limit)
            assert torch.equal(a["gt_overlaps"], b["gt_overlaps"]), (area, limit)
            assert torch.equal(a["recalls"], b["recalls"]) or (
                a["num_pos"] == 0 and a["recalls"].isnan().all() and b["recalls"].isnan().all()
            ), (area, limit)


# ------------------------------------------------------------------------------------ configs
def test_config_equals_detectron2s():
    zoo = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
    if not os.path.isdir(zoo):
        zoo = os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), "configs")
    theirs = os.path.join(zoo, "COCO-Detection", "rpn_R_50_C4_1x.yaml")
    if not os.path.isfile(theirs):
        pytest.skip("this detectron2 installation has no model-zoo configs")
    ref = d2_get_cfg()
    ref.merge_from_file(theirs)
    d2_view = d2_get_cfg()
    d2_view.merge_from_file(RPN_CONFIG)
    ref_flat, d2_flat = flat_config(ref), flat_config(d2_view)
    assert os.path.basename(d2_flat.pop("MODEL.WEIGHTS")) == os.path.basename(
        ref_flat.pop("MODEL.WEIGHTS")
    )
    assert d2_flat == ref_flat
    cfg = get_cfg()
    cfg.merge_from_file(RPN_CONFIG)
    flat = flat_config(cfg)
    differ = {k: (flat[k], v) for k, v in ref_flat.items() if k in flat and flat[k] != v}
    assert not differ, f"keys whose value differs from detectron2's (ours, detectron2): {differ}"


def _both_configs(overrides):
    return both_configs(RPN_CONFIG, overrides)


def test_state_dict_names_and_shapes_equal_detectron2s():
    d2_cfg, cfg = _both_configs(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    d2_sd, sd = d2_build_model(d2_cfg).state_dict(), build_model(cfg).state_dict()
    assert type(build_model(cfg)).__name__ == "ProposalNetwork"
    assert sorted(sd) == sorted(d2_sd)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        k: tuple(v.shape) for k, v in d2_sd.items()
    }


# ------------------------------------------------------------------- the same weights and images
def _inputs(scenes, *, d2: bool, with_gt: bool = False):
    batch = detector_inputs(scenes, with_gt=with_gt, d2=d2)
    if not with_gt:
        for d in batch:
            h, w = d["image"].shape[-2:]
            d["height"], d["width"] = int(h * REPORT_SIZE), int(w * REPORT_SIZE)
    return batch


@pytest.fixture(scope="module")
def models():
    """(detectron2's ProposalNetwork, ours) with the same calibrated random weights; scenes."""
    torch.manual_seed(0)
    d2_cfg, cfg = _both_configs(NARROW_RPN)
    ours = build_model(cfg)
    d2_model = d2_build_model(d2_cfg)
    assert type(d2_model).__name__ == type(ours).__name__ == "ProposalNetwork"
    scenes = [random_scene(*s) for s in SCENES]
    calibrate_random_detector_(ours, _inputs(scenes, d2=False), seed=0)
    d2_model.load_state_dict(ours.state_dict(), strict=True)
    return d2_model.eval(), ours.eval(), scenes


def test_proposals_match(models):
    d2_model, ours, scenes = models
    with torch.no_grad():
        d2_out = d2_model(_inputs(scenes, d2=True))
        out = ours(_inputs(scenes, d2=False))
    for d2_r, r in zip(d2_out, out):
        d2_p, p = d2_r["proposals"], r["proposals"]
        assert p.image_size == d2_p.image_size
        assert (
            set(p.get_fields())
            == set(d2_p.get_fields())
            == {
                "proposal_boxes",
                "objectness_logits",
            }
        )
        iou = pairwise_iou(Boxes(d2_p.proposal_boxes.tensor), p.proposal_boxes)
        matched = (iou.max(dim=1).values >= 0.99).float().mean().item()
        print(
            f"image {p.image_size}: detectron2 {len(d2_p)} proposals, ours {len(p)}; "
            f"detectron2's matched at IoU >= 0.99: {matched:.4f}"
        )
        assert len(d2_p) > 200, "too few proposals for a meaningful comparison"
        assert matched >= 0.99
        assert abs(len(p) - len(d2_p)) <= 0.01 * len(d2_p)


def _scene_gt(scenes):
    """The scenes' objects as a COCO ground truth, in the reported (rescaled) coordinates."""
    images, anns = [], []
    for i, s in enumerate(scenes):
        h, w = s["image"].shape[-2:]
        images.append({"id": i + 1, "height": int(h * REPORT_SIZE), "width": int(w * REPORT_SIZE)})
        for box in (s["boxes"] * REPORT_SIZE).tolist():
            x0, y0, x1, y1 = box
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


def test_each_librarys_recall_of_its_own_proposals_agree(
    models, tmp_path, unregister, d2_unregister
):
    d2_model, ours, scenes = models
    name = "rbtest_d2_scene_proposals"
    _register_both(name, _scene_gt(scenes), str(tmp_path), unregister, d2_unregister)
    ours_eval, d2_eval = (
        COCOEvaluator(name, distributed=False),
        D2COCOEvaluator(name, distributed=False),
    )
    ids = [{"image_id": i + 1} for i in range(len(scenes))]
    with torch.no_grad():
        d2_eval.reset()
        d2_eval.process(ids, d2_model(_inputs(scenes, d2=True)))
        ours_eval.reset()
        ours_eval.process(ids, ours(_inputs(scenes, d2=False)))
    a, b = ours_eval.evaluate()["box_proposals"], d2_eval.evaluate()["box_proposals"]
    print(f"ours {a}\nd2   {b}")
    assert list(a) == list(b) == AR_KEYS
    for key in AR_KEYS:
        assert (math.isnan(a[key]) and math.isnan(b[key])) or abs(a[key] - b[key]) <= 0.5, key
    assert b["AR@1000"] > 0


def test_training_losses_match(models):
    d2_model, ours, scenes = models
    losses = {}
    for name, model, d2 in (("d2", d2_model, True), ("ours", ours, False)):
        model.train()
        try:
            torch.manual_seed(123)
            batch = _inputs(scenes, d2=d2, with_gt=True)
            if d2:
                with EventStorage():
                    out = model(batch)
            else:
                out = model(batch)
        finally:
            model.eval()
        losses[name] = {k: v.item() for k, v in out.items()}
    print(f"losses: detectron2 {losses['d2']}, ours {losses['ours']}")
    assert sorted(losses["ours"]) == sorted(losses["d2"]) == ["loss_rpn_cls", "loss_rpn_loc"]
    for k, v in losses["d2"].items():
        assert losses["ours"][k] == pytest.approx(v, rel=0.01), k

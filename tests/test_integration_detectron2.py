"""Our ResNet inside detectron2: registry, config keys, C4 head, checkpoints both ways, trainer.

Runs only where detectron2 is installed:
    /work/d2env/bin/python -m pytest tests/test_integration_detectron2.py -q
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

detectron2 = pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg as get_d2_cfg  # noqa: E402
from detectron2.data import DatasetCatalog as D2DatasetCatalog  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY  # noqa: E402
from detectron2.modeling import Backbone as D2Backbone  # noqa: E402
from detectron2.modeling import build_backbone as d2_build_backbone  # noqa: E402
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from helpers import randomize_norms  # noqa: E402

from resnet_backbones import build_model, create_model, get_cfg  # noqa: E402
from resnet_backbones.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from resnet_backbones.data.shapes import (  # noqa: E402
    SHAPES_CLASSES,
    generate_shapes_dataset,
    render_detection_image,
)
from resnet_backbones.integrations.detectron2 import (  # noqa: E402
    RB_RESNETS_KEYS,
    D2ResNet,
    RBRes5ROIHeads,
    add_rb_config,
    register_shapes,
    to_detectron2_config,
)
from resnet_backbones.modeling.backbone import ResNet  # noqa: E402
from resnet_backbones.structures import PolygonMasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NARROW = {  # ResNet-50 layout at 1/8 width (configs/shapes/faster_rcnn_tiny_C4.yaml): fast on a CPU
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
}


def our_cfg(narrow: bool = True, **overrides):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SHAPES_CLASSES)
    for key, value in {**(NARROW if narrow else {}), **overrides}.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_registration_and_config_keys():
    assert "build_rb_resnet_backbone" in BACKBONE_REGISTRY
    assert ROI_HEADS_REGISTRY.get("RBRes5ROIHeads") is RBRes5ROIHeads
    cfg = get_d2_cfg()
    assert not any(k in cfg.MODEL.RESNETS for k in RB_RESNETS_KEYS)
    add_rb_config(cfg)
    ours = get_cfg().MODEL.RESNETS
    assert {k: cfg.MODEL.RESNETS[k] for k in RB_RESNETS_KEYS} == {
        k: ours[k] for k in RB_RESNETS_KEYS
    }
    assert set(RB_RESNETS_KEYS) == {
        "SHORTCUT",
        "PREACT",
        "CHANNELS_LAST",
        "ZERO_INIT_RESIDUAL",
        "RES5_HEAD_BLOCK",
    }
    cfg.MODEL.RESNETS.SHORTCUT = "C"
    add_rb_config(cfg)  # idempotent: keeps values already set
    assert cfg.MODEL.RESNETS.SHORTCUT == "C"
    cfg.merge_from_file(str(ROOT / "configs" / "detectron2" / "faster_rcnn_rb_R50_C4_shapes.yaml"))
    assert (
        cfg.MODEL.BACKBONE.NAME == "build_rb_resnet_backbone"
        and cfg.MODEL.ROI_HEADS.NAME == "RBRes5ROIHeads"
    )
    # Without add_rb_config our builder explains what is missing.
    plain = get_d2_cfg()
    plain.MODEL.BACKBONE.NAME = "build_rb_resnet_backbone"
    with pytest.raises(KeyError, match="add_rb_config"):
        d2_build_backbone(plain)


def test_backbone_is_a_detectron2_backbone_with_our_options():
    cfg = add_rb_config(get_d2_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_rb_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.SHORTCUT = "C"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
    backbone = d2_build_backbone(cfg)
    assert (
        isinstance(backbone, D2Backbone)
        and isinstance(backbone, ResNet)
        and isinstance(backbone, D2ResNet)
    )
    assert backbone.res2[0].shortcut is not None  # option C: projection in every block
    shapes = backbone.output_shape()
    assert type(shapes["res4"]).__module__.startswith("detectron2")
    assert (
        shapes["res3"].channels,
        shapes["res3"].stride,
        shapes["res4"].channels,
        shapes["res4"].stride,
    ) == (128, 8, 256, 16)
    # Same network, names and outputs as our own builder.
    ours = create_model(
        "resnet18",
        num_classes=None,
        out_features=["res3", "res4"],
        norm="FrozenBN",
        shortcut="C",
        freeze_at=2,
        stride_in_1x1=True,
    )
    assert list(ours.state_dict()) == list(backbone.state_dict())
    ours.load_state_dict(backbone.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(ours(x)["res4"], backbone(x)["res4"])


@pytest.mark.parametrize("rb_modules", [False, True], ids=["detectron2-modules", "our-modules"])
def test_exact_state_dict_round_trip_with_our_detector(tmp_path, rb_modules):
    torch.manual_seed(0)
    ours = build_model(our_cfg())
    randomize_norms(ours)
    original = {k: v.clone() for k, v in ours.state_dict().items()}
    d2_cfg = to_detectron2_config(our_cfg(), use_rb_modules=rb_modules)
    d2 = d2_build_model(d2_cfg)
    assert type(d2.backbone).__name__ == ("D2ResNet" if rb_modules else "ResNet")
    d2_state = d2.state_dict()
    assert set(d2_state) == set(original) and len(original) == 275
    assert all(d2_state[k].shape == original[k].shape for k in original)

    # ours -> detectron2 (strict) -> ours (strict): identical keys and tensors.
    d2.load_state_dict(ours.state_dict(), strict=True)
    back = build_model(our_cfg())
    back.load_state_dict(d2.state_dict(), strict=True)
    assert list(back.state_dict()) == list(original)
    assert all(torch.equal(back.state_dict()[k], original[k]) for k in original)

    # Same weights, same detections.
    ours.eval(), d2.eval()
    image, _ = render_detection_image(0, 96, 128)
    inputs = [
        {"image": torch.from_numpy(image).permute(2, 0, 1).float(), "height": 96, "width": 128}
    ]
    with torch.no_grad():
        a, b = ours(inputs)[0]["instances"], d2(inputs)[0]["instances"]
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)

    # Checkpoint files: ours (.pkl, detectron2 model-zoo layout) -> detectron2's checkpointer ...
    save_checkpoint(tmp_path / "ours.pkl", original)
    fresh_d2 = d2_build_model(d2_cfg)
    DetectionCheckpointer(fresh_d2).load(str(tmp_path / "ours.pkl"))
    assert all(torch.equal(fresh_d2.state_dict()[k], original[k]) for k in original)
    # ... and detectron2's checkpointer (.pth) -> our loader (strict, full report).
    DetectionCheckpointer(fresh_d2, save_dir=str(tmp_path)).save("d2_model")
    fresh_ours = build_model(our_cfg())
    report = load_checkpoint(fresh_ours, tmp_path / "d2_model.pth")
    assert report.ok and len(report.matched) == len(original)
    assert all(torch.equal(fresh_ours.state_dict()[k], original[k]) for k in original)


def test_rb_res5_roi_heads_with_mask_on_equal_our_mask_rcnn():
    """``RBRes5ROIHeads`` (our res5 blocks inside detectron2's C4 head) with ``MODEL.MASK_ON``:
    detectron2 builds its mask branch on our res5, the state dict equals our Mask R-CNN's, and
    the same weights give the same masks at inference and the same losses in training."""
    from detectron2.structures import PolygonMasks as D2PolygonMasks
    from detectron2.utils.events import EventStorage

    from resnet_backbones.utils.testing import (
        calibrate_random_detector_,
        detector_inputs,
        random_scene,
    )

    cfg = our_cfg(**{"MODEL.MASK_ON": True})
    torch.manual_seed(0)
    ours = build_model(cfg)
    scenes = [random_scene(s, 128, 160) for s in (1, 2)]
    calibrate_random_detector_(ours, detector_inputs(scenes), seed=0)
    d2 = d2_build_model(to_detectron2_config(cfg, use_rb_modules=True))
    assert type(d2.roi_heads).__name__ == "RBRes5ROIHeads" and d2.roi_heads.mask_on
    d2.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), d2.eval()
    with torch.no_grad():
        a = ours(detector_inputs(scenes))
        b = d2(detector_inputs(scenes, d2=True))
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) > 0 and x.pred_masks.shape == y.pred_masks.shape
        assert torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor)
        assert torch.equal(x.pred_masks, y.pred_masks)
    losses = {}
    for name, model, d2_inputs in (("ours", ours, False), ("d2", d2, True)):
        batch = detector_inputs(scenes, with_gt=True, d2=d2_inputs)
        for d in batch:
            boxes = d["instances"].gt_boxes.tensor.tolist()
            polygons = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes]
            d["instances"].gt_masks = (D2PolygonMasks if d2_inputs else PolygonMasks)(polygons)
        model.train()
        torch.manual_seed(5)
        with EventStorage():
            losses[name] = {k: float(v) for k, v in model(batch).items()}
    assert "loss_mask" in losses["ours"]
    assert losses["ours"] == pytest.approx(losses["d2"], rel=1e-4)


def test_res5_head_with_our_blocks_preact():
    cfg = to_detectron2_config(our_cfg(narrow=False), use_rb_modules=True)
    cfg.MODEL.RESNETS.PREACT = True
    model = d2_build_model(cfg).eval()
    res5 = model.roi_heads.res5
    assert type(res5[0]).__name__ == "PreActBottleneckBlock" and res5[0].preact_shortcut
    assert res5[0].conv1.stride == (2, 2)  # stride in the 1x1, detectron2's default
    assert "roi_heads.res5.post_norm.weight" in model.state_dict()
    # An ImageNet pre-activation ResNet-50 of ours fills backbone and head, post_norm included.
    imagenet = create_model("preact_resnet50", stride_in_1x1=True, norm="FrozenBN").state_dict()
    report = load_checkpoint(model, imagenet, strict=False, drop_classifier=True)
    assert {k.rsplit(".", 2)[0] for k in report.missing} == {
        "proposal_generator.rpn_head",
        "roi_heads.box_predictor",
    }
    assert not report.unexpected and not report.shape_mismatch
    assert torch.equal(
        model.state_dict()["roi_heads.res5.post_norm.weight"], imagenet["post_norm.weight"]
    )
    with torch.no_grad():
        out = model([{"image": torch.zeros(3, 64, 64)}])
    assert "instances" in out[0]
    # Shortcut option A reaches the head too.
    cfg.MODEL.RESNETS.PREACT = False
    cfg.MODEL.RESNETS.SHORTCUT = "A"
    head = d2_build_model(cfg).roi_heads.res5
    assert type(head[0].shortcut).__name__ == "PadShortcut" and head[1].shortcut is None


def test_res5_head_basic_blocks_match_ours():
    """RES5_HEAD_BLOCK basic: detectron2 with our modules builds our ResNet-18 C4 head, and an
    ImageNet ResNet-18 fills its backbone and head."""
    opts = {
        "MODEL.RESNETS.DEPTH": 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
        "MODEL.RESNETS.RES5_HEAD_BLOCK": "basic",
    }
    ours = build_model(our_cfg(narrow=False, **opts))
    model = d2_build_model(to_detectron2_config(our_cfg(narrow=False, **opts), use_rb_modules=True))
    res5 = model.roi_heads.res5
    assert [type(b).__name__ for b in res5] == ["BasicBlock", "BasicBlock"] and res5[
        0
    ].conv1.stride == (2, 2)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    imagenet = create_model("resnet18", norm="FrozenBN").state_dict()
    report = load_checkpoint(model, imagenet, strict=False, drop_classifier=True)
    assert {k.rsplit(".", 2)[0] for k in report.missing} == {
        "proposal_generator.rpn_head",
        "roi_heads.box_predictor",
    }
    assert not report.unexpected and not report.shape_mismatch


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_shapes_dataset(
        root / "shapes",
        num_train=4,
        num_val=2,
        num_cls_train=0,
        num_cls_val=0,
        min_size=64,
        max_size=96,
    )
    return root


def test_default_trainer_and_coco_evaluator_on_shapes(shapes_root, tmp_path, monkeypatch, capsys):
    """docs/snippets/detectron2_train_shapes.py, run as written, with small-model overrides."""
    for name in ("shapes_train", "shapes_val"):
        if name in D2DatasetCatalog.list():
            D2DatasetCatalog.remove(name)
    from detectron2.data import MetadataCatalog

    for name in ("shapes_train", "shapes_val"):
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    monkeypatch.setenv("RB_DATASETS", str(shapes_root))
    monkeypatch.chdir(ROOT)  # the snippet reads configs/detectron2/... relative to the repository
    out_dir = tmp_path / "out"
    overrides = [str(v) for kv in NARROW.items() for v in kv] + [
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "96",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "96",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
        "OUTPUT_DIR",
        str(out_dir),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",  # an untrained model: keep every detection
    ]
    monkeypatch.setattr(sys, "argv", ["detectron2_train_shapes.py"] + overrides)
    namespace = runpy.run_path(
        str(ROOT / "docs" / "snippets" / "detectron2_train_shapes.py"), run_name="__main__"
    )
    trainer = namespace["trainer"]
    assert trainer.iter == trainer.max_iter == 3  # MAX_ITER 3 from the config
    assert type(trainer.model.backbone).__name__ == "D2ResNet"
    assert type(trainer.model.roi_heads).__name__ == "RBRes5ROIHeads"
    results = namespace["results"]
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert 0.0 <= results["bbox"]["AP50"] <= 100.0  # COCOeval ran on real detections
    assert (out_dir / "coco_instances_results.json").is_file()
    assert register_shapes(str(shapes_root)) == [
        "shapes_train",
        "shapes_val",
    ]  # already there: no-op

    # detectron2's final checkpoint loads into our detector, tensor for tensor.
    cfg = our_cfg(**{"MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.RESNETS.NORM": "BN"})
    ours = build_model(cfg)
    report = load_checkpoint(ours, out_dir / "model_final.pth")
    assert report.ok
    trained = trainer.model.state_dict()
    assert set(trained) == set(ours.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in trained.items())


def test_docs_snippet_detectron2_backbone(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "docs" / "snippets" / "detectron2_backbone.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "['proposal_generator.rpn_head', 'roi_heads.box_predictor']" in out

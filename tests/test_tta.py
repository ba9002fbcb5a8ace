"""Test-time augmentation (``TEST.AUG``): ``GeneralizedRCNNWithTTA``, ``DefaultPredictor(tta=...)``
and ``tools/train_net.py``'s ``_TTA`` evaluation.

Narrow random C4 detectors (calibrated, so that scores and boxes spread out) on small synthetic
scenes; the images are uint8, as the data loader gives them.
"""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from helpers import (
    calibrated_narrow_c4,
    logging_state,
    narrow_c4_cfg,
    restore_logging_state,
    scene_inputs,
    tiny_cfg,
)

from resnet_backbones import DefaultPredictor
from resnet_backbones.data.transforms import HFlipTransform, ResizeTransform, TransformList
from resnet_backbones.modeling import (
    DatasetMapperTTA,
    GeneralizedRCNNWithTTA,
    build_model,
    prepare_model,
)
from resnet_backbones.modeling.test_time_augmentation import inverse_transform
from resnet_backbones.structures import Boxes, pairwise_iou
from resnet_backbones.utils.testing import calibrate_random_detector_

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = (11, 160, 224)  # seed, height, width


def _uint8(batch):
    for d in batch:
        d["image"] = d["image"].clamp(0, 255).round().to(torch.uint8)
    return batch


def _aug(min_sizes, flip, max_size=1000, extra=()):
    return narrow_c4_cfg(
        [
            "TEST.AUG.MIN_SIZES",
            str(tuple(min_sizes)),
            "TEST.AUG.MAX_SIZE",
            max_size,
            "TEST.AUG.FLIP",
            flip,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def model():
    return calibrated_narrow_c4(_uint8(scene_inputs(SCENE, (12, 192, 144))))


def _input(report_size=None):
    d = _uint8(scene_inputs(SCENE))[0]
    if report_size is not None:  # the test loader's input: resized, with the original size
        d["height"], d["width"] = int(SCENE[1] * report_size), int(SCENE[2] * report_size)
    return d


def _backbone_calls(model):
    """A list that records the batch shape of every backbone call, and the hook handle."""
    calls = []
    handle = model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    return calls, handle


def _assert_same(a, b, atol=1e-3, score_atol=1e-6):
    assert a.image_size == b.image_size
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=score_atol, rtol=0)
    assert torch.equal(a.pred_classes, b.pred_classes)


# ------------------------------------------------------------------------------ transforms
def test_mapper_sizes_order_and_inverse_maps_boxes_back():
    image = torch.zeros(3, 160, 224, dtype=torch.uint8)
    out = DatasetMapperTTA(min_sizes=[80, 320], max_size=400, flip=True)(
        {"image": image, "height": 320, "width": 448}
    )
    # each size, then its flip; 320 is capped by max_size (448 * 320 / 320 > 400)
    assert [tuple(d["image"].shape[1:]) for d in out] == [(80, 112)] * 2 + [(286, 400)] * 2
    assert [isinstance(d["transforms"].transforms[-1], HFlipTransform) for d in out] == [
        False,
        True,
        False,
        True,
    ]
    boxes = np.array([[10.0, 20.0, 100.0, 300.0], [0.0, 0.0, 448.0, 320.0]])
    for d in out:
        tfm = d["transforms"]
        # from the original 320x448 image (the input was resized to 160x224 before)
        assert isinstance(tfm.transforms[0], ResizeTransform)
        np.testing.assert_allclose(inverse_transform(tfm).apply_box(tfm.apply_box(boxes)), boxes)
    flip = TransformList([HFlipTransform(224)])
    np.testing.assert_allclose(flip.apply_box(boxes[:1]), [[124.0, 20.0, 214.0, 300.0]])


def test_mapper_reads_the_config_and_refuses_empty_sizes():
    mapper = DatasetMapperTTA(_aug((100, 200), False, max_size=333))
    assert (mapper.min_sizes, mapper.max_size, mapper.flip) == ([100, 200], 333, False)
    with pytest.raises(ValueError, match="MIN_SIZES"):
        DatasetMapperTTA(min_sizes=[], max_size=100, flip=True)


# ------------------------------------------------------------------------------ detections
def test_single_size_without_flip_equals_the_plain_model(model):
    """One augmentation that reproduces the test loader's input: the plain model's detections,
    mapped back to the original size (1.5x) the same way."""
    inputs = _input(report_size=1.5)
    with torch.no_grad():
        plain = model([inputs])[0]["instances"]
    tta = GeneralizedRCNNWithTTA(_aug((160,), False), model)([inputs])[0]["instances"]
    assert plain.image_size == (240, 336)
    _assert_same(tta, plain)


def test_flipped_detections_map_back_exactly(model):
    """Only the flipped image: the plain model's detections on the flipped image, mirrored."""
    inputs = _input()
    flipped = dict(inputs, image=inputs["image"].flip(dims=[2]))
    with torch.no_grad():
        ref = model([flipped])[0]["instances"]
    w = SCENE[2]
    x0, y0, x1, y1 = ref.pred_boxes.tensor.unbind(1)
    ref.pred_boxes = Boxes(torch.stack([w - x1, y0, w - x0, y1], dim=1))

    def only_flipped(d):
        return DatasetMapperTTA(min_sizes=[160], max_size=1000, flip=True)(d)[1:]

    cfg = _aug((160,), True)
    tta = GeneralizedRCNNWithTTA(cfg, model, tta_mapper=only_flipped)([inputs])[0]["instances"]
    _assert_same(tta, ref, atol=1e-4)


def test_merge_keeps_detections_per_image_after_per_class_nms(model):
    cfg = _aug((128, 192), True, extra=["TEST.DETECTIONS_PER_IMAGE", 100])
    calls, handle = _backbone_calls(model)
    try:
        out = GeneralizedRCNNWithTTA(cfg, model)([_input()])[0]["instances"]
    finally:
        handle.remove()
    # two sizes, each batched with its flip (same shape, no padding): two backbone passes
    assert calls == [(2, 3, 128, 179), (2, 3, 192, 269)]
    assert out.image_size == SCENE[1:]
    assert len(out) == 100  # the union holds far more: DETECTIONS_PER_IMAGE cuts it
    assert torch.all(out.scores[:-1] >= out.scores[1:])
    iou = pairwise_iou(out.pred_boxes, out.pred_boxes)
    same_class = out.pred_classes[:, None] == out.pred_classes[None, :]
    iou[~same_class | torch.eye(len(out), dtype=torch.bool)] = 0
    assert iou.max() <= cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST + 1e-6
    assert out.pred_boxes.tensor[:, 2].max() <= SCENE[2] and out.pred_boxes.tensor.min() >= 0

    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    few = GeneralizedRCNNWithTTA(cfg, model)([_input()])[0]["instances"]
    _assert_same(few, out[:7], atol=0)


def test_sizes_capped_to_the_same_shape_run_once(model):
    """MAX_SIZE makes 160 and 200 the same 160x224 resize: one backbone pass (with its flip),
    and the detections of the single size."""
    calls, handle = _backbone_calls(model)
    try:
        twice = GeneralizedRCNNWithTTA(_aug((160, 200), True, max_size=224), model)([_input()])
    finally:
        handle.remove()
    assert calls == [(2, 3, 160, 224)]
    once = GeneralizedRCNNWithTTA(_aug((160,), True), model)([_input()])
    _assert_same(twice[0]["instances"], once[0]["instances"], atol=0)


def test_fast_path_and_amp_apply_inside_each_pass(model):
    """A model prepared for inference (fast path) gives the unprepared model's TTA detections;
    with TEST.AMP the RoI heads run under autocast in every pass."""
    cfg = _aug((128, 160), True)
    ref = GeneralizedRCNNWithTTA(cfg, model)([_input()])[0]["instances"]
    fast_model = calibrated_narrow_c4(_uint8(scene_inputs(SCENE, (12, 192, 144))))
    fast_model = prepare_model(fast_model, narrow_c4_cfg(), "inference")
    fast = GeneralizedRCNNWithTTA(cfg, fast_model)([_input()])[0]["instances"]
    _assert_same(fast, ref, atol=1e-2, score_atol=1e-3)

    amp = _aug((128, 160), True, extra=["TEST.AMP.ENABLED", True, "TEST.AMP.DTYPE", "bfloat16"])
    seen = []
    handle = fast_model.roi_heads.box_predictor.register_forward_pre_hook(
        lambda m, i: seen.append(torch.is_autocast_enabled("cpu"))
    )
    try:
        out = GeneralizedRCNNWithTTA(amp, fast_model)([_input()])[0]["instances"]
    finally:
        handle.remove()
    assert seen == [True, True] and len(out) > 0
    assert out.scores.dtype == torch.float32 and out.pred_boxes.tensor.dtype == torch.float32


def test_refuses_what_it_cannot_do(model):
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        GeneralizedRCNNWithTTA(_aug((160,), False), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="LOAD_PROPOSALS"):
        GeneralizedRCNNWithTTA(_aug((160,), False, extra=["MODEL.LOAD_PROPOSALS", True]), model)


# ----------------------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def mask_model():
    torch.manual_seed(0)
    m = build_model(narrow_c4_cfg(["MODEL.MASK_ON", True]))
    calibrate_random_detector_(m, _uint8(scene_inputs(SCENE, (12, 192, 144))), seed=0)
    with torch.no_grad():  # mask logits of O(1)
        w = m.roi_heads.mask_head.predictor.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return m.eval()


def _mask_cfg(min_sizes, flip):
    return _aug(min_sizes, flip, extra=["MODEL.MASK_ON", True])


def test_masks_single_size_equal_the_plain_model(mask_model):
    inputs = _input(report_size=1.5)
    with torch.no_grad():
        plain = mask_model([inputs])[0]["instances"]
    tta = GeneralizedRCNNWithTTA(_mask_cfg((160,), False), mask_model)([inputs])[0]["instances"]
    _assert_same(tta, plain)
    assert tta.pred_masks.dtype == torch.bool and tta.pred_masks.shape == (len(tta), 240, 336)
    assert torch.equal(tta.pred_masks, plain.pred_masks)
    assert mask_model.roi_heads.mask_on  # switched back on after the box pass


def test_masks_are_averaged_without_a_second_backbone_pass(mask_model):
    cfg = _mask_cfg((128, 160), True)
    tta = GeneralizedRCNNWithTTA(cfg, mask_model)
    calls, handle = _backbone_calls(mask_model)
    seen = []
    avg = tta._average_masks
    tta._average_masks = lambda *a: seen.append(avg(*a)) or seen[-1]
    try:
        out = tta([_input()])[0]["instances"]
    finally:
        handle.remove()
    assert len(calls) == 2  # the box passes only: the mask head reads their features
    assert out.pred_masks.dtype == torch.bool and out.pred_masks.shape == (len(out), *SCENE[1:])
    probs = seen[0]  # (N, 1, 14, 14) mean probabilities, before pasting
    assert probs.dtype == torch.float32 and probs.shape[1:] == (1, 14, 14)
    assert probs.min() >= 0 and probs.max() <= 1 and out.pred_masks.any()

    # the same average from detectron2's second full pass per augmented image
    inputs = tta._read(_input())
    augmented = tta._augment(inputs)
    with torch.no_grad(), tta._masks_off():
        outputs, _ = tta._detect(augmented, tta._batches(augmented), False)
    merged = tta._merge_detections(augmented, outputs, SCENE[1:])
    ref = []
    with torch.no_grad():
        for aug in augmented:
            boxes = torch.as_tensor(
                aug.tfm.apply_box(merged.pred_boxes.tensor.numpy()), dtype=torch.float32
            )
            inst = type(merged)(tuple(aug.inputs["image"].shape[1:]), **merged.get_fields())
            inst.pred_boxes = Boxes(boxes)
            r = mask_model.inference([aug.inputs], [inst], do_postprocess=False)[0].pred_masks
            flipped = isinstance(aug.tfm.transforms[-1], HFlipTransform)
            ref.append(r.flip(dims=[3]) if flipped else r)
    torch.testing.assert_close(probs, torch.stack(ref).mean(0), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ predictor
FEW_PROPOSALS = {"MODEL.RPN.POST_NMS_TOPK_TEST": 32}  # tiny_cfg: MIN_SIZE_TEST 160, MAX 256


def test_predictor_follows_test_aug_enabled():
    image = np.random.default_rng(0).integers(0, 256, size=(300, 450, 3), dtype=np.uint8)
    torch.manual_seed(0)
    plain = DefaultPredictor(tiny_cfg(FEW_PROPOSALS, {"TEST.AUG.ENABLED": True}), tta=False)
    assert plain.tta_model is None
    same_size = {"TEST.AUG.ENABLED": True, "TEST.AUG.MIN_SIZES": (160,), "TEST.AUG.FLIP": False}
    cfg = tiny_cfg(FEW_PROPOSALS, same_size, {"TEST.AUG.MAX_SIZE": 256})
    torch.manual_seed(0)
    pred = DefaultPredictor(cfg)  # tta=None: follows TEST.AUG.ENABLED
    assert isinstance(pred.tta_model, GeneralizedRCNNWithTTA)
    a, b = plain(image)["instances"], pred(image)["instances"]
    assert b.image_size == (300, 450)
    if len(a):  # random weights: compare what there is
        _assert_same(b, a)
    assert DefaultPredictor(tiny_cfg(FEW_PROPOSALS)).tta_model is None  # default: off


# ------------------------------------------------------------------------------ train_net
TRAIN_NET_CONFIG = """
_BASE_: "{repo}/configs/shapes/faster_rcnn_tiny_C4.yaml"
MODEL:
  WEIGHTS: "{weights}"
  RPN:
    POST_NMS_TOPK_TEST: 32
  ROI_HEADS:
    SCORE_THRESH_TEST: 0.0
INPUT:
  MIN_SIZE_TRAIN: (96,)
  MAX_SIZE_TRAIN: 96
  MIN_SIZE_TEST: 96
  MAX_SIZE_TEST: 96
DATASETS:
  TRAIN: ("rbtta_shapes_train",)
  TEST: ("rbtta_shapes_val",)
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  IMS_PER_BATCH: 2
  MAX_ITER: 1
  WARMUP_ITERS: 0
  CHECKPOINT_PERIOD: 100
TEST:
  EVAL_PERIOD: 0
  DETECTIONS_PER_IMAGE: 20
  AUG:
    ENABLED: True
    MIN_SIZES: (80, 112)
    MAX_SIZE: 200
"""


@pytest.fixture(scope="module")
def train_net_env(tmp_path_factory):
    from resnet_backbones.config import get_cfg
    from resnet_backbones.data import DatasetCatalog
    from resnet_backbones.data.datasets import register_coco_instances
    from resnet_backbones.data.shapes import SHAPES_CLASSES, generate_shapes_dataset

    saved = logging_state()
    root = tmp_path_factory.mktemp("rbtta")
    shapes = root / "shapes"
    generate_shapes_dataset(
        shapes,
        num_train=2,
        num_val=2,
        seed=0,
        num_cls_train=0,
        num_cls_val=0,
        min_size=96,
        max_size=128,
    )
    meta = {
        "thing_classes": list(SHAPES_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPES_CLASSES))},
    }
    for split in ("train", "val"):
        name = f"rbtta_shapes_{split}"
        if name not in DatasetCatalog:
            register_coco_instances(
                name,
                meta,
                str(shapes / "annotations" / f"instances_{split}.json"),
                str(shapes / split),
            )
    weights, cfg_file = root / "init.pth", root / "tta.yaml"
    cfg_file.write_text(TRAIN_NET_CONFIG.format(repo=REPO, weights=weights))
    cfg = get_cfg()
    cfg.merge_from_file(str(cfg_file))
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    spec = importlib.util.spec_from_file_location(
        "rb_train_net_tta", os.path.join(REPO, "tools", "train_net.py")
    )
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    yield {"cfg": str(cfg_file), "train_net": train_net}
    restore_logging_state(saved)


def _run(env, out, *extra, opts=()):
    tn = env["train_net"]
    argv = ["--config-file", env["cfg"], *extra, "OUTPUT_DIR", str(out), *opts]
    return tn.main(tn.default_argument_parser().parse_args(argv))


def test_train_net_eval_only_reports_tta_results(train_net_env, tmp_path):
    res = _run(train_net_env, tmp_path, "--eval-only")
    assert list(res) == ["bbox", "bbox_TTA"]
    assert res["bbox_TTA"].keys() == res["bbox"].keys()
    assert (tmp_path / "inference_TTA" / "coco_instances_results.json").is_file()
    off = _run(train_net_env, tmp_path / "off", "--eval-only", opts=("TEST.AUG.ENABLED", "False"))
    assert list(off) == ["bbox"]
    assert json.dumps(off["bbox"]) == json.dumps(res["bbox"])  # NaN-aware equality


def test_train_net_evaluates_with_tta_after_training(train_net_env, tmp_path):
    res = _run(train_net_env, tmp_path)
    assert list(res) == ["bbox", "bbox_TTA"]
    lines = [json.loads(t) for t in (tmp_path / "metrics.json").read_text().splitlines()]
    assert any("bbox_TTA/AP" in line for line in lines)


def test_train_net_refuses_tta_for_other_architectures(train_net_env, tmp_path, capsys):
    code = train_net_env["train_net"].invoke_main(
        [
            "--config-file",
            train_net_env["cfg"],
            "--eval-only",
            "OUTPUT_DIR",
            str(tmp_path / "never"),
            "MODEL.META_ARCHITECTURE",
            "ProposalNetwork",
        ]
    )
    assert code == 2 and "TEST.AUG.ENABLED" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()

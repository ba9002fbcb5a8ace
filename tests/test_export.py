"""TorchScript and ONNX export of the backbone and of the C4 detector's inference path."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_C4, randomize_norms, tiny_cfg

from resnet_backbones import build_model
from resnet_backbones.export import (
    BackboneExportWrapper,
    DetectorExportWrapper,
    example_image,
    export_model,
    export_onnx,
    export_torchscript,
)
from resnet_backbones.modeling import build_backbone, prepare_model

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 128


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    # non-trivial FrozenBN statistics and affine values, so normalization matters
    return randomize_norms(build_model(tiny_cfg()).eval())


def images(n=3):
    return [example_image(H, W, seed=s) for s in range(n)]


def eager_detections(model, image):
    with torch.no_grad():
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def test_detector_wrapper_equals_eager_inference(detector):
    wrapper = DetectorExportWrapper(detector).eval()
    for image in images():
        with torch.no_grad():
            got = wrapper(image)
        for a, b in zip(got, eager_detections(detector, image)):
            assert torch.equal(a, b)


def test_detector_torchscript_generalizes_to_other_images(detector, tmp_path):
    wrapper = DetectorExportWrapper(detector).eval()
    traced = export_torchscript(wrapper, (images(1)[0],), str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    counts = set()
    for image in images(3)[1:] + [torch.zeros(3, H, W)]:  # not the traced image
        ref = eager_detections(detector, image)
        with torch.no_grad():
            for out in (traced(image), loaded(image)):
                assert len(out) == 3 and out[2].dtype == torch.int64
                for a, b in zip(out, ref):
                    assert torch.equal(a, b)
        counts.add(len(ref[0]))
    # Nothing detected at all: the same graph returns empty outputs.
    cls_bias = detector.roi_heads.box_predictor.cls_score.bias
    saved = cls_bias.detach().clone()
    try:
        with torch.no_grad():
            cls_bias[-1] = 1e4  # background wins everywhere
            boxes, scores, classes = traced(images(1)[0])  # shares the parameters
            assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
            assert len(eager_detections(detector, images(1)[0])[0]) == 0
    finally:
        with torch.no_grad():
            cls_bias.copy_(saved)


def test_detector_onnx_matches_eager(detector, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    wrapper = DetectorExportWrapper(detector).eval()
    path = export_onnx(
        wrapper,
        (images(1)[0],),
        str(tmp_path / "model.onnx"),
        input_names=["image"],
        output_names=["boxes", "scores", "classes"],
        dynamic_axes={n: {0: "detections"} for n in ("boxes", "scores", "classes")},
    )
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "classes"]
    for image in images(3):
        boxes, scores, classes = session.run(None, {"image": image.numpy()})
        ref = eager_detections(detector, image)
        assert boxes.shape == tuple(ref[0].shape) and len(scores) == len(ref[1])
        torch.testing.assert_close(torch.from_numpy(boxes), ref[0], rtol=0, atol=1e-2)
        torch.testing.assert_close(torch.from_numpy(scores), ref[1], rtol=0, atol=1e-4)
        assert torch.equal(torch.from_numpy(classes), ref[2])


def test_backbone_export_any_size(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg()).eval()
    wrapper = BackboneExportWrapper(backbone)
    assert wrapper.output_names == ["res4"]
    x = torch.randn(1, 3, 64, 64)
    traced = export_torchscript(wrapper, (x,), str(tmp_path / "backbone.ts"))
    y = torch.randn(2, 3, 80, 112)  # other batch and size
    with torch.no_grad():
        assert torch.equal(traced(y)[0], backbone(y)["res4"])
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(
        wrapper,
        (x,),
        str(tmp_path / "backbone.onnx"),
        input_names=["images"],
        output_names=["res4"],
        dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}},
    )
    (out,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"images": y.numpy()}
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), backbone(y)["res4"], rtol=1e-3, atol=1e-3)


def test_export_model_with_weights_writes_info(tmp_path):
    from resnet_backbones.checkpoint import save_checkpoint

    torch.manual_seed(1)
    model = build_model(tiny_cfg())
    weights = tmp_path / "model.pth"
    save_checkpoint(weights, model.state_dict())
    cfg = tiny_cfg(MODEL__WEIGHTS=str(weights))
    result = export_model(cfg, "torchscript", str(tmp_path / "det"), input_size=(H, W))
    assert result.max_abs_diff == 0.0 and result.what == "detector"
    info = json.loads((tmp_path / "det" / "export_info.json").read_text())
    assert info["output_names"] == ["boxes", "scores", "classes"] and info["input_shape"] == [
        3,
        H,
        W,
    ]
    assert (tmp_path / "det" / "config.yaml").is_file()
    loaded = torch.jit.load(result.path)
    model.eval()
    # what export traced: the model prepared for export (MODEL.FAST_PATH: BN folded), exactly;
    # the plain model up to float rounding
    prepared = prepare_model(copy.deepcopy(model), cfg, "export")
    image = example_image(H, W, seed=5)
    with torch.no_grad():
        exported = loaded(image)
        for a, b in zip(exported, eager_detections(prepared, image)):
            assert torch.equal(a, b)
        for a, b in zip(exported, eager_detections(model, image)):
            assert a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-3)
    # The backbone alone from the same detector checkpoint (res5 of the head is skipped).
    result = export_model(
        cfg, "torchscript", str(tmp_path / "bb"), backbone_only=True, input_size=(64, 64)
    )
    traced = torch.jit.load(result.path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(traced(x)[0], prepared.backbone(x)["res4"])
        assert torch.allclose(traced(x)[0], model.backbone(x)["res4"], rtol=1e-4, atol=1e-4)


def test_export_model_cli(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location(
        "export_model_tool", ROOT / "tools" / "export_model.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = tool.main(
        [
            "--config-file",
            str(TINY_C4),
            "--format",
            "onnx",
            "--output",
            str(tmp_path),
            "--backbone-only",
            "--input-size",
            "64",
            "64",
            "--opts",
            "MODEL.RESNETS.OUT_FEATURES",
            "['res3', 'res4']",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["path"].endswith("model.onnx") and summary["max_abs_diff"] < 1e-2
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["output_names"] == ["res3", "res4"] and info["what"] == "backbone"


def test_export_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_model(tiny_cfg(), "tflite", str(tmp_path))


# ------------------------------------------------------------------------------- Mask R-CNN C4
@pytest.fixture(scope="module")
def mask_detector():
    torch.manual_seed(0)
    # scores of this random model are ~0.25-0.30: a threshold inside makes the count vary
    cfg = tiny_cfg(MODEL__MASK_ON=True, MODEL__ROI_HEADS__SCORE_THRESH_TEST=0.29)
    return randomize_norms(build_model(cfg).eval())


def eager_detections_with_masks(model, image):
    with torch.no_grad():
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes, inst.pred_masks


def test_mask_detector_torchscript_equals_eager_masks(mask_detector, tmp_path):
    wrapper = DetectorExportWrapper(mask_detector).eval()
    assert wrapper.output_names == ["boxes", "scores", "classes", "masks"]
    resolution = 2 * mask_detector.roi_heads.pooler.output_size[0] // 2  # res5 /2, deconv x2
    for image in images(2):
        with torch.no_grad():
            got = wrapper(image)
        ref = eager_detections_with_masks(mask_detector, image)
        assert len(got) == 4 and len(ref[0]) > 0
        for a, b in zip(got, ref):
            assert torch.equal(a, b)
    traced = export_torchscript(wrapper, (images(1)[0],), str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    counts = set()
    for image in images(4)[1:] + [torch.zeros(3, H, W)]:  # not the traced image
        ref = eager_detections_with_masks(mask_detector, image)
        with torch.no_grad():
            for out in (traced(image), loaded(image)):
                assert len(out) == 4
                masks = out[3]
                assert masks.shape == (len(ref[0]), 1, resolution, resolution)
                assert masks.dtype == torch.float32 and 0 <= masks.min() <= masks.max() <= 1
                for a, b in zip(out, ref):
                    assert torch.equal(a, b)
        counts.add(len(ref[0]))
    assert len(counts) > 1  # the trace holds for other numbers of detections
    # No detection: empty masks from the same graph.
    cls_bias = mask_detector.roi_heads.box_predictor.cls_score.bias
    saved = cls_bias.detach().clone()
    try:
        with torch.no_grad():
            cls_bias[-1] = 1e4
            *_, masks = traced(images(1)[0])
            assert masks.shape == (0, 1, resolution, resolution)
    finally:
        with torch.no_grad():
            cls_bias.copy_(saved)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_model_mask_on_adds_masks_output(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    cfg = tiny_cfg(MODEL__MASK_ON=True)
    result = export_model(cfg, fmt, str(tmp_path), input_size=(H, W))
    assert result.output_names == ["boxes", "scores", "classes", "masks"]
    # the exported file run on the example image against eager (onnxruntime: float rounding)
    assert result.max_abs_diff is not None
    assert result.max_abs_diff == 0.0 if fmt == "torchscript" else result.max_abs_diff < 1e-2
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["output_names"][-1] == "masks"
    assert any("masks (D, 1, M, M)" in note for note in info["notes"])

"""Weight conversion (torchvision/timm, MSRA .pkl, detectron2 <-> ours), file reading and load
reports."""

import os
import pickle
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import resnet_backbones as rb
from resnet_backbones.checkpoint import (
    CheckpointFormatError,
    FormatDetectionError,
    StateDictLoadError,
    UnsafePickleError,
    convert_checkpoint_file,
    convert_state_dict,
    detect_format,
    detectron2_to_ours,
    infer_resnet_architecture,
    load_checkpoint,
    load_state_dict_with_report,
    msra_to_ours,
    ours_to_detectron2,
    ours_to_msra,
    read_checkpoint,
    save_checkpoint,
)
from resnet_backbones.modeling.backbone import BasicBlock, ResNet, create_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import convert_weights  # noqa: E402  (the CLI, run in-process)
from helpers import randomize_norms  # noqa: E402


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------ torchvision and timm
@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_to_ours_gives_identical_logits(depth):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    randomize_norms(tv, seed=depth).eval()
    result = convert_state_dict(tv.state_dict(), "torchvision", "ours")
    assert not result.dropped and len(result.mapped) == len(tv.state_dict())
    ours = rb.create_model(f"resnet{depth}").eval()
    report = load_state_dict_with_report(ours, result.state_dict, strict=True)
    assert report.ok and len(report.matched) == len(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert expected.abs().max() > 1e-3  # not a degenerate comparison
    assert _max_diff(expected, got) <= 1e-5
    if depth == 18:  # and back: ours -> torchvision loads strictly and gives the same logits
        back = convert_state_dict(ours.state_dict(), "ours", "torchvision")
        assert set(back.state_dict) == set(tv.state_dict())
        tv2 = getattr(torchvision.models, "resnet18")(weights=None).eval()
        tv2.load_state_dict(back.state_dict, strict=True)
        with torch.no_grad():
            assert _max_diff(tv2(x), expected) <= 1e-5


def test_timm_names_are_torchvision_names():
    tv_sd = torchvision.models.resnet18(weights=None).state_dict()
    timm_sd = dict(tv_sd)  # timm's resnet18 uses exactly these names
    timm_sd["conv1.0.weight"] = torch.zeros(32, 3, 3, 3)  # a deep-stem (resnet18d) tensor
    result = convert_state_dict(timm_sd, "timm", "ours")
    reference = convert_state_dict(tv_sd, "torchvision", "ours")
    assert result.state_dict.keys() == reference.state_dict.keys()
    assert all(result.state_dict[k] is reference.state_dict[k] for k in reference.state_dict)
    assert result.dropped == [("conv1.0.weight", result.dropped[0][1])]
    assert "deep stem" in result.dropped[0][1]
    assert result.source == "timm" and result.metadata["input_format"] == "RGB"
    assert "conv1.0.weight: deep stem" in result.summary()


def test_ours_to_torchvision_adds_batchnorm_counters_for_frozen_bn():
    backbone = rb.create_model("resnet18", norm="FrozenBN")
    assert not any(k.endswith("num_batches_tracked") for k in backbone.state_dict())
    result = convert_state_dict(backbone.state_dict(), "ours", "torchvision")
    added = {name for name, _ in result.added}
    assert (
        "bn1.num_batches_tracked" in added and "layer2.0.downsample.1.num_batches_tracked" in added
    )
    tv = torchvision.models.resnet18(weights=None)
    assert set(result.state_dict) == set(tv.state_dict())


# ---------------------------------------------------------------------------------- MSRA / Caffe2
def _msra_model(depth=50, seed=0, identity_stats=True):
    torch.manual_seed(seed)
    model = rb.create_model(f"resnet{depth}", norm="FrozenBN", stride_in_1x1=True)
    randomize_norms(model, seed)
    if identity_stats:  # what a Caffe2 model really is: an affine per channel
        with torch.no_grad():
            for m in model.modules():
                if type(m).__name__ == "FrozenBatchNorm2d":
                    m.running_mean.zero_()
                    m.running_var.fill_(1 - m.eps)
    return model.eval()


def _write_caffe2_pkl(path, model, *, wrap_blobs, momentum=True):
    """The inverse mapping, written like Detectron's R-50.pkl: numpy blobs (+ SGD momentum
    blobs)."""
    blobs = {k: v.numpy() for k, v in ours_to_msra(model.state_dict()).state_dict.items()}
    if momentum:
        blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])
        blobs["res2_0_branch2a_w_momentum"] = np.zeros_like(blobs["res2_0_branch2a_w"])
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs} if wrap_blobs else blobs, f)
    return blobs


def test_msra_names():
    blobs = {
        "conv1_w": torch.zeros(64, 3, 7, 7),
        "res_conv1_bn_s": torch.ones(64),
        "res_conv1_bn_b": torch.zeros(64),
        "res2_0_branch2a_w": torch.zeros(64, 64, 1, 1),
        "res2_0_branch2a_bn_s": torch.ones(64),
        "res2_0_branch2a_bn_b": torch.zeros(64),
        "res2_0_branch2b_w": torch.zeros(64, 64, 3, 3),
        "res2_0_branch2c_w": torch.zeros(256, 64, 1, 1),
        "res2_0_branch1_w": torch.zeros(256, 64, 1, 1),
        "res2_0_branch1_bn_s": torch.ones(256),
        "res2_0_branch1_bn_b": torch.zeros(256),
        "fc1000_w": torch.zeros(1000, 2048),
        "fc1000_b": torch.zeros(1000),
        "res2_0_branch2a_w_momentum": torch.zeros(64, 64, 1, 1),
        "conv_rpn_w": torch.zeros(1),
    }
    assert detect_format(blobs) == "msra-pkl"
    result = msra_to_ours(blobs)
    mapped = dict(result.mapped)
    assert mapped["conv1_w"] == "stem.conv1.weight"
    assert mapped["res_conv1_bn_s"] == "stem.conv1.norm.weight"
    assert mapped["res_conv1_bn_b"] == "stem.conv1.norm.bias"
    assert mapped["res2_0_branch2b_w"] == "res2.0.conv2.weight"
    assert mapped["res2_0_branch2c_w"] == "res2.0.conv3.weight"
    assert mapped["res2_0_branch1_bn_b"] == "res2.0.shortcut.norm.bias"
    assert mapped["fc1000_w"] == "linear.weight"
    dropped = dict(result.dropped)
    assert "momentum" in dropped["res2_0_branch2a_w_momentum"] and "conv_rpn_w" in dropped
    sd = result.state_dict
    assert torch.equal(sd["res2.0.shortcut.norm.running_mean"], torch.zeros(256))
    assert torch.equal(sd["res2.0.shortcut.norm.running_var"], torch.full((256,), 1 - 1e-5))
    # FrozenBN's variance + eps is exactly 1 in float32, so the layer is exactly x * s + b
    assert torch.equal(sd["stem.conv1.norm.running_var"] + 1e-5, torch.ones(64))
    assert result.metadata["input_format"] == "BGR" and result.metadata["stride_in_1x1"] is True
    assert (
        result.metadata["pixel_mean"] == [103.530, 116.280, 123.675]
        and result.metadata["pixel_std"] == [1.0] * 3
    )


@pytest.mark.parametrize("depth,wrap_blobs", [(50, False), (18, True)])
def test_msra_pkl_to_ours_gives_identical_outputs(tmp_path, depth, wrap_blobs):
    original = _msra_model(depth, seed=1)
    pkl = tmp_path / f"R-{depth}.pkl"
    _write_caffe2_pkl(pkl, original, wrap_blobs=wrap_blobs)
    loaded = read_checkpoint(pkl)
    assert (
        loaded.author == "Caffe2" and detect_format(loaded.state_dict, loaded.author) == "msra-pkl"
    )
    assert loaded.container == ("blobs" if wrap_blobs else "")

    model = rb.create_model(f"resnet{depth}", norm="FrozenBN", stride_in_1x1=True).eval()
    report = load_checkpoint(model, pkl, strict=True)
    assert report.ok
    assert {name for name, _ in report.dropped} == {
        "conv1_w_momentum",
        "res2_0_branch2a_w_momentum",
    }
    assert report.metadata["input_format"] == "BGR" and report.metadata["stride_in_1x1"] is True
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        assert _max_diff(original(x), model(x)) <= 1e-5
    # bitwise: conv weights are copied and every BN is exactly the same affine
    converted = model.state_dict()
    for k, v in original.state_dict().items():
        assert torch.equal(v, converted[k]), k


def test_msra_folded_statistics_and_running_var_choice(tmp_path):
    # A model with real BN statistics folded into Caffe2's s/b still converts within 1e-5 ...
    original = _msra_model(18, seed=2, identity_stats=False)
    converted = msra_to_ours(ours_to_msra(original.state_dict()).state_dict)
    model = rb.create_model("resnet18", norm="FrozenBN").eval()
    load_state_dict_with_report(model, converted.state_dict, strict=True)
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        reference = original(x)
        assert _max_diff(reference, model(x)) <= 1e-5 * reference.abs().max().item()
        # ... while running_var = 1 (instead of 1 - eps) would be measurably off
        for m in model.modules():
            if type(m).__name__ == "FrozenBatchNorm2d":
                m.running_var.fill_(1.0)
        assert _max_diff(reference, model(x)) > 1e-5


def test_cli_msra_pkl_to_ours(tmp_path, capsys):
    original = _msra_model(18, seed=3)
    pkl = tmp_path / "R-18.pkl"
    _write_caffe2_pkl(pkl, original, wrap_blobs=False)
    out = tmp_path / "r18.pth"
    assert convert_weights.main(["--from", "msra-pkl", "--to", "ours", str(pkl), str(out)]) == 0
    text = capsys.readouterr().out
    assert "converted msra-pkl -> ours" in text
    assert "conv1_w_momentum: SGD momentum" in text and "2 dropped" in text
    assert (
        "BGR" in text
        and "resnet18 (blocks (2, 2, 2, 2), basic" in text
        and "all tensors fit" in text
    )
    saved = read_checkpoint(out)
    assert (
        saved.metadata["input_format"] == "BGR" and saved.metadata["converted_from"] == "msra-pkl"
    )
    model = rb.create_model("resnet18", norm="FrozenBN").eval()
    report = load_checkpoint(model, saved)  # the file's saved metadata reaches the report
    assert (
        report.ok
        and report.metadata["input_format"] == "BGR"
        and report.metadata["stride_in_1x1"] is True
    )
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        assert _max_diff(original(x), model(x)) <= 1e-5


# -------------------------------------------------------------------------------------- detectron2
def _fake_d2_detector_state_dict():
    """Names of a detectron2 R-18-C4 Faster R-CNN: backbone to res4, res5 in the ROI head."""
    full = rb.create_model("resnet18", norm="FrozenBN").state_dict()
    sd = {}
    for k, v in full.items():
        if k.startswith("res5."):
            sd["roi_heads." + k] = v
        elif not k.startswith("linear."):
            sd["backbone." + k] = v
    sd["proposal_generator.rpn_head.conv.weight"] = torch.randn(256, 256, 3, 3)
    sd["proposal_generator.rpn_head.conv.bias"] = torch.randn(256)
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(81, 512)
    return sd


def test_detectron2_backbone_round_trip_is_exact():
    ours = rb.create_model("resnet50").state_dict()
    d2 = ours_to_detectron2(ours).state_dict
    assert "backbone.res2.0.conv1.weight" in d2 and "backbone.res2.0.conv1.norm.weight" in d2
    assert "backbone.res2.0.shortcut.weight" in d2 and "backbone.stem.conv1.weight" in d2
    assert detect_format(d2) == "detectron2"
    back = convert_state_dict(d2, "detectron2", "ours").state_dict
    assert list(back) == list(ours) and all(back[k] is ours[k] for k in ours)
    again = convert_state_dict(back, "ours", "detectron2").state_dict
    assert list(again) == list(d2)


def test_detectron2_full_detector_keeps_its_names():
    d2 = _fake_d2_detector_state_dict()
    ours = detectron2_to_ours(d2)
    assert list(ours.state_dict) == list(d2) and not ours.dropped
    assert list(convert_state_dict(d2, "detectron2", "detectron2").state_dict) == list(d2)
    backbone = detectron2_to_ours(d2, backbone_only=True)
    assert (
        "res5.0.conv1.weight" in backbone.state_dict and "stem.conv1.weight" in backbone.state_dict
    )
    assert dict(backbone.dropped).keys() == {
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.conv.bias",
        "roi_heads.box_predictor.cls_score.weight",
    }
    arch = infer_resnet_architecture(backbone.state_dict)
    assert arch["name"] == "resnet18" and arch["num_classes"] is None and arch["norm"] == "FrozenBN"


class _FakeC4Detector(nn.Module):
    """Module names of detectron2's GeneralizedRCNN with Res5ROIHeads, on a ResNet-18."""

    def __init__(self):
        super().__init__()
        self.backbone = create_backbone("resnet18", freeze_at=0)
        self.proposal_generator = nn.Module()
        self.proposal_generator.rpn_head = nn.Module()
        self.proposal_generator.rpn_head.conv = nn.Conv2d(256, 256, 3)
        self.roi_heads = nn.Module()
        self.roi_heads.res5 = nn.Sequential(
            *ResNet.make_stage(
                BasicBlock, 2, in_channels=256, out_channels=512, first_stride=2, norm="FrozenBN"
            )
        )
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(512, 81, bias=False)
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_whole_detectron2_checkpoint_loads_into_detector(tmp_path, suffix):
    d2 = _fake_d2_detector_state_dict()
    path = tmp_path / f"model_final{suffix}"
    if suffix == ".pkl":  # detectron2 model zoo: numpy arrays and an author
        with open(path, "wb") as f:
            pickle.dump(
                {
                    "model": {k: v.numpy() for k, v in d2.items()},
                    "__author__": "Detectron2 Model Zoo",
                },
                f,
            )
    else:  # a training checkpoint
        torch.save(
            {"model": d2, "iteration": 90000, "optimizer": {"state": {}, "param_groups": []}}, path
        )
    detector = _FakeC4Detector()
    with pytest.raises(StateDictLoadError, match="pixel_mean"):
        load_checkpoint(detector, path, strict=True)
    report = load_checkpoint(detector, path, strict=True, ignore_missing=["pixel_mean"])
    assert report.ok and report.ignored_missing == ["pixel_mean"] and not report.renamed
    state = detector.state_dict()
    assert all(torch.equal(state[k], v) for k, v in d2.items())
    # the same checkpoint into a bare backbone: its ResNet (res5 from the ROI head) only
    bare = rb.create_model("resnet18", norm="FrozenBN", num_classes=None)
    report = load_checkpoint(bare, path, strict=True)
    assert report.ok and torch.equal(
        bare.state_dict()["res5.1.conv2.weight"], d2["roi_heads.res5.1.conv2.weight"]
    )
    assert "roi_heads.box_predictor.cls_score.weight" in dict(report.dropped)


def test_imagenet_weights_into_detector_by_suffix_and_classifier_drop():
    imagenet = randomize_norms(rb.create_model("resnet18", norm="FrozenBN")).eval()
    tv_names = convert_state_dict(imagenet.state_dict(), "ours", "torchvision").state_dict
    detector = _FakeC4Detector()
    with pytest.raises(StateDictLoadError) as info:
        load_checkpoint(detector, tv_names, strict=True, ignore_missing=["pixel_mean"])
    assert {"linear.weight", "linear.bias"} <= set(info.value.report.unexpected)
    assert "proposal_generator.rpn_head.conv.weight" in info.value.report.missing
    message = str(info.value)
    assert (
        "linear.{weight,bias}" in message
        and "proposal_generator.rpn_head.conv.{weight,bias}" in message
    )
    report = load_checkpoint(detector, tv_names, strict=False, drop_classifier=True)
    assert ("linear.weight", "classification head (drop_classifier=True)") in report.dropped
    assert ("res5.0.conv1.weight", "roi_heads.res5.0.conv1.weight") in report.renamed
    assert ("stem.conv1.weight", "backbone.stem.conv1.weight") in report.renamed
    assert set(report.missing) == {
        "proposal_generator.rpn_head.conv.weight",
        "proposal_generator.rpn_head.conv.bias",
        "roi_heads.box_predictor.cls_score.weight",
        "pixel_mean",
    }
    assert not report.unexpected and not report.shape_mismatch
    assert torch.equal(
        detector.state_dict()["roi_heads.res5.1.conv2.norm.bias"],
        imagenet.state_dict()["res5.1.conv2.norm.bias"],
    )


# --------------------------------------------------------------------------------- load reports
def test_report_names_missing_unexpected_and_mismatched_tensors():
    model = rb.create_model("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = rb.create_model("resnet18").state_dict()  # 1000 classes
    sd = {k: v for k, v in source.items() if not k.startswith("res4.1.")}
    sd["extra.weight"] = torch.zeros(3)

    with pytest.raises(StateDictLoadError) as info:
        load_state_dict_with_report(model, sd, strict=True)
    message = str(info.value)
    assert "linear.weight: checkpoint (1000, 512) vs model (10, 512)" in message
    assert "res4.1.conv1.weight" in message and "extra.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # left unchanged

    report = load_state_dict_with_report(model, sd, strict=False)
    assert [name for name, _, _ in report.shape_mismatch] == ["linear.weight", "linear.bias"]
    assert report.unexpected == ["extra.weight"]
    # BatchNorm's own loading hook fills in a missing step counter: reported, not missing
    assert set(report.missing) == {
        k for k in before if k.startswith("res4.1.") and "num_batches" not in k
    }
    assert "res4.1.conv1.norm.num_batches_tracked" in report.defaulted
    assert "res4.1.conv1.norm.running_var" in report.missing
    assert "linear.weight" not in report.missing and "linear.weight" not in report.matched
    assert len(report.matched) == len(sd) - 3
    assert torch.equal(model.state_dict()["res2.0.conv1.weight"], source["res2.0.conv1.weight"])
    text = str(report)
    assert "res4.1.conv1.norm.{weight,bias,running_mean,running_var}" in text
    assert "unexpected in the checkpoint (1)" in text and "shape mismatch (2)" in text

    report = load_state_dict_with_report(
        model,
        sd,
        strict=False,
        drop_classifier=True,
        ignore_unexpected=["extra.*"],
        ignore_missing=["res4.1.*"],
    )
    assert report.ok and not report.shape_mismatch
    assert {n for n, _ in report.dropped} == {"linear.weight", "linear.bias", "extra.weight"}
    assert {"linear.weight", "linear.bias", "res4.1.conv1.weight"} <= set(report.ignored_missing)


def test_frozen_bn_hooks_are_reported_not_hidden():
    backbone = rb.create_model("resnet18", norm="FrozenBN", num_classes=None)
    bn_sd = rb.create_model("resnet18", num_classes=None).state_dict()  # has num_batches_tracked
    report = load_state_dict_with_report(backbone, bn_sd, strict=True)
    assert "stem.conv1.norm.num_batches_tracked" in report.absorbed and report.ok
    no_stats = {k: v for k, v in bn_sd.items() if not k.endswith(("running_mean", "running_var"))}
    report = load_state_dict_with_report(backbone, no_stats, strict=True)
    assert "res2.0.conv1.norm.running_var" in report.defaulted


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_checkpoint(tmp_path / "missing.pth")
    odd = tmp_path / "weights.xyz"
    odd.write_bytes(b"GIF89a not weights")
    with pytest.raises(CheckpointFormatError, match=r"weights\.xyz.*unknown weights file format"):
        read_checkpoint(odd)
    a_list = tmp_path / "list.pkl"
    a_list.write_bytes(pickle.dumps([np.ones(3)]))
    with pytest.raises(
        CheckpointFormatError, match=r"list\.pkl: holds a list, expected a state dict"
    ):
        read_checkpoint(a_list)
    no_tensors = tmp_path / "config.pth"
    torch.save({"epoch": 3, "lr": 0.1, "args": {"depth": 50}}, no_tensors)
    with pytest.raises(CheckpointFormatError, match=r"config\.pth: no tensors found.*'epoch'"):
        read_checkpoint(no_tensors)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointFormatError, match=r"garbage\.pth: not a PyTorch checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(FormatDetectionError, match="cannot tell the naming scheme"):
        detect_format({"encoder.layers.0.weight": torch.zeros(1), "decoder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown source format"):
        convert_state_dict({"conv1.weight": torch.zeros(1)}, "caffe", "ours")


def test_pickled_module_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "whole_model.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 1)), path)
    with pytest.raises(
        CheckpointFormatError, match=r"whole_model\.pth: torch.load\(weights_only=True\) refused"
    ):
        read_checkpoint(path)


def test_read_checkpoint_containers(tmp_path):
    sd = {"conv1.weight": torch.ones(2), "fc.bias": torch.zeros(2)}
    ddp = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 5}, ddp)
    loaded = read_checkpoint(ddp)
    assert (
        loaded.container == "state_dict"
        and set(loaded.state_dict) == set(sd)
        and loaded.extra == {"epoch": 5}
    )
    assert "module." in loaded.notes[0]
    mixed = tmp_path / "mixed.pkl"
    mixed.write_bytes(pickle.dumps({"conv1_w": np.ones((1, 3, 1, 1), np.float32), "lr": "0.1"}))
    loaded = read_checkpoint(mixed)
    assert list(loaded.state_dict) == ["conv1_w"] and loaded.dropped == [
        ("lr", "not a tensor or array (str)")
    ]
    # a legacy (non-zip) torch.save file with a .pkl name still loads, via torch
    legacy = tmp_path / "legacy.pkl"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert set(read_checkpoint(legacy).state_dict) == set(sd)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": np.ones(1)}, "__author__": os.getcwd, "a": 1}))
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        read_checkpoint(evil)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_torchvision_auto_detect_and_round_trip(tmp_path, capsys):
    tv = randomize_norms(torchvision.models.resnet18(weights=None)).eval()
    src = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), src)
    d2 = tmp_path / "r18_d2.pkl"
    assert convert_weights.main(["--from", "auto", "--to", "detectron2", str(src), str(d2)]) == 0
    text = capsys.readouterr().out
    assert "converted torchvision -> detectron2: 122 tensors mapped" in text and "0 dropped" in text
    assert "all tensors fit" in text
    loaded = read_checkpoint(d2)
    assert "backbone.res2.0.conv1.norm.running_mean" in loaded.state_dict
    assert loaded.author.startswith("resnet_backbones") and loaded.metadata["input_format"] == "RGB"

    back = tmp_path / "back.pth"
    assert (
        convert_weights.main(["--from", "detectron2", "--to", "torchvision", str(d2), str(back)])
        == 0
    )
    text = capsys.readouterr().out
    assert "torchvision.models.resnet18: all tensors fit" in text
    restored = torch.load(back, weights_only=True)
    assert list(restored) == list(tv.state_dict())
    assert all(torch.equal(restored[k], v) for k, v in tv.state_dict().items())

    # refuses to overwrite; missing input is an error naming the file (exit status 2)
    assert convert_weights.main(["--to", "ours", str(src), str(back)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        convert_weights.main(["--to", "ours", str(tmp_path / "nope.pth"), str(tmp_path / "o.pth")])
        == 2
    )
    assert "nope.pth: no such weights file" in capsys.readouterr().err


def test_cli_strict_flags_dropped_tensors(tmp_path, capsys):
    sd = dict(torchvision.models.resnet18(weights=None).state_dict())
    sd["layer1.0.se.fc1.weight"] = torch.zeros(4, 64, 1, 1)  # a timm SE variant: cannot be kept
    src = tmp_path / "seresnet.pth"
    torch.save(sd, src)
    out = tmp_path / "o.pth"
    assert (
        convert_weights.main(["--from", "timm", "--to", "ours", "--strict", str(src), str(out)])
        == 1
    )
    captured = capsys.readouterr()
    assert "layer1.0.se.fc1.weight: attention/SE" in captured.out and "strict" in captured.err
    assert os.path.exists(out)
    assert (
        convert_weights.main(["--from", "timm", "--to", "ours", "--overwrite", str(src), str(out)])
        == 0
    )


def test_save_checkpoint_formats(tmp_path):
    sd = {"stem.conv1.weight": torch.randn(2, 3, 1, 1)}
    save_checkpoint(
        tmp_path / "a.pkl", sd, metadata={"input_format": "BGR"}, matching_heuristics=True
    )
    raw = pickle.loads((tmp_path / "a.pkl").read_bytes())
    assert (
        isinstance(raw["model"]["stem.conv1.weight"], np.ndarray)
        and raw["matching_heuristics"] is True
    )
    save_checkpoint(tmp_path / "b.pth", sd, wrap=False)
    assert list(torch.load(tmp_path / "b.pth", weights_only=True)) == ["stem.conv1.weight"]
    for name in ("a.pkl", "b.pth"):
        assert torch.equal(
            read_checkpoint(tmp_path / name).state_dict["stem.conv1.weight"],
            sd["stem.conv1.weight"],
        )


def test_convert_checkpoint_file_api(tmp_path):
    src = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), src)
    result = convert_checkpoint_file(str(src), str(tmp_path / "r34_ours.pth"), target="ours")
    assert result.architecture["name"] == "resnet34" and result.check_ok
    assert result.conversion.metadata["converted_from"] == "torchvision"


def _as_detectron2_tool_writes(tv_state_dict):
    """Names as detectron2's tools/convert-torchvision-to-d2.py produces them (stem.fc for the
    head)."""
    out = {}
    for key, value in tv_state_dict.items():
        new = key if "layer" in key else "stem." + key
        for i in range(1, 5):
            new = new.replace(f"layer{i}", f"res{i + 1}")
        for i in range(1, 4):
            new = new.replace(f"bn{i}", f"conv{i}.norm")
        new = new.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[new] = value.numpy()
    return out


def test_detectron2_tool_converted_torchvision_pkl(tmp_path):
    tv = randomize_norms(torchvision.models.resnet18(weights=None)).eval()
    path = tmp_path / "r18.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {
                "model": _as_detectron2_tool_writes(tv.state_dict()),
                "__author__": "torchvision",
                "matching_heuristics": True,
            },
            f,
        )
    model = rb.create_model("resnet18").eval()
    report = load_checkpoint(model, path, strict=True)
    assert (
        report.ok
        and report.source.endswith("(detectron2)")
        and any("stem.fc" in n for n in report.notes)
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(tv(x), model(x)) <= 1e-5


def test_drop_classifier_happens_before_suffix_matching():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Module()
            self.body.stem = nn.Module()
            self.body.stem.conv1 = nn.Conv2d(3, 2, 1, bias=False)
            self.box = nn.Module()
            self.box.linear = nn.Linear(4, 3)

    sd = {
        "stem.conv1.weight": torch.ones(2, 3, 1, 1),
        "linear.weight": torch.ones(3, 4),
        "linear.bias": torch.ones(3),
    }
    # without the drop, a unique suffix match would put the ImageNet head into box.linear
    model = Head()
    report = load_checkpoint(model, sd, source="ours", strict=True)
    assert ("linear.weight", "box.linear.weight") in report.renamed
    model = Head()
    report = load_checkpoint(model, sd, source="ours", strict=False, drop_classifier=True)
    assert report.renamed == [("stem.conv1.weight", "body.stem.conv1.weight")]
    assert ("linear.weight", "classification head (drop_classifier=True)") in report.dropped
    assert set(report.missing) == {"box.linear.weight", "box.linear.bias"}
    assert not torch.equal(model.box.linear.weight, torch.ones(3, 4))

"""``DetectionCheckpointer``: our checkpoints, detectron2 checkpoints and ImageNet backbones
(ours, torchvision names, MSRA/Caffe2 ``.pkl``) load into a detector by name."""

import pickle

import pytest
import torch
from helpers import tiny_cfg

from resnet_backbones import build_model
from resnet_backbones.checkpoint import CheckpointFormatError, ours_to_msra, ours_to_torchvision
from resnet_backbones.checkpoint.detection_checkpoint import (
    DetectionCheckpointer,
    resolve_weights_path,
)
from resnet_backbones.modeling.backbone.resnet import build_resnet


def tiny_detector(norm="FrozenBN", depth=50, num_classes=None):
    cfg = tiny_cfg(
        MODEL__RESNETS__NORM=norm, MODEL__RESNETS__STRIDE_IN_1X1=True, MODEL__RESNETS__DEPTH=depth
    )
    if num_classes is not None:
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return build_model(cfg)


def tiny_classifier(norm="FrozenBN"):
    """An ImageNet-style classifier with the tiny detector's widths, with non-trivial BN values."""
    torch.manual_seed(1)
    net = build_resnet(
        50,
        num_classes=10,
        norm=norm,
        stride_in_1x1=True,
        stem_out_channels=16,
        res2_out_channels=32,
        width_per_group=8,
    )
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith(("norm.weight", "norm.bias")):
                t.uniform_(0.5, 1.5)
    return net


def _randomized(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.normal_()
    return model


def _same(a, b, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    for k in keys or sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_save_and_load_our_checkpoint(tmp_path):
    src = _randomized(tiny_detector())
    DetectionCheckpointer(src, save_dir=str(tmp_path), save_to_disk=True).save(
        "model_final", iteration=7
    )
    dst = tiny_detector()
    ckpt = DetectionCheckpointer(dst)
    extra = ckpt.load(str(tmp_path / "model_final.pth"))
    assert extra.get("iteration") == 7
    assert ckpt.last_report.ok and len(ckpt.last_report.matched) == len(src.state_dict())
    _same(src, dst)


def test_detectron2_model_zoo_pkl(tmp_path):
    """detectron2's model zoo format: a pickle of numpy arrays under "model" with an author."""
    src = _randomized(tiny_detector())
    path = tmp_path / "model_final_abc.pkl"
    with open(path, "wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in src.state_dict().items()},
                "__author__": "Detectron2 Model Zoo",
                "matching_heuristics": True,
            },
            f,
        )
    dst = tiny_detector()
    DetectionCheckpointer(dst).load(str(path))
    _same(src, dst)


@pytest.mark.parametrize("layout", ["ours", "torchvision", "msra-pkl"])
def test_imagenet_backbone_initializes_backbone_and_res5_head(tmp_path, layout):
    net = tiny_classifier()
    sd = net.state_dict()
    if layout == "ours":
        path = tmp_path / "r50.pth"
        torch.save(sd, path)
    elif layout == "torchvision":
        path = tmp_path / "resnet50.pth"
        torch.save(ours_to_torchvision(sd).state_dict, path)
    else:
        path = tmp_path / "R-50.pkl"
        with open(path, "wb") as f:  # Caffe2 layout: folded BN, blobs as numpy arrays
            pickle.dump(
                {"blobs": {k: v.numpy() for k, v in ours_to_msra(sd).state_dict.items()}}, f
            )
    det = tiny_detector()
    ckpt = DetectionCheckpointer(det)
    ckpt.load(str(path))
    report = ckpt.last_report
    dsd = det.state_dict()
    # stem/res2-4 -> backbone.*, res5 -> roi_heads.res5.*; only the new heads stay uninitialized
    assert sorted(report.missing) == sorted(
        k for k in dsd if k.startswith(("proposal_generator.", "roi_heads.box_predictor."))
    )
    assert not report.unexpected and not report.shape_mismatch
    assert any(
        "linear" in name or "fc1000" in name or name.startswith("fc.") for name, _ in report.dropped
    )
    torch.testing.assert_close(dsd["backbone.stem.conv1.weight"], sd["stem.conv1.weight"])
    torch.testing.assert_close(dsd["backbone.res4.5.conv3.weight"], sd["res4.5.conv3.weight"])
    torch.testing.assert_close(
        dsd["roi_heads.res5.0.shortcut.weight"], sd["res5.0.shortcut.weight"]
    )
    torch.testing.assert_close(dsd["roi_heads.res5.2.conv2.weight"], sd["res5.2.conv2.weight"])
    # FrozenBN: the same function, whether statistics were kept or folded (Caffe2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(det.backbone(x)["res4"], _res4(net, x), rtol=1e-4, atol=1e-4)


def _res4(net, x):
    x = net.stem(x)
    for name in ("res2", "res3", "res4"):
        x = getattr(net, name)(x)
    return x


def test_missing_weights_file_names_the_fix(tmp_path):
    ckpt = DetectionCheckpointer(tiny_detector())
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        ckpt.load(str(tmp_path / "R-50.pkl"))
    assert ckpt.load("") == {}  # empty: random initialization, nothing loaded
    assert resolve_weights_path("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )


def test_unrelated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"backbone.foo.weight": torch.zeros(3)}}, path)
    with pytest.raises(RuntimeError, match="no tensor"):
        DetectionCheckpointer(tiny_detector()).load(str(path))


def test_warns_when_weights_expect_other_conventions(tmp_path, caplog):
    """torchvision weights: RGB, ImageNet mean/std, stride in the 3x3 - the C4 config has none."""
    net = tiny_classifier()
    path = tmp_path / "resnet50.pth"
    torch.save(ours_to_torchvision(net.state_dict()).state_dict, path)
    det = tiny_detector()  # BGR, MSRA statistics... and STRIDE_IN_1X1 True
    with caplog.at_level("WARNING"):
        DetectionCheckpointer(det).load(str(path))
    text = caplog.text
    assert "INPUT.FORMAT is BGR" in text and "STRIDE_IN_1X1 False" in text and "PIXEL_MEAN" in text


def test_truncated_and_empty_checkpoints_name_the_file(tmp_path):
    src = tiny_detector()
    DetectionCheckpointer(src, save_dir=str(tmp_path), save_to_disk=True).save("model_good")
    data = (tmp_path / "model_good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, size in (("cut.pth", len(data) // 2), ("empty.pth", 0)):
        det = tiny_detector()
        before = {k: v.clone() for k, v in det.state_dict().items()}
        with pytest.raises(CheckpointFormatError) as info:
            DetectionCheckpointer(det).load(str(tmp_path / name))
        assert str(info.value).startswith(
            f"{tmp_path / name}: truncated or corrupted torch.save file ({size} bytes; "
            "an interrupted copy, download or save?): torch.load cannot read it"
        )
        _same(det, _Frozen(before))  # nothing was loaded
    pkl = pickle.dumps({"model": {k: v.numpy() for k, v in src.state_dict().items()}})
    (tmp_path / "cut.pkl").write_bytes(pkl[: len(pkl) // 2])
    with pytest.raises(CheckpointFormatError) as info:
        DetectionCheckpointer(tiny_detector()).load(str(tmp_path / "cut.pkl"))
    assert str(info.value) == (
        f"{tmp_path / 'cut.pkl'}: not a readable pickle "
        "(UnpicklingError: pickle data was truncated); "
        "expected a detectron2 or Caffe2 .pkl weights file (truncated or corrupted?)"
    )


class _Frozen:
    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd


def test_r101_weights_into_r50_detector_are_reported(tmp_path, caplog):
    src = tiny_detector(depth=101)
    DetectionCheckpointer(src, save_dir=str(tmp_path), save_to_disk=True).save("r101")
    ckpt = DetectionCheckpointer(tiny_detector(depth=50))
    with caplog.at_level("WARNING"):
        ckpt.load(str(tmp_path / "r101.pth"))
    expected = (
        "architecture mismatch: the checkpoint is a ResNet-101 (bottleneck blocks, "
        "res2/res3/res4/res5 = 3/4/23/3), the model a ResNet-50 (bottleneck blocks, "
        "res2/res3/res4/res5 = 3/4/6/3); check MODEL.RESNETS.DEPTH"
    )
    assert expected in caplog.text and "r101.pth" in caplog.text
    report = ckpt.last_report
    assert report.architecture.startswith(expected) and expected in str(report)
    assert "backbone.res4.22.conv3.weight" in report.unexpected and not report.missing


def test_r50_weights_into_r18_strict_load_names_both_architectures():
    from resnet_backbones import create_model
    from resnet_backbones.checkpoint import StateDictLoadError, load_checkpoint

    r18 = create_model("resnet18", num_classes=None)
    with pytest.raises(StateDictLoadError) as info:
        load_checkpoint(r18, create_model("resnet50", num_classes=None).state_dict(), strict=True)
    msg = str(info.value)
    assert "the model was left unchanged" in msg
    assert (
        "architecture mismatch: the checkpoint is a ResNet-50 (bottleneck blocks, "
        "res2/res3/res4/res5 = 3/4/6/3), the model a ResNet-18 (basic blocks, "
        "res2/res3/res4/res5 = 2/2/2/2)"
    ) in msg


def test_same_architecture_with_another_head_is_not_an_architecture_mismatch(tmp_path, caplog):
    """Another NUM_CLASSES (fine-tuning a detector): the box predictor is skipped with a warning."""
    src = tiny_detector(num_classes=5)
    DetectionCheckpointer(src, save_dir=str(tmp_path), save_to_disk=True).save("c5")
    ckpt = DetectionCheckpointer(tiny_detector(num_classes=3))
    with caplog.at_level("WARNING"):
        ckpt.load(str(tmp_path / "c5.pth"))
    assert "architecture mismatch" not in caplog.text and ckpt.last_report.architecture == ""
    assert (
        "c5.pth: 4 tensors not loaded, their shapes differ from the model's "
        "(left as initialized): roi_heads.box_predictor.cls_score.weight: "
        "checkpoint (6, 256) vs model (4, 256)"
    ) in caplog.text

"""Classification training (resnet_backbones.classification, tools/train_cls.py): learning, exact
resume, checkpoints that initialize the detector, the CIFAR-10 batch reader and the CLI."""

import json
import os
import pickle
import signal
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_backbones import build_model, get_cfg
from resnet_backbones.checkpoint import UnsafePickleError, load_checkpoint
from resnet_backbones.checkpoint.detection_checkpoint import DetectionCheckpointer
from resnet_backbones.classification import (
    CIFAR10,
    ClassificationCheckpointer,
    ClassificationTrainer,
    ClassifierWithLoss,
    build_classifier,
    build_dataset,
    build_train_loader,
    compute_schedule,
    get_cls_cfg,
    read_cifar10_batch,
)
from resnet_backbones.engine import hooks
from resnet_backbones.engine.train_loop import SimpleTrainer
from resnet_backbones.utils.env import seed_all_rng
from resnet_backbones.utils.events import EventStorage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PRETRAIN = os.path.join(ROOT, "configs", "shapes", "demo_pretrain_cls.yaml")
DEMO_DET = os.path.join(ROOT, "configs", "shapes", "demo_C4.yaml")
sys.path.insert(0, os.path.join(ROOT, "tools"))

from helpers import tiny_cfg  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny ImageFolder: 'dark' and 'bright' 20x20 noise images (train 8+8, val 4+4)."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls, mean in (("bright", 200), ("dark", 50)):
            os.makedirs(root / split / cls)
            for i in range(n):
                img = np.clip(rng.normal(mean, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
    return root


def small_cfg(data, out, **kw):
    cfg = get_cls_cfg()
    cfg.MODEL.NAME = "resnet20_cifar"
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATA.PATH = str(data)
    cfg.DATA.NUM_WORKERS = 0
    cfg.INPUT.SIZE = 16
    cfg.INPUT.MIN_SCALE = 0.5
    cfg.SOLVER.BATCH_SIZE = 4
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.EPOCHS = 2
    cfg.SOLVER.STEP_EPOCHS = (1,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.TEST.EVAL_PERIOD = 1
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = 3
    cfg.PROGRESS = "off"
    cfg.LOG_PERIOD = 1
    for k, v in kw.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_schedule_follows_the_recipe():
    cfg = get_cls_cfg()
    s = compute_schedule(cfg, train_size=1281167, world_size=8)
    assert s.iters_per_epoch == 1281167 // 256 and s.max_iter == 90 * s.iters_per_epoch
    assert s.steps == [30 * s.iters_per_epoch, 60 * s.iters_per_epoch, 80 * s.iters_per_epoch]
    assert s.base_lr == pytest.approx(0.1) and s.batch_per_process == 32
    cfg.SOLVER.BATCH_SIZE = 1024
    assert compute_schedule(cfg, 1281167, 8).base_lr == pytest.approx(0.4)  # 0.1 x batch / 256
    c = get_cls_cfg("cifar10")
    s = compute_schedule(c, 50000, 1)
    assert (s.max_iter, s.steps, s.base_lr, s.batch_per_process) == (
        64000,
        [32000, 48000],
        0.1,
        128,
    )
    assert (c.SOLVER.WEIGHT_DECAY, c.SOLVER.MOMENTUM, c.INPUT.SIZE, c.INPUT.PADDING) == (
        1e-4,
        0.9,
        32,
        4,
    )


def test_transforms_match_the_recipe(folder):
    cfg = get_cls_cfg()
    cfg.DATA.PATH = str(folder)
    train, val = build_dataset(cfg, True), build_dataset(cfg, False)
    names = [type(t).__name__ for t in train.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToModelInput"]
    assert train.transform.transforms[0].size == (224, 224) and train.transform.transforms[
        0
    ].scale == (0.08, 1.0)
    assert [type(t).__name__ for t in val.transform.transforms] == [
        "Resize",
        "CenterCrop",
        "ToModelInput",
    ]
    assert val.transform.transforms[0].size == 256 and val[0][0].shape == (3, 224, 224)
    cfg.INPUT.SIZE = 64
    assert build_dataset(cfg, False).transform.transforms[0].size == 73  # 64 * 256 / 224
    # BGR, 0-255, normalized by the detector's pixel statistics
    x, label = val[0]
    img = np.asarray(Image.open(val.samples[0][0]).convert("RGB").resize((224, 224)))
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    bgr = (x * std + mean).mean(dim=(1, 2))
    assert torch.allclose(
        bgr, torch.tensor(img[:, :, ::-1].mean(axis=(0, 1)), dtype=torch.float32), atol=3
    )


def test_tiny_classifier_lowers_its_loss_on_a_fixed_batch(folder):
    cfg = small_cfg(folder, "")
    data = build_dataset(cfg, True)
    batch = next(iter(build_train_loader(data, 8, seed=0)))
    torch.manual_seed(0)
    model = ClassifierWithLoss(build_classifier(cfg, 2))
    loader = iter(lambda: batch, None)  # the same batch forever
    trainer = SimpleTrainer(
        model, loader, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    )
    losses = []
    with EventStorage():
        for i in range(8):
            trainer.iter = i
            trainer.run_step()
            with torch.no_grad():
                model.eval()
                losses.append(float(model(batch)["loss_cls"]))
                model.train()
    assert losses[-1] < 0.5 * losses[0], losses


def test_loader_is_exactly_resumable_and_independent_of_workers(folder):
    data = build_dataset(small_cfg(folder, ""), True)
    full = [b for _, b in zip(range(7), build_train_loader(data, 4, seed=5))]
    resumed = [b for _, b in zip(range(4), build_train_loader(data, 4, seed=5, start_iter=3))]
    workers = [b for _, b in zip(range(7), build_train_loader(data, 4, seed=5, num_workers=2))]
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(full, workers):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = next(iter(build_train_loader(data, 4, seed=6)))
    assert not torch.equal(other[0], full[0][0])


def _stop_at(trainer, iteration):
    def after_step(t):
        if t.iter == iteration:
            os.kill(
                os.getpid(), signal.SIGINT
            )  # StopOnSignal saves a checkpoint after the next step

    trainer.register_hooks([hooks.CallbackHook(after_step=after_step)])


def test_resume_equals_uninterrupted(folder, tmp_path):
    seed_all_rng(0)  # what default_setup does: the same initial weights in both runs
    full = ClassificationTrainer(small_cfg(folder, tmp_path / "full", **{"SOLVER.EPOCHS": "3"}))
    full.resume_or_load(resume=False)
    full_res = full.train()
    assert full.max_iter == 12 and os.path.isfile(tmp_path / "full" / "model_final.pth")

    cfg = small_cfg(folder, tmp_path / "cut", **{"SOLVER.EPOCHS": "3"})
    seed_all_rng(0)
    first = ClassificationTrainer(cfg)
    _stop_at(first, 4)
    first.resume_or_load(resume=False)
    with pytest.raises(hooks.TrainingInterrupted):
        first.train()
    assert open(tmp_path / "cut" / "last_checkpoint").read().strip() == "model_0000005.pth"
    second = ClassificationTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 6
    res = second.train()

    a, b = full.classifier.state_dict(), second.classifier.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert res == full_res
    fa = [json.loads(text) for text in open(tmp_path / "full" / "metrics.json")]
    fb = [json.loads(text) for text in open(tmp_path / "cut" / "metrics.json")]
    assert [e["iteration"] for e in fa] == [e["iteration"] for e in fb]
    for ea, eb in zip(fa, fb):  # (losses are medians over a window, which restarts on resume)
        assert ea.get("val/top1") == eb.get("val/top1") and ea.get("val/loss") == eb.get("val/loss")
        assert ea.get("lr") == eb.get("lr")


# (classifier overrides, detector overrides on tiny_cfg): a bottleneck R50 whose res5 is
# detectron2's C4 head, and a ResNet-18 whose own basic-block res5 is the head (RES5_HEAD_BLOCK
# basic).
CLASSIFIER_DETECTOR_PAIRS = {
    "R50-bottleneck-head": (
        [
            "MODEL.NAME",
            "resnet50",
            "MODEL.STEM_OUT_CHANNELS",
            "16",
            "MODEL.RES2_OUT_CHANNELS",
            "32",
            "MODEL.WIDTH_PER_GROUP",
            "8",
            "MODEL.STRIDE_IN_1X1",
            "True",
        ],
        ["MODEL.RESNETS.STRIDE_IN_1X1", True],
    ),
    "R18-basic-head": (
        [
            "MODEL.NAME",
            "resnet18",
            "MODEL.STEM_OUT_CHANNELS",
            "16",
            "MODEL.RES2_OUT_CHANNELS",
            "16",
        ],
        [
            "MODEL.RESNETS.DEPTH",
            18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            16,
            "MODEL.RESNETS.RES5_HEAD_BLOCK",
            "basic",
            "MODEL.RESNETS.STRIDE_IN_1X1",
            False,
        ],
    ),
}


@pytest.mark.parametrize("pair", sorted(CLASSIFIER_DETECTOR_PAIRS))
def test_classification_checkpoint_initializes_the_detector(tmp_path, pair):
    """A checkpoint of the classifier that matches the tiny C4 detector: every backbone and res5
    tensor is matched, the classifier head is dropped, the report says so."""
    cls_opts, det_opts = CLASSIFIER_DETECTOR_PAIRS[pair]
    cfg = get_cls_cfg()
    cfg.merge_from_list(cls_opts)
    torch.manual_seed(0)
    classifier = build_classifier(cfg, 3)
    with torch.no_grad():
        for name, t in classifier.state_dict().items():
            if t.is_floating_point():
                t.normal_().abs_()
    from resnet_backbones.classification import checkpoint_metadata

    ckpt = ClassificationCheckpointer(
        classifier, str(tmp_path), meta=checkpoint_metadata(cfg, ["a", "b", "c"])
    )
    ckpt.save("model_final", iteration=9)

    det_cfg = tiny_cfg(det_opts)
    detector = build_model(det_cfg)
    checkpointer = DetectionCheckpointer(detector)
    extra = checkpointer.load(str(tmp_path / "model_final.pth"))
    report = checkpointer.last_report
    src = classifier.state_dict()
    det = detector.state_dict()
    expected = {
        ("roi_heads." + k if k.startswith("res5.") else "backbone." + k): k
        for k in src
        if not k.startswith("linear.")
    }
    assert set(expected) <= set(report.matched)
    for dk, ck in expected.items():
        assert torch.equal(det[dk], src[ck]), dk
    assert not report.unexpected and not report.shape_mismatch
    assert {n for n, _ in report.dropped} == {"linear.weight", "linear.bias"}
    assert all(
        k.startswith(("proposal_generator.", "roi_heads.box_predictor.")) for k in report.missing
    )
    assert checkpointer._convention_mismatches(extra["meta"]) == []  # nothing to warn about
    meta = extra["meta"]  # the classifier's input convention travels with the weights
    assert meta["input_format"] == det_cfg.INPUT.FORMAT
    assert meta["stride_in_1x1"] is det_cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert meta["pixel_mean"] == list(det_cfg.MODEL.PIXEL_MEAN) and meta["classes"] == [
        "a",
        "b",
        "c",
    ]

    # the same through resnet_backbones.checkpoint directly, strict about the backbone
    fresh = build_model(det_cfg)
    rep = load_checkpoint(
        fresh, str(tmp_path / "model_final.pth"), strict=False, drop_classifier=True
    )
    assert set(expected) <= set(rep.matched)


def test_demo_configs_fit_each_other():
    """The demo's classifier and detector have the same backbone and res5 shapes and conventions."""
    cls_cfg = get_cls_cfg()
    cls_cfg.merge_from_file(DEMO_PRETRAIN)
    det_cfg = get_cfg()
    det_cfg.merge_from_file(DEMO_DET)
    classifier = build_classifier(cls_cfg, 3)
    detector = build_model(det_cfg)
    report = load_checkpoint(detector, classifier.state_dict(), strict=False, drop_classifier=True)
    assert not report.shape_mismatch and not report.unexpected
    assert len(report.matched) == len(classifier.state_dict()) - 2
    assert cls_cfg.INPUT.FORMAT == det_cfg.INPUT.FORMAT
    assert list(cls_cfg.MODEL.PIXEL_MEAN) == list(det_cfg.MODEL.PIXEL_MEAN)
    assert list(cls_cfg.MODEL.PIXEL_STD) == list(det_cfg.MODEL.PIXEL_STD)
    assert cls_cfg.MODEL.STRIDE_IN_1X1 == det_cfg.MODEL.RESNETS.STRIDE_IN_1X1


# ------------------------------------------------------------------------------ CIFAR-10
def _write_batch(path, images, labels, bytes_keys=False):
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    d = {
        "batch_label": "test",
        "labels": list(labels),
        "data": data,
        "filenames": [f"{i}.png" for i in labels],
    }
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def test_cifar_reader_on_hand_written_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = [i % 10 for i in range(12)]
    for i in range(5):
        _write_batch(
            root / f"data_batch_{i + 1}",
            images[2 * i : 2 * i + 2],
            labels[2 * i : 2 * i + 2],
            bytes_keys=i % 2,
        )
    _write_batch(root / "test_batch", images[10:], labels[10:])
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)

    imgs, labs = read_cifar10_batch(root / "data_batch_1")
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 32, 32, 3) and labs.tolist() == [0, 1]
    assert np.array_equal(imgs, images[:2])  # 1024 red, then green, then blue values per row

    train = CIFAR10(str(tmp_path), train=True)  # the parent folder is found too
    test = CIFAR10(str(root), train=False)
    assert len(train) == 10 and len(test) == 2 and train.classes[3] == "c3"
    assert np.array_equal(np.asarray(train[7][0]), images[7]) and train[7][1] == 7

    cfg = get_cls_cfg("cifar10")
    cfg.DATA.PATH = str(root)
    x, y = build_dataset(cfg, True)[0]
    assert x.shape == (3, 32, 32) and y == 0
    tf = [type(t).__name__ for t in build_dataset(cfg, True).transform.transforms]
    assert tf == ["RandomCrop", "RandomHorizontalFlip", "ToModelInput"]


def test_cifar_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(UnsafePickleError):
        read_cifar10_batch(path)
    assert not (tmp_path / "pwned").exists()
    bad = tmp_path / "test_batch"
    with open(bad, "wb") as f:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match="3072"):
        read_cifar10_batch(bad)


# ------------------------------------------------------------------------------ CLI
def test_cli_trains_evaluates_and_writes_the_engine_outputs(folder, tmp_path, capsys):
    import train_cls

    out = tmp_path / "run"
    common = [
        "--model",
        "resnet20_cifar",
        "--data",
        str(folder),
        "--input-size",
        "16",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--progress",
        "off",
        "--output-dir",
        str(out),
    ]
    assert (
        train_cls.invoke_main(
            common
            + ["--epochs", "1", "--label-smoothing", "0.1", "--cosine", "SOLVER.WARMUP_ITERS", "1"]
        )
        == 0
    )
    for name in (
        "config.yaml",
        "env.txt",
        "log.txt",
        "metrics.json",
        "model_final.pth",
        "last_checkpoint",
    ):
        assert (out / name).is_file(), name
    lines = [json.loads(text) for text in open(out / "metrics.json")]
    assert (
        {"total_loss", "lr"} <= set(lines[0])
        and "val/top1" in lines[-1]
        and "val/top5" in lines[-1]
    )
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["meta"]["classes"] == ["bright", "dark"] and "linear.weight" in saved["model"]
    capsys.readouterr()
    assert (
        train_cls.invoke_main(common + ["--eval-only", "--weights", str(out / "model_final.pth")])
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.rindex('{\n  "val"') :])
    assert result["val"]["top1"] == pytest.approx(lines[-1]["val/top1"])


def test_cli_reports_missing_data(tmp_path, capsys):
    import train_cls

    assert (
        train_cls.invoke_main(["--data", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert f"error: '{tmp_path / 'nope' / 'train'}' does not exist: --data must hold train/" in err
    assert train_cls.invoke_main(["--dataset", "cifar10", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"error: no CIFAR-10 python batches in '{tmp_path}'" in err
    assert "expected data_batch_1 .. data_batch_5 and test_batch" in err

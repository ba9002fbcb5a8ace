"""The paper's classification test protocols (resnet_backbones.classification.test_protocols):
10-crop geometry, the fully-convolutional form, the multi-scale ensemble, per-protocol metric
names in the trainer and in ``tools/train_cls.py --eval-only --test-protocol``."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import functional as TF

from resnet_backbones.classification import (
    PAPER_SCALES,
    ClassificationCheckpointer,
    ClassificationTrainer,
    FullyConvolutionalClassifier,
    MultiScaleEnsemble,
    MultiScaleViews,
    TenCrop,
    TenCropEnsemble,
    build_classifier,
    build_transform,
    check_protocols,
    checkpoint_metadata,
    evaluate_protocols,
    get_cls_cfg,
    multiscale_sizes,
    result_name,
    ten_crop,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from helpers import randomize_norms  # noqa: E402

CLASSES = ("a", "b", "c")


def _write_folder(root, sizes):
    """An ImageFolder with train/ and val/: per class, one noise image of each (width, height)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, cls in enumerate(CLASSES):
            os.makedirs(root / split / cls)
            for i, (w, h) in enumerate(sizes):
                img = rng.normal(60 + 60 * k, 40, (h, w, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def square_folder(tmp_path_factory):
    """3 classes x 3 square 24x24 images per split."""
    return _write_folder(tmp_path_factory.mktemp("square"), [(24, 24)] * 3)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """3 classes x 3 images of different shapes per split."""
    return _write_folder(tmp_path_factory.mktemp("mixed"), [(24, 24), (30, 20), (20, 26)])


def tiny_cfg(data="", **kw):
    """A ResNet-18 at 1/8 width on 16-pixel crops, CPU."""
    cfg = get_cls_cfg()
    cfg.merge_from_list(
        ["MODEL.NAME", "resnet18", "MODEL.STEM_OUT_CHANNELS", "8", "MODEL.RES2_OUT_CHANNELS", "8"]
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATA.PATH = str(data)
    cfg.DATA.NUM_WORKERS = 0
    cfg.INPUT.SIZE = 16
    cfg.SOLVER.BATCH_SIZE = 4
    cfg.PROGRESS = "off"
    for k, v in kw.items():
        cfg.merge_from_list([k, v])
    return cfg


def random_classifier(cfg, seed=0):
    """A random classifier with non-trivial BatchNorm statistics and a confident fc, in eval
    mode."""
    torch.manual_seed(seed)
    model = randomize_norms(build_classifier(cfg, len(CLASSES)), seed)
    with torch.no_grad():
        model.linear.weight.normal_(std=1.0)
        model.linear.bias.normal_(std=0.5)
    return model.eval()


# ------------------------------------------------------------------------------ config and names
def test_protocol_names_and_defaults():
    cfg = get_cls_cfg()
    assert tuple(cfg.TEST.PROTOCOLS) == ("single",)  # the default evaluation is unchanged
    assert [result_name(p) for p in ("single", "10crop", "multiscale")] == [
        "val",
        "val_10crop",
        "val_multiscale",
    ]
    assert check_protocols(["10crop", "single", "10crop"]) == ("10crop", "single")
    with pytest.raises(ValueError, match="TEST.PROTOCOLS must name one or more of"):
        check_protocols(["5crop"])
    with pytest.raises(ValueError):
        check_protocols([])
    assert multiscale_sizes(cfg) == list(PAPER_SCALES) == [224, 256, 384, 480, 640]
    cfg.INPUT.SIZE = 64  # the shapes classifier: the paper's scales x 64 / 224
    assert multiscale_sizes(cfg) == [64, 73, 110, 137, 183]
    cfg.TEST.MULTISCALE_SIZES = (64, 96)
    assert multiscale_sizes(cfg) == [64, 96]


# ------------------------------------------------------------------------------ 10-crop
def test_ten_crop_takes_the_corners_the_center_and_their_flips():
    image = torch.arange(3 * 9 * 12, dtype=torch.float32).view(3, 9, 12)
    crops = ten_crop(image, 5)
    assert crops.shape == (10, 3, 5, 5)
    expected = [
        image[:, :5, :5],  # top-left
        image[:, :5, 7:],  # top-right
        image[:, 4:, :5],  # bottom-left
        image[:, 4:, 7:],  # bottom-right
        TF.center_crop(image, [5, 5]),  # the single protocol's center crop
    ]
    for i, e in enumerate(expected):
        assert torch.equal(crops[i], e), i
        assert torch.equal(crops[5 + i], e.flip(-1)), 5 + i
    # the corner crops reach the image's corners exactly
    assert crops[0][:, 0, 0].tolist() == image[:, 0, 0].tolist()
    assert crops[1][:, 0, -1].tolist() == image[:, 0, -1].tolist()
    assert crops[2][:, -1, 0].tolist() == image[:, -1, 0].tolist()
    assert crops[3][:, -1, -1].tolist() == image[:, -1, -1].tolist()
    assert torch.equal(crops[4], image[:, 2:7, 4:9])
    with pytest.raises(ValueError, match="smaller than"):
        ten_crop(image, 10)


def test_ten_crop_transform_resizes_as_the_single_protocol():
    cfg = tiny_cfg()  # SIZE 16: resize 18 (16 x 256 / 224)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    crops = TenCrop(cfg)(image)
    assert crops.shape == (10, 3, 16, 16)
    single = build_transform(cfg, is_train=False)(image)
    assert torch.equal(crops[4], single)  # the center crop is the single protocol's view
    resized = build_transform(cfg, is_train=False).transforms[0](image)
    assert resized.size == (27, 18)
    assert torch.equal(crops[3], TenCrop(cfg).to_input(resized)[:, 2:, 11:])  # bottom-right


def test_ten_crop_of_cifar_configs_pads_the_image():
    cfg = get_cls_cfg("cifar10")  # 32x32 images, 4-pixel zero padding
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    crops = TenCrop(cfg)(image)
    plain = build_transform(cfg, is_train=False)(image)
    assert crops.shape == (10, 3, 32, 32)
    assert torch.equal(crops[4], plain)  # the center of the padded image is the image
    assert torch.equal(crops[0][:, 4:, 4:], plain[:, :28, :28])
    black = TenCrop(cfg).to_input(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    assert torch.equal(crops[0][:, 0, 0], black)  # zero padding, normalized


def test_ten_crop_ensemble_averages_the_softmax_of_the_crops():
    cfg = tiny_cfg()
    model = random_classifier(cfg)
    crops = torch.randn(2, 10, 3, 16, 16)
    with torch.no_grad():
        out = TenCropEnsemble(model)(crops)
        probs = torch.stack([F.softmax(model(c), dim=1).mean(0) for c in crops])
    torch.testing.assert_close(out.exp(), probs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out.exp(), F.softmax(model(crops[:, 4]), dim=1), atol=1e-3)


# ------------------------------------------------------------------------------ fully convolutional
@pytest.mark.parametrize("size", [224, 16])
def test_fully_convolutional_form_equals_the_plain_forward_at_the_crop_size(size):
    """On a SIZE x SIZE image the score map has one position: the network's own output."""
    cfg = tiny_cfg(**{"INPUT.SIZE": size})
    model = random_classifier(cfg)
    fcn = FullyConvolutionalClassifier(model, size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        scores = fcn.score_map(x)
        plain = model(x)
    assert fcn.window == ((7, 7) if size == 224 else (1, 1))
    assert scores.shape == (2, 3, 1, 1)
    torch.testing.assert_close(fcn(x), plain, rtol=1e-5, atol=1e-5)


def test_score_map_is_the_fc_layer_at_every_window():
    cfg = tiny_cfg(**{"INPUT.SIZE": 64})
    model = random_classifier(cfg)
    fcn = FullyConvolutionalClassifier(model, 64)
    assert fcn.window == (2, 2)  # the final map of a 64x64 crop (stride 32)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        fmap = fcn.feature_map(x)  # 3 x 5
        scores = fcn.score_map(x)
        assert fmap.shape[-2:] == (3, 5) and scores.shape == (1, 3, 2, 4)
        for i in range(2):
            for j in range(4):
                window = fmap[:, :, i : i + 2, j : j + 2].mean(dim=(2, 3))
                torch.testing.assert_close(scores[:, :, i, j], model.linear(window))
        torch.testing.assert_close(fcn(x), scores.mean(dim=(2, 3)))
        # not global pooling: the windows weigh the map's interior more than its border
        assert not torch.allclose(fcn(x), model(x), atol=1e-4)
    # a map smaller than the window is pooled whole
    with torch.no_grad():
        assert fcn.score_map(torch.randn(1, 3, 32, 64)).shape == (1, 3, 1, 1)


def test_fully_convolutional_form_leaves_batchnorm_statistics_alone():
    cfg = tiny_cfg()
    model = random_classifier(cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FullyConvolutionalClassifier(model, 16)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_multiscale_ensemble_batches_equal_sizes_as_it_scores_each_image(mixed_folder):
    cfg = tiny_cfg(
        mixed_folder, **{"TEST.MULTISCALE_SIZES": "(16, 24)", "TEST.MULTISCALE_FLIP": True}
    )
    model = random_classifier(cfg)
    views_of = MultiScaleViews(cfg, multiscale_sizes(cfg), flip=True)
    rng = np.random.default_rng(3)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in [(24, 24), (30, 20), (24, 24), (20, 26)]
    ]
    per_image = [views_of(im) for im in images]
    assert len(per_image[0]) == 4 and per_image[1][2].shape == (3, 24, 36)
    assert torch.equal(per_image[1][1], per_image[1][0].flip(-1))
    ensemble = MultiScaleEnsemble(model, 16)
    with torch.no_grad():
        batched = ensemble([list(v) for v in zip(*per_image)])
        alone = torch.cat([ensemble([[v] for v in views]) for views in per_image])
        by_hand = torch.stack(
            [
                torch.stack([F.softmax(ensemble.fcn(v[None]), dim=1)[0] for v in views]).mean(0)
                for views in per_image
            ]
        )
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.exp(), by_hand, rtol=1e-5, atol=1e-6)


def test_multiscale_at_the_crop_size_equals_the_single_center_crop(square_folder):
    """Square images, one scale = SIZE, and a single protocol without the 256/224 margin: the
    fully-convolutional evaluation gives the plain evaluation's numbers."""
    cfg = tiny_cfg(
        square_folder,
        **{"INPUT.RESIZE_SIZE": 16, "TEST.MULTISCALE_SIZES": "(16,)"},
    )
    model = random_classifier(cfg)
    res = evaluate_protocols(model, cfg, 4, protocols=["single", "multiscale"])
    assert set(res) == {"val", "val_multiscale"}
    single, multi = res["val"], res["val_multiscale"]
    assert single["num_images"] == multi["num_images"] == 9
    assert single["top1"] == multi["top1"] and single["top5"] == multi["top5"]
    assert multi["loss"] == pytest.approx(single["loss"], rel=1e-5)
    # with the paper's scales, the numbers are those of another evaluation
    cfg.TEST.MULTISCALE_SIZES = ()
    other = evaluate_protocols(model, cfg, 4, protocols=["multiscale"])["val_multiscale"]
    assert other["loss"] != pytest.approx(single["loss"], rel=1e-3)


# ------------------------------------------------------------------------------ trainer and CLI
def test_trainer_logs_every_protocol(square_folder, tmp_path):
    cfg = tiny_cfg(
        square_folder,
        **{
            "TEST.PROTOCOLS": "('10crop', 'single', 'multiscale')",
            "SOLVER.EPOCHS": "1",
            "SOLVER.STEP_EPOCHS": "()",
            "OUTPUT_DIR": str(tmp_path),
            "SEED": "0",
            "LOG_PERIOD": "1",
        },
    )
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    final = trainer.train()
    lines = [json.loads(t) for t in open(tmp_path / "metrics.json")]
    last = lines[-1]
    for group in ("val", "val_10crop", "val_multiscale"):
        for metric in ("top1", "top5", "loss"):
            assert f"{group}/{metric}" in last, (group, metric)
    assert final["top1"] == last["val_10crop/top1"]  # train() reports the first protocol
    with pytest.raises(ValueError, match="TEST.PROTOCOLS"):
        ClassificationTrainer(tiny_cfg(square_folder, **{"TEST.PROTOCOLS": "('dense',)"}))


def test_cli_eval_only_reports_the_chosen_protocols(square_folder, tmp_path, capsys):
    import train_cls

    cfg = tiny_cfg()
    model = random_classifier(cfg)
    ClassificationCheckpointer(
        model, str(tmp_path), meta=checkpoint_metadata(cfg, list(CLASSES))
    ).save("model_final")
    weights = str(tmp_path / "model_final.pth")
    flags = [
        *("--model", "resnet18", "--data", str(square_folder), "--input-size", "16"),
        *("--device", "cpu", "--workers", "0", "--progress", "off", "--batch-size", "4"),
        *("--output-dir", str(tmp_path / "eval"), "--eval-only", "--weights", weights),
    ]
    opts = ["MODEL.STEM_OUT_CHANNELS", "8", "MODEL.RES2_OUT_CHANNELS", "8"]

    def run(*extra, key_values=()):
        capsys.readouterr()
        assert train_cls.invoke_main(flags + list(extra) + opts + list(key_values)) == 0
        lines = capsys.readouterr().out.splitlines()
        start = max(i for i, line in enumerate(lines) if line == "{")
        return json.loads("\n".join(lines[start:]))

    default = run()
    assert set(default) == {"val"}
    chosen = run("--test-protocol", "10crop,multiscale")
    assert list(chosen) == ["val_10crop", "val_multiscale"]
    assert all({"top1", "top5", "loss"} <= set(r) for r in chosen.values())
    every = run("--test-protocol", "all")
    assert list(every) == ["val", "val_10crop", "val_multiscale"]
    assert every["val"] == default["val"] and every["val_10crop"] == chosen["val_10crop"]
    by_key = run(key_values=("TEST.PROTOCOLS", "('multiscale',)"))  # the config key alone
    assert by_key == {"val_multiscale": chosen["val_multiscale"]}

    assert train_cls.invoke_main(flags + opts + ["TEST.PROTOCOLS", "('5crop',)"]) == 2
    assert "error: TEST.PROTOCOLS must name one or more of" in capsys.readouterr().err
    assert train_cls.build_parser().parse_args(
        ["--test-protocol", "multiscale, single", "--eval-only"]
    ).test_protocol == ("multiscale", "single")
    with pytest.raises(SystemExit):
        train_cls.build_parser().parse_args(["--test-protocol", "10crop,dense"])
    assert "argument --test-protocol: TEST.PROTOCOLS must name" in capsys.readouterr().err

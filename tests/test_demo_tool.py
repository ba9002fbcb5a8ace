"""tools/demo.py: detections drawn with OpenCV on single images and folders."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch

from resnet_backbones import build_model
from resnet_backbones.checkpoint.detection_checkpoint import DetectionCheckpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import demo  # noqa: E402  (tools/demo.py)
from helpers import TINY_C4, tiny_cfg  # noqa: E402

TINY = str(TINY_C4)


def test_draw_detections_changes_pixels_on_the_box_only():
    image = np.full((120, 160, 3), 127, np.uint8)
    out = demo.draw_detections(
        image, np.array([[40.0, 50.0, 100.0, 90.0]]), [0.93], [1], ["circle", "rectangle"]
    )
    assert out.shape == image.shape and np.array_equal(
        image, np.full_like(image, 127)
    )  # input untouched
    changed = np.any(out != image, axis=2)
    assert (
        changed[50, 60] and changed[89, 70] and changed[70, 40] and changed[70, 99]
    )  # the four edges
    assert not changed[70, 70]  # the inside of the box
    assert not changed[110, 150] and not changed[5, 150]  # far from the box and its label
    assert changed[40:50, 40:100].any()  # the label above the box
    assert tuple(out[70, 40]) == demo.color_for(1)


def test_collect_inputs_and_output_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in ("a/x.jpg", "a/y.png", "b/x.jpg", "a/notes.txt"):
        (tmp_path / p).write_bytes(b"")
    paths = demo.collect_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "x.jpg")])
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["a/x.jpg", "a/y.png", "b/x.jpg"]
    outs = demo.output_paths(paths, "out")
    assert outs == [
        os.path.join("out", "x.png"),
        os.path.join("out", "y.png"),
        os.path.join("out", "x_1.png"),
    ]
    assert demo.output_paths(paths[:1], "result.jpg") == ["result.jpg"]
    with pytest.raises(FileNotFoundError):
        demo.collect_inputs([str(tmp_path / "missing.jpg")])


def forced_model(cfg):
    """The tiny C4 detector of ``cfg`` whose box head calls every proposal a confident 'rectangle'
    (class 1) without moving it: detections are guaranteed, wherever the RPN proposes."""
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 10.0, 0.0, 0.0]))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
    return model


@pytest.fixture(scope="module")
def forced_detector(tmp_path_factory):
    """Weights of :func:`forced_model` (the tiny C4 config)."""
    model = forced_model(tiny_cfg())
    path = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, str(path)).save("forced")
    return str(path / "forced.pth")


def test_demo_draws_boxes_with_names_and_scores(tmp_path, forced_detector, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    originals = {}
    for name in ("one", "two"):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        cv2.rectangle(img, (30, 20), (90, 70), (0, 0, 0), -1)
        cv2.imwrite(str(folder / f"{name}.png"), img)
        originals[name] = cv2.imread(str(folder / f"{name}.png"))
    single = tmp_path / "single.jpg"
    cv2.imwrite(str(single), originals["one"])

    out = tmp_path / "out"
    code = demo.main(
        [
            "--config-file",
            TINY,
            "--input",
            str(folder),
            str(single),
            "--output",
            str(out),
            "--json",
            str(out / "detections.json"),
            "--confidence-threshold",
            "0.9",
            "--opts",
            "MODEL.WEIGHTS",
            forced_detector,
            "MODEL.DEVICE",
            "cpu",
            "TEST.DETECTIONS_PER_IMAGE",
            "3",
        ]
    )
    assert code == 0
    assert "3 image(s) processed" in capsys.readouterr().out
    records = json.load(open(out / "detections.json"))
    assert [os.path.basename(r["file_name"]) for r in records] == [
        "one.png",
        "two.png",
        "single.jpg",
    ]
    for rec, name in zip(records, ("one", "two", "single")):
        drawn = cv2.imread(str(out / f"{name}.png"))
        assert drawn is not None and drawn.shape == (96, 128, 3)
        dets = rec["detections"]
        assert 1 <= len(dets) <= 3
        assert all(d["class_name"] == "rectangle" and d["score"] > 0.9 for d in dets)
        original = originals["one" if name == "single" else name].astype(int)
        if name == "single":  # JPEG: compare with what the tool read
            original = cv2.imread(str(single)).astype(int)
        changed = np.abs(drawn.astype(int) - original).sum(axis=2) > 0
        x0, y0, x1, y1 = dets[0]["box_xyxy"]
        xa, ya = int(np.clip(np.floor(x0), 0, 127)), int(np.clip(np.floor(y0), 0, 95))
        xb = int(np.clip(np.ceil(x1) - 1, 0, 127))
        yb = int(np.clip(np.ceil(y1) - 1, 0, 95))
        ym = (ya + yb) // 2
        assert changed[ym, xa] and changed[ym, xb], "box edges drawn"
        assert changed[ya : yb + 1, xa : xb + 1].mean() < 1.0 or (xb - xa < 4)  # not a filled box


def test_demo_reports_missing_inputs_and_weights(tmp_path, forced_detector, capsys):
    assert (
        demo.main(
            [
                "--config-file",
                TINY,
                "--input",
                str(tmp_path / "nothing.jpg"),
                "--opts",
                "MODEL.WEIGHTS",
                forced_detector,
            ]
        )
        == 2
    )
    assert "nothing.jpg" in capsys.readouterr().err
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    assert (
        demo.main(
            [
                "--config-file",
                TINY,
                "--input",
                str(img),
                "--opts",
                "MODEL.WEIGHTS",
                str(tmp_path / "missing.pth"),
                "MODEL.DEVICE",
                "cpu",
            ]
        )
        == 2
    )
    assert "missing.pth" in capsys.readouterr().err


def test_draw_masks_fills_the_mask_in_the_class_color_and_nothing_else():
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((1, 60, 80), bool)
    masks[0, 20:40, 30:50] = True  # inside the box below, away from its edges and label
    out = demo.draw_detections(
        image, np.array([[10.0, 10.0, 70.0, 55.0]]), [0.9], [2], ["a", "b", "c"], masks=masks
    )
    color = np.array(demo.color_for(2), np.float64)
    expected = np.round(100 * 0.5 + color * 0.5)
    assert np.array_equal(out[30, 40], expected.astype(np.uint8))  # filled, blended
    assert tuple(out[20, 30]) == demo.color_for(2)  # the outline
    assert np.array_equal(out[15, 20], image[15, 20])  # in the box, outside the mask
    with pytest.raises(ValueError, match=r"\(N, 60, 80\) masks"):
        demo.draw_detections(image, np.zeros((1, 4)), masks=np.zeros((1, 30, 40), bool))


def test_demo_draws_masks_and_writes_rle_for_a_mask_rcnn_config(tmp_path, capsys):
    """A Mask R-CNN config (tiny C4 + MASK_ON) whose heads call every proposal a confident
    'rectangle' with a full mask: the PNG is filled inside the boxes and the JSON holds RLE masks
    that decode to the drawn area."""
    from pycocotools import mask as mask_util

    model = forced_model(tiny_cfg(MODEL__MASK_ON=True))
    with torch.no_grad():
        model.roi_heads.mask_head.predictor.weight.zero_()
        model.roi_heads.mask_head.predictor.bias.fill_(10.0)  # every mask pixel on
    DetectionCheckpointer(model, str(tmp_path)).save("forced_mask")
    img = np.full((96, 128, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), img)
    out = tmp_path / "out.png"
    code = demo.main(
        [
            "--config-file",
            TINY,
            "--input",
            str(tmp_path / "in.png"),
            "--output",
            str(out),
            "--json",
            str(tmp_path / "dets.json"),
            "--opts",
            "MODEL.MASK_ON",
            "True",
            "MODEL.WEIGHTS",
            str(tmp_path / "forced_mask.pth"),
            "TEST.DETECTIONS_PER_IMAGE",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    det = json.load(open(tmp_path / "dets.json"))[0]["detections"][0]
    mask = mask_util.decode(det["segmentation"]).astype(bool)
    assert mask.shape == (96, 128) and det["area"] == int(mask.sum()) > 0
    x0, y0, x1, y1 = det["box_xyxy"]
    ys, xs = np.nonzero(mask)
    assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) and ys.min() >= np.floor(y0) - 1
    drawn = cv2.imread(str(out)).astype(int)
    changed = np.abs(drawn - img.astype(int)).sum(axis=2) > 0
    assert changed[mask].mean() > 0.95  # filled where the mask is
    assert not changed[~mask].mean() > 0.5  # not an image-wide tint


def test_demo_refuses_an_rpn_only_config_with_a_clear_error(tmp_path, capsys):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    code = demo.main(
        [
            "--config-file",
            TINY,
            "--input",
            str(img),
            "--opts",
            "MODEL.META_ARCHITECTURE",
            "ProposalNetwork",
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "ProposalNetwork returns ['proposals'] (no 'instances')" in err

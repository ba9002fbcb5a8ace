"""``DefaultPredictor``: resizing, channel order, and detections mapped back to the original
image."""

import numpy as np
import pytest
import torch
from helpers import tiny_cfg

from resnet_backbones import DefaultPredictor
from resnet_backbones.engine import ResizeShortestEdge
from resnet_backbones.structures import Boxes, Instances

FEW_PROPOSALS = {"MODEL.RPN.POST_NMS_TOPK_TEST": 16}  # tiny_cfg: MIN_SIZE_TEST 160, MAX 256


@pytest.mark.parametrize(
    "hw, short, max_size, expected",
    [
        ((300, 450), 160, 256, (160, 240)),  # short side to 160
        ((100, 400), 160, 256, (64, 256)),  # long side capped: 160x640 -> x0.4
        ((480, 640), 800, 1333, (800, 1067)),  # detectron2's rounding: int(1066.67 + 0.5)
        ((51, 51), 160, 256, (160, 160)),
        ((123, 77), 0, 256, (123, 77)),  # 0: no resize
    ],
)
def test_predictor_resize_output_size(hw, short, max_size, expected):
    cfg = tiny_cfg(FEW_PROPOSALS)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = short, max_size
    aug = DefaultPredictor(cfg).aug
    image = np.zeros(hw + (3,), dtype=np.uint8)
    assert aug.get_transform(image).apply_image(image).shape == expected + (3,)


class _Recorder:
    """Stands in for the RoI heads: records the network input and returns one known box."""

    def __init__(self, box_in_input):
        self.box = box_in_input
        self.seen = {}

    def __call__(self, images, features, proposals, targets=None):
        self.seen["image_sizes"] = list(images.image_sizes)
        self.seen["tensor"] = images.tensor.clone()
        h, w = images.image_sizes[0]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor([self.box]))
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.tensor([1])
        return [inst], {}


def test_detection_maps_back_to_the_original_image():
    """A 300x450 image is resized to 160x240; a detection there comes back in original pixels."""
    pred = DefaultPredictor(tiny_cfg(FEW_PROPOSALS))
    scale = 160 / 300
    original_box = [30.0, 60.0, 150.0, 240.0]
    recorder = _Recorder([c * scale for c in original_box])
    pred.model.roi_heads.forward = recorder
    image = np.random.default_rng(0).integers(0, 256, size=(300, 450, 3), dtype=np.uint8)
    out = pred(image)
    assert recorder.seen["image_sizes"] == [(160, 240)]
    inst = out["instances"]
    assert inst.image_size == (300, 450)
    torch.testing.assert_close(
        inst.pred_boxes.tensor, torch.tensor([original_box]), rtol=0, atol=1e-4
    )
    assert inst.scores.tolist() == pytest.approx([0.9]) and inst.pred_classes.tolist() == [1]
    # the network saw the resized image, normalized with the config's BGR statistics
    resized = ResizeShortestEdge(160, 256).get_transform(image).apply_image(image)
    chw = torch.as_tensor(resized.transpose(2, 0, 1).astype("float32"))
    expected = (chw - pred.model.pixel_mean) / pred.model.pixel_std
    torch.testing.assert_close(recorder.seen["tensor"][0], expected)


def test_rgb_models_get_rgb_input():
    cfg = tiny_cfg(FEW_PROPOSALS)
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resize: compare pixels directly
    pred = DefaultPredictor(cfg)
    recorder = _Recorder([1.0, 1.0, 5.0, 5.0])
    pred.model.roi_heads.forward = recorder
    bgr = np.zeros((40, 60, 3), dtype=np.uint8)
    bgr[..., 0], bgr[..., 2] = 10, 200  # blue 10, red 200
    pred(bgr)
    seen = recorder.seen["tensor"][0]
    assert seen.shape == (3, 40, 60)
    assert seen[0].unique().tolist() == [200.0] and seen[2].unique().tolist() == [10.0]  # R first


def test_real_model_end_to_end():
    pred = DefaultPredictor(tiny_cfg(FEW_PROPOSALS))
    pred.model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep all
    image = np.random.default_rng(1).integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    inst = pred(image)["instances"]
    assert inst.image_size == (90, 130) and len(inst) > 0
    b = inst.pred_boxes.tensor
    assert (b[:, 0::2] <= 130).all() and (b[:, 1::2] <= 90).all() and (b >= 0).all()
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}


@pytest.fixture(scope="module")
def predictor():
    pred = DefaultPredictor(tiny_cfg(FEW_PROPOSALS))
    pred.model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep all
    return pred


def test_predictor_rejects_bad_images(predictor):
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((20, 20, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected an HxWx3 image .*got shape \(20, 20, 2\)"):
        predictor(np.zeros((20, 20, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"got shape \(2, 20, 20, 3\)"):
        predictor(np.zeros((2, 20, 20, 3), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 40, 3), (40, 0, 3), (0, 0)])
def test_predictor_empty_image_names_the_shape(predictor, shape):
    # it was a ZeroDivisionError in the resize
    with pytest.raises(ValueError) as info:
        predictor(np.zeros(shape, dtype=np.uint8))
    assert str(info.value) == (
        f"DefaultPredictor input: the image is empty (shape {shape}); "
        "height and width must be 1 or more"
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int64, bool])
def test_predictor_non_uint8_image_names_the_dtype(predictor, dtype):
    with pytest.raises(ValueError) as info:
        predictor(np.zeros((20, 30, 3), dtype=dtype))
    msg = str(info.value)
    assert msg.startswith(
        "DefaultPredictor input: expected a uint8 image with values 0-255, "
        f"got dtype {np.dtype(dtype)}"
    )
    is_float = np.dtype(dtype).kind == "f"
    assert ("(image * 255).round().clip(0, 255).astype(np.uint8)" in msg) == is_float


def test_predictor_rgba_image_is_refused_with_the_conversion(predictor):
    with pytest.raises(ValueError) as info:
        predictor(np.zeros((20, 30, 4), dtype=np.uint8))
    msg = str(info.value)
    assert "4-channel image of shape (20, 30, 4)" in msg
    assert "cv2.COLOR_BGRA2BGR" in msg and "cv2.COLOR_RGBA2BGR" in msg


def test_predictor_non_array_input_names_its_type(predictor):
    from PIL import Image

    pil_hint = r"got Image \(for a PIL RGB image: np.asarray\(image\)\[:, :, ::-1\]\)"
    with pytest.raises(ValueError, match=pil_hint):
        predictor(Image.new("RGB", (30, 20)))
    with pytest.raises(ValueError, match="HxWx3 uint8 numpy array in BGR order .*got Tensor"):
        predictor(torch.zeros(20, 30, 3, dtype=torch.uint8))


def test_predictor_grayscale_is_replicated_to_three_channels(predictor):
    gray = np.random.default_rng(2).integers(0, 256, size=(50, 70), dtype=np.uint8)
    expected = predictor(np.repeat(gray[:, :, None], 3, axis=2))["instances"]
    assert len(expected) > 0
    for image in (gray, gray[:, :, None]):
        got = predictor(image)["instances"]
        assert got.image_size == (50, 70)
        assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)
        assert torch.equal(got.scores, expected.scores)

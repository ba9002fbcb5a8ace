"""``DefaultPredictor``: one image in, detections out, as detectron2's ``DefaultPredictor``.

    predictor = DefaultPredictor(cfg)          # builds the model, loads cfg.MODEL.WEIGHTS
    outputs = predictor(cv2.imread("x.jpg"))   # HxWx3 uint8, BGR (OpenCV's order)
    outputs["instances"]                       # pred_boxes, scores, pred_classes, in x.jpg's pixels

The image is resized so that its short side is ``INPUT.MIN_SIZE_TEST`` and its long side at most
``INPUT.MAX_SIZE_TEST`` (``data.transforms.ResizeShortestEdge``: bilinear, through PIL as in
detectron2, so pixels match), converted to ``INPUT.FORMAT`` and fed to the model; detections are
mapped back to the original image size.

Speed switches (both off by default, where outputs equal detectron2's):

* ``TEST.AMP.ENABLED`` / ``TEST.AMP.DTYPE``: run the model under ``torch.autocast`` ("bfloat16" on
  CPU or CUDA, "float16" on CUDA); box decoding, NMS and scores stay float32.
* ``MODEL.FAST_PATH`` (default on): the C4 fast path of training
  (:func:`~resnet_backbones.modeling.fast_path.optimize_detector_for_training`), which keeps the
  state-dict names, so ``predictor.model`` still loads detectron2 checkpoints.
* ``DefaultPredictor(cfg, optimize=True)``: the inference fast path
  (:func:`~resnet_backbones.modeling.fast_path.optimize_detector_for_inference`: FrozenBN folded
  into the convs, channels_last, RoIAlign only where res5 reads it), applied after the weights
  are loaded; fp32 detections equal the unoptimized model's up to float rounding. The model's
  state dict then has the folded form (build a new predictor to load other weights).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from ..checkpoint.detection_checkpoint import DetectionCheckpointer
from ..data import MetadataCatalog
from ..data.transforms import ResizeShortestEdge
from ..modeling import build_model
from ..precision import autocast_context, inference_amp_dtype

__all__ = ["DefaultPredictor", "ResizeShortestEdge"]


class DefaultPredictor:
    """Build the model of ``cfg``, load ``cfg.MODEL.WEIGHTS``, and run it on single images.

    ``predictor(image)`` takes an ``HxWx3`` uint8 numpy array in **BGR** order (``cv2.imread``)
    and returns ``{"instances": Instances}`` with ``pred_boxes`` (XYXY, original-image pixels),
    ``scores`` and ``pred_classes``, on ``cfg.MODEL.DEVICE``. For batches or other inputs, call
    ``predictor.model`` directly.
    """

    def __init__(self, cfg: Any, optimize: bool = False) -> None:
        self.cfg = cfg.clone()
        # None, or the autocast dtype of TEST.AMP (validated before the model is built)
        self.autocast_dtype = inference_amp_dtype(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
        self.checkpointer = DetectionCheckpointer(self.model)
        self.checkpointer.load(cfg.MODEL.WEIGHTS)
        if optimize:
            from ..modeling.fast_path import optimize_detector_for_inference

            self.model = optimize_detector_for_inference(self.model, inplace=True)
        elif cfg.MODEL.FAST_PATH:
            from ..modeling.fast_path import optimize_detector_for_training

            self.model = optimize_detector_for_training(self.model).eval()
        self.aug = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """Detections for one HxWx3 uint8 BGR image (HxW / HxWx1 grayscale is replicated to 3
        channels; empty, 4-channel and non-uint8 images raise ValueError: ``check_image_array``)."""
        from ..data.detection_utils import check_image_array

        original_image = check_image_array(original_image, "DefaultPredictor input")
        amp = autocast_context(self.model.device, self.autocast_dtype is not None, self.autocast_dtype or "bfloat16")
        with torch.no_grad(), amp:
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            original_image = np.ascontiguousarray(original_image)
            image = self.aug.get_transform(original_image).apply_image(original_image)
            tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
            inputs = {"image": tensor, "height": height, "width": width}
            return self.model([inputs])[0]

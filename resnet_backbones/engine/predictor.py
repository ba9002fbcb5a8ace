"""``DefaultPredictor``: one image in, detections out, as detectron2's ``DefaultPredictor``.

    predictor = DefaultPredictor(cfg)          # builds the model, loads cfg.MODEL.WEIGHTS
    outputs = predictor(cv2.imread("x.jpg"))   # HxWx3 uint8, BGR (OpenCV's order)
    outputs["instances"]                       # pred_boxes, scores, pred_classes, in x.jpg's pixels

The image is resized so that its short side is ``INPUT.MIN_SIZE_TEST`` and its long side at most
``INPUT.MAX_SIZE_TEST`` (``data.transforms.ResizeShortestEdge``: bilinear, through PIL as in
detectron2, so pixels match), converted to ``INPUT.FORMAT`` and fed to the model; detections are
mapped back to the original image size.

Speed and precision, decided by the config through :func:`~resnet_backbones.modeling.prepare_model`
(``mode="inference"``, after the weights are loaded):

* ``MODEL.FAST_PATH`` (on by default): the inference fast path
  (:func:`~resnet_backbones.modeling.fast_path.optimize_folding_state_dict`: BN folded into the
  convs, channels_last, RoIAlign only where res5 reads it, res5 over chunks of RoIs); detections
  equal those of the plain model (``MODEL.FAST_PATH False``, detectron2's operations) up to float
  rounding. ``predictor.model``'s state dict then has the folded form: to run other weights, set
  ``MODEL.WEIGHTS`` and build a new predictor.
* ``TEST.AMP.ENABLED`` (off by default) / ``TEST.AMP.DTYPE`` ("auto": bfloat16 where this CPU or
  GPU runs it faster than float32) / ``TEST.AMP.SCOPE``: run the model under ``torch.autocast``;
  box decoding, NMS and scores stay float32 (:mod:`resnet_backbones.precision`).

Test-time augmentation (``TEST.AUG``): ``DefaultPredictor(cfg, tta=True)``, or
``TEST.AUG.ENABLED True`` in the config (``tta=None`` follows it; ``tta=False`` turns it off), runs
:class:`~resnet_backbones.modeling.GeneralizedRCNNWithTTA` on the original image: every
``TEST.AUG.MIN_SIZES`` resize (and with ``TEST.AUG.FLIP`` its flip) instead of the single
``INPUT.MIN_SIZE_TEST`` one, detections merged by per-class NMS (several times slower). The same
wrapper works around ``predictor.model`` for batches::

    tta = GeneralizedRCNNWithTTA(cfg, predictor.model)
    outputs = tta([{"image": chw_uint8_tensor, "height": h, "width": w}])
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..checkpoint.detection_checkpoint import DetectionCheckpointer
from ..data import MetadataCatalog
from ..data.transforms import ResizeShortestEdge
from ..modeling import GeneralizedRCNNWithTTA, build_model, prepare_model
from ..precision import inference_amp_dtype, inference_autocast

__all__ = ["DefaultPredictor", "ResizeShortestEdge"]

logger = logging.getLogger(__name__)


class DefaultPredictor:
    """Build the model of ``cfg``, load ``cfg.MODEL.WEIGHTS``, and run it on single images.

    ``predictor(image)`` takes an ``HxWx3`` uint8 numpy array in **BGR** order (``cv2.imread``)
    and returns ``{"instances": Instances}`` with ``pred_boxes`` (XYXY, original-image pixels),
    ``scores`` and ``pred_classes``, on ``cfg.MODEL.DEVICE``. For batches or other inputs, call
    ``predictor.model`` directly. With test-time augmentation (``tta``, or ``TEST.AUG.ENABLED``)
    ``predictor.tta_model`` (a :class:`~resnet_backbones.modeling.GeneralizedRCNNWithTTA`) makes
    the predictions.
    """

    def __init__(
        self, cfg: Any, optimize: Optional[bool] = None, tta: Optional[bool] = None
    ) -> None:
        """``optimize`` overrides ``MODEL.FAST_PATH``, ``tta`` ``TEST.AUG.ENABLED`` (None: follow
        the config)."""
        self.cfg = cfg.clone()
        if optimize is not None:
            self.cfg.defrost()
            self.cfg.MODEL.FAST_PATH = bool(optimize)
        # None, or the autocast dtype of TEST.AMP (validated before the model is built)
        self.autocast_dtype = inference_amp_dtype(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        self.metadata = (
            MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else None
        )
        self.checkpointer = DetectionCheckpointer(self.model)
        self.checkpointer.load(cfg.MODEL.WEIGHTS)
        self.model = prepare_model(self.model, self.cfg, "inference")
        self.aug = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got {self.input_format!r}")
        use_tta = bool(self.cfg.TEST.AUG.ENABLED) if tta is None else bool(tta)
        self.tta_model: Optional[GeneralizedRCNNWithTTA] = None
        if use_tta:
            self.tta_model = GeneralizedRCNNWithTTA(self.cfg, self.model)
            logger.info(
                "DefaultPredictor: test-time augmentation on (short sides %s, max %d, flip %s)",
                list(self.cfg.TEST.AUG.MIN_SIZES),
                self.cfg.TEST.AUG.MAX_SIZE,
                self.cfg.TEST.AUG.FLIP,
            )

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """Detections for one HxWx3 uint8 BGR image (HxW / HxWx1 grayscale is replicated to 3
        channels; empty, 4-channel and non-uint8 images raise ValueError: ``check_image_array``)."""
        from ..data.detection_utils import check_image_array

        original_image = check_image_array(original_image, "DefaultPredictor input")
        with torch.no_grad(), inference_autocast(self.model.device, self.autocast_dtype):
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            original_image = np.ascontiguousarray(original_image)
            if self.tta_model is not None:  # resized by the TTA mapper, from the original
                tensor = torch.as_tensor(original_image.transpose(2, 0, 1))
                inputs = {"image": tensor, "height": height, "width": width}
                return self.tta_model([inputs])[0]
            image = self.aug.get_transform(original_image).apply_image(original_image)
            tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
            inputs = {"image": tensor, "height": height, "width": width}
            return self.model([inputs])[0]

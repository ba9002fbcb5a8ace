"""Test-time augmentation for the detector (``TEST.AUG``), with detectron2's semantics.

:class:`GeneralizedRCNNWithTTA` wraps a
:class:`~resnet_backbones.modeling.meta_arch.GeneralizedRCNN` and has its call interface. For
every image it runs the detector on each resize of ``TEST.AUG.MIN_SIZES`` (long side at most
``TEST.AUG.MAX_SIZE``) and, with ``TEST.AUG.FLIP``, on their horizontal flips
(:class:`DatasetMapperTTA`); maps the boxes back to the original image; and merges the union as
detectron2 does: per-class NMS at ``MODEL.ROI_HEADS.NMS_THRESH_TEST``, then the
``TEST.DETECTIONS_PER_IMAGE`` best. With ``MODEL.MASK_ON`` the mask head runs again on the merged
boxes in every augmented image and the mask probabilities are averaged (flipped ones flipped back).

Where it does less work than detectron2 (detections equal to detectron2's at ``batch_size=1`` up
to float rounding: tests/test_tta_detectron2_parity.py):

* each distinct augmented image is computed once: sizes that ``MAX_SIZE`` caps to the same shape
  share one pass (detectron2 runs each of them; identical detections are then removed by NMS, and
  the mask average weights each shape by how often it occurs, as detectron2's does);
* images of the same shape (a size and its flip) are batched together, up to ``batch_size``;
  different shapes are never batched, so no pass pays for padding. (detectron2 batches any three
  augmented images, and the padding of the smaller ones changes their detections: its default
  disagrees with its own ``batch_size=1`` as much as with this.)
* with masks, the mask head reads the backbone features kept from the box pass; detectron2 runs
  the backbone a second time. This keeps the ``ROI_HEADS.IN_FEATURES`` maps of all augmented
  images of one image in memory (res4 of a 1200x1800 R50 input: ~35 MB in float32).

Speed and precision: wrap a model prepared with ``prepare_model(model, cfg, "inference")`` (the
fast path, ``TEST.AMP.SCOPE``); every pass runs under ``TEST.AMP``'s autocast
(:func:`~resnet_backbones.precision.inference_autocast`); boxes are mapped and merged in float32.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.transforms import (
    HFlipTransform,
    NoOpTransform,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    Transform,
    TransformList,
    VFlipTransform,
    apply_augmentations,
)
from ..precision import inference_amp_dtype, inference_autocast
from ..structures import Boxes, Instances
from .meta_arch import GeneralizedRCNN
from .postprocessing import detector_postprocess
from .roi_heads import fast_rcnn_inference_single_image

__all__ = ["DatasetMapperTTA", "GeneralizedRCNNWithTTA", "inverse_transform"]


def inverse_transform(tfm: Transform) -> Transform:
    """The transform that undoes ``tfm`` (resizes, flips, no-ops and lists of them)."""
    if isinstance(tfm, TransformList):
        return TransformList([inverse_transform(t) for t in reversed(tfm.transforms)])
    if isinstance(tfm, ResizeTransform):
        return ResizeTransform(tfm.new_h, tfm.new_w, tfm.h, tfm.w)
    if isinstance(tfm, (NoOpTransform, HFlipTransform, VFlipTransform)):
        return tfm
    raise NotImplementedError(
        f"test-time augmentation maps boxes back through resizes and flips only, got {tfm!r}"
    )


def _has_hflip(tfm: Transform) -> bool:
    transforms = tfm.transforms if isinstance(tfm, TransformList) else [tfm]
    return any(isinstance(t, HFlipTransform) for t in transforms)


class DatasetMapperTTA:
    """One model input -> its augmented versions: each ``min_sizes`` resize (long side at most
    ``max_size``) and, with ``flip``, its horizontal flip, in that order.

    ``DatasetMapperTTA(cfg)`` reads ``TEST.AUG.{MIN_SIZES, MAX_SIZE, FLIP}``. Each returned dict is
    a copy of the input with the augmented ``"image"`` (CxHxW tensor) and ``"transforms"``: the
    :class:`TransformList` from the original image (``"height"`` x ``"width"``) to it, so that
    an input the test loader already resized is handled as in detectron2.
    """

    def __init__(
        self,
        cfg: Any = None,
        *,
        min_sizes: Optional[Sequence[int]] = None,
        max_size: Optional[int] = None,
        flip: Optional[bool] = None,
    ) -> None:
        if cfg is not None:
            aug = cfg.TEST.AUG
            min_sizes = aug.MIN_SIZES if min_sizes is None else min_sizes
            max_size = aug.MAX_SIZE if max_size is None else max_size
            flip = aug.FLIP if flip is None else flip
        if min_sizes is None or max_size is None or flip is None:
            raise TypeError("DatasetMapperTTA needs a config or min_sizes, max_size and flip")
        self.min_sizes = [int(s) for s in min_sizes]
        if not self.min_sizes:
            raise ValueError("TEST.AUG.MIN_SIZES is empty: give at least one test size")
        self.max_size = int(max_size)
        self.flip = bool(flip)
        # validates the sizes (>= 0, max_size > 0) with ResizeShortestEdge's messages
        self.resizes = [ResizeShortestEdge(s, self.max_size) for s in self.min_sizes]

    def __call__(self, dataset_dict: Dict[str, Any]) -> List[Dict[str, Any]]:
        image = dataset_dict["image"]
        numpy_image = image.permute(1, 2, 0).cpu().numpy()
        shape = numpy_image.shape[:2]
        orig_shape = (int(dataset_dict["height"]), int(dataset_dict["width"]))
        pre_tfm: Transform = NoOpTransform()
        if shape != orig_shape:  # from the original image to the input (a resized one)
            pre_tfm = ResizeTransform(orig_shape[0], orig_shape[1], shape[0], shape[1])
        candidates = []
        for resize in self.resizes:
            candidates.append([resize])
            if self.flip:
                candidates.append([resize, RandomFlip(prob=1.0)])
        ret = []
        for augs in candidates:
            new_image, tfms = apply_augmentations(augs, np.copy(numpy_image))
            dic = copy.copy(dataset_dict)
            dic["image"] = torch.from_numpy(np.ascontiguousarray(new_image.transpose(2, 0, 1)))
            dic["transforms"] = TransformList([pre_tfm, tfms])
            ret.append(dic)
        return ret


class _AugmentedImage:
    """One distinct augmented input, how many augmentations produced it, and its transform."""

    def __init__(self, inputs: Dict[str, Any], tfm: Transform) -> None:
        self.inputs, self.tfm, self.count = inputs, tfm, 1

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.inputs["image"].shape)


class GeneralizedRCNNWithTTA(nn.Module):
    """A GeneralizedRCNN with test-time augmentation: ``tta([inputs, ...])`` returns
    ``[{"instances": Instances}, ...]`` in each input's ``height`` x ``width``, as the model does.

    Args:
        cfg: reads ``TEST.AUG``, ``MODEL.ROI_HEADS.{NUM_CLASSES, NMS_THRESH_TEST}``,
            ``TEST.DETECTIONS_PER_IMAGE``, ``MODEL.MASK_ON`` and ``TEST.AMP``.
        model: the detector (a DDP wrapper is unwrapped), normally prepared with
            ``prepare_model(model, cfg, "inference")``.
        tta_mapper: input dict -> augmented dicts with ``"transforms"``
            (default :class:`DatasetMapperTTA` of ``cfg``).
        batch_size: at most this many augmented images of the same shape per model call.

    Inputs are the model's (``"image"`` CxHxW, ``"height"``/``"width"`` of the original image), or
    ``"file_name"`` instead of ``"image"`` (read in ``INPUT.FORMAT``).
    """

    def __init__(
        self,
        cfg: Any,
        model: nn.Module,
        tta_mapper: Optional[Callable[[Dict[str, Any]], List[Dict[str, Any]]]] = None,
        batch_size: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(model, (DistributedDataParallel, nn.DataParallel)):
            model = model.module
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(
                f"test-time augmentation needs a GeneralizedRCNN, got {type(model).__name__}"
            )
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("test-time augmentation: MODEL.KEYPOINT_ON is not supported")
        if cfg.MODEL.LOAD_PROPOSALS:
            raise ValueError("test-time augmentation: MODEL.LOAD_PROPOSALS is not supported")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = int(batch_size)
        self.autocast_dtype = inference_amp_dtype(cfg)
        self.mask_on = bool(cfg.MODEL.MASK_ON) and bool(getattr(model.roi_heads, "mask_on", False))

    # ----------------------------------------------------------------------------- call
    def __call__(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Instances]]:  # type: ignore[override]
        """Same input and output format as ``GeneralizedRCNN.forward`` in eval mode."""
        with torch.no_grad():
            return [self._inference_one_image(self._read(x)) for x in batched_inputs]

    def _read(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            from ..data.detection_utils import read_image

            image = read_image(ret.pop("file_name"), self.model.input_format)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if "height" not in ret or "width" not in ret:
            ret["height"], ret["width"] = ret["image"].shape[1:3]
        return ret

    def _inference_one_image(self, inputs: Dict[str, Any]) -> Dict[str, Instances]:
        orig_shape = (int(inputs["height"]), int(inputs["width"]))
        augmented = self._augment(inputs)
        batches = self._batches(augmented)
        keep_features = self.mask_on
        with self._masks_off():
            outputs, features = self._detect(augmented, batches, keep_features)
        merged = self._merge_detections(augmented, outputs, orig_shape)
        if not self.mask_on:
            return {"instances": merged}
        merged.pred_masks = self._average_masks(augmented, batches, features, merged)
        del features
        return {"instances": detector_postprocess(merged, *orig_shape)}

    # ------------------------------------------------------------------------ augmentation
    def _augment(self, inputs: Dict[str, Any]) -> List[_AugmentedImage]:
        """The distinct augmented images (same transform: computed once, counted twice)."""
        unique: "OrderedDict[str, _AugmentedImage]" = OrderedDict()
        for dic in self.tta_mapper(inputs):
            tfm = dic.pop("transforms")
            key = repr(tfm)
            if key in unique:
                unique[key].count += 1
            else:
                unique[key] = _AugmentedImage(dic, tfm)
        return list(unique.values())

    def _batches(self, augmented: List[_AugmentedImage]) -> List[List[int]]:
        """Indices of ``augmented`` per model call: consecutive images of one shape, at most
        ``batch_size`` (no padding inside a batch)."""
        batches: List[List[int]] = []
        for i, aug in enumerate(augmented):
            last = batches[-1] if batches else None
            if (
                last is not None
                and len(last) < self.batch_size
                and augmented[last[0]].shape == aug.shape
            ):
                last.append(i)
            else:
                batches.append([i])
        return batches

    # ------------------------------------------------------------------------------ passes
    @contextmanager
    def _masks_off(self) -> Iterator[None]:
        """Boxes only during the box pass (the masks are computed on the merged boxes)."""
        roi_heads = self.model.roi_heads
        old = getattr(roi_heads, "mask_on", None)
        if old:
            roi_heads.mask_on = False
        try:
            yield
        finally:
            if old:
                roi_heads.mask_on = old

    def _autocast(self):
        return inference_autocast(self.model.device, self.autocast_dtype)

    def _detect(
        self, augmented: List[_AugmentedImage], batches: List[List[int]], keep_features: bool
    ) -> Tuple[List[Instances], List[Dict[str, torch.Tensor]]]:
        """Detections of every augmented image (in its own coordinates) and, with
        ``keep_features``, the RoI heads' input features of every batch."""
        outputs: List[Instances] = [None] * len(augmented)  # type: ignore[list-item]
        features: List[Dict[str, torch.Tensor]] = []
        names = list(getattr(self.model.roi_heads, "in_features", []))
        kept: Dict[str, torch.Tensor] = {}

        def keep(_module: nn.Module, _inputs: Any, output: Dict[str, torch.Tensor]) -> None:
            kept.update({n: output[n] for n in names})

        hook = self.model.backbone.register_forward_hook(keep) if keep_features else None
        try:
            for batch in batches:
                with self._autocast():
                    results = self.model.inference(
                        [augmented[i].inputs for i in batch], do_postprocess=False
                    )
                for i, r in zip(batch, results):
                    outputs[i] = r
                if keep_features:
                    features.append(dict(kept))
                    kept.clear()
        finally:
            if hook is not None:
                hook.remove()
        return outputs, features

    # ------------------------------------------------------------------------------- merge
    def _merge_detections(
        self, augmented: List[_AugmentedImage], outputs: List[Instances], shape_hw: Tuple[int, int]
    ) -> Instances:
        """The union of all detections in original-image coordinates, merged as detectron2 does:
        per-class NMS at ``NMS_THRESH_TEST`` and the ``DETECTIONS_PER_IMAGE`` best."""
        device = self.model.device
        boxes, scores, classes = [], [], []
        for aug, out in zip(augmented, outputs):
            pred = out.pred_boxes.tensor.detach().float().cpu().numpy()
            back = inverse_transform(aug.tfm).apply_box(pred)
            boxes.append(torch.as_tensor(back, dtype=torch.float32, device=device))
            scores.append(out.scores.float())
            classes.append(out.pred_classes)
        all_boxes = torch.cat(boxes).reshape(-1, 4)
        all_scores, all_classes = torch.cat(scores), torch.cat(classes)
        num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # one column per class plus background, as fast_rcnn_inference expects
        scores_2d = torch.zeros(len(all_boxes), num_classes + 1, device=device)
        scores_2d[torch.arange(len(all_boxes), device=device), all_classes] = all_scores
        merged, _ = fast_rcnn_inference_single_image(
            all_boxes,
            scores_2d,
            shape_hw,
            1e-8,
            self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            self.cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return merged

    # ------------------------------------------------------------------------------- masks
    def _average_masks(
        self,
        augmented: List[_AugmentedImage],
        batches: List[List[int]],
        features: List[Dict[str, torch.Tensor]],
        merged: Instances,
    ) -> torch.Tensor:
        """The mask head on the merged boxes in every augmented image (kept features, no second
        backbone pass); ``(N, 1, M, M)`` probabilities averaged over the augmentations."""
        boxes = merged.pred_boxes.tensor.detach().cpu().numpy()
        total: Optional[torch.Tensor] = None
        for batch, feats in zip(batches, features):
            instances = []
            for i in batch:
                aug = augmented[i]
                inst = Instances(
                    tuple(aug.inputs["image"].shape[1:3]),
                    pred_boxes=Boxes(
                        torch.as_tensor(
                            aug.tfm.apply_box(boxes), dtype=torch.float32, device=self.model.device
                        )
                    ),
                    pred_classes=merged.pred_classes,
                    scores=merged.scores,
                )
                instances.append(inst)
            with self._autocast():
                results = self.model.roi_heads.forward_with_given_boxes(feats, instances)
            for i, r in zip(batch, results):
                masks = r.pred_masks.float()
                if _has_hflip(augmented[i].tfm):
                    masks = masks.flip(dims=[3])
                masks = masks * augmented[i].count
                total = masks if total is None else total + masks
        assert total is not None
        return total / sum(a.count for a in augmented)

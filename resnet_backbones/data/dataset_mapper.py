"""``DatasetMapper``: one dataset dict -> the dict the model takes (detectron2's default mapper).

Reads the image in INPUT.FORMAT, checks its size against the dict, resizes (and at training time
flips) it, moves the boxes the same way and packs them as ``instances`` (crowd boxes dropped).
With MODEL.MASK_ON the annotations' ``segmentation`` moves too and becomes ``gt_masks``
(INPUT.MASK_FORMAT: ``PolygonMasks`` or ``BitMasks``); without it masks are ignored. With
INPUT.CROP.ENABLED a random crop comes first at training time and, with masks, the boxes are
recomputed from the cropped masks (detectron2's ``recompute_boxes``).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import detection_utils as utils
from .transforms import Augmentation, apply_augmentations

__all__ = ["DatasetMapper"]


def _crop_enabled(cfg: Any) -> bool:
    crop = cfg.INPUT.get("CROP") if hasattr(cfg.INPUT, "get") else None
    return bool(crop is not None and crop.ENABLED)


class DatasetMapper:
    """Callable mapping a dataset dict to ``{"image": CxHxW uint8 tensor, "instances": ..., ...}``.

    Build it from a config, ``DatasetMapper(cfg, is_train)``, or explicitly with
    ``DatasetMapper(is_train=..., augmentations=[...], image_format="BGR")``.
    """

    def __init__(
        self,
        cfg: Any = None,
        is_train: bool = True,
        *,
        augmentations: Optional[Sequence[Augmentation]] = None,
        image_format: Optional[str] = None,
        use_instance_mask: Optional[bool] = None,
        instance_mask_format: Optional[str] = None,
        recompute_boxes: Optional[bool] = None,
    ) -> None:
        if cfg is None and (augmentations is None or image_format is None):
            raise ValueError(
                "DatasetMapper needs either cfg or both augmentations= and image_format="
            )
        self.is_train = is_train
        self.augmentations: List[Augmentation] = (
            list(augmentations)
            if augmentations is not None
            else utils.build_augmentation(cfg, is_train)
        )
        self.image_format: str = image_format if image_format is not None else cfg.INPUT.FORMAT
        if self.image_format not in utils.IMAGE_FORMATS:
            raise ValueError(
                f"INPUT.FORMAT must be one of {utils.IMAGE_FORMATS}, got {self.image_format!r}"
            )
        if use_instance_mask is None:
            use_instance_mask = bool(cfg.MODEL.MASK_ON) if cfg is not None else False
        if instance_mask_format is None:
            instance_mask_format = cfg.INPUT.MASK_FORMAT if cfg is not None else "polygon"
        if instance_mask_format not in utils.MASK_FORMATS:
            raise ValueError(
                f"INPUT.MASK_FORMAT must be one of {utils.MASK_FORMATS}, "
                f"got {instance_mask_format!r}"
            )
        if recompute_boxes is None:
            recompute_boxes = (
                cfg is not None and is_train and augmentations is None and _crop_enabled(cfg)
            )
        self.recompute_boxes = bool(recompute_boxes) and bool(use_instance_mask)
        self.use_instance_mask = bool(use_instance_mask)
        self.instance_mask_format: str = instance_mask_format

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        # The caller's dict is reused across epochs: copy it, except the annotations, which are
        # only read (their segmentations can be large).
        annotations = dataset_dict.get("annotations")
        dataset_dict = copy.deepcopy({k: v for k, v in dataset_dict.items() if k != "annotations"})
        if annotations is not None:
            dataset_dict["annotations"] = annotations
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        image, transforms = apply_augmentations(self.augmentations, image)
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            annos = [obj for obj in dataset_dict.pop("annotations") if obj.get("iscrowd", 0) == 0]
            mask_format = self.instance_mask_format if self.use_instance_mask else None
            try:
                instances = utils.transformed_instances(annos, transforms, image_shape, mask_format)
            except ValueError as e:
                raise ValueError(f"{dataset_dict.get('file_name')}: {e}") from None
            if self.recompute_boxes:  # a crop cuts masks tighter than their boxes' corners
                instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict

    def __repr__(self) -> str:
        return (
            f"DatasetMapper(is_train={self.is_train}, image_format={self.image_format!r}, "
            f"use_instance_mask={self.use_instance_mask}, "
            f"instance_mask_format={self.instance_mask_format!r}, "
            f"augmentations={self.augmentations})"
        )

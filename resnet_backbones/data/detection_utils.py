"""From a dataset dict to model input pieces: read and check the image, move its annotations through
the same transforms as the image, and pack them as :class:`Instances` (detectron2's helpers).

Instance masks (``segmentation``: COCO polygons, or an RLE dict as crowd regions use) move with
the boxes: polygons point by point, RLE decoded with pycocotools and moved as a bitmap (nearest
interpolation). :func:`annotations_to_instances` packs them as ``gt_masks``: ``PolygonMasks``
(INPUT.MASK_FORMAT "polygon") or ``BitMasks`` ("bitmask")."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_util

from ..structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks
from ..structures.masks import polygons_to_bitmask
from .transforms import Augmentation, RandomCrop, RandomFlip, ResizeShortestEdge, Transform

__all__ = [
    "ImageReadError",
    "SizeMismatchError",
    "read_image",
    "check_image_size",
    "check_image_array",
    "transform_instance_annotations",
    "annotations_to_instances",
    "transformed_instances",
    "filter_empty_instances",
    "build_augmentation",
    "MASK_FORMATS",
    "rle_to_bitmask",
    "transform_segmentation",
]

IMAGE_FORMATS = ("BGR", "RGB", "L")
MASK_FORMATS = ("polygon", "bitmask")


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded."""


class SizeMismatchError(ValueError):
    """An image's real size differs from the size its dataset dict records."""


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Read an image as an HxWxC uint8 array in ``format`` ("BGR", "RGB", "L"; None: as stored).

    EXIF orientation is applied, as detectron2 does. Missing files raise FileNotFoundError and
    undecodable ones :class:`ImageReadError`, both naming the file.
    """
    if format is not None and format not in IMAGE_FORMATS:
        raise ValueError(
            f"read_image: format must be one of {IMAGE_FORMATS} or None, got {format!r}"
        )
    try:
        with Image.open(file_name) as pil:
            pil.load()
            pil = ImageOps.exif_transpose(pil)
            if format == "L":
                pil = pil.convert("L")
            elif format in ("BGR", "RGB") or pil.mode not in ("L", "RGB"):
                pil = pil.convert("RGB")
            image = np.asarray(pil)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {file_name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {file_name}: {e}") from None
    if image.ndim == 2:
        image = image[:, :, None]
    if format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def check_image_size(dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
    """Raise :class:`SizeMismatchError` if ``image`` is not the recorded width x height; fill them
    in if absent."""
    real_h, real_w = image.shape[:2]
    if "width" in dataset_dict or "height" in dataset_dict:
        exp_w = dataset_dict.get("width", real_w)
        exp_h = dataset_dict.get("height", real_h)
        if (exp_w, exp_h) != (real_w, real_h):
            hint = (
                " (width and height swapped: an EXIF rotation the annotation ignored?)"
                if (exp_w, exp_h) == (real_h, real_w)
                else ""
            )
            raise SizeMismatchError(
                f"{dataset_dict.get('file_name', '<no file_name>')}: "
                f"image is {real_w}x{real_h} (WxH) but its "
                f"annotation says {exp_w}x{exp_h}{hint}"
            )
    dataset_dict.setdefault("width", real_w)
    dataset_dict.setdefault("height", real_h)


def check_image_array(image: Any, what: str = "DefaultPredictor input") -> np.ndarray:
    """Check an in-memory image for the model and return it as HxWx3 uint8 (BGR/RGB as given).

    Grayscale (HxW or HxWx1) is replicated to 3 channels: it means the same in either channel
    order. Anything else that is not HxWx3 uint8 with a non-zero size raises ValueError naming
    ``what``, the shape and dtype, and the conversion to use: a 4-channel image is refused rather
    than cut to 3 channels, because BGRA (OpenCV) and RGBA (PIL) would need different fixes, and
    a float image because its scale (0-1 or 0-255) cannot be told from its values.
    """
    if not isinstance(image, np.ndarray):
        pil_hint = ""
        if isinstance(image, Image.Image):
            pil_hint = " (for a PIL RGB image: np.asarray(image)[:, :, ::-1])"
        raise ValueError(
            f"{what}: expected an HxWx3 uint8 numpy array in BGR order (cv2.imread), got "
            f"{type(image).__name__}{pil_hint}"
        )
    shape = tuple(image.shape)
    if image.ndim == 3 and shape[2] == 4:
        raise ValueError(
            f"{what}: got a 4-channel image of shape {shape} (with alpha); convert it to 3 "
            f"channels first: cv2.cvtColor(image, cv2.COLOR_BGRA2BGR) for cv2.imread(..., "
            f"IMREAD_UNCHANGED), cv2.COLOR_RGBA2BGR for a PIL RGBA image"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and shape[2] not in (1, 3)):
        raise ValueError(
            f"{what}: expected an HxWx3 image (or HxW / HxWx1 grayscale), got shape {shape}"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(
            f"{what}: the image is empty (shape {shape}); height and width must be 1 or more"
        )
    if image.dtype != np.uint8:
        hint = ""
        if image.dtype.kind == "f":
            hint = (
                " (floats in 0-1: (image * 255).round().clip(0, 255).astype(np.uint8); "
                "in 0-255: image.round().clip(0, 255).astype(np.uint8))"
            )
        raise ValueError(
            f"{what}: expected a uint8 image with values 0-255, got dtype {image.dtype}{hint}"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image


def rle_to_bitmask(rle: Dict[str, Any]) -> np.ndarray:
    """A COCO RLE dict (compressed, str or bytes counts, or uncompressed list counts) as an HxW
    uint8 mask, decoded by pycocotools."""
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE: let pycocotools compress it
        h, w = rle["size"]
        rle = mask_util.frPyObjects(rle, h, w)
    elif isinstance(counts, str):
        rle = dict(rle, counts=counts.encode("ascii"))
    return mask_util.decode(rle)


def transform_segmentation(segm: Any, transforms: Transform, image_size: Tuple[int, int]) -> Any:
    """One annotation's ``segmentation`` moved through ``transforms``: a list of polygons comes
    back as a list of float64 flat arrays (polygons a crop leaves empty are dropped); an RLE dict
    or an HxW array comes back as an HxW uint8 bitmap of ``image_size``."""
    if isinstance(segm, list):
        polys = [np.asarray(p, dtype=np.float64).reshape(-1) for p in segm]
        return transforms.apply_polygons(polys)
    if isinstance(segm, dict):
        mask = rle_to_bitmask(segm)
    elif isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(f"a bitmap segmentation must be HxW, got shape {segm.shape}")
        mask = segm.astype(np.uint8)
    else:
        raise ValueError(
            "segmentation must be a list of polygons, a COCO RLE dict or an HxW array, "
            f"got {type(segm).__name__}"
        )
    mask = transforms.apply_segmentation(mask)
    if tuple(mask.shape[:2]) != tuple(image_size):
        raise ValueError(
            f"a transformed segmentation bitmap is {mask.shape[0]}x{mask.shape[1]} but the image "
            f"is {image_size[0]}x{image_size[1]} (is the RLE 'size' the image's [h, w]?)"
        )
    return mask


def transform_instance_annotations(
    annotation: Dict[str, Any], transforms: Transform, image_size: Tuple[int, int]
) -> Dict[str, Any]:
    """Move one annotation's box (and ``segmentation``, if any: see
    :func:`transform_segmentation`) through ``transforms`` and clip the box to ``image_size``
    (h, w).

    The box comes back in XYXY_ABS (float64 array); the dict is modified in place and returned.
    """
    bbox = BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)
    bbox = transforms.apply_box(np.asarray([bbox], dtype=np.float64))[0].clip(min=0)
    h, w = image_size
    annotation["bbox"] = np.minimum(bbox, [w, h, w, h])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS
    if "segmentation" in annotation:
        annotation["segmentation"] = transform_segmentation(
            annotation["segmentation"], transforms, image_size
        )
    return annotation


def _check_mask_format(mask_format: str) -> str:
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"INPUT.MASK_FORMAT must be one of {MASK_FORMATS}, got {mask_format!r}")
    return mask_format


def _masks_of(segms: Sequence[Any], image_size: Tuple[int, int], mask_format: str):
    """``PolygonMasks`` or ``BitMasks`` of transformed segmentations (image_size = (h, w))."""
    h, w = image_size
    if mask_format == "polygon":
        for s in segms:
            if not isinstance(s, list):
                raise ValueError(
                    "INPUT.MASK_FORMAT='polygon' needs polygon segmentations, got a "
                    f"{type(s).__name__} (an RLE or a bitmap); use INPUT.MASK_FORMAT='bitmask'"
                )
        return PolygonMasks([list(s) for s in segms])
    bitmaps = []
    for s in segms:
        if isinstance(s, list):
            bitmaps.append(polygons_to_bitmask(s, h, w))
        elif isinstance(s, dict):
            bitmaps.append(rle_to_bitmask(s).astype(bool))
        else:
            bitmaps.append(np.asarray(s).astype(bool))
    if not bitmaps:
        return BitMasks(torch.zeros((0, h, w), dtype=torch.bool))
    return BitMasks(torch.from_numpy(np.stack(bitmaps)))


def _require_segmentation(annos: Sequence[Dict[str, Any]]) -> None:
    for a in annos:
        if "segmentation" not in a:
            raise ValueError(
                f"annotation {a.get('id', '')} has no 'segmentation' but instance masks are "
                "wanted (MODEL.MASK_ON): the dataset has no masks; train boxes only "
                "(MODEL.MASK_ON=False) or use a dataset with masks"
            )


def annotations_to_instances(
    annos: Sequence[Dict[str, Any]],
    image_size: Tuple[int, int],
    mask_format: str = "polygon",
) -> Instances:
    """Pack (already transformed) annotations as ``Instances`` with ``gt_boxes`` (clipped
    ``Boxes``) and ``gt_classes`` (int64), and ``gt_masks`` if they carry ``segmentation``
    (``PolygonMasks`` for ``mask_format="polygon"``, ``BitMasks`` for ``"bitmask"``)."""
    _check_mask_format(mask_format)
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    target = Instances(image_size)
    gt_boxes = Boxes(torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
    gt_boxes.clip(image_size)
    target.gt_boxes = gt_boxes
    target.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    if len(annos) and "segmentation" in annos[0]:
        _require_segmentation(annos)
        target.gt_masks = _masks_of([a["segmentation"] for a in annos], image_size, mask_format)
    return target


def transformed_instances(
    annos: Sequence[Dict[str, Any]],
    transforms: Transform,
    image_size: Tuple[int, int],
    mask_format: Optional[str] = None,
) -> Instances:
    """``annotations_to_instances`` of ``transform_instance_annotations`` of every annotation, with
    the boxes moved, clipped and packed as one array (the same numbers, without the per-box Python
    work; the annotation dicts are left as they are).

    With a ``mask_format`` ("polygon"/"bitmask") every annotation must have a ``segmentation``;
    they are moved one by one and packed as ``gt_masks``. Without one (box training) masks are
    ignored."""
    if mask_format is not None:
        _check_mask_format(mask_format)
        _require_segmentation(annos)
    boxes = np.zeros((len(annos), 4), dtype=np.float64)
    for i, a in enumerate(annos):
        boxes[i] = a["bbox"]
    modes = [BoxMode(a["bbox_mode"]) for a in annos]
    for mode in set(modes) - {BoxMode.XYXY_ABS}:
        rows = np.asarray([m == mode for m in modes])
        boxes[rows] = BoxMode.convert(boxes[rows], mode, BoxMode.XYXY_ABS)
    if len(annos):
        boxes = transforms.apply_box(boxes).clip(min=0)
        h, w = image_size
        boxes = np.minimum(boxes, [w, h, w, h])
    target = Instances(image_size)
    gt_boxes = Boxes(torch.as_tensor(boxes.astype(np.float32).reshape(-1, 4)))
    gt_boxes.clip(image_size)
    target.gt_boxes = gt_boxes
    target.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    if mask_format is not None:
        segms = [transform_segmentation(a["segmentation"], transforms, image_size) for a in annos]
        target.gt_masks = _masks_of(segms, image_size, mask_format)
    return target


def filter_empty_instances(
    instances: Instances,
    by_box: bool = True,
    by_mask: bool = True,
    box_threshold: float = 1e-5,
    return_mask: bool = False,
) -> Union[Instances, Tuple[Instances, torch.Tensor]]:
    """Drop instances whose box has (nearly) no width or height, e.g. after clipping, and (with
    ``by_mask``) those whose ``gt_masks`` is empty (a polygon a crop removed)."""
    keep = torch.ones(len(instances), dtype=torch.bool)
    if by_box and instances.has("gt_boxes"):
        keep &= instances.gt_boxes.nonempty(threshold=box_threshold)
    if by_mask and instances.has("gt_masks"):
        keep &= instances.gt_masks.nonempty()
    return (instances[keep], keep) if return_mask else instances[keep]


def build_augmentation(cfg, is_train: bool) -> List[Augmentation]:
    """ResizeShortestEdge from INPUT.*_SIZE_*, plus RandomFlip at training time
    (INPUT.RANDOM_FLIP), after a RandomCrop with INPUT.CROP.ENABLED (training only)."""
    if is_train:
        augs: List[Augmentation] = [
            ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        ]
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("none", "horizontal", "vertical"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP must be 'none', 'horizontal' or 'vertical', got {flip!r}"
            )
        if flip != "none":
            augs.append(RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        if cfg.INPUT.CROP.ENABLED:
            augs.insert(0, RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return augs
    return [ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]

"""Convert a registered dataset (detectron2-style dicts) to a COCO-format json, as detectron2 does.

Used by :class:`COCOEvaluator` for datasets registered without ``metadata.json_file`` (VOC, the
synthetic shapes, ...). Boxes are converted in float32 and rounded to 3 decimals, and the area is
the float32 box area (or the polygon / RLE area when a ``segmentation`` is given), as in
detectron2's ``convert_to_coco_dict``. A ``segmentation`` (polygons, or RLE as for crowd regions)
is written as given, an RLE's bytes ``counts`` as str, so that mask AP can be evaluated.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Callable, Dict, List

import numpy as np

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..structures import BoxMode

__all__ = ["convert_to_coco_dict", "convert_to_coco_json"]

logger = logging.getLogger(__name__)


def _to_xywh(bbox: Any, mode: Any) -> List[float]:
    """XYWH box; an XYXY box is converted in float32 (detectron2 converts a list via a float32
    tensor)."""
    values = np.asarray(bbox).reshape(-1).tolist()
    if len(values) != 4:
        raise ValueError(f"a box must have 4 numbers, got {bbox!r}")
    try:
        mode = BoxMode(mode)
    except ValueError:
        raise ValueError(
            f"unsupported bbox_mode {mode!r}; use BoxMode.XYXY_ABS or BoxMode.XYWH_ABS"
        ) from None
    if mode == BoxMode.XYWH_ABS:
        return [float(v) for v in values]
    x0, y0, x1, y1 = np.asarray(values, dtype=np.float32)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _polygon_area(polygons: List[List[float]]) -> float:
    area = 0.0
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        area += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return area


def _area(annotation: Dict[str, Any], xywh: List[float]) -> float:
    seg = annotation.get("segmentation")
    if seg is None:
        x0, y0, w, h = np.asarray(xywh, dtype=np.float32)
        x1, y1 = x0 + w, y0 + h  # float32, as detectron2 goes back to XYXY before Boxes.area()
        return float((x1 - x0) * (y1 - y0))
    if isinstance(seg, list):
        return _polygon_area(seg)
    if isinstance(seg, dict):
        from pycocotools import mask as mask_util

        if isinstance(seg.get("counts"), list):  # uncompressed RLE (COCO's crowd format)
            seg = mask_util.frPyObjects(seg, *seg["size"])
        return float(mask_util.area(seg))
    raise TypeError(f"unknown segmentation type {type(seg).__name__}")


def _json_segmentation(seg: Any) -> Any:
    """The segmentation as json can hold it: a compressed RLE's bytes ``counts`` become str."""
    if isinstance(seg, dict) and isinstance(seg.get("counts"), bytes):
        return dict(seg, counts=seg["counts"].decode("ascii"))
    return seg


def convert_to_coco_dict(dataset_name: str) -> Dict[str, Any]:
    """The COCO-format dict (images, annotations, categories) of a registered dataset."""
    dicts = DatasetCatalog.get(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    classes = meta.get("thing_classes")
    if classes is None:
        raise ValueError(
            f"dataset '{dataset_name}' has no metadata.thing_classes; "
            "cannot convert it to COCO format"
        )
    mapping = meta.get("thing_dataset_id_to_contiguous_id")
    to_dataset_id: Callable[[int], int]
    if mapping:
        reverse = {v: k for k, v in mapping.items()}
        to_dataset_id = reverse.__getitem__
    else:
        to_dataset_id = int
    categories = [{"id": to_dataset_id(i), "name": name} for i, name in enumerate(classes)]

    images, annotations = [], []
    for index, record in enumerate(dicts):
        image = {
            "id": record.get("image_id", index),
            "width": int(record["width"]),
            "height": int(record["height"]),
            "file_name": str(record["file_name"]),
        }
        images.append(image)
        for ann in record.get("annotations", []):
            xywh = _to_xywh(ann["bbox"], ann["bbox_mode"])
            coco_ann = {
                "id": len(annotations) + 1,
                "image_id": image["id"],
                "bbox": [round(float(v), 3) for v in xywh],
                "area": _area(ann, xywh),
                "iscrowd": int(ann.get("iscrowd", 0)),
                "category_id": int(to_dataset_id(ann["category_id"])),
            }
            if "segmentation" in ann:
                coco_ann["segmentation"] = _json_segmentation(ann["segmentation"])
            annotations.append(coco_ann)
    logger.info(
        f"Converted '{dataset_name}' to COCO format: {len(images)} images, "
        f"{len(annotations)} annotations"
    )
    info = {
        "date_created": str(datetime.datetime.now()),
        "description": f"converted from '{dataset_name}'",
    }
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "licenses": None,
    }


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """Write :func:`convert_to_coco_dict` to ``output_file`` (kept as is if it exists and
    ``allow_cached``)."""
    if allow_cached and os.path.exists(output_file):
        logger.info(
            f"Using the cached COCO-format annotations of '{dataset_name}' at {output_file}"
        )
        return
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    coco_dict = convert_to_coco_dict(dataset_name)
    tmp = f"{output_file}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(coco_dict, f)
    os.replace(tmp, output_file)

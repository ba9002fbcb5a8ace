"""PASCAL VOC XML annotations -> detectron2 dataset dicts.

VOC boxes are 1-based inclusive pixel indices, so (xmin=1, xmax=W) covers the whole image; as in
detectron2 they become (xmin - 1, ymin - 1, xmax, ymax) in XYXY_ABS. ``difficult`` objects are kept
(detectron2 trains on them) and carry ``difficult`` = 0/1 for whoever wants to drop them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Sequence, Union

from ...structures import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog
from .annotation_checks import ProblemCounter, box_problem
from .builtin_meta import VOC_CLASSES

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["load_voc_instances", "register_pascal_voc", "read_voc_split"]


def read_voc_split(dirname: str, split: str) -> List[str]:
    """Image ids listed in ``ImageSets/Main/{split}.txt``."""
    path = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"VOC split file not found: {path} (see datasets/README.md; "
            "`python datasets/check_layout.py NAME` lists what is missing)"
        )
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _parse_xml(path: str) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML: {e}") from None


def _image_size(root: ET.Element, path: str) -> tuple:
    try:
        return int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: malformed VOC annotation: <size> must hold integer <width> and <height>, got "
            f"width={root.findtext('size/width')!r} height={root.findtext('size/height')!r}"
        ) from None


def _parse_object(
    obj: ET.Element,
    path: str,
    width: int,
    height: int,
    class_names: Sequence[str],
    problems: ProblemCounter,
) -> Optional[Dict[str, Any]]:
    """One <object> -> annotation dict, or None (counted) if it is bad."""
    name = (obj.findtext("name") or "").strip()
    if name not in class_names:
        problems.add(
            "unknown category", f"{path}: <name>{name}</name> (known: {', '.join(class_names)})"
        )
        return None
    coords = [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
    try:
        x0, y0, x1, y1 = (float(c) for c in coords)
    except (TypeError, ValueError):
        problems.add("malformed bbox", f"{path}: object '{name}' bndbox={coords}")
        return None
    x0 -= 1.0  # 1-based inclusive indices -> continuous coordinates
    y0 -= 1.0
    kind = box_problem(x0, y0, x1, y1, width, height)
    if kind is not None:
        problems.add(kind, f"{path}: object '{name}' bndbox={coords} in a {width}x{height} image")
        return None
    difficult = obj.findtext("difficult")
    return {
        "category_id": class_names.index(name),
        "bbox": [x0, y0, x1, y1],
        "bbox_mode": BoxMode.XYXY_ABS,
        "iscrowd": 0,
        "difficult": int(difficult) if difficult and difficult.strip().isdigit() else 0,
    }


def load_voc_instances(
    dirname: PathLike,
    split: str,
    class_names: Sequence[str] = VOC_CLASSES,
    on_bad_annotation: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Load ``dirname`` (holding Annotations/, ImageSets/Main/, JPEGImages/) split ``split``.

    Bad objects (unknown class, empty box, box outside the image, malformed bndbox) are skipped and
    counted, or raise, per ``on_bad_annotation``; a malformed XML file always raises, naming the
    file.
    """
    dirname = os.fspath(dirname)
    class_names = list(class_names)
    problems = ProblemCounter(os.path.join(dirname, "Annotations"), on_bad_annotation)
    dicts: List[Dict[str, Any]] = []
    num_objects = 0
    for fileid in read_voc_split(dirname, split):
        path = os.path.join(dirname, "Annotations", fileid + ".xml")
        root = _parse_xml(path)
        width, height = _image_size(root, path)
        objects = root.findall("object")
        num_objects += len(objects)
        annos = [_parse_object(o, path, width, height, class_names, problems) for o in objects]
        dicts.append(
            {
                "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
                "image_id": fileid,
                "height": height,
                "width": width,
                "annotations": [a for a in annos if a is not None],
            }
        )
    problems.warn(num_objects)
    return dicts


def register_pascal_voc(
    name: str, dirname: PathLike, split: str, year: int, class_names: Sequence[str] = VOC_CLASSES
) -> None:
    """Register a VOC-layout dataset as ``name`` (lazily), with the metadata the VOC evaluator
    needs."""
    dirname = os.fspath(dirname)
    class_names = list(class_names)
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(
        thing_classes=class_names,
        dirname=dirname,
        year=year,
        split=split,
        evaluator_type="pascal_voc",
    )

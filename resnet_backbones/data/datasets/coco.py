"""COCO instances JSON -> detectron2 dataset dicts, through ``pycocotools.coco.COCO``.

Each dict has file_name, height, width, image_id and annotations (bbox in XYWH_ABS, bbox_mode,
category_id, iscrowd, and ``segmentation`` where the json has one: polygons, or RLE with the
counts compressed, as detectron2 keeps them). With a ``dataset_name`` the json category ids are
mapped to contiguous 0-based ids and the mapping is stored in the metadata, as detectron2 does.
Degenerate polygons (fewer than 3 points, zero area, outside the image) are bad annotations,
like empty boxes. Keypoints are not loaded; ask for other keys with ``extra_annotation_keys``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ...structures import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog
from .annotation_checks import ProblemCounter, box_problem, segmentation_problem

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["load_coco_json", "register_coco_instances"]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_coco_api(json_file: str):
    """``COCO(json_file)`` with its prints silenced and its failures turned into errors naming the
    file."""
    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"COCO annotation file not found: {json_file} "
            "(see datasets/README.md for where to get it, "
            "and run `python datasets/check_layout.py NAME` to check a dataset's layout)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(json_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: malformed JSON: {e}") from None
    except (AssertionError, KeyError, TypeError, AttributeError) as e:
        detail = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{json_file}: not a COCO instances file ({detail})") from None


def _category_map(
    coco_api, json_file: str, dataset_name: Optional[str]
) -> Optional[Dict[int, int]]:
    """json category id -> contiguous id (also stored in the metadata of ``dataset_name``)."""
    if "categories" not in coco_api.dataset:
        if dataset_name is not None:
            raise ValueError(
                f"{json_file}: no 'categories' list; cannot map category ids of '{dataset_name}'"
            )
        return None
    try:
        cats = sorted(coco_api.dataset["categories"], key=lambda c: c["id"])
        thing_classes = [c["name"] for c in cats]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{json_file}: malformed 'categories' entry (missing {e})") from None
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    if len(id_map) != len(cats):
        raise ValueError(f"{json_file}: category ids are not unique: {[c['id'] for c in cats]}")
    if dataset_name is not None:
        if (
            id_map
            and not (min(id_map) == 1 and max(id_map) == len(id_map))
            and "coco" not in dataset_name
        ):
            logger.warning(
                "%s: category ids are not 1..%d; mapping them to 0..%d",
                json_file,
                len(id_map),
                len(id_map) - 1,
            )
        MetadataCatalog.get(dataset_name).set(
            thing_classes=thing_classes, thing_dataset_id_to_contiguous_id=id_map
        )
    return id_map


def load_coco_json(
    json_file: PathLike,
    image_root: PathLike,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[Sequence[str]] = None,
    on_bad_annotation: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Load a COCO instances json into detectron2 dicts; does not open the images.

    ``dataset_name`` maps category ids to 0-based contiguous ids and sets thing_classes and
    thing_dataset_id_to_contiguous_id in its metadata. Bad annotations (empty box, box outside the
    image, category id not in 'categories', malformed bbox) are skipped and counted or raise,
    per ``on_bad_annotation`` ("skip"/"error"; default: DATALOADER.ON_BAD_ANNOTATION via the
    caller).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    # Parsing and converting allocate millions of containers and no reference cycles; the cyclic GC
    # would re-scan the growing heap over and over (half the conversion time on COCO-sized files).
    with _gc_paused():
        start = time.perf_counter()
        coco_api = _read_coco_api(json_file)
        load_s = time.perf_counter() - start
        if load_s > 1:
            logger.info("Loading %s takes %.2f seconds.", json_file, load_s)
        if "images" not in coco_api.dataset:
            raise ValueError(f"{json_file}: not a COCO instances file (no 'images' list)")
        id_map = _category_map(coco_api, json_file, dataset_name)
        if (
            id_map is not None and dataset_name is None
        ):  # check ids against 'categories' but keep them
            id_map = {k: k for k in id_map}
        problems = ProblemCounter(json_file, on_bad_annotation)
        keys = tuple(extra_annotation_keys or ())
        dataset_dicts, num_anns = _convert(coco_api, image_root, json_file, id_map, problems, keys)
    _check_annotation_ids(coco_api, json_file, num_anns)
    problems.warn(num_anns)
    logger.info("Loaded %d images in COCO format from %s", len(dataset_dicts), json_file)
    return dataset_dicts


def _convert(
    coco_api,
    image_root: str,
    json_file: str,
    id_map: Optional[Dict[int, int]],
    problems: ProblemCounter,
    keys: Sequence[str],
) -> Tuple[List[Dict[str, Any]], int]:
    """All images (sorted by id) with their converted annotations; also the number of annotations
    seen."""
    img_to_anns = coco_api.imgToAnns
    xywh = BoxMode.XYWH_ABS
    dataset_dicts: List[Dict[str, Any]] = []
    num_anns = 0
    for img_id in sorted(coco_api.imgs):
        img = coco_api.imgs[img_id]
        try:
            width, height = img["width"], img["height"]
            record = {
                "file_name": os.path.join(image_root, img["file_name"]),
                "height": height,
                "width": width,
                "image_id": img_id,
            }
        except (KeyError, TypeError) as e:
            raise ValueError(f"{json_file}: image record {img!r} lacks {e}") from None
        objs = []
        for anno in img_to_anns.get(img_id, ()):
            num_anns += 1
            obj = _convert_annotation(anno, width, height, id_map, problems, keys)
            if obj is not None:
                obj["bbox_mode"] = xywh
                objs.append(obj)
        record["annotations"] = objs
        dataset_dicts.append(record)
    return dataset_dicts, num_anns


def _convert_annotation(
    anno: Dict[str, Any],
    width: float,
    height: float,
    id_map: Optional[Dict[int, int]],
    problems: ProblemCounter,
    keys: Sequence[str],
) -> Optional[Dict[str, Any]]:
    """One json annotation -> detectron2 annotation dict, or None (counted) if it is bad."""
    bbox = anno.get("bbox")
    cat = anno.get("category_id")
    try:
        x, y, w, h = bbox
        kind = box_problem(x, y, x + w, y + h, width, height)
    except (TypeError, ValueError):
        problems.add("malformed bbox", f"annotation id {anno.get('id')}: bbox={bbox!r}")
        return None
    if kind is not None:
        problems.add(
            kind,
            f"annotation id {anno.get('id')} of image {anno.get('image_id')} "
            f"({width}x{height}): bbox={bbox!r}",
        )
        return None
    if id_map is not None:
        if cat not in id_map:
            problems.add(
                "unknown category id",
                f"annotation id {anno.get('id')}: category_id={cat!r} (known: {sorted(id_map)})",
            )
            return None
        cat = id_map[cat]
    obj = {"iscrowd": anno.get("iscrowd", 0), "bbox": bbox, "category_id": cat}
    if "segmentation" in anno:
        segm = anno["segmentation"]
        kind = segmentation_problem(segm, width, height)
        if kind is not None:
            problems.add(
                kind,
                f"annotation id {anno.get('id')} of image {anno.get('image_id')} "
                f"({width}x{height}): segmentation={_short(segm)}",
            )
            return None
        if isinstance(segm, dict) and isinstance(segm["counts"], list):
            from pycocotools import mask as mask_util

            segm = mask_util.frPyObjects(segm, *segm["size"])  # uncompressed RLE -> compressed
        obj["segmentation"] = segm
    for k in keys:
        if k in anno:
            obj[k] = anno[k]
    return obj


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_annotation_ids(coco_api, json_file: str, num_matched: int) -> None:
    """Warn about annotations of unknown images; refuse duplicate annotation ids (detectron2
    does)."""
    anns = coco_api.dataset.get("annotations", [])
    if num_matched < len(anns):
        logger.warning(
            "%s contains %d annotations, but only %d of them match to images in the file.",
            json_file,
            len(anns),
            num_matched,
        )
    # The original minival/valminusminival 2014 files have a few duplicates; detectron2 allows them.
    if "minival" not in json_file and len(coco_api.anns) != len(anns):
        seen, dups = set(), []
        for a in anns:
            if a["id"] in seen and len(dups) < 5:
                dups.append(a["id"])
            seen.add(a["id"])
        raise ValueError(f"{json_file}: annotation ids are not unique (e.g. {dups})")


def register_coco_instances(
    name: str, metadata: Dict[str, Any], json_file: PathLike, image_root: PathLike
) -> None:
    """Register a COCO-format dataset as ``name`` (lazily: nothing is read until it is used).

    ``metadata`` is extra metadata (may be empty); json_file, image_root and evaluator_type="coco"
    are added, as in detectron2.
    """
    if not isinstance(name, str):
        raise TypeError(f"register_coco_instances: name must be a str, got {name!r}")
    if not isinstance(metadata, dict):
        raise TypeError(
            f"register_coco_instances('{name}', ...): metadata must be a dict, "
            f"got {type(metadata).__name__}"
        )
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )

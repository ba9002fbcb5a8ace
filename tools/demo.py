#!/usr/bin/env python
"""Run a detector on images and draw its detections (boxes, class names, scores, and the instance
masks of a Mask R-CNN config) with OpenCV.

    python tools/demo.py --config-file configs/shapes/demo_C4.yaml --input a.jpg dir/ \\
        --output out/ --opts MODEL.WEIGHTS demo_output/pretrained/model_final.pth

``--input`` takes image files, folders (their images, sorted; ``--recursive`` for sub-folders) and
glob patterns. ``--output`` is a folder (one ``<name>.png`` per input image; names that repeat get
a numeric suffix), or a file name when there is a single input image. Without ``--output`` the
detections are only listed. ``--opts KEY VALUE ...`` (last on the line) overrides config keys, as in
detectron2's ``demo.py``; ``--confidence-threshold`` sets ``MODEL.ROI_HEADS.SCORE_THRESH_TEST``.
``--json FILE`` also writes every detection (boxes in XYXY pixels of the original image; with
``MODEL.MASK_ON``, each mask as COCO RLE in ``segmentation``, as detectron2's results json).
A tqdm progress bar runs over the images (``DefaultPredictor``, one image at a time).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Distinct BGR colors, one per class (cycled).
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (48, 48, 255),
    (0, 200, 0),
    (255, 128, 0),
    (0, 200, 255),
    (255, 0, 255),
    (255, 255, 0),
    (128, 0, 255),
    (0, 128, 255),
    (128, 255, 0),
    (255, 0, 128),
)

logger = logging.getLogger("resnet_backbones.demo")


# ------------------------------------------------------------------------------ drawing
def color_for(class_id: int) -> Tuple[int, int, int]:
    return PALETTE[int(class_id) % len(PALETTE)]


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: Optional[Sequence[float]] = None,
    classes: Optional[Sequence[int]] = None,
    class_names: Optional[Sequence[str]] = None,
    *,
    masks: Optional[np.ndarray] = None,
    thickness: Optional[int] = None,
    font_scale: Optional[float] = None,
    mask_alpha: float = 0.5,
) -> np.ndarray:
    """A copy of ``image`` (HxWx3 uint8 BGR) with each box drawn and labelled "name score".

    ``boxes``: ``(N, 4)`` XYXY pixel coordinates. ``scores`` may be None (ground truth: name only).
    ``masks``: optional ``(N, H, W)`` bool instance masks, filled in the class color at
    ``mask_alpha`` and outlined, under the boxes and labels. Line width and text size follow the
    image size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image.dtype} {image.shape}")
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    thickness = thickness or max(1, int(round(min(h, w) / 200)))
    font_scale = font_scale or max(0.3, min(h, w) / 600)
    font = cv2.FONT_HERSHEY_SIMPLEX
    order = (
        np.argsort(-np.asarray(scores)) if scores is not None and len(scores) else range(len(boxes))
    )
    if masks is not None:
        draw_masks(out, masks, classes, list(order), thickness=thickness, alpha=mask_alpha)
    for i in reversed(list(order)):  # highest score drawn last (on top)
        x0, y0, x1, y1 = boxes[i]
        cls = int(classes[i]) if classes is not None else 0
        color = color_for(cls)
        p0 = (int(np.floor(x0)), int(np.floor(y0)))
        p1 = (max(int(np.ceil(x1)) - 1, p0[0]), max(int(np.ceil(y1)) - 1, p0[1]))
        cv2.rectangle(out, p0, p1, color, thickness, lineType=cv2.LINE_8)
        name = (
            class_names[cls]
            if class_names is not None and 0 <= cls < len(class_names)
            else str(cls)
        )
        label = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(label, font, font_scale, 1)
        ty = p0[1] - 2 if p0[1] - th - base - 2 >= 0 else min(p1[1] + th + 2, h - base - 1)
        tx = min(max(p0[0], 0), max(w - tw - 1, 0))
        cv2.rectangle(out, (tx, ty - th - 1), (tx + tw + 1, ty + base), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        cv2.putText(out, label, (tx + 1, ty), font, font_scale, text_color, 1, lineType=cv2.LINE_AA)
    return out


def draw_masks(
    image: np.ndarray,
    masks: np.ndarray,
    classes: Optional[Sequence[int]],
    order: Sequence[int],
    *,
    thickness: int = 1,
    alpha: float = 0.5,
) -> None:
    """Fills each ``(H, W)`` bool mask of ``masks`` in its class color (blended at ``alpha``) and
    outlines it, in place, the first of ``order`` last (on top)."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"expected (N, {image.shape[0]}, {image.shape[1]}) masks for a "
            f"{image.shape[1]}x{image.shape[0]} image, got {masks.shape}"
        )
    for i in reversed(list(order)):
        mask = masks[i].astype(bool)
        if not mask.any():
            continue
        color = np.array(color_for(int(classes[i]) if classes is not None else 0), np.float64)
        image[mask] = (image[mask] * (1.0 - alpha) + color * alpha).round().astype(np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(image, contours, -1, tuple(int(c) for c in color), thickness)


def instances_masks(instances) -> Optional[np.ndarray]:
    """``(N, H, W)`` bool masks of predicted ``Instances`` (``pred_masks``), or None without."""
    if not instances.has("pred_masks"):
        return None
    masks = instances.pred_masks.to("cpu")
    masks = masks.squeeze(1) if masks.dim() == 4 else masks
    return (masks > 0.5).numpy() if masks.is_floating_point() else masks.numpy().astype(bool)


def mask_to_rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO RLE of one ``(H, W)`` bool mask (pycocotools), with a JSON-ready ``counts`` string."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def instances_to_arrays(instances) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes (N, 4), scores (N,), classes (N,))`` numpy arrays from predicted ``Instances``."""
    inst = instances.to("cpu")
    boxes = inst.pred_boxes.tensor.numpy() if inst.has("pred_boxes") else np.zeros((0, 4))
    scores = inst.scores.numpy() if inst.has("scores") else np.ones(len(boxes))
    classes = (
        inst.pred_classes.numpy()
        if inst.has("pred_classes")
        else np.zeros(len(boxes), dtype=np.int64)
    )
    return boxes, scores, classes


def add_title(image: np.ndarray, title: str) -> np.ndarray:
    """``image`` with a dark title bar on top."""
    h, w = image.shape[:2]
    font_scale = max(0.4, w / 500)
    (tw, th), base = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    bar = np.full((th + base + 8, w, 3), 32, dtype=np.uint8)
    cv2.putText(
        bar,
        title,
        (4, th + 4),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return np.concatenate([bar, image], axis=0)


def hconcat(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Images side by side (padded to the tallest), separated by white gaps."""
    height = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] < height:
            im = np.concatenate(
                [im, np.full((height - im.shape[0], im.shape[1], 3), 255, np.uint8)], axis=0
            )
        parts.append(im)
        if i < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


# ------------------------------------------------------------------------------ inputs
def collect_inputs(inputs: Sequence[str], recursive: bool = False) -> List[str]:
    """Image files from files, folders and glob patterns, in the given order (folders sorted)."""
    paths: List[str] = []
    for item in inputs:
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            pattern = os.path.join(item, "**", "*") if recursive else os.path.join(item, "*")
            found = sorted(
                p
                for p in glob.glob(pattern, recursive=recursive)
                if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise FileNotFoundError(
                    f"--input folder '{item}' holds no image ({', '.join(IMAGE_EXTENSIONS)})"
                )
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(
                    f"--input '{item}': no such file, folder or matching pattern"
                )
            paths += matches
    return paths


def output_paths(inputs: Sequence[str], output: Optional[str]) -> List[Optional[str]]:
    """Where each result image goes (see the module docstring)."""
    if not output:
        return [None] * len(inputs)
    single_file = (
        len(inputs) == 1 and output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output)
    )
    if single_file:
        return [output]
    used: Dict[str, int] = {}
    out: List[Optional[str]] = []
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        n = used.get(stem, 0)
        used[stem] = n + 1
        out.append(os.path.join(output, f"{stem}.png" if n == 0 else f"{stem}_{n}.png"))
    return out


def detection_records(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    masks: Optional[np.ndarray],
    names: Optional[Sequence[str]],
) -> List[Dict[str, object]]:
    """One JSON-ready dict per detection: box, score, class id and name, and with masks the
    RLE ``segmentation`` and its ``area`` in pixels."""
    records: List[Dict[str, object]] = []
    for i, (b, s, c) in enumerate(zip(boxes, scores, classes)):
        record: Dict[str, object] = {
            "box_xyxy": [round(float(v), 2) for v in b],
            "score": round(float(s), 4),
            "class_id": int(c),
            "class_name": names[int(c)] if names and int(c) < len(names) else str(int(c)),
        }
        if masks is not None:
            record["segmentation"] = mask_to_rle(masks[i])
            record["area"] = int(masks[i].sum())
        records.append(record)
    return records


# ------------------------------------------------------------------------------ main
def setup_cfg(args: argparse.Namespace):
    from resnet_backbones.config import get_cfg

    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts or []))
    if args.confidence_threshold is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    if str(cfg.MODEL.DEVICE).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            logger.warning(
                "MODEL.DEVICE is %s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE
            )
            cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def class_names_of(cfg) -> Optional[List[str]]:
    from resnet_backbones.data import MetadataCatalog

    if len(cfg.DATASETS.TEST):
        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes")
        if names:
            return list(names)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--config-file", "--config", dest="config_file", default="", metavar="FILE")
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, folders or glob patterns"
    )
    parser.add_argument(
        "--output", default="", help="output folder (or file, for a single input image)"
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn detection (default: %(default)s)",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="also take images in sub-folders of --input folders",
    )
    parser.add_argument("--json", default="", help="also write all detections to this JSON file")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s %(name)s %(levelname)s]: %(message)s",
        datefmt="%m/%d %H:%M:%S",
    )
    from tqdm import tqdm

    from resnet_backbones.config import ConfigError
    from resnet_backbones.engine import DefaultPredictor

    try:
        cfg = setup_cfg(args)
        paths = collect_inputs(args.input, args.recursive)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    try:
        predictor = DefaultPredictor(cfg)
    except FileNotFoundError as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    names = class_names_of(cfg)
    targets = output_paths(paths, args.output)
    records = []
    failed = 0
    for path, target in zip(tqdm(paths, desc="demo", unit="img", dynamic_ncols=True), targets):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            tqdm.write(f"warning: cannot read '{path}' as an image; skipped", file=sys.stderr)
            failed += 1
            continue
        outputs = predictor(image)
        if "instances" not in outputs:  # e.g. ProposalNetwork: {"proposals": ...}
            print(
                f"error: tools/demo.py draws detections, but {cfg.MODEL.META_ARCHITECTURE} "
                f"returns {sorted(outputs)} (no 'instances'); use a Faster or Mask R-CNN config",
                file=sys.stderr,
            )
            return 2
        instances = outputs["instances"]
        boxes, scores, classes = instances_to_arrays(instances)
        masks = instances_masks(instances)
        records.append(
            {
                "file_name": path,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "detections": detection_records(boxes, scores, classes, masks, names),
            }
        )
        if target is None:
            tqdm.write(f"{path}: {len(boxes)} detections")
            continue
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        drawn = draw_detections(image, boxes, scores, classes, names, masks=masks)
        if not cv2.imwrite(target, drawn):
            tqdm.write(f"warning: could not write '{target}'", file=sys.stderr)
            failed += 1
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
    done = len(paths) - failed
    where = f" into {args.output}" if args.output else ""
    print(
        f"{done} image(s) processed{where}; "
        f"{sum(len(r['detections']) for r in records)} detections "
        f"with score >= {cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST}",
        flush=True,
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

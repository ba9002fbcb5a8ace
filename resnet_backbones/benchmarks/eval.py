"""Benchmark: COCO box evaluation with our fast backend vs pycocotools, on the same synthetic
predictions.

    python tools/benchmark.py eval [--num-images 5000] [--dets-per-image 100] [--gt-per-image 7]

Builds a synthetic COCO-style dataset (80 categories with COCO's non-contiguous ids, ~7 boxes per
image, some crowd boxes and empty images) and detector-like outputs (boxes near the ground truth
plus background boxes), runs ``COCOEvaluator.evaluate()`` with each backend in the same process,
checks that the 12 COCO numbers (and the per-category AP) are identical, and prints a markdown
table of the times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..data.catalog import MetadataCatalog
from ..evaluation.coco_evaluation import COCOEvaluator
from ..evaluation.fast_coco_eval import STAT_NAMES
from ..evaluation.tables import markdown_table
from ..structures import Boxes, Instances

# COCO's 80 category ids (1..90 with gaps)
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def make_synthetic_coco(
    num_images: int,
    gt_per_image: float = 7.0,
    dets_per_image: int = 100,
    seed: int = 0,
    crowd_fraction: float = 0.02,
    empty_fraction: float = 0.02,
    image_size: Tuple[int, int] = (480, 640),
) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """A COCO-format ground-truth dict and per-image model outputs ``{"image_id", "instances"}``."""
    rng = np.random.default_rng(seed)
    h_img, w_img = image_size
    cat_ids = COCO_CATEGORY_IDS
    images, annotations, outputs = [], [], []
    for i in range(num_images):
        image_id = 100000 + 7 * i
        images.append(
            {"id": image_id, "width": w_img, "height": h_img, "file_name": f"{image_id:012d}.jpg"}
        )
        n_gt = 0 if rng.random() < empty_fraction else int(rng.poisson(gt_per_image))
        size = np.exp(rng.uniform(math.log(6), math.log(400), n_gt))
        aspect = np.exp(rng.uniform(-0.7, 0.7, n_gt))
        gw, gh = np.minimum(size * aspect, w_img - 1), np.minimum(size / aspect, h_img - 1)
        gx, gy = rng.uniform(0, w_img - gw), rng.uniform(0, h_img - gh)
        gcls = rng.integers(0, len(cat_ids), n_gt)
        crowd = rng.random(n_gt) < crowd_fraction
        for k in range(n_gt):
            box = [round(float(v), 2) for v in (gx[k], gy[k], gw[k], gh[k])]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[gcls[k]],
                    "bbox": box,
                    "area": round(box[2] * box[3] * float(rng.uniform(0.6, 0.9)), 2),
                    "iscrowd": int(crowd[k]),
                }
            )
        # detections: jittered copies of ground truth (mostly the right class) and background boxes
        n_near = min(dets_per_image, 3 * n_gt)
        src = rng.integers(0, max(n_gt, 1), n_near)
        jit = rng.normal(0, 0.12, (n_near, 4))
        if n_gt:
            nx = gx[src] + jit[:, 0] * gw[src]
            ny = gy[src] + jit[:, 1] * gh[src]
            nw = gw[src] * np.exp(jit[:, 2])
            nh = gh[src] * np.exp(jit[:, 3])
            ncls = np.where(
                rng.random(n_near) < 0.85, gcls[src], rng.integers(0, len(cat_ids), n_near)
            )
        else:
            nx = ny = nw = nh = ncls = np.zeros(0)
        n_bg = dets_per_image - n_near
        bsize = np.exp(rng.uniform(math.log(6), math.log(300), n_bg))
        bx, by = rng.uniform(0, w_img - 6, n_bg), rng.uniform(0, h_img - 6, n_bg)
        x0 = np.concatenate([nx, bx])
        y0 = np.concatenate([ny, by])
        x1 = np.concatenate([nx + nw, bx + bsize])
        y1 = np.concatenate([ny + nh, by + bsize * np.exp(rng.uniform(-0.7, 0.7, n_bg))])
        boxes = np.stack([x0, y0, x1, y1], axis=1).clip(0, [w_img, h_img, w_img, h_img])
        scores = np.concatenate([rng.uniform(0.2, 1.0, n_near), rng.uniform(0.05, 0.7, n_bg)])
        classes = np.concatenate([ncls, rng.integers(0, len(cat_ids), n_bg)]).astype(np.int64)
        order = np.argsort(-scores, kind="stable")
        inst = Instances((h_img, w_img))
        inst.pred_boxes = Boxes(torch.as_tensor(boxes[order], dtype=torch.float32))
        inst.scores = torch.as_tensor(scores[order], dtype=torch.float32)
        inst.pred_classes = torch.as_tensor(classes[order])
        outputs.append({"image_id": image_id, "instances": inst})
    categories = [{"id": c, "name": f"class_{c}"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, outputs


def register_synthetic(name: str, coco_dict: Dict[str, Any], json_path: str) -> None:
    """Write the dict to ``json_path`` and register ``name`` with COCO-style metadata."""
    with open(json_path, "w") as f:
        json.dump(coco_dict, f)
    cat_ids = [c["id"] for c in coco_dict["categories"]]
    MetadataCatalog.get(name).set(
        json_file=json_path,
        thing_classes=[c["name"] for c in coco_dict["categories"]],
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)},
        evaluator_type="coco",
    )


def _run(
    name: str, backend: str, outputs: List[Dict[str, Any]]
) -> Tuple[Dict[str, float], float, float, float]:
    """Metrics, process() wall time, evaluate() wall time and evaluate() CPU time of one backend."""
    evaluator = COCOEvaluator(name, distributed=False, backend=backend)
    evaluator.reset()
    t0 = time.perf_counter()
    for out in outputs:
        evaluator.process([{"image_id": out["image_id"]}], [{"instances": out["instances"]}])
    t1, c1 = time.perf_counter(), time.process_time()
    results = evaluator.evaluate()["bbox"]
    return results, t1 - t0, time.perf_counter() - t1, time.process_time() - c1


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def main(argv: List[str]) -> int:
    # the description is the first paragraph of the module doc, as one line
    description = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="benchmark.py eval", description=description)
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--gt-per-image", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.getLogger("resnet_backbones.evaluation").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    coco_dict, outputs = make_synthetic_coco(
        args.num_images, args.gt_per_image, args.dets_per_image, args.seed
    )
    print(
        f"synthetic data: {args.num_images} images, "
        f"{len(coco_dict['annotations'])} ground-truth boxes, "
        f"{sum(len(o['instances']) for o in outputs)} detections, 80 categories "
        f"({time.perf_counter() - t0:.1f} s to generate)"
    )
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        name = f"_bench_eval_synthetic_{os.getpid()}_{args.num_images}_{args.seed}"
        register_synthetic(name, coco_dict, os.path.join(tmp, "gt.json"))
        try:
            ref, ref_proc, ref_time, ref_cpu = _run(name, "pycocotools", outputs)
            fast, fast_proc, fast_time, fast_cpu = _run(name, "fast", outputs)
        finally:
            MetadataCatalog.remove(name)

    names = [k for k in ref if not k.startswith("AP-")]
    rows = [[k, ref[k], fast[k], "yes" if _same(ref[k], fast[k]) else "NO"] for k in names]
    print("\n" + markdown_table(["metric", "pycocotools", "fast", "identical"], rows, digits=6))
    mismatched = [k for k in ref if not _same(ref[k], fast[k])]
    per_cat = sum(1 for k in ref if k.startswith("AP-"))
    print(
        "\nper-category AP identical: "
        f"{per_cat - sum(k.startswith('AP-') for k in mismatched)}/{per_cat}"
    )
    print(
        "\n"
        + markdown_table(
            [
                "backend",
                "evaluate() wall (s)",
                "evaluate() CPU (s)",
                "speed-up (wall)",
                "speed-up (CPU)",
            ],
            [
                ["pycocotools (reference)", f"{ref_time:.2f}", f"{ref_cpu:.2f}", "1.0x", "1.0x"],
                [
                    "fast (ours, default)",
                    f"{fast_time:.2f}",
                    f"{fast_cpu:.2f}",
                    f"{ref_time / fast_time:.1f}x",
                    f"{ref_cpu / fast_cpu:.1f}x",
                ],
            ],
        )
    )
    print(
        f"\n(process() of all outputs, shared by both: {ref_proc:.2f} s / {fast_proc:.2f} s; "
        f"torch {torch.__version__}, numpy {np.__version__})"
    )
    if mismatched:
        print(f"\nFAIL: {len(mismatched)} metrics differ: {mismatched[:10]}")
        return 1
    assert len(names) == len(STAT_NAMES)
    return 0

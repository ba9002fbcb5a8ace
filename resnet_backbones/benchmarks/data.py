"""Benchmark: COCO json loading against pycocotools, and synthetic shapes generation.

    python tools/benchmark.py data [--parts coco shapes] [--num-images 3000] [--num-anns 22000]
                                   [--repeats 3] [--check] [--json FILE]

* ``coco``: ``load_coco_json`` (which is ``pycocotools.coco.COCO(json)`` plus the conversion to
  detectron2's dicts) against ``COCO(json)`` alone, on a synthetic COCO-like json with one polygon
  per annotation, so that parsing costs what it costs on the real files (the defaults: about the
  size of a tenth of COCO train2017). Each call's result is kept alive through a full
  ``gc.collect()``, so collection work deferred past the call counts too. The two run interleaved,
  ``--repeats`` times each; the best time of each is reported. Promise: ours takes at most
  1.5x ``COCO(json)`` + 0.25 s (the conversion costs less than half of the parsing).
* ``shapes``: ``generate_shapes_dataset`` with 300 + 100 detection images and 300 + 90
  classification images (what ``./run demo`` writes, smaller). Promise: under 10 s on the 2-core
  VM of docs/benchmarks.md.

Benchmarks are not tests: the numbers depend on the machine and its load. ``--check`` makes the
exit status 1 when a promise is not kept.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from . import docstring_parser

PARTS = ("coco", "shapes")
COCO_MAX_RATIO, COCO_SLACK_S = 1.5, 0.25
SHAPES_MAX_S = 10.0
SHAPES_SIZES = {"num_train": 300, "num_val": 100, "num_cls_train": 300, "num_cls_val": 90}


def write_synthetic_coco(
    path: Union[str, os.PathLike], num_images: int, num_anns: int, seed: int = 0
) -> Union[str, os.PathLike]:
    """A COCO-like instances json: ``num_images`` 640x480 images, ``num_anns`` valid boxes (COCO's
    80 category ids) with a 12-point polygon each, and COCO's extra image fields. Returns
    ``path``."""
    from ..data.datasets import COCO_CATEGORIES

    rng = np.random.default_rng(seed)
    ids = [c for c, _ in COCO_CATEGORIES]
    images = [
        {
            "id": i + 1,
            "file_name": f"{i + 1:012d}.jpg",
            "height": 480,
            "width": 640,
            "license": 1,
            "coco_url": "http://images.cocodataset.org/x.jpg",
            "date_captured": "2013-11-14",
        }
        for i in range(num_images)
    ]
    img = rng.integers(1, num_images + 1, size=num_anns)
    xy = rng.uniform(0, 200, size=(num_anns, 2)).round(2)  # x + w <= 640, y + h <= 480
    wh = rng.uniform(1, 250, size=(num_anns, 2)).round(2)
    cats = rng.choice(ids, size=num_anns)
    poly = [round(float(v), 2) for v in rng.uniform(0, 600, size=24)]
    anns = [
        {
            "segmentation": [poly],
            "area": float(wh[k, 0] * wh[k, 1]),
            "iscrowd": 0,
            "image_id": int(img[k]),
            "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
            "category_id": int(cats[k]),
            "id": k + 1,
        }
        for k in range(num_anns)
    ]
    categories = [{"supercategory": "x", "id": c, "name": n} for c, n in COCO_CATEGORIES]
    with open(path, "w") as f:  # json.dumps is C-accelerated; json.dump is not
        f.write(
            json.dumps(
                {
                    "info": {},
                    "licenses": [],
                    "images": images,
                    "annotations": anns,
                    "categories": categories,
                }
            )
        )
    return path


def _timed(fn: Callable[[], Any]) -> float:
    """Seconds for ``fn()`` plus a full collection while its result is still alive."""
    start = time.perf_counter()
    result = fn()
    gc.collect()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def bench_coco(num_images: int, num_anns: int, repeats: int) -> Dict[str, Any]:
    """Best seconds of ``COCO(json)`` and of ``load_coco_json`` on the same synthetic file."""
    from pycocotools.coco import COCO

    from ..data.datasets import load_coco_json

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        path = write_synthetic_coco(os.path.join(tmp, "instances.json"), num_images, num_anns)
        size_mb = os.path.getsize(path) / 2**20

        def pycoco():
            with contextlib.redirect_stdout(io.StringIO()):
                return COCO(path)

        def ours():
            return load_coco_json(path, tmp, on_bad_annotation="error")

        base, mine = [], []
        for _ in range(repeats):  # interleaved: a load change hits both sides alike
            base.append(_timed(pycoco))
            mine.append(_timed(ours))
    best_base, best_mine = min(base), min(mine)
    return {
        "images": num_images,
        "annotations": num_anns,
        "json_mb": round(size_mb, 1),
        "pycocotools_s": round(best_base, 3),
        "ours_s": round(best_mine, 3),
        "ratio": round(best_mine / best_base, 3),
        "kept": best_mine <= COCO_MAX_RATIO * best_base + COCO_SLACK_S,
    }


def bench_shapes() -> Dict[str, Any]:
    """Seconds for :func:`generate_shapes_dataset` with :data:`SHAPES_SIZES`."""
    from ..data.shapes import generate_shapes_dataset

    with tempfile.TemporaryDirectory(prefix="bench_shapes_") as tmp:
        start = time.perf_counter()
        summary = generate_shapes_dataset(Path(tmp) / "shapes", seed=0, **SHAPES_SIZES)
        elapsed = time.perf_counter() - start
    assert summary["detection"]["train"]["images"] == SHAPES_SIZES["num_train"]
    return {**SHAPES_SIZES, "seconds": round(elapsed, 2), "kept": elapsed < SHAPES_MAX_S}


def build_parser() -> argparse.ArgumentParser:
    parser = docstring_parser("data", __doc__)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--num-images", type=int, default=3_000, help="coco: images in the json")
    parser.add_argument("--num-anns", type=int, default=22_000, help="coco: annotations")
    parser.add_argument("--repeats", type=int, default=3, help="coco: calls of each loader")
    parser.add_argument("--check", action="store_true", help="exit 1 when a promise is not kept")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.num_images < 1 or args.num_anns < 0:
        parser.error("--repeats and --num-images must be >= 1, --num-anns >= 0")
    results: Dict[str, Any] = {}
    if "coco" in args.parts:
        r = results["coco"] = bench_coco(args.num_images, args.num_anns, args.repeats)
        print(
            f"COCO json ({r['images']} images, {r['annotations']} annotations, "
            f"{r['json_mb']} MB), best of {args.repeats}:"
        )
        print(f"  pycocotools COCO(json): {r['pycocotools_s']:.2f} s")
        print(
            f"  load_coco_json        : {r['ours_s']:.2f} s ({r['ratio']:.2f}x; promise <= "
            f"{COCO_MAX_RATIO}x + {COCO_SLACK_S} s: {'kept' if r['kept'] else 'NOT KEPT'})"
        )
    if "shapes" in args.parts:
        r = results["shapes"] = bench_shapes()
        print(
            f"shapes dataset ({r['num_train']} + {r['num_val']} detection, {r['num_cls_train']} + "
            f"{r['num_cls_val']} classification images): {r['seconds']:.2f} s (promise < "
            f"{SHAPES_MAX_S:.0f} s: {'kept' if r['kept'] else 'NOT KEPT'})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    broken = [name for name, r in results.items() if not r["kept"]]
    return 1 if args.check and broken else 0

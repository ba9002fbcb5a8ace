"""Benchmark ``tta`` of ``tools/benchmark.py``: seconds per image of plain inference against
test-time augmentation (``TEST.AUG``), both through ``DefaultPredictor``, in the same run.

    python tools/benchmark.py tta --config-file configs/shapes/demo_C4.yaml \\
        --weights demo_output/pretrained/model_final.pth --images demo_output/shapes/val \\
        --min-sizes 160 200 240 280 320 --max-size 640

The two predictors alternate image by image (same load on a shared machine); the first
``--warmup`` images are not timed. Without ``--weights`` the config's model is used with random
weights (the times are the same; the detections mean nothing). Without ``--images``, synthetic
shapes scenes. Reported: the median and mean seconds per image of each, and the mean ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from . import docstring_parser


def _predictor(args: argparse.Namespace, tta: bool) -> Any:
    from ..config import get_cfg
    from ..engine import DefaultPredictor

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    opts = ["MODEL.DEVICE", "cpu", "TEST.AUG.MAX_SIZE", str(args.max_size)]
    if args.min_sizes:
        opts += ["TEST.AUG.MIN_SIZES", str(tuple(args.min_sizes))]
    opts += ["TEST.AUG.FLIP", str(not args.no_flip)]
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    cfg.merge_from_list(opts + list(args.opts))
    torch.manual_seed(0)
    return DefaultPredictor(cfg, tta=tta)


def _images(args: argparse.Namespace) -> List[np.ndarray]:
    from .predictor import load_images

    if args.images:
        images = [img for _, img in load_images(args.images)[0]]
    else:
        from ..data.shapes import render_detection_image

        count = args.num_images + args.warmup
        images = [render_detection_image(i, 240, 320)[0] for i in range(count)]
    if len(images) <= args.warmup:
        raise ValueError(f"{len(images)} image(s): need more than --warmup {args.warmup}")
    return images[: args.num_images + args.warmup]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Times both predictors, interleaved; returns the numbers (see the module docstring)."""
    plain, tta = _predictor(args, False), _predictor(args, True)
    augmented = len(tta.tta_model.tta_mapper.min_sizes) * (1 if args.no_flip else 2)
    times: Dict[str, List[float]] = {"plain": [], "tta": []}
    for i, image in enumerate(_images(args)):
        for name, predictor in (("plain", plain), ("tta", tta)):
            start = time.perf_counter()
            predictor(image)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    ratios = [t / p for p, t in zip(times["plain"], times["tta"])]
    return {
        "images": len(times["plain"]),
        "augmented_inputs": augmented,
        "threads": torch.get_num_threads(),
        **{f"{k}_median_s": round(statistics.median(v), 4) for k, v in times.items()},
        **{f"{k}_mean_s": round(statistics.fmean(v), 4) for k, v in times.items()},
        "ratio_mean": round(statistics.fmean(ratios), 2),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = docstring_parser("tta", __doc__)
    parser.add_argument("--config-file", default="configs/shapes/demo_C4.yaml")
    parser.add_argument("--weights", default="", help="MODEL.WEIGHTS (default: random)")
    parser.add_argument("--images", nargs="*", default=[], help="image files or folders")
    parser.add_argument("--num-images", type=int, default=20, help="timed images (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first images")
    parser.add_argument("--min-sizes", type=int, nargs="*", default=[], help="TEST.AUG.MIN_SIZES")
    parser.add_argument("--max-size", type=int, default=4000, help="TEST.AUG.MAX_SIZE")
    parser.add_argument("--no-flip", action="store_true", help="TEST.AUG.FLIP False")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ...")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..utils.env import cpu_flags_summary, cpu_name

    args = build_parser().parse_args(argv)
    print(f"CPU: {cpu_name()} ({cpu_flags_summary()}), torch {torch.__version__}", flush=True)
    r = run(args)
    print(
        f"{r['images']} images, {r['threads']} threads, TTA = {r['augmented_inputs']} augmented "
        f"inputs per image: plain {r['plain_median_s']:.3f} s/image (mean {r['plain_mean_s']:.3f}),"
        f" TTA {r['tta_median_s']:.3f} s/image (mean {r['tta_mean_s']:.3f}); "
        f"TTA / plain {r['ratio_mean']:.2f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0

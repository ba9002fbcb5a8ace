#!/usr/bin/env python
"""Write the synthetic "shapes" dataset (COCO + VOC detection, ImageFolder classification).

    python datasets/prepare_shapes.py --output datasets/shapes \\
        --num-train 400 --num-val 100 --seed 0

The layout and the overwrite rules are described in ``resnet_backbones/data/shapes.py``. A directory
holding anything the generator does not own is refused unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from resnet_backbones.data.shapes import (
    RenderParams,
    format_shapes_summary,
    generate_shapes_dataset,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "shapes"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="output directory (default: %(default)s)",
    )
    p.add_argument("--num-train", type=int, default=400, help="detection training images")
    p.add_argument("--num-val", type=int, default=100, help="detection validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--num-cls-train",
        type=int,
        default=600,
        help="classification training images (all classes)",
    )
    p.add_argument(
        "--num-cls-val",
        type=int,
        default=150,
        help="classification validation images (all classes)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="fixed square detection images (sets min and max size)",
    )
    p.add_argument(
        "--min-size", type=int, default=160, help="smallest detection image height/width"
    )
    p.add_argument("--max-size", type=int, default=256, help="largest detection image height/width")
    p.add_argument("--cls-image-size", type=int, default=64, help="side of classification images")
    p.add_argument("--min-objects", type=int, default=1, help="fewest shapes attempted per image")
    p.add_argument("--max-objects", type=int, default=6, help="most shapes attempted per image")
    p.add_argument(
        "--min-object-size",
        type=float,
        default=RenderParams.min_object_size,
        help="smallest shape extent (px)",
    )
    p.add_argument(
        "--max-object-frac",
        type=float,
        default=RenderParams.max_object_frac,
        help="largest shape extent as a fraction of min(height, width)",
    )
    p.add_argument(
        "--min-visible-fraction",
        type=float,
        default=RenderParams.min_visible_fraction,
        help="each shape keeps at least this fraction of its pixels visible",
    )
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument(
        "--force",
        action="store_true",
        help="regenerate even if the directory holds foreign entries",
    )
    p.add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of a table"
    )
    args = p.parse_args(argv)
    if args.image_size is not None:
        args.min_size = args.max_size = args.image_size
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        render = RenderParams(
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            min_object_size=args.min_object_size,
            max_object_frac=args.max_object_frac,
            min_visible_fraction=args.min_visible_fraction,
        )
        summary = generate_shapes_dataset(
            args.output,
            args.num_train,
            args.num_val,
            args.seed,
            num_cls_train=args.num_cls_train,
            num_cls_val=args.num_cls_val,
            min_size=args.min_size,
            max_size=args.max_size,
            cls_image_size=args.cls_image_size,
            jpeg_quality=args.jpeg_quality,
            render_params=render,
            force=args.force,
        )
    except (ValueError, FileExistsError, NotADirectoryError) as exc:
        print(f"prepare_shapes: error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(summary, indent=2) if args.json else format_shapes_summary(summary, args.output)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

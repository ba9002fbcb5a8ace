#!/usr/bin/env python
"""The README's main command on the embedded default: ``./run demo``.

Generates the synthetic shapes dataset (detection in COCO and VOC layouts, classification in
ImageFolder layout) under ``--output`` and prints its summary.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from resnet_backbones.data.shapes import ensure_shapes_dataset, format_shapes_summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="demo folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data_dir = args.output / "shapes"
    summary = ensure_shapes_dataset(data_dir, seed=args.seed)
    print(format_shapes_summary(summary, data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

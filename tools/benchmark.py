#!/usr/bin/env python
"""Measure speed against the reference in the same run (a benchmark, not a test).

    python tools/benchmark.py backbone   # ours vs torchvision ResNet-50/101
    python tools/benchmark.py detector   # ours vs detectron2 R50-C4/R101-C4 (when importable)
    python tools/benchmark.py eval       # our COCO evaluation backend vs pycocotools
    python tools/benchmark.py data       # COCO json loading vs pycocotools, shapes generation
    python tools/benchmark.py tta        # test-time augmentation vs plain inference (predictor)

Each subcommand lives in ``resnet_backbones/benchmarks/<name>.py`` and has its own ``--help``.
"""

import importlib
import sys

SUBCOMMANDS = ("backbone", "detector", "eval", "data", "tta")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"\nunknown benchmark '{argv[0]}'; choose one of {', '.join(SUBCOMMANDS)}",
                file=sys.stderr,
            )
            return 2
        return 0
    module = importlib.import_module(f"resnet_backbones.benchmarks.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python
"""Export a backbone or the C4 detector's inference path to TorchScript or ONNX.

    python tools/export_model.py --config-file configs/shapes/faster_rcnn_R18_C4.yaml \\
        --format onnx --output export/ --opts MODEL.WEIGHTS output/model_final.pth

    python tools/export_model.py --config-file configs/shapes/faster_rcnn_R18_C4.yaml \\
        --format torchscript --output export/ --backbone-only

Writes ``model.ts`` or ``model.onnx``, ``export_info.json`` (inputs, outputs, preprocessing, the
largest difference between the exported file and the eager model on the example input) and the
``config.yaml`` used. The detector takes one ``(3, H, W)`` image (0-255, ``INPUT.FORMAT`` order,
already resized; ``--input-size H W``, default ``MIN_SIZE_TEST`` square) and returns ``boxes``,
``scores``, ``classes``; the backbone takes normalized ``(N, 3, H, W)`` images of any size and
returns one map per ``MODEL.RESNETS.OUT_FEATURES``. See docs/integrations.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a backbone or the C4 detector to TorchScript or ONNX.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="a config of this project"
    )
    parser.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to write into")
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="export the backbone (any input size) instead of the detector",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="height and width of the traced input (default: INPUT.MIN_SIZE_TEST square)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    parser.add_argument(
        "--dynamo",
        action="store_true",
        help="ONNX: use the torch.export-based exporter (slower) instead of the TorchScript one",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="do not compare the exported model with the eager one",
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        metavar="KEY VALUE",
        help="config overrides, e.g. --opts MODEL.WEIGHTS model.pth (must come last)",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from resnet_backbones.config import get_cfg
    from resnet_backbones.export import DEFAULT_OPSET, export_model

    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(list(args.opts))
    result = export_model(
        cfg,
        args.format,
        args.output,
        backbone_only=args.backbone_only,
        input_size=tuple(args.input_size) if args.input_size else None,
        opset_version=args.opset or DEFAULT_OPSET,
        dynamo=args.dynamo,
        check=not args.no_check,
    )
    print(f"wrote {result.path} ({result.what}, {result.format})")
    print(f"  inputs:  {result.input_names} {result.input_shape}")
    print(f"  outputs: {result.output_names}")
    if result.max_abs_diff is not None:
        print(f"  max |exported - eager| on the example input: {result.max_abs_diff:.3g}")
    for note in result.notes:
        print(f"  note: {note}")
    print(json.dumps({"path": result.path, "max_abs_diff": result.max_abs_diff}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

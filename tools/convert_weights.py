#!/usr/bin/env python
"""Convert ResNet weights between naming schemes, with a sanity report.

    python tools/convert_weights.py --from torchvision --to ours resnet50-0676ba61.pth r50_ours.pth
    python tools/convert_weights.py --from msra-pkl --to ours R-50.pkl R-50_ours.pth
    python tools/convert_weights.py --from detectron2 --to ours --backbone-only \\
        model_final.pkl r50.pth
    python tools/convert_weights.py --from auto --to detectron2 r50_ours.pth r50_d2.pkl

Formats: ours (= detectron2's ResNet names without "backbone."), detectron2, torchvision, timm
(same names as torchvision), msra-pkl (Caffe2 blobs of MSRA's ImageNet models, e.g. R-50.pkl).
Output: .pkl writes a detectron2-style pickle of numpy arrays; anything else torch.save's
{"model": ..., "__author__": ..., "meta": ...} (a bare state dict for --to torchvision).
The report lists how many tensors were mapped, every tensor dropped and why, what the weights
expect as input, and whether they fit the ResNet their shapes describe.
Pickles are read with a restricted unpickler and .pth files with torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import sys

from resnet_backbones.checkpoint import (
    SOURCE_FORMATS,
    TARGET_FORMATS,
    CheckpointError,
    convert_checkpoint_file,
)
from resnet_backbones.checkpoint.safe_pickle import UnsafePickleError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=("auto",) + SOURCE_FORMATS,
        help="naming scheme of IN (default: auto, detected from the tensor names)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        default="ours",
        choices=TARGET_FORMATS,
        help="naming scheme of OUT (default: ours)",
    )
    parser.add_argument("input", metavar="IN", help="weights file to read (.pth/.pt/.pkl/...)")
    parser.add_argument(
        "output",
        metavar="OUT",
        help="file to write (.pkl: pickle of numpy arrays; else torch.save)",
    )
    parser.add_argument(
        "--backbone-only",
        action="store_true",
        help="detectron2 source: keep only the ResNet (backbone.* and roi_heads.res5.*)",
    )
    parser.add_argument(
        "--d2-prefix",
        default="backbone.",
        help="prefix of backbone tensors for --to detectron2 (default 'backbone.'; '' "
        "writes detectron2's ImageNet-initialization layout with matching_heuristics)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip loading the result into a model"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any tensor was dropped or the model check found a mismatch",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        result = convert_checkpoint_file(
            args.input,
            args.output,
            source=args.source,
            target=args.target,
            backbone_only=True if args.backbone_only else None,
            detectron2_prefix=args.d2_prefix,
            check=not args.no_check,
            overwrite=args.overwrite,
        )
    except (
        CheckpointError,
        UnsafePickleError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.strict and (result.conversion.dropped or not result.check_ok):
        print("strict: tensors were dropped or did not fit the model (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

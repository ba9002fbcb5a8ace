#!/usr/bin/env python
"""Parameters and FLOPs of a registered model (or a detection config's backbone), per stage.

    python tools/analyze_model.py --model resnet50 --tasks flops params
    python tools/analyze_model.py --model resnet50 --stride-in-1x1  # the paper's Table 1 count
    python tools/analyze_model.py --model resnet20_cifar --input-size 32
    python tools/analyze_model.py --config-file cfg.yaml --input-size 800 1333 [KEY VALUE ...]

FLOPs come from fvcore's FlopCountAnalysis, which counts one fused multiply-add as one flop: the
unit of the ResNet paper ("FLOPs" = multiply-adds) and of torchvision's and detectron2's tables.

--stride-in-1x1: by default the model is exactly what ``create_model(name)`` builds, i.e. the
torchvision layout (stride in the 3x3 conv of each downsampling bottleneck, "ResNet v1.5"), which
is the model torchvision weights load into. The paper's Table 1 counts (3.8 GFLOPs for ResNet-50)
are for MSRA's original models, with the stride in the first 1x1 conv: pass --stride-in-1x1 to
count those. With a config file the default is the config's MODEL.RESNETS.STRIDE_IN_1X1 (True in
detectron2's C4 configs); either flag overrides it. Basic-block models are unaffected.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", default=None, help="registered model name (default resnet50); see --list"
    )
    source.add_argument(
        "--config-file",
        default=None,
        help="detection config: analyze its backbone (MODEL.RESNETS.*)",
    )
    parser.add_argument("--list", action="store_true", help="list registered models and exit")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["flops", "params"],
        choices=["flops", "params"],
        help="what to count (default: both)",
    )
    parser.add_argument(
        "--input-size",
        nargs="+",
        type=int,
        default=[224],
        metavar="S",
        help="input height and width: S (square) or H W; default 224",
    )
    parser.add_argument(
        "--stride-in-1x1",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put bottleneck strides in the 1x1 conv (MSRA v1, the paper's counts); default: the "
        "model's own (create_model: no, torchvision layout; config: MODEL.RESNETS.STRIDE_IN_1X1)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="batch size of the dummy input (default 1)"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... (with --config-file)"
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from resnet_backbones.modeling.backbone import create_model, list_models
    from resnet_backbones.utils.flops import (
        PAPER_GFLOPS,
        analyze_model,
        format_stats,
        input_shape_for,
    )

    if args.list:
        print("\n".join(list_models()))
        return 0
    if args.opts and not args.config_file:
        print(
            f"unexpected arguments {args.opts} (config overrides need --config-file)",
            file=sys.stderr,
        )
        return 2
    try:
        input_shape_for(args.input_size)
    except ValueError as e:
        print(f"--input-size: {e}", file=sys.stderr)
        return 2

    paper = None
    if args.config_file:
        from resnet_backbones.config import get_cfg
        from resnet_backbones.layers import ShapeSpec
        from resnet_backbones.modeling.backbone.resnet import build_resnet_backbone

        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        if args.opts:
            cfg.merge_from_list(args.opts)
        if args.stride_in_1x1 is not None:
            cfg.MODEL.RESNETS.STRIDE_IN_1X1 = args.stride_in_1x1
        in_channels = len(cfg.MODEL.PIXEL_MEAN)
        model = build_resnet_backbone(cfg, ShapeSpec(channels=in_channels))
        r = cfg.MODEL.RESNETS
        name = f"{args.config_file}: backbone ResNet-{r.DEPTH}, out_features {list(r.OUT_FEATURES)}"
        stride_in_1x1 = r.STRIDE_IN_1X1
    else:
        name = args.model or "resnet50"
        in_channels = 3
        kwargs = {} if args.stride_in_1x1 is None else {"stride_in_1x1": args.stride_in_1x1}
        try:
            model = create_model(name, **kwargs)
        except KeyError as e:
            print(e.args[0] if e.args else e, file=sys.stderr)
            return 2
        stride_in_1x1 = bool(args.stride_in_1x1)
        paper = PAPER_GFLOPS.get(name)
    model.eval()

    bottleneck = any(hasattr(m, "conv3") for m in model.modules())
    layout = ""
    if bottleneck:
        layout = (
            ", stride in the 1x1 conv (MSRA v1, as in the paper)"
            if stride_in_1x1
            else ", stride in the 3x3 conv (torchvision v1.5)"
        )
    with torch.no_grad():
        stats = analyze_model(
            model,
            args.input_size,
            batch_size=args.batch_size,
            in_channels=in_channels,
            tasks=args.tasks,
        )
    print(
        format_stats(
            stats, title=f"## {name}{layout}", paper_gflops=paper if "flops" in args.tasks else None
        )
    )
    if paper is not None and "flops" in args.tasks:
        if tuple(stats.input_shape[2:]) != (224, 224) or args.batch_size != 1:
            print("note: the paper's number is for one 224x224 image")
        elif bottleneck and not stride_in_1x1:
            print(
                "note: the paper's count is for the stride in the 1x1 conv; run with "
                "--stride-in-1x1 to reproduce it (this layout runs the 3x3 conv of res3..res5's "
                "first block on 4x the pixels, before its stride)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

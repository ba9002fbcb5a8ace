#!/usr/bin/env python
"""\
Train or evaluate a ResNet classifier (ImageFolder or CIFAR-10) with train_net's launcher and flags.

ImageNet-style data (``PATH/train/<class>/*.jpg``, ``PATH/val/<class>/*.jpg``), the standard recipe
(SGD momentum 0.9, LR 0.1 x batch/256, weight decay 1e-4, 90 epochs, LR / 10 at 30, 60, 80;
RandomResizedCrop 224 + flip; validation resize 256, center crop 224)::

    python tools/train_cls.py --model resnet50 --data /path/to/imagenet --num-gpus 8
    python tools/train_cls.py --model resnet50 --data PATH --cosine --label-smoothing 0.1 --amp \\
        --channels-last

Small images: ``--input-size 64`` trains on 64x64 crops (validation: resize 73, crop 64)::

    python tools/train_cls.py --model resnet18 --data demo_output/shapes/classification \\
        --input-size 64 --epochs 30 --batch-size 64 --output-dir output/shapes_cls

CIFAR-10 (python batches: data_batch_1..5, test_batch), the paper's recipe (batch 128, LR 0.1,
64k iterations, LR / 10 at 32k and 48k, 4-pixel padding + 32x32 crop + flip)::

    python tools/train_cls.py --dataset cifar10 --model resnet56_cifar \\
        --data /path/to/cifar-10-batches-py

Resume exactly (same data order and random streams), evaluate a checkpoint, change any config key
(``KEY VALUE`` pairs at the end; see ``resnet_backbones/classification/config.py``)::

    python tools/train_cls.py --model resnet50 --data PATH --output-dir OUT --resume
    python tools/train_cls.py --model resnet50 --data PATH --eval-only --weights OUT/model_final.pth
    python tools/train_cls.py --model resnet50 --data PATH \\
        SOLVER.WARMUP_EPOCHS 5 MODEL.ZERO_INIT_RESIDUAL True

The paper's test protocols (He et al. 2016, Sec. 3.4; TEST.PROTOCOLS, TEST.MULTISCALE_SIZES, see
``resnet_backbones/classification/test_protocols.py``): single center crop (``val/*``), 10-crop
(``val_10crop/*``), fully-convolutional multi-scale (``val_multiscale/*``)::

    python tools/train_cls.py --model resnet50 --data PATH --eval-only --weights W.pth \\
        --test-protocol single,10crop,multiscale

Outputs in ``--output-dir``: config.yaml, env.txt, log.txt, metrics.json (``total_loss``, ``lr``,
``val/top1``, ``val/top5``, ``val/loss``; ``val_10crop/*``, ``val_multiscale/*`` with those
protocols), TensorBoard events, model_{iter:07d}.pth,
model_final.pth, last_checkpoint. ``model_final.pth`` is a valid detector ``MODEL.WEIGHTS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, List, Optional

from resnet_backbones.classification import (
    PROTOCOLS,
    ClassificationCheckpointer,
    ClassificationTrainer,
    build_classifier,
    build_dataset,
    check_protocols,
    evaluate_protocols,
    get_cls_cfg,
    load_classifier_weights,
    resolve_device,
)
from resnet_backbones.classification.trainer import amp_dtype
from resnet_backbones.config import ConfigError
from resnet_backbones.engine.defaults import default_argument_parser, default_setup
from resnet_backbones.engine.launch import ProcessFailedError, launch
from resnet_backbones.utils import comm

logger = logging.getLogger("resnet_backbones.train_cls")


def build_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(epilog=__doc__.split("\n", 2)[2])
    parser.description = __doc__.split("\n", 1)[0]
    add = parser.add_argument
    add("--model", help="registered model name (MODEL.NAME), e.g. resnet50, resnet56_cifar")
    add(
        "--data",
        help=(
            "dataset folder (DATA.PATH): ImageFolder root with train/ and val/, "
            "or the CIFAR-10 batches"
        ),
    )
    add(
        "--dataset",
        choices=["imagefolder", "cifar10"],
        default=None,
        help="dataset kind; cifar10 selects the paper's CIFAR recipe (default: imagefolder)",
    )
    add("--output-dir", help="where checkpoints, logs and metrics go (OUTPUT_DIR)")
    add(
        "--epochs",
        type=int,
        help="training epochs (SOLVER.EPOCHS; LR steps at 1/3, 2/3 and 8/9 of them)",
    )
    add(
        "--max-iter",
        type=int,
        help="train for this many iterations instead of epochs (SOLVER.MAX_ITER)",
    )
    add("--batch-size", type=int, help="global batch size (SOLVER.BATCH_SIZE)")
    add("--lr", type=float, help="base learning rate (SOLVER.BASE_LR; default 0.1 x batch / 256)")
    add("--weight-decay", type=float, help="SOLVER.WEIGHT_DECAY")
    add("--cosine", action="store_true", help="cosine learning-rate decay instead of steps")
    add("--warmup-epochs", type=int, help="linear warmup epochs (SOLVER.WARMUP_EPOCHS)")
    add("--label-smoothing", type=float, help="SOLVER.LABEL_SMOOTHING")
    add(
        "--amp",
        action="store_true",
        help="mixed precision: bfloat16 autocast on CPU, float16 + GradScaler on CUDA",
    )
    add(
        "--channels-last",
        action="store_true",
        help="channels_last memory format (MODEL.CHANNELS_LAST)",
    )
    add(
        "--input-size",
        type=int,
        help="crop size (INPUT.SIZE; validation resizes to size*256/224 first)",
    )
    add("--workers", type=int, help="data loader processes per training process (DATA.NUM_WORKERS)")
    add(
        "--weights",
        help="initial weights (MODEL.WEIGHTS); with --eval-only, the weights to evaluate",
    )
    add("--seed", type=int, help="SEED (negative: random, saved with the checkpoints)")
    add("--device", help="MODEL.DEVICE: auto, cpu or cuda")
    add("--progress", choices=["auto", "on", "off"], help="tqdm progress bars (PROGRESS)")
    add(
        "--test-protocol",
        type=_protocol_list,
        metavar="P[,P...]",
        help=(
            "evaluation protocols (TEST.PROTOCOLS), comma-separated, or 'all': single (center "
            "crop), 10crop (corners + center and their flips), multiscale (fully convolutional at "
            "TEST.MULTISCALE_SIZES); each reported as val[_<protocol>]/top1, top5, loss"
        ),
    )
    return parser


def _protocol_list(text: str) -> tuple:
    """``"10crop,multiscale"`` -> ``("10crop", "multiscale")``; ``"all"``: every protocol."""
    names = PROTOCOLS if text.strip() == "all" else [p.strip() for p in text.split(",")]
    try:
        return check_protocols([p for p in names if p])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, or 'all'") from None


def load_config(args: Any):
    """Recipe defaults (``--dataset``), ``--config-file``, the flags, then trailing
    ``KEY VALUE`` pairs."""
    recipe = args.dataset or "imagenet"
    cfg = get_cls_cfg(recipe)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
        if args.dataset is None and cfg.DATA.DATASET == "cifar10":
            # the file chose CIFAR-10: take the CIFAR recipe, then the file again on top of it
            cfg = get_cls_cfg("cifar10")
            cfg.merge_from_file(args.config_file)
    flags = {
        "model": "MODEL.NAME",
        "data": "DATA.PATH",
        "dataset": "DATA.DATASET",
        "output_dir": "OUTPUT_DIR",
        "epochs": "SOLVER.EPOCHS",
        "max_iter": "SOLVER.MAX_ITER",
        "batch_size": "SOLVER.BATCH_SIZE",
        "lr": "SOLVER.BASE_LR",
        "weight_decay": "SOLVER.WEIGHT_DECAY",
        "warmup_epochs": "SOLVER.WARMUP_EPOCHS",
        "label_smoothing": "SOLVER.LABEL_SMOOTHING",
        "input_size": "INPUT.SIZE",
        "workers": "DATA.NUM_WORKERS",
        "weights": "MODEL.WEIGHTS",
        "seed": "SEED",
        "device": "MODEL.DEVICE",
        "progress": "PROGRESS",
    }
    overrides: List[str] = []
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides += [key, str(value)]
    if args.cosine:
        overrides += ["SOLVER.SCHEDULE", "cosine"]
    if args.amp:
        overrides += ["SOLVER.AMP.ENABLED", "True"]
    if args.channels_last:
        overrides += ["MODEL.CHANNELS_LAST", "True"]
    if getattr(args, "test_protocol", None):
        overrides += ["TEST.PROTOCOLS", repr(tuple(args.test_protocol))]
    cfg.merge_from_list(overrides)
    if args.epochs is not None and not any(
        k == "SOLVER.STEP_EPOCHS" for k in (args.opts or [])[0::2]
    ):
        # --epochs N keeps the recipe's proportions: steps at 30/90, 60/90, 80/90 of training
        cfg.SOLVER.STEP_EPOCHS = tuple(
            int(round(args.epochs * f)) for f in (30 / 90, 60 / 90, 80 / 90)
        )
    cfg.merge_from_list(args.opts or [])
    check_protocols(cfg.TEST.PROTOCOLS)
    cfg.freeze()
    return cfg


def _check_inputs(cfg: Any, args: Any) -> None:
    """Fail before any process starts if the data or the weights are missing."""
    if cfg.DATA.DATASET == "cifar10":
        from resnet_backbones.classification import find_cifar10_dir

        find_cifar10_dir(cfg.DATA.PATH or ".")
    else:
        if not cfg.DATA.PATH:
            raise FileNotFoundError(
                "no data: pass --data PATH (a folder with train/ and val/ class folders)"
            )
        splits = (
            [cfg.DATA.VAL_SPLIT] if args.eval_only else [cfg.DATA.TRAIN_SPLIT, cfg.DATA.VAL_SPLIT]
        )
        for split in splits:
            folder = os.path.join(os.path.expanduser(cfg.DATA.PATH), split)
            if not os.path.isdir(folder):
                raise FileNotFoundError(
                    f"'{folder}' does not exist: --data must hold "
                    f"{cfg.DATA.TRAIN_SPLIT}/ and {cfg.DATA.VAL_SPLIT}/, "
                    f"each with one sub-folder of images per class (torchvision ImageFolder layout)"
                )
    if cfg.MODEL.WEIGHTS and not os.path.isfile(os.path.expanduser(cfg.MODEL.WEIGHTS)):
        raise FileNotFoundError(f"weights file '{cfg.MODEL.WEIGHTS}' not found")


def eval_only(cfg: Any, args: Any) -> Any:
    """Evaluate MODEL.WEIGHTS (or, with --resume, OUTPUT_DIR's last checkpoint) on the
    validation set with each TEST.PROTOCOLS: ``{"val": {...}, "val_10crop": {...}, ...}``."""
    device = resolve_device(cfg.MODEL.DEVICE)
    val_set = build_dataset(cfg, is_train=False)
    num_classes = int(cfg.MODEL.NUM_CLASSES) or len(val_set.classes)
    model = build_classifier(cfg, num_classes).to(device)
    ckpt = ClassificationCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=False)
    if args.resume and ckpt.has_checkpoint():
        ckpt.load(ckpt.get_checkpoint_file(), checkpointables=[])
    elif cfg.MODEL.WEIGHTS:
        load_classifier_weights(model, cfg.MODEL.WEIGHTS)
    else:
        logger.warning(
            "--eval-only without --weights (or a checkpoint to resume): evaluating random weights"
        )
    batch = int(cfg.TEST.BATCH_SIZE) or max(1, int(cfg.SOLVER.BATCH_SIZE) // comm.get_world_size())
    results = evaluate_protocols(
        model, cfg, batch, device=device, autocast_dtype=amp_dtype(cfg, device)
    )
    if comm.is_main_process():
        print(json.dumps(results, indent=2), flush=True)
    return results


def main(args: Any) -> Any:
    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        return eval_only(cfg, args)
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args)
        _check_inputs(cfg, args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr, flush=True)
        return 2
    device = resolve_device(cfg.MODEL.DEVICE) if cfg.MODEL.DEVICE != "auto" else None
    on_cpu = (device is not None and device.type == "cpu") or (
        device is None and not _cuda_available()
    )
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend="gloo" if on_cpu else "nccl",
        )
    except ProcessFailedError as e:
        print(f"error: a training process failed:{e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:  # SIGTERM/SIGINT: a checkpoint was saved
        print(f"\n{e}", file=sys.stderr, flush=True)
        return int(getattr(e, "exit_code", 130))
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(invoke_main())

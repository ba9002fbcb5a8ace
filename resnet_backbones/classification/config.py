"""The classification training config: a strict ``CfgNode`` like the detector's, other keys.

:func:`get_cls_cfg` returns the defaults of a recipe:

* ``"imagenet"`` (He et al., CVPR 2016, Sec. 3.4, as in the torchvision reference): SGD with
  momentum 0.9, weight decay 1e-4, batch 256 and learning rate ``0.1 x batch / 256``, 90 epochs
  with the rate divided by 10 at epochs 30, 60 and 80 (``SOLVER.SCHEDULE cosine`` for a cosine
  decay instead); ``RandomResizedCrop`` 224 with horizontal flip for training, resize 256 and
  center crop 224 for validation (``INPUT.SIZE`` scales both, ``256/224`` kept).
* ``"cifar10"`` (CVPR 2016, Sec. 4.2): batch 128, learning rate 0.1, weight decay 1e-4, momentum
  0.9, 64k iterations with the rate divided by 10 at 32k and 48k; 4-pixel zero padding, a random
  32x32 crop and horizontal flip; the 32x32 image itself for testing.

Images reach the network as detectron2's detectors feed it (``INPUT.FORMAT`` channel order,
0-255 values normalized by ``MODEL.PIXEL_MEAN``/``MODEL.PIXEL_STD``, given in that order): BGR
and the ImageNet statistics by default, so that a classifier trained here is a detector
initialization without any channel swap. The checkpoint records this convention.

Keys follow detectron2's naming where one exists (``SOLVER.BASE_LR``, ``SOLVER.MAX_ITER``,
``SOLVER.STEPS``, ``SOLVER.WARMUP_ITERS``, ``SOLVER.AMP.ENABLED``, ``INPUT.FORMAT``, ``OUTPUT_DIR``,
``SEED``); the rest is named for what it does. ``0``/``""`` values mean "derived" as documented.
"""

from __future__ import annotations

from typing import Optional

from ..config import CfgNode as CN

__all__ = ["RECIPES", "get_cls_cfg", "IMAGENET_PIXEL_MEAN_BGR", "IMAGENET_PIXEL_STD_BGR"]

RECIPES = ("imagenet", "cifar10")

# ImageNet statistics on the 0-255 scale, BGR order (detectron2's MODEL.PIXEL_MEAN order).
IMAGENET_PIXEL_MEAN_BGR = [103.530, 116.280, 123.675]
IMAGENET_PIXEL_STD_BGR = [57.375, 57.120, 58.395]
# CIFAR-10 training-set statistics, 0-255 scale, BGR order.
CIFAR10_PIXEL_MEAN_BGR = [113.865, 122.950, 125.307]
CIFAR10_PIXEL_STD_BGR = [66.705, 62.089, 62.993]


def _defaults() -> CN:
    _C = CN()
    _C.VERSION = 1

    _C.MODEL = CN()
    # A registered model name (resnet_backbones.list_models()): resnet18..152, resnet*_cifar,
    # preact_*.
    _C.MODEL.NAME = "resnet50"
    # Classifier outputs; 0 = the number of classes of the training set.
    _C.MODEL.NUM_CLASSES = 0
    # "auto": CUDA if available, else CPU. Or "cpu", "cuda".
    _C.MODEL.DEVICE = "auto"
    # Initial weights (any format resnet_backbones.checkpoint reads); "" = random (He) init.
    _C.MODEL.WEIGHTS = ""
    # Architecture arguments of create_model; 0 / "" keep the model's own default.
    _C.MODEL.STEM_OUT_CHANNELS = 0
    _C.MODEL.RES2_OUT_CHANNELS = 0
    _C.MODEL.WIDTH_PER_GROUP = 0
    _C.MODEL.NUM_GROUPS = 1
    _C.MODEL.SHORTCUT = ""  # "A", "B" or "C"
    # Stride of bottlenecks in the first 1x1 conv (MSRA, detectron2's C4 default) or the 3x3
    # (torchvision).
    _C.MODEL.STRIDE_IN_1X1 = False
    _C.MODEL.NORM = "BN"
    _C.MODEL.ZERO_INIT_RESIDUAL = False
    _C.MODEL.CHANNELS_LAST = False
    _C.MODEL.PIXEL_MEAN = list(IMAGENET_PIXEL_MEAN_BGR)
    _C.MODEL.PIXEL_STD = list(IMAGENET_PIXEL_STD_BGR)

    _C.INPUT = CN()
    _C.INPUT.FORMAT = (
        "BGR"  # channel order the network sees: "BGR" (detectron2) or "RGB" (torchvision)
    )
    # Training crop side (RandomResizedCrop) and validation center-crop side.
    _C.INPUT.SIZE = 224
    # Validation resize of the short side; 0 = round(SIZE * 256 / 224).
    _C.INPUT.RESIZE_SIZE = 0
    # RandomResizedCrop area range (fraction of the image) and aspect-ratio range.
    _C.INPUT.MIN_SCALE = 0.08
    _C.INPUT.MAX_SCALE = 1.0
    _C.INPUT.RATIO = (3.0 / 4.0, 4.0 / 3.0)
    _C.INPUT.RANDOM_FLIP = True
    # CIFAR-style augmentation instead: zero-pad by PADDING pixels, random SIZE crop, flip.
    _C.INPUT.PAD_CROP = False
    _C.INPUT.PADDING = 4

    _C.DATA = CN()
    _C.DATA.DATASET = "imagefolder"  # "imagefolder" or "cifar10"
    # imagefolder: the folder holding TRAIN_SPLIT/ and VAL_SPLIT/ (class sub-folders of images).
    # cifar10: the folder holding data_batch_1..5 and test_batch (or its parent).
    _C.DATA.PATH = ""
    _C.DATA.TRAIN_SPLIT = "train"
    _C.DATA.VAL_SPLIT = "val"
    _C.DATA.NUM_WORKERS = 4

    _C.SOLVER = CN()
    # "SGD" (the papers' optimizer) or "AdamW" (BASE_LR then typically ~1e-3).
    _C.SOLVER.OPTIMIZER = "SGD"
    # Global batch (split over the processes).
    _C.SOLVER.BATCH_SIZE = 256
    # <= 0: 0.1 x BATCH_SIZE / 256 (the linear scaling rule of Goyal et al.).
    _C.SOLVER.BASE_LR = 0.0
    _C.SOLVER.MOMENTUM = 0.9
    _C.SOLVER.NESTEROV = False
    _C.SOLVER.WEIGHT_DECAY = 1e-4
    # Weight decay of norm weights/biases and of conv/linear biases; < 0: WEIGHT_DECAY (the paper).
    _C.SOLVER.WEIGHT_DECAY_NORM_BIAS = -1.0
    # Length: MAX_ITER iterations if > 0 (with STEPS in iterations), else EPOCHS (STEP_EPOCHS).
    _C.SOLVER.EPOCHS = 90
    _C.SOLVER.STEP_EPOCHS = (30, 60, 80)
    _C.SOLVER.MAX_ITER = 0
    _C.SOLVER.STEPS = ()
    _C.SOLVER.GAMMA = 0.1
    # "step" (multiply by GAMMA at each step) or "cosine" (to 0 at the end).
    _C.SOLVER.SCHEDULE = "step"
    # Linear warmup from WARMUP_FACTOR x BASE_LR over WARMUP_ITERS iterations (or WARMUP_EPOCHS).
    _C.SOLVER.WARMUP_ITERS = 0
    _C.SOLVER.WARMUP_EPOCHS = 0
    _C.SOLVER.WARMUP_FACTOR = 0.1
    _C.SOLVER.LABEL_SMOOTHING = 0.0
    _C.SOLVER.AMP = CN()
    _C.SOLVER.AMP.ENABLED = False
    # "" = bfloat16 on CPU, float16 (with a GradScaler) on CUDA.
    _C.SOLVER.AMP.DTYPE = ""
    # Checkpoint and evaluation periods in epochs (or in iterations when MAX_ITER > 0).
    _C.SOLVER.CHECKPOINT_PERIOD = 1
    _C.SOLVER.MAX_TO_KEEP = 0  # keep only the last N periodic checkpoints; 0 = all
    _C.TEST = CN()
    _C.TEST.EVAL_PERIOD = 1
    _C.TEST.BATCH_SIZE = 0  # per process; 0 = the training batch per process
    # Evaluation protocols (He et al. 2016, Sec. 3.4; .test_protocols), each reported under its
    # own names: "single" (resize RESIZE_SIZE, center crop SIZE: val/top1 ...), "10crop" (the
    # 4 corner + center SIZE crops of that resize and their flips, softmax averaged:
    # val_10crop/top1 ...), "multiscale" (fully convolutional at each MULTISCALE_SIZES shorter
    # side, scores averaged over the score map and the scales: val_multiscale/top1 ...).
    _C.TEST.PROTOCOLS = ("single",)
    # Shorter sides of "multiscale"; () = the paper's 224, 256, 384, 480, 640 x SIZE / 224.
    _C.TEST.MULTISCALE_SIZES = ()
    # "multiscale" also averages the horizontally flipped images (not in the paper).
    _C.TEST.MULTISCALE_FLIP = False
    # Console/metrics.json logging period in iterations.
    _C.LOG_PERIOD = 20
    # tqdm progress bars: "auto" (when the console is a terminal), "on" or "off".
    _C.PROGRESS = "auto"

    _C.OUTPUT_DIR = "./output_cls"
    _C.SEED = -1  # negative: a different seed every run (saved with the checkpoints)
    _C.CUDNN_BENCHMARK = True
    _C.FLOAT32_PRECISION = ""
    return _C


def get_cls_cfg(recipe: Optional[str] = "imagenet") -> CN:
    """A fresh classification config with the defaults of ``recipe`` ("imagenet" or "cifar10")."""
    cfg = _defaults()
    recipe = recipe or "imagenet"
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPES}")
    if recipe == "cifar10":
        cfg.MODEL.NAME = "resnet20_cifar"
        cfg.MODEL.PIXEL_MEAN = list(CIFAR10_PIXEL_MEAN_BGR)
        cfg.MODEL.PIXEL_STD = list(CIFAR10_PIXEL_STD_BGR)
        cfg.INPUT.SIZE = 32
        cfg.INPUT.PAD_CROP = True
        cfg.INPUT.PADDING = 4
        cfg.DATA.DATASET = "cifar10"
        cfg.SOLVER.BATCH_SIZE = 128
        cfg.SOLVER.BASE_LR = 0.1
        cfg.SOLVER.MAX_ITER = 64000
        cfg.SOLVER.STEPS = (32000, 48000)
        cfg.SOLVER.CHECKPOINT_PERIOD = 4000
        cfg.TEST.EVAL_PERIOD = 4000
    return cfg

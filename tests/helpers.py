"""Helpers shared by the test modules: ``from helpers import tiny_cfg`` (pytest puts tests/ on
sys.path). Helpers that the benchmarks need too live in :mod:`resnet_backbones.utils.testing`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from resnet_backbones import get_cfg
from resnet_backbones.modeling import build_model
from resnet_backbones.utils.testing import calibrate_random_detector_, detector_inputs, random_scene

ROOT = Path(__file__).resolve().parents[1]
# ResNet-50 layout at 1/8 width, shapes classes, CPU, small images (MIN_SIZE_TEST 160, MAX 256)
TINY_C4 = ROOT / "configs" / "shapes" / "faster_rcnn_tiny_C4.yaml"
BASE_C4 = ROOT / "configs" / "Base-RCNN-C4.yaml"


# ------------------------------------------------------------------------------------- configs
def tiny_cfg(
    *presets: Union[Mapping[str, Any], Sequence[Any]],
    config_file: Union[str, Path, None] = TINY_C4,
    **overrides: Any,
):
    """``config_file`` (None: the defaults) with each preset, then ``overrides``, merged.

    A preset is a dict (``{"MODEL.WEIGHTS": path}``) or a ``[KEY, VALUE, ...]`` list, as for
    ``merge_from_list``; keyword arguments use ``__`` for the dots
    (``MODEL__RPN__POST_NMS_TOPK_TEST=16``). Values are checked against the defaults' types.
    """
    cfg = get_cfg()
    if config_file is not None:
        cfg.merge_from_file(str(config_file))
    for items in (*presets, overrides):
        pairs = items.items() if isinstance(items, Mapping) else zip(items[::2], items[1::2])
        for key, value in pairs:
            cfg.merge_from_list([key.replace("__", "."), value])
    return cfg


# detectron2's Base-RCNN-C4 at 1/8 width (stem 16, res2 32 channels), 5 classes, 300 test proposals.
NARROW = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    32,
    "MODEL.RESNETS.WIDTH_PER_GROUP",
    8,
    "MODEL.ROI_HEADS.NUM_CLASSES",
    5,
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    300,
]


def narrow_c4_cfg(extra: Sequence[Any] = ()):
    """``configs/Base-RCNN-C4.yaml`` with :data:`NARROW` and ``extra`` (KEY, VALUE, ...) merged."""
    cfg = get_cfg()
    cfg.merge_from_file(str(BASE_C4))
    cfg.merge_from_list([str(v) for v in [*NARROW, *extra]])
    return cfg


# ------------------------------------------------------------------------------ models and inputs
def scene_inputs(*specs: Tuple[int, int, int], with_gt: bool = False) -> List[Dict[str, Any]]:
    """Detector inputs of one synthetic scene per ``(seed, height, width)`` in ``specs``."""
    return detector_inputs([random_scene(*spec) for spec in specs], with_gt=with_gt)


def calibrated_narrow_c4(
    batch: List[Dict[str, Any]], residual_gain: Tuple[float, float] = (0.5, 1.5)
) -> nn.Module:
    """:func:`narrow_c4_cfg`'s detector built after ``torch.manual_seed(0)``, its FrozenBN
    calibrated on ``batch`` (:func:`calibrate_random_detector_`, seed 0); in eval mode."""
    torch.manual_seed(0)
    model = build_model(narrow_c4_cfg())
    return calibrate_random_detector_(model, batch, residual_gain, seed=0)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine values in every BatchNorm2d / FrozenBatchNorm2d (ours,
    detectron2's or torchvision's: fresh ones are identities), drawn from a generator seeded with
    ``seed``; the mode (train/eval) is left as it is. Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            is_norm = isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d"
            if is_norm and m.running_mean is not None:
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.4)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


# ------------------------------------------------------------------------------------- datasets
VocObject = Tuple[str, Tuple[int, int, int, int], int]  # class, 1-based inclusive box, difficult


def write_voc(
    root: Union[str, Path],
    images: Mapping[str, Iterable[VocObject]],
    split: str = "test",
    size: Tuple[int, int] = (500, 400),
) -> Union[str, Path]:
    """A minimal VOC folder: ``Annotations/<id>.xml`` for each image (``size``: width, height; every
    object with the pose/truncated/difficult tags detectron2's evaluator reads), an empty
    ``JPEGImages/``, and ``ImageSets/Main/<split>.txt`` listing the ids in order. Returns
    ``root``."""
    for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    width, height = size
    for name, objs in images.items():
        parts = [
            f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>"
        ]
        for cls, (x0, y0, x1, y1), diff in objs:
            parts.append(
                f"<object><name>{cls}</name><pose>Unspecified</pose><truncated>0</truncated>"
                f"<difficult>{diff}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            )
        with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
            f.write("".join(parts) + "</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("".join(f"{name}\n" for name in images))
    return root


# -------------------------------------------------------------------------------------- logging
# the loggers that the trainer and tools/train_net.py configure (as detectron2's do)
TRAINER_LOGGERS = ("resnet_backbones", "fvcore", "__main__", "train_net")


def logging_state(names: Iterable[str] = TRAINER_LOGGERS) -> Dict[str, Tuple[int, bool, list]]:
    """Level, propagate flag and handlers of each named logger (for
    :func:`restore_logging_state`)."""
    return {
        n: (
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
            list(logging.getLogger(n).handlers),
        )
        for n in names
    }


def restore_logging_state(saved: Dict[str, Tuple[int, bool, list]]) -> None:
    """Put the loggers back as :func:`logging_state` saw them; close the handlers added since."""
    for name, (level, propagate, handlers) in saved.items():
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if h not in handlers:
                lg.removeHandler(h)
                h.close()
        lg.setLevel(level)
        lg.propagate = propagate


def flat_config(node, prefix=""):
    """A (nested) config as ``{"MODEL.RESNETS.DEPTH": 50, ...}``, lists as tuples: configs of
    different libraries compare key by key."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flat_config(v, prefix + k + "."))
        else:
            out[prefix + k] = tuple(v) if isinstance(v, list) else v
    return out


def evaluate_pairs(name, pairs, batch_size, **kwargs):
    """``COCOEvaluator(name, **kwargs)`` fed ``(input, output)`` pairs ``batch_size`` at a time:
    ``(evaluator, results)``."""
    from resnet_backbones.evaluation import COCOEvaluator

    ev = COCOEvaluator(name, distributed=False, **kwargs)
    ev.reset()
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        ev.process([p[0] for p in batch], [p[1] for p in batch])
    return ev, ev.evaluate()


def both_configs(config_file, overrides=()):
    """``(detectron2's config, ours)``, each read from ``config_file`` with ``overrides``
    (``[KEY, VALUE, ...]``, values as strings) merged: the two libraries' views of one setup.
    Needs detectron2 (the parity tests)."""
    from detectron2.config import get_cfg as d2_get_cfg

    d2_cfg, cfg = d2_get_cfg(), get_cfg()
    for c in (d2_cfg, cfg):
        c.merge_from_file(str(config_file))
        c.merge_from_list([v if isinstance(v, str) else str(v) for v in overrides])
    return d2_cfg, cfg

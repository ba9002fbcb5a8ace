"""Our ResNets inside detectron2 (the ``add_deeplab_config`` convention).

Importing this module (it needs detectron2) registers

* ``build_rb_resnet_backbone`` in detectron2's ``BACKBONE_REGISTRY``: our :class:`ResNet`, built
  from ``cfg.MODEL.RESNETS`` exactly as our own ``build_resnet_backbone`` does, adapted to be a
  ``detectron2.modeling.Backbone`` (:class:`D2ResNet`) with the same module and state-dict names;
* ``RBRes5ROIHeads`` in detectron2's ``ROI_HEADS_REGISTRY``: detectron2's ``Res5ROIHeads`` whose
  res5 head is the one our own ``Res5ROIHeads`` builds (``build_res5_head_from_config``), so our
  block options (``SHORTCUT``, ``PREACT``, ``ZERO_INIT_RESIDUAL``) reach the C4 head too.
  detectron2's own ``Res5ROIHeads`` builds res5 with detectron2's blocks, which is identical for
  the default (post-activation, option B) network but ignores our keys.

Usage::

    from detectron2.config import get_cfg
    from resnet_backbones.integrations.detectron2 import add_rb_config

    cfg = get_cfg()
    add_rb_config(cfg)  # MODEL.RESNETS.{SHORTCUT, PREACT, CHANNELS_LAST, ZERO_INIT_RESIDUAL}
    cfg.merge_from_file("configs/detectron2/faster_rcnn_rb_R50_C4_shapes.yaml")

Checkpoints: our detector (``resnet_backbones.modeling.GeneralizedRCNN``) and detectron2's
``GeneralizedRCNN`` with a C4 ResNet have the same state-dict keys and shapes, whether detectron2
uses its own ``build_resnet_backbone``/``Res5ROIHeads`` or ours, so state dicts and checkpoint
files move between them unchanged.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without detectron2
    raise ImportError(
        "resnet_backbones.integrations.detectron2 needs detectron2 "
        "(https://detectron2.readthedocs.io/en/latest/tutorials/install.html)"
    ) from e

from detectron2.config import CfgNode as D2CfgNode
from detectron2.layers import ShapeSpec as D2ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY as D2_BACKBONE_REGISTRY
from detectron2.modeling import ROI_HEADS_REGISTRY as D2_ROI_HEADS_REGISTRY
from detectron2.modeling import Backbone as D2Backbone
from detectron2.modeling.roi_heads import Res5ROIHeads as D2Res5ROIHeads

from ..config import get_cfg as get_rb_cfg
from ..modeling.backbone.backbone import Backbone
from ..modeling.backbone.resnet import (
    ResNet,
    build_res5_head_from_config,
    build_resnet,
    resnet_args_from_config,
)

__all__ = [
    "RB_RESNETS_KEYS",
    "D2ResNet",
    "RBRes5ROIHeads",
    "add_rb_config",
    "as_detectron2_backbone",
    "build_rb_resnet_backbone",
    "build_rb_res5_head",
    "register_shapes",
    "to_detectron2_config",
]

logger = logging.getLogger(__name__)

#: Our keys under ``MODEL.RESNETS`` (see ``resnet_backbones/config/defaults.py``).
RB_RESNETS_KEYS: Tuple[str, ...] = (
    "SHORTCUT",
    "PREACT",
    "CHANNELS_LAST",
    "ZERO_INIT_RESIDUAL",
    "RES5_HEAD_BLOCK",
)


# ---------------------------------------------------------------------------------------- config
def add_rb_config(cfg: D2CfgNode) -> D2CfgNode:
    """Add our ``MODEL.RESNETS`` keys, with our defaults, to a detectron2 config (in place).

    Keys that already exist are left alone, so calling it twice is harmless. Returns ``cfg``.
    """
    defaults = get_rb_cfg().MODEL.RESNETS
    for key in RB_RESNETS_KEYS:
        if key not in cfg.MODEL.RESNETS:
            cfg.MODEL.RESNETS[key] = copy.deepcopy(defaults[key])
    return cfg


def _check_rb_config(cfg: Any, what: str) -> None:
    missing = [k for k in RB_RESNETS_KEYS if k not in cfg.MODEL.RESNETS]
    if missing:
        raise KeyError(
            f"{what} reads MODEL.RESNETS.{{{', '.join(missing)}}}, which this config lacks; call "
            "resnet_backbones.integrations.detectron2.add_rb_config(cfg) "
            "before merging the config file"
        )


def to_detectron2_config(cfg: Any, *, use_rb_modules: bool = False) -> D2CfgNode:
    """A detectron2 config holding every key of our config ``cfg`` that detectron2 also has.

    Our keys under ``MODEL.RESNETS`` are added (:func:`add_rb_config`). Keys of ours that detectron2
    does not have are skipped (logged at INFO). With ``use_rb_modules``, a ``build_resnet_backbone``
    backbone becomes ``build_rb_resnet_backbone`` and ``Res5ROIHeads`` becomes ``RBRes5ROIHeads``.
    """
    from detectron2.config import get_cfg as get_d2_cfg

    d2 = add_rb_config(get_d2_cfg())
    skipped: List[str] = []

    def copy_into(src: Any, dst: D2CfgNode, prefix: str) -> None:
        for key, value in src.items():
            if key not in dst:
                skipped.append(prefix + key)
            elif isinstance(value, dict) and isinstance(dst[key], dict):
                copy_into(value, dst[key], prefix + key + ".")
            else:
                dst[key] = copy.deepcopy(value)

    copy_into(cfg, d2, "")
    if skipped:
        logger.info("keys detectron2 does not have, not copied: %s", ", ".join(skipped))
    if use_rb_modules:
        if d2.MODEL.BACKBONE.NAME == "build_resnet_backbone":
            d2.MODEL.BACKBONE.NAME = "build_rb_resnet_backbone"
        if d2.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
            d2.MODEL.ROI_HEADS.NAME = "RBRes5ROIHeads"
    return d2


# -------------------------------------------------------------------------------------- backbone
def _d2_output_shape(self: Backbone) -> Dict[str, D2ShapeSpec]:
    return {
        name: D2ShapeSpec(
            channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
        )
        for name in self._out_features
    }


class D2ResNet(ResNet, D2Backbone):
    """Our :class:`ResNet` that is also a ``detectron2.modeling.Backbone``.

    Nothing but the class changes: same modules, same forward, same state-dict names;
    ``output_shape()`` returns detectron2's ``ShapeSpec``. Made by :func:`as_detectron2_backbone`.
    """

    output_shape = _d2_output_shape


_ADAPTED: Dict[type, type] = {ResNet: D2ResNet}


def as_detectron2_backbone(model: Backbone) -> D2Backbone:
    """Make our ``Backbone`` ``model`` pass detectron2's ``isinstance(backbone, Backbone)`` check.

    The object is kept (its class becomes a subclass of both its class and detectron2's
    ``Backbone``), so parameters, hooks and state-dict names are untouched. Returns ``model``.
    """
    if isinstance(model, D2Backbone):
        return model
    if not isinstance(model, Backbone):
        raise TypeError(f"expected a resnet_backbones Backbone, got {type(model).__name__}")
    cls = type(model)
    if cls not in _ADAPTED:
        _ADAPTED[cls] = type(
            f"D2{cls.__name__}",
            (cls, D2Backbone),
            {"output_shape": _d2_output_shape, "__module__": __name__},
        )
    model.__class__ = _ADAPTED[cls]
    return model


@D2_BACKBONE_REGISTRY.register()
def build_rb_resnet_backbone(cfg: D2CfgNode, input_shape: D2ShapeSpec) -> D2ResNet:
    """Our ResNet from ``cfg.MODEL.RESNETS`` / ``MODEL.BACKBONE`` (same keys and meaning as
    ours)."""
    _check_rb_config(cfg, "build_rb_resnet_backbone")
    return as_detectron2_backbone(build_resnet(**resnet_args_from_config(cfg, input_shape)))


# ------------------------------------------------------------------------------------ res5 head
def build_rb_res5_head(cfg: Any) -> Tuple[nn.Sequential, int]:
    """The C4 res5 head from ``cfg.MODEL.RESNETS``: ``(res5, out_channels)``.

    The one builder our own ``Res5ROIHeads`` uses too (``build_res5_head_from_config``): the
    backbone's res5 stage built alone. Like detectron2's ``Res5ROIHeads._build_res5_block``
    (three bottleneck blocks, the first with stride 2, widths from ``RES2_OUT_CHANNELS`` /
    ``NUM_GROUPS`` / ``WIDTH_PER_GROUP``), plus our keys: ``SHORTCUT`` (paper option A/B/C),
    ``PREACT`` (pre-activation blocks followed by the final norm and ReLU, named
    ``res5.post_norm``, where an ImageNet ``post_norm.*`` loads), ``ZERO_INIT_RESIDUAL`` and
    ``RES5_HEAD_BLOCK`` ("basic": ResNet-18/34's own basic-block res5).
    """
    return build_res5_head_from_config(cfg)


@D2_ROI_HEADS_REGISTRY.register()
class RBRes5ROIHeads(D2Res5ROIHeads):
    """detectron2's ``Res5ROIHeads`` with our res5 head (:func:`build_rb_res5_head`).

    Select it with ``MODEL.ROI_HEADS.NAME: RBRes5ROIHeads`` (after :func:`add_rb_config`).
    """

    @classmethod
    def _build_res5_block(cls, cfg: D2CfgNode) -> Tuple[nn.Sequential, int]:
        _check_rb_config(cfg, "RBRes5ROIHeads")
        return build_res5_head_from_config(cfg)


# -------------------------------------------------------------------------------------- datasets
def register_shapes(
    root: Optional[str] = None, splits: Sequence[str] = ("train", "val"), prefix: str = "shapes_"
) -> List[str]:
    """Register the generated shapes dataset in detectron2's catalogs (``register_coco_instances``).

    ``root`` is the datasets root (default ``$RB_DATASETS`` or ``./datasets``); the data is read
    from ``root/shapes`` as written by ``generate_shapes_dataset(root + "/shapes")`` (or
    ``python -m resnet_backbones.data.shapes``). Names are ``prefix + split``
    (``shapes_train``, ``shapes_val``); names already registered are skipped. Returns the names.
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from ..data.shapes import SHAPES_CLASSES

    if root is None:
        root = os.path.expanduser(os.getenv("RB_DATASETS", "datasets"))
    base = os.path.join(root, "shapes")
    names = []
    for split in splits:
        name = prefix + split
        names.append(name)
        if name in DatasetCatalog.list():
            continue
        metadata = {
            "thing_classes": list(SHAPES_CLASSES),
            "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPES_CLASSES))},
        }
        register_coco_instances(
            name,
            metadata,
            os.path.join(base, "annotations", f"instances_{split}.json"),
            os.path.join(base, split),
        )
    return names

"""Our ResNets inside torchvision's own detectors (``torchvision.models.detection``).

* :func:`fasterrcnn_resnet_c4`: a ``torchvision.models.detection.FasterRCNN`` in the C4 layout of
  the Faster R-CNN paper and detectron2: the backbone is the res2..res4 trunk (stride 16), RoIAlign
  (torchvision's ``MultiScaleRoIAlign`` on the single ``"res4"`` map, 14x14) feeds the res5 stage
  and an average pool as the box head, and ``FastRCNNPredictor`` predicts classes and boxes. The
  RPN has one feature map with detectron2's anchors (sizes 32..512, ratios 0.5/1/2: 15 per cell).
* :func:`maskrcnn_resnet_c4`: the same in torchvision's ``MaskRCNN``, with detectron2's C4 mask
  branch: 14x14 RoIAlign on res4, the box head's res5 (the same module, shared as in detectron2's
  ``Res5ROIHeads``) to 7x7, and ``MaskRCNNPredictor``'s 2x deconvolution to 14x14 mask logits.
* :func:`resnet_c4_trunk`, :func:`resnet_res5_box_head`, :func:`resnet_c4_parts`: the pieces, for
  users who assemble a detector themselves.
* :func:`resnet_fpn_backbone`: our ResNet under torchvision's ``FeaturePyramidNetwork``, a drop-in
  for ``torchvision.models.detection.backbone_utils.resnet_fpn_backbone`` (same output names
  ``"0" .. "3"``, ``"pool"``, same ``trainable_layers`` / ``returned_layers`` semantics).

``weights`` is a path to any checkpoint our loaders read (ours, torchvision/timm ``.pth``, MSRA
``.pkl``, detectron2 ``.pkl``/``.pth`` of a backbone or of a whole C4 detector) or an in-memory
state dict in any of those namings; a classifier head in it is dropped. When ``stride_in_1x1`` is
not given, it follows the weights (``False`` for torchvision/timm weights, else detectron2's
``True``). With weights, network defaults are detectron2's C4 defaults (stem and res2 frozen);
from scratch nothing is frozen (``freeze_at=0``, torchvision's ``trainable_backbone_layers=5``); any
:func:`resnet_backbones.create_model` argument (``norm``, ``freeze_at``, ``shortcut``, ``preact``,
``res2_out_channels``, ...) can be passed.

The norm layer follows torchvision's builders (``norm_layer = FrozenBatchNorm2d if is_trained else
BatchNorm2d``): FrozenBN when ``weights`` are given, trainable ``nn.BatchNorm2d`` (``"BN"``) when
built from scratch; a ``norm`` (or ``freeze_at``) passed explicitly wins. (A FrozenBN left at its
identity init has nothing to keep the activations of a deep random net in range: the loss of a
from-scratch R50-C4 goes to NaN within a few SGD steps.)

Input normalization is torchvision's (``image_mean``/``image_std`` of ``FasterRCNN``, RGB in
[0, 1]); MSRA and detectron2 weights expect BGR 0-255 images with their own pixel mean: pass
``image_mean=[0.406, 0.456, 0.485], image_std=[1 / 255] * 3`` and feed BGR images for those.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import INPUT_CONVENTIONS, detect_format, load_checkpoint, read_checkpoint
from ..checkpoint.loading import LoadReport
from ..modeling.backbone.resnet import ResNet, create_backbone

if TYPE_CHECKING:  # pragma: no cover
    from torchvision.models.detection import FasterRCNN, MaskRCNN

__all__ = [
    "C4_ANCHOR_SIZES",
    "C4_ASPECT_RATIOS",
    "C4_MASK_DIM",
    "default_norm",
    "ResNetRes5BoxHead",
    "ResNetRes5MaskHead",
    "ResNetWithFPN",
    "fasterrcnn_resnet_c4",
    "load_backbone_weights",
    "maskrcnn_resnet_c4",
    "resnet_c4_parts",
    "resnet_c4_trunk",
    "resnet_fpn_backbone",
    "resnet_res5_box_head",
]

logger = logging.getLogger(__name__)

#: detectron2's C4 anchors (``MODEL.ANCHOR_GENERATOR``): five sizes on the single res4 map.
C4_ANCHOR_SIZES: Tuple[int, ...] = (32, 64, 128, 256, 512)
C4_ASPECT_RATIOS: Tuple[float, ...] = (0.5, 1.0, 2.0)

Weights = Union[str, os.PathLike, Mapping[str, torch.Tensor], None]


# --------------------------------------------------------------------------------------- weights
def _read_weights(weights: Weights) -> Tuple[Dict[str, torch.Tensor], str]:
    """The tensors of ``weights`` (a path or a state dict) and their detected naming scheme."""
    if isinstance(weights, Mapping):
        state_dict, author = dict(weights), None
    else:
        loaded = read_checkpoint(weights)
        state_dict, author = loaded.state_dict, loaded.author
    return state_dict, detect_format(state_dict, author=author)


def load_backbone_weights(model: nn.Module, weights: Weights, *, strict: bool = True) -> LoadReport:
    """Load ``weights`` (path or state dict, any supported naming) into a bare ResNet ``model``.

    The classifier of an ImageNet checkpoint is dropped; a detectron2 detector checkpoint gives
    up its ResNet (``backbone.*`` and ``roi_heads.res5.*``). Raises ``StateDictLoadError`` naming
    every missing/unexpected tensor when ``strict``; returns the report (also logged at INFO).
    """
    state_dict, source = _read_weights(weights)
    report = load_checkpoint(model, state_dict, source=source, strict=strict, drop_classifier=True)
    logger.info("backbone weights: %s", report)
    return report


def default_norm(weights: Weights) -> str:
    """torchvision's convention for the backbone's norm layer: ``"FrozenBN"`` for pretrained
    weights (their statistics are kept), ``"BN"`` (trainable ``nn.BatchNorm2d``) from scratch."""
    return "FrozenBN" if weights is not None else "BN"


def _full_resnet(
    name: str, weights: Weights, backbone_kwargs: Dict[str, Any], out_features: Sequence[str]
) -> ResNet:
    """``create_backbone(name, out_features=...)`` with ``weights`` loaded (stride-in-1x1 from
    them)."""
    kwargs = dict(backbone_kwargs)
    kwargs.setdefault("norm", default_norm(weights))
    # torchvision: trainable_backbone_layers = 5 (all) when not pretrained; detectron2's 2 else.
    kwargs.setdefault("freeze_at", 2 if weights is not None else 0)
    state_dict: Optional[Dict[str, torch.Tensor]] = None
    if weights is not None:
        state_dict, source = _read_weights(weights)
        convention = INPUT_CONVENTIONS.get(source)
        if convention is not None and "stride_in_1x1" not in kwargs:
            kwargs["stride_in_1x1"] = convention["stride_in_1x1"]
    if "out_features" in kwargs:
        raise TypeError(f"out_features is fixed here ({list(out_features)}); do not pass it")
    try:
        model = create_backbone(name, out_features=tuple(out_features), **kwargs)
    except ValueError as e:
        if "unknown out_feature" in str(e):
            raise ValueError(
                f"{name!r} has no stage {out_features[-1]!r} ({e}); "
                "the CIFAR ResNets stop at res4, "
                f"use an ImageNet model (resnet18 ... resnet152, preact_resnet*)"
            ) from None
        raise
    if state_dict is not None:
        load_backbone_weights(model, state_dict)
    return model


# ---------------------------------------------------------------------------------------- C4 parts
class ResNetRes5BoxHead(nn.Module):
    """The C4 box head: res5 (stride 2 on the 14x14 RoI features), post-norm if pre-activation,
    global average pooling; ``(R, C4, 14, 14) -> (R, out_channels)`` (2048 for ResNet-50).

    Used as ``box_head`` of torchvision's ``RoIHeads`` in place of ``TwoMLPHead``.
    """

    def __init__(
        self,
        res5: Sequence[nn.Module],
        post_norm: Optional[nn.Module] = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.res5 = res5 if isinstance(res5, nn.Sequential) else nn.Sequential(*res5)
        self.post_norm = post_norm
        self.channels_last = channels_last
        self.in_channels: int = self.res5[0].in_channels
        self.out_channels: int = self.res5[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _res5_features(self, x).mean(dim=(2, 3))


def _res5_features(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """res5 (and the pre-activation network's final norm + ReLU) of a box or mask head."""
    if head.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = head.res5(x)
    if head.post_norm is not None:
        x = F.relu(head.post_norm(x))
    return x


class ResNetRes5MaskHead(nn.Module):
    """The C4 mask head's feature extractor: the *box head's* res5 (shared modules, as in
    detectron2's ``Res5ROIHeads``, where the mask branch runs on res5's output), without pooling;
    ``(R, C4, 14, 14) -> (R, out_channels, 7, 7)``.

    Used as ``mask_head`` of torchvision's ``RoIHeads``, before ``MaskRCNNPredictor``. The res5
    parameters appear in the state dict under both heads; they are the same tensors.
    """

    def __init__(self, box_head: ResNetRes5BoxHead) -> None:
        super().__init__()
        self.res5 = box_head.res5
        self.post_norm = box_head.post_norm
        self.channels_last = box_head.channels_last
        self.in_channels: int = box_head.in_channels
        self.out_channels: int = box_head.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _res5_features(self, x).contiguous()


def resnet_c4_parts(
    name: str = "resnet50", weights: Weights = None, **backbone_kwargs: Any
) -> Tuple[ResNet, ResNetRes5BoxHead]:
    """``(trunk, res5_head)`` of one network: weights and options are shared, as in a C4 detector.

    The trunk is our :class:`ResNet` feature extractor (stem, res2..res4) returning
    ``{"res4": tensor}`` with an ``out_channels`` attribute (1024 for ResNet-50); the head is
    :class:`ResNetRes5BoxHead`. ``freeze_at`` counts over the whole network (5 freezes res5 too).
    """
    full = _full_resnet(name, weights, backbone_kwargs, ("res5",))
    stages = [list(getattr(full, stage)) for stage in ("res2", "res3", "res4")]
    trunk = ResNet(full.stem, stages, out_features=["res4"], channels_last=full.channels_last)
    trunk.out_channels = trunk.output_shape()["res4"].channels
    head = ResNetRes5BoxHead(full.res5, post_norm=full.post_norm, channels_last=full.channels_last)
    return trunk, head


def resnet_c4_trunk(
    name: str = "resnet50", weights: Weights = None, **backbone_kwargs: Any
) -> ResNet:
    """The res2..res4 trunk of ``name`` (output ``{"res4": ...}``, stride 16, ``.out_channels``)."""
    return resnet_c4_parts(name, weights, **backbone_kwargs)[0]


def resnet_res5_box_head(
    name: str = "resnet50", weights: Weights = None, **backbone_kwargs: Any
) -> ResNetRes5BoxHead:
    """The res5 stage of ``name`` plus average pooling, as a torchvision ``box_head``."""
    return resnet_c4_parts(name, weights, **backbone_kwargs)[1]


def _detector_parameter_names(detector: Any = None) -> set:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    names = set(inspect.signature((detector or FasterRCNN).__init__).parameters)
    names |= set(inspect.signature(GeneralizedRCNNTransform.__init__).parameters)
    return names - {"self", "kwargs", "args", "backbone", "num_classes"}


def fasterrcnn_resnet_c4(
    name: str = "resnet50", num_classes: int = 91, weights: Weights = None, **kwargs: Any
) -> "FasterRCNN":
    """torchvision's ``FasterRCNN`` with our ResNet in the C4 layout.

    Args:
        name: a registered ImageNet model (``resnet18`` ... ``resnet152``, ``preact_resnet*``).
        num_classes: including the background (torchvision's convention: labels 1..num_classes-1).
        weights: backbone weights (path or state dict, any supported format), res5 included.
        kwargs: ``FasterRCNN`` / ``GeneralizedRCNNTransform`` arguments (``min_size``,
            ``box_batch_size_per_image``, ``rpn_anchor_generator``, ``box_roi_pool``, ...) go to the
            detector; everything else (``norm``, ``freeze_at``, ``preact``, ...) to the ResNet.
            ``norm`` defaults to FrozenBN with ``weights``, trainable BN without (torchvision's
            convention, see :func:`default_norm`).

    The RoI pooler is ``MultiScaleRoIAlign(["res4"], 14, sampling_ratio=0)`` and the anchors are
    :data:`C4_ANCHOR_SIZES` x :data:`C4_ASPECT_RATIOS` on the res4 map, unless given in ``kwargs``.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    detector_names = _detector_parameter_names()
    detector_kwargs = {k: v for k, v in kwargs.items() if k in detector_names}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k not in detector_names}
    if "box_head" in detector_kwargs or "box_predictor" in detector_kwargs:
        raise TypeError(
            "box_head and box_predictor are built here (res5 head, FastRCNNPredictor); "
            "use resnet_c4_parts() to assemble a detector with other heads"
        )
    trunk, head = resnet_c4_parts(name, weights, **backbone_kwargs)
    detector_kwargs.setdefault(
        "rpn_anchor_generator",
        AnchorGenerator(sizes=(C4_ANCHOR_SIZES,), aspect_ratios=(C4_ASPECT_RATIOS,)),
    )
    detector_kwargs.setdefault(
        "box_roi_pool", MultiScaleRoIAlign(featmap_names=["res4"], output_size=14, sampling_ratio=0)
    )
    return FasterRCNN(
        trunk,
        num_classes=None,
        box_head=head,
        box_predictor=FastRCNNPredictor(head.out_channels, num_classes),
        **detector_kwargs,
    )


#: the C4 mask branch's channels after the deconvolution (detectron2's ``ROI_MASK_HEAD.CONV_DIM``).
C4_MASK_DIM = 256


def maskrcnn_resnet_c4(
    name: str = "resnet50", num_classes: int = 91, weights: Weights = None, **kwargs: Any
) -> "MaskRCNN":
    """torchvision's ``MaskRCNN`` with our ResNet in the C4 layout (detectron2's Mask R-CNN C4).

    Everything of :func:`fasterrcnn_resnet_c4` (trunk, anchors, box pooler, res5 box head,
    ``FastRCNNPredictor``, the norm convention, the routing of ``kwargs``; ``MaskRCNN``'s own
    parameters such as ``mask_roi_pool`` go to the detector too), plus the mask branch of
    detectron2's ``Res5ROIHeads``:

    * ``mask_roi_pool``: ``MultiScaleRoIAlign(["res4"], 14, sampling_ratio=0)`` (as the box pooler);
    * ``mask_head``: :class:`ResNetRes5MaskHead`, the box head's res5 itself (shared parameters),
      14x14 -> 7x7 (res5 has stride 2), no pooling;
    * ``mask_predictor``: torchvision's ``MaskRCNNPredictor(res5 channels, 256, num_classes)``:
      a 2x deconvolution, ReLU and a 1x1 conv per class: 14x14 mask logits, detectron2's C4 mask
      resolution (its FPN heads predict 28x28). torchvision pastes them into the image
      (``masks``: ``(N, 1, H, W)`` probabilities in [0, 1]).
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    detector_names = _detector_parameter_names(MaskRCNN)
    detector_kwargs = {k: v for k, v in kwargs.items() if k in detector_names}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k not in detector_names}
    built = {"box_head", "box_predictor", "mask_head", "mask_predictor"} & set(detector_kwargs)
    if built:
        raise TypeError(
            f"{sorted(built)}: built here (res5 heads, FastRCNNPredictor, MaskRCNNPredictor); "
            "use resnet_c4_parts() to assemble a detector with other heads"
        )
    trunk, head = resnet_c4_parts(name, weights, **backbone_kwargs)
    detector_kwargs.setdefault(
        "rpn_anchor_generator",
        AnchorGenerator(sizes=(C4_ANCHOR_SIZES,), aspect_ratios=(C4_ASPECT_RATIOS,)),
    )
    for pool in ("box_roi_pool", "mask_roi_pool"):
        detector_kwargs.setdefault(
            pool, MultiScaleRoIAlign(featmap_names=["res4"], output_size=14, sampling_ratio=0)
        )
    return MaskRCNN(
        trunk,
        num_classes=None,
        box_head=head,
        box_predictor=FastRCNNPredictor(head.out_channels, num_classes),
        mask_head=ResNetRes5MaskHead(head),
        mask_predictor=MaskRCNNPredictor(head.out_channels, C4_MASK_DIM, num_classes),
        **detector_kwargs,
    )


# --------------------------------------------------------------------------------------------- FPN
class ResNetWithFPN(nn.Module):
    """Our ResNet (``body``) and torchvision's ``FeaturePyramidNetwork`` (``fpn``).

    Same interface as torchvision's ``BackboneWithFPN``: ``forward`` returns an ``OrderedDict``
    with keys ``"0"``, ``"1"``, ... (one per returned stage, finest first) plus the extra blocks'
    (``"pool"`` for ``LastLevelMaxPool``), all with ``out_channels`` channels.
    """

    def __init__(
        self,
        body: ResNet,
        in_features: Sequence[str],
        out_channels: int = 256,
        extra_blocks: Optional[nn.Module] = None,
        norm_layer: Optional[Any] = None,
    ) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = body
        self.in_features: List[str] = list(in_features)
        shapes = body.output_shape()
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=[shapes[f].channels for f in self.in_features],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool() if extra_blocks is None else extra_blocks,
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[f]) for i, f in enumerate(self.in_features)))


def resnet_fpn_backbone(
    name: str = "resnet50",
    *,
    weights: Weights = None,
    trainable_layers: int = 3,
    returned_layers: Optional[Sequence[int]] = None,
    extra_blocks: Optional[nn.Module] = None,
    out_channels: int = 256,
    fpn_norm_layer: Optional[Any] = None,
    **backbone_kwargs: Any,
) -> ResNetWithFPN:
    """torchvision's ``resnet_fpn_backbone`` with our ResNet: a :class:`ResNetWithFPN`.

    Args:
        trainable_layers: torchvision's meaning: stages trainable from the top, 0..5 (5: all,
            3: res3..res5, 0: none); ``freeze_at = 5 - trainable_layers`` in our terms.
        returned_layers: torchvision's numbering, 1 (res2) .. 4 (res5); default ``[1, 2, 3, 4]``.
        extra_blocks: default ``LastLevelMaxPool()`` (adds ``"pool"``).
        fpn_norm_layer: torchvision's ``norm_layer`` of the FPN convs (default none).
        backbone_kwargs: ResNet arguments (``norm`` defaults to FrozenBN with ``weights`` and to
            trainable BN without, as torchvision's detection builders do; ``stride_in_1x1`` follows
            the weights; ``preact``, ``shortcut``, ...).
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers should be in [0, 5], got {trainable_layers}")
    if "freeze_at" in backbone_kwargs:
        raise TypeError("pass trainable_layers (torchvision's meaning), not freeze_at")
    returned_layers = [1, 2, 3, 4] if returned_layers is None else list(returned_layers)
    if not returned_layers or min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers should be in [1, 4] (1 = res2), got {returned_layers}")
    in_features = [f"res{i + 1}" for i in sorted(set(returned_layers))]
    # Stages after the last returned one are not built, so at most those built can be frozen.
    freeze_at = min(5 - trainable_layers, max(returned_layers) + 1)
    body = _full_resnet(name, weights, {**backbone_kwargs, "freeze_at": freeze_at}, in_features)
    return ResNetWithFPN(body, in_features, out_channels, extra_blocks, fpn_norm_layer)

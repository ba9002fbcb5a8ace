"""ResNet (He et al., CVPR 2016) and pre-activation ResNet (He et al., ECCV 2016).

One network class, :class:`ResNet`, covers the ImageNet models (7x7 stem, stages res2..res5), the
CIFAR models (3x3 stem, stages res2..res4) and their pre-activation forms. Module and state-dict
names are detectron2's (``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``,
``res2.0.shortcut.weight``, ``linear.weight``), so detectron2 checkpoints load by name; parameters
are registered in torchvision's order, so torchvision checkpoints load by position.

Entry points:

* ``create_model("resnet50")``: a classifier, ``model(x)`` returns logits (torchvision layout).
* ``create_backbone("resnet50")``: a detection :class:`Backbone`, ``model(x)`` returns
  ``{"res4": tensor}`` (detectron2's C4 defaults: FrozenBN, stride in 1x1, freeze_at=2).
* ``build_resnet_backbone(cfg, input_shape)``: the same from a detectron2-style config.
* ``ResNet.make_stage(BottleneckBlock, 3, ...)``: one stage (detectron2's ``make_stage``).
* ``resnet_layout(50)``: what ``build_resnet`` builds (stem class, each stage's blocks and widths).
* ``build_res5_head_from_config(cfg)``: the C4 box head's res5, the backbone's res5 stage built
  alone (``Res5ROIHeads`` and detectron2's ``RBRes5ROIHeads`` both use it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, NormSpec, ShapeSpec, convert_frozen_batchnorm, get_norm
from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .registry import create_model, register_model

__all__ = [
    "ResNetBlockBase",
    "PadShortcut",
    "BasicBlock",
    "BottleneckBlock",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "BasicStem",
    "CifarStem",
    "ResNet",
    "make_stage",
    "StageSpec",
    "ResNetLayout",
    "imagenet_uses_bottleneck",
    "resnet_layout",
    "build_resnet",
    "build_res5_head",
    "build_res5_head_from_config",
    "res5_head_args_from_config",
    "RES5_HEAD_BLOCKS",
    "build_resnet_backbone",
    "create_backbone",
    "resnet_args_from_config",
    "IMAGENET_BLOCKS_PER_STAGE",
]

SHORTCUTS = {
    "A": "identity, zero-padded channels, strided subsampling (no parameters)",
    "B": "projection only where the shape changes",
    "C": "projection in every block",
}


# --------------------------------------------------------------------------------------- blocks
class ResNetBlockBase(nn.Module):
    """A block with known ``in_channels``, ``out_channels`` and ``stride`` (detectron2's
    CNNBlockBase)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "ResNetBlockBase":
        """Stop training this block: ``requires_grad=False`` and every BatchNorm becomes
        FrozenBN."""
        for p in self.parameters():
            p.requires_grad = False
        convert_frozen_batchnorm(self)
        return self

    def _init_convs(self) -> None:
        """He (MSRA) initialization of every conv, fan-out mode, as torchvision and detectron2
        do."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride``, then append zero channels. No parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"shortcut 'A' can only add channels, not reduce {in_channels} to {out_channels}"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def _make_shortcut(
    in_channels: int, out_channels: int, stride: int, shortcut: str, norm: NormSpec
) -> Optional[nn.Module]:
    """The shortcut of one block for paper option ``shortcut``; ``None`` means identity."""
    if shortcut not in SHORTCUTS:
        options = "; ".join(f"'{k}': {v}" for k, v in SHORTCUTS.items())
        raise ValueError(f"unknown shortcut {shortcut!r}; expected one of {options}")
    reshapes = in_channels != out_channels or stride != 1
    if shortcut == "C" or (shortcut == "B" and reshapes):
        return Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            stride=stride,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
    if reshapes:
        return PadShortcut(in_channels, out_channels, stride)
    return None


def _zero_init_last_norms(blocks: Iterable[nn.Module]) -> None:
    """Zero each block's last norm gamma: every block starts as its shortcut (Goyal et al.)."""
    for block in blocks:
        weight = getattr(block.last_norm, "weight", None)
        if weight is None:
            raise ValueError(
                f"zero_init_residual needs norms with a weight (gamma); the last norm of "
                f"{type(block).__name__} is {block.last_norm!r}"
            )
        with torch.no_grad():
            weight.zero_()


def _norm_or_identity(norm: NormSpec, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    return nn.Identity() if layer is None else layer


class BasicBlock(ResNetBlockBase):
    """Two 3x3 convs (ResNet-18/34, CIFAR nets):
    ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: NormSpec = "BN",
        shortcut: str = "B",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, shortcut, norm)
        self._init_convs()

    @property
    def last_norm(self) -> Optional[nn.Module]:
        """The norm that ends the residual branch (zeroed by ``zero_init_residual``)."""
        return self.conv2.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(ResNetBlockBase):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152); detectron2's arguments.

    ``stride_in_1x1=True`` puts the stride in the first 1x1 conv (original MSRA models,
    detectron2's STRIDE_IN_1X1); ``False`` puts it in the 3x3 conv (torchvision, "ResNet v1.5").
    ``dilation`` applies to the 3x3 conv; ``num_groups`` > 1 gives ResNeXt.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: NormSpec = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        shortcut: str = "B",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, shortcut, norm)
        self._init_convs()

    @property
    def last_norm(self) -> Optional[nn.Module]:
        """The norm that ends the residual branch (zeroed by ``zero_init_residual``)."""
        return self.conv3.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class PreActBasicBlock(ResNetBlockBase):
    """Pre-activation basic block (He et al., ECCV 2016):
    ``x + conv2(relu(norm2(conv1(relu(norm1(x))))))``.

    The identity path is clean: nothing is applied to ``x`` after the addition. A projection
    shortcut has no norm (the next block's ``norm1`` normalizes the sum). With
    ``preact_shortcut=True`` the shortcut reads ``relu(norm1(x))`` instead of ``x``: the paper
    does this in the first block of each stage, where both paths split after the activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: NormSpec = "BN",
        shortcut: str = "B",
        preact_shortcut: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.preact_shortcut = preact_shortcut
        self.norm1 = _norm_or_identity(norm, in_channels)
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.norm2 = _norm_or_identity(norm, out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, shortcut, norm=None)
        self._init_convs()

    @property
    def last_norm(self) -> nn.Module:
        """The norm before the last conv (zeroed by ``zero_init_residual``:
        the branch outputs 0)."""
        return self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.norm1(x))
        skip = preact if self.preact_shortcut else x
        out = self.conv1(preact)
        out = self.conv2(F.relu(self.norm2(out)))
        return out + (skip if self.shortcut is None else self.shortcut(skip))


class PreActBottleneckBlock(ResNetBlockBase):
    """Pre-activation bottleneck (He et al., ECCV 2016): norm-ReLU before each of the three convs.

    Arguments as in :class:`BottleneckBlock`; shortcut semantics as in :class:`PreActBasicBlock`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: NormSpec = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        shortcut: str = "B",
        preact_shortcut: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.preact_shortcut = preact_shortcut
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.norm1 = _norm_or_identity(norm, in_channels)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False
        )
        self.norm2 = _norm_or_identity(norm, bottleneck_channels)
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            bias=False,
        )
        self.norm3 = _norm_or_identity(norm, bottleneck_channels)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.shortcut = _make_shortcut(in_channels, out_channels, stride, shortcut, norm=None)
        self._init_convs()

    @property
    def last_norm(self) -> nn.Module:
        """The norm before the last conv (zeroed by ``zero_init_residual``:
        the branch outputs 0)."""
        return self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = F.relu(self.norm1(x))
        skip = preact if self.preact_shortcut else x
        out = self.conv1(preact)
        out = self.conv2(F.relu(self.norm2(out)))
        out = self.conv3(F.relu(self.norm3(out)))
        return out + (skip if self.shortcut is None else self.shortcut(skip))


# ---------------------------------------------------------------------------------------- stems
class BasicStem(ResNetBlockBase):
    """ImageNet stem: 7x7/2 conv, norm, ReLU, 3x3/2 max pool (stride 4).

    With ``preact=True`` the conv has no norm and no ReLU: the first block pre-activates.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 64,
        norm: NormSpec = "BN",
        preact: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, stride=4)
        self.preact = preact
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=None if preact else get_norm(norm, out_channels),
        )
        self._init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if not self.preact:
            x = F.relu_(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class CifarStem(ResNetBlockBase):
    """CIFAR stem: one 3x3 conv (16 channels in the papers), norm, ReLU; stride 1.

    With ``preact=True`` the conv has no norm and no ReLU: the first block pre-activates.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 16,
        norm: NormSpec = "BN",
        preact: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, stride=1)
        self.preact = preact
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            padding=1,
            bias=False,
            norm=None if preact else get_norm(norm, out_channels),
        )
        self._init_convs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return x if self.preact else F.relu_(x)


# -------------------------------------------------------------------------------------- network
class ResNet(Backbone):
    """A stem, stages ``res2``, ``res3``, ... of residual blocks, and an optional classifier.

    Two modes, fixed at construction:

    * classifier (``out_features=None``): ``forward`` returns logits ``(N, num_classes)``, or the
      globally pooled features ``(N, C)`` when headless (``num_classes`` 0 or ``None``);
      ``output_shape()`` describes the last stage.
    * feature extractor (``out_features`` given, e.g. ``["res4"]``; requires no classifier):
      ``forward`` returns ``{name: feature map}``. As in detectron2, stages after the last
      requested one are not built (a C4 backbone stops at res4).

    Pre-activation networks pass ``post_norm``, the norm that is followed by a ReLU after the last
    stage (the paper's extra activation after the last addition). It exists only when the last
    stage is built, is part of that stage's output feature, and is frozen with that stage.
    """

    def __init__(
        self,
        stem: ResNetBlockBase,
        stages: Sequence[Sequence[ResNetBlockBase]],
        *,
        num_classes: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
        post_norm: Optional[nn.Module] = None,
        zero_init_residual: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 or None, got {num_classes}")
        num_classes = num_classes or None
        all_names = [f"res{i + 2}" for i in range(len(stages))]
        self._num_stages = len(stages)
        self._return_features = out_features is not None
        if out_features is not None:
            out_features = list(out_features)
            if num_classes is not None:
                raise ValueError(
                    f"out_features={out_features} builds a feature extractor, which has no "
                    f"classifier; pass num_classes=None (create_backbone does), not {num_classes}"
                )
            if not out_features:
                raise ValueError(
                    "out_features is empty; name at least one of " + str(["stem"] + all_names)
                )
            for name in out_features:
                if name not in ["stem"] + all_names:
                    raise ValueError(
                        f"unknown out_feature {name!r}; available: {['stem'] + all_names}"
                    )
            num_built = max(
                0 if name == "stem" else all_names.index(name) + 1 for name in out_features
            )
            if num_built < len(stages):
                stages, post_norm = stages[:num_built], None
        else:
            out_features = [all_names[-1]]

        self.stem = stem
        self.num_classes = num_classes
        self.channels_last = channels_last
        stride, channels = stem.stride, stem.out_channels
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": channels}
        self.stage_names: Tuple[str, ...] = tuple(all_names[: len(stages)])
        self.stages: List[nn.Sequential] = []
        for name, blocks in zip(self.stage_names, stages):
            if not blocks:
                raise ValueError(f"stage {name} has no blocks")
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stages.append(stage)
            for block in blocks:
                stride *= block.stride
            channels = blocks[-1].out_channels
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = channels
        self.post_norm = post_norm
        if not self._return_features:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = None if num_classes is None else nn.Linear(channels, num_classes)
            if self.linear is not None:
                # Goyal et al. 2017, Sec. 5.1 (detectron2's choice): N(0, 0.01) weights, zero bias.
                nn.init.normal_(self.linear.weight, std=0.01)
                nn.init.zeros_(self.linear.bias)
        self._out_features = out_features

        if zero_init_residual:
            self._zero_init_residual()
        self.freeze(freeze_at)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _zero_init_residual(self) -> None:
        """Zero the gamma of each block's last norm (:func:`_zero_init_last_norms`)."""
        for stage in self.stages:
            _zero_init_last_norms(stage)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Logits (classifier mode) or ``{name: feature}`` for ``out_features`` (feature mode)."""
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an (N, C, H, W) input, got shape {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            features["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if self.post_norm is not None and name == self.stage_names[-1]:
                x = F.relu(self.post_norm(x))
            if name in self._out_features:
                features[name] = x
        if self._return_features:
            return features
        x = torch.flatten(self.avgpool(x), 1)
        return x if self.linear is None else self.linear(x)

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the stem (``freeze_at >= 1``) and stages res2 .. res{freeze_at} (detectron2's
        semantics).

        Frozen modules get ``requires_grad=False`` and their BatchNorms become FrozenBN.
        """
        if not 0 <= freeze_at <= self._num_stages + 1:
            raise ValueError(
                f"freeze_at {freeze_at} out of range: 0 (nothing), 1 (stem), 2 (stem and res2) ... "
                f"{self._num_stages + 1} (everything)"
            )
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, stage in enumerate(self.stages, start=2):
            if freeze_at >= idx:
                for block in stage:
                    block.freeze()
        if self.post_norm is not None and freeze_at >= self._num_stages + 1:
            for p in self.post_norm.parameters():
                p.requires_grad = False
            self.post_norm = convert_frozen_batchnorm(self.post_norm)
        return self

    @staticmethod
    def make_stage(
        block_class: Type[ResNetBlockBase],
        num_blocks: int,
        *,
        in_channels: int,
        out_channels: int,
        first_stride: Optional[int] = None,
        **kwargs: Any,
    ) -> List[ResNetBlockBase]:
        """``num_blocks`` blocks of ``block_class`` forming one stage (detectron2's make_stage).

        ``in_channels`` feeds the first block, every block outputs ``out_channels``. A keyword
        ``xx_per_block`` gives one value per block for the block argument ``xx`` (e.g.
        ``stride_per_block=[2, 1, 1]``); any other keyword goes to every block.
        ``first_stride=s`` is short for ``stride_per_block=[s, 1, 1, ...]``.
        """
        if first_stride is not None:
            if "stride_per_block" in kwargs or "stride" in kwargs:
                raise ValueError(
                    "make_stage: pass first_stride, stride_per_block or stride, not several"
                )
            kwargs["stride_per_block"] = [first_stride] + [1] * (num_blocks - 1)
        shared = {key: value for key, value in kwargs.items() if not key.endswith("_per_block")}
        per_block = {
            key[: -len("_per_block")]: value for key, value in kwargs.items() if key not in shared
        }
        for key, values in per_block.items():
            if len(values) != num_blocks:
                raise ValueError(
                    f"make_stage: {key}_per_block has {len(values)} values for {num_blocks} blocks"
                )
            if key in shared:
                raise ValueError(f"make_stage: pass {key}_per_block or {key}, not both")
        blocks = []
        for i in range(num_blocks):
            block_kwargs = {**shared, **{key: values[i] for key, values in per_block.items()}}
            blocks.append(
                block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs)
            )
            in_channels = out_channels
        return blocks


make_stage = ResNet.make_stage


# -------------------------------------------------------------------------------------- builders
# He et al. (CVPR 2016) Table 1: blocks in conv2_x .. conv5_x (our res2 .. res5); basic blocks
# below 50 layers, bottlenecks from 50 on. ResNet-200 is from He et al. (ECCV 2016).
IMAGENET_BLOCKS_PER_STAGE: Dict[int, Tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def imagenet_uses_bottleneck(depth: int) -> bool:
    """Whether ImageNet ResNet-``depth`` has bottleneck blocks (CVPR 2016: from 50 layers on)."""
    return depth >= 50


def _cifar_blocks_per_stage(depth: int, bottleneck: bool) -> Tuple[int, int, int]:
    """CIFAR nets have 3 stages of n blocks: depth 6n+2 (basic, CVPR 2016 Sec. 4.2) or 9n+2
    (bottleneck)."""
    layers_per_block = 3 if bottleneck else 2
    n, rest = divmod(depth - 2, 3 * layers_per_block)
    if depth < 2 or rest or n < 1:
        kind, examples = (
            ("bottleneck", "164, 1001") if bottleneck else ("basic", "20, 32, 44, 56, 110, 1202")
        )
        raise ValueError(
            f"depth {depth} is not a CIFAR {kind} ResNet depth: need {3 * layers_per_block}n+2 "
            f"(e.g. {examples})"
        )
    return (n, n, n)


def _blocks_per_stage(
    depth: int, cifar: bool, bottleneck: Optional[bool]
) -> Tuple[bool, Tuple[int, ...], int]:
    """``(bottleneck, blocks per stage, base width)`` of a depth: the depth table, checked."""
    if cifar:
        bottleneck = bool(bottleneck)
        return bottleneck, _cifar_blocks_per_stage(depth, bottleneck), 16
    if depth not in IMAGENET_BLOCKS_PER_STAGE:
        raise ValueError(
            f"depth {depth} is not an ImageNet ResNet depth; expected one of "
            f"{sorted(IMAGENET_BLOCKS_PER_STAGE)}"
        )
    own = imagenet_uses_bottleneck(depth)
    if bottleneck is not None and bottleneck != own:
        raise ValueError(f"ResNet-{depth} uses {'bottleneck' if own else 'basic'} blocks")
    return own, IMAGENET_BLOCKS_PER_STAGE[depth], 64


@dataclass(frozen=True)
class StageSpec:
    """One stage to build: the arguments of :meth:`ResNet.make_stage`, and the stage's name."""

    name: str
    block_class: Type[ResNetBlockBase]
    num_blocks: int
    in_channels: int
    out_channels: int
    first_stride: int
    block_kwargs: Dict[str, Any] = field(default_factory=dict)

    def build(self) -> List[ResNetBlockBase]:
        """The blocks of this stage (new modules, freshly initialised)."""
        return ResNet.make_stage(
            self.block_class,
            self.num_blocks,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            first_stride=self.first_stride,
            **self.block_kwargs,
        )


@dataclass(frozen=True)
class ResNetLayout:
    """What :func:`build_resnet` builds, before building it: the stem and every stage."""

    stem_class: Type[ResNetBlockBase]
    stem_out_channels: int
    bottleneck: bool
    stages: Tuple[StageSpec, ...]


_BLOCK_CLASSES: Dict[Tuple[bool, bool], Type[ResNetBlockBase]] = {
    (False, False): BasicBlock,
    (True, False): BottleneckBlock,
    (False, True): PreActBasicBlock,
    (True, True): PreActBottleneckBlock,
}


def resnet_layout(
    depth: int,
    *,
    cifar: bool = False,
    bottleneck: Optional[bool] = None,
    preact: bool = False,
    shortcut: str = "B",
    norm: NormSpec = "BN",
    stride_in_1x1: bool = False,
    num_groups: int = 1,
    width_per_group: Optional[int] = None,
    stem_out_channels: Optional[int] = None,
    res2_out_channels: Optional[int] = None,
    res5_dilation: int = 1,
) -> ResNetLayout:
    """The stem and stages of a ResNet, from the depth table and the options (checked).

    Arguments as in :func:`build_resnet`. Nothing is built, so this costs no time and draws no
    random numbers: ``resnet_layout(50).stages[3]`` is ResNet-50's res5, ready to build alone.
    """
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
    bottleneck, blocks_per_stage, base = _blocks_per_stage(depth, cifar, bottleneck)
    if cifar and res5_dilation != 1:
        raise ValueError(f"res5_dilation={res5_dilation}: CIFAR ResNets have no res5")
    if not bottleneck and num_groups != 1:
        raise ValueError(
            f"num_groups={num_groups} needs bottleneck blocks; basic blocks have no groups"
        )
    if not bottleneck and res5_dilation != 1:
        raise ValueError(
            f"res5_dilation={res5_dilation} needs bottleneck blocks (ResNet-50 and deeper)"
        )

    block_class = _BLOCK_CLASSES[(bottleneck, preact)]
    stem_out = stem_out_channels or base
    stage_in = stem_out
    stage_out = res2_out_channels or (4 * base if bottleneck else base)
    bottleneck_channels = num_groups * (width_per_group or base)
    stages = []
    for idx, num_blocks in enumerate(blocks_per_stage):
        dilation = res5_dilation if idx == 3 else 1
        kwargs: Dict[str, Any] = {"norm": norm, "shortcut": shortcut}
        if bottleneck:
            kwargs.update(
                bottleneck_channels=bottleneck_channels,
                num_groups=num_groups,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
            )
        if preact:  # the paper's first block of a stage splits both paths after the activation
            kwargs["preact_shortcut_per_block"] = [True] + [False] * (num_blocks - 1)
        stages.append(
            StageSpec(
                name=f"res{idx + 2}",
                block_class=block_class,
                num_blocks=num_blocks,
                in_channels=stage_in,
                out_channels=stage_out,
                first_stride=1 if idx == 0 or dilation > 1 else 2,
                block_kwargs=kwargs,
            )
        )
        stage_in, stage_out, bottleneck_channels = stage_out, 2 * stage_out, 2 * bottleneck_channels
    stem_class = CifarStem if cifar else BasicStem
    return ResNetLayout(stem_class, stem_out, bottleneck, tuple(stages))


def build_resnet(
    depth: int,
    *,
    cifar: bool = False,
    bottleneck: Optional[bool] = None,
    preact: bool = False,
    num_classes: Optional[int] = 1000,
    in_channels: int = 3,
    shortcut: str = "B",
    norm: NormSpec = "BN",
    stride_in_1x1: bool = False,
    num_groups: int = 1,
    width_per_group: Optional[int] = None,
    stem_out_channels: Optional[int] = None,
    res2_out_channels: Optional[int] = None,
    res5_dilation: int = 1,
    out_features: Optional[Sequence[str]] = None,
    freeze_at: int = 0,
    zero_init_residual: bool = False,
    channels_last: bool = False,
) -> ResNet:
    """Build any ResNet of this module; every registered model and config path ends here.

    Args:
        depth: layers with weights: 18/34/50/101/152/200 (ImageNet) or 6n+2 / 9n+2 (CIFAR).
        cifar: CIFAR layout (3x3 stem, three stages of widths 16/32/64) instead of ImageNet's.
        bottleneck: bottleneck blocks; ``None`` means ImageNet's rule (depth >= 50), basic on CIFAR.
        preact: pre-activation blocks and a final norm-ReLU (He et al., ECCV 2016).
        num_classes: classifier outputs; 0 or ``None`` for a headless network.
        shortcut: paper option "A", "B" or "C" (see ``SHORTCUTS``).
        norm: "BN", "SyncBN", "FrozenBN", "GN", "" or a callable (see ``get_norm``).
        stride_in_1x1: bottlenecks stride in the first 1x1 (MSRA, detectron2) or the 3x3
            (torchvision).
        num_groups, width_per_group: res2 bottleneck width is ``num_groups * width_per_group``
            (default 64 ImageNet, 16 CIFAR); it doubles in each stage.
        stem_out_channels, res2_out_channels: defaults 64 and 64 (basic) / 256 (bottleneck), or
            16 and 16 / 64 on CIFAR; stage widths double from res2 on.
        res5_dilation: 2 replaces res5's stride by dilation (output stride 16), bottlenecks only.
        out_features, freeze_at, zero_init_residual, channels_last: see :class:`ResNet`.

    The layout (stem, blocks, widths, strides) comes from :func:`resnet_layout`; every stage is
    then built (a C4 feature extractor drops res5 afterwards, in :class:`ResNet`).
    """
    layout = resnet_layout(
        depth,
        cifar=cifar,
        bottleneck=bottleneck,
        preact=preact,
        shortcut=shortcut,
        norm=norm,
        stride_in_1x1=stride_in_1x1,
        num_groups=num_groups,
        width_per_group=width_per_group,
        stem_out_channels=stem_out_channels,
        res2_out_channels=res2_out_channels,
        res5_dilation=res5_dilation,
    )
    stem = layout.stem_class(in_channels, layout.stem_out_channels, norm=norm, preact=preact)
    stages = [spec.build() for spec in layout.stages]
    last_channels = layout.stages[-1].out_channels
    return ResNet(
        stem,
        stages,
        num_classes=num_classes,
        out_features=out_features,
        freeze_at=freeze_at,
        post_norm=_norm_or_identity(norm, last_channels) if preact else None,
        zero_init_residual=zero_init_residual,
        channels_last=channels_last,
    )


def build_res5_head(
    depth: int,
    *,
    bottleneck: Optional[bool] = None,
    preact: bool = False,
    shortcut: str = "B",
    norm: NormSpec = "BN",
    stride_in_1x1: bool = False,
    num_groups: int = 1,
    width_per_group: Optional[int] = None,
    res2_out_channels: Optional[int] = None,
    zero_init_residual: bool = False,
) -> Tuple[nn.Sequential, int]:
    """The res5 stage of :func:`build_resnet` as a C4 box head: ``(res5, out_channels)``.

    The blocks are those of ``build_resnet(depth, ...)``'s res5 (same layout, same options, stride
    2: a head never dilates, as in detectron2), named ``"0"``, ``"1"``, ... With ``preact`` the
    paper's final norm and ReLU follow as ``post_norm`` and ``post_relu`` (so an ImageNet
    ``post_norm.*`` loads into ``res5.post_norm.*``); ``zero_init_residual`` zeroes each block's
    last norm as :class:`ResNet` does. ``bottleneck=True`` on a basic-block depth (18, 34) gives
    detectron2's C4 head: ResNet-50's res5, three bottleneck blocks, at these widths.
    """
    own = _blocks_per_stage(depth, cifar=False, bottleneck=None)[0]  # checks the depth
    if bottleneck is False and own:
        raise ValueError(f"a basic-block res5 head needs ResNet-18 or -34, got depth {depth}")
    layout_depth = 50 if bottleneck and not own else depth
    spec = resnet_layout(
        layout_depth,
        preact=preact,
        shortcut=shortcut,
        norm=norm,
        stride_in_1x1=stride_in_1x1,
        num_groups=num_groups,
        width_per_group=width_per_group,
        res2_out_channels=res2_out_channels,
    ).stages[3]
    blocks = spec.build()
    if zero_init_residual:
        _zero_init_last_norms(blocks)
    modules: "OrderedDict[str, nn.Module]" = OrderedDict((str(i), b) for i, b in enumerate(blocks))
    if preact:
        modules["post_norm"] = _norm_or_identity(norm, spec.out_channels)
        modules["post_relu"] = nn.ReLU()
    return nn.Sequential(modules), spec.out_channels


def create_backbone(
    name: str,
    *,
    out_features: Sequence[str] = ("res4",),
    freeze_at: int = 2,
    norm: NormSpec = "FrozenBN",
    stride_in_1x1: bool = True,
    res5_dilation: int = 1,
    **kwargs: Any,
) -> ResNet:
    """The registered model ``name`` as a headless feature extractor returning ``{name: tensor}``.

    Defaults are detectron2's for a C4 detector (res4 features, FrozenBN, stride in the 1x1
    convs, stem and res2 frozen); ``kwargs`` go to the model builder (``shortcut``, ``preact``,
    ...).
    """
    return create_model(
        name,
        num_classes=None,
        out_features=out_features,
        freeze_at=freeze_at,
        norm=norm,
        stride_in_1x1=stride_in_1x1,
        res5_dilation=res5_dilation,
        **kwargs,
    )


def resnet_args_from_config(cfg: Any, input_shape: ShapeSpec) -> Dict[str, Any]:
    """:func:`build_resnet` arguments from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.BACKBONE``.

    The one place where config keys become network arguments: detectron2's keys with detectron2's
    meaning, plus ours (SHORTCUT, PREACT, CHANNELS_LAST, ZERO_INIT_RESIDUAL).
    """
    r = cfg.MODEL.RESNETS
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE={list(r.DEFORM_ON_PER_STAGE)}: deformable "
            f"convolutions are not supported"
        )
    if r.DEPTH in (18, 34) and r.RES2_OUT_CHANNELS == 4 * 64:
        # detectron2 requires 64; we accept any basic-block width except the bottleneck default
        raise ValueError(
            f"MODEL.RESNETS.RES2_OUT_CHANNELS={r.RES2_OUT_CHANNELS} is the bottleneck default: "
            f"R{r.DEPTH} has basic blocks, set 64 (the paper's width) or another res2 width"
        )
    return {
        "depth": r.DEPTH,
        "preact": r.PREACT,
        "num_classes": None,
        "in_channels": input_shape.channels,
        "shortcut": r.SHORTCUT,
        "norm": r.NORM,
        "stride_in_1x1": r.STRIDE_IN_1X1,
        "num_groups": r.NUM_GROUPS,
        "width_per_group": r.WIDTH_PER_GROUP,
        "stem_out_channels": r.STEM_OUT_CHANNELS,
        "res2_out_channels": r.RES2_OUT_CHANNELS,
        "res5_dilation": r.RES5_DILATION,
        "out_features": list(r.OUT_FEATURES),
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        "zero_init_residual": r.ZERO_INIT_RESIDUAL,
        "channels_last": r.CHANNELS_LAST,
    }


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg: Any, input_shape: ShapeSpec) -> ResNet:
    """The ResNet backbone described by ``cfg`` (detectron2's ``build_resnet_backbone``)."""
    return build_resnet(**resnet_args_from_config(cfg, input_shape))


RES5_HEAD_BLOCKS = ("bottleneck", "basic")


def res5_head_is_basic(resnets_cfg: Any) -> bool:
    """Whether ``MODEL.RESNETS.RES5_HEAD_BLOCK`` asks for ResNet-18/34's basic res5 (checked)."""
    r = resnets_cfg
    if r.RES5_HEAD_BLOCK not in RES5_HEAD_BLOCKS:
        raise ValueError(
            f"MODEL.RESNETS.RES5_HEAD_BLOCK={r.RES5_HEAD_BLOCK!r}: "
            f"expected one of {RES5_HEAD_BLOCKS}"
        )
    if r.RES5_HEAD_BLOCK == "basic" and r.DEPTH not in (18, 34):
        raise ValueError(
            f"MODEL.RESNETS.RES5_HEAD_BLOCK='basic' needs a basic-block ResNet (DEPTH 18 or 34), "
            f"got DEPTH={r.DEPTH}"
        )
    return r.RES5_HEAD_BLOCK == "basic"


def _res5_head_args(resnets_cfg: Any) -> Dict[str, Any]:
    """:func:`res5_head_args_from_config` from the ``MODEL.RESNETS`` node alone."""
    r = resnets_cfg
    if r.DEFORM_ON_PER_STAGE[-1]:
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE[3]=True: deformable convolutions are not supported"
        )
    return {
        "depth": r.DEPTH,
        "bottleneck": not res5_head_is_basic(r),
        "preact": r.PREACT,
        "shortcut": r.SHORTCUT,
        "norm": r.NORM,
        "stride_in_1x1": r.STRIDE_IN_1X1,
        "num_groups": r.NUM_GROUPS,
        "width_per_group": r.WIDTH_PER_GROUP,
        "res2_out_channels": r.RES2_OUT_CHANNELS,
        "zero_init_residual": r.ZERO_INIT_RESIDUAL,
    }


def res5_head_args_from_config(cfg: Any) -> Dict[str, Any]:
    """:func:`build_res5_head` arguments from ``cfg.MODEL.RESNETS``: the backbone's keys and
    meaning (:func:`resnet_args_from_config`), plus ``RES5_HEAD_BLOCK``; ``RES5_DILATION`` is
    the backbone's only (detectron2's C4 head strides)."""
    return _res5_head_args(cfg.MODEL.RESNETS)


def build_res5_head_from_config(cfg: Any) -> Tuple[nn.Sequential, int]:
    """The C4 res5 head described by ``cfg``: ``(res5, out_channels)``; what both
    ``Res5ROIHeads._build_res5_block`` (ours) and ``RBRes5ROIHeads._build_res5_block``
    (detectron2's, ``integrations.detectron2``) return."""
    return build_res5_head(**res5_head_args_from_config(cfg))


# ------------------------------------------------------------------------------- named models
# ImageNet, He et al. (CVPR 2016): option-B shortcuts, stride in the 3x3 by default (torchvision).
@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (11.7M parameters)."""
    return build_resnet(18, **kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (21.8M parameters)."""
    return build_resnet(34, **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (25.6M parameters)."""
    return build_resnet(50, **kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (44.5M parameters)."""
    return build_resnet(101, **kwargs)


@register_model
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (60.2M parameters)."""
    return build_resnet(152, **kwargs)


# CIFAR-10, He et al. (CVPR 2016) Sec. 4.2: basic blocks, option-A shortcuts, 10 classes.
def _cifar(depth: int, kwargs: Dict[str, Any], **defaults: Any) -> ResNet:
    return build_resnet(
        depth, cifar=True, **{"num_classes": 10, "shortcut": "A", **defaults, **kwargs}
    )


@register_model
def resnet20_cifar(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-20 (0.27M parameters)."""
    return _cifar(20, kwargs)


@register_model
def resnet32_cifar(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-32 (0.46M parameters)."""
    return _cifar(32, kwargs)


@register_model
def resnet44_cifar(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-44 (0.66M parameters)."""
    return _cifar(44, kwargs)


@register_model
def resnet56_cifar(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-56 (0.85M parameters)."""
    return _cifar(56, kwargs)


@register_model
def resnet110_cifar(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-110 (1.7M parameters)."""
    return _cifar(110, kwargs)


@register_model
def resnet1202_cifar(**kwargs: Any) -> ResNet:
    """CIFAR ResNet-1202 (19.4M parameters)."""
    return _cifar(1202, kwargs)


# Pre-activation, He et al. (ECCV 2016): ImageNet models with option-B shortcuts.
@register_model
def preact_resnet18(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-18."""
    return build_resnet(18, preact=True, **kwargs)


@register_model
def preact_resnet34(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-34."""
    return build_resnet(34, preact=True, **kwargs)


@register_model
def preact_resnet50(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-50."""
    return build_resnet(50, preact=True, **kwargs)


@register_model
def preact_resnet101(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-101."""
    return build_resnet(101, preact=True, **kwargs)


@register_model
def preact_resnet152(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-152."""
    return build_resnet(152, preact=True, **kwargs)


@register_model
def preact_resnet200(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-200 (ECCV 2016, Table 5)."""
    return build_resnet(200, preact=True, **kwargs)


# Pre-activation on CIFAR (ECCV 2016): ResNet-110 with basic blocks and option A as in CVPR 2016;
# ResNet-164/1001 with bottlenecks (16/32/64 wide, 64/128/256 out) and projections (option B).
@register_model
def preact_resnet110_cifar(**kwargs: Any) -> ResNet:
    """Pre-activation CIFAR ResNet-110 (1.7M parameters)."""
    return _cifar(110, kwargs, preact=True)


@register_model
def preact_resnet164_cifar(**kwargs: Any) -> ResNet:
    """Pre-activation CIFAR ResNet-164 (1.7M parameters)."""
    return _cifar(164, kwargs, preact=True, bottleneck=True, shortcut="B")


@register_model
def preact_resnet1001_cifar(**kwargs: Any) -> ResNet:
    """Pre-activation CIFAR ResNet-1001 (10.2M parameters)."""
    return _cifar(1001, kwargs, preact=True, bottleneck=True, shortcut="B")

"""The C4 res5 head: one builder, the backbone's, for our ``Res5ROIHeads`` and detectron2's.

The detectron2 part (our head vs ``RBRes5ROIHeads``) runs only where detectron2 is installed.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest
import torch
from helpers import BASE_C4, tiny_cfg
from torch import nn

from resnet_backbones import build_model, create_model
from resnet_backbones.checkpoint import load_checkpoint
from resnet_backbones.layers import ShapeSpec
from resnet_backbones.modeling.backbone.resnet import (
    IMAGENET_BLOCKS_PER_STAGE,
    PreActBottleneckBlock,
    ResNet,
    build_res5_head,
    build_res5_head_from_config,
    build_resnet,
    resnet_args_from_config,
    resnet_layout,
)
from resnet_backbones.modeling.roi_heads import roi_heads as roi_heads_module
from resnet_backbones.modeling.roi_heads.roi_heads import Res5ROIHeads
from resnet_backbones.structures import Boxes, Instances
from resnet_backbones.utils.events import EventStorage

NARROW = {  # ResNet-50 layout at 1/8 width (configs/shapes/faster_rcnn_tiny_C4.yaml)
    "MODEL.DEVICE": "cpu",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.ROI_HEADS.NUM_CLASSES": 3,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 16,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 16,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
}
R18_BASIC = {
    "MODEL.RESNETS.DEPTH": 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
    "MODEL.RESNETS.RES5_HEAD_BLOCK": "basic",
}
VARIANTS = {
    "default": {},
    "zero_init": {"MODEL.RESNETS.ZERO_INIT_RESIDUAL": True},
    "preact": {"MODEL.RESNETS.PREACT": True},
    "preact_zero_init_A": {
        "MODEL.RESNETS.PREACT": True,
        "MODEL.RESNETS.ZERO_INIT_RESIDUAL": True,
        "MODEL.RESNETS.SHORTCUT": "A",
    },
    "shortcut_C_resnext": {
        "MODEL.RESNETS.SHORTCUT": "C",
        "MODEL.RESNETS.NUM_GROUPS": 2,
        "MODEL.RESNETS.WIDTH_PER_GROUP": 4,
    },
    "r18_bottleneck_head": {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 16},
    "r18_basic_preact": {**R18_BASIC, "MODEL.RESNETS.PREACT": True},
}


def c4_cfg(overrides: Dict[str, Any] = None):
    """``configs/Base-RCNN-C4.yaml`` at 1/8 width with ``overrides`` (dotted keys) merged."""
    return tiny_cfg(NARROW, overrides or {}, config_file=BASE_C4)


def structure(module: nn.Module):
    """Every submodule's name and type, every tensor's name and shape."""
    return (
        [(n, type(m).__name__) for n, m in module.named_modules()],
        {k: tuple(v.shape) for k, v in module.state_dict().items()},
    )


def test_head_is_the_backbones_res5_stage():
    """The head is the res5 of the network the backbone builder would build: same blocks, same
    names and shapes (post_norm included with PREACT), stride 2 even where the backbone dilates."""
    for overrides in (
        {},
        {"MODEL.RESNETS.PREACT": True, "MODEL.RESNETS.SHORTCUT": "C"},
        R18_BASIC,
        {"MODEL.RESNETS.RES5_DILATION": 2},
    ):
        cfg = c4_cfg({**overrides, "MODEL.RESNETS.OUT_FEATURES": ["res5"]})
        full = build_resnet(**resnet_args_from_config(cfg, ShapeSpec(channels=3)))
        head, out_channels = build_res5_head_from_config(cfg)
        expected = {"res5." + k: v.shape for k, v in full.res5.state_dict().items()}
        if full.post_norm is not None:
            post_norm = full.post_norm.state_dict()
            expected.update({"res5.post_norm." + k: v.shape for k, v in post_norm.items()})
        assert {"res5." + k: v.shape for k, v in head.state_dict().items()} == expected
        assert [type(b) for b in head if hasattr(b, "last_norm")] == [type(b) for b in full.res5]
        assert out_channels == full.output_shape()["res5"].channels
        convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
        assert head[0].stride == 2 and all(c.dilation == (1, 1) for c in convs)


def test_detectron2_head_for_basic_depths():
    """RES5_HEAD_BLOCK bottleneck on R18/R34: detectron2's head, three bottlenecks, these widths."""
    head, out_channels = build_res5_head(
        18, bottleneck=True, res2_out_channels=64, stride_in_1x1=True
    )
    d2_like = resnet_layout(50, stride_in_1x1=True).stages[3]
    assert len(head) == IMAGENET_BLOCKS_PER_STAGE[50][3] == 3 and out_channels == 512
    assert [(b.in_channels, b.out_channels, b.stride) for b in head] == [
        (256, 512, 2),
        (512, 512, 1),
        (512, 512, 1),
    ]
    assert head[0].conv2.in_channels == d2_like.block_kwargs["bottleneck_channels"] == 512
    with pytest.raises(ValueError, match="basic-block res5 head needs ResNet-18 or -34"):
        build_res5_head(50, bottleneck=False)
    with pytest.raises(ValueError, match="not an ImageNet ResNet depth"):
        build_res5_head(26)


def test_native_head_honours_zero_init_residual():
    plain = build_model(c4_cfg()).roi_heads.res5
    assert all(torch.count_nonzero(b.last_norm.weight) > 0 for b in plain)
    model = build_model(c4_cfg({"MODEL.RESNETS.ZERO_INIT_RESIDUAL": True}))
    assert len(model.roi_heads.res5) == 3
    for block in model.roi_heads.res5:
        assert torch.count_nonzero(block.last_norm.weight) == 0
    for stage in model.backbone.stages:  # as in the backbone
        assert all(torch.count_nonzero(b.last_norm.weight) == 0 for b in stage)


def test_native_head_builds_preact():
    """PREACT: pre-activation res5 blocks and the final norm-ReLU (``roi_heads.res5.post_norm``),
    where an ImageNet pre-activation ResNet's ``post_norm`` loads; the detector trains, infers."""
    model = build_model(c4_cfg({"MODEL.RESNETS.PREACT": True}))
    res5 = model.roi_heads.res5
    assert [type(b) for b in res5][:3] == [PreActBottleneckBlock] * 3 and res5[0].preact_shortcut
    assert not res5[1].preact_shortcut and isinstance(res5.post_relu, nn.ReLU)
    assert res5[0].conv1.stride == (2, 2)  # stride in the 1x1, detectron2's default
    assert "roi_heads.res5.post_norm.weight" in model.state_dict()
    imagenet = create_model(
        "preact_resnet50",
        stride_in_1x1=True,
        norm="FrozenBN",
        stem_out_channels=16,
        res2_out_channels=32,
        width_per_group=8,
    ).state_dict()
    report = load_checkpoint(model, imagenet, strict=False, drop_classifier=True)
    assert {k.rsplit(".", 2)[0] for k in report.missing} == {
        "proposal_generator.rpn_head",
        "roi_heads.box_predictor",
    }
    assert not report.unexpected and not report.shape_mismatch
    post_norm = model.state_dict()["roi_heads.res5.post_norm.weight"]
    assert torch.equal(post_norm, imagenet["post_norm.weight"])
    image = torch.rand(3, 64, 80) * 255
    model.eval()
    with torch.no_grad():
        assert "instances" in model([{"image": image}])[0]
    target = Instances((64, 80))
    target.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 48.0]]))
    target.gt_classes = torch.tensor([1])
    model.train()
    with EventStorage(0):
        losses = model([{"image": image, "instances": target}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_build_res5_block_is_an_overridable_classmethod():
    """As in detectron2: a subclass replaces the head by overriding ``_build_res5_block``."""

    class OneBlockHead(Res5ROIHeads):
        @classmethod
        def _build_res5_block(cls, cfg):
            res5, out_channels = super()._build_res5_block(cfg)
            return nn.Sequential(res5[0]), out_channels

    cfg = c4_cfg()
    shapes = {"res4": ShapeSpec(channels=128, stride=16)}
    assert len(Res5ROIHeads(**Res5ROIHeads.from_config(cfg, shapes)).res5) == 3
    assert len(OneBlockHead(**OneBlockHead.from_config(cfg, shapes)).res5) == 1


def test_old_import_paths():
    """``make_res5_head_blocks``, ``res5_head_is_basic`` and ``RES5_HEAD_BLOCKS`` still import
    from ``modeling.roi_heads.roi_heads`` and give the head's blocks."""
    cfg = c4_cfg({"MODEL.RESNETS.PREACT": True})
    blocks, out_channels = roi_heads_module.make_res5_head_blocks(cfg.MODEL.RESNETS, preact=True)
    head, head_channels = build_res5_head_from_config(cfg)
    assert out_channels == head_channels == 256
    assert [type(b) for b in blocks] == [type(b) for b in list(head)[:3]]
    assert roi_heads_module.RES5_HEAD_BLOCKS == ("bottleneck", "basic")
    assert roi_heads_module.res5_head_is_basic(c4_cfg(R18_BASIC).MODEL.RESNETS)
    assert isinstance(build_model(cfg).roi_heads.res5[0], PreActBottleneckBlock)
    assert issubclass(type(build_model(c4_cfg()).backbone), ResNet)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_native_and_detectron2_heads_are_one_head(variant):
    """Our ``Res5ROIHeads`` and detectron2's ``RBRes5ROIHeads`` build the same head for the same
    config: modules, names, shapes and (same seed) values; whole detectors have the same keys."""
    pytest.importorskip("detectron2")
    from detectron2.modeling import build_model as d2_build_model

    from resnet_backbones.integrations.detectron2 import (
        RBRes5ROIHeads,
        build_rb_res5_head,
        to_detectron2_config,
    )

    ours_cfg = c4_cfg(VARIANTS[variant])
    d2_cfg = to_detectron2_config(c4_cfg(VARIANTS[variant]), use_rb_modules=True)
    torch.manual_seed(0)
    ours, ours_channels = Res5ROIHeads._build_res5_block(ours_cfg)
    torch.manual_seed(0)
    theirs, theirs_channels = RBRes5ROIHeads._build_res5_block(d2_cfg)
    assert ours_channels == theirs_channels and structure(ours) == structure(theirs)
    pairs = zip(ours.state_dict().values(), theirs.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    torch.manual_seed(0)
    assert structure(build_rb_res5_head(d2_cfg)[0]) == structure(ours)  # the old name
    ours_model, d2_model = build_model(ours_cfg), d2_build_model(d2_cfg)
    assert {k: v.shape for k, v in ours_model.state_dict().items()} == {
        k: v.shape for k, v in d2_model.state_dict().items()
    }

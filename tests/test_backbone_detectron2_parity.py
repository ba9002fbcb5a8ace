"""detectron2's ResNet backbone and ours: same state-dict names, same features for the same weights.

Runs only where detectron2 is installed (see the project README for the side environment).
"""

import pytest
import torch

detectron2 = pytest.importorskip("detectron2")

from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d as D2FrozenBatchNorm2d  # noqa: E402
from detectron2.layers import ShapeSpec as D2ShapeSpec  # noqa: E402
from detectron2.modeling.backbone.resnet import (  # noqa: E402
    build_resnet_backbone as d2_build_resnet_backbone,
)

from resnet_backbones.config import get_cfg  # noqa: E402
from resnet_backbones.layers import ShapeSpec  # noqa: E402
from resnet_backbones.modeling import build_backbone  # noqa: E402

TOLERANCE = 1e-4


def _configs(depth: int, out_features: list, res5_dilation: int):
    """detectron2's config and ours, at detectron2's C4 defaults (FrozenBN,
    STRIDE_IN_1X1, FREEZE_AT 2)."""
    d2_cfg, cfg = d2_get_cfg(), get_cfg()
    for c in (d2_cfg, cfg):
        c.MODEL.RESNETS.DEPTH = depth
        c.MODEL.RESNETS.OUT_FEATURES = list(out_features)
        c.MODEL.RESNETS.RES5_DILATION = res5_dilation
        c.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
        assert c.MODEL.RESNETS.NORM == "FrozenBN" and c.MODEL.RESNETS.STRIDE_IN_1X1
        assert c.MODEL.BACKBONE.FREEZE_AT == 2
    return d2_cfg, cfg


@torch.no_grad()
def _give_sane_frozen_statistics(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Random affine values, and running statistics measured on ``images``, so activations
    stay O(1)."""
    hooks = []

    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)

    for m in model.modules():
        if isinstance(m, D2FrozenBatchNorm2d):
            hooks.append(m.register_forward_pre_hook(calibrate))
    model(images)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize(
    "depth, out_features, res5_dilation",
    [
        (50, ["res4", "res5"], 1),
        (101, ["res4", "res5"], 1),
        (50, ["res2", "res5"], 2),
        (18, ["res4"], 1),
    ],
)
def test_same_weights_give_the_same_features(depth, out_features, res5_dilation):
    torch.manual_seed(0)
    d2_cfg, cfg = _configs(depth, out_features, res5_dilation)
    d2_model = d2_build_resnet_backbone(d2_cfg, D2ShapeSpec(channels=3)).eval()
    ours = build_backbone(cfg, ShapeSpec(channels=3)).eval()
    images = torch.randn(2, 3, 96, 96)
    _give_sane_frozen_statistics(d2_model, images)

    d2_state = d2_model.state_dict()
    assert set(ours.state_dict()) == set(d2_state)
    ours.load_state_dict(d2_state, strict=True)  # the same names, not a mapping

    assert ours.output_shape() == {
        k: ShapeSpec(channels=v.channels, stride=v.stride)
        for k, v in d2_model.output_shape().items()
    }
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == {
        n: p.requires_grad for n, p in d2_model.named_parameters()
    }
    # Without gradients FrozenBN runs F.batch_norm; with them, the explicit affine form.
    for grad_mode in (torch.no_grad, torch.enable_grad):
        with grad_mode():
            theirs, mine = d2_model(images), ours(images)
        assert set(mine) == set(theirs) == set(out_features)
        for name in out_features:
            diff = (mine[name] - theirs[name]).abs().max().item()
            print(
                f"R{depth} res5_dilation={res5_dilation} {grad_mode.__name__} {name}: "
                f"max |diff| = {diff:.3g} (max |feature| {theirs[name].abs().max():.3g})"
            )
            assert diff <= TOLERANCE, (name, diff)

"""BatchNorm folding and optimize_for_inference (resnet_backbones.modeling.fuse)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import randomize_norms
from torch import nn
from torch.nn import functional as F

from resnet_backbones.layers import Conv2d, FrozenBatchNorm2d
from resnet_backbones.modeling.backbone import (
    BottleneckBlock,
    ResNet,
    create_backbone,
    create_model,
)
from resnet_backbones.modeling.fuse import (
    fold_batch_norm,
    freeze_for_inference,
    optimize_for_inference,
)

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def count_norms(model: nn.Module) -> int:
    return sum(isinstance(m, NORMS) for m in model.modules())


def assert_close(out, ref, rtol=1e-4):
    """Max abs difference within ``rtol`` of the output scale (per output tensor)."""
    if isinstance(ref, dict):
        assert out.keys() == ref.keys()
        for k in ref:
            assert_close(out[k], ref[k], rtol)
        return
    assert out.shape == ref.shape
    scale = max(1.0, ref.abs().max().item())
    diff = (out - ref).abs().max().item()
    assert diff <= rtol * scale, f"max abs diff {diff:.3g} > {rtol} x {scale:.3g}"


def check_fold(model: nn.Module, x: torch.Tensor, *, expect_left: int = 0) -> nn.Module:
    model.eval()
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        folded = fold_batch_norm(model)
        assert_close(folded(x), ref)
        assert count_norms(folded) == expect_left
        fast = optimize_for_inference(model, channels_last=True)
        out = fast(x)
        assert_close(out, ref)
    # the original is untouched: same tensors, norms still in place
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert count_norms(model) > count_norms(folded)
    return fast


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_resnet18_fold(norm):
    model = randomize_norms(create_model("resnet18", norm=norm, num_classes=10))
    fast = check_fold(model, torch.randn(2, 3, 64, 64))
    convs = [m for m in fast.modules() if isinstance(m, Conv2d)]
    assert convs and all(c.norm is None and c.bias is not None for c in convs)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


# a narrow ResNet-50 (same depth and block structure, 1/16 of the parameters) keeps the test fast
NARROW = {"width_per_group": 16, "stem_out_channels": 16, "res2_out_channels": 64}


def test_bottleneck_fold():
    # ResNet-50 classifier with BN (torchvision layout), and the detectron2-style C4 backbone
    # (FrozenBN, stride in the 1x1, {"res4": tensor} output)
    model = randomize_norms(create_model("resnet50", num_classes=10, **NARROW))
    check_fold(model, torch.randn(2, 3, 64, 64))
    backbone = randomize_norms(create_backbone("resnet50", **NARROW), seed=1)
    fast = check_fold(backbone, torch.randn(2, 3, 64, 96))
    with torch.no_grad():
        assert fast(torch.randn(1, 3, 64, 64))["res4"].is_contiguous(
            memory_format=torch.channels_last
        )


def test_res5_head_and_conv_with_bias():
    """Any module tree with our Conv2d + norm: a res5-style stage; convs that already have a
    bias."""
    head = nn.Sequential(
        *ResNet.make_stage(
            BottleneckBlock,
            2,
            in_channels=64,
            out_channels=128,
            bottleneck_channels=32,
            first_stride=2,
            norm="FrozenBN",
            stride_in_1x1=True,
        )
    )
    x = torch.randn(2, 64, 14, 14)
    check_fold(randomize_norms(head), x.contiguous(memory_format=torch.channels_last))

    with_bias = nn.Sequential(
        Conv2d(3, 8, 3, padding=1, bias=True, norm=nn.BatchNorm2d(8), activation=F.relu),
        Conv2d(8, 8, 1, bias=True, norm=FrozenBatchNorm2d(8)),
        nn.Conv2d(8, 4, 3, bias=True),
        nn.BatchNorm2d(4),  # torchvision-style pair in a Sequential
        nn.Conv2d(4, 4, 1, bias=False),
        nn.BatchNorm2d(4, affine=False),
    )
    with torch.no_grad():
        for m in with_bias.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_()
    fast = check_fold(randomize_norms(with_bias), torch.randn(2, 3, 9, 9))
    assert fast[0].activation is F.relu  # activations are kept
    assert isinstance(fast[3], nn.Identity) and isinstance(fast[5], nn.Identity)


def test_preact_and_unfoldable_norms():
    # pre-activation: norm2 follows conv1 and is folded; norm1 (on the block input) and post_norm
    # stay
    model = randomize_norms(create_model("preact_resnet18", num_classes=10))
    n_blocks = 8
    check_fold(model, torch.randn(2, 3, 32, 32), expect_left=n_blocks + 1)

    seq = nn.Sequential(
        Conv2d(3, 32, 3, bias=False, norm=nn.GroupNorm(4, 32)),
        Conv2d(32, 8, 3, bias=False, norm=nn.BatchNorm2d(8, track_running_stats=False)),
    )
    x = torch.randn(2, 3, 9, 9)
    folded = fold_batch_norm(seq.eval())
    assert isinstance(folded[0].norm, nn.GroupNorm) and isinstance(folded[1].norm, nn.BatchNorm2d)
    with torch.no_grad():
        assert_close(folded(x), seq(x))


def test_inplace_and_channels_last_flag():
    model = randomize_norms(create_model("resnet18", num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        same = fold_batch_norm(model, inplace=True)
        assert same is model and count_norms(model) == 0
        assert_close(model(x), ref)
        fast = optimize_for_inference(model, channels_last=True)
        assert fast is not model and fast.channels_last and not model.channels_last
        assert_close(fast(x), ref)
        plain = optimize_for_inference(model, channels_last=False)
        assert plain.stem.conv1.weight.is_contiguous()
        assert_close(plain(x), ref)


def test_freeze_for_inference():
    model = randomize_norms(create_model("resnet18", num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    frozen = freeze_for_inference(model, x)
    with torch.no_grad():
        assert_close(frozen(x), model(x))
        other = torch.randn(1, 3, 48, 40)  # another shape works too
        assert_close(frozen(other), model(other))
    assert count_norms(model) == 20  # the original keeps its norms

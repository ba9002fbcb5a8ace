"""Parameter counts: torchvision's exactly for ImageNet models, the papers' for CIFAR models.

Models are built on the meta device: no memory, no initialization cost.
"""

import pytest
import torch
from torch import nn

import resnet_backbones as rb
from resnet_backbones.modeling.backbone import PadShortcut


def _build(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return rb.create_model(name, **kwargs)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _num_norm_params(model: nn.Module) -> int:
    return sum(
        p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
    ],
)
def test_imagenet_counts_equal_torchvision(name, expected):
    assert _num_params(_build(name)) == expected


# He et al., CVPR 2016, Table 6 (option A, BN parameters included).
@pytest.mark.parametrize(
    "name, millions",
    [
        ("resnet20_cifar", 0.27),
        ("resnet32_cifar", 0.46),
        ("resnet44_cifar", 0.66),
        ("resnet56_cifar", 0.85),
        ("resnet110_cifar", 1.7),
        ("resnet1202_cifar", 19.4),
        ("preact_resnet110_cifar", 1.7),
    ],
)
def test_cifar_counts_equal_the_paper(name, millions):
    digits = len(str(millions).split(".")[1])
    assert round(_num_params(_build(name)) / 1e6, digits) == millions


# He et al., ECCV 2016, Table 3/4. The 1001-layer count (10.2M) matches the paper only without
# the 0.15M BN parameters (10.18M; 10.33M with them), so the ECCV counts exclude BN; the CVPR
# counts above include it (ResNet-1202 is 19.33M without BN).
@pytest.mark.parametrize(
    "name, millions", [("preact_resnet164_cifar", 1.7), ("preact_resnet1001_cifar", 10.2)]
)
def test_preact_bottleneck_cifar_counts_equal_the_paper(name, millions):
    model = _build(name)
    assert round((_num_params(model) - _num_norm_params(model)) / 1e6, 1) == millions


def test_preact_bottleneck_cifar_widths_follow_the_paper():
    model = _build("preact_resnet164_cifar")
    assert [getattr(model, s)[0].conv2.out_channels for s in ("res2", "res3", "res4")] == [
        16,
        32,
        64,
    ]
    assert [getattr(model, s)[0].out_channels for s in ("res2", "res3", "res4")] == [64, 128, 256]
    assert [len(getattr(model, s)) for s in ("res2", "res3", "res4")] == [18, 18, 18]


def test_option_a_has_no_shortcut_parameters_and_c_projects_everywhere():
    a = _build("resnet56_cifar")
    assert not any(".shortcut." in n for n, _ in a.named_parameters())
    assert sum(isinstance(m, PadShortcut) for m in a.modules()) == 2
    b = _build("resnet56_cifar", shortcut="B")
    assert _num_params(b) - _num_params(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    c = _build("resnet20_cifar", shortcut="C")
    assert all(
        block.shortcut is not None for s in ("res2", "res3", "res4") for block in getattr(c, s)
    )

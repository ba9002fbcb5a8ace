"""The ResNet family: blocks, names, freezing, output shapes, options, configs and errors.

Inputs are tiny (32x32 CIFAR, 64x64 ImageNet) to keep the suite fast on a small CPU.
"""

import pytest
import torch
import torchvision
from torch import nn

import resnet_backbones as rb
from resnet_backbones.config import get_cfg
from resnet_backbones.layers import (
    Conv2d,
    FrozenBatchNorm2d,
    ShapeSpec,
    convert_frozen_batchnorm,
    get_norm,
)
from resnet_backbones.modeling import build_backbone
from resnet_backbones.modeling.backbone import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResNet,
    build_resnet,
    make_stage,
)

ALL_MODELS = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet20_cifar",
    "resnet32_cifar",
    "resnet44_cifar",
    "resnet56_cifar",
    "resnet110_cifar",
    "resnet1202_cifar",
    "preact_resnet18",
    "preact_resnet34",
    "preact_resnet50",
    "preact_resnet101",
    "preact_resnet152",
    "preact_resnet200",
    "preact_resnet110_cifar",
    "preact_resnet164_cifar",
    "preact_resnet1001_cifar",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _blocks(model: ResNet):
    return [block for stage in model.stages for block in stage]


def test_every_model_is_listed():
    assert set(ALL_MODELS) <= set(rb.list_models())


@pytest.mark.parametrize(
    "name, size, classes",
    [
        ("resnet20_cifar", 32, 10),
        ("preact_resnet110_cifar", 32, 10),
        ("resnet18", 64, 1000),
        ("preact_resnet50", 64, 1000),
    ],
)
def test_classifier_returns_logits(name, size, classes):
    model = rb.create_model(name)
    assert model(torch.randn(2, 3, size, size)).shape == (2, classes)


def test_num_classes_sets_the_head():
    assert rb.create_model("resnet20_cifar", num_classes=7)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        7,
    )


@pytest.mark.parametrize("num_classes", [0, None])
def test_headless_network_returns_pooled_features(num_classes):
    model = rb.create_model("resnet20_cifar", num_classes=num_classes)
    assert model.linear is None and not any(n.startswith("linear") for n in model.state_dict())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_state_dict_names_are_detectron2s():
    keys = set(rb.create_model("resnet50").state_dict())
    for key in [
        "stem.conv1.weight",
        "stem.conv1.norm.weight",
        "stem.conv1.norm.bias",
        "stem.conv1.norm.running_mean",
        "stem.conv1.norm.running_var",
        "res2.0.conv1.weight",
        "res2.0.conv1.norm.weight",
        "res2.0.conv2.weight",
        "res2.0.conv3.weight",
        "res2.0.conv3.norm.running_var",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.weight",
        "res5.2.conv3.norm.bias",
        "linear.weight",
        "linear.bias",
    ]:
        assert key in keys, key
    assert "res2.1.shortcut.weight" not in keys
    cifar = rb.create_model("resnet20_cifar").state_dict()
    assert {k.split(".")[0] for k in cifar} == {"stem", "res2", "res3", "res4", "linear"}


def test_preact_names_and_post_norm():
    model = rb.create_model("preact_resnet110_cifar")
    keys = set(model.state_dict())
    assert {
        "stem.conv1.weight",
        "res2.0.norm1.weight",
        "res2.0.conv1.weight",
        "res2.0.norm2.weight",
        "res4.17.conv2.weight",
        "post_norm.weight",
        "post_norm.running_var",
    } <= keys
    assert not any(k.startswith("stem.conv1.norm") for k in keys)  # the first block pre-activates
    assert [b.preact_shortcut for b in model.res3] == [True] + [False] * 17
    # A C4 feature extractor of a pre-activation net has no res5, hence no post_norm.
    backbone = rb.create_backbone("preact_resnet50")
    assert backbone.post_norm is None and "post_norm.weight" not in backbone.state_dict()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_layout_and_outputs(name):
    ours, theirs = rb.create_model(name).eval(), getattr(torchvision.models, name)().eval()
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in ours_state.values()] == [v.shape for v in theirs_state.values()]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    ours.load_state_dict(dict(zip(ours_state, theirs_state.values())))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 4])
def test_freeze_at(freeze_at):
    model = build_resnet(50, num_classes=None, norm="BN", freeze_at=freeze_at)
    parts = [model.stem] + list(model.stages)
    for idx, part in enumerate(parts, start=1):
        frozen = idx <= freeze_at
        assert all(p.requires_grad != frozen for p in part.parameters())
        norms = [m for m in part.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert all(isinstance(m, FrozenBatchNorm2d if frozen else nn.BatchNorm2d) for m in norms)
    # Frozen BatchNorms keep every state-dict key (num_batches_tracked included), as in detectron2.
    assert set(model.state_dict()) == set(
        build_resnet(50, num_classes=None, norm="BN").state_dict()
    )


def test_freeze_at_covers_post_norm_and_gn():
    model = build_resnet(20, cifar=True, preact=True, freeze_at=4)
    assert isinstance(model.post_norm, FrozenBatchNorm2d)
    assert all(
        not p.requires_grad for n, p in model.named_parameters() if not n.startswith("linear")
    )
    gn = build_resnet(18, norm="GN", freeze_at=2)
    assert not any(p.requires_grad for p in gn.res2.parameters())
    assert isinstance(gn.res2[0].conv1.norm, nn.GroupNorm)


EXPECTED_R50 = {
    "stem": (64, 4),
    "res2": (256, 4),
    "res3": (512, 8),
    "res4": (1024, 16),
    "res5": (2048, 32),
}


@pytest.mark.parametrize("res5_dilation", [1, 2])
def test_output_shape_for_every_feature(res5_dilation):
    names = list(EXPECTED_R50)
    model = rb.create_backbone("resnet50", out_features=names, res5_dilation=res5_dilation)
    expected = dict(EXPECTED_R50, res5=(2048, 32 // res5_dilation))
    assert model.output_shape() == {
        k: ShapeSpec(channels=c, stride=s) for k, (c, s) in expected.items()
    }
    features = model(torch.randn(1, 3, 64, 64))
    for name, (channels, stride) in expected.items():
        assert features[name].shape == (1, channels, 64 // stride, 64 // stride)
    assert model.res5[0].conv2.dilation == (res5_dilation, res5_dilation)


def test_output_shape_basic_and_cifar():
    r18 = rb.create_backbone("resnet18", out_features=["res2", "res5"])
    assert r18.output_shape() == {
        "res2": ShapeSpec(channels=64, stride=4),
        "res5": ShapeSpec(channels=512, stride=32),
    }
    cifar = rb.create_backbone("resnet20_cifar", out_features=["stem", "res4"])
    assert cifar.output_shape() == {
        "stem": ShapeSpec(channels=16, stride=1),
        "res4": ShapeSpec(channels=64, stride=4),
    }
    assert cifar(torch.randn(1, 3, 32, 32))["res4"].shape == (1, 64, 8, 8)


def test_c4_backbone_stops_at_res4():
    model = rb.create_backbone("resnet50")
    assert model.stage_names == ("res2", "res3", "res4") and not hasattr(model, "res5")
    assert not hasattr(model, "linear") and not any(
        k.startswith("res5") for k in model.state_dict()
    )
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["res4"] and out["res4"].shape == (1, 1024, 4, 4)


def test_stride_in_1x1_or_3x3():
    msra = rb.create_backbone("resnet50", stride_in_1x1=True).res3[0]
    tv = rb.create_model("resnet50").res3[0]
    assert (msra.conv1.stride, msra.conv2.stride) == ((2, 2), (1, 1))
    assert (tv.conv1.stride, tv.conv2.stride) == ((1, 1), (2, 2))


@pytest.mark.parametrize(
    "name, size", [("resnet18", 64), ("resnet20_cifar", 32), ("preact_resnet18", 64)]
)
def test_channels_last_gives_equal_outputs(name, size):
    # Shallow nets: at random init their eval-mode logits are O(1), so 1e-5 is a fair absolute
    # bound.
    reference = rb.create_model(name).eval()
    fast = rb.create_model(name, channels_last=True).eval()
    fast.load_state_dict(reference.state_dict())
    assert fast.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=18),
        dict(depth=20, cifar=True, preact=True),
        dict(depth=11, cifar=True, preact=True, bottleneck=True),
        dict(depth=50, norm="GN", shortcut="C"),
    ],
)
def test_zero_init_makes_every_block_start_as_its_shortcut(kwargs):
    model = build_resnet(num_classes=None, zero_init_residual=True, **kwargs).train()
    pairs = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: pairs.append((m, i[0], o))) for b in _blocks(model)
    ]
    model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(pairs) == len(_blocks(model))
    for block, x, out in pairs:
        preact = isinstance(block, (PreActBasicBlock, PreActBottleneckBlock))
        if preact:
            skip = torch.relu(block.norm1(x)) if block.preact_shortcut else x
            expected = skip if block.shortcut is None else block.shortcut(skip)
        else:
            expected = torch.relu(x if block.shortcut is None else block.shortcut(x))
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_resnet(42), "depth 42"),
        (lambda: build_resnet(42, cifar=True), "depth 42.*6n\\+2"),
        (lambda: rb.create_model("resnet18", shortcut="D"), "shortcut 'D'"),
        (lambda: rb.create_backbone("resnet50", out_features=["res6"]), "out_feature 'res6'"),
        (lambda: rb.create_backbone("resnet20_cifar", out_features=["res5"]), "out_feature 'res5'"),
        (
            lambda: rb.create_backbone("resnet50", res5_dilation=3),
            "res5_dilation must be 1 or 2, got 3",
        ),
        (
            lambda: rb.create_backbone("resnet18", res5_dilation=2),
            "res5_dilation=2 needs bottleneck",
        ),
        (lambda: rb.create_model("resnet18", norm="XN"), "norm 'XN'"),
        (lambda: rb.create_model("resnet20_cifar", norm="GN"), "16 channels"),
        (lambda: rb.create_model("resnet18", freeze_at=6), "freeze_at 6"),
        (lambda: rb.create_model("resnet18", out_features=["res4"]), "num_classes=None"),
        (lambda: rb.create_model("resnet18", num_classes=-1), "num_classes"),
        (
            lambda: rb.create_model("resnet18", norm="", zero_init_residual=True),
            "zero_init_residual",
        ),
    ],
)
def test_bad_values_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_gn_and_syncbn_build():
    gn = rb.create_model("resnet18", norm="GN")
    assert (
        isinstance(gn.res3[0].conv1.norm, nn.GroupNorm) and gn.res3[0].conv1.norm.num_groups == 32
    )
    assert gn(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    sync = rb.create_model("resnet18", norm="SyncBN")
    assert isinstance(sync.res3[0].shortcut.norm, nn.SyncBatchNorm)
    frozen = rb.create_backbone("resnet18", norm="SyncBN", freeze_at=2)
    assert isinstance(frozen.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(frozen.res3[0].conv1.norm, nn.SyncBatchNorm)


def test_build_resnet_backbone_from_config():
    cfg = get_cfg()
    backbone = build_backbone(cfg)  # detectron2's C4 defaults: R50, res4, FrozenBN, freeze_at 2
    assert backbone.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}
    assert backbone.stage_names == ("res2", "res3", "res4")
    assert backbone.res3[0].conv1.stride == (2, 2)  # STRIDE_IN_1X1
    assert isinstance(backbone.res4[0].conv1.norm, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in backbone.res2.parameters())

    cfg.merge_from_list(
        [
            "MODEL.RESNETS.DEPTH",
            18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            64,
            "MODEL.RESNETS.OUT_FEATURES",
            ["res3", "res5"],
            "MODEL.RESNETS.PREACT",
            True,
            "MODEL.RESNETS.SHORTCUT",
            "C",
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.BACKBONE.FREEZE_AT",
            0,
        ]
    )
    backbone = build_backbone(cfg, ShapeSpec(channels=1))
    assert backbone.output_shape() == {
        "res3": ShapeSpec(channels=128, stride=8),
        "res5": ShapeSpec(channels=512, stride=32),
    }
    assert isinstance(backbone.res2[1], PreActBasicBlock) and backbone.res2[1].shortcut is not None
    assert backbone.stem.conv1.in_channels == 1 and backbone.post_norm is not None


def test_config_errors_name_the_key():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 34
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS=256"):
        build_backbone(cfg)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, True, True]
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        build_backbone(cfg)


def test_make_stage_builds_a_res5_head():
    blocks = ResNet.make_stage(
        BottleneckBlock,
        3,
        in_channels=1024,
        out_channels=2048,
        first_stride=2,
        bottleneck_channels=512,
        num_groups=1,
        norm="FrozenBN",
        stride_in_1x1=True,
        dilation=1,
    )
    assert [b.stride for b in blocks] == [2, 1, 1] and [b.in_channels for b in blocks] == [
        1024,
        2048,
        2048,
    ]
    assert (
        blocks[0].conv1.stride == (2, 2)
        and blocks[0].shortcut is not None
        and blocks[1].shortcut is None
    )
    head = nn.Sequential(*blocks)
    assert head(torch.randn(1, 1024, 4, 4)).shape == (1, 2048, 2, 2)
    per_block = make_stage(
        BasicBlock, 2, in_channels=8, out_channels=8, stride_per_block=[1, 1], norm=""
    )
    assert all(b.conv1.norm is None for b in per_block)
    with pytest.raises(ValueError, match="stride_per_block has 1 values for 2 blocks"):
        make_stage(BasicBlock, 2, in_channels=8, out_channels=8, stride_per_block=[1])
    with pytest.raises(ValueError, match="not several"):
        make_stage(BasicBlock, 2, in_channels=8, out_channels=8, first_stride=2, stride=1)


def test_frozen_batchnorm_matches_batchnorm_and_loads_its_checkpoint():
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 5, 5)
    frozen = FrozenBatchNorm2d(8)
    torch.testing.assert_close(frozen(x), x)  # identity when fresh
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is ignored
    torch.testing.assert_close(frozen(x), bn(x))
    torch.testing.assert_close(frozen(x.requires_grad_()), bn(x))  # the explicit affine path
    assert not list(frozen.parameters())
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}

    converted = convert_frozen_batchnorm(nn.Sequential(nn.Conv2d(8, 8, 1), bn))
    assert isinstance(converted[1], FrozenBatchNorm2d)
    torch.testing.assert_close(converted[1](x), bn(x))


def test_converted_frozen_batchnorm_loads_a_checkpoint_without_its_counter():
    # A frozen stage of a norm="BN" net keeps BatchNorm's num_batches_tracked key; a FrozenBN
    # checkpoint has none: strict loading fills it in, as BatchNorm2d itself does.
    frozen = convert_frozen_batchnorm(nn.BatchNorm2d(4))
    assert "num_batches_tracked" in frozen.state_dict()
    checkpoint = FrozenBatchNorm2d(4).state_dict()
    checkpoint["weight"] = torch.full((4,), 3.0)
    assert frozen.load_state_dict(checkpoint) is not None
    assert torch.equal(frozen.weight, checkpoint["weight"])
    assert frozen.state_dict()["num_batches_tracked"] == 0


def test_frozen_batchnorm_loads_caffe2_weights_without_statistics():
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict({"weight": torch.full((4,), 2.0), "bias": torch.ones(4)})
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(frozen(x), 2 * x + 1)


def test_get_norm_and_conv_wrapper():
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    assert isinstance(get_norm(lambda c: nn.LayerNorm(c), 8), nn.LayerNorm)
    conv = Conv2d(3, 8, 3, padding=1, bias=False, norm=get_norm("BN", 8), activation=torch.relu)
    assert set(conv.state_dict()) == {
        "weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    }
    assert (conv(torch.randn(1, 3, 4, 4)) >= 0).all()

"""Registries: models by name (timm style), backbones and meta-architectures (detectron2 style)."""

import pytest
from torch import nn

import resnet_backbones as rb
from resnet_backbones.config import get_cfg
from resnet_backbones.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    build_backbone,
    build_model,
)
from resnet_backbones.modeling.backbone.registry import MODEL_REGISTRY


@pytest.fixture
def tiny_model():
    @rb.register_model
    def tiny_test_net(num_classes: int = 3) -> nn.Module:
        return nn.Linear(4, num_classes)

    yield "tiny_test_net"
    MODEL_REGISTRY._obj_map.pop("tiny_test_net")


def test_register_list_and_create(tiny_model):
    assert tiny_model in rb.list_models()
    assert rb.list_models("tiny_*") == [tiny_model]
    model = rb.create_model(tiny_model, num_classes=7)
    assert isinstance(model, nn.Linear) and model.out_features == 7


def test_list_models_is_sorted():
    names = rb.list_models()
    assert names == sorted(names)


def test_unknown_model_suggests_close_names(tiny_model):
    with pytest.raises(
        KeyError, match="unknown model 'tiny_test_nett'.*did you mean 'tiny_test_net'"
    ):
        rb.create_model("tiny_test_nett")


def test_registering_a_name_twice_is_refused(tiny_model):
    with pytest.raises(AssertionError, match="tiny_test_net"):

        @rb.register_model
        def tiny_test_net() -> nn.Module:  # noqa: F811
            return nn.Identity()


def test_unknown_backbone_and_meta_arch_name_the_key():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "no_such_backbone"
    with pytest.raises(KeyError, match="MODEL.BACKBONE.NAME.*no_such_backbone"):
        build_backbone(cfg)
    cfg.MODEL.META_ARCHITECTURE = "NoSuchArch"
    with pytest.raises(KeyError, match="MODEL.META_ARCHITECTURE.*NoSuchArch"):
        build_model(cfg)


def test_backbone_registry_rejects_a_non_backbone():
    @BACKBONE_REGISTRY.register()
    def returns_a_linear(cfg, input_shape):
        return nn.Linear(1, 1)

    try:
        cfg = get_cfg()
        cfg.MODEL.BACKBONE.NAME = "returns_a_linear"
        with pytest.raises(TypeError, match="returns_a_linear.*not a Backbone"):
            build_backbone(cfg)
    finally:
        BACKBONE_REGISTRY._obj_map.pop("returns_a_linear")


def test_meta_arch_registry_builds_on_the_configured_device():
    @META_ARCH_REGISTRY.register()
    class LinearArch(nn.Linear):
        def __init__(self, cfg):
            super().__init__(2, 2)

    try:
        cfg = get_cfg()
        cfg.MODEL.META_ARCHITECTURE = "LinearArch"
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        assert isinstance(model, LinearArch) and model.weight.device.type == "cpu"
    finally:
        META_ARCH_REGISTRY._obj_map.pop("LinearArch")


def test_unknown_config_names_suggest_close_ones():
    """utils.registry.lookup: the key, the bad value, the closest names and all registered names."""
    from resnet_backbones.utils.registry import did_you_mean, lookup

    with pytest.raises(
        KeyError,
        match=r"MODEL\.META_ARCHITECTURE: unknown meta-architecture "
        r"'GeneralizedRCN'; did you mean 'GeneralizedRCNN'\? "
        r"\(registered: .*GeneralizedRCNN",
    ):
        lookup(META_ARCH_REGISTRY, "GeneralizedRCN", "MODEL.META_ARCHITECTURE", "meta-architecture")
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "BUILD_RESNET_BACKBONE"  # differs only by case
    with pytest.raises(KeyError, match="did you mean 'build_resnet_backbone'"):
        build_backbone(cfg)
    assert did_you_mean("zzz", ["resnet50"]) == ""

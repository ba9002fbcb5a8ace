"""torch.hub entry points: every registered model, plus the torchvision C4 detector.

    import torch
    model = torch.hub.load("path/to/resnet-backbones", "resnet50", source="local")
    model = torch.hub.load("path/to/resnet-backbones", "resnet56_cifar", source="local",
                           weights="resnet56_cifar.pth")
    torch.hub.list("path/to/resnet-backbones", source="local")

Each model entry takes the keyword arguments of ``resnet_backbones.create_model(name, ...)``
(``num_classes``, ``norm``, ``out_features``, ``shortcut``, ...) and ``weights``: a path to any
checkpoint our converters read (ours, torchvision/timm, MSRA ``.pkl``, detectron2) or a state
dict. No weights are hosted, so ``pretrained=True`` is refused; pass ``weights`` instead.
"""

from __future__ import annotations

from typing import Any, Callable

dependencies = ["torch", "torchvision"]

from resnet_backbones import create_model as _create_model  # noqa: E402
from resnet_backbones import list_models as _list_models  # noqa: E402


def _load_weights(model: Any, weights: Any) -> None:
    from resnet_backbones.checkpoint import load_checkpoint

    has_classifier = getattr(model, "linear", None) is not None
    load_checkpoint(model, weights, drop_classifier=not has_classifier)


def _entry(name: str) -> Callable[..., Any]:
    def entry(pretrained: bool = False, weights: Any = None, **kwargs: Any) -> Any:
        if pretrained:
            raise ValueError(
                f"{name}: no weights are hosted for torch.hub; pass weights=PATH "
                f"(a checkpoint in any format our converters read: "
                f"ours, torchvision/timm .pth, MSRA or detectron2 .pkl)"
            )
        model = _create_model(name, **kwargs)
        if weights is not None:
            _load_weights(model, weights)
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"``resnet_backbones.create_model({name!r}, **kwargs)``; ``weights``: a checkpoint path or "
        f"state dict (any supported naming) loaded with a strict, reported load."
    )
    return entry


for _name in _list_models():
    globals()[_name] = _entry(_name)


def fasterrcnn_resnet_c4(pretrained: bool = False, **kwargs: Any) -> Any:
    """torchvision's ``FasterRCNN`` with our ResNet in the C4 layout
    (``resnet_backbones.integrations.torchvision.fasterrcnn_resnet_c4``; e.g. ``name="resnet50"``,
    ``num_classes=91``, ``weights=PATH`` for the backbone)."""
    if pretrained:
        raise ValueError(
            "fasterrcnn_resnet_c4: no weights are hosted; pass weights=PATH for the backbone"
        )
    from resnet_backbones.integrations.torchvision import fasterrcnn_resnet_c4 as build

    return build(**kwargs)


def maskrcnn_resnet_c4(pretrained: bool = False, **kwargs: Any) -> Any:
    """torchvision's ``MaskRCNN`` with our ResNet in the C4 layout
    (``resnet_backbones.integrations.torchvision.maskrcnn_resnet_c4``; e.g. ``name="resnet50"``,
    ``num_classes=91``, ``weights=PATH`` for the backbone)."""
    if pretrained:
        raise ValueError(
            "maskrcnn_resnet_c4: no weights are hosted; pass weights=PATH for the backbone"
        )
    from resnet_backbones.integrations.torchvision import maskrcnn_resnet_c4 as build

    return build(**kwargs)

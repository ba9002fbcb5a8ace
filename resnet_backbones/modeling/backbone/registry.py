"""Models by name, timm style: one decorator to register, ``list_models`` and ``create_model``."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, TypeVar

from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import did_you_mean

MODEL_REGISTRY = Registry("MODELS")
MODEL_REGISTRY.__doc__ = """
Named network builders (``resnet50``, ``resnet56_cifar``, ``preact_resnet164_cifar``, ...).
Each is a function ``(**kwargs) -> nn.Module``; register one with ``@register_model``.
"""

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Register a model builder under its function name."""
    MODEL_REGISTRY.register(fn)
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching the shell-style ``pattern``."""
    return sorted(name for name, _ in MODEL_REGISTRY if fnmatch.fnmatch(name, pattern))


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; an unknown name fails with the closest names."""
    if name not in MODEL_REGISTRY:
        raise KeyError(
            f"unknown model '{name}'{did_you_mean(name, list_models())} "
            f"(resnet_backbones.list_models() lists all)"
        )
    return MODEL_REGISTRY.get(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override its defaults (num_classes, ...)."""
    return get_model_builder(name)(**kwargs)

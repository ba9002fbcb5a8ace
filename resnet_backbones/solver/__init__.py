"""Optimizer, gradient clipping and learning-rate schedules (detectron2's ``SOLVER.*`` semantics)."""
from .build import (
    GradientClipType,
    auto_scale_workers,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from .lr_scheduler import (
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
    get_warmup_factor_at_iter,
)

__all__ = [
    "GradientClipType",
    "LRMultiplier",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "auto_scale_workers",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "get_warmup_factor_at_iter",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]

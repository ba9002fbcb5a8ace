"""Optimizer, gradient clipping and learning-rate schedules (detectron2's ``SOLVER.*`` semantics),
and the classification trainer's (:mod:`.classification`)."""

from .build import (
    GradientClipType,
    auto_scale_workers,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
    step_decay,
)
from .classification import (
    Schedule,
    build_classification_lr_scheduler,
    build_classification_optimizer,
    compute_schedule,
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
    "Schedule",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "auto_scale_workers",
    "build_classification_lr_scheduler",
    "build_classification_optimizer",
    "build_lr_scheduler",
    "build_optimizer",
    "compute_schedule",
    "get_default_optimizer_params",
    "get_warmup_factor_at_iter",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
    "step_decay",
]

"""Optimizer and LR schedule of the classification trainer (``get_cls_cfg``'s ``SOLVER.*`` keys).

The classification recipes count in epochs and treat norm and bias parameters as one group, so
they have their own builders; the schedule is built from the same pieces as the detector's
(:func:`~resnet_backbones.solver.build.step_decay`, :class:`WarmupParamScheduler`,
:class:`LRMultiplier`).

* :func:`compute_schedule`: epochs (or iterations) -> a :class:`Schedule` in iterations;
* :func:`build_classification_optimizer`: SGD (momentum, optional Nesterov) or AdamW, with
  ``SOLVER.WEIGHT_DECAY_NORM_BIAS`` for the 1-d (norm and bias) parameters;
* :func:`build_classification_lr_scheduler`: step decay or cosine, after a linear warmup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import torch
from fvcore.common.param_scheduler import CosineParamScheduler, ParamScheduler
from torch import nn

from .build import step_decay
from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "Schedule",
    "build_classification_lr_scheduler",
    "build_classification_optimizer",
    "compute_schedule",
]


def build_classification_optimizer(
    cfg: Any, model: nn.Module, base_lr: float
) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay, optional Nesterov) or AdamW; norm and bias parameters get
    ``SOLVER.WEIGHT_DECAY_NORM_BIAS`` when it is >= 0 (by default the same decay as the rest)."""
    s = cfg.SOLVER
    wd = float(s.WEIGHT_DECAY)
    wd_nb = wd if s.WEIGHT_DECAY_NORM_BIAS < 0 else float(s.WEIGHT_DECAY_NORM_BIAS)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": wd}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": wd_nb})
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    if s.OPTIMIZER == "SGD":
        return torch.optim.SGD(
            groups,
            lr=base_lr,
            momentum=float(s.MOMENTUM),
            nesterov=bool(s.NESTEROV),
            weight_decay=wd,
        )
    if s.OPTIMIZER == "AdamW":
        return torch.optim.AdamW(groups, lr=base_lr, weight_decay=wd)
    raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {s.OPTIMIZER!r}")


@dataclass
class Schedule:
    """The training schedule in iterations (derived from epochs, or given in iterations)."""

    iters_per_epoch: int
    max_iter: int
    steps: List[int]
    warmup_iters: int
    checkpoint_period: int
    eval_period: int
    base_lr: float
    batch_per_process: int

    def epoch_of(self, iteration: int) -> float:
        """The (fractional) epoch reached after ``iteration`` iterations."""
        return iteration / self.iters_per_epoch


def compute_schedule(cfg: Any, train_size: int, world_size: int) -> Schedule:
    """Iterations per epoch (``len(train) // BATCH_SIZE``, at least 1), length, LR steps,
    periods."""
    s = cfg.SOLVER
    batch = int(s.BATCH_SIZE)
    if batch <= 0 or batch % world_size:
        raise ValueError(
            f"SOLVER.BATCH_SIZE ({batch}) must be a positive multiple of the number "
            f"of processes ({world_size})"
        )
    ipe = max(1, train_size // batch)
    if int(s.MAX_ITER) > 0:
        max_iter = int(s.MAX_ITER)
        steps = [int(x) for x in s.STEPS]
        ckpt, evp = int(s.CHECKPOINT_PERIOD), int(cfg.TEST.EVAL_PERIOD)
        warmup = int(s.WARMUP_ITERS) or int(s.WARMUP_EPOCHS) * ipe
    else:
        if int(s.EPOCHS) <= 0:
            raise ValueError(
                f"SOLVER.EPOCHS must be positive (or set SOLVER.MAX_ITER), got {s.EPOCHS}"
            )
        max_iter = int(s.EPOCHS) * ipe
        steps = [int(round(e * ipe)) for e in s.STEP_EPOCHS]
        ckpt, evp = int(s.CHECKPOINT_PERIOD) * ipe, int(cfg.TEST.EVAL_PERIOD) * ipe
        warmup = int(s.WARMUP_ITERS) or int(s.WARMUP_EPOCHS) * ipe
    if steps != sorted(steps):
        raise ValueError(f"LR steps must be increasing, got {steps}")
    # steps that coincide (a short run) or fall outside the run are merged / dropped
    steps = sorted({x for x in steps if 0 < x < max_iter})
    base_lr = float(s.BASE_LR) if s.BASE_LR > 0 else 0.1 * batch / 256
    return Schedule(
        ipe,
        max_iter,
        steps,
        min(warmup, max_iter),
        max(ckpt, 0),
        max(evp, 0),
        base_lr,
        batch // world_size,
    )


class _Constant(ParamScheduler):
    """1.0 everywhere, including ``where == 1.0`` (fvcore's ConstantParamScheduler refuses it)."""

    def __call__(self, where: float) -> float:
        return 1.0


def build_classification_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    *,
    kind: str = "step",
    gamma: float = 0.1,
    warmup_factor: float = 0.1,
) -> LRMultiplier:
    """Per-iteration LR: step decay by ``gamma`` at ``schedule.steps`` or cosine to 0, after a
    linear warmup."""
    if kind == "step":
        sched: Any = (
            step_decay(gamma, schedule.steps, schedule.max_iter) if schedule.steps else _Constant()
        )
    elif kind == "cosine":
        sched = CosineParamScheduler(1.0, 0.0)
    else:
        raise ValueError(f"SOLVER.SCHEDULE must be 'step' or 'cosine', got {kind!r}")
    if schedule.warmup_iters > 0:
        sched = WarmupParamScheduler(
            sched, warmup_factor, schedule.warmup_iters / schedule.max_iter, "linear"
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=schedule.max_iter)

"""Learning-rate schedules with detectron2's semantics.

What ``build_lr_scheduler`` returns is an :class:`LRMultiplier`: a torch LR scheduler that sets
``lr = base_lr * multiplier(iteration / max_iter)`` for every parameter group, where the multiplier
is an fvcore ``ParamScheduler`` (a step or cosine schedule composed with a warmup by
:class:`WarmupParamScheduler`). ``scheduler.step()`` is called once per iteration, after the
optimizer step.

:class:`WarmupMultiStepLR` and :class:`WarmupCosineLR` are detectron2's older per-iteration
schedulers (same formulas), kept for code that constructs them directly:

* ``WarmupMultiStepLR``: ``base_lr * warmup(it) * gamma ** (number of milestones <= it)``;
* ``WarmupCosineLR``: ``base_lr * warmup(it) * 0.5 * (1 + cos(pi * it / max_iter))``;
* ``warmup(it)`` is 1 after ``warmup_iters``; before, ``warmup_factor`` ("constant") or the linear
  ramp ``warmup_factor * (1 - it / warmup_iters) + it / warmup_iters`` ("linear").
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Sequence

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

try:  # torch >= 2.0 names it LRScheduler; _LRScheduler remains as an alias
    from torch.optim.lr_scheduler import LRScheduler as _TorchLRScheduler
except ImportError:  # pragma: no cover
    from torch.optim.lr_scheduler import _LRScheduler as _TorchLRScheduler

__all__ = [
    "LRMultiplier",
    "WarmupParamScheduler",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
    "get_warmup_factor_at_iter",
]

WARMUP_METHODS = ("constant", "linear")


class WarmupParamScheduler(CompositeParamScheduler):
    """``scheduler`` preceded by a warmup over the first ``warmup_length`` fraction of training.

    The warmup starts at ``warmup_factor * scheduler(0)`` and, for ``"linear"``, ramps to
    ``scheduler(warmup_length)``; ``"constant"`` holds the start value. ``rescale_interval=True``
    compresses ``scheduler`` into the remaining ``1 - warmup_length`` of training; by default it
    keeps its own time axis (its value at 30% of training is the same with or without warmup).
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ) -> None:
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(
                f"warmup_length must be a fraction of training in [0, 1], got {warmup_length}"
            )
        end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(
                f"unknown warmup method {warmup_method!r}; expected one of {WARMUP_METHODS}"
            )
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1.0 - warmup_length],
        )


class LRMultiplier(_TorchLRScheduler):
    """A torch LR scheduler: ``lr_i = base_lr_i * multiplier(last_epoch / max_iter)``.

    ``last_epoch`` counts iterations (``step()`` once per iteration). The state dict holds only
    ``base_lrs`` and ``last_epoch``: the multiplier is rebuilt from the config, not pickled.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not isinstance(multiplier, ParamScheduler):
            raise TypeError(
                f"multiplier must be an fvcore ParamScheduler, got {type(multiplier).__name__}"
            )
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = int(max_iter)
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> Dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> List[float]:
        where = min(self.last_epoch / self._max_iter, 1.0)
        m = self._multiplier(where)
        return [base_lr * m for base_lr in self.base_lrs]


def get_warmup_factor_at_iter(
    method: str, iteration: int, warmup_iters: int, warmup_factor: float
) -> float:
    """detectron2's warmup multiplier at ``iteration`` (1.0 once ``iteration >= warmup_iters``)."""
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"unknown warmup method {method!r}; expected one of {WARMUP_METHODS}")


class WarmupMultiStepLR(_TorchLRScheduler):
    """Step decay by ``gamma`` at each of ``milestones`` (iterations), after a warmup."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing integers, got {milestones}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"unknown warmup method {warmup_method!r}; expected one of {WARMUP_METHODS}"
            )
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        w = get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        decay = self.gamma ** bisect.bisect_right(self.milestones, self.last_epoch)
        return [base_lr * w * decay for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()


class WarmupCosineLR(_TorchLRScheduler):
    """Half-cosine decay from ``base_lr`` to 0 over ``max_iters``, after a warmup."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"unknown warmup method {warmup_method!r}; expected one of {WARMUP_METHODS}"
            )
        self.max_iters = int(max_iters)
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        w = get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        cos = 0.5 * (1.0 + math.cos(math.pi * self.last_epoch / self.max_iters))
        return [base_lr * w * cos for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()

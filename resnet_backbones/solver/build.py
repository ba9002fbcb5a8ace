"""Optimizer, gradient clipping and LR schedule from the config (detectron2's ``SOLVER.*`` keys).

* :func:`build_optimizer`: SGD with ``MOMENTUM``/``NESTEROV``; one parameter group per distinct
  ``(lr, weight_decay)``: norm layers use ``WEIGHT_DECAY_NORM``, biases ``BASE_LR * BIAS_LR_FACTOR``
  and ``WEIGHT_DECAY_BIAS`` (``None``: ``WEIGHT_DECAY``); frozen parameters are left out.
* ``SOLVER.CLIP_GRADIENTS``: ``CLIP_TYPE`` ``"value"`` clamps every gradient element to
  ``[-CLIP_VALUE, CLIP_VALUE]``; ``"norm"`` rescales each parameter's gradient to a ``NORM_TYPE``
  norm of at most ``CLIP_VALUE`` (detectron2's per-parameter norm clipping); ``"full_model"``
  rescales all gradients together so that their joint norm is at most ``CLIP_VALUE``. Clipping
  runs inside ``optimizer.step()``, i.e. after AMP's unscaling.
* :func:`build_lr_scheduler`: ``LR_SCHEDULER_NAME`` ``WarmupMultiStepLR`` (``STEPS``, ``GAMMA``),
  ``WarmupCosineLR`` (to ``BASE_LR_END``) or ``WarmupStepWithFixedGammaLR`` (``NUM_DECAYS``),
  each after a ``WARMUP_ITERS``-long ``WARMUP_METHOD`` warmup from ``WARMUP_FACTOR``.
* :func:`auto_scale_workers`: ``REFERENCE_WORLD_SIZE`` linear scaling of batch, LR and schedule.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from enum import Enum
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Type

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "GradientClipType",
    "auto_scale_workers",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
    "step_decay",
]

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    torch.nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d and SyncBatchNorm
    torch.nn.GroupNorm,
    torch.nn.modules.instancenorm._InstanceNorm,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


_NORM_NAME = re.compile(r"Norm(\d[dD])?$")


def _is_norm(module: torch.nn.Module) -> bool:
    # torch's norm layers, plus custom ones named like them (``FrozenBatchNorm2d``, ``RMSNorm``)
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


class GradientClipType(str, Enum):
    VALUE = "value"
    NORM = "norm"
    FULL_MODEL = "full_model"


# ------------------------------------------------------------------------------ parameter groups
def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: Optional[float] = 1.0,
    weight_decay_bias: Optional[float] = None,
    lr_factor_func: Optional[Callable[[str], float]] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups of ``model`` with per-parameter hyper-parameters (detectron2's rules).

    A parameter's ``weight_decay`` is ``weight_decay_norm`` inside a norm layer (when given), else
    ``weight_decay``. Parameters named ``bias`` then get ``lr = base_lr * bias_lr_factor`` and
    ``weight_decay_bias`` (when given). ``overrides`` maps a parameter's own name (``"bias"``,
    ``"embedding"``) to hyper-parameters that win over everything else; ``lr_factor_func`` maps a
    full parameter name to an lr factor. Shared parameters appear once; frozen ones not at all.
    Groups with identical hyper-parameters are merged by :func:`reduce_param_groups`.
    """
    overrides = dict(overrides or {})
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("bias_lr_factor needs base_lr")
        overrides.setdefault("bias", {})["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        overrides.setdefault("bias", {})["weight_decay"] = weight_decay_bias
    defaults: Dict[str, float] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay

    params: List[Dict[str, Any]] = []
    seen: Set[torch.nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in seen:
                continue
            seen.add(value)
            hyper = dict(defaults)
            if _is_norm(module) and weight_decay_norm is not None:
                hyper["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                full_name = f"{module_name}.{name}" if module_name else name
                hyper["lr"] = hyper.get("lr", 0.0) * lr_factor_func(full_name)
            hyper.update(overrides.get(name, {}))
            params.append({"params": [value], **hyper})
    return reduce_param_groups(params)


def reduce_param_groups(groups: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge groups whose hyper-parameters are equal (order: first appearance; params keep
    order)."""
    merged: Dict[tuple, List[torch.nn.Parameter]] = defaultdict(list)
    for group in groups:
        hyper = tuple(sorted((k, v) for k, v in group.items() if k != "params"))
        merged[hyper].extend(group["params"])
    return [{"params": ps, **dict(hyper)} for hyper, ps in merged.items()]


# ------------------------------------------------------------------------------ gradient clipping
def _clip_fn(cfg_clip: Any) -> Callable[[Iterable[torch.Tensor]], None]:
    clip_type = GradientClipType(str(cfg_clip.CLIP_TYPE))
    value = float(cfg_clip.CLIP_VALUE)
    norm_type = float(cfg_clip.NORM_TYPE)
    if value <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {value}")

    if clip_type == GradientClipType.VALUE:

        def clip(params: Iterable[torch.Tensor]) -> None:
            torch.nn.utils.clip_grad_value_(list(params), value)
    elif clip_type == GradientClipType.NORM:

        def clip(params: Iterable[torch.Tensor]) -> None:
            for p in params:  # every parameter on its own, as detectron2 does
                torch.nn.utils.clip_grad_norm_(p, value, norm_type)
    else:

        def clip(params: Iterable[torch.Tensor]) -> None:
            torch.nn.utils.clip_grad_norm_(list(params), value, norm_type)

    return clip


def maybe_add_gradient_clipping(
    cfg: Any, optimizer: Type[torch.optim.Optimizer]
) -> Type[torch.optim.Optimizer]:
    """``optimizer`` (a class) or, with ``SOLVER.CLIP_GRADIENTS.ENABLED``, a subclass clipping in
    ``step``."""
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if not clip_cfg.ENABLED:
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("maybe_add_gradient_clipping expects an optimizer class, not an instance")
    clip = _clip_fn(clip_cfg)

    def step(self: torch.optim.Optimizer, closure: Optional[Callable] = None) -> Any:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        clip(params)
        return optimizer.step(self, closure)

    return type(optimizer.__name__ + "WithGradientClip", (optimizer,), {"step": step})


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD over :func:`get_default_optimizer_params` with the config's hyper-parameters."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    if not params:
        raise ValueError("the model has no trainable parameters (everything frozen?)")
    sgd = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
    return sgd(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )


# ------------------------------------------------------------------------------ LR schedule
def step_decay(gamma: float, steps: Sequence[int], max_iter: int) -> MultiStepParamScheduler:
    """LR multiplier ``gamma ** k`` after the k-th of ``steps`` (iterations), over ``max_iter``.

    The step schedule of both the detector (``WarmupMultiStepLR``) and the classifier.
    """
    return MultiStepParamScheduler(
        values=[gamma**k for k in range(len(steps) + 1)],
        milestones=list(steps),
        num_updates=max_iter,
    )


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """The per-iteration LR schedule of ``SOLVER.LR_SCHEDULER_NAME`` with warmup."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    max_iter = int(s.MAX_ITER)
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    if name == "WarmupMultiStepLR":
        steps = [int(x) for x in s.STEPS if x < max_iter]
        if len(steps) != len(s.STEPS):
            logger.warning(
                "SOLVER.STEPS %s has values >= SOLVER.MAX_ITER %d; they are ignored",
                list(s.STEPS),
                max_iter,
            )
        if any(x <= 0 for x in steps) or steps != sorted(set(steps)):
            raise ValueError(
                f"SOLVER.STEPS must be strictly increasing positive iterations, got {list(s.STEPS)}"
            )
        sched = step_decay(s.GAMMA, steps, max_iter)
    elif name == "WarmupCosineLR":
        end_value = s.BASE_LR_END / s.BASE_LR if s.BASE_LR else 0.0
        if not 0.0 <= end_value <= 1.0:
            raise ValueError(
                f"SOLVER.BASE_LR_END must be in [0, BASE_LR], got {s.BASE_LR_END} "
                f"(BASE_LR {s.BASE_LR})"
            )
        sched = CosineParamScheduler(1.0, end_value)
    elif name == "WarmupStepWithFixedGammaLR":
        sched = StepWithFixedGammaParamScheduler(
            base_value=1.0, gamma=s.GAMMA, num_decays=s.NUM_DECAYS, num_updates=max_iter
        )
    else:
        raise ValueError(
            f"unknown SOLVER.LR_SCHEDULER_NAME {name!r}; expected 'WarmupMultiStepLR', "
            f"'WarmupCosineLR' or 'WarmupStepWithFixedGammaLR'"
        )
    sched = WarmupParamScheduler(
        sched,
        s.WARMUP_FACTOR,
        min(s.WARMUP_ITERS / max_iter, 1.0),
        s.WARMUP_METHOD,
        s.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)


# ------------------------------------------------------------------------------ world-size scaling
def auto_scale_workers(cfg: Any, num_workers: int) -> Any:
    """A copy of ``cfg`` scaled from ``SOLVER.REFERENCE_WORLD_SIZE`` workers to ``num_workers``.

    With ratio ``r = num_workers / REFERENCE_WORLD_SIZE``: ``IMS_PER_BATCH`` and ``BASE_LR`` are
    multiplied by ``r`` (linear scaling rule); ``MAX_ITER``, ``WARMUP_ITERS``, ``STEPS``,
    ``CHECKPOINT_PERIOD`` and ``TEST.EVAL_PERIOD`` are divided by ``r`` (rounded), so a run sees the
    same number of images per schedule phase. ``REFERENCE_WORLD_SIZE`` 0 (default) or equal to
    ``num_workers`` returns ``cfg`` unchanged. The batch must split evenly over the workers.
    """
    old = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
    if old == 0 or old == num_workers:
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    ratio = num_workers / old
    bs = cfg.SOLVER.IMS_PER_BATCH = int(round(cfg.SOLVER.IMS_PER_BATCH * ratio))
    if bs % num_workers != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH scaled to {bs} for {num_workers} workers "
            f"(REFERENCE_WORLD_SIZE {old}) does not split evenly over the workers"
        )
    lr = cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * ratio
    max_iter = cfg.SOLVER.MAX_ITER = int(round(cfg.SOLVER.MAX_ITER / ratio))
    warmup = cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS / ratio))
    cfg.SOLVER.STEPS = tuple(int(round(s / ratio)) for s in cfg.SOLVER.STEPS)
    cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / ratio))
    cfg.SOLVER.CHECKPOINT_PERIOD = int(round(cfg.SOLVER.CHECKPOINT_PERIOD / ratio))
    cfg.SOLVER.REFERENCE_WORLD_SIZE = num_workers
    logger.info(
        "Auto-scaling the config to %d workers (reference %d): IMS_PER_BATCH=%d, BASE_LR=%g, "
        "MAX_ITER=%d, WARMUP_ITERS=%d, STEPS=%s",
        num_workers,
        old,
        bs,
        lr,
        max_iter,
        warmup,
        cfg.SOLVER.STEPS,
    )
    if frozen:
        cfg.freeze()
    return cfg

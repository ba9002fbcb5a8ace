"""The training loop: hooks around an iteration-based loop (detectron2's ``TrainerBase`` API).

* :class:`HookBase`: ``before_train``, ``before_step``, ``after_backward``, ``after_step``,
  ``after_train``, and an optional ``state_dict`` saved with the trainer.
* :class:`TrainerBase`: ``train(start_iter, max_iter)`` runs the hooks around ``run_step`` inside an
  :class:`~resnet_backbones.utils.events.EventStorage`. ``trainer.iter`` is the iteration being
  run; after a complete run it equals ``max_iter`` (``trainer.finished``). ``request_stop()``
  ends the loop cleanly after the current iteration (used by the signal handler hook).
* :class:`SimpleTrainer`: one SGD step per iteration: next batch, ``loss_dict = model(batch)``,
  losses summed, metrics gathered from every rank (all ranks raise the same
  ``FloatingPointError`` if any loss term is NaN/inf), backward, ``optimizer.step()``.
* :class:`AMPTrainer`: the same under ``torch.autocast`` with a ``GradScaler`` (float16) or
  bfloat16.

Random streams: the trainer state holds the RNG states of every rank (python, numpy, torch CPU and
CUDA), captured collectively right before a checkpoint is written (:meth:`capture_rng_states`);
after ``load_state_dict`` they are restored at the start of ``train`` once the data iterator
exists, so a resumed run draws exactly the numbers the interrupted one would have drawn.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from typing import Any, ContextManager, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import torch
from torch import nn

from ..precision import check_amp_device, parse_amp_dtype
from ..utils import comm
from ..utils.env import get_rng_states, set_rng_states
from ..utils.events import EventStorage, get_event_storage
from .ddp import unwrap_model

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer"]

logger = logging.getLogger(__name__)


class HookBase:
    """Called by :class:`TrainerBase` around every iteration; ``self.trainer`` is set on
    registration.

    Hooks are run in registration order. ``state_dict`` (optional) is stored in checkpoints under
    the hook's class name and given back to ``load_state_dict`` on resume.
    """

    trainer: "TrainerBase" = None  # type: ignore[assignment]

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        pass


class TrainerBase:
    """An iteration-based loop with hooks. Subclasses implement :meth:`run_step`.

    Attributes:
        iter: the current iteration (``max_iter`` once training has completed).
        start_iter: the first iteration of this ``train`` call.
        max_iter: iterations ``[start_iter, max_iter)`` are run.
        storage: the :class:`EventStorage` open during training.
    """

    #: whether ``state_dict`` carries the RNG states (off for a trainer nested in another one)
    include_rng_states: bool = True

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None
        self._stop_reason: Optional[str] = None
        self._rng_capture: Optional[Dict[str, Any]] = (
            None  # {"iteration": i, "states": [rank0, ...]}
        )
        self._pending_rng_states: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------ hooks
    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append hooks (``None`` entries are skipped); they run in the order given."""
        for h in hooks:
            if h is None:
                continue
            if not isinstance(h, HookBase):
                raise TypeError(f"hooks must be HookBase instances, got {type(h).__name__}")
            # a weak proxy: the trainer owns its hooks, hooks must not keep it alive
            h.trainer = weakref.proxy(self)
            self._hooks.append(h)

    @property
    def hooks(self) -> List[HookBase]:
        return list(self._hooks)

    # ------------------------------------------------------------------------------ loop
    @property
    def finished(self) -> bool:
        """Whether the last ``train`` call ran every iteration up to ``max_iter``."""
        return self.iter >= self.max_iter

    def request_stop(self, reason: str) -> None:
        """End the loop after the current iteration (its ``after_step`` hooks still run)."""
        self._stop_reason = reason

    @property
    def stop_reason(self) -> Optional[str]:
        return self._stop_reason

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks."""
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = int(start_iter)
        self.max_iter = int(max_iter)
        self._stop_reason = None
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                self._restore_pending_rng_states()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self._stop_reason is not None and self.iter < max_iter - 1:
                        logger.info("Stopping after iteration %d: %s", self.iter, self._stop_reason)
                        break
                else:
                    # every iteration ran: iter == max_iter tells after_train hooks training
                    # completed
                    self.iter = max_iter
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ RNG states
    def capture_rng_states(self) -> None:
        """Record every rank's RNG states for the next checkpoint (a collective call: all ranks)."""
        self._rng_capture = {"iteration": self.iter, "states": comm.all_gather(get_rng_states())}

    def _restore_pending_rng_states(self) -> None:
        if self._pending_rng_states is not None:
            set_rng_states(self._pending_rng_states)
            self._pending_rng_states = None

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        ret: Dict[str, Any] = {"iteration": self.iter}
        hooks_state = {}
        for h in self._hooks:
            sd = h.state_dict()
            if sd:
                name = type(h).__qualname__
                if name in hooks_state:
                    logger.warning(
                        "more than one hook of class %s has state; only the first is saved", name
                    )
                    continue
                hooks_state[name] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        if not self.include_rng_states:
            pass
        elif self._rng_capture is not None and self._rng_capture["iteration"] == self.iter:
            ret["rng_states"] = self._rng_capture["states"]
        elif comm.get_world_size() == 1:
            ret["rng_states"] = [get_rng_states()]
        else:
            logger.warning(
                "checkpoint at iteration %d is saved without RNG states "
                "(call capture_rng_states() on all ranks before saving); "
                "a run resumed from it will not draw the same random numbers",
                self.iter,
            )
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.iter = int(state_dict["iteration"])
        by_name = {type(h).__qualname__: h for h in reversed(self._hooks)}
        for key, value in state_dict.get("hooks", {}).items():
            if key in by_name:
                by_name[key].load_state_dict(value)
            else:
                logger.warning(
                    "checkpoint has state for hook '%s', which is not registered; ignored", key
                )
        states = state_dict.get("rng_states")
        world, rank = comm.get_world_size(), comm.get_rank()
        if not self.include_rng_states:
            pass
        elif states is None:
            logger.warning(
                "checkpoint has no RNG states; the resumed run will draw different random numbers"
            )
        elif len(states) != world:
            logger.warning(
                "checkpoint holds RNG states of %d processes, this run has %d; "
                "RNG states not restored",
                len(states),
                world,
            )
        else:
            self._pending_rng_states = states[rank]


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration on the sum of the model's losses.

    ``model(batch)`` must return a dict of scalar loss tensors (or a single scalar tensor). With
    several processes, ``model`` is usually a ``DistributedDataParallel`` and ``data_loader``
    yields this rank's share of the global batch.

    Args:
        gather_metric_period: gather and log the loss terms every this many iterations (the
            finiteness check runs every iteration on every rank regardless).
        zero_grad_before_forward: call ``optimizer.zero_grad()`` before the forward pass instead
            of after it (e.g. when the forward itself accumulates gradients).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.gather_metric_period = int(gather_metric_period)
        self.zero_grad_before_forward = zero_grad_before_forward
        self._data_loader_iter_obj: Optional[Iterator] = None

    # ------------------------------------------------------------------------------ data
    @property
    def _data_loader_iter(self) -> Iterator:
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(
        self, data_loader: Optional[Iterable] = None, skip_batches: int = 0
    ) -> None:
        """Use ``data_loader`` (default: the current one) from its start, minus ``skip_batches``
        batches.

        Skipping consumes batches; a loader offering ``skip_batches(n)`` or ``start_iter`` handling
        of its own should be rebuilt positioned instead.
        """
        if data_loader is not None:
            self.data_loader = data_loader
        self._data_loader_iter_obj = None
        if skip_batches > 0:
            it = self._data_loader_iter
            for _ in range(skip_batches):
                next(it)

    def prepare_data_iter(self) -> None:
        """Create the data iterator now (before RNG states are restored), not lazily in the first
        step."""
        _ = self._data_loader_iter

    def before_train(self) -> None:
        super().before_train()
        self.prepare_data_iter()

    # ------------------------------------------------------------------------------ step
    def _forward(self, data: Any) -> Dict[str, torch.Tensor]:
        loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            return {"total_loss": loss_dict}
        if not isinstance(loss_dict, Mapping) or not loss_dict:
            raise TypeError(
                "in training mode the model must return a non-empty dict of losses, "
                f"got {type(loss_dict).__name__}"
            )
        return dict(loss_dict)

    def run_step(self) -> None:
        """One iteration: load a batch, forward (under :meth:`_autocast`), log and check the loss
        terms, backward (:meth:`_backward`), optimizer step (:meth:`_optimizer_step`)."""
        if not self.model.training:
            raise RuntimeError(
                f"[{type(self).__name__}] the model is in eval mode; "
                "call model.train() before training"
            )
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with self._autocast():
            loss_dict = self._forward(data)
            losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self._write_metrics(loss_dict, data_time)
        self._backward(losses)
        self.after_backward()
        self._optimizer_step()

    def _autocast(self) -> ContextManager[Any]:
        """The context of the forward pass (none here; :class:`AMPTrainer`: autocast)."""
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    # ------------------------------------------------------------------------------ metrics
    def _write_metrics(
        self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = ""
    ) -> None:
        """Gather the loss terms from every rank, check them, and log them on the main process."""
        local = {k: float(v.detach().float().cpu().item()) for k, v in loss_dict.items()}
        gather = (self.iter + 1) % self.gather_metric_period == 0 or self.iter == self.max_iter - 1
        if not gather:
            self._check_finite([local], ranks=[comm.get_rank()])
            return
        local["data_time"] = data_time
        all_metrics = comm.all_gather(local)
        self._check_finite(all_metrics, ranks=list(range(len(all_metrics))))
        if comm.is_main_process():
            storage = get_event_storage()
            storage.put_scalar("data_time", max(m.pop("data_time") for m in all_metrics))
            keys = list(all_metrics[0].keys())
            means = {k: sum(m[k] for m in all_metrics) / len(all_metrics) for k in keys}
            total = sum(means.values())
            storage.put_scalar(f"{prefix}total_loss", total)
            if len(means) > 1 or "total_loss" not in means:
                storage.put_scalars(**{f"{prefix}{k}": v for k, v in means.items()})

    def _check_finite(self, all_metrics: List[Dict[str, float]], ranks: List[int]) -> None:
        bad = [
            f"{k}={v} (rank {r})"
            for r, m in zip(ranks, all_metrics)
            for k, v in m.items()
            if k != "data_time" and not math.isfinite(v)
        ]
        if bad:
            terms = ", ".join(f"{k}={v:.6g}" for k, v in all_metrics[0].items() if k != "data_time")
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={self.iter}: {', '.join(bad)}. "
                f"Loss terms (rank {ranks[0]}): {terms}. "
                "Training stopped before the weights were updated "
                "(lower SOLVER.BASE_LR, check the data, or enable SOLVER.CLIP_GRADIENTS)."
            )

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["optimizer"] = self.optimizer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` with automatic mixed precision.

    The forward pass runs under ``torch.autocast(device_type, dtype=precision)``. float16 uses a
    ``GradScaler`` (loss scaling; steps with inf/NaN gradients are skipped and the scale lowered);
    bfloat16 needs no scaling. ``device_type`` defaults to the device of the model's parameters.
    float16 autocast needs CUDA; on CPU use bfloat16.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Optional[Any] = None,
        precision: Union[str, torch.dtype] = torch.float16,
        log_grad_scaler: bool = False,
        device_type: Optional[str] = None,
    ) -> None:
        super().__init__(
            model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward
        )
        self.precision = parse_amp_dtype(precision, "AMPTrainer precision")
        if device_type is None:
            p = next(iter(unwrap_model(model).parameters()), None)
            device_type = p.device.type if p is not None else "cpu"
        self.device_type = device_type
        check_amp_device(self.device_type, self.precision, "AMPTrainer precision")
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(
                self.device_type, enabled=self.precision == torch.float16
            )
        self.grad_scaler = grad_scaler
        self.log_grad_scaler = log_grad_scaler

    def _autocast(self) -> ContextManager[Any]:
        return torch.autocast(device_type=self.device_type, dtype=self.precision)

    def _backward(self, losses: torch.Tensor) -> None:
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler and comm.is_main_process():
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())

    def _optimizer_step(self) -> None:
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])

"""Training hooks (detectron2's names and behaviour, plus graceful stop on signals).

Default order (see ``DefaultTrainer.build_hooks``): :class:`IterationTimer`, :class:`LRScheduler`,
:class:`PeriodicCheckpointer`, :class:`StopOnSignal`, :class:`EvalHook`, :class:`PeriodicWriter`
(writers last, so that they see the evaluation results of the same iteration).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch
from fvcore.common.checkpoint import Checkpointer
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvPeriodicCheckpointer
from fvcore.common.timer import Timer

from ..utils import comm
from ..utils.env import preserve_rng_states
from ..utils.events import EventWriter
from .train_loop import HookBase

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "PeriodicWriter",
    "PeriodicCheckpointer",
    "LRScheduler",
    "EvalHook",
    "StopOnSignal",
    "TrainingInterrupted",
    "flatten_results_dict",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook made of plain functions ``f(trainer)``."""

    def __init__(
        self,
        *,
        before_train: Optional[Callable] = None,
        after_train: Optional[Callable] = None,
        before_step: Optional[Callable] = None,
        after_step: Optional[Callable] = None,
    ) -> None:
        self._before_train, self._after_train = before_train, after_train
        self._before_step, self._after_step = before_step, after_step

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)
        # the functions may hold the trainer (a closure); drop them to break the cycle
        self._before_train = self._after_train = self._before_step = self._after_step = None

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """Put the seconds of every iteration into the storage as ``time``; log the overall speed at
    the end.

    The first ``warmup_iter`` iterations of a ``train`` call are not counted (they include
    one-time setup costs). Register it first so that the other hooks' time is excluded as far as
    possible.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = int(warmup_iter)
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        total = time.perf_counter() - self._start_time
        counted = self._total_timer.seconds()
        hooks_time = total - counted
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if self.trainer.finished:
            num_iter -= 1  # storage.iter == max_iter after a complete run
        if num_iter > 0 and counted > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                num_iter,
                str(datetime.timedelta(seconds=int(counted))),
                counted / num_iter,
            )
        logger.info(
            "Total training time: %s (%s on hooks)",
            str(datetime.timedelta(seconds=int(total))),
            str(datetime.timedelta(seconds=int(hooks_time))),
        )

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if done > self._warmup_iter:
            self.trainer.storage.put_scalars(time=self._step_timer.seconds())
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """Run the writers every ``period`` iterations, at the last iteration and after training."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        for w in writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"writers must be EventWriter instances, got {type(w).__name__}")
        self._writers = list(writers)
        self._period = int(period)

    def after_step(self) -> None:
        itr = self.trainer.iter
        if (itr + 1) % self._period == 0 or itr == self.trainer.max_iter - 1:
            for w in self._writers:
                w.write()

    def after_train(self) -> None:
        for w in self._writers:
            w.write()  # e.g. the final evaluation, or the last iterations of an interrupted run
            w.close()


class PeriodicCheckpointer(_FvPeriodicCheckpointer, HookBase):
    """Save ``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` at the end.

    Register it on *every* rank: before a save, the RNG states of all ranks are gathered
    (a collective); only the checkpointer of the main process writes files. The file holds the
    model, the checkpointables (the trainer: optimizer, LR scheduler, grad scaler, RNG states) and
    ``iteration``.
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        period: int,
        max_iter: Optional[int] = None,
        max_to_keep: Optional[int] = None,
        file_prefix: str = "model",
    ) -> None:
        if int(period) <= 0:
            raise ValueError(
                f"SOLVER.CHECKPOINT_PERIOD must be a positive number of iterations, got {period}"
            )
        super().__init__(
            checkpointer,
            period,
            max_iter=max_iter,
            max_to_keep=max_to_keep,
            file_prefix=file_prefix,
        )

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def will_save(self, iteration: int) -> bool:
        return (iteration + 1) % self.period == 0 or (
            self.max_iter is not None and iteration >= self.max_iter - 1
        )

    def after_step(self) -> None:
        itr = self.trainer.iter
        if self.will_save(itr):
            self.trainer.capture_rng_states()
            self.step(itr)
            self.trainer._last_checkpoint_iter = itr  # type: ignore[attr-defined]


class LRScheduler(HookBase):
    """Put the learning rate into the storage as ``lr`` and step the scheduler after every
    iteration.

    ``lr`` is that of the parameter group with the most parameters (the "main" group when biases or
    norms have their own). The scheduler's state is saved with the trainer.
    """

    def __init__(
        self, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Optional[Any] = None
    ) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._best_group: Optional[int] = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optimizer if self._optimizer is not None else self.trainer.optimizer

    @property
    def scheduler(self) -> Any:
        return self._scheduler if self._scheduler is not None else self.trainer.scheduler

    def before_train(self) -> None:
        groups = self.optimizer.param_groups
        self._best_group = max(range(len(groups)), key=lambda i: len(groups[i]["params"]))

    def after_step(self) -> None:
        lr = self.optimizer.param_groups[self._best_group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        logger.info("Loading the LR scheduler state from the checkpoint")
        self.scheduler.load_state_dict(state_dict)


def flatten_results_dict(results: Mapping) -> Dict[str, Any]:
    """``{"bbox": {"AP": 1}}`` -> ``{"bbox/AP": 1}``."""
    flat: Dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for k, v in flatten_results_dict(value).items():
                flat[f"{key}/{k}"] = v
        else:
            flat[key] = value
    return flat


class EvalHook(HookBase):
    """Run ``eval_function()`` every ``eval_period`` iterations and after the last one.

    The results (a nested dict of numbers, e.g. ``{"bbox": {"AP": 41.2, ...}}``) are put into the
    storage as ``bbox/AP`` etc., so they reach ``metrics.json`` and TensorBoard. The evaluation
    runs with all random streams saved and restored: it does not change what training draws next
    (evaluating or not, and resuming or not, give the same training run).
    """

    def __init__(
        self, eval_period: int, eval_function: Callable[[], Any], eval_after_train: bool = True
    ) -> None:
        self._period = int(eval_period)
        self._func: Optional[Callable[[], Any]] = eval_function
        self._eval_after_train = eval_after_train
        self.last_results: Any = None

    def _do_eval(self) -> None:
        with preserve_rng_states():
            results = self._func()
        self.last_results = results
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(
                    "eval_function should return a dict of results, "
                    f"got {type(results).__name__}: {results!r}"
                )
            flat = flatten_results_dict(results)
            for k, v in flat.items():
                try:
                    float(v)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        "[EvalHook] eval_function should return a nested dict of numbers; "
                        f"'{k}' is {v!r}"
                    ) from e
            numbers = {k: float(v) for k, v in flat.items() if not math.isnan(float(v))}
            self.trainer.storage.put_scalars(**numbers, smoothing_hint=False)
        # evaluation of different ranks may finish at different times: line them up again
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if (
            self._period > 0
            and next_iter % self._period == 0
            and next_iter != self.trainer.max_iter
        ):
            if self.trainer.stop_reason is None:  # stopping on a signal: don't spend the grace time
                self._do_eval()

    def after_train(self) -> None:
        if self._eval_after_train and self.trainer.finished:
            self._do_eval()
        self._func = None  # may hold references to big objects (the model, data loaders)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint (``--resume`` continues it).

    A ``KeyboardInterrupt`` so that generic ``except Exception`` blocks do not swallow it.
    ``exit_code`` is ``128 + signal number`` (the shell's convention).
    """

    def __init__(self, signum: int, iteration: int, checkpoint: Optional[str]) -> None:
        name = signal.Signals(signum).name
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(
            f"training stopped by {name} after iteration {iteration}{where}; "
            "run again with --resume to continue"
        )
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum


class StopOnSignal(HookBase):
    """On SIGTERM/SIGINT: finish the current iteration, save a checkpoint, stop training.

    The handlers are installed for the duration of ``train`` (main thread only). With several
    processes the stop is agreed on by all ranks after every iteration (a tiny all-reduce), so
    they all save the same iteration and stop together. A second SIGINT more than 2 seconds
    after the first interrupts at once (``KeyboardInterrupt``), as an impatient Ctrl-C expects.
    After training, ``trainer.train`` raises :class:`TrainingInterrupted`.

    Args:
        checkpointer: the checkpointer used for the stop checkpoint ``{file_prefix}_{iter:07d}``.
        signals: which signals trigger a graceful stop.
    """

    def __init__(
        self,
        checkpointer: Checkpointer,
        signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT),
        file_prefix: str = "model",
    ) -> None:
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.file_prefix = file_prefix
        self._received: Optional[int] = None
        self._first_time = 0.0
        self._previous: Dict[int, Any] = {}
        self._group: Any = None
        self.interrupted: Optional[TrainingInterrupted] = None

    def _handler(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self._received is not None:
            if signum == signal.SIGINT and now - self._first_time > 2.0:
                raise KeyboardInterrupt
            return
        self._received, self._first_time = signum, now
        # logging from a signal handler could deadlock on the handler's lock: write directly
        try:
            os.write(
                2,
                (
                    f"[rank {comm.get_rank()}] received {signal.Signals(signum).name}: "
                    "saving a checkpoint after the current iteration, then stopping\n"
                ).encode(),
            )
        except OSError:
            pass

    def before_train(self) -> None:
        self._received = None
        self.interrupted = None
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        else:
            logger.warning(
                "training runs outside the main thread: no graceful stop on %s", self.signals
            )
        if comm.get_world_size() > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def _restore_handlers(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _agreed_signal(self) -> int:
        local = self._received or 0
        if comm.get_world_size() == 1:
            return local
        import torch.distributed as dist

        t = torch.tensor([local], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
        return int(t.item())

    def after_step(self) -> None:
        signum = self._agreed_signal()
        if not signum:
            return
        trainer = self.trainer
        itr = trainer.iter
        name = f"{self.file_prefix}_{itr:07d}"
        if getattr(trainer, "_last_checkpoint_iter", None) != itr:
            trainer.capture_rng_states()
            self.checkpointer.save(name, iteration=itr)
            trainer._last_checkpoint_iter = itr  # type: ignore[attr-defined]
        path = (
            os.path.join(self.checkpointer.save_dir, name + ".pth")
            if self.checkpointer.save_dir
            else None
        )
        self.interrupted = TrainingInterrupted(signum, itr, path)
        trainer.request_stop(f"received {signal.Signals(signum).name}")

    def after_train(self) -> None:
        self._restore_handlers()

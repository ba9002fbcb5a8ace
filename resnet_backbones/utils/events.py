"""Training events: the per-run metric store and the writers that log it (detectron2's API).

:class:`EventStorage` keeps, for every scalar name, the history of ``(value, iteration)`` pairs
(fvcore ``HistoryBuffer``) plus a "smoothing hint" (whether writers should print a windowed
median or the raw latest value). Code running inside a trainer reaches it with
:func:`get_event_storage`. Writers read it every few iterations:

* :class:`JSONWriter` appends one JSON object per logged iteration to ``metrics.json``
  (``{"iteration": 19, "total_loss": ..., "lr": ..., "bbox/AP": ...}``);
* :class:`TensorboardXWriter` writes TensorBoard event files through ``torch.utils.tensorboard``;
* :class:`CommonMetricPrinter` prints one console line with the ETA, the iteration, every loss
  (median of the last 20 values), the time per iteration, the data loading time, the learning
  rate and the peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the peak resident
  set size of the process).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = [
    "EventStorage",
    "EventWriter",
    "JSONWriter",
    "TensorboardXWriter",
    "CommonMetricPrinter",
    "get_event_storage",
    "has_event_storage",
]

_CURRENT_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The innermost :class:`EventStorage` in use (raises if called outside
    ``with EventStorage()``)."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context "
            "(the trainer opens one around training)"
        )
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Whether a storage is active (code that logs optionally can check this first)."""
    return bool(_CURRENT_STORAGE_STACK)


class EventStorage:
    """Scalars (with history), images and histograms produced during training."""

    def __init__(self, start_iter: int = 0) -> None:
        self._history: Dict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = int(start_iter)
        self._current_prefix = ""
        self._vis_data: List[Tuple[str, Any, int]] = []
        self._histograms: List[Dict[str, Any]] = []

    # ----------------------------------------------------------------------------- scalars
    def put_scalar(
        self, name: str, value: Any, smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        """Record ``value`` for ``name`` at ``cur_iter`` (default: the current iteration).

        ``smoothing_hint=True`` asks writers to print a windowed median (losses); ``False`` the
        raw value (learning rate, evaluation results). A name keeps the hint it was first put with.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing = self._smoothing_hints.get(name)
        if existing is None:
            self._smoothing_hints[name] = smoothing_hint
        elif existing != smoothing_hint:
            raise ValueError(
                f"scalar '{name}' was put with smoothing_hint={existing}, now {smoothing_hint}"
            )

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: Any
    ) -> None:
        """``put_scalar`` for every keyword
        (``storage.put_scalars(loss_cls=0.3, loss_box_reg=0.1)``)."""
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of ``name`` (``KeyError`` if it was never put)."""
        if name not in self._history:
            raise KeyError(f"no history for metric '{name}'")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``{name: (latest value, iteration it was put at)}``."""
        return dict(self._latest_scalars)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like :meth:`latest`, but smoothed names give the median of their recent values.

        The window covers the last ``window_size`` *iterations*: values put at older iterations
        (e.g. before a writer's previous period) are not mixed in.
        """
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(self.count_samples(name, window_size))
            result[name] = (value, itr)
        return result

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """How many of the last values of ``name`` were put within the last ``window_size``
        iterations."""
        values = self._history[name].values()
        if not values:
            return 0
        last_iter = values[-1][1]
        count = 0
        for _, itr in reversed(values):
            if itr <= last_iter - window_size:
                break
            count += 1
        return count

    def smoothing_hints(self) -> Dict[str, bool]:
        return dict(self._smoothing_hints)

    # ------------------------------------------------------------------ images & histograms
    def put_image(self, img_name: str, img_tensor: torch.Tensor) -> None:
        """A CHW float image in [0, 1] for TensorBoard (cleared after every write)."""
        self._vis_data.append((img_name, img_tensor, self._iter))

    def clear_images(self) -> None:
        self._vis_data = []

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """A histogram of ``hist_tensor`` for TensorBoard (cleared after every write)."""
        t = hist_tensor.detach().float().cpu()
        lo, hi = t.min().item(), t.max().item()
        counts = torch.histc(t, bins=bins, min=lo, max=hi)
        limits = torch.linspace(lo, hi, bins + 1)[1:]
        self._histograms.append(
            dict(
                tag=hist_name,
                min=lo,
                max=hi,
                num=float(t.numel()),
                sum=float(t.sum()),
                sum_squares=float((t**2).sum()),
                bucket_limits=limits.tolist(),
                bucket_counts=counts.tolist(),
                global_step=self._iter,
            )
        )

    def clear_histograms(self) -> None:
        self._histograms = []

    # ---------------------------------------------------------------------------- iteration
    def step(self) -> None:
        """Advance the iteration counter (the trainer sets ``iter`` directly instead)."""
        self._iter += 1

    @property
    def iter(self) -> int:
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    @property
    def iteration(self) -> int:  # detectron2 alias
        return self._iter

    # ---------------------------------------------------------------------------- contexts
    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert _CURRENT_STORAGE_STACK and _CURRENT_STORAGE_STACK[-1] is self
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix every scalar put inside the block with ``name/``."""
        old = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old


# ----------------------------------------------------------------------------------- writers
class EventWriter:
    """Base class of the writers run by the ``PeriodicWriter`` hook."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _new_entries_by_iter(
    storage: EventStorage, last_written: int, window_size: int
) -> Dict[int, Dict[str, float]]:
    by_iter: Dict[int, Dict[str, float]] = defaultdict(dict)
    for name, (value, itr) in storage.latest_with_smoothing_hint(window_size).items():
        if itr > last_written:
            by_iter[itr][name] = value
    return by_iter


class JSONWriter(EventWriter):
    """Append one JSON line per logged iteration to ``json_file`` (detectron2's ``metrics.json``).

    Each line is ``{"iteration": i, name: value, ...}`` with every scalar put at iteration ``i``
    since the previous write (smoothed names: the median over ``window_size`` iterations).
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        self._path = json_file
        self._file: Optional[Any] = None  # opened (append) at the first write
        self._window_size = window_size
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        by_iter = _new_entries_by_iter(storage, self._last_write, self._window_size)
        if self._file is None:
            os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
            self._file = open(self._path, "a", encoding="utf-8")
        for itr in sorted(by_iter):
            self._file.write(json.dumps({"iteration": itr, **by_iter[itr]}, sort_keys=True) + "\n")
        if by_iter:
            self._last_write = max(by_iter)
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError:
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorboardXWriter(EventWriter):
    """Write scalars (and images/histograms put into the storage) as TensorBoard event files.

    Extra keyword arguments go to ``torch.utils.tensorboard.SummaryWriter``. The event file is
    created at the first write; setting ``purge_step`` before that makes TensorBoard discard the
    events at and after that step from earlier runs in ``log_dir`` (a resumed run recomputes them).
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter  # fail early if tensorboard is missing

        self._summary_writer_cls = SummaryWriter
        self._log_dir = log_dir
        self._kwargs = kwargs
        self.purge_step: Optional[int] = kwargs.pop("purge_step", None)
        self._window_size = window_size
        self._writer: Optional[Any] = None
        self._last_write = -1

    def _get_writer(self) -> Any:
        if self._writer is None:
            self._writer = self._summary_writer_cls(
                self._log_dir, purge_step=self.purge_step, **self._kwargs
            )
        return self._writer

    def write(self) -> None:
        storage = get_event_storage()
        writer = self._get_writer()
        by_iter = _new_entries_by_iter(storage, self._last_write, self._window_size)
        for itr in sorted(by_iter):
            for name, value in by_iter[itr].items():
                writer.add_scalar(name, value, itr)
        if by_iter:
            self._last_write = max(by_iter)
        for name, img, itr in storage._vis_data:
            writer.add_image(name, img, itr)
        storage.clear_images()
        for params in storage._histograms:
            writer.add_histogram_raw(**params)
        storage.clear_histograms()
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _max_memory_mb() -> Optional[float]:
    """Peak CUDA memory allocated by tensors, or on CPU the peak resident set size, in MiB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (
            peak / 2**20 if sys.platform == "darwin" else peak / 1024.0
        )  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


class CommonMetricPrinter(EventWriter):
    """Print the usual training line to the ``resnet_backbones.utils.events`` logger::

    eta: 0:01:02  iter: 19  total_loss: 1.83  loss_cls: 0.61  ...  time: 0.3121  last_time: 0.3050
    data_time: 0.0021  last_data_time: 0.0019  lr: 0.0019  max_mem: 1543M
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger(__name__)
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None

    def _eta(self, storage: EventStorage) -> Optional[str]:
        if self._max_iter is None:
            return None
        itr = storage.iter
        remaining = self._max_iter - itr - 1
        try:
            eta_seconds = storage.history("time").median(1000) * remaining
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            # no iteration timer: estimate from the wall time between two writes
            eta = None
            now = time.perf_counter()
            if self._last_write is not None and itr > self._last_write[0]:
                per_iter = (now - self._last_write[1]) / (itr - self._last_write[0])
                eta = str(datetime.timedelta(seconds=int(per_iter * remaining)))
            self._last_write = (itr, now)
            return eta

    def write(self) -> None:
        storage = get_event_storage()
        itr = storage.iter
        if self._max_iter is not None and itr == self._max_iter:
            return  # after training: nothing new (the final line was printed at max_iter - 1)

        def windowed(name: str) -> float:
            return storage.history(name).median(storage.count_samples(name, self._window_size))

        histories = storage.histories()
        parts: List[str] = []
        eta = self._eta(storage)
        if eta:
            parts.append(f"eta: {eta}")
        parts.append(f"iter: {itr}")
        parts += [f"{k}: {windowed(k):.4g}" for k in histories if "loss" in k]
        parts += [f"{k}: {windowed(k):.4g}" for k in histories if "[metric]" in k]
        if "time" in histories:
            parts.append(f"time: {storage.history('time').global_avg():.4f}")
            parts.append(f"last_time: {storage.history('time').latest():.4f}")
        if "data_time" in histories:
            h = storage.history("data_time")
            parts.append(
                f"data_time: {h.avg(storage.count_samples('data_time', self._window_size)):.4f}"
            )
            parts.append(f"last_data_time: {h.latest():.4f}")
        parts.append(
            f"lr: {storage.history('lr').latest():.5g}" if "lr" in histories else "lr: N/A"
        )
        mem = _max_memory_mb()
        if mem is not None:
            parts.append(f"max_mem: {mem:.0f}M")
        self.logger.info(" " + "  ".join(parts))

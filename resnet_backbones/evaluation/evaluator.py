"""The evaluator interface and the inference loop (detectron2's ``evaluation/evaluator.py`` API).

An evaluator sees the model's inputs and outputs batch by batch (``process``) and computes metrics
at the end (``evaluate``); :func:`inference_on_dataset` runs the model over a data loader in eval
mode without gradients, feeds the evaluator, shows a tqdm progress bar with an ETA, and logs timing.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict, abc
from contextlib import ExitStack, contextmanager
from typing import (
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Union,
)

import torch
from torch import nn
from tqdm import tqdm

from ..precision import inference_autocast
from ..utils.comm import get_world_size, is_main_process

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class: ``reset()`` before a round, ``process(inputs, outputs)`` per batch,
    ``evaluate()`` at the end.

    ``evaluate()`` returns ``{task: {metric: value}}``, e.g.
    ``{"bbox": {"AP": 40.1, "AP50": 61.0}}`` on the main process, and ``{}`` on the others when
    results are gathered across processes.
    """

    def reset(self) -> None:
        """Prepare for a new round of evaluation."""

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Consume one batch: ``inputs`` as given to the model and the model's ``outputs``."""

    def evaluate(self) -> Optional[Dict[str, Any]]:
        """Metrics over everything processed since the last ``reset()``."""
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run as one; their results are merged (keys must not collide)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]) -> None:
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> Dict[str, Any]:
        results: Dict[str, Any] = OrderedDict()
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if is_main_process() and result:
                for key, value in result.items():
                    if key in results:
                        raise ValueError(
                            f"two evaluators produce results under the same key '{key}' "
                            f"({type(evaluator).__name__} and an earlier one)"
                        )
                    results[key] = value
        return results


def check_class_ids(classes: Any, num_classes: int, image_id: Any, dataset_name: str) -> None:
    """Raise a clear ``ValueError`` if a predicted class id is outside ``0 .. num_classes - 1``."""
    classes = torch.as_tensor(classes)
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if len(bad):
        raise ValueError(
            f"a prediction for image {image_id!r} has class {int(bad[0])}, but dataset "
            f"'{dataset_name}' has {num_classes} classes (ids 0..{num_classes - 1})"
        )


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _length(data_loader: Iterable) -> Optional[int]:
    try:
        return len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _device_of(model: Any) -> torch.device:
    """The device of ``model``'s first parameter (or its ``device`` attribute); CPU otherwise."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


_CALLBACKS = ("on_start", "before_inference", "after_inference", "on_end")


def _as_evaluator(
    evaluator: Union[DatasetEvaluator, Sequence[DatasetEvaluator], None],
) -> DatasetEvaluator:
    """One evaluator from one, a list of them (merged) or None (timing only, no metrics)."""
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, abc.Sequence):
        evaluator = DatasetEvaluators(evaluator)
    if not isinstance(evaluator, DatasetEvaluator):
        raise TypeError(
            f"evaluator must be a DatasetEvaluator, a list of them or None, "
            f"got {type(evaluator).__name__}"
        )
    return evaluator


def _callback_caller(callbacks: Optional[Dict[str, Callable[[], None]]]) -> Callable[[str], None]:
    """``call(name)`` runs the callback ``name`` if given; unknown names are rejected up front."""
    callbacks = callbacks or {}
    unknown = set(callbacks) - set(_CALLBACKS)
    if unknown:
        raise ValueError(f"unknown callbacks {sorted(unknown)}")
    return lambda name: callbacks.get(name, lambda: None)()


def _autocast(model: Any, autocast_dtype: Optional[torch.dtype]) -> ContextManager[Any]:
    """The run's autocast (:func:`~resnet_backbones.precision.inference_autocast` on the model's
    device; nothing for None). The only place the inference loop creates an autocast context."""
    return inference_autocast(_device_of(model), autocast_dtype)


class _Timer:
    """Data, compute and evaluation time per batch; the warm-up batches are not counted."""

    def __init__(self, num_warmup: int) -> None:
        self.num_warmup = num_warmup
        self.start = time.perf_counter()
        self.data = self.compute = self.eval = 0.0
        self.num_iters = 0

    def restart_after_warmup(self, idx: int) -> None:
        """At the first batch after the warm-up, forget the times so far."""
        if idx == self.num_warmup and idx > 0:
            self.start = time.perf_counter()
            self.data = self.compute = self.eval = 0.0

    def count(self, idx: int) -> None:
        """Batch ``idx`` is done: the number of timed batches."""
        self.num_iters = idx + 1 - (self.num_warmup if idx >= self.num_warmup else 0)

    def postfix(self) -> Dict[str, str]:
        """Average times per batch for the progress bar."""
        n = self.num_iters
        return {
            "data": f"{self.data / n:.3f}s",
            "infer": f"{self.compute / n:.3f}s",
            "eval": f"{self.eval / n:.3f}s",
        }

    def log(self, num_devices: int) -> None:
        """The totals and per-batch times, as detectron2 logs them."""
        total_time = time.perf_counter() - self.start
        timed = max(self.num_iters, 1)
        logger.info(
            f"Total inference time: {datetime.timedelta(seconds=total_time)} "
            f"({total_time / timed:.6f} s / iter per device, on {num_devices} devices)"
        )
        logger.info(
            f"Total inference pure compute time: {datetime.timedelta(seconds=int(self.compute))} "
            f"({self.compute / timed:.6f} s / iter per device, on {num_devices} devices)"
        )


def _run_batches(
    model: Callable[[Any], Any],
    data_loader: Iterable,
    evaluator: DatasetEvaluator,
    call: Callable[[str], None],
    bar: Any,
    timer: _Timer,
) -> None:
    """The loop: each batch through ``model`` and into ``evaluator``, timed and shown on ``bar``."""
    data_start = time.perf_counter()
    for idx, inputs in enumerate(data_loader):
        timer.data += time.perf_counter() - data_start
        timer.restart_after_warmup(idx)
        compute_start = time.perf_counter()
        call("before_inference")
        outputs = model(inputs)
        call("after_inference")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timer.compute += time.perf_counter() - compute_start

        eval_start = time.perf_counter()
        evaluator.process(inputs, outputs)
        timer.eval += time.perf_counter() - eval_start

        timer.count(idx)
        bar.set_postfix(**timer.postfix(), refresh=False)
        bar.update(1)
        data_start = time.perf_counter()


def inference_on_dataset(
    model: Callable[[Any], Any],
    data_loader: Iterable,
    evaluator: Union[DatasetEvaluator, Sequence[DatasetEvaluator], None],
    callbacks: Optional[Dict[str, Callable[[], None]]] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> Dict[str, Any]:
    """Run ``model`` on every batch of ``data_loader`` and return ``evaluator.evaluate()``.

    An ``nn.Module`` is switched to eval mode for the run (its mode is restored afterwards) and
    gradients are off. ``evaluator`` may be one evaluator, a list of them, or None (timing only).
    ``callbacks`` may hold ``on_start``, ``before_inference``, ``after_inference``, ``on_end``.
    The first ``min(5, total - 1)`` batches are a warm-up excluded from the reported times.
    ``autocast_dtype`` (``TEST.AMP``, see :func:`resnet_backbones.precision.inference_amp_dtype`)
    runs the model under ``torch.autocast`` on the model's device; None (default) is plain fp32.
    """
    total = _length(data_loader)
    num_devices = get_world_size()
    logger.info(
        f"Start inference on {total if total is not None else 'an unknown number of'} batches"
    )
    evaluator = _as_evaluator(evaluator)
    call = _callback_caller(callbacks)
    evaluator.reset()

    timer = _Timer(num_warmup=min(5, total - 1) if total else 0)
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        stack.enter_context(_autocast(model, autocast_dtype))
        bar = stack.enter_context(
            tqdm(
                total=total,
                desc="Inference",
                unit="batch",
                disable=not is_main_process(),
                dynamic_ncols=True,
            )
        )
        call("on_start")
        _run_batches(model, data_loader, evaluator, call, bar, timer)
        call("on_end")

    timer.log(num_devices)
    results = evaluator.evaluate()
    return {} if results is None else results

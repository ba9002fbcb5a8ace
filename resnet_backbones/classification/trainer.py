"""Classification training on the detection engine: same loop, hooks, checkpoints and metrics.

:class:`ClassificationTrainer` is :class:`~resnet_backbones.engine.DefaultTrainer`'s counterpart
for image classification. It reuses the engine's pieces unchanged:

* the loop (:class:`~resnet_backbones.engine.train_loop.SimpleTrainer`, or
  :class:`~resnet_backbones.engine.train_loop.AMPTrainer` with ``SOLVER.AMP.ENABLED``: bfloat16
  autocast on CPU, float16 with a ``GradScaler`` on CUDA), the model wrapped in
  ``DistributedDataParallel`` when several processes run (:func:`~resnet_backbones.engine.launch`);
* the hooks: iteration timer, LR scheduler, periodic checkpointer (atomic writes, a
  ``last_checkpoint`` pointer), graceful stop on SIGTERM/SIGINT, evaluation, writers
  (console, ``OUTPUT_DIR/metrics.json``, TensorBoard), plus a tqdm progress bar;
* exact resume: a checkpoint holds the model, optimizer, LR scheduler, grad scaler, iteration, data
  seed and every process's RNG states; ``resume_or_load(resume=True)`` restarts the data stream at
  the next iteration (:func:`~resnet_backbones.classification.data.build_train_loader`), so the
  resumed run computes exactly what the uninterrupted one would have.

The model is a registered ResNet (``create_model(MODEL.NAME, ...)``); its checkpoints
(``model_final.pth``) hold the bare classifier's state dict (``stem.*``, ``res2.*`` ...,
``linear.*``) and a ``meta`` entry with the input convention (``input_format``, ``pixel_mean``,
``pixel_std``), ``stride_in_1x1``, the architecture and the class names. Such a file is a valid
``MODEL.WEIGHTS`` for the detector: ``DetectionCheckpointer`` maps ``stem``/``res2-4`` to
``backbone.*``, ``res5`` to ``roi_heads.res5.*``, drops ``linear.*`` and reports every key.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import weakref
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from fvcore.common.checkpoint import Checkpointer
from torch import nn
from torch.nn import functional as F

from ..checkpoint.atomic import AtomicSaveMixin
from ..checkpoint.loading import LoadReport, load_checkpoint
from ..engine import hooks
from ..engine.defaults import DelegatingTrainer, create_ddp_model, default_writers
from ..engine.train_loop import AMPTrainer, HookBase, SimpleTrainer
from ..modeling.backbone import create_model
from ..precision import inference_autocast, training_amp_dtype
from ..solver.classification import (  # moved to solver/; importable from here as before
    Schedule,
    compute_schedule,
)
from ..solver.classification import build_classification_lr_scheduler as build_lr_scheduler
from ..solver.classification import build_classification_optimizer as build_optimizer
from ..utils import comm
from .data import build_dataset, build_test_loader, build_train_loader
from .test_protocols import (
    build_protocol_loader,
    check_protocols,
    describe,
    protocol_model,
    result_name,
)

__all__ = [
    "ClassificationCheckpointer",
    "ClassificationTrainer",
    "ClassifierWithLoss",
    "ProgressBar",
    "Schedule",
    "build_classifier",
    "build_lr_scheduler",
    "build_optimizer",
    "checkpoint_metadata",
    "compute_schedule",
    "evaluate",
    "evaluate_protocols",
    "load_classifier_weights",
    "resolve_device",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ model
def resolve_device(name: str) -> torch.device:
    """``"auto"``: this process's CUDA device if CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"MODEL.DEVICE={name!r} but CUDA is not available; use MODEL.DEVICE cpu (or auto)"
            )
        if device.index is None:
            device = torch.device(
                "cuda",
                comm.get_local_rank() if comm.get_world_size() > 1 else torch.cuda.current_device(),
            )
    return device


def _model_kwargs(cfg: Any, num_classes: int) -> Dict[str, Any]:
    m = cfg.MODEL
    kwargs: Dict[str, Any] = {
        "num_classes": num_classes,
        "norm": m.NORM,
        "stride_in_1x1": bool(m.STRIDE_IN_1X1),
        "zero_init_residual": bool(m.ZERO_INIT_RESIDUAL),
        "channels_last": bool(m.CHANNELS_LAST),
    }
    for key, arg in (
        ("STEM_OUT_CHANNELS", "stem_out_channels"),
        ("RES2_OUT_CHANNELS", "res2_out_channels"),
        ("WIDTH_PER_GROUP", "width_per_group"),
    ):
        if int(m[key]) > 0:
            kwargs[arg] = int(m[key])
    if int(m.NUM_GROUPS) != 1:
        kwargs["num_groups"] = int(m.NUM_GROUPS)
    if m.SHORTCUT:
        kwargs["shortcut"] = m.SHORTCUT
    return kwargs


def build_classifier(cfg: Any, num_classes: int) -> nn.Module:
    """``create_model(MODEL.NAME, ...)`` with the architecture keys of ``cfg.MODEL`` and
    ``num_classes`` outputs."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return create_model(cfg.MODEL.NAME, **_model_kwargs(cfg, num_classes))


def checkpoint_metadata(cfg: Any, classes: Sequence[str]) -> Dict[str, Any]:
    """What a checkpoint records about its weights (plain values: loadable with
    ``weights_only``)."""
    return {
        "task": "classification",
        "arch": cfg.MODEL.NAME,
        "arch_kwargs": {
            k: v for k, v in _model_kwargs(cfg, len(classes)).items() if k != "channels_last"
        },
        "classes": [str(c) for c in classes],
        "input_format": cfg.INPUT.FORMAT,
        "pixel_mean": [float(x) for x in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(x) for x in cfg.MODEL.PIXEL_STD],
        "input_size": int(cfg.INPUT.SIZE),
        "stride_in_1x1": bool(cfg.MODEL.STRIDE_IN_1X1),
    }


class ClassifierWithLoss(nn.Module):
    """``forward((images, labels))`` -> ``{"loss_cls": cross entropy}``: what the engine's loop
    expects."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = float(label_smoothing)

    def forward(self, batch: Any) -> Dict[str, torch.Tensor]:
        images, labels = batch
        device = next(self.model.parameters()).device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = self.model(images)
        return {
            "loss_cls": F.cross_entropy(
                logits.float(), labels, label_smoothing=self.label_smoothing
            )
        }


def load_classifier_weights(model: nn.Module, path: str) -> LoadReport:
    """Initialize ``model`` from any supported weights file (names converted, every key reported).

    Loading is non-strict: a classifier of another number of classes is reported as a shape
    mismatch and stays as initialized (fine-tuning to a new label set).
    """
    report = load_checkpoint(model, path, strict=False)
    logger.info("Loaded MODEL.WEIGHTS %s:\n%s", path, report)
    if not report.matched:
        raise RuntimeError(
            f"MODEL.WEIGHTS {path}: no tensor fits the model {type(model).__name__}\n{report}"
        )
    return report


# ------------------------------------------------------------------------------ optimization
def amp_dtype(cfg: Any, device: torch.device) -> Optional[torch.dtype]:
    """None without AMP; else SOLVER.AMP.DTYPE on ``device`` ("" = "auto": bfloat16 where it
    pays, see :func:`resnet_backbones.precision.training_amp_dtype`)."""
    return training_amp_dtype(cfg, device)


# ------------------------------------------------------------------------------ evaluation
def _to_device(images: Any, device: torch.device) -> Any:
    """A tensor, or (nested) lists of tensors (multi-scale views), moved to ``device``."""
    if isinstance(images, torch.Tensor):
        return images.to(device, non_blocking=True)
    return [_to_device(x, device) for x in images]


def _progress_enabled(setting: str) -> Optional[bool]:
    """tqdm's ``disable`` argument for PROGRESS "auto"/"on"/"off" (None: auto, i.e. on a
    terminal)."""
    if not comm.is_main_process() or setting == "off":
        return True
    return False if setting == "on" else None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data_loader: Any,
    *,
    device: Optional[torch.device] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    progress: str = "auto",
    topk: Sequence[int] = (1, 5),
    desc: str = "eval",
) -> Dict[str, float]:
    """Top-k accuracies (percent) and mean cross-entropy over the loader, summed over all processes.

    ``model(images)`` gives logits (or log-probabilities: the test protocols' ensembles); images
    may be a tensor or lists of tensors. Returns ``{"top1", "top5", "loss", "num_images"}``
    (``top5`` is top-min(5, classes)).
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    correct = {k: 0 for k in topk}
    loss_sum, count = 0.0, 0
    try:
        bar = tqdm(
            data_loader,
            desc=desc,
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=_progress_enabled(progress),
        )
        for images, labels in bar:
            images, labels = _to_device(images, device), labels.to(device, non_blocking=True)
            with inference_autocast(device, autocast_dtype):
                logits = model(images)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            count += int(labels.numel())
            k_max = min(max(topk), logits.shape[1])
            pred = logits.topk(k_max, dim=1).indices
            hits = pred.eq(labels.view(-1, 1))
            for k in topk:
                correct[k] += int(hits[:, : min(k, k_max)].any(dim=1).sum())
    finally:
        model.train(was_training)
    totals = comm.all_gather({"correct": correct, "loss": loss_sum, "count": count})
    n = sum(t["count"] for t in totals)
    if n == 0:
        return {}
    out = {f"top{k}": 100.0 * sum(t["correct"][k] for t in totals) / n for k in topk}
    out["loss"] = sum(t["loss"] for t in totals) / n
    out["num_images"] = float(n)
    return out


def evaluate_protocols(
    model: nn.Module,
    cfg: Any,
    batch_size: int,
    *,
    device: Optional[torch.device] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    protocols: Optional[Sequence[str]] = None,
    single_loader: Any = None,
) -> Dict[str, Dict[str, float]]:
    """Evaluate ``model`` with each test protocol (default ``TEST.PROTOCOLS``; see
    :mod:`.test_protocols`) on the validation set.

    Returns ``{"val": {"top1", "top5", "loss", "num_images"}, "val_10crop": {...}, ...}`` (one
    group per protocol, :func:`~.test_protocols.result_name`) and logs a line for each.
    ``single_loader`` replaces the single protocol's loader (the trainer's own).
    """
    device = device or next(model.parameters()).device
    results: Dict[str, Dict[str, float]] = {}
    for protocol in check_protocols(protocols or cfg.TEST.PROTOCOLS):
        loader = single_loader if protocol == "single" else None
        if loader is None:
            loader = build_protocol_loader(
                cfg,
                protocol,
                batch_size,
                num_workers=int(cfg.DATA.NUM_WORKERS),
                pin_memory=device.type == "cuda",
            )
        res = evaluate(
            protocol_model(model, protocol, cfg),
            loader,
            device=device,
            autocast_dtype=autocast_dtype,
            progress=cfg.PROGRESS,
            desc=f"eval {protocol}",
        )
        if not res:
            continue
        results[result_name(protocol)] = res
        if comm.is_main_process():
            logger.info(
                "Evaluation (%s: %s) on %d images: top-1 %.2f%%, top-5 %.2f%%, loss %.4f",
                protocol,
                describe(cfg, protocol),
                int(res["num_images"]),
                res["top1"],
                res["top5"],
                res["loss"],
            )
    return results


# ------------------------------------------------------------------------------ checkpoints & hooks
class ClassificationCheckpointer(AtomicSaveMixin, Checkpointer):
    """fvcore's Checkpointer with atomic writes; every file also holds ``meta`` (see module
    docstring)."""

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        meta: Optional[Mapping[str, Any]] = None,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        super().__init__(
            model,
            save_dir,
            save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.meta = dict(meta or {})

    def _checkpoint_data(self, **kwargs: Any) -> Dict[str, Any]:
        data = super()._checkpoint_data(**kwargs)
        data["meta"] = dict(self.meta)
        return data


class ProgressBar(HookBase):
    """A tqdm bar over the iterations (main process), showing epoch, loss and learning rate."""

    def __init__(self, iters_per_epoch: int, setting: str = "auto", refresh: int = 5) -> None:
        self.iters_per_epoch = iters_per_epoch
        self.setting = setting
        self.refresh = max(1, int(refresh))
        self._bar: Any = None

    def before_train(self) -> None:
        from tqdm import tqdm

        t = self.trainer
        self._bar = tqdm(
            total=t.max_iter,
            initial=t.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=_progress_enabled(self.setting),
            file=sys.stderr,
        )

    def after_step(self) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        itr = self.trainer.iter
        if (itr + 1) % self.refresh == 0 or itr == self.trainer.max_iter - 1:
            storage = self.trainer.storage
            post: Dict[str, str] = {"epoch": f"{(itr + 1) / self.iters_per_epoch:.2f}"}
            latest = storage.latest()
            if "total_loss" in latest:
                post["loss"] = f"{storage.history('total_loss').median(self.refresh):.4f}"
            if "lr" in latest:
                post["lr"] = f"{latest['lr'][0]:.4g}"
            if "val/top1" in latest:
                post["top1"] = f"{latest['val/top1'][0]:.2f}"
            self._bar.set_postfix(post, refresh=False)

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ------------------------------------------------------------------------------ trainer
class ClassificationTrainer(DelegatingTrainer):
    """Train a registered ResNet classifier from a classification config (:func:`get_cls_cfg`).

    ::

        trainer = ClassificationTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()  # {"top1": ..., "top5": ..., "loss": ...} of the last evaluation
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        world = comm.get_world_size()
        self.device = resolve_device(cfg.MODEL.DEVICE)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._data_seed = int(cfg.SEED) if cfg.SEED >= 0 else comm.shared_random_seed()
        check_protocols(cfg.TEST.PROTOCOLS)  # before any data is read
        self.train_set = build_dataset(cfg, is_train=True)
        self.val_set = build_dataset(cfg, is_train=False)
        self.classes = list(getattr(self.train_set, "classes", []))
        num_classes = int(cfg.MODEL.NUM_CLASSES) or len(self.classes)
        if num_classes < len(self.classes):
            raise ValueError(
                f"MODEL.NUM_CLASSES={num_classes} but the training set has "
                f"{len(self.classes)} classes"
            )
        self.schedule = compute_schedule(cfg, len(self.train_set), world)
        self.max_iter = self.schedule.max_iter

        model = build_classifier(cfg, num_classes).to(self.device)
        self.classifier = model
        self.meta = checkpoint_metadata(cfg, self.classes or [str(i) for i in range(num_classes)])
        optimizer = build_optimizer(cfg, model, self.schedule.base_lr)
        wrapped = create_ddp_model(ClassifierWithLoss(model, cfg.SOLVER.LABEL_SMOOTHING))
        loader = self._build_train_loader(start_iter=0)
        self.autocast_dtype = amp_dtype(cfg, self.device)
        if self.autocast_dtype is not None:
            self._trainer: SimpleTrainer = AMPTrainer(
                wrapped,
                loader,
                optimizer,
                precision=self.autocast_dtype,
                device_type=self.device.type,
            )
        else:
            self._trainer = SimpleTrainer(wrapped, loader, optimizer)
        self._trainer.include_rng_states = False  # this trainer's state carries them
        self.scheduler = build_lr_scheduler(
            optimizer,
            self.schedule,
            kind=cfg.SOLVER.SCHEDULE,
            gamma=cfg.SOLVER.GAMMA,
            warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        )
        self.checkpointer = ClassificationCheckpointer(
            model, cfg.OUTPUT_DIR, meta=self.meta, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self._last_eval_results: Optional[Dict[str, float]] = None
        self._last_checkpoint_iter: Optional[int] = None
        self.register_hooks(self.build_hooks())
        logger.info(
            "Training %s (%d classes) on %d images (%d for validation): "
            "%d iterations (%d per epoch), "
            "global batch %d (%d per process x %d), base LR %g, steps %s, %s schedule, "
            "warmup %d, device %s%s",
            cfg.MODEL.NAME,
            num_classes,
            len(self.train_set),
            len(self.val_set),
            self.max_iter,
            self.schedule.iters_per_epoch,
            cfg.SOLVER.BATCH_SIZE,
            self.schedule.batch_per_process,
            world,
            self.schedule.base_lr,
            self.schedule.steps,
            cfg.SOLVER.SCHEDULE,
            self.schedule.warmup_iters,
            self.device,
            f", AMP {self.autocast_dtype}" if self.autocast_dtype else "",
        )

    # ------------------------------------------------------------------------------ pieces
    def _build_train_loader(self, start_iter: int, seed: Optional[int] = None) -> Any:
        return build_train_loader(
            self.train_set,
            self.schedule.batch_per_process,
            seed=self._data_seed if seed is None else seed,
            num_workers=int(self.cfg.DATA.NUM_WORKERS),
            start_iter=start_iter,
            pin_memory=self.device.type == "cuda",
        )

    def build_test_loader(self) -> Any:
        batch = int(self.cfg.TEST.BATCH_SIZE) or self.schedule.batch_per_process
        return build_test_loader(
            self.val_set,
            batch,
            num_workers=int(self.cfg.DATA.NUM_WORKERS),
            pin_memory=self.device.type == "cuda",
        )

    def test(self) -> Dict[str, Any]:
        """Evaluate the classifier on the validation set with each ``TEST.PROTOCOLS``:
        ``{"val": {"top1", "top5", "loss"}, "val_10crop": {...}, ...}``."""
        protocols = check_protocols(self.cfg.TEST.PROTOCOLS)
        batch = int(self.cfg.TEST.BATCH_SIZE) or self.schedule.batch_per_process
        results = evaluate_protocols(
            self.classifier,
            self.cfg,
            batch,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            protocols=protocols,
            single_loader=self.build_test_loader() if "single" in protocols else None,
        )
        results = {
            group: {k: v for k, v in res.items() if k != "num_images"}
            for group, res in results.items()
        }
        if results:  # train() reports the first protocol's results
            self._last_eval_results = results.get(result_name(protocols[0]))
        return results

    def build_hooks(self) -> List[HookBase]:
        cfg, sch = self.cfg, self.schedule
        max_keep = int(cfg.SOLVER.MAX_TO_KEEP) or None
        ret: List[Optional[HookBase]] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(
                self.checkpointer, sch.checkpoint_period or self.max_iter, max_to_keep=max_keep
            ),
            hooks.StopOnSignal(self.checkpointer),
            hooks.EvalHook(sch.eval_period, self.test),
        ]
        if comm.is_main_process():
            ret.append(ProgressBar(sch.iters_per_epoch, cfg.PROGRESS))
            ret.append(
                hooks.PeriodicWriter(
                    default_writers(cfg.OUTPUT_DIR, self.max_iter), period=int(cfg.LOG_PERIOD)
                )
            )
        return [h for h in ret if h is not None]

    # ------------------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and ``OUTPUT_DIR/last_checkpoint``: load everything and continue after
        its iteration. Otherwise initialize from ``MODEL.WEIGHTS`` (if set) and start at
        iteration 0."""
        if resume and self.checkpointer.has_checkpoint():
            self.checkpointer.resume_or_load("", resume=True)
            self.start_iter = self.iter + 1
            seed = self._saved_data_seed if self._saved_data_seed is not None else self._data_seed
            if seed != self._data_seed:
                logger.info("Using the checkpoint's data seed %d", seed)
                self._data_seed = seed
            self._trainer.reset_data_loader(self._build_train_loader(self.start_iter))
            self._continue_logs_from(self.start_iter)
            logger.info(
                "Resuming from iteration %d (epoch %.2f)",
                self.start_iter,
                self.schedule.epoch_of(self.start_iter),
            )
        else:
            if self.cfg.MODEL.WEIGHTS:
                load_classifier_weights(self.classifier, self.cfg.MODEL.WEIGHTS)
            self.start_iter = 0

    # ------------------------------------------------------------------------------ loop
    def before_train(self) -> None:
        self._trainer.max_iter = self.max_iter
        super().before_train()
        self._trainer.prepare_data_iter()  # before the RNG states are restored

    def train(self) -> Optional[Dict[str, float]]:
        """Run training; returns the last evaluation results (top1, top5, loss) or None."""
        start = time.perf_counter()
        self._train_until_done()
        if comm.is_main_process() and self._last_eval_results is not None:
            logger.info(
                "Done in %.1f s; final top-1 %.2f%%, top-5 %.2f%%; checkpoint %s",
                time.perf_counter() - start,
                self._last_eval_results["top1"],
                self._last_eval_results["top5"],
                os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth"),
            )
        return self._last_eval_results

    def data_seed(self) -> int:
        return self._data_seed

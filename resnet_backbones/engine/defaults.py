"""detectron2's ``DefaultTrainer``, built from the config, and its shared base.

* :class:`DefaultTrainer`: model, optimizer, LR schedule, data, DDP, (AMP), checkpointing,
  evaluation and writers built from the config, with the usual hooks.
* :class:`DelegatingTrainer`: what ``DefaultTrainer`` and the classification trainer share.

The command line of the training scripts (``default_argument_parser``, ``default_setup``,
``setup_logger``, ``check_inputs_exist``) lives in :mod:`resnet_backbones.engine.cli`, DDP and
SyncBN in :mod:`resnet_backbones.engine.ddp`; both stay importable from here.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..checkpoint.atomic import atomic_write_text, with_atomic_save
from ..config import CfgNode
from ..modeling.meta_arch.build import prepare_model
from ..precision import inference_amp_dtype, training_amp_dtype
from ..solver import auto_scale_workers as _auto_scale_workers
from ..solver import build_lr_scheduler as _build_lr_scheduler
from ..solver import build_optimizer as _build_optimizer
from ..utils import comm
from ..utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from . import hooks
from .cli import check_inputs_exist, default_argument_parser, default_setup, setup_logger
from .ddp import adapt_sync_bn, create_ddp_model, revert_sync_batchnorm, unwrap_model
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = [
    "DefaultTrainer",
    "DelegatingTrainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "check_inputs_exist",
    "revert_sync_batchnorm",
    "setup_logger",
]

logger = logging.getLogger(__name__)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """Console printer, ``OUTPUT_DIR/metrics.json`` and TensorBoard event files in
    ``OUTPUT_DIR``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def _truncate_metrics(path: str, start_iter: int) -> None:
    """Drop ``metrics.json`` lines of iterations a resumed run recomputes (``>= start_iter``)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line)["iteration"] >= start_iter:
                    continue
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed run
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))


# ------------------------------------------------------------------------------ trainer
class DelegatingTrainer(TrainerBase):
    """A :class:`TrainerBase` whose steps are run by ``self._trainer`` (a :class:`SimpleTrainer` or
    :class:`AMPTrainer`) and whose checkpoints also hold the seed of its data stream
    (:meth:`data_seed`), so that a resume can rebuild the same stream. Subclasses set
    ``_trainer``, ``start_iter`` and ``max_iter``; ``_saved_data_seed`` is the seed of the loaded
    checkpoint, if any. Shared by :class:`DefaultTrainer` and the classification trainer."""

    _saved_data_seed: Optional[int] = None

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._trainer.optimizer

    def data_seed(self) -> int:
        """The seed the data loader's stream was built from."""
        raise NotImplementedError

    def _train_until_done(self) -> None:
        """``TrainerBase.train`` over ``[start_iter, max_iter)``; an interrupt that stopped it early
        (SIGTERM/SIGINT, after :class:`hooks.StopOnSignal` saved a checkpoint) is raised again."""
        super().train(self.start_iter, self.max_iter)
        for h in self._hooks:
            if (
                isinstance(h, hooks.StopOnSignal)
                and h.interrupted is not None
                and not self.finished
            ):
                raise h.interrupted

    def _continue_logs_from(self, start_iter: int) -> None:
        """On resume: drop metrics.json lines from ``start_iter`` on (rank 0) and make TensorBoard
        discard its events from there, so that the logs read as one uninterrupted run."""
        if comm.is_main_process():
            _truncate_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), start_iter)
        for h in self._hooks:
            if isinstance(h, hooks.PeriodicWriter):
                for w in h._writers:
                    if isinstance(w, TensorboardXWriter):
                        w.purge_step = start_iter

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["data_seed"] = int(self.data_seed())
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])
        self._saved_data_seed = state_dict.get("data_seed")


class DefaultTrainer(DelegatingTrainer):
    """The standard detectron2 trainer, built from the config.

    ``__init__`` builds the model, optimizer, data loader, LR scheduler, checkpointer and hooks;
    wraps the model in DDP with several processes; uses :class:`AMPTrainer` when
    ``SOLVER.AMP.ENABLED``. Then::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()  # the last evaluation results

    ``SOLVER.IMS_PER_BATCH`` is the global batch (each of W processes loads ``IMS_PER_BATCH / W``);
    ``SOLVER.REFERENCE_WORLD_SIZE`` rescales batch, LR and schedule to the actual world size.
    Override the ``build_*`` class methods to customize.

    Checkpoints (``OUTPUT_DIR/model_{iter:07d}.pth`` every ``SOLVER.CHECKPOINT_PERIOD`` iterations,
    ``model_final.pth``, and one on SIGTERM/SIGINT) hold the model, optimizer, LR scheduler, grad
    scaler, iteration, the data seed and every rank's RNG states; they are written atomically with a
    ``last_checkpoint`` pointer. ``resume_or_load(resume=True)`` continues exactly: the data loader
    is repositioned to the resumed iteration and the random streams are restored.
    """

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        lg = logging.getLogger("resnet_backbones")
        if not lg.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        cfg = self._fix_data_seed(cfg)
        self.cfg = cfg

        model = prepare_model(self.build_model(cfg), cfg, "train")
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        amp_dtype = training_amp_dtype(cfg)
        if amp_dtype is not None:
            self._trainer: SimpleTrainer = AMPTrainer(
                model, data_loader, optimizer, precision=amp_dtype
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self._trainer.include_rng_states = False  # this trainer's state carries them
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self._last_eval_results: Any = None
        self._last_checkpoint_iter: Optional[int] = None
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------------------ accessors
    @property
    def data_loader(self) -> Any:
        return self._trainer.data_loader

    # ------------------------------------------------------------------------------ seeds
    @staticmethod
    def _fix_data_seed(cfg: CfgNode) -> CfgNode:
        """A negative SEED becomes one shared random seed, so that it can be saved and resumed."""
        if cfg.SEED >= 0:
            return cfg
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = comm.shared_random_seed()
        logger.info(
            "SEED < 0: using the random seed %d for the data order (saved with checkpoints)",
            cfg.SEED,
        )
        if frozen:
            cfg.freeze()
        return cfg

    # ------------------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a ``last_checkpoint`` in ``OUTPUT_DIR``: load it with everything and
        continue after its iteration. Otherwise load ``MODEL.WEIGHTS`` (model only) and start
        at 0."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
            if self.start_iter < self.max_iter:  # a finished run has nothing left to load
                self._position_data_loader(self.start_iter)
            self._continue_logs_from(self.start_iter)
        else:
            self.start_iter = 0

    def _position_data_loader(self, start_iter: int) -> None:
        """Make the next batch the one the interrupted run would have used at ``start_iter``."""
        loader = self._trainer.data_loader
        if self._saved_data_seed is not None and self._saved_data_seed != self.cfg.SEED:
            logger.info(
                "Rebuilding the data loader with the checkpoint's data seed %d",
                self._saved_data_seed,
            )
            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.SEED = self._saved_data_seed
            if self.cfg.is_frozen():
                cfg.freeze()
            self.cfg = cfg
            loader = self.build_train_loader(cfg)
        if start_iter <= 0:
            self._trainer.reset_data_loader(loader)
            return
        skip = getattr(loader, "skip_batches", None)
        if callable(skip):  # a loader that can fast-forward its sampler without loading images
            skip(start_iter)
            self._trainer.reset_data_loader(loader)
        else:
            logger.info(
                "Skipping %d batches of the data loader to resume at iteration %d",
                start_iter,
                start_iter,
            )
            self._trainer.reset_data_loader(loader, skip_batches=start_iter)

    # ------------------------------------------------------------------------------ loop
    def build_hooks(self) -> List[hooks.HookBase]:
        """IterationTimer, LRScheduler, PeriodicCheckpointer, StopOnSignal, EvalHook,
        PeriodicWriter (rank 0)."""
        cfg = self.cfg
        ret: List[Optional[hooks.HookBase]] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD),
            hooks.StopOnSignal(self.checkpointer),
        ]

        def test_and_save_results() -> Any:
            self._last_eval_results = self.test(self.cfg, unwrap_model(self.model))
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return [h for h in ret if h is not None]

    def build_writers(self) -> List[EventWriter]:
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def before_train(self) -> None:
        self._trainer.max_iter = self.max_iter
        super().before_train()
        self._trainer.prepare_data_iter()  # before the RNG states are restored

    def train(self) -> Any:
        """Run training; returns the last evaluation results (``OrderedDict``) or None."""
        self._train_until_done()
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            from ..evaluation import verify_results

            if self._last_eval_results is None:
                raise RuntimeError("TEST.EXPECTED_RESULTS is set but no evaluation ran")
            verify_results(self.cfg, self._last_eval_results)
        return self._last_eval_results

    def data_seed(self) -> int:
        return int(self.cfg.SEED)  # made concrete by _fix_data_seed

    # ------------------------------------------------------------------------------ builders
    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """``modeling.build_model(cfg)``; SyncBN falls back to BN on CPU with several processes.
        ``__init__`` then applies ``MODEL.FAST_PATH`` through ``prepare_model(model, cfg, "train")``
        (same parameters and state-dict names)."""
        from ..modeling import build_model

        model = build_model(cfg)
        model = adapt_sync_bn(model, cfg.MODEL.DEVICE)
        logging.getLogger("resnet_backbones").info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return _build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
        return _build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        from ..data import build_detection_train_loader

        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        from ..data import build_detection_test_loader

        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> Any:
        """An evaluator from the dataset's ``evaluator_type`` metadata: "coco" or "pascal_voc"."""
        from ..data import MetadataCatalog
        from ..evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if kind == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise NotImplementedError(
            f"no evaluator for dataset '{dataset_name}' (evaluator_type={kind!r}); override "
            f"DefaultTrainer.build_evaluator or pass evaluators to test()"
        )

    @classmethod
    def build_checkpointer(cls, cfg: CfgNode, model: nn.Module, **checkpointables: Any) -> Any:
        """The ``DetectionCheckpointer`` (every weights format) with atomic saves."""
        from ..checkpoint.detection_checkpoint import DetectionCheckpointer

        return with_atomic_save(DetectionCheckpointer)(model, cfg.OUTPUT_DIR, **checkpointables)

    @classmethod
    def test(
        cls, cfg: CfgNode, model: nn.Module, evaluators: Optional[Sequence[Any]] = None
    ) -> "OrderedDict[str, Any]":
        """Evaluate ``model`` on every ``DATASETS.TEST`` (one result dict, or one per dataset),
        under ``TEST.AMP`` autocast when it is enabled."""
        from ..evaluation import inference_on_dataset, print_csv_format

        names = list(cfg.DATASETS.TEST)
        if evaluators is not None and not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(f"{len(evaluators)} evaluators for {len(names)} test datasets {names}")
        results: "OrderedDict[str, Any]" = OrderedDict()
        for idx, name in enumerate(names):
            data_loader = cls.build_test_loader(cfg, name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, name)
                except NotImplementedError as e:
                    logger.warning("%s; skipping the evaluation of %s", e, name)
                    results[name] = {}
                    continue
            res = inference_on_dataset(
                model, data_loader, evaluator, autocast_dtype=inference_amp_dtype(cfg)
            )
            results[name] = res
            if comm.is_main_process() and res:
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(res)
        if len(results) == 1:
            return list(results.values())[0]
        return results

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """``SOLVER.REFERENCE_WORLD_SIZE`` scaling (see
        :func:`resnet_backbones.solver.auto_scale_workers`)."""
        return _auto_scale_workers(cfg, num_workers)

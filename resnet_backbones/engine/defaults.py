"""detectron2's standard training setup: command-line flags, run setup, and ``DefaultTrainer``.

* :func:`default_argument_parser`: ``--config-file`` (alias ``--config``), ``--resume``,
  ``--eval-only``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, and
  trailing ``KEY VALUE`` config overrides.
* :func:`default_setup`: logging (console on rank 0, ``OUTPUT_DIR/log.txt``), the environment
  report (logged and written to ``OUTPUT_DIR/env.txt``), the merged config
  (``OUTPUT_DIR/config.yaml``), seeding (``SEED + rank``, or random when ``SEED < 0``).
* :class:`DefaultTrainer`: model, optimizer, LR schedule, data, DDP, (AMP), checkpointing,
  evaluation and writers built from the config, with the usual hooks.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.atomic import atomic_write_text, with_atomic_save
from ..config import CfgNode
from ..modeling.meta_arch.build import prepare_model
from ..precision import inference_amp_dtype, training_amp_dtype
from ..solver import auto_scale_workers as _auto_scale_workers
from ..solver import build_lr_scheduler as _build_lr_scheduler
from ..solver import build_optimizer as _build_optimizer
from ..utils import comm
from ..utils.env import collect_env_info, seed_all_rng
from ..utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from . import hooks
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

_LOG_FORMAT = "[%(asctime)s %(name)s %(levelname)s]: %(message)s"
_LOG_DATEFMT = "%m/%d %H:%M:%S"


# ------------------------------------------------------------------------------ command line
def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's flags for training scripts (``tools/train_net.py``)."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or (
            "Examples:\n\n"
            "Train on one machine (CUDA):\n"
            "    $ %(prog)s --num-gpus 8 --config-file configs/faster_rcnn_R101_C4.yaml\n\n"
            "Train on CPU with 2 processes (gloo):\n"
            "    $ %(prog)s --num-gpus 2 --config-file cfg.yaml MODEL.DEVICE cpu\n\n"
            "Change some config options:\n"
            "    $ %(prog)s --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth SOLVER.BASE_LR 0.001\n\n"
            "Run under torchrun:\n"
            "    $ torchrun --nproc-per-node 8 %(prog)s --config-file cfg.yaml\n\n"
            "Run on multiple machines:\n"
            "    (machine0)$ %(prog)s --machine-rank 0 --num-machines 2 --dist-url <URL> [--other-flags]\n"
            "    (machine1)$ %(prog)s --machine-rank 1 --num-machines 2 --dist-url <URL> [--other-flags]\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", "--config", dest="config_file", default="", metavar="FILE",
                        help="path to the config file")
    parser.add_argument("--resume", action="store_true",
                        help="resume from OUTPUT_DIR/last_checkpoint if it exists (else start from MODEL.WEIGHTS)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS (or the last checkpoint with --resume)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine: one per GPU, or CPU processes with MODEL.DEVICE cpu")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")
    parser.add_argument(
        "--dist-url", default="auto",
        help="initialization URL for the process group, e.g. tcp://10.0.0.1:29500 (machine 0's address); "
             "'auto' picks a free local port (one machine only)",
    )
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs at the end of the command, e.g. SOLVER.BASE_LR 0.01")
    return parser


# ------------------------------------------------------------------------------ logging & setup
class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logger(output: Optional[str] = None, distributed_rank: int = 0,
                 names: Sequence[str] = ("resnet_backbones", "fvcore", "__main__", "train_net")) -> logging.Logger:
    """Log INFO and above of ``names`` to the console (rank 0; ERROR+ on other ranks) and to files.

    ``output``: a directory (``log.txt`` inside) or a ``.txt``/``.log`` file; rank ``r > 0`` writes
    ``log.txt.rank{r}``. Calling it again replaces the handlers it installed before.
    """
    formatter = logging.Formatter(_LOG_FORMAT, datefmt=_LOG_DATEFMT)
    handlers: List[logging.Handler] = []
    console = logging.StreamHandler(stream=sys.stdout if distributed_rank == 0 else sys.stderr)
    console.setLevel(logging.INFO if distributed_rank == 0 else logging.ERROR)
    console.setFormatter(
        formatter if distributed_rank == 0
        else logging.Formatter(f"[rank {distributed_rank}] " + _LOG_FORMAT, datefmt=_LOG_DATEFMT)
    )
    handlers.append(console)
    if output:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        fh = logging.FileHandler(filename, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(formatter)
        handlers.append(fh)
    for h in handlers:
        h._rb_installed = True  # type: ignore[attr-defined]
        h.addFilter(_RankFilter(distributed_rank))
    for name in names:
        lg = logging.getLogger(name)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
        for old in [h for h in lg.handlers if getattr(h, "_rb_installed", False)]:
            lg.removeHandler(old)
            old.close()
        for h in handlers:
            lg.addHandler(h)
    return logging.getLogger(names[0])


def default_setup(cfg: CfgNode, args: Any) -> None:
    """Prepare a run: output dir, logging, environment report, ``config.yaml``, seeding, cudnn.

    Writes (main process) ``OUTPUT_DIR/config.yaml`` (the merged config, loadable with
    ``--config-file``) and ``OUTPUT_DIR/env.txt`` (the environment report), both atomically.
    """
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()
    setup_logger(output_dir, distributed_rank=rank)
    log = logging.getLogger("resnet_backbones")
    log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    env = collect_env_info()
    log.info("Environment info:\n%s", env)
    log.info("Command line arguments: %s", args)
    config_file = getattr(args, "config_file", "")
    if config_file:
        with open(config_file, encoding="utf-8") as f:
            log.info("Contents of args.config_file=%s:\n%s", config_file, f.read())
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        atomic_write_text(path, cfg.dump())
        atomic_write_text(os.path.join(output_dir, "env.txt"), env + "\n")
        log.info("Full config saved to %s", path)
        log.info("Environment report saved to %s", os.path.join(output_dir, "env.txt"))
    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    log.info("Random seed of rank %d: %d", rank, seed)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    if cfg.FLOAT32_PRECISION:
        torch.set_float32_matmul_precision(cfg.FLOAT32_PRECISION)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """Console printer, ``OUTPUT_DIR/metrics.json`` and TensorBoard event files in ``OUTPUT_DIR``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


# ------------------------------------------------------------------------------ model helpers
def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` by an ``nn.BatchNorm2d`` holding the same state (in place)."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if p is not None:
                getattr(bn, name).requires_grad_(p.requires_grad)
        bn.train(module.training)
        ref = next(iter(module.state_dict().values()), None)
        return bn.to(ref.device) if ref is not None else bn
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _adapt_sync_bn(model: nn.Module, device: str) -> nn.Module:
    """SyncBN needs CUDA: on CPU with several processes, fall back to per-process BatchNorm (warned)."""
    if not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return model
    if torch.device(device).type == "cuda" or not torch.distributed.is_initialized():
        return model  # CUDA: synchronized; no process group: SyncBatchNorm computes plain BatchNorm
    # PyTorch's SyncBatchNorm raises on CPU tensors as soon as a process group exists
    if comm.get_world_size() > 1:
        logger.warning(
            "SyncBN (nn.SyncBatchNorm) is only implemented for CUDA in PyTorch; with MODEL.DEVICE %s and %d "
            "processes it falls back to BatchNorm with per-process batch statistics (not synchronized)",
            device, comm.get_world_size(),
        )
    return revert_sync_batchnorm(model)


def create_ddp_model(model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when there are several processes (else return it)."""
    if comm.get_world_size() == 1:
        return model
    p = next(iter(model.parameters()), None)
    if p is not None and p.device.type == "cuda" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    if "broadcast_buffers" in kwargs and "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        # newer torch renamed it (buffers are then synced once at construction, which is harmless)
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model


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
            if isinstance(h, hooks.StopOnSignal) and h.interrupted is not None and not self.finished:
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
            self._trainer: SimpleTrainer = AMPTrainer(model, data_loader, optimizer, precision=amp_dtype)
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
        logger.info("SEED < 0: using the random seed %d for the data order (saved with checkpoints)", cfg.SEED)
        if frozen:
            cfg.freeze()
        return cfg

    # ------------------------------------------------------------------------------ resume
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a ``last_checkpoint`` in ``OUTPUT_DIR``: load it with everything and
        continue after its iteration. Otherwise load ``MODEL.WEIGHTS`` (model only) and start at 0."""
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
            logger.info("Rebuilding the data loader with the checkpoint's data seed %d", self._saved_data_seed)
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
            logger.info("Skipping %d batches of the data loader to resume at iteration %d", start_iter, start_iter)
            self._trainer.reset_data_loader(loader, skip_batches=start_iter)

    # ------------------------------------------------------------------------------ loop
    def build_hooks(self) -> List[hooks.HookBase]:
        """IterationTimer, LRScheduler, PeriodicCheckpointer, StopOnSignal, EvalHook, PeriodicWriter (rank 0)."""
        cfg = self.cfg
        ret: List[Optional[hooks.HookBase]] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD),
            hooks.StopOnSignal(self.checkpointer),
        ]

        def test_and_save_results() -> Any:
            self._last_eval_results = self.test(self.cfg, _unwrap(self.model))
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
        model = _adapt_sync_bn(model, cfg.MODEL.DEVICE)
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
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> Any:
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
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators: Optional[Sequence[Any]] = None) -> "OrderedDict[str, Any]":
        """Evaluate ``model`` on every ``DATASETS.TEST`` (one result dict, or one per dataset), under
        ``TEST.AMP`` autocast when it is enabled."""
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
            res = inference_on_dataset(model, data_loader, evaluator, autocast_dtype=inference_amp_dtype(cfg))
            results[name] = res
            if comm.is_main_process() and res:
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(res)
        if len(results) == 1:
            return list(results.values())[0]
        return results

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """``SOLVER.REFERENCE_WORLD_SIZE`` scaling (see :func:`resnet_backbones.solver.auto_scale_workers`)."""
        return _auto_scale_workers(cfg, num_workers)


# ------------------------------------------------------------------------------ pre-flight checks
def _is_remote(path: str) -> bool:
    return "://" in path


def check_inputs_exist(cfg: CfgNode, *, eval_only: bool = False, resume: bool = False) -> None:
    """Fail fast, before any process starts, if a file the run needs is missing; name the path.

    Checks ``MODEL.WEIGHTS`` (unless resuming from an existing ``OUTPUT_DIR/last_checkpoint``,
    which is checked instead) and, for every dataset of ``DATASETS.TRAIN`` (not with ``eval_only``)
    and ``DATASETS.TEST``, that it is registered and that the files its metadata names
    (``json_file``, ``image_root``, ``dirname``) exist.

    Raises:
        FileNotFoundError: a weights file or dataset path is missing (the message names it).
        KeyError: a dataset name is not registered.
    """
    from ..data import DatasetCatalog, MetadataCatalog

    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last, encoding="utf-8") as f:
            name = f.read().strip()
        if not name or not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, name)):
            from ..checkpoint.atomic import unusable_last_checkpoint
            from ..checkpoint.loading import read_checkpoint

            raise FileNotFoundError(unusable_last_checkpoint(
                cfg.OUTPUT_DIR, "does not exist", lambda path: read_checkpoint(path).extra
            ))
    else:
        weights = str(cfg.MODEL.WEIGHTS)
        if weights and not _is_remote(weights) and not os.path.isfile(os.path.expanduser(weights)):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS: weights file '{weights}' not found (set MODEL.WEIGHTS to an existing file, "
                f"or '' to start from random weights; the C4 configs start from MSRA's ImageNet models, e.g. "
                f"MODEL.WEIGHTS detectron2://ImageNetPretrained/MSRA/R-101.pkl downloads R-101.pkl)"
            )
        if eval_only and not weights:
            logger.warning("--eval-only without MODEL.WEIGHTS (and no checkpoint to resume): evaluating random weights")

    names = ([] if eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    for name in names:
        if name not in DatasetCatalog:
            known = ", ".join(sorted(DatasetCatalog.keys()))
            raise KeyError(f"dataset '{name}' (from DATASETS.TRAIN/TEST) is not registered; registered: {known}")
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root", "dirname"):
            path = meta.get(key)
            if path and not _is_remote(str(path)) and not os.path.exists(path):
                hint = ""
                if name.startswith("shapes") and meta.get("json_file"):
                    root = os.path.dirname(os.path.dirname(os.path.abspath(meta.get("json_file"))))
                    hint = f" Generate it with: python datasets/prepare_shapes.py --output {root}"
                raise FileNotFoundError(
                    f"dataset '{name}': {key} '{path}' does not exist (dataset root: $RB_DATASETS="
                    f"{os.environ.get('RB_DATASETS', 'datasets')}; layouts: datasets/README.md).{hint}"
                )

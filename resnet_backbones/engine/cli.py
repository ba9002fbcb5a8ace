"""The command line of detectron2's training scripts: flags, logging and run setup, pre-flight
checks.

* :func:`default_argument_parser`: ``--config-file`` (alias ``--config``), ``--resume``,
  ``--eval-only``, ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, and
  trailing ``KEY VALUE`` config overrides.
* :func:`default_setup`: logging (console on rank 0, ``OUTPUT_DIR/log.txt``), the environment
  report (logged and written to ``OUTPUT_DIR/env.txt``), the merged config
  (``OUTPUT_DIR/config.yaml``), seeding (``SEED + rank``, or random when ``SEED < 0``).
* :func:`check_inputs_exist`: every file a run needs exists, before any process starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, List, Optional, Sequence

import torch

from ..checkpoint.atomic import atomic_write_text
from ..config import CfgNode
from ..utils import comm
from ..utils.env import collect_env_info, seed_all_rng
from ..utils.registry import not_registered

__all__ = ["check_inputs_exist", "default_argument_parser", "default_setup", "setup_logger"]

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
            "    $ %(prog)s --config-file cfg.yaml MODEL.WEIGHTS /path/to/weight.pth "
            "SOLVER.BASE_LR 0.001\n\n"
            "Run under torchrun:\n"
            "    $ torchrun --nproc-per-node 8 %(prog)s --config-file cfg.yaml\n\n"
            "Run on multiple machines:\n"
            "    (machine0)$ %(prog)s --machine-rank 0 --num-machines 2 --dist-url <URL> "
            "[--other-flags]\n"
            "    (machine1)$ %(prog)s --machine-rank 1 --num-machines 2 --dist-url <URL> "
            "[--other-flags]\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config-file",
        "--config",
        dest="config_file",
        default="",
        metavar="FILE",
        help="path to the config file",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from OUTPUT_DIR/last_checkpoint if it exists (else start from MODEL.WEIGHTS)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate MODEL.WEIGHTS (or the last checkpoint with --resume)",
    )
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine: one per GPU, or CPU processes with MODEL.DEVICE cpu",
    )
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL for the process group, e.g. tcp://10.0.0.1:29500 "
        "(machine 0's address); 'auto' picks a free local port (one machine only)",
    )
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs at the end of the command, "
        "e.g. SOLVER.BASE_LR 0.01",
    )
    return parser


# ------------------------------------------------------------------------------ logging & setup
class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    names: Sequence[str] = ("resnet_backbones", "fvcore", "__main__", "train_net"),
) -> logging.Logger:
    """Log INFO and above of ``names`` to the console (rank 0; ERROR+ on other ranks) and to files.

    ``output``: a directory (``log.txt`` inside) or a ``.txt``/``.log`` file; rank ``r > 0`` writes
    ``log.txt.rank{r}``. Calling it again replaces the handlers it installed before.
    """
    formatter = logging.Formatter(_LOG_FORMAT, datefmt=_LOG_DATEFMT)
    handlers: List[logging.Handler] = []
    console = logging.StreamHandler(stream=sys.stdout if distributed_rank == 0 else sys.stderr)
    console.setLevel(logging.INFO if distributed_rank == 0 else logging.ERROR)
    console.setFormatter(
        formatter
        if distributed_rank == 0
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

            raise FileNotFoundError(
                unusable_last_checkpoint(
                    cfg.OUTPUT_DIR, "does not exist", lambda path: read_checkpoint(path).extra
                )
            )
    else:
        weights = str(cfg.MODEL.WEIGHTS)
        if weights and not _is_remote(weights) and not os.path.isfile(os.path.expanduser(weights)):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS: weights file '{weights}' not found "
                "(set MODEL.WEIGHTS to an existing file, or '' to start from random weights; "
                "the C4 configs start from MSRA's ImageNet models, e.g. "
                "MODEL.WEIGHTS detectron2://ImageNetPretrained/MSRA/R-101.pkl downloads R-101.pkl)"
            )
        if eval_only and not weights:
            logger.warning(
                "--eval-only without MODEL.WEIGHTS (and no checkpoint to resume): "
                "evaluating random weights"
            )

    names = ([] if eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    for name in names:
        if name not in DatasetCatalog:
            raise not_registered("dataset (from DATASETS.TRAIN/TEST)", name, DatasetCatalog.keys())
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
                    f"{os.environ.get('RB_DATASETS', 'datasets')}; "
                    f"layouts: datasets/README.md).{hint}"
                )

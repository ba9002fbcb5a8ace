"""Training and inference entry points (detectron2's ``engine``).

* inference: ``DefaultPredictor``;
* training: ``launch`` (single/multi-process, torchrun), ``default_argument_parser``,
  ``default_setup``, ``DefaultTrainer``, the training loops (``SimpleTrainer``, ``AMPTrainer``)
  and the hooks (``resnet_backbones.engine.hooks``).
"""

from . import hooks
from .defaults import (
    DefaultTrainer,
    check_inputs_exist,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    setup_logger,
)
from .launch import LaunchInterrupted, ProcessFailedError, launch
from .predictor import DefaultPredictor, ResizeShortestEdge
from .train_loop import AMPTrainer, HookBase, SimpleTrainer, TrainerBase

__all__ = [
    "DefaultPredictor",
    "ResizeShortestEdge",
    "AMPTrainer",
    "DefaultTrainer",
    "HookBase",
    "LaunchInterrupted",
    "ProcessFailedError",
    "SimpleTrainer",
    "TrainerBase",
    "check_inputs_exist",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "hooks",
    "launch",
    "setup_logger",
]

#!/usr/bin/env python
"""Train or evaluate a Faster R-CNN C4 detector: detectron2's ``tools/train_net.py``, same flags.

Train (one process per GPU; the global batch SOLVER.IMS_PER_BATCH is split across them)::

    python tools/train_net.py --config configs/faster_rcnn_R101_C4.yaml
    python tools/train_net.py --config-file configs/faster_rcnn_R101_C4.yaml --num-gpus 8
    torchrun --nproc-per-node 8 tools/train_net.py --config-file configs/faster_rcnn_R101_C4.yaml

CPU (gloo) with two processes, config overrides at the end::

    python tools/train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu SOLVER.IMS_PER_BATCH 4

Continue an interrupted run from OUTPUT_DIR/last_checkpoint (exactly: same data order and random
streams), or evaluate a checkpoint::

    python tools/train_net.py --config-file CFG --resume
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth

SIGTERM or Ctrl-C saves a checkpoint after the current iteration and exits with 128 + signal number;
``--resume`` continues from it. Outputs in OUTPUT_DIR: config.yaml, env.txt, log.txt, metrics.json,
TensorBoard event files, model_{iter:07d}.pth, model_final.pth, last_checkpoint, inference/.
Plot the curves with ``python tools/plot_metrics.py OUTPUT_DIR``.

Test-time augmentation (``TEST.AUG.ENABLED True``; sizes ``TEST.AUG.MIN_SIZES``, ``MAX_SIZE``,
``FLIP``): after the plain evaluation (``--eval-only``, or the one after training) the model is
evaluated again through ``GeneralizedRCNNWithTTA``, with results under names ending in ``_TTA``
(``bbox_TTA``) and files in OUTPUT_DIR/inference_TTA, as detectron2's train_net does::

    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS W TEST.AUG.ENABLED True
"""

from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from typing import Any, List

from resnet_backbones.config import ConfigError, get_cfg
from resnet_backbones.engine import hooks
from resnet_backbones.engine.ddp import unwrap_model
from resnet_backbones.engine.defaults import (
    DefaultTrainer,
    check_inputs_exist,
    default_argument_parser,
    default_setup,
)
from resnet_backbones.engine.launch import ProcessFailedError, launch
from resnet_backbones.modeling import GeneralizedRCNNWithTTA, prepare_model
from resnet_backbones.utils import comm

logger = logging.getLogger("resnet_backbones.train_net")


class Trainer(DefaultTrainer):
    """Customize here (build_evaluator, build_train_loader, ...); the defaults follow the config."""

    last_tta_results: Any = None

    @classmethod
    def test_with_TTA(cls, cfg: Any, model: Any) -> "OrderedDict[str, Any]":
        """Evaluate ``model`` through ``GeneralizedRCNNWithTTA`` (``TEST.AUG``) on every
        ``DATASETS.TEST``; the result names end in ``_TTA``."""
        logger.info("Running inference with test-time augmentation ...")
        tta = GeneralizedRCNNWithTTA(cfg, model)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        names, evaluators = [], []
        for name in cfg.DATASETS.TEST:
            try:
                evaluators.append(cls.build_evaluator(cfg, name, output_folder=folder))
                names.append(name)
            except NotImplementedError as e:  # as Trainer.test: skipped with a warning
                logger.warning("%s; skipping the TTA evaluation of %s", e, name)
        if not names:
            return OrderedDict()
        all_names = list(cfg.DATASETS.TEST)
        if names != all_names:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.DATASETS.TEST = tuple(names)
            cfg.freeze()
        res = cls.test(cfg, tta, evaluators)
        if len(names) == 1 < len(all_names):  # keyed by dataset, as the plain results are
            res = OrderedDict([(names[0], res)])
        return OrderedDict((k + "_TTA", v) for k, v in res.items())

    def build_hooks(self) -> List[hooks.HookBase]:
        """The default hooks; with ``TEST.AUG.ENABLED`` a TTA evaluation after training, before
        the writers (so that its results reach metrics.json)."""
        ret = super().build_hooks()
        if self.cfg.TEST.AUG.ENABLED:

            def tta_eval() -> Any:
                self.last_tta_results = self.test_with_TTA(self.cfg, unwrap_model(self.model))
                return self.last_tta_results

            writer = [i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)]
            ret.insert(writer[0] if writer else len(ret), hooks.EvalHook(0, tta_eval))
        return ret


def load_config(args: Any):
    """The merged config: defaults, ``--config-file``, then the trailing ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def check_tta_supported(cfg: Any) -> None:
    """``TEST.AUG.ENABLED`` needs a GeneralizedRCNN (detectron2's rule): refused before any work."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if cfg.TEST.AUG.ENABLED and arch != "GeneralizedRCNN":
        raise ConfigError(
            f"TEST.AUG.ENABLED: test-time augmentation supports MODEL.META_ARCHITECTURE "
            f"'GeneralizedRCNN' only, got {arch!r}; set TEST.AUG.ENABLED False"
        )


def setup(args: Any):
    cfg = load_config(args)
    default_setup(cfg, args)
    return cfg


def main(args: Any) -> Any:
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        model = prepare_model(model, cfg, "inference")
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process() and len(cfg.TEST.EXPECTED_RESULTS):
            from resnet_backbones.evaluation import verify_results

            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    if trainer.last_tta_results:
        res = OrderedDict(res or {})
        res.update(trainer.last_tta_results)
    return res


def invoke_main(argv: Any = None) -> int:
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args, flush=True)
    # everything a run needs must exist before any process starts
    try:
        cfg = load_config(args)
        check_tta_supported(cfg)
        check_inputs_exist(cfg, eval_only=args.eval_only, resume=args.resume)
    except (ConfigError, FileNotFoundError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr, flush=True)
        return 2
    backend = "gloo" if str(cfg.MODEL.DEVICE).startswith("cpu") else "nccl"
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend=backend,
        )
    except ProcessFailedError as e:
        print(f"error: a training process failed:{e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:  # SIGTERM/SIGINT: a checkpoint was saved (TrainingInterrupted)
        print(f"\n{e}", file=sys.stderr, flush=True)
        return int(getattr(e, "exit_code", 130))
    return 0


if __name__ == "__main__":
    sys.exit(invoke_main())

"""Build the whole model from a config, through detectron2's ``META_ARCH_REGISTRY`` pattern."""

from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

from ...utils.registry import build_from_registry

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Meta-architectures ``(cfg) -> nn.Module`` (``GeneralizedRCNN``, ``ProposalNetwork``), chosen by
MODEL.META_ARCHITECTURE.
"""


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``cfg.MODEL.DEVICE``.

    Weights are not loaded here; use the checkpointer with ``cfg.MODEL.WEIGHTS``.
    """
    model = build_from_registry(
        META_ARCH_REGISTRY,
        cfg.MODEL.META_ARCHITECTURE,
        "MODEL.META_ARCHITECTURE",
        "meta-architecture",
        cfg,
    )
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model


#: What :func:`prepare_model` prepares a model for.
PREPARE_MODES = ("train", "inference", "export")


def prepare_model(model: nn.Module, cfg, mode: str) -> nn.Module:
    """Apply ``cfg``'s speed and precision settings to a built model, for ``mode``; returns it.

    The one place where ``MODEL.FAST_PATH`` and ``TEST.AMP.SCOPE`` take effect (``DefaultTrainer``,
    ``tools/train_net.py --eval-only``, ``DefaultPredictor``, export and the benchmarks call it):

    * ``"train"``: with ``MODEL.FAST_PATH``,
      :func:`~resnet_backbones.modeling.fast_path.optimize_keeping_state_dict` in place (subsampled
      RoIAlign, FrozenBN applied through the conv weights, channels_last): parameters and state
      dict unchanged, so the optimizer, DDP and checkpoints work as without it; evaluations during
      training use the same model.
    * ``"inference"`` (load the weights first): with ``MODEL.FAST_PATH``,
      :func:`~resnet_backbones.modeling.fast_path.optimize_folding_state_dict` in place (BN folded
      into the convs as well, res5 over chunks of RoIs); eval mode. The state dict then has the
      folded form.
    * ``"export"`` (load the weights first): with ``MODEL.FAST_PATH``, BN folded into the convs
      only (:func:`~resnet_backbones.modeling.fuse.fold_batch_norm`), which every tracer and ONNX
      exporter handles; eval mode.

    In every mode a detector's inference autocast scope is set from ``TEST.AMP.SCOPE``. Outputs
    equal the unprepared model's up to float rounding (~1e-5 relative).
    """
    from ...precision import inference_amp_scope
    from ..fast_path import optimize_folding_state_dict, optimize_keeping_state_dict
    from ..fuse import fold_batch_norm

    if mode not in PREPARE_MODES:
        raise ValueError(f"prepare_model: mode must be one of {PREPARE_MODES}, got {mode!r}")
    if hasattr(model, "inference_amp_scope"):
        model.inference_amp_scope = inference_amp_scope(cfg)
    if not cfg.MODEL.FAST_PATH:
        return model if mode == "train" else model.eval()
    if mode == "train":
        return optimize_keeping_state_dict(model)
    if mode == "inference":
        return optimize_folding_state_dict(model, inplace=True)
    return fold_batch_norm(model, inplace=True)

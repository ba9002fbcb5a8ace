"""Normalization layers: ``FrozenBatchNorm2d``, ``get_norm`` and BN -> FrozenBN conversion.

Names and semantics follow detectron2 (``detectron2/layers/batch_norm.py``) so that checkpoints
trained there load here by the same state-dict keys.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FrozenBatchNorm2d", "NormSpec", "convert_frozen_batchnorm", "get_norm"]

# A norm name ("BN", "SyncBN", "FrozenBN", "GN", "" for none) or a ``channels -> nn.Module``
# factory.
NormSpec = Union[str, Callable[[int], nn.Module], None]

GN_NUM_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters:
    ``y = (x - mean) / sqrt(var + eps) * w + b``.

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, not parameters, so an
    optimizer never sees them and ``model.train()`` never updates them. Freshly built, the layer is
    an exact identity (``running_var = 1 - eps``). Used for fine-tuning with small per-GPU batches,
    where batch statistics would be too noisy to train (detectron2's default for detection).
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)
        # Kept (as a tensor) only when converted from a BatchNorm, so state-dict keys do not change.
        self.register_buffer("num_batches_tracked", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # An explicit affine transform: F.batch_norm's backward would also compute (unused)
            # gradients for weight and bias, costing memory.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(
                x.dtype
            )
        # Without gradients F.batch_norm is a single fused kernel.
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )

    def _load_from_state_dict(
        self,
        state_dict: Dict[str, Any],
        prefix: str,
        local_metadata: Dict[str, Any],
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Caffe2/MSRA checkpoints fold the statistics into weight and bias: keep ours an
            # identity.
            state_dict.setdefault(prefix + "running_mean", torch.zeros_like(self.running_mean))
            state_dict.setdefault(
                prefix + "running_var", torch.ones_like(self.running_var) - self.eps
            )
        if self.num_batches_tracked is None:
            # A BatchNorm checkpoint (torchvision) carries a step counter that a frozen layer
            # ignores.
            state_dict.pop(prefix + "num_batches_tracked", None)
        else:
            # Converted from a BatchNorm (a frozen stage of a norm="BN" net), the layer keeps the
            # counter's key; a checkpoint without it (FrozenBN, MSRA) keeps the current value, as
            # BatchNorm2d does.
            state_dict.setdefault(prefix + "num_batches_tracked", self.num_batches_tracked)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """See :func:`convert_frozen_batchnorm`."""
        return convert_frozen_batchnorm(module)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d``/``SyncBatchNorm`` in ``module`` by a ``FrozenBatchNorm2d``.

    The current statistics and affine values are copied, so outputs in eval mode do not change.
    A BatchNorm ``module`` itself is returned converted; any other module is converted in place
    and returned.
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if tensors:
            frozen.to(device=tensors[0].device)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        frozen.num_batches_tracked = module.num_batches_tracked
        return frozen
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def get_norm(norm: NormSpec, out_channels: int) -> Optional[nn.Module]:
    """The normalization layer for ``out_channels`` channels, or ``None`` for ``""``/``None``.

    ``norm`` is one of ``"BN"`` (``nn.BatchNorm2d``), ``"SyncBN"`` (``nn.SyncBatchNorm``),
    ``"FrozenBN"`` (:class:`FrozenBatchNorm2d`), ``"GN"`` (``nn.GroupNorm`` with 32 groups), or a
    callable ``channels -> nn.Module``.
    """
    if norm is None or norm == "":
        return None
    if callable(norm):
        return norm(out_channels)
    if norm == "BN":
        return nn.BatchNorm2d(out_channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(out_channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(out_channels)
    if norm == "GN":
        if out_channels % GN_NUM_GROUPS != 0:
            raise ValueError(
                f"norm 'GN' uses {GN_NUM_GROUPS} groups, but {out_channels} channels are not "
                f"divisible by {GN_NUM_GROUPS}"
            )
        return nn.GroupNorm(GN_NUM_GROUPS, out_channels)
    raise ValueError(
        f"unknown norm {norm!r}; expected 'BN', 'SyncBN', 'FrozenBN', 'GN', '' or a callable"
    )

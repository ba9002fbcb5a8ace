"""Inference optimisation: fold BatchNorm into the preceding convolution, convert the memory format.

In eval mode a BatchNorm (or :class:`~resnet_backbones.layers.FrozenBatchNorm2d`) is the per-channel
affine map ``y = x * s + t`` with ``s = gamma / sqrt(running_var + eps)`` and
``t = beta - running_mean * s``. When it directly follows a convolution ``x = W * z + b`` it can be
folded into that convolution: ``W' = W * s`` (per output channel) and ``b' = b * s + t``. The folded
network does one pass over each feature map less per conv and computes the same function up to
float rounding (the folded weights are computed in float64 and rounded once).

What is folded (everything else is left untouched, so any module tree can be passed):

* every :class:`~resnet_backbones.layers.Conv2d` whose ``.norm`` is a ``BatchNorm2d``,
  ``SyncBatchNorm`` or ``FrozenBatchNorm2d`` (the stem, every block conv and projection shortcut of
  :class:`~resnet_backbones.modeling.backbone.ResNet`, a detector's res5 head, ...): the norm is
  removed (``norm=None``), the conv gains a bias; its ``activation`` is kept;
* in pre-activation blocks, the ``norm2`` (and ``norm3``) that directly follows ``conv1``
  (and ``conv2``) is folded into that conv and replaced by ``nn.Identity``. ``norm1`` normalizes the
  block input (a residual sum, not a conv output) and stays, as do the stem-less ``post_norm``;
* inside an ``nn.Sequential``, a conv without norm/activation of its own immediately followed by a
  ``BatchNorm2d`` / ``FrozenBatchNorm2d`` (e.g. torchvision's ``downsample``): the norm becomes
  ``nn.Identity``.

Not folded: GroupNorm (its statistics depend on the input), BatchNorm without running statistics
(``track_running_stats=False`` normalizes with batch statistics even in eval mode), norms whose
channel count does not match the conv's outputs.

The folded model computes **eval-mode** outputs: BatchNorm's running statistics are baked in, so a
folded model must not be trained (its batch statistics would no longer be applied). By default the
input model is not modified (it is deep-copied first); pass ``inplace=True`` to fold in place.
"""

from __future__ import annotations

import copy
import warnings
from typing import Dict, List, Optional, Tuple, Type, Union

import torch
from torch import nn

from ..layers import Conv2d, FrozenBatchNorm2d
from .backbone.resnet import PreActBasicBlock, PreActBottleneckBlock

__all__ = [
    "FOLDABLE_NORMS",
    "PREACT_FOLDS",
    "fold_batch_norm",
    "freeze_for_inference",
    "fuse_conv_bn_weights",
    "norm_scale_shift",
    "optimize_for_inference",
]

#: Norm layers that are a per-channel affine map in eval mode (when they have running statistics).
FOLDABLE_NORMS: Tuple[Type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)

#: ``(conv, norm)`` attribute pairs of pre-activation blocks where ``norm`` reads only ``conv``'s
#: output.
PREACT_FOLDS: Dict[Type[nn.Module], List[Tuple[str, str]]] = {
    PreActBasicBlock: [("conv1", "norm2")],
    PreActBottleneckBlock: [("conv1", "norm2"), ("conv2", "norm3")],
}


def norm_scale_shift(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(scale, shift)`` in float64 with ``norm(x) == x * scale + shift`` per channel in eval mode.

    ``None`` when ``norm`` is not such a map (GroupNorm, BatchNorm without running statistics, ...).
    """
    if not isinstance(norm, FOLDABLE_NORMS):
        return None
    mean, var = norm.running_mean, norm.running_var
    if mean is None or var is None:  # BatchNorm(track_running_stats=False): batch statistics
        return None
    weight, bias = norm.weight, norm.bias  # None for BatchNorm(affine=False)
    scale = (var.detach().double() + norm.eps).rsqrt()
    if weight is not None:
        scale = scale * weight.detach().double()
    shift = -mean.detach().double() * scale
    if bias is not None:
        shift = shift + bias.detach().double()
    return scale, shift


def fuse_conv_bn_weights(
    weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor, shift: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by ``x * scale + shift`` (per output channel).

    Computed in float64, returned in ``weight``'s dtype, device and memory format.
    """
    w = weight.detach().double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias.detach().double() * scale + shift
    memory_format = (
        torch.channels_last
        if weight.dim() == 4
        and weight.is_contiguous(memory_format=torch.channels_last)
        and not weight.is_contiguous()
        else torch.contiguous_format
    )
    new_weight = w.to(weight.dtype).contiguous(memory_format=memory_format)
    return new_weight, b.to(dtype=weight.dtype, device=weight.device)


def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> bool:
    """Fold ``norm`` into ``conv``'s weight and bias; ``False`` (nothing changed) if not
    foldable."""
    if conv.out_channels != getattr(norm, "num_features", None):
        return False
    affine = norm_scale_shift(norm)
    if affine is None:
        return False
    scale, shift = (t.to(conv.weight.device) for t in affine)
    new_weight, new_bias = fuse_conv_bn_weights(conv.weight, conv.bias, scale, shift)
    requires_grad = conv.weight.requires_grad
    conv.weight = nn.Parameter(new_weight, requires_grad=requires_grad)
    conv.bias = nn.Parameter(new_bias, requires_grad=requires_grad)
    return True


def _is_bare_conv(module: nn.Module) -> bool:
    """A conv whose output is its convolution alone (no norm or activation of its own)."""
    return (
        isinstance(module, nn.Conv2d)
        and getattr(module, "norm", None) is None
        and getattr(module, "activation", None) is None
    )


def _fold_module(module: nn.Module) -> int:
    """Fold every foldable norm below ``module`` (in place); returns how many were folded."""
    folded = 0
    for sub in list(module.modules()):
        if isinstance(sub, Conv2d) and sub.norm is not None and _fold_into(sub, sub.norm):
            sub.norm = None
            folded += 1
        for conv_name, norm_name in PREACT_FOLDS.get(type(sub), []):
            conv, norm = getattr(sub, conv_name), getattr(sub, norm_name)
            if _is_bare_conv(conv) and _fold_into(conv, norm):
                setattr(sub, norm_name, nn.Identity())
                folded += 1
        if isinstance(sub, nn.Sequential):
            children = list(sub.named_children())
            for (_, conv), (norm_name, norm) in zip(children, children[1:]):
                if (
                    _is_bare_conv(conv)
                    and isinstance(norm, FOLDABLE_NORMS)
                    and _fold_into(conv, norm)
                ):
                    setattr(sub, norm_name, nn.Identity())
                    folded += 1
    return folded


def fold_batch_norm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with every BatchNorm / FrozenBN that follows a conv folded into that conv.

    See the module docstring for what is folded. The result computes ``model``'s eval-mode outputs
    (within float rounding, ~1e-6 relative) and is returned in eval mode. ``inplace=False`` (the
    default) folds a deep copy and leaves ``model`` unchanged; ``inplace=True`` modifies and
    returns ``model`` itself.
    """
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        _fold_module(model)
    return model.eval()


def optimize_for_inference(
    model: nn.Module, *, channels_last: bool = True, fold_bn: bool = True, inplace: bool = False
) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference: BN folded, optionally channels_last.

    Args:
        model: any module tree (a :class:`ResNet` classifier or backbone, a detector, a res5 head).
        channels_last: convert 4-d parameters and buffers to ``torch.channels_last``; modules with
            a boolean ``channels_last`` attribute (``ResNet``) are switched on so that they convert
            their input too. Other entry points should pass channels_last inputs (e.g. a res5 head
            fed by a channels_last backbone gets them already). Outputs are channels_last tensors
            with the same values and shape (call ``.contiguous()`` where NCHW strides matter).
        fold_bn: fold BatchNorm / FrozenBN into the preceding convs (:func:`fold_batch_norm`).
        inplace: modify ``model`` instead of a deep copy.

    On CPU (oneDNN) channels_last avoids converting each feature map to oneDNN's blocked layout and
    back around every convolution; on GPUs it lets cuDNN use tensor-core friendly NHWC kernels.
    """
    if not inplace:
        model = copy.deepcopy(model)
    if fold_bn:
        fold_batch_norm(model, inplace=True)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        for sub in model.modules():
            if isinstance(getattr(sub, "channels_last", None), bool):
                sub.channels_last = True
    return model.eval()


def freeze_for_inference(
    model: nn.Module,
    example_inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
    *,
    channels_last: bool = True,
) -> torch.jit.ScriptModule:
    """:func:`optimize_for_inference`, then traced, frozen and
    ``torch.jit.optimize_for_inference``-d.

    On CPU, TorchScript's inference passes run the convolutions in oneDNN's blocked layout with
    weights reordered once (eager mode reorders them on every call) and fuse conv+ReLU and
    conv+add+ReLU; this is the fastest CPU path measured in ``tools/benchmark.py backbone``.
    The result is specialised to ``example_inputs``' dtype and number of dimensions (other
    shapes work), has no Python control flow (a model whose ``forward`` branches on the input
    must not be traced) and returns the same values as ``model`` in eval mode (within 1e-5
    relative). TorchScript is deprecated in recent PyTorch (still functional in 2.x); the
    original ``model`` is not modified.
    """
    fast = optimize_for_inference(model, channels_last=channels_last)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings
        traced = torch.jit.trace(fast, example_inputs, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

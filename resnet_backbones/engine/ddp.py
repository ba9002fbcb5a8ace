"""Models across processes: DistributedDataParallel wrapping and SyncBN where it cannot run."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..utils import comm

__all__ = ["adapt_sync_bn", "create_ddp_model", "revert_sync_batchnorm", "unwrap_model"]

logger = logging.getLogger(__name__)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` by an ``nn.BatchNorm2d`` holding the same state (in
    place)."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
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


def adapt_sync_bn(model: nn.Module, device: str) -> nn.Module:
    """SyncBN needs CUDA: on CPU with several processes, fall back to per-process BatchNorm
    (warned)."""
    if not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return model
    if torch.device(device).type == "cuda" or not torch.distributed.is_initialized():
        return model  # CUDA: synchronized; no process group: SyncBatchNorm computes plain BatchNorm
    # PyTorch's SyncBatchNorm raises on CPU tensors as soon as a process group exists
    if comm.get_world_size() > 1:
        logger.warning(
            "SyncBN (nn.SyncBatchNorm) is only implemented for CUDA in PyTorch; "
            "with MODEL.DEVICE %s and %d processes it falls back to BatchNorm "
            "with per-process batch statistics (not synchronized)",
            device,
            comm.get_world_size(),
        )
    return revert_sync_batchnorm(model)


def create_ddp_model(
    model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any
) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when there are several processes (else
    return it)."""
    if comm.get_world_size() == 1:
        return model
    p = next(iter(model.parameters()), None)
    if p is not None and p.device.type == "cuda" and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    if (
        "broadcast_buffers" in kwargs
        and "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    ):
        # newer torch renamed it (buffers are then synced once at construction, which is harmless)
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, (DistributedDataParallel, nn.DataParallel)) else model

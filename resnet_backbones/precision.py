"""Mixed precision (autocast) helpers shared by inference, training and the benchmarks.

Config keys (all off by default, so that the default stays numerically equal to detectron2):

* ``TEST.AMP.ENABLED`` / ``TEST.AMP.DTYPE`` ("bfloat16" default, or "float16"): inference
  (``DefaultPredictor``, evaluation);
* ``SOLVER.AMP.ENABLED`` (detectron2's key) / ``SOLVER.AMP.DTYPE`` ("float16" default, detectron2's
  AMP, or "bfloat16"): training through ``AMPTrainer``.

Where each dtype runs:

* CUDA: float16 (training with a ``GradScaler``: loss scaling, steps with inf/NaN gradients
  skipped) or bfloat16 (no scaler needed).
* CPU: bfloat16 only. ``torch.autocast("cpu", dtype=torch.float16)`` exists, but CPUs without
  native float16 arithmetic emulate it: a res5 3x3 conv measured ~5x *slower* than float32 (and
  ~10x slower than bfloat16) on the AVX512-BF16 EPYC this project is benchmarked on, and float16's
  narrow range would need loss scaling in training. float16 on CPU is refused with a message
  saying so.

Scope of the inference autocast (``TEST.AMP.SCOPE``):

* ``"roi_heads"`` (default): only the per-RoI head (RoIAlign, res5 over every proposal, the box
  predictor) runs in low precision; the backbone and the RPN stay float32, so the proposals are
  those of fp32 inference. The res5 head is ~90% of a C4 detector's inference time, so this keeps
  most of the speed; measured on R50-C4 (random weights with calibrated statistics, 6 images),
  bf16 detections scored against fp32 ones reach COCO AP 0.94 with this scope and 0.76 with
  ``"all"``: bf16 rounding in the backbone moves RPN scores enough to change which proposals
  survive top-k and NMS.
* ``"all"``: the whole model under autocast (the most speed, on GPUs too).

Training (``SOLVER.AMP``) always autocasts the whole model: losses average over many samples and
do not depend on the exact proposal ranking the way detections do.

Under autocast the convolutions and linear layers run in the low precision; the detector keeps
box decoding, NMS, proposal selection, RoIAlign, losses and class scores in float32 (the RPN and
box-predictor outputs are cast to float32 before any of them).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional, Union

import torch

__all__ = [
    "AMP_DTYPES",
    "REDUCED_PRECISION_DTYPES",
    "AMP_SCOPES",
    "autocast_context",
    "check_amp_device",
    "fp32_if_reduced",
    "fp32_outside_scope",
    "inference_amp_dtype",
    "needs_grad_scaler",
    "parse_amp_dtype",
    "training_amp_dtype",
]

#: Accepted spellings of the two autocast dtypes.
AMP_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

#: Values of TEST.AMP.SCOPE: the parts of the detector an inference autocast covers.
AMP_SCOPES = ("roi_heads", "all")

#: Floating dtypes that :func:`fp32_if_reduced` converts.
REDUCED_PRECISION_DTYPES = (torch.float16, torch.bfloat16)

DTypeLike = Union[str, torch.dtype]


def fp32_if_reduced(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 if it is float16/bfloat16 (what autocast produces), else ``x`` itself:
    float32 and float64 tensors pass through unchanged (no copy), so fp32 code is unaffected."""
    return x.float() if x.dtype in REDUCED_PRECISION_DTYPES else x


def parse_amp_dtype(dtype: DTypeLike, key: str = "AMP dtype") -> torch.dtype:
    """``torch.bfloat16`` or ``torch.float16`` from a name ("bfloat16"/"bf16", "float16"/"fp16"/"half",
    case-insensitive, optional "torch." prefix) or a dtype; anything else raises ``ValueError``
    naming ``key`` and the accepted values."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
        raise ValueError(f"{key}: autocast runs in bfloat16 or float16, not {dtype}")
    if not isinstance(dtype, str):
        raise ValueError(f"{key}: expected 'bfloat16' or 'float16', got {type(dtype).__name__} {dtype!r}")
    name = dtype.strip().lower()
    if name.startswith("torch."):
        name = name[len("torch."):]
    if name not in AMP_DTYPES:
        raise ValueError(
            f"{key}: unknown autocast dtype {dtype!r}; expected 'bfloat16' (alias 'bf16') or 'float16' "
            f"(aliases 'fp16', 'half')"
        )
    return AMP_DTYPES[name]


def check_amp_device(device_type: str, dtype: torch.dtype, key: str = "AMP dtype") -> None:
    """Refuse combinations that do not work (or work badly) with a message saying what to use."""
    if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        raise ValueError(f"{key}: autocast is not available for device type {device_type!r}")
    if device_type == "cpu" and dtype == torch.float16:
        raise ValueError(
            f"{key}: float16 autocast on the CPU is not supported here: CPUs without native float16 "
            f"arithmetic emulate it (measured ~5x slower than float32 on this project's benchmark CPU) "
            f"and float16 training needs loss scaling. Use 'bfloat16' on the CPU (float16 is for CUDA)."
        )


def _device_type(device: Any) -> str:
    if isinstance(device, torch.device):
        return device.type
    return torch.device(device).type


def autocast_context(device_type: Any, enabled: bool = True, dtype: DTypeLike = "bfloat16") -> ContextManager:
    """``torch.autocast(device_type, dtype)`` when ``enabled``, else a no-op context.

    ``device_type`` may be "cpu"/"cuda", a ``torch.device`` or a device string ("cuda:1");
    ``dtype`` a name or dtype (see :func:`parse_amp_dtype`). Disabled, nothing is validated or
    changed: fp32 code runs exactly as without the context.
    """
    if not enabled:
        return contextlib.nullcontext()
    device_type = _device_type(device_type)
    dt = parse_amp_dtype(dtype)
    check_amp_device(device_type, dt)
    return torch.autocast(device_type=device_type, dtype=dt)


def fp32_outside_scope(device: Any, scope: str, part: str) -> ContextManager:
    """A context that turns autocast off (float32) for ``part`` ("backbone" or "rpn") of a
    detector when an autocast is active on ``device`` and ``scope`` (``TEST.AMP.SCOPE``) leaves the
    part out; otherwise a no-op, so fp32 inference is unaffected."""
    if scope not in AMP_SCOPES:
        raise ValueError(f"TEST.AMP.SCOPE must be one of {AMP_SCOPES}, got {scope!r}")
    device_type = _device_type(device)
    if scope == "all" or part not in ("backbone", "rpn") or not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def needs_grad_scaler(device_type: Any, dtype: DTypeLike) -> bool:
    """float16 training needs loss scaling (a ``GradScaler``); bfloat16 has float32's range."""
    return parse_amp_dtype(dtype) == torch.float16 and _device_type(device_type) != "cpu"


def inference_amp_dtype(cfg: Any) -> Optional[torch.dtype]:
    """The inference autocast dtype of ``cfg`` (``TEST.AMP``), or ``None`` when disabled; validated
    against ``MODEL.DEVICE``."""
    amp = cfg.TEST.get("AMP", None)
    if amp is None or not amp.get("ENABLED", False):
        return None
    dtype = parse_amp_dtype(amp.get("DTYPE", "bfloat16"), "TEST.AMP.DTYPE")
    check_amp_device(_device_type(cfg.MODEL.DEVICE), dtype, "TEST.AMP.DTYPE")
    scope = amp.get("SCOPE", "roi_heads")
    if scope not in AMP_SCOPES:
        raise ValueError(f"TEST.AMP.SCOPE must be one of {AMP_SCOPES}, got {scope!r}")
    return dtype


def training_amp_dtype(cfg: Any) -> Optional[torch.dtype]:
    """The training autocast dtype of ``cfg`` (``SOLVER.AMP``), or ``None`` when disabled;
    ``SOLVER.AMP.DTYPE`` defaults to float16 (detectron2's AMP); validated against ``MODEL.DEVICE``."""
    amp = cfg.SOLVER.AMP
    if not amp.get("ENABLED", False):
        return None
    dtype = parse_amp_dtype(amp.get("DTYPE", "float16") or "float16", "SOLVER.AMP.DTYPE")
    check_amp_device(_device_type(cfg.MODEL.DEVICE), dtype, "SOLVER.AMP.DTYPE")
    return dtype

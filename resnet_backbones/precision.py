"""Mixed precision (autocast): the one place where ``TEST.AMP`` and ``SOLVER.AMP`` are read.

Config keys (autocast is off by default, so that the default stays numerically equal to
detectron2):

* ``TEST.AMP.ENABLED`` / ``TEST.AMP.DTYPE`` ("auto" default, "bfloat16" or "float16") /
  ``TEST.AMP.SCOPE``: inference (``DefaultPredictor``, ``DefaultTrainer.test``, evaluation),
  read by :func:`inference_amp_dtype` and :func:`inference_amp_scope`; the autocast itself is
  entered through :func:`inference_autocast`.
* ``SOLVER.AMP.ENABLED`` (detectron2's key) / ``SOLVER.AMP.DTYPE`` ("float16" default, detectron2's
  AMP; "bfloat16"; or "auto"): training through ``AMPTrainer``, read by :func:`training_amp_dtype`.

Where each dtype runs:

* CUDA: float16 (training with a ``GradScaler``: loss scaling, steps with inf/NaN gradients
  skipped) or bfloat16 (no scaler needed). "auto" picks bfloat16 where the GPU supports it.
* CPU: bfloat16 only. ``torch.autocast("cpu", dtype=torch.float16)`` exists, but CPUs without
  native float16 arithmetic emulate it (a res5 3x3 conv measured ~5x *slower* than float32) and
  float16's narrow range would need loss scaling in training: float16 on CPU is refused.
* bfloat16 is not faster on every CPU: an AMD EPYC with AVX512-BF16 runs the res5 convolutions
  ~4x faster than float32, an Intel Xeon with AVX512-BF16 and no AMX ~0.6x. "auto" measures it
  once per process (:func:`measure_cpu_bf16_speed`: the res5 convolutions of a C4 head, well
  under a second) and autocasts only where bfloat16 is faster; an explicit "bfloat16" on a CPU
  where it is slower runs as asked and logs one warning with both measured rates.

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
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, ContextManager, Optional, Union

import torch
from torch.nn import functional as F

__all__ = [
    "AMP_DTYPES",
    "AMP_SCOPES",
    "AUTO",
    "Bf16Speed",
    "REDUCED_PRECISION_DTYPES",
    "autocast_context",
    "check_amp_device",
    "check_amp_scope",
    "fp32_if_reduced",
    "fp32_outside_scope",
    "inference_amp_dtype",
    "inference_amp_scope",
    "inference_autocast",
    "measure_cpu_bf16_speed",
    "needs_grad_scaler",
    "parse_amp_dtype",
    "resolve_amp_dtype",
    "training_amp_dtype",
]

logger = logging.getLogger(__name__)

#: Accepted spellings of the two autocast dtypes.
AMP_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

#: The dtype name that lets the device decide (see :func:`resolve_amp_dtype`).
AUTO = "auto"

#: Values of TEST.AMP.SCOPE: the parts of the detector an inference autocast covers.
AMP_SCOPES = ("roi_heads", "all")

#: Floating dtypes that :func:`fp32_if_reduced` converts.
REDUCED_PRECISION_DTYPES = (torch.float16, torch.bfloat16)

DTypeLike = Union[str, torch.dtype]


def fp32_if_reduced(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 if it is float16/bfloat16 (what autocast produces), else ``x`` itself:
    float32 and float64 tensors pass through unchanged (no copy), so fp32 code is unaffected."""
    return x.float() if x.dtype in REDUCED_PRECISION_DTYPES else x


# ------------------------------------------------------------------------------ dtypes
def parse_amp_dtype(
    dtype: DTypeLike, key: str = "AMP dtype", *, auto_allowed: bool = False
) -> torch.dtype:
    """``torch.bfloat16`` or ``torch.float16`` from a name ("bfloat16"/"bf16",
    "float16"/"fp16"/"half", case-insensitive, optional "torch." prefix) or a dtype; anything else
    raises ``ValueError`` naming ``key`` and the accepted values (with ``auto_allowed``, "auto"
    among them: :func:`resolve_amp_dtype` resolves it, knowing the device)."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16):
            return dtype
        raise ValueError(f"{key}: autocast runs in bfloat16 or float16, not {dtype}")
    if not isinstance(dtype, str):
        raise ValueError(
            f"{key}: expected 'bfloat16' or 'float16', got {type(dtype).__name__} {dtype!r}"
        )
    name = _normalized(dtype)
    if name not in AMP_DTYPES:
        auto = "'auto', " if auto_allowed else ""
        raise ValueError(
            f"{key}: unknown autocast dtype {dtype!r}; expected {auto}'bfloat16' (alias 'bf16') "
            f"or 'float16' (aliases 'fp16', 'half')"
        )
    return AMP_DTYPES[name]


def _normalized(name: str) -> str:
    name = name.strip().lower()
    return name[len("torch.") :] if name.startswith("torch.") else name


def check_amp_device(device_type: str, dtype: torch.dtype, key: str = "AMP dtype") -> None:
    """Refuse combinations that do not work (or work badly) with a message saying what to use."""
    if device_type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        raise ValueError(f"{key}: autocast is not available for device type {device_type!r}")
    if device_type == "cpu" and dtype == torch.float16:
        raise ValueError(
            f"{key}: float16 autocast on the CPU is not supported here: CPUs without native "
            f"float16 arithmetic emulate it (measured ~5x slower than float32 on this project's "
            f"benchmark CPU) and float16 training needs loss scaling. Use 'bfloat16' or 'auto' "
            f"on the CPU (float16 is for CUDA)."
        )


def _device_type(device: Any) -> str:
    if isinstance(device, torch.device):
        return device.type
    return torch.device(device).type


def resolve_amp_dtype(
    dtype: DTypeLike, device: Any, key: str = "AMP dtype"
) -> Optional[torch.dtype]:
    """The autocast dtype to use on ``device`` for the setting ``dtype``, or ``None`` (float32).

    * "auto" (or an empty string): CUDA -> bfloat16 where the GPU supports it, else float16;
      CPU -> bfloat16 where :func:`measure_cpu_bf16_speed` finds it faster than float32, else
      ``None``; other devices -> bfloat16.
    * a dtype name: that dtype, validated for the device (:func:`check_amp_device`); an explicit
      bfloat16 on a CPU where it is slower than float32 logs one warning with both rates.
    """
    device_type = _device_type(device)
    if isinstance(dtype, str) and _normalized(dtype) in (AUTO, ""):
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device_type == "cpu":
            return torch.bfloat16 if measure_cpu_bf16_speed().bf16_faster else None
        return torch.bfloat16
    dt = parse_amp_dtype(dtype, key, auto_allowed=True)
    check_amp_device(device_type, dt, key)
    if device_type == "cpu" and dt == torch.bfloat16:
        speed = measure_cpu_bf16_speed()
        if not speed.bf16_faster:
            _warn_bf16_slower(key, speed)
    return dt


# ------------------------------------------------------------------------ bf16 on this CPU
@dataclass(frozen=True)
class Bf16Speed:
    """Measured rates (GFLOP/s) of the res5 convolutions of a C4 head in float32 and bfloat16."""

    fp32_gflops: float
    bf16_gflops: float
    threads: int

    @property
    def bf16_faster(self) -> bool:
        return self.bf16_gflops > self.fp32_gflops

    def __str__(self) -> str:
        return (
            f"bfloat16 {self.bf16_gflops:.0f} GFLOP/s vs float32 {self.fp32_gflops:.0f} GFLOP/s "
            f"({self.threads} threads)"
        )


# res5 of a C4 head after the fast path's subsampled RoIAlign: 7x7 maps, 1x1 1024->512,
# 3x3 512->512, 1x1 512->2048 (channels_last, as the fast path runs them).
_RES5_CONVS = ((1024, 512, 1), (512, 512, 3), (512, 2048, 1))
_MEASURE_ROIS = 16


def _res5_convs_gflop() -> float:
    macs = sum(cin * cout * k * k for cin, cout, k in _RES5_CONVS) * 49 * _MEASURE_ROIS
    return 2 * macs / 1e9


@functools.lru_cache(maxsize=None)
def _measure_cpu_bf16_speed(threads: int) -> Bf16Speed:
    gen = torch.Generator().manual_seed(0)
    weights = [
        (torch.randn(cout, cin, k, k, generator=gen) * (2.0 / (cin * k * k)) ** 0.5).contiguous(
            memory_format=torch.channels_last
        )
        for cin, cout, k in _RES5_CONVS
    ]
    x0 = torch.randn(_MEASURE_ROIS, 1024, 7, 7, generator=gen).contiguous(
        memory_format=torch.channels_last
    )

    def run() -> None:
        x = x0
        for w in weights:
            x = F.relu(F.conv2d(x, w, padding=w.shape[-1] // 2))

    def timed(dtype: Optional[torch.dtype]) -> float:
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            start = time.perf_counter()
            run()
            return time.perf_counter() - start

    timed(None), timed(torch.bfloat16)  # warm-up: oneDNN picks and caches its kernels
    # alternate, best of three each: a load change on a shared machine hits both alike
    fp32 = bf16 = float("inf")
    for _ in range(3):
        fp32 = min(fp32, timed(None))
        bf16 = min(bf16, timed(torch.bfloat16))
    gflop = _res5_convs_gflop()
    speed = Bf16Speed(fp32_gflops=gflop / fp32, bf16_gflops=gflop / bf16, threads=threads)
    logger.info("bfloat16 on this CPU: %s", speed)
    return speed


def measure_cpu_bf16_speed() -> Bf16Speed:
    """float32 vs bfloat16 autocast rates of a C4 head's res5 convolutions on this CPU.

    Measured once per process and thread count (a few hundred milliseconds on 2 cores), then
    cached: whether bfloat16 pays depends on the CPU (AVX512-BF16, AMX) far more than on the
    model, and the res5 head is where a C4 detector spends ~90% of its inference time.
    """
    return _measure_cpu_bf16_speed(torch.get_num_threads())


@functools.lru_cache(maxsize=None)
def _warn_bf16_slower(key: str, speed: Bf16Speed) -> None:
    logger.warning(
        "%s: bfloat16 was asked for, but on this CPU it is slower than float32 (%s); it runs as "
        "asked. Set it to 'auto' to use bfloat16 only where it is faster.",
        key,
        speed,
    )


# ------------------------------------------------------------------------------ contexts
def autocast_context(
    device_type: Any, enabled: bool = True, dtype: DTypeLike = "bfloat16"
) -> ContextManager:
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


def inference_autocast(device: Any, dtype: Optional[torch.dtype]) -> ContextManager:
    """The inference autocast: ``dtype`` from :func:`inference_amp_dtype` (``None``: float32, a
    no-op context). Used by ``DefaultPredictor``, ``inference_on_dataset`` and so
    ``DefaultTrainer.test``."""
    return autocast_context(device, dtype is not None, dtype or "bfloat16")


def fp32_outside_scope(device: Any, scope: str, part: str) -> ContextManager:
    """A context that turns autocast off (float32) for ``part`` ("backbone" or "rpn") of a
    detector when an autocast is active on ``device`` and ``scope`` (``TEST.AMP.SCOPE``) leaves the
    part out; otherwise a no-op, so fp32 inference is unaffected."""
    check_amp_scope(scope)
    device_type = _device_type(device)
    if (
        scope == "all"
        or part not in ("backbone", "rpn")
        or not torch.is_autocast_enabled(device_type)
    ):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


# ------------------------------------------------------------------------------ config
def needs_grad_scaler(device_type: Any, dtype: DTypeLike) -> bool:
    """float16 training needs loss scaling (a ``GradScaler``); bfloat16 has float32's range."""
    return parse_amp_dtype(dtype) == torch.float16 and _device_type(device_type) != "cpu"


def inference_amp_scope(cfg: Any) -> str:
    """``TEST.AMP.SCOPE`` of ``cfg``, validated (``"roi_heads"`` where the key is absent)."""
    amp = cfg.TEST.get("AMP", None)
    return check_amp_scope(amp.get("SCOPE", "roi_heads") if amp is not None else "roi_heads")


def check_amp_scope(scope: str) -> str:
    """``scope`` if it is one of :data:`AMP_SCOPES`, else a ``ValueError`` naming the key."""
    if scope not in AMP_SCOPES:
        raise ValueError(f"TEST.AMP.SCOPE must be one of {AMP_SCOPES}, got {scope!r}")
    return scope


def inference_amp_dtype(cfg: Any) -> Optional[torch.dtype]:
    """The inference autocast dtype of ``cfg`` (``TEST.AMP``), or ``None`` for float32: disabled,
    or "auto" on a CPU where bfloat16 is slower. Validated against ``MODEL.DEVICE``."""
    amp = cfg.TEST.get("AMP", None)
    if amp is None or not amp.get("ENABLED", False):
        return None
    inference_amp_scope(cfg)
    return resolve_amp_dtype(amp.get("DTYPE", AUTO), cfg.MODEL.DEVICE, "TEST.AMP.DTYPE")


def training_amp_dtype(cfg: Any, device: Any = None) -> Optional[torch.dtype]:
    """The training autocast dtype of ``cfg`` (``SOLVER.AMP``), or ``None``: disabled, or "auto"
    on a CPU where bfloat16 is slower. An empty ``SOLVER.AMP.DTYPE`` (the classification
    config's default) means "auto". ``device`` defaults to ``cfg.MODEL.DEVICE``."""
    amp = cfg.SOLVER.AMP
    if not amp.get("ENABLED", False):
        return None
    device = cfg.MODEL.DEVICE if device is None else device
    return resolve_amp_dtype(amp.get("DTYPE", "float16"), device, "SOLVER.AMP.DTYPE")

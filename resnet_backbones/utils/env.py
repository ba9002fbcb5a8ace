"""Seeding and the environment report written at the start of a run.

* :func:`seed_all_rng` seeds python ``random``, numpy's global generator and torch (CPU and every
  CUDA device), as detectron2's function of the same name does.
* :func:`get_rng_states` / :func:`set_rng_states` capture and restore those generators, so a
  resumed run continues the exact random streams of the interrupted one. The captured state holds
  only tensors, ints, lists and strings: it survives ``torch.load(weights_only=True)``.
* :func:`collect_env_info` is a plain-text table of the software and hardware a run used.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import platform
import random
import subprocess
import sys
from datetime import datetime
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "seed_all_rng",
    "get_rng_states",
    "set_rng_states",
    "preserve_rng_states",
    "collect_env_info",
    "cpu_name",
    "cpu_flags",
    "cpu_flags_summary",
]

logger = logging.getLogger(__name__)


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed python ``random``, numpy, torch (CPU and all CUDA devices); returns the seed used.

    ``seed=None`` draws a strong random seed (pid, clock and ``os.urandom``) and logs it, so the run
    can be repeated by passing it as ``SEED``.
    """
    if seed is None:
        seed = (
            os.getpid()
            + int(datetime.now().strftime("%S%f"))
            + int.from_bytes(os.urandom(2), "big")
        ) % (2**31)
        logger.info("Using a generated random seed %d", seed)
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)
    return seed


# ----------------------------------------------------------------------------- RNG state capture
def _python_state_to_list(state: Tuple) -> List[Any]:
    version, internal, gauss = state
    return [int(version), [int(x) for x in internal], None if gauss is None else float(gauss)]


def _python_state_from_list(data: List[Any]) -> Tuple:
    version, internal, gauss = data
    return (int(version), tuple(int(x) for x in internal), gauss)


def get_rng_states() -> Dict[str, Any]:
    """The states of python ``random``, numpy's global generator, torch CPU and CUDA (if any).

    numpy's key array is stored as an int64 tensor so that the result loads with
    ``torch.load(..., weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: Dict[str, Any] = {
        "python": _python_state_to_list(random.getstate()),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_states` captured (CUDA states only where CUDA is in use)."""
    if "python" in states:
        random.setstate(_python_state_from_list(states["python"]))
    if "numpy" in states:
        s = states["numpy"]
        keys = s["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state(
            (
                s["name"],
                keys.astype(np.uint32),
                int(s["pos"]),
                int(s["has_gauss"]),
                float(s["cached_gaussian"]),
            )
        )
    if "torch" in states:
        torch.set_rng_state(
            states["torch"].cpu() if isinstance(states["torch"], torch.Tensor) else states["torch"]
        )
    cuda_states = states.get("cuda")
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        if len(cuda_states) != torch.cuda.device_count():
            logger.warning(
                "checkpoint holds %d CUDA RNG states, this machine has %d devices; "
                "restoring the first %d",
                len(cuda_states),
                torch.cuda.device_count(),
                n,
            )
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), device=i)


@contextlib.contextmanager
def preserve_rng_states() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without changing any global random stream."""
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


# ----------------------------------------------------------------------------- environment report
def _version_of(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a report must never fail
        return f"not available ({type(e).__name__})"
    version = getattr(mod, "__version__", None) or getattr(mod, "version", None)
    where = os.path.dirname(getattr(mod, "__file__", "") or "")
    return f"{version} @{where}" if where else str(version)


def _gpu_rows() -> List[Tuple[str, str]]:
    rows: List[Tuple[str, str]] = []
    if not torch.cuda.is_available():
        rows.append(("GPU available", "No: torch.cuda.is_available() == False"))
        return rows
    rows.append(("GPU available", "Yes"))
    names: Dict[str, List[str]] = {}
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        key = f"{prop.name} (sm_{prop.major}{prop.minor}, {prop.total_memory / 2**30:.1f} GiB)"
        names.setdefault(key, []).append(str(i))
    for name, ids in names.items():
        rows.append((f"GPU {','.join(ids)}", name))
    rows.append(("CUDA (torch build)", str(torch.version.cuda)))
    rows.append(("cuDNN", str(torch.backends.cudnn.version())))
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            rows.append(("Driver version", out.stdout.strip().splitlines()[0]))
    except (OSError, subprocess.SubprocessError):
        pass
    return rows


def collect_env_info() -> str:
    """A two-column text table: platform, Python, package versions, CPU/GPU, threads, env vars."""
    import resnet_backbones

    rows: List[Tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Platform", platform.platform()),
        ("Python", sys.version.replace("\n", " ")),
        (
            "resnet_backbones",
            f"{resnet_backbones.__version__} @{os.path.dirname(resnet_backbones.__file__)}",
        ),
        ("numpy", _version_of("numpy")),
        ("PyTorch", f"{torch.__version__} @{os.path.dirname(torch.__file__)}"),
        ("PyTorch debug build", str(torch.version.debug)),
        ("torchvision", _version_of("torchvision")),
        ("fvcore", _version_of("fvcore")),
        ("pycocotools", _version_of("pycocotools")),
        ("cv2", _version_of("cv2")),
        ("tensorboard", _version_of("tensorboard")),
    ]
    rows += _gpu_rows()
    rows.append(("CPU count", str(os.cpu_count())))
    try:
        rows.append(("CPU affinity", str(len(os.sched_getaffinity(0)))))
    except AttributeError:
        pass
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows.append(("distributed available", str(torch.distributed.is_available())))
    for var in (
        "CUDA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "RB_DATASETS",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
    ):
        if var in os.environ:
            rows.append((var, os.environ[var]))
    width = max(len(k) for k, _ in rows)
    lines = ["-" * (width + 50)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("-" * (width + 50))
    try:
        lines.append(torch.__config__.show().rstrip())
    except Exception:  # noqa: BLE001
        pass
    return "\n".join(lines)


if __name__ == "__main__":
    print(collect_env_info())


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``), or ``platform`` information where that is missing."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


#: CPU features that decide how fast bfloat16 (and float32) matrix products run.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def cpu_flags() -> List[str]:
    """Which of :data:`SPEED_FLAGS` this CPU reports (``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in SPEED_FLAGS if flag in have]
    except OSError:
        pass
    return []


def cpu_flags_summary() -> str:
    """``"avx512_bf16 yes, amx_bf16 no, ..."``: the flags a benchmark table must state."""
    have = set(cpu_flags())
    return ", ".join(
        f"{flag} {'yes' if flag in have else 'no'}"
        for flag in ("avx512f", "avx512_bf16", "amx_bf16")
    )

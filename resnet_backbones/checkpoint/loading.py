"""Read weight files of every supported kind, and load state dicts into models with a full report.

* :func:`read_checkpoint` reads ``.pkl`` (detectron2 checkpoints, Caffe2/MSRA model zoo files; only
  through :mod:`~resnet_backbones.checkpoint.safe_pickle`) and ``.pth``/``.pt``/... files (only
  through ``torch.load(weights_only=True)``), unwraps ``{"model": ...}``-style containers and
  returns the tensors with what was dropped and why.
* :func:`load_state_dict_with_report` loads a state dict into a model and returns a
  :class:`LoadReport` naming every matched, missing, unexpected and shape-mismatched tensor.
* :func:`load_checkpoint` does both, converting names from any supported scheme first, e.g. a
  torchvision or MSRA ImageNet ResNet into a detection backbone, or a detectron2 detector.
* :func:`save_checkpoint` writes ``.pth`` (``torch.save``) or ``.pkl`` (numpy arrays, detectron2
  style).
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .converters import ConversionResult, detect_format, to_ours
from .safe_pickle import UnsafePickleError, safe_load

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "StateDictLoadError",
    "LoadedCheckpoint",
    "LoadReport",
    "read_checkpoint",
    "load_state_dict_file",
    "save_checkpoint",
    "load_state_dict_with_report",
    "load_checkpoint",
    "align_to_model",
    "PICKLE_EXTENSIONS",
    "TORCH_EXTENSIONS",
]

PICKLE_EXTENSIONS = (".pkl", ".pickle")
TORCH_EXTENSIONS = (".pth", ".pt", ".pyth", ".ckpt", ".bin", ".tar")
# torch.save's legacy (pre-1.6, non-zip) format starts with a pickled magic number.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Where checkpoint containers keep the weights: detectron2/fvcore, Lightning/timm, pycls,
# Detectron1.
_CONTAINER_KEYS = ("model", "state_dict", "model_state", "blobs")
CLASSIFIER_RE = re.compile(r"^(backbone\.)?(linear|fc)\.(weight|bias)$")

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(Exception):
    """Base class of the errors raised while reading or loading weights."""


class CheckpointFormatError(CheckpointError, ValueError):
    """A file or object is not a weights file of a supported kind; the message names the file."""


class StateDictLoadError(CheckpointError, RuntimeError):
    """A strict load found missing, unexpected or shape-mismatched tensors (``.report`` has
    them)."""

    def __init__(self, message: str, report: "LoadReport") -> None:
        super().__init__(message)
        self.report = report


# ------------------------------------------------------------------------------------- reading
@dataclass
class LoadedCheckpoint:
    """The tensors of a weights file and what else it held.

    Attributes:
        path: the file read.
        state_dict: ``{name: tensor}`` as named in the file (numpy arrays become CPU tensors).
        container: where the tensors were found: ``"model"``, ``"state_dict"``, ``"model_state"``,
            ``"blobs"`` or ``""`` (the file is the state dict itself).
        author: detectron2's ``__author__`` entry (``"Caffe2"`` for Caffe2 model zoo files), if any.
        extra: the other top-level entries (``matching_heuristics``, ``meta``, ``iteration``, ...).
        dropped: ``(name, reason)`` for entries of the state dict that are not tensors.
        notes: adjustments made while reading (a removed ``module.`` prefix, ...).
    """

    path: str
    state_dict: Dict[str, torch.Tensor]
    container: str = ""
    author: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def metadata(self) -> Dict[str, Any]:
        """The ``meta`` entry written by :func:`save_checkpoint` (empty if absent)."""
        meta = self.extra.get("meta")
        return dict(meta) if isinstance(meta, Mapping) else {}


def _torch_detail(text: str) -> str:
    """The informative line of torch's long weights_only error message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else "no details"


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if not any(
            m in text for m in ("Unsupported global", "not an allowed global", "Unsupported class")
        ):
            raise CheckpointFormatError(
                f"{path}: not a PyTorch checkpoint that torch.load can read "
                f"({_torch_detail(text)}); "
                f"expected a file written by torch.save (.pth/.pt) or a pickle (.pkl)"
            ) from e
        first_line = _torch_detail(text).split(". ")[0].rstrip(".") + "."
        raise CheckpointFormatError(
            f"{path}: torch.load(weights_only=True) refused this file: it holds Python objects "
            f"beyond tensors and plain containers (e.g. a whole pickled nn.Module or a custom "
            f"class), and weights are only ever loaded here without running code from the file. "
            f"If you trust it, re-save just its weights: torch.save(obj.state_dict(), ...) "
            f"(torch said: {first_line})"
        ) from e
    except Exception as e:  # zip errors, bad magic number, truncated files
        detail = f"{type(e).__name__}: {_torch_detail(str(e))}"
        size = os.path.getsize(path)
        if size == 0 or _starts_with(path, b"PK\x03\x04"):  # torch.save's zip, cut short or damaged
            raise CheckpointFormatError(
                f"{path}: truncated or corrupted torch.save file ({size} bytes; "
                f"an interrupted copy, download or save?): torch.load cannot read it ({detail})"
            ) from e
        raise CheckpointFormatError(
            f"{path}: not a PyTorch checkpoint that torch.load can read ({detail}); "
            f"expected a file written by torch.save (.pth/.pt) or a pickle (.pkl)"
        ) from e


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _read_object(path: str) -> Any:
    """The Python object stored in ``path``, read safely according to its kind."""
    ext = os.path.splitext(path)[1].lower()
    if ext in TORCH_EXTENSIONS:
        return _torch_load(path)
    if ext not in PICKLE_EXTENSIONS:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
            return _torch_load(path)
        if not head.startswith(b"\x80") and head[:1] not in (b"(", b"}", b"]"):
            raise CheckpointFormatError(
                f"{path}: unknown weights file format (extension {ext or '(none)'!r}, first bytes "
                f"{head!r}); expected a PyTorch checkpoint ({', '.join(TORCH_EXTENSIONS)}) "
                f"or a pickle "
                f"({', '.join(PICKLE_EXTENSIONS)})"
            )
    try:
        obj = safe_load(path)
    except UnsafePickleError:
        raise
    except pickle.UnpicklingError as e:
        detail = str(e)  # safe_load's message already names the file
        if not detail.startswith(f"{path}: "):
            detail = f"{path}: not a readable pickle ({detail})"
        raise CheckpointFormatError(
            f"{detail}; expected a detectron2 or Caffe2 .pkl weights file (truncated or corrupted?)"
        ) from e
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path)  # legacy torch.save format under a .pkl name
    return obj


def _to_tensor(value: Any) -> Tuple[Optional[torch.Tensor], str]:
    if isinstance(value, torch.Tensor):
        return value, ""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            return None, f"numpy array of dtype {value.dtype} is not numeric"
        if not (value.flags.writeable and value.flags.c_contiguous and value.dtype.isnative):
            # read-only buffers (protocol-5 pickles), Fortran order, big-endian Caffe2 data: copy
            value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=")).copy()
        return torch.from_numpy(value), ""
    return None, f"not a tensor or array ({type(value).__name__})"


def _unwrap(obj: Any, path: str) -> LoadedCheckpoint:
    expected = (
        "a state dict (a mapping of names to tensors/arrays) or a checkpoint dict holding one "
        "under " + "/".join(repr(k) for k in _CONTAINER_KEYS)
    )
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, expected {expected}")
    container, author, extra = "", None, {}
    weights: Mapping = obj
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            container, weights = key, obj[key]
            extra = {k: v for k, v in obj.items() if k != key}
            break
    if isinstance(extra.get("__author__"), str):
        author = extra["__author__"]
    if container == "blobs":
        author = author or "Caffe2"
    loaded = LoadedCheckpoint(path, {}, container=container, author=author, extra=extra)
    for key, value in weights.items():
        if not isinstance(key, str):
            loaded.dropped.append((repr(key), "key is not a string"))
            continue
        tensor, reason = _to_tensor(value)
        if tensor is None:
            loaded.dropped.append((key, reason))
        else:
            loaded.state_dict[key] = tensor
    if not loaded.state_dict:
        top = list(obj.keys())[:10]
        raise CheckpointFormatError(
            f"{path}: no tensors found; expected {expected}. Top-level keys: {top}"
            + (f"; entries under {container!r} are not tensors" if container else "")
        )
    keys = list(loaded.state_dict)
    if all(k.startswith("module.") for k in keys):  # saved from DistributedDataParallel
        loaded.state_dict = {k[len("module.") :]: v for k, v in loaded.state_dict.items()}
        loaded.notes.append("removed the 'module.' prefix (a DistributedDataParallel checkpoint)")
    if author == "Caffe2" or (not container and not author and _looks_caffe2(keys)):
        loaded.author = "Caffe2"
    return loaded


def _looks_caffe2(keys: Sequence[str]) -> bool:
    return "conv1_w" in keys or any(k.endswith(("_bn_s", "_momentum")) for k in keys)


def read_checkpoint(path: PathLike) -> LoadedCheckpoint:
    """Read the tensors of a weights file of any supported kind.

    ``.pkl``/``.pickle``: detectron2 checkpoints (``{"model": arrays, "__author__": ...}``) and
    Caffe2 model zoo files (a dict of blobs, or ``{"blobs": ...}``), read with the restricted
    unpickler (``encoding="latin1"`` for Python 2 files). ``.pth``/``.pt``/``.pyth``/``.ckpt``/
    ``.bin``/``.tar``: ``torch.load(map_location="cpu", weights_only=True)``. Other extensions are
    recognised by their first bytes.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: a pickle names a global that is not admitted (nothing was run).
        CheckpointFormatError: anything else that is not a weights file; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    if not os.path.isfile(path):
        raise CheckpointFormatError(
            f"{path}: is not a file (a directory?); expected a weights file"
        )
    return _unwrap(_read_object(path), path)


def load_state_dict_file(path: PathLike) -> Dict[str, torch.Tensor]:
    """``read_checkpoint(path).state_dict``: the tensors of a weights file, as named there."""
    return read_checkpoint(path).state_dict


# ------------------------------------------------------------------------------------- writing
def save_checkpoint(
    path: PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    author: Optional[str] = "resnet_backbones",
    metadata: Optional[Mapping[str, Any]] = None,
    wrap: bool = True,
    matching_heuristics: bool = False,
) -> None:
    """Write ``state_dict`` to ``path``.

    ``.pkl``/``.pickle``: a detectron2-style pickle ``{"model": numpy arrays, "__author__": author,
    "meta": metadata[, "matching_heuristics": True]}``. Anything else: ``torch.save`` of
    ``{"model": tensors, "__author__": author, "meta": metadata}``, or of the bare state dict when
    ``wrap=False`` (what ``torchvision``'s ``load_state_dict(torch.load(...))`` expects).
    Metadata must hold only str/number/bool/None and lists/dicts of them, so that
    ``weights_only`` loading accepts it.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    meta = dict(metadata or {})
    if ext in PICKLE_EXTENSIONS:
        arrays = {}
        for k, v in tensors.items():
            if v.dtype == torch.bfloat16:
                raise ValueError(
                    f"{k}: bfloat16 tensors cannot be stored as numpy arrays; "
                    "convert to float32 first"
                )
            arrays[k] = v.numpy()
        obj: Dict[str, Any] = {"model": arrays, "__author__": author or "unknown", "meta": meta}
        if matching_heuristics:
            obj["matching_heuristics"] = True
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=4)
        return
    if wrap:
        torch.save({"model": tensors, "__author__": author or "unknown", "meta": meta}, path)
    else:
        torch.save(OrderedDict(tensors), path)


# ------------------------------------------------------------------------------------- loading
@dataclass
class LoadReport:
    """What loading a state dict into a model did, tensor by tensor.

    Attributes:
        matched: model tensors loaded from the checkpoint.
        missing: model tensors the checkpoint does not provide (left as they were).
        unexpected: checkpoint tensors the model has no place for (not loaded).
        shape_mismatch: ``(name, checkpoint shape, model shape)``; not loaded.
        dropped: ``(checkpoint name, reason)`` removed before loading on request (classifier head,
            ``ignore_unexpected``) or by reading/conversion (optimizer momentum, ...).
        ignored_missing: missing tensors matched by ``ignore_missing`` (e.g. a detector's
            pixel_mean).
        defaulted: model tensors absent from the checkpoint that a module's loading hook filled in
            (FrozenBN sets running_mean=0 / running_var=1-eps for Caffe2-style checkpoints).
        absorbed: checkpoint tensors accepted and discarded by a module's loading hook
            (FrozenBN ignores BatchNorm's ``num_batches_tracked``).
        renamed: ``(checkpoint name, model name)`` matched by unique name suffix.
        notes, metadata, source: from the conversion, if :func:`load_checkpoint` did one.
        architecture: when checkpoint and model are ResNets of different depth or block type,
            one line saying so (e.g. ResNet-101 weights into a ResNet-50); else "".
    """

    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    ignored_missing: List[str] = field(default_factory=list)
    defaulted: List[str] = field(default_factory=list)
    absorbed: List[str] = field(default_factory=list)
    renamed: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    metadata: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    architecture: str = ""

    @property
    def ok(self) -> bool:
        """No missing, unexpected or shape-mismatched tensors (what ``strict=True`` requires)."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        head = f"{len(self.matched)} tensors matched" + (
            f" from {self.source}" if self.source else ""
        )
        counts = (
            f"; missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"shape mismatch {len(self.shape_mismatch)}, dropped {len(self.dropped)}"
        )
        lines = [head + counts]
        if self.architecture:
            lines.append(self.architecture)
        if self.missing:
            lines.append(f"missing from the checkpoint ({len(self.missing)}), left as initialized:")
            lines.extend("  " + g for g in group_names(self.missing))
        if self.unexpected:
            lines.append(f"unexpected in the checkpoint ({len(self.unexpected)}), not loaded:")
            lines.extend("  " + g for g in group_names(self.unexpected))
        if self.shape_mismatch:
            lines.append(f"shape mismatch ({len(self.shape_mismatch)}), not loaded:")
            lines.extend(
                f"  {name}: checkpoint {tuple(c)} vs model {tuple(m)}"
                for name, c, m in self.shape_mismatch
            )
        if self.dropped:
            lines.append(f"dropped before loading ({len(self.dropped)}):")
            by_reason: Dict[str, List[str]] = {}
            for name, reason in self.dropped:
                by_reason.setdefault(reason, []).append(name)
            for reason, names in by_reason.items():
                lines.append(f"  {reason}: " + ", ".join(group_names(names)))
        if self.ignored_missing:
            lines.append(
                f"missing but ignored on request ({len(self.ignored_missing)}): "
                + ", ".join(group_names(self.ignored_missing))
            )
        if self.defaulted:
            lines.append(
                f"absent from the checkpoint, filled in by the model's loading hooks "
                f"({len(self.defaulted)}; "
                f"FrozenBN statistics, BatchNorm step counters): "
                + ", ".join(group_names(self.defaulted))
            )
        if self.absorbed:
            lines.append(
                f"accepted and ignored by the model's loading hooks ({len(self.absorbed)}), "
                f"e.g. BatchNorm step counters: " + ", ".join(group_names(self.absorbed))
            )
        if self.renamed:
            lines.append(
                f"matched by name suffix ({len(self.renamed)}): "
                + ", ".join(f"{a} -> {b}" for a, b in self.renamed[:5])
                + (f", ... ({len(self.renamed) - 5} more)" if len(self.renamed) > 5 else "")
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def group_names(names: Iterable[str]) -> List[str]:
    """Compact but complete: ``["a.b.w", "a.b.bias"]`` -> ``["a.b.{w,bias}"]`` (order kept)."""
    groups: Dict[str, List[str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    out = []
    for parent, leaves in groups.items():
        body = leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"
        out.append(f"{parent}.{body}" if parent else body)
    return out


_BLOCK_RE = re.compile(r"(?:^|\.)(res[2-5])\.(\d+)\.")
_STAGES = ("res2", "res3", "res4", "res5")
_RESNET_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
    ("bottleneck", (3, 24, 36, 3)): 200,
}


def _resnet_layout(names: Iterable[str]) -> Tuple[str, Dict[str, int]]:
    """(block type, {stage: number of blocks}) of the ResNet stages named in ``names``."""
    blocks: Dict[str, int] = {}
    bottleneck = False
    for name in names:
        m = _BLOCK_RE.search(name)
        if m:
            blocks[m.group(1)] = max(blocks.get(m.group(1), 0), int(m.group(2)) + 1)
            bottleneck = bottleneck or ".conv3." in name[m.end() - 1 :]
    return ("bottleneck" if bottleneck else "basic"), blocks


def _describe_layout(kind: str, blocks: Dict[str, int]) -> str:
    stages = [s for s in _STAGES if s in blocks]
    counts = tuple(blocks[s] for s in stages)
    depth = _RESNET_DEPTHS.get((kind, counts)) if len(stages) == 4 else None
    text = f"{kind} blocks, {'/'.join(stages)} = {'/'.join(map(str, counts))}"
    return f"a ResNet-{depth} ({text})" if depth else f"a ResNet with {text}"


def architecture_mismatch(checkpoint_names: Iterable[str], model_names: Iterable[str]) -> str:
    """One line if the two name lists are ResNets of different block type or stage depths
    (compared on the stages both have, so that a res4 backbone takes a full ResNet); else ""."""
    ckpt_kind, ckpt_blocks = _resnet_layout(checkpoint_names)
    model_kind, model_blocks = _resnet_layout(model_names)
    shared = [s for s in _STAGES if s in ckpt_blocks and s in model_blocks]
    if not shared:
        return ""
    if ckpt_kind == model_kind and all(ckpt_blocks[s] == model_blocks[s] for s in shared):
        return ""
    return (
        f"architecture mismatch: the checkpoint is {_describe_layout(ckpt_kind, ckpt_blocks)}, "
        f"the model {_describe_layout(model_kind, model_blocks)}; check MODEL.RESNETS.DEPTH "
        f"(or the model name) against the weights file"
    )


def _matches(name: str, patterns: Sequence[str]) -> Optional[str]:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


_STRICT_FAILED = (
    "strict loading failed; the model was left unchanged. Use strict=False to load what matches, "
    "drop_classifier=True for a classification checkpoint in a backbone, or ignore_missing / "
    "ignore_unexpected patterns."
)


def _may_be_missing(name: str, drop_classifier: bool, ignore_missing: Sequence[str]) -> bool:
    """Whether model tensor ``name`` may be absent: ``ignore_missing`` or a dropped classifier."""
    return _matches(name, ignore_missing) is not None or bool(
        drop_classifier and CLASSIFIER_RE.match(name)
    )


def _loadable_tensors(
    state_dict: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    report: LoadReport,
    drop_classifier: bool,
    ignore_unexpected: Sequence[str],
) -> Dict[str, torch.Tensor]:
    """The checkpoint tensors to load: the classifier (on request), ``ignore_unexpected``
    matches and shape mismatches go to ``report`` instead."""
    ckpt: Dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if drop_classifier and CLASSIFIER_RE.match(name):
            report.dropped.append((name, "classification head (drop_classifier=True)"))
            continue
        pattern = _matches(name, ignore_unexpected) if name not in model_state else None
        if pattern is not None:
            report.dropped.append((name, f"matches ignore_unexpected pattern {pattern!r}"))
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor")
        ckpt[name] = value
    for name in list(ckpt):
        if name in model_state and tuple(ckpt[name].shape) != tuple(model_state[name].shape):
            report.shape_mismatch.append(
                (name, tuple(ckpt[name].shape), tuple(model_state[name].shape))
            )
            del ckpt[name]
    return ckpt


def _backup_if_may_fail(
    ckpt: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    report: LoadReport,
    drop_classifier: bool,
    ignore_missing: Sequence[str],
) -> Optional[Dict[str, torch.Tensor]]:
    """A copy of the model's tensors if a strict load of ``ckpt`` could fail, else None.

    A strict load must leave the model unchanged on failure. When every checkpoint name is a
    model name and every model name is provided or may be missing, it cannot fail; otherwise
    module hooks (FrozenBN) may still resolve the difference, so load and restore the backup if
    they do not (a copy of the weights only on that path).
    """
    may_fail = (
        bool(report.shape_mismatch)
        or any(k not in model_state for k in ckpt)
        or any(
            k not in ckpt and not _may_be_missing(k, drop_classifier, ignore_missing)
            for k in model_state
        )
    )
    return {k: v.detach().clone() for k, v in model_state.items()} if may_fail else None


def _record_outcome(
    report: LoadReport,
    incompatible: Any,
    ckpt: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    drop_classifier: bool,
    ignore_missing: Sequence[str],
) -> None:
    """Sorts ``load_state_dict``'s result into ``report``: unexpected, missing (or ignored),
    matched, absorbed and defaulted tensors."""
    mismatched = {name for name, _, _ in report.shape_mismatch}
    report.unexpected = list(incompatible.unexpected_keys)
    for name in incompatible.missing_keys:
        if name in mismatched:
            continue
        if _may_be_missing(name, drop_classifier, ignore_missing):
            report.ignored_missing.append(name)
        else:
            report.missing.append(name)
    unexpected = set(report.unexpected)
    report.matched = [k for k in ckpt if k in model_state]
    report.absorbed = [k for k in ckpt if k not in model_state and k not in unexpected]
    reported_missing = set(incompatible.missing_keys)
    report.defaulted = [
        k
        for k in model_state
        if k not in ckpt and k not in reported_missing and k not in mismatched
    ]


def _restore(model: nn.Module, backup: Mapping[str, torch.Tensor]) -> None:
    """Copies ``backup`` back into the model's tensors (a failed strict load)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in backup:
                tensor.copy_(backup[name])


def load_state_dict_with_report(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    drop_classifier: bool = False,
    ignore_missing: Sequence[str] = (),
    ignore_unexpected: Sequence[str] = (),
) -> LoadReport:
    """Load ``state_dict`` into ``model`` by exact name and report every tensor.

    Args:
        strict: raise :class:`StateDictLoadError` (naming every offending tensor) if anything is
            missing, unexpected or shape-mismatched; the model is then left unchanged. With
            ``strict=False`` whatever matches is loaded and the rest is listed in the report.
        drop_classifier: remove the classification head (``linear.*``/``fc.*``, optionally under
            ``backbone.``) from the checkpoint first, e.g. to put ImageNet weights in a backbone;
            a classifier the model has then stays as initialized (listed in ``ignored_missing``).
        ignore_missing: shell patterns (``fnmatch``) of model tensors that may be absent
            (reported under ``ignored_missing``), e.g. ``("pixel_mean", "pixel_std")``.
        ignore_unexpected: shell patterns of checkpoint tensors to drop (reported under
            ``dropped``), e.g. ``("res5.*",)`` to put a full ResNet into a res4 backbone.

    Returns:
        a :class:`LoadReport`; ``str(report)`` is a readable account.
    """
    report = LoadReport()
    model_state = model.state_dict()
    ckpt = _loadable_tensors(state_dict, model_state, report, drop_classifier, ignore_unexpected)
    backup = (
        _backup_if_may_fail(ckpt, model_state, report, drop_classifier, ignore_missing)
        if strict
        else None
    )
    incompatible = model.load_state_dict(ckpt, strict=False)
    _record_outcome(report, incompatible, ckpt, model_state, drop_classifier, ignore_missing)
    if not report.ok:
        report.architecture = architecture_mismatch(state_dict, model_state)
    if strict and not report.ok:
        if backup is not None:
            _restore(model, backup)
        raise StateDictLoadError(_STRICT_FAILED + "\n" + str(report), report)
    return report


def align_to_model(
    state_dict: Mapping[str, torch.Tensor], model_keys: Iterable[str]
) -> Tuple[Dict[str, torch.Tensor], List[Tuple[str, str]]]:
    """Rename checkpoint tensors the model has under a longer name with the same ending.

    A checkpoint key that is not a model key is renamed to the unique model key that ends with
    ``"." + key`` and that no other checkpoint key provides (e.g. an ImageNet
    ``res5.0.conv1.weight`` -> a C4 detector's ``roi_heads.res5.0.conv1.weight``;
    ``stem.conv1.weight`` ->
    ``backbone.stem.conv1.weight``). Keys with no or several candidates stay as they are, so
    unknown prefixes are never altered. Returns the new dict and the ``(old, new)`` renames.
    """
    model_keys = list(model_keys)
    model_set = set(model_keys)
    by_suffix: Dict[str, List[str]] = {}
    for key in model_keys:
        parts = key.split(".")
        for i in range(1, len(parts)):
            by_suffix.setdefault(".".join(parts[i:]), []).append(key)
    claimed = {k for k in state_dict if k in model_set}
    out: Dict[str, torch.Tensor] = {}
    renames: List[Tuple[str, str]] = []
    for key, value in state_dict.items():
        new = key
        if key not in model_set:
            candidates = [c for c in by_suffix.get(key, []) if c not in claimed]
            if len(candidates) == 1:
                new = candidates[0]
                claimed.add(new)
                renames.append((key, new))
        out[new] = value
    # Tensors a model module accepts without holding them (BatchNorm's num_batches_tracked into a
    # FrozenBN) follow the renamed siblings of their module.
    parents: Dict[str, Optional[str]] = {}
    for old, new in renames:
        old_parent, new_parent = old.rpartition(".")[0], new.rpartition(".")[0]
        if (
            new.endswith("." + old.rpartition(".")[2])
            and parents.get(old_parent, new_parent) == new_parent
        ):
            parents[old_parent] = new_parent
        else:
            parents[old_parent] = None  # inconsistent: leave this module's other tensors alone
    for key in [k for k in out if k not in model_set and k in state_dict]:
        parent, _, leaf = key.rpartition(".")
        target = parents.get(parent)
        if target and f"{target}.{leaf}" not in out:
            out[f"{target}.{leaf}"] = out.pop(key)
            renames.append((key, f"{target}.{leaf}"))
    return out, renames


def load_checkpoint(
    model: nn.Module,
    checkpoint: Union[PathLike, Mapping[str, torch.Tensor], LoadedCheckpoint],
    *,
    source: str = "auto",
    strict: bool = True,
    drop_classifier: bool = False,
    ignore_missing: Sequence[str] = (),
    ignore_unexpected: Sequence[str] = (),
    match_suffix: bool = True,
) -> LoadReport:
    """Load a weights file (or state dict) of any supported naming scheme into ``model``.

    ``checkpoint``: a path, a state dict, or a :class:`LoadedCheckpoint` already read (its
    author, dropped entries, notes and saved ``meta`` then reach the report as for a path).

    1. read the file (:func:`read_checkpoint`);
    2. rename to our names from ``source`` (``"auto"`` detects torchvision/timm, msra-pkl,
       detectron2 or ours); a detectron2 detector checkpoint keeps its names for a detector model
       and gives up its ResNet (``backbone.*``, ``roi_heads.res5.*``) for a bare ResNet model;
    3. with ``match_suffix``, rename tensors the model holds under a longer name
       (:func:`align_to_model`: ImageNet weights into a detector's
       ``backbone.*``/``roi_heads.res5.*``);
    4. :func:`load_state_dict_with_report` with ``strict``, ``drop_classifier``, ``ignore_*``.

    The report also lists what reading and conversion dropped (e.g. Caffe2 momentum blobs), the
    conversion's notes, and its metadata (input format, pixel mean/std, stride_in_1x1).
    """
    dropped: List[Tuple[str, str]] = []
    notes: List[str] = []
    extra_meta: Dict[str, Any] = {}
    author = None
    if isinstance(checkpoint, Mapping):
        state_dict, where = dict(checkpoint), "<state dict>"
    else:
        loaded = (
            checkpoint if isinstance(checkpoint, LoadedCheckpoint) else read_checkpoint(checkpoint)
        )
        state_dict, where, author = loaded.state_dict, loaded.path, loaded.author
        dropped += loaded.dropped
        notes += loaded.notes
        extra_meta = loaded.metadata
    if source == "auto":
        source = detect_format(state_dict, author=author)
    model_keys = list(model.state_dict())
    kwargs: Dict[str, Any] = {}
    if source == "detectron2":
        bare_model = not any(
            k.startswith(("backbone.", "roi_heads.", "proposal_generator.")) for k in model_keys
        )
        kwargs["backbone_only"] = True if bare_model else None
    conversion: ConversionResult = to_ours(state_dict, source, **kwargs)
    converted = conversion.state_dict
    if drop_classifier:  # before suffix matching, so that a head can never match a model tensor
        for name in [k for k in converted if CLASSIFIER_RE.match(k)]:
            del converted[name]
            dropped.append((name, "classification head (drop_classifier=True)"))
    renames: List[Tuple[str, str]] = []
    if match_suffix:
        converted, renames = align_to_model(converted, model_keys)
    try:
        report = load_state_dict_with_report(
            model,
            converted,
            strict=strict,
            drop_classifier=drop_classifier,
            ignore_missing=ignore_missing,
            ignore_unexpected=ignore_unexpected,
        )
    except StateDictLoadError as e:
        _annotate(e.report, where, source, dropped, conversion, renames, notes, extra_meta)
        raise StateDictLoadError(
            f"{where} ({source}): {_STRICT_FAILED}\n{e.report}", e.report
        ) from None
    _annotate(report, where, source, dropped, conversion, renames, notes, extra_meta)
    return report


def _annotate(
    report: LoadReport,
    where: str,
    source: str,
    dropped: List[Tuple[str, str]],
    conversion: ConversionResult,
    renames: List[Tuple[str, str]],
    notes: List[str],
    extra_meta: Dict[str, Any],
) -> None:
    report.source = f"{where} ({source})"
    report.dropped = dropped + conversion.dropped + report.dropped
    report.renamed = renames
    report.notes = notes + conversion.notes
    report.metadata = {**extra_meta, **conversion.metadata}

"""Export our backbones and the C4 detector's inference path to TorchScript and ONNX.

* :func:`export_torchscript` / :func:`export_onnx`: one module, example inputs, one file.
* :func:`export_model`: from a config (what ``tools/export_model.py`` runs): the backbone
  (``backbone_only=True``; any input size) or the detector's inference path for one image of a
  fixed size (:class:`~resnet_backbones.export.wrappers.DetectorExportWrapper`), plus
  ``export_info.json`` describing inputs, outputs and preprocessing.

Both the backbone and the whole detector export to ONNX (opset 17: RoIAlign with
``coordinate_transformation_mode=half_pixel`` for ROIAlignV2, NonMaxSuppression, TopK, NonZero).
By default the TorchScript-based ONNX exporter (``dynamo=False``) is used: it is fast and its
graph keeps the number of detections dynamic; ``dynamo=True`` (``torch.export``) also works for
both but takes much longer for the detector.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .wrappers import BackboneExportWrapper, DetectorExportWrapper, batched_nms_export

__all__ = [
    "FORMATS",
    "BackboneExportWrapper",
    "DetectorExportWrapper",
    "ExportResult",
    "batched_nms_export",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "example_image",
]

FORMATS = ("torchscript", "onnx")
DEFAULT_OPSET = 17
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence TracerWarnings: the wrappers only turn image *sizes* into Python values (anchors,
    top-k sizes), which are fixed for an export; data-dependent values stay tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.trace")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r".*(TorchScript|dynamo=False)"
        )
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=r"The feature will be removed"
        )
        yield


def export_torchscript(
    module: nn.Module, example_inputs: Tuple[torch.Tensor, ...], path: str
) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` ``module`` (in eval mode, without gradients) and save it to ``path``."""
    module.eval()
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(module, example_inputs, check_trace=False)
    traced.save(path)
    return traced


def export_onnx(
    module: nn.Module,
    example_inputs: Tuple[torch.Tensor, ...],
    path: str,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
    opset_version: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> str:
    """Export ``module`` to ONNX at ``path`` (weights inside the file); returns ``path``.

    ``dynamic_axes`` (``{name: {axis: label}}``) marks input/output axes of variable size; with
    ``dynamo=True`` they become ``dynamic_shapes`` of ``torch.export``.
    """
    module.eval()
    kwargs: Dict[str, Any] = {}
    if dynamo:
        kwargs["external_data"] = False
        if dynamic_axes:
            dims = {}
            for name in input_names:
                axes = dynamic_axes.get(name, {})
                dims[name] = {axis: torch.export.Dim(label) for axis, label in axes.items()} or None
            kwargs["dynamic_shapes"] = dims
    elif dynamic_axes:
        kwargs["dynamic_axes"] = dynamic_axes
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            module,
            tuple(example_inputs),
            path,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset_version,
            dynamo=dynamo,
            **kwargs,
        )
    return path


def example_image(
    height: int, width: int, input_format: str = "BGR", seed: int = 0
) -> torch.Tensor:
    """A ``(3, H, W)`` float 0-255 shapes image in ``input_format``: a realistic tracing input."""
    from ..data.shapes import render_detection_image

    bgr, _ = render_detection_image(seed, height, width)
    img = bgr[:, :, ::-1] if input_format == "RGB" else bgr
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float()


@dataclass
class ExportResult:
    """What :func:`export_model` wrote (also saved as ``export_info.json``)."""

    format: str
    what: str  # "backbone" or "detector"
    path: str
    input_names: List[str]
    input_shape: List[int]
    output_names: List[str]
    dynamic_axes: Dict[str, Dict[int, str]] = field(default_factory=dict)
    input_format: str = "BGR"
    pixel_mean: List[float] = field(default_factory=list)
    pixel_std: List[float] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    max_abs_diff: Optional[float] = None  # exported vs eager on the example input, if checked


def _load_weights(model: nn.Module, weights: str, backbone_only: bool) -> None:
    from ..checkpoint import load_checkpoint

    if backbone_only:
        # A full ResNet or a C4 detector checkpoint: keep what the backbone has (res2..res4).
        report = load_checkpoint(
            model, weights, drop_classifier=True, ignore_unexpected=("res5.*", "post_norm.*")
        )
    else:
        report = load_checkpoint(model, weights)
    logger.info("weights: %s", report)


def _run_exported(
    fmt: str, path: str, inputs: Tuple[torch.Tensor, ...], traced: Any
) -> Optional[List[torch.Tensor]]:
    if fmt == "torchscript":
        with torch.no_grad():
            out = traced(*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> Optional[float]:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return None
    diffs = [(x.double() - y.double()).abs().max().item() for x, y in zip(a, b) if x.numel()]
    return max(diffs, default=0.0)


@dataclass
class _ExportSpec:
    """What is exported: the wrapped model, its example inputs and how the file names them."""

    wrapper: nn.Module
    inputs: Tuple[torch.Tensor, ...]
    input_names: List[str]
    output_names: List[str]
    dynamic_axes: Dict[str, Dict[int, str]]
    notes: List[str]


def _export_cfg(cfg: Any) -> Any:
    """A mutable copy of ``cfg`` on the CPU (exports are traced on the CPU)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _backbone_spec(cfg: Any, height: int, width: int) -> Tuple[nn.Module, _ExportSpec]:
    """The backbone of ``cfg``, built, and its export: normalized images of any batch and size."""
    from ..modeling import build_backbone

    model = build_backbone(cfg)
    wrapper = BackboneExportWrapper(model)
    inputs = (torch.randn(1, len(cfg.MODEL.PIXEL_MEAN), height, width),)
    output_names = list(wrapper.output_names)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name in output_names:
        dynamic_axes[name] = {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    notes = [
        "input: normalized images, (x - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD, any batch and size"
    ]
    return model, _ExportSpec(wrapper, inputs, ["images"], output_names, dynamic_axes, notes)


def _detector_spec(cfg: Any, height: int, width: int) -> Tuple[nn.Module, _ExportSpec]:
    """The detector of ``cfg``, built, and its export: one resized image of a fixed size."""
    from ..modeling import build_model

    model = build_model(cfg)
    wrapper = DetectorExportWrapper(model)
    inputs = (example_image(height, width, cfg.INPUT.FORMAT),)
    output_names = list(wrapper.output_names)  # + "masks" with MODEL.MASK_ON
    dynamic_axes = {name: {0: "detections"} for name in output_names}
    notes = [
        f"input: one (3, {height}, {width}) image, float 0-255, {cfg.INPUT.FORMAT} order, already "
        f"resized (ResizeShortestEdge to MIN_SIZE_TEST={cfg.INPUT.MIN_SIZE_TEST}, max "
        f"{cfg.INPUT.MAX_SIZE_TEST}); the anchors are fixed for this size: export once per size",
        "outputs: boxes (D, 4) x0,y0,x1,y1 in input pixels; scores (D,) descending; "
        "classes (D,) int64, 0-based",
    ]
    if wrapper.mask_on:
        notes.append(
            "masks (D, 1, M, M) float probabilities of each detection's class inside its box "
            "(not pasted into the image: paste_masks_in_image)"
        )
    return model, _ExportSpec(wrapper, inputs, ["image"], output_names, dynamic_axes, notes)


def _prepare_model(model: nn.Module, cfg: Any, backbone_only: bool) -> List[str]:
    """Gets a built model ready to export: ``MODEL.WEIGHTS`` loaded (if set), then
    ``prepare_model(model, cfg, "export")`` (with ``MODEL.FAST_PATH``, BN folded into the convs;
    eval mode). Returns notes for ``export_info.json``."""
    from ..modeling import prepare_model

    notes: List[str] = []
    if cfg.MODEL.WEIGHTS:
        _load_weights(model, cfg.MODEL.WEIGHTS, backbone_only)
    else:
        notes.append("MODEL.WEIGHTS is empty: exported with randomly initialized weights")
    prepare_model(model, cfg, "export")
    if cfg.MODEL.FAST_PATH:
        notes.append("MODEL.FAST_PATH: BatchNorm folded into the convolutions")
    return notes


def _write_exported(
    fmt: str, spec: _ExportSpec, output_dir: str, opset_version: int, dynamo: bool
) -> Tuple[str, Optional[torch.jit.ScriptModule]]:
    """Writes ``model.ts`` or ``model.onnx``; returns its path and the traced module (TorchScript
    only, to check it without loading the file again)."""
    if fmt == "torchscript":
        path = os.path.join(output_dir, "model.ts")
        return path, export_torchscript(spec.wrapper, spec.inputs, path)
    path = os.path.join(output_dir, "model.onnx")
    export_onnx(
        spec.wrapper,
        spec.inputs,
        path,
        input_names=spec.input_names,
        output_names=spec.output_names,
        dynamic_axes=spec.dynamic_axes,
        opset_version=opset_version,
        dynamo=dynamo,
    )
    return path, None


def _check_exported(fmt: str, path: str, spec: _ExportSpec, traced: Any) -> Optional[float]:
    """Largest difference between the exported file and the eager model on the example input;
    None where it cannot be run (ONNX without onnxruntime) or the outputs do not line up."""
    with torch.no_grad():
        eager = list(spec.wrapper(*spec.inputs))
    exported = _run_exported(fmt, path, spec.inputs, traced)
    return None if exported is None else _max_abs_diff(eager, exported)


def _write_info(result: ExportResult, cfg: Any, output_dir: str) -> None:
    """``export_info.json`` (the result) and ``config.yaml`` (the config exported) next to it."""
    with open(os.path.join(output_dir, "export_info.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(result), f, indent=2)
    with open(os.path.join(output_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(cfg.dump())


def export_model(
    cfg: Any,
    fmt: str,
    output_dir: str,
    *,
    backbone_only: bool = False,
    input_size: Optional[Tuple[int, int]] = None,
    opset_version: int = DEFAULT_OPSET,
    dynamo: bool = False,
    check: bool = True,
) -> ExportResult:
    """Build the model of ``cfg`` on the CPU, load ``MODEL.WEIGHTS`` if set, and export it.

    Args:
        fmt: "torchscript" (``model.ts``) or "onnx" (``model.onnx``), written in ``output_dir``.
        backbone_only: export the backbone: input ``images`` ``(N, 3, H, W)`` (normalized, any
            N/H/W), one output per ``MODEL.RESNETS.OUT_FEATURES``. Otherwise the detector: input
            ``image`` ``(3, H, W)``, 0-255 in ``INPUT.FORMAT`` order, of exactly ``input_size``
            (default ``MIN_SIZE_TEST`` square); outputs ``boxes``, ``scores``, ``classes`` (and
            ``masks`` with ``MODEL.MASK_ON``).
        check: run the exported file on the example input and record the largest difference to
            the eager model (ONNX: only if onnxruntime is installed).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    cfg = _export_cfg(cfg)
    os.makedirs(output_dir, exist_ok=True)
    height, width = input_size or (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST)
    model, spec = (_backbone_spec if backbone_only else _detector_spec)(cfg, height, width)
    spec.notes += _prepare_model(model, cfg, backbone_only)
    spec.wrapper.eval()

    path, traced = _write_exported(fmt, spec, output_dir, opset_version, dynamo)
    result = ExportResult(
        format=fmt,
        what="backbone" if backbone_only else "detector",
        path=path,
        input_names=spec.input_names,
        input_shape=list(spec.inputs[0].shape),
        output_names=spec.output_names,
        dynamic_axes=spec.dynamic_axes,
        input_format=cfg.INPUT.FORMAT,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        notes=spec.notes,
    )
    if check:
        result.max_abs_diff = _check_exported(fmt, path, spec, traced)
    _write_info(result, cfg, output_dir)
    return result

"""Convert a weights file into another naming scheme and check the result against a real model.

The engine of ``tools/convert_weights.py``; see :func:`convert_checkpoint_file`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch

from .converters import (
    TARGET_FORMATS,
    ConversionResult,
    convert_state_dict,
    detect_format,
    infer_resnet_architecture,
    to_ours,
)
from .loading import LoadReport, load_state_dict_with_report, read_checkpoint, save_checkpoint

__all__ = ["FileConversion", "check_resnet_state_dict", "convert_checkpoint_file"]


@dataclass
class FileConversion:
    """The outcome of :func:`convert_checkpoint_file`."""

    input_path: str
    output_path: str
    conversion: ConversionResult
    architecture: Optional[Dict[str, Any]] = None
    checks: List[str] = field(default_factory=list)
    check_reports: Dict[str, LoadReport] = field(default_factory=dict)

    @property
    def check_ok(self) -> bool:
        return all(r.ok for r in self.check_reports.values())

    def summary(self) -> str:
        lines = [f"read {self.input_path}", self.conversion.summary()]
        lines.extend(f"check: {c}" for c in self.checks)
        lines.append(f"wrote {self.output_path} ({len(self.conversion.state_dict)} tensors)")
        return "\n".join(lines)


def check_resnet_state_dict(ours_state_dict: Mapping[str, torch.Tensor]) -> tuple:
    """Build the ResNet an ours-named state dict describes and load it (non-strict).

    Returns ``(architecture or None, LoadReport or None, message)``; the architecture comes from
    :func:`~resnet_backbones.checkpoint.converters.infer_resnet_architecture`.
    """
    from ..modeling import create_model

    arch = infer_resnet_architecture(ours_state_dict)
    if arch is None:
        return (
            None,
            None,
            "not a plain ResNet state dict (e.g. a whole detector): model check skipped",
        )
    kwargs: Dict[str, Any] = {"norm": arch["norm"]}
    if len(arch["stages"]) < 4:
        kwargs.update(num_classes=None, out_features=[arch["stages"][-1]])
    else:
        kwargs["num_classes"] = arch["num_classes"]
    model = create_model(arch["name"], **kwargs)
    report = load_state_dict_with_report(model, ours_state_dict, strict=False)
    described = (
        f"{arch['name']} (blocks {arch['blocks']}, "
        f"{'bottleneck' if arch['bottleneck'] else 'basic'}, "
        f"norm {arch['norm'] or 'none'}, "
        + (f"{arch['num_classes']} classes" if kwargs.get("num_classes") else "no classifier")
        + f", stages {','.join(arch['stages'])})"
    )
    status = "all tensors fit" if report.ok else "MISMATCH"
    return (
        arch,
        report,
        (
            f"{described}: {status}: {len(report.matched)} matched, {len(report.missing)} missing, "
            f"{len(report.unexpected)} unexpected, {len(report.shape_mismatch)} shape mismatches"
            + (
                ""
                if report.ok
                else "\n" + "\n".join("    " + line for line in str(report).splitlines())
            )
        ),
    )


def _check_torchvision(state_dict: Mapping[str, torch.Tensor], arch: Dict[str, Any]) -> tuple:
    import torchvision

    if arch["depth"] not in (18, 34, 50, 101, 152) or len(arch["stages"]) < 4:
        return None, "no torchvision model of this shape: torchvision check skipped"
    num_classes = arch["num_classes"] or 1000
    model = getattr(torchvision.models, arch["name"])(weights=None, num_classes=num_classes)
    report = load_state_dict_with_report(model, state_dict, strict=False)
    if arch["num_classes"] is None:
        report.missing = [k for k in report.missing if not k.startswith("fc.")]
    status = "all tensors fit" if report.ok else "MISMATCH"
    return report, (
        f"torchvision.models.{arch['name']}: {status}: {len(report.matched)} matched, "
        f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
        f"{len(report.shape_mismatch)} shape mismatches"
        + (
            ""
            if report.ok
            else "\n" + "\n".join("    " + line for line in str(report).splitlines())
        )
    )


def convert_checkpoint_file(
    input_path: str,
    output_path: str,
    *,
    source: str = "auto",
    target: str = "ours",
    backbone_only: Optional[bool] = None,
    detectron2_prefix: str = "backbone.",
    check: bool = True,
    overwrite: bool = False,
) -> FileConversion:
    """Read ``input_path``, convert ``source`` -> ``target`` names, check, and write
    ``output_path``.

    Output: ``.pkl`` gives a detectron2-style pickle of numpy arrays; otherwise ``torch.save`` of
    ``{"model": ..., "__author__": ..., "meta": ...}``, except for ``target="torchvision"``, which
    writes the bare state dict that ``torchvision_model.load_state_dict(torch.load(path))`` takes.
    ``meta`` records the conversion metadata (input format, pixel mean/std, stride_in_1x1, source).

    ``check``: build the ResNet the weights describe (depth from the block counts) and load them
    into it, and into the torchvision model for ``target="torchvision"``; results in ``checks``.
    ``detectron2_prefix``: prefix of backbone tensors for ``target="detectron2"`` (``""`` writes
    the unprefixed layout of detectron2's ImageNet initializations, with ``matching_heuristics``).
    """
    if target not in TARGET_FORMATS:
        raise ValueError(
            f"unknown target format {target!r}; expected one of {', '.join(TARGET_FORMATS)}"
        )
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise ValueError(f"{output_path}: output would overwrite the input; choose another path")
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(
            f"{output_path}: already exists (pass overwrite=True / --overwrite to replace it)"
        )
    loaded = read_checkpoint(input_path)
    if source == "auto":
        source = detect_format(loaded.state_dict, author=loaded.author)
    source_kwargs = {"backbone_only": backbone_only} if source == "detectron2" else {}
    target_kwargs = {"prefix": detectron2_prefix} if target == "detectron2" else {}
    conversion = convert_state_dict(
        loaded.state_dict, source, target, source_kwargs=source_kwargs, target_kwargs=target_kwargs
    )
    conversion.dropped = [
        (k, f"{r} (while reading the file)") for k, r in loaded.dropped
    ] + conversion.dropped
    conversion.notes = loaded.notes + conversion.notes
    conversion.metadata = {**loaded.metadata, **conversion.metadata, "converted_from": source}
    result = FileConversion(input_path, output_path, conversion)

    if check:
        ours = to_ours(loaded.state_dict, source, **source_kwargs).state_dict
        arch, report, message = check_resnet_state_dict(ours)
        result.architecture = arch
        result.checks.append(message)
        if report is not None:
            result.check_reports["ours"] = report
        if arch is not None and target == "torchvision":
            tv_report, tv_message = _check_torchvision(conversion.state_dict, arch)
            result.checks.append(tv_message)
            if tv_report is not None:
                result.check_reports["torchvision"] = tv_report

    save_checkpoint(
        output_path,
        conversion.state_dict,
        author=f"resnet_backbones (converted from {source})",
        metadata=_plain(conversion.metadata),
        wrap=target != "torchvision",
        matching_heuristics=target == "detectron2" and detectron2_prefix == "",
    )
    return result


def _plain(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """Metadata restricted to what weights_only loading accepts (str/number/bool/None, lists,
    dicts)."""

    def ok(v: Any) -> bool:
        if v is None or isinstance(v, (str, int, float, bool)):
            return True
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and ok(x) for k, x in v.items())
        return False

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items() if ok(v)}

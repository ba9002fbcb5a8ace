"""``DetectionCheckpointer``: fvcore's ``Checkpointer`` that reads every weights file we support.

``load(path)`` accepts, for a detector built by :func:`resnet_backbones.build_model`:

* our own checkpoints (``.pth`` written by ``save``: ``{"model": ..., "optimizer": ..., ...}``);
* detectron2 detector checkpoints (``model_final_*.pkl`` from the model zoo, or ``.pth`` written
  by detectron2): names are identical to ours, so they load as they are;
* ImageNet backbones: MSRA/Caffe2 ``R-50.pkl``/``R-101.pkl`` (detectron2's C4 initialization),
  torchvision/timm ``.pth`` and our classification checkpoints. Names are converted to ours and
  matched by suffix: ``stem.*``/``res2-4.*`` go to ``backbone.*`` and ``res5.*`` to the C4 head's
  ``roi_heads.res5.*``; the classifier is dropped.

Pickles are read with a restricted unpickler and ``.pth`` files with
``torch.load(weights_only=True)`` (see :mod:`resnet_backbones.checkpoint.loading`), so a weights
file can never run code. Loading is non-strict, as in detectron2: the report (logged, and kept in
``last_report``) lists every missing, unexpected and shape-mismatched tensor.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from .converters import detect_format
from .loading import LoadReport, load_checkpoint, read_checkpoint

__all__ = ["DetectionCheckpointer", "resolve_weights_path"]

# detectron2's "detectron2://" prefix is the root of its model zoo.
D2_PREFIX = "detectron2://"
D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def resolve_weights_path(path: str) -> str:
    """``detectron2://X`` -> detectron2's download URL for ``X``; other paths are returned as
    given."""
    if path.startswith(D2_PREFIX):
        return D2_URL + path[len(D2_PREFIX) :]
    return path


def _is_main_process() -> bool:
    try:
        from ..utils import comm

        return comm.is_main_process()
    except ImportError:  # pragma: no cover - comm is part of the package
        return True


class DetectionCheckpointer(Checkpointer):
    """Save and load detectors (and their optimizer/scheduler with ``**checkpointables``).

    Args:
        model: the model (a DistributedDataParallel wrapper is unwrapped by fvcore).
        save_dir: where ``save(name)`` writes ``name.pth``.
        save_to_disk: default: only the main process writes.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        super().__init__(
            model,
            save_dir,
            save_to_disk=_is_main_process() if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.logger = logging.getLogger(__name__)
        self.last_report: Optional[LoadReport] = None

    def load(self, path: str, checkpointables: Optional[list] = None) -> Dict[str, Any]:
        """Load weights (and, if present, the checkpointables) from ``path``; ``""`` loads nothing.

        Returns the entries of the file that were not consumed (``iteration``, ...).
        """
        if path:
            path = resolve_weights_path(os.fspath(path))
            if "://" not in path and not os.path.isfile(os.path.expanduser(path)):
                raise FileNotFoundError(
                    f"MODEL.WEIGHTS: weights file '{path}' not found. Put the file there or set "
                    f"MODEL.WEIGHTS to its path (use MODEL.WEIGHTS '' to start from random "
                    f"weights). "
                    f"ImageNet initializations for the C4 configs: "
                    f"{D2_URL}ImageNetPretrained/MSRA/R-50.pkl and .../R-101.pkl"
                )
            path = os.path.expanduser(path)
        return super().load(path, checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = read_checkpoint(filename)
        for note in loaded.notes:
            self.logger.info("%s: %s", filename, note)
        for name, reason in loaded.dropped:
            self.logger.info("%s: skipped '%s' (%s)", filename, name, reason)
        checkpoint: Dict[str, Any] = {k: v for k, v in loaded.extra.items()}
        checkpoint["model"] = loaded.state_dict
        if loaded.author is not None:
            checkpoint["__author__"] = loaded.author
        checkpoint["__source_path__"] = filename
        return checkpoint

    def _load_model(self, checkpoint: Dict[str, Any]) -> None:
        state_dict = checkpoint.pop("model")
        author = checkpoint.pop("__author__", None)
        where = checkpoint.pop("__source_path__", "<checkpoint>")
        checkpoint.pop("matching_heuristics", None)
        source = detect_format(state_dict, author=author)
        report = load_checkpoint(
            self.model, state_dict, source=source, strict=False, drop_classifier=True
        )
        report.source = f"{where} ({source})"
        self.last_report = report
        self.logger.info("%s", report)
        if not report.matched:
            raise RuntimeError(
                f"{where}: no tensor of this checkpoint fits the model ({source} names); is it a "
                f"ResNet/detector checkpoint of the same architecture?\n{report}"
            )
        if report.architecture:
            self.logger.warning("%s: %s", where, report.architecture)
        mismatch = report.shape_mismatch
        if mismatch:  # e.g. another NUM_CLASSES: detectron2 warns too
            shown = "; ".join(f"{n}: checkpoint {c} vs model {m}" for n, c, m in mismatch[:8])
            more = f"; ... ({len(mismatch) - 8} more)" if len(mismatch) > 8 else ""
            self.logger.warning(
                "%s: %d tensors not loaded, their shapes differ from the model's "
                "(left as initialized): %s%s",
                where,
                len(mismatch),
                shown,
                more,
            )
        for problem in self._convention_mismatches(report.metadata):
            self.logger.warning("%s: %s", where, problem)
        return None

    def _convention_mismatches(self, meta: Dict[str, Any]) -> list:
        """What the weights expect (input format, pixel mean, stride placement) vs the model."""
        problems = []
        model = self.model
        fmt = getattr(model, "input_format", None)
        if meta.get("input_format") and fmt and meta["input_format"] != fmt:
            problems.append(
                f"the weights expect {meta['input_format']} input but INPUT.FORMAT is {fmt}"
            )
        mean = getattr(model, "pixel_mean", None)
        expected = meta.get("pixel_mean")
        if (
            expected is not None
            and isinstance(mean, torch.Tensor)
            and mean.numel() == len(expected)
        ):
            if not torch.allclose(
                mean.flatten().cpu(), torch.tensor(expected, dtype=mean.dtype), atol=1e-2
            ):
                problems.append(
                    f"the weights expect MODEL.PIXEL_MEAN {meta['pixel_mean']} (and PIXEL_STD "
                    f"{meta.get('pixel_std')}), the model uses {mean.flatten().tolist()}"
                )
        if "stride_in_1x1" in meta:
            conv1 = dict(model.named_modules()).get("backbone.res3.0.conv1")
            bottleneck = isinstance(conv1, nn.Conv2d) and tuple(conv1.kernel_size) == (
                1,
                1,
            )  # basic blocks: no 1x1
            if bottleneck and (conv1.stride[0] > 1) != bool(meta["stride_in_1x1"]):
                problems.append(
                    f"the weights were trained with the stride in the "
                    f"{'1x1' if meta['stride_in_1x1'] else '3x3'} conv of each bottleneck; set "
                    f"MODEL.RESNETS.STRIDE_IN_1X1 {bool(meta['stride_in_1x1'])}"
                )
        return problems

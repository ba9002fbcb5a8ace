"""Assign each prediction (anchor or proposal) to a ground-truth box by IoU (detectron2's Matcher).

With thresholds ``[t1, ..., tk]`` and labels ``[l0, ..., lk]``, a prediction whose best IoU with
any ground truth falls in ``[t_i, t_{i+1})`` (``t_0 = -inf``, ``t_{k+1} = +inf``) gets label
``l_i``: 1 positive, 0 negative, -1 ignored. Its match is the index of that best ground truth.

With ``allow_low_quality_matches`` (the RPN's setting, Faster R-CNN Sec. 3.1.2), for every ground
truth the predictions that reach its highest IoU become positive as well, even when that IoU is
below the positive threshold (ties included; their match index stays their own best ground
truth).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

__all__ = ["Matcher"]


class Matcher:
    """Label predictions positive / negative / ignored from a ``(num_gt, num_pred)`` IoU matrix."""

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool = False,
    ) -> None:
        thresholds = [float(t) for t in thresholds]
        labels = [int(label) for label in labels]
        if not thresholds or thresholds[0] <= 0:
            raise ValueError(f"IoU thresholds must be positive, got {thresholds}")
        if any(a > b for a, b in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"IoU thresholds must be sorted, got {thresholds}")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(
                f"IoU labels must be -1 (ignore), 0 (negative) or 1 (positive), got {labels}"
            )
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"{len(thresholds)} IoU thresholds need {len(thresholds) + 1} labels, got {labels}"
            )
        self.thresholds: List[float] = [-math.inf] + thresholds + [math.inf]
        self.labels: List[int] = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(thresholds={self.thresholds[1:-1]}, labels={self.labels}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``matches`` (int64, index of the matched ground truth) and ``match_labels``
        (int8, -1/0/1), both of length ``num_pred``.

        Without ground truth every prediction is matched to index 0 with label ``labels[0]``.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                "match_quality_matrix must be (num_gt, num_pred), "
                f"got {tuple(match_quality_matrix.shape)}"
            )
        num_pred = match_quality_matrix.shape[1]
        device = match_quality_matrix.device
        if match_quality_matrix.numel() == 0:
            matches = torch.zeros(num_pred, dtype=torch.int64, device=device)
            labels = torch.full((num_pred,), self.labels[0], dtype=torch.int8, device=device)
            return matches, labels
        if (match_quality_matrix < 0).any():
            raise ValueError("match quality (IoU) must be non-negative")

        best_quality, matches = match_quality_matrix.max(dim=0)
        match_labels = torch.ones(num_pred, dtype=torch.int8, device=device)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_range = (best_quality >= low) & (best_quality < high)
            match_labels[in_range] = label

        if self.allow_low_quality_matches:
            best_per_gt = match_quality_matrix.max(dim=1).values
            _, pred_idx = torch.nonzero(match_quality_matrix == best_per_gt[:, None], as_tuple=True)
            match_labels[pred_idx] = 1
        return matches, match_labels

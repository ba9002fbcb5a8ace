"""Sample a fixed-size, class-balanced minibatch of labelled anchors or proposals."""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices of at most ``num_samples`` entries, of which at most ``positive_fraction`` positive.

    ``labels``: -1 ignore, ``bg_label`` negative (background), anything else positive. Positives
    are drawn first (``int(num_samples * positive_fraction)`` at most), negatives fill the rest.
    Both draws are uniform without replacement, one ``torch.randperm`` each, positives first (the
    order of random draws detectron2 makes, so the same seed samples the same entries).

    Returns:
        ``(pos_idx, neg_idx)``: 1-D int64 indices into ``labels``.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    pos_pick = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_pick = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[pos_pick], negative[neg_pick]

"""``Conv2d`` that carries its own normalization and activation, as in detectron2.

Keeping the norm inside the conv module gives detectron2's state-dict names
(``conv1.weight``, ``conv1.norm.weight``, ...), so its checkpoints load by name.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["Conv2d"]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` module and ``activation`` callable.

    Takes every ``nn.Conv2d`` argument plus the keywords ``norm`` (an ``nn.Module`` or ``None``)
    and ``activation`` (e.g. ``F.relu`` or ``None``); the norm runs before the activation.
    """

    def __init__(
        self,
        *args: Any,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

"""FLOPs and parameter counts per stage, with fvcore's ``FlopCountAnalysis``.

Units: fvcore counts **one fused multiply-add as one flop**. A 3x3 conv from C to K channels on an
H x W output costs ``9 * C * K * H * W`` "flops" here, not twice that. This is the unit of He et
al. (CVPR 2016), whose Table 1 gives "FLOPs" of 1.8 / 3.6 / 3.8 / 7.6 / 11.3 x 10^9 for ResNet-18 /
34 / 50 / 101 / 152 at 224x224, of torchvision's documentation (ResNet-50: "4.09 GFLOPS") and of
detectron2's flop counting (also fvcore). Tools that count a multiply and an add separately report
twice our numbers.

Besides convolutions and the classifier, fvcore counts one flop per element for BatchNorm (in eval
mode) and adaptive average pooling; ReLU, max pooling and the residual additions count zero.
Those extras are ~0.5% of a ResNet (see ``ModelStats.flops_by_operator``); the paper's numbers
count convs and the fc layer only, and ours are within 2.1% of them either way.

Where the paper's models stride (MSRA's original "v1" models): the stride-2 of each bottleneck
that downsamples sits in the first 1x1 conv (``stride_in_1x1=True``). torchvision and our
``create_model`` default put it in the 3x3 conv ("v1.5", ``stride_in_1x1=False``), which runs the
3x3 conv of the first block of res3..res5 on 4x the pixels: ResNet-50 costs 4.09 instead of
3.86 GFLOPs. Basic-block models (ResNet-18/34, CIFAR) have no 1x1 convs and are identical in both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "PAPER_GFLOPS",
    "PAPER_PARAMS_M",
    "REFERENCE_PARAMS_M",
    "ModelStats",
    "analyze_model",
    "count_flops",
    "count_params",
    "flop_count_analysis",
    "format_stats",
    "input_shape_for",
    "stats_by_name",
]

#: He et al., CVPR 2016, Table 1: multiply-adds (x 10^9) at 224x224, stride in the 1x1 conv.
PAPER_GFLOPS: Dict[str, float] = {
    "resnet18": 1.8,
    "resnet34": 3.6,
    "resnet50": 3.8,
    "resnet101": 7.6,
    "resnet152": 11.3,
}

#: Parameters (millions) given by the papers: CVPR 2016 Table 6 (CIFAR-10) and ECCV 2016
#: (pre-activation CIFAR models, Tables 2 and 3). The ImageNet paper gives no parameter counts.
PAPER_PARAMS_M: Dict[str, float] = {
    "resnet20_cifar": 0.27,
    "resnet32_cifar": 0.46,
    "resnet44_cifar": 0.66,
    "resnet56_cifar": 0.85,
    "resnet110_cifar": 1.7,
    "resnet1202_cifar": 19.4,
    "preact_resnet110_cifar": 1.7,
    "preact_resnet164_cifar": 1.7,
    "preact_resnet1001_cifar": 10.2,
}

#: torchvision's documented parameter counts (millions) for the same ImageNet architectures.
REFERENCE_PARAMS_M: Dict[str, float] = {
    "resnet18": 11.69,
    "resnet34": 21.80,
    "resnet50": 25.56,
    "resnet101": 44.55,
    "resnet152": 60.19,
}

InputSize = Union[int, Sequence[int]]


def input_shape_for(
    input_size: InputSize, *, batch_size: int = 1, in_channels: int = 3
) -> Tuple[int, int, int, int]:
    """``(N, C, H, W)`` for ``input_size`` = ``S`` (square) or ``(H, W)``."""
    if isinstance(input_size, int):
        height = width = input_size
    else:
        sizes = [int(s) for s in input_size]
        if len(sizes) == 1:
            sizes = sizes * 2
        if len(sizes) != 2:
            raise ValueError(f"input size must be S or (H, W), got {tuple(input_size)}")
        height, width = sizes
    if min(height, width, batch_size, in_channels) < 1:
        raise ValueError(f"invalid input shape {(batch_size, in_channels, height, width)}")
    return (batch_size, in_channels, height, width)


def flop_count_analysis(model: nn.Module, inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]]):
    """fvcore's ``FlopCountAnalysis`` of ``model`` on ``inputs``, with its warnings silenced.

    fvcore warns about every op it has no counter for (ReLU, max pool, add: all cost 0 here, as in
    the paper) and about modules never called; neither matters for these networks.
    """
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # fvcore.nn's import scripts a loss (torch.jit.script is deprecated)
        from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(
    model: nn.Module, input_size: InputSize = 224, *, batch_size: int = 1, in_channels: int = 3
) -> int:
    """Total fvcore flops (fused multiply-adds) of one eval-mode forward pass on zeros of that
    size."""
    return analyze_model(
        model, input_size, batch_size=batch_size, in_channels=in_channels, tasks=("flops",)
    ).total_flops


@dataclass
class ModelStats:
    """Parameters and flops of a model, per top-level child (``stem``, ``res2`` ... ``linear``).

    ``rows`` are ``(name, params, flops)`` in the model's child order; ``flops`` is ``None`` when
    flops were not counted. A row ``(outside modules)`` holds flops of functional ops in the
    top-level ``forward``, if any. ``flops_by_operator`` maps fvcore's op names (``conv``,
    ``batch_norm``, ``linear``, ``adaptive_avg_pool2d``) to their totals.
    """

    input_shape: Tuple[int, ...]
    rows: List[Tuple[str, int, Optional[int]]]
    total_params: int
    total_flops: Optional[int] = None
    flops_by_operator: Dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> Optional[float]:
        return None if self.total_flops is None else self.total_flops / 1e9

    @property
    def params_m(self) -> float:
        return self.total_params / 1e6


def analyze_model(
    model: nn.Module,
    input_size: InputSize = 224,
    *,
    batch_size: int = 1,
    in_channels: int = 3,
    tasks: Sequence[str] = ("flops", "params"),
) -> ModelStats:
    """Parameters and (if ``"flops"`` in ``tasks``) fvcore flops per top-level child of ``model``.

    The model runs once in eval mode on zeros of shape ``input_shape_for(input_size, ...)``
    (its training mode is restored afterwards). ``tasks`` may hold ``"flops"`` and ``"params"``;
    parameters are always counted (they are free).
    """
    unknown = set(tasks) - {"flops", "params"}
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; expected 'flops' and/or 'params'")
    shape = input_shape_for(input_size, batch_size=batch_size, in_channels=in_channels)
    children = list(model.named_children())
    params = {name: count_params(child) for name, child in children}
    own = count_params(model) - sum(params.values())
    if "flops" not in tasks:
        rows = [(name, n, None) for name, n in params.items()]
        if own:
            rows.append(("(outside modules)", own, None))
        return ModelStats(shape, rows, count_params(model))

    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.zeros(())).device
        analysis = flop_count_analysis(model, (torch.zeros(shape, device=device),))
        total = int(analysis.total())
        by_module = analysis.by_module()
        by_operator = {op: int(n) for op, n in analysis.by_operator().items()}
    finally:
        model.train(was_training)
    rows = [(name, params[name], int(by_module.get(name, 0))) for name, _ in children]
    rest = total - sum(f for _, _, f in rows)
    if rest or own:
        rows.append(("(outside modules)", own, rest))
    return ModelStats(shape, rows, count_params(model), total, by_operator)


def _fmt_flops(flops: Optional[int]) -> str:
    if flops is None:
        return "-"
    return f"{flops / 1e9:.3f}" if flops >= 1e8 else f"{flops / 1e9:.4f}"


def format_stats(
    stats: ModelStats,
    *,
    title: Optional[str] = None,
    paper_gflops: Optional[float] = None,
    paper_note: str = "He et al. 2016, Table 1",
) -> str:
    """A markdown table: one row per stage with params (M) and GFLOPs (and % of the total)."""
    has_flops = stats.total_flops is not None
    header = ["module", "params", "params (M)"] + (["GFLOPs", "% flops"] if has_flops else [])
    lines = []
    if title:
        lines += [title, ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]

    def row(name: str, params: int, flops: Optional[int]) -> str:
        cells = [name, f"{params:,}", f"{params / 1e6:.3f}"]
        if has_flops:
            share = 100.0 * (flops or 0) / stats.total_flops if stats.total_flops else 0.0
            cells += [_fmt_flops(flops), f"{share:.1f}"]
        return "| " + " | ".join(cells) + " |"

    lines += [row(*r) for r in stats.rows]
    lines.append(row("**total**", stats.total_params, stats.total_flops))
    if has_flops:
        ops = ", ".join(
            f"{op} {_fmt_flops(n)}"
            for op, n in sorted(stats.flops_by_operator.items(), key=lambda kv: -kv[1])
        )
        lines += [
            "",
            f"input {'x'.join(map(str, stats.input_shape))}; fvcore FlopCountAnalysis: "
            f"1 flop = 1 fused multiply-add (GFLOPs = 10^9 multiply-adds, the paper's unit); "
            f"ReLU, max pool, additions count 0.",
            f"GFLOPs by operator: {ops}",
        ]
        if paper_gflops is not None:
            diff = 100.0 * (stats.total_flops / 1e9 - paper_gflops) / paper_gflops
            lines.append(
                f"paper ({paper_note}): {paper_gflops} GFLOPs; "
                f"ours {stats.total_flops / 1e9:.3f} ({diff:+.1f}%)"
            )
    return "\n".join(lines)


def stats_by_name(stats: ModelStats) -> Mapping[str, Tuple[int, Optional[int]]]:
    """``{row name: (params, flops)}`` of :class:`ModelStats` rows."""
    return {name: (params, flops) for name, params, flops in stats.rows}

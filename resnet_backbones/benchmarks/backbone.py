"""Benchmark: our ResNet-50/101 vs torchvision's, same weights, same process, same threads.

    python tools/benchmark.py backbone [--threads N] [--repeats R] [--models resnet50 resnet101]
                                       [--variants eager fused fused+cl jit tv+cl] [--compile]

For each model, torchvision's network is built with random weights whose BatchNorm statistics are
calibrated on random images (so no BN is an identity) and whose BN affine parameters are random;
the same weights are loaded into ours (``torchvision_to_ours``). Then, per input (224x224 at batch
1 and 8, 600x800 at batch 1), every variant runs in eval mode under ``torch.no_grad()``:

* ``torchvision``: ``torchvision.models.resnetXX`` as is (NCHW, separate BN) -- the baseline;
* ``eager``: ours, unfused, NCHW (the same ops as torchvision: expected ratio 1.0);
* ``fused``: ours with BatchNorm folded into the convs (``fold_batch_norm``);
* ``fused+cl``: ours folded and channels_last (``optimize_for_inference``; the input conversion
  is part of the timed forward);
* ``tv+cl`` (reference, not ours): torchvision's model in channels_last, to show how much of the
  gain is the memory format alone;
* ``jit``: ``fused+cl`` traced, frozen and passed through ``torch.jit.optimize_for_inference``
  (``freeze_for_inference``) (oneDNN weight prepacking, conv+ReLU/add fusion; TorchScript
  is deprecated in recent PyTorch but still works);
* ``compile`` (``--compile``): ``torch.compile`` of ``fused+cl`` with Inductor's freezing.

Timing: after warm-up, ``--repeats`` rounds; in each round every variant runs for at least
``--min-time`` seconds, in an order rotated from round to round, so that load changes on a shared
machine hit all variants alike. Reported: median images/s over rounds, and the median over rounds
of the per-round speed ratio to torchvision. Every variant's output is compared with
torchvision's: max abs difference, and that difference relative to ``max |output|`` (must be
<= 1e-4; the exit code is 1 otherwise).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..modeling.backbone import create_model
from ..modeling.fuse import fold_batch_norm, freeze_for_inference, optimize_for_inference
from . import docstring_parser

DEFAULT_CASES: Tuple[Tuple[int, int, int], ...] = ((1, 224, 224), (8, 224, 224), (1, 600, 800))
BASE_VARIANTS = ("eager", "fused", "fused+cl", "jit", "tv+cl")
ALL_VARIANTS = BASE_VARIANTS + ("compile",)
REL_TOLERANCE = 1e-4
VARIANT_DESCRIPTIONS = {
    "torchvision": "torchvision, eager, NCHW (baseline)",
    "eager": "ours, eager, unfused, NCHW",
    "fused": "ours, BN folded into convs, NCHW",
    "fused+cl": "ours, BN folded, channels_last",
    "tv+cl": "torchvision, channels_last (reference)",
    "jit": "ours, BN folded, channels_last, TorchScript frozen + optimize_for_inference",
    "compile": "ours, BN folded, channels_last, torch.compile (Inductor, freezing)",
}


# ------------------------------------------------------------------------------------- weights
def _tv_to_ours_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names -> ours, with the checkpoint converter when it is importable."""
    try:
        from ..checkpoint.converters import torchvision_to_ours
    except ImportError:  # the converter is optional for this benchmark: simple renaming
        out = {}
        for key, value in state_dict.items():
            key = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
            key = re.sub(r"^conv1\.", "stem.conv1.", key)
            key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
            key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
            key = key.replace(".downsample.0.", ".shortcut.").replace(
                ".downsample.1.", ".shortcut.norm."
            )
            key = re.sub(r"^fc\.", "linear.", key)
            out[key] = value
        return out
    return torchvision_to_ours(state_dict).state_dict


def build_pair(name: str, seed: int = 0, calibrate_size: int = 160) -> Tuple[nn.Module, nn.Module]:
    """``(torchvision model, our model)`` in eval mode with identical, non-trivial weights.

    BN statistics are calibrated with one train-mode pass over random images (cumulative average),
    and BN weights/biases are drawn at random (smaller gammas for the last BN of each residual
    branch, as in trained ResNets), so folding has real work to do.
    """
    import torchvision

    torch.manual_seed(seed)
    tv = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(seed)
    last_norms = {
        id(getattr(b, "bn3", getattr(b, "bn2", None)))
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4)
        for b in layer
    }
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
                # the last BN of each residual branch has small gammas in trained ResNets (and is
                # zero at init with zero_init_residual): without this, random residual streams
                # grow with depth and fp32 rounding alone exceeds 1e-4 relative in ResNet-101
                low, high = (0.1, 0.5) if id(m) in last_norms else (0.6, 1.4)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * (high - low) + low)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        tv.train()
        tv(torch.randn(4, 3, calibrate_size, calibrate_size, generator=g))
    tv.eval()
    ours = create_model(name, stride_in_1x1=False, norm="BN")
    ours.load_state_dict(_tv_to_ours_state_dict(tv.state_dict()))
    return tv, ours.eval()


class _ChannelsLastInput(nn.Module):
    """Runs a channels_last model on an input converted inside the (timed) forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def make_variant(
    variant: str, tv: nn.Module, ours: nn.Module, example: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable that runs ``variant``; ``example`` is used by the tracing/compiling variants."""
    if variant == "torchvision":
        return tv
    if variant == "eager":
        return ours
    if variant == "fused":
        return fold_batch_norm(ours)
    if variant == "fused+cl":
        return optimize_for_inference(ours, channels_last=True)
    if variant == "tv+cl":
        return _ChannelsLastInput(copy.deepcopy(tv)).eval()
    if variant == "jit":
        return freeze_for_inference(ours, example, channels_last=True)
    if variant == "compile":
        import torch._inductor.config as inductor_config

        compiled = torch.compile(optimize_for_inference(ours, channels_last=True), dynamic=False)

        def run(x: torch.Tensor) -> torch.Tensor:
            with inductor_config.patch(freezing=True):
                return compiled(x)

        return run
    raise ValueError(
        f"unknown variant {variant!r}; expected one of {('torchvision',) + ALL_VARIANTS}"
    )


# ------------------------------------------------------------------------------------- timing
@dataclass
class Result:
    model: str
    input: str
    variant: str
    images_per_s: float
    torchvision_images_per_s: float
    ratio: float
    max_abs_diff: float
    rel_diff: float
    output_scale: float
    setup_s: float = 0.0
    times_s: List[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rel_diff <= REL_TOLERANCE


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _time_call(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int, clock: str = "wall"
) -> float:
    """Seconds per call of ``fn(x)``: wall time, or this process's CPU time (all threads)."""
    timer = CLOCKS[clock]
    start = timer()
    for _ in range(iters):
        fn(x)
    return (timer() - start) / iters


def benchmark_case(
    name: str,
    tv: nn.Module,
    ours: nn.Module,
    shape: Tuple[int, int, int, int],
    variants: Sequence[str],
    *,
    repeats: int,
    warmup: int,
    min_time: float,
    clock: str = "wall",
    log: Callable[[str], None] = print,
) -> List[Result]:
    """Time torchvision and each of ``variants`` on one input shape, interleaved; see the module
    doc."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    names = ["torchvision", *variants]
    fns, setup = {}, {}
    with torch.no_grad():
        reference = tv(x)
        for variant in names:
            start = time.perf_counter()
            fns[variant] = make_variant(variant, tv, ours, x)
            for _ in range(max(warmup, 1)):
                fns[variant](x)
            setup[variant] = time.perf_counter() - start
        diffs = {}
        scale = reference.abs().max().item()
        for variant in names:
            diff = (fns[variant](x).float() - reference).abs().max().item()
            diffs[variant] = (diff, diff / max(scale, 1e-12))
        single = _time_call(fns["torchvision"], x, 1)
        iters = max(1, math.ceil(min_time / max(single, 1e-6)))
        times: Dict[str, List[float]] = {v: [] for v in names}
        for r in range(repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for variant in order:
                times[variant].append(_time_call(fns[variant], x, iters, clock))
    batch = shape[0]
    tv_times = times["torchvision"]
    results = []
    for variant in names:
        ratios = [t_tv / t for t_tv, t in zip(tv_times, times[variant])]
        results.append(
            Result(
                model=name,
                input=f"{batch}x{shape[1]}x{shape[2]}x{shape[3]}",
                variant=variant,
                images_per_s=batch / statistics.median(times[variant]),
                torchvision_images_per_s=batch / statistics.median(tv_times),
                ratio=statistics.median(ratios),
                max_abs_diff=diffs[variant][0],
                rel_diff=diffs[variant][1],
                output_scale=scale,
                setup_s=setup[variant],
                times_s=times[variant],
            )
        )
        log(
            f"  {name} {results[-1].input} {variant:12s} {results[-1].images_per_s:8.2f} img/s "
            f"ratio {results[-1].ratio:.3f} max diff {diffs[variant][0]:.2e} "
            f"(rel {diffs[variant][1]:.1e})"
        )
    return results


def format_table(results: Sequence[Result]) -> str:
    header = (
        "| model | input (NxCxHxW) | variant | ours img/s | torchvision img/s | ratio "
        "| max abs diff (rel.) |\n"
        "|---|---|---|---:|---:|---:|---:|"
    )
    lines = [header]
    for r in results:
        if r.variant == "torchvision":
            continue
        diff = f"{r.max_abs_diff:.1e} ({r.rel_diff:.0e})" + ("" if r.ok else " **FAIL**")
        lines.append(
            f"| {r.model} | {r.input} | {r.variant} | {r.images_per_s:.2f} "
            f"| {r.torchvision_images_per_s:.2f} "
            f"| {r.ratio:.2f}x | {diff} |"
        )
    return "\n".join(lines)


def environment() -> str:
    from ..utils.env import cpu_flags_summary, cpu_name

    cpu = cpu_name()
    import torchvision

    return (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, CPU: {cpu} "
        f"({cpu_flags_summary()}), "
        f"{torch.get_num_threads()} threads, "
        f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = docstring_parser("backbone", __doc__)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds per input (median taken; default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed runs of each variant first (default 2)"
    )
    parser.add_argument(
        "--min-time", type=float, default=0.3, help="seconds per variant per round (default 0.3)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["resnet50", "resnet101"],
        choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
    )
    parser.add_argument(
        "--variants", nargs="+", default=list(BASE_VARIANTS), choices=list(ALL_VARIANTS)
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to compile)"
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        metavar="NxHxW",
        help="inputs as BATCHxHEIGHTxWIDTH (default: 1x224x224 8x224x224 1x600x800)",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (default); cpu: process CPU time, steadier on a shared machine "
        "when combined with --threads 1 (with more threads it also counts OpenMP spin-waiting)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def _parse_case(text: str) -> Tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"case {text!r}: expected BATCHxHEIGHTxWIDTH, e.g. 8x224x224"
        )
    return int(parts[0]), int(parts[1]), int(parts[2])


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cases = [_parse_case(c) for c in args.cases] if args.cases else list(DEFAULT_CASES)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = list(dict.fromkeys(args.variants + (["compile"] if args.compile else [])))
    env = environment()
    print(f"# backbone benchmark: {env}")
    print(
        f"# repeats {args.repeats}, warm-up {args.warmup}, "
        f">= {args.min_time}s per variant per round, "
        f"{args.clock} clock\n"
    )
    results: List[Result] = []
    for name in args.models:
        tv, ours = build_pair(name)
        for batch, height, width in cases:
            results += benchmark_case(
                name,
                tv,
                ours,
                (batch, 3, height, width),
                variants,
                repeats=args.repeats,
                warmup=args.warmup,
                min_time=args.min_time,
                clock=args.clock,
            )
    print()
    print(format_table(results))
    print()
    for variant in variants:
        print(f"- {variant}: {VARIANT_DESCRIPTIONS[variant]}")
        if variant in ("jit", "compile"):
            setups = [
                f"{r.model} {r.input}: {r.setup_s:.1f}s" for r in results if r.variant == variant
            ]
            print(f"  setup (trace/compile + warm-up): {'; '.join(setups)}")
    failed = [r for r in results if not r.ok]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": env,
                    "clock": args.clock,
                    "argv": argv,
                    "results": [asdict(r) for r in results],
                },
                f,
                indent=1,
            )
    if failed:
        print(
            f"\nFAILED: {len(failed)} outputs differ from torchvision's "
            f"by more than {REL_TOLERANCE} relative"
        )
        return 1
    print(f"\nall outputs equal torchvision's within {REL_TOLERANCE} x max|output|")
    return 0

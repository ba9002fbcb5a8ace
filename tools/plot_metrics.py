#!/usr/bin/env python
"""Draw the training curves of a run: losses, learning rate and evaluation AP, as PNG files.

    python tools/plot_metrics.py OUTPUT_DIR [--out DIR] [--smooth 20]

Reads ``OUTPUT_DIR/metrics.json`` (one JSON object per logged iteration, written by the trainer;
when an iteration appears more than once, e.g. after a resume, its last values win) and writes
``loss.png`` (every key containing "loss"), ``lr.png`` and ``ap.png`` (evaluation keys such as
``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``) into ``--out`` (default: ``OUTPUT_DIR/plots``).
A figure with nothing to show is skipped. Uses matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AP_KEY = re.compile(r"(^|/)(AP\d*|AP[sml]|mAP|AP-.*)$")

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> Dict[int, Dict[str, float]]:
    """``{iteration: {name: value}}``; later lines for the same iteration override earlier ones."""
    by_iter: Dict[int, Dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
                itr = int(entry.pop("iteration"))
            except (ValueError, KeyError, TypeError):
                print(f"{path}:{lineno}: skipping an unreadable line", file=sys.stderr)
                continue
            by_iter.setdefault(itr, {}).update(
                {
                    k: float(v)
                    for k, v in entry.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
            )
    return by_iter


def to_series(by_iter: Dict[int, Dict[str, float]]) -> Series:
    series: Series = {}
    for itr in sorted(by_iter):
        for k, v in by_iter[itr].items():
            series.setdefault(k, []).append((itr, v))
    return series


def _smooth(values: Sequence[float], window: int) -> List[float]:
    if window <= 1:
        return list(values)
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _plot(
    series: Series,
    keys: List[str],
    title: str,
    ylabel: str,
    path: str,
    smooth: int = 1,
    logy: bool = False,
) -> Optional[str]:
    keys = [k for k in keys if series.get(k)]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for k in keys:
        xs = [x for x, _ in series[k]]
        ys = _smooth([y for _, y in series[k]], smooth)
        ax.plot(xs, ys, label=k, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_metrics(output_dir: str, out_dir: Optional[str] = None, smooth: int = 1) -> List[str]:
    """Write the PNGs for ``output_dir``'s metrics.json; returns the paths written."""
    metrics = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(metrics):
        raise FileNotFoundError(
            f"{metrics} does not exist (is '{output_dir}' a training OUTPUT_DIR?)"
        )
    series = to_series(read_metrics(metrics))
    out_dir = out_dir or os.path.join(output_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    loss_keys = sorted(k for k in series if "loss" in k)
    if "total_loss" in loss_keys:  # draw the total first
        loss_keys.remove("total_loss")
        loss_keys.insert(0, "total_loss")
    ap_keys = sorted(k for k in series if AP_KEY.search(k))
    written = [
        _plot(
            series, loss_keys, "training losses", "loss", os.path.join(out_dir, "loss.png"), smooth
        ),
        _plot(series, ["lr"], "learning rate", "lr", os.path.join(out_dir, "lr.png")),
        _plot(series, ap_keys, "evaluation", "AP (%)", os.path.join(out_dir, "ap.png")),
    ]
    return [p for p in written if p]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", help="a training OUTPUT_DIR holding metrics.json")
    parser.add_argument(
        "--out", default=None, help="where to write the PNGs (default: OUTPUT_DIR/plots)"
    )
    parser.add_argument(
        "--smooth", type=int, default=1, help="moving-average window for the losses"
    )
    args = parser.parse_args(argv)
    try:
        paths = plot_metrics(args.output_dir, args.out, args.smooth)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not paths:
        print("nothing to plot: metrics.json has no loss, lr or AP values", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small markdown (pipe) tables for evaluation summaries."""

from __future__ import annotations

import itertools
import math
from typing import Iterable, List, Mapping, Sequence, Tuple


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], digits: int = 3
) -> str:
    """A pipe table with left-aligned, padded columns; floats printed with ``digits`` decimals."""
    cells: List[List[str]] = [[str(h) for h in headers]] + [
        [_fmt(v, digits) for v in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join(":" + "-" * (w + 1) for w in widths) + "|")
    return "\n".join(lines)


def create_small_table(metrics: Mapping[str, float], digits: int = 3) -> str:
    """One header row of metric names and one row of values (detectron2's
    ``create_small_table``)."""
    return markdown_table(list(metrics.keys()), [list(metrics.values())], digits)


def per_category_table(
    results: Sequence[Tuple[str, float]], metric: str = "AP", max_cols: int = 6
) -> str:
    """``(category, value)`` pairs laid out in up to ``max_cols // 2`` pairs of columns."""
    n_cols = max(2, min(max_cols, len(results) * 2))
    flat = list(itertools.chain(*results))
    rows = itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)])
    return markdown_table(["category", metric] * (n_cols // 2), rows)

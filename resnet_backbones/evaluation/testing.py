"""Reporting and checking evaluation results (detectron2's ``evaluation/testing.py`` helpers)."""

from __future__ import annotations

import logging
import math
import pprint
from collections.abc import Mapping
from typing import Any, Dict

__all__ = ["print_csv_format", "verify_results", "flatten_results_dict"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping) -> None:
    """Log the main metrics of each task as comma-separated lines ready to paste into a spreadsheet.

    Per-category metrics (names with a "-") are left out, as in detectron2.
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a mapping task -> metrics, got {type(results).__name__}")
    for task, res in results.items():
        if isinstance(res, Mapping):
            main = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info(f"copypaste: Task: {task}")
            logger.info("copypaste: " + ",".join(k for k, _ in main))
            logger.info("copypaste: " + ",".join(f"{v:.4f}" for _, v in main))
        else:
            logger.info(f"copypaste: {task}={res}")


def verify_results(cfg: Any, results: Mapping) -> bool:
    """Check ``results`` against
    ``cfg.TEST.EXPECTED_RESULTS`` = [[task, metric, expected, tolerance], ...].

    Returns True when all match (or nothing is expected); raises ``AssertionError`` listing the
    mismatches otherwise (detectron2 exits the process instead).
    """
    expected = cfg.TEST.EXPECTED_RESULTS
    if not len(expected):
        return True
    failures = []
    for task, metric, value, tolerance in expected:
        actual = results.get(task, {}).get(metric)
        if actual is None or not math.isfinite(actual) or abs(actual - value) > tolerance:
            failures.append(f"{task}/{metric}: expected {value} +- {tolerance}, got {actual}")
    if failures:
        logger.error("Result verification failed!\n" + pprint.pformat(dict(results)))
        raise AssertionError("result verification failed: " + "; ".join(failures))
    logger.info("Results verification passed.")
    return True


def flatten_results_dict(results: Mapping) -> Dict[str, Any]:
    """``{"k1": {"k2": v}}`` -> ``{"k1/k2": v}``, at any depth."""
    flat: Dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                flat[f"{key}/{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat

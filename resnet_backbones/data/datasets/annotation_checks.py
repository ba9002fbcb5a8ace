"""What the loaders do with one bad annotation (empty box, box outside the image, unknown class, a
malformed record, a degenerate polygon: fewer than 3 points, zero area, or outside the image): skip
it and count it ("skip", the default), or stop with an error naming the file and the value
("error"). The choice comes from ``DATALOADER.ON_BAD_ANNOTATION``; since detectron2's registered
loaders take no arguments, ``get_detection_dataset_dicts`` passes it down with
:func:`bad_annotation_policy`, and a direct ``load_*`` call may pass it explicitly.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections import Counter
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

logger = logging.getLogger(__name__)

POLICIES = ("skip", "error")
# How far (pixels) a box may reach past the image border before it counts as "outside the image".
# Real COCO/VOC boxes touch the border with float round-off; they are clipped later, as in
# detectron2.
OUTSIDE_TOLERANCE = 1.0

_policy: contextvars.ContextVar[str] = contextvars.ContextVar(
    "rb_bad_annotation_policy", default="skip"
)


class BadAnnotationError(ValueError):
    """An annotation is invalid and the policy is "error"."""


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"DATALOADER.ON_BAD_ANNOTATION must be one of {POLICIES}, got {policy!r}")
    return policy


@contextmanager
def bad_annotation_policy(policy: str) -> Iterator[None]:
    """Within this block, loaders called without an explicit policy use ``policy``."""
    token = _policy.set(_check_policy(policy))
    try:
        yield
    finally:
        _policy.reset(token)


def resolve_policy(policy: Optional[str] = None) -> str:
    return _check_policy(policy) if policy is not None else _policy.get()


def box_problem(
    x0: float, y0: float, x1: float, y1: float, width: float, height: float
) -> Optional[str]:
    """The kind of problem of an XYXY box in a ``width`` x ``height`` image, or None if it is
    fine."""
    if not (x1 > x0 and y1 > y0):  # also catches NaN
        return "empty box"
    t = OUTSIDE_TOLERANCE
    if x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
        return "box outside the image"
    return None


def segmentation_problem(segm: Any, width: float, height: float) -> Optional[str]:
    """The kind of problem of a COCO ``segmentation`` (a list of flat polygons, or an RLE dict)
    in a ``width`` x ``height`` image, or None if it is fine. Every polygon must have 3 or more
    points, a non-zero area and reach into the image (within :data:`OUTSIDE_TOLERANCE`)."""
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if counts is None or not isinstance(size, (list, tuple)) or len(size) != 2:
            return "malformed segmentation"
        if list(size) != [height, width]:
            return "segmentation size differs from the image"
        return None
    if not isinstance(segm, list) or not segm:
        return "malformed segmentation"
    t = OUTSIDE_TOLERANCE
    # Plain Python on the json's lists: several times faster than numpy on COCO's short polygons.
    for poly in segm:
        if not isinstance(poly, (list, tuple)):
            return "malformed segmentation"
        if len(poly) < 6 or len(poly) % 2:
            return "polygon with fewer than 3 points"
        xs, ys = poly[0::2], poly[1::2]
        try:
            twice_area = sum(
                x0 * y1 - x1 * y0
                for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1])
            )
            if not math.isfinite(twice_area):
                return "malformed segmentation"
            if twice_area == 0:
                return "zero-area polygon"
            if max(xs) <= -t or max(ys) <= -t or min(xs) >= width + t or min(ys) >= height + t:
                return "polygon outside the image"
        except TypeError:
            return "malformed segmentation"
    return None


class ProblemCounter:
    """Collects bad annotations of one file; raises at the first under "error", else warns once."""

    MAX_EXAMPLES = 3

    def __init__(self, source: str, policy: Optional[str] = None) -> None:
        self.source = source
        self.policy = resolve_policy(policy)
        self.counts: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}

    def add(self, kind: str, detail: str) -> None:
        if self.policy == "error":
            raise BadAnnotationError(
                f"{self.source}: {kind}: {detail} "
                "(set DATALOADER.ON_BAD_ANNOTATION='skip' to skip such annotations and count them)"
            )
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.MAX_EXAMPLES:
            examples.append(detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def warn(self, num_annotations: int) -> None:
        """Log one warning with the counts, if anything was skipped."""
        if not self.counts:
            return
        parts = [
            f"{n} {kind} (e.g. {'; '.join(self.examples[kind])})"
            for kind, n in sorted(self.counts.items())
        ]
        logger.warning(
            "%s: skipped %d of %d annotations: %s",
            self.source,
            self.total,
            num_annotations,
            ", ".join(parts),
        )

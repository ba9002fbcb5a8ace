"""Deterministic geometric transforms, each applied the same way to an image and to its boxes,
polygons and segmentation bitmaps.

A transform knows its parameters (sizes, flip width); :mod:`.augmentation` decides them at random.
Boxes are Nx4 XYXY_ABS arrays in continuous pixel coordinates (a pixel covers [x, x + 1));
polygons are flat ``[x0, y0, x1, y1, ...]`` arrays in the same coordinates, moved point by point
like the box corners; segmentations are HxW bitmaps, moved like the image but with nearest
interpolation (so a mask stays a mask).
"""

from __future__ import annotations

from typing import Iterable, List

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "Transform",
    "NoOpTransform",
    "ResizeTransform",
    "HFlipTransform",
    "VFlipTransform",
    "CropTransform",
    "TransformList",
    "clip_polygon_to_rect",
]


class Transform:
    """Base class: subclasses define ``apply_image`` and ``apply_coords``; boxes follow the
    corners."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Transform Nx2 (x, y) points."""
        raise NotImplementedError

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """Transform Nx4 XYXY boxes: the box around the four transformed corners."""
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        idx = np.array([[0, 1], [2, 1], [0, 3], [2, 3]]).flatten()
        corners = self.apply_coords(box[:, idx].reshape(-1, 2)).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        """Transform flat ``[x0, y0, x1, y1, ...]`` polygons point by point (float64 arrays)."""
        return [
            self.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1)
            for p in polygons
        ]

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Transform an HxW mask the way the image moves (geometric transforms: the same call)."""
        return self.apply_image(segmentation)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class NoOpTransform(Transform):
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords


class ResizeTransform(Transform):
    """Resize an ``h`` x ``w`` image to ``new_h`` x ``new_w`` (bilinear, through PIL for uint8
    images as detectron2 does, so that pixels match models trained with it); coordinates scale
    exactly."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        self.h, self.w, self.new_h, self.new_w = int(h), int(w), int(new_h), int(new_w)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects a {self.h}x{self.w} image, "
                f"got {img.shape[0]}x{img.shape[1]}"
            )
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (1, 3, 4)):
            squeeze = img.ndim == 3 and img.shape[2] == 1
            pil = Image.fromarray(img[:, :, 0] if squeeze else img)
            out = np.asarray(pil.resize((self.new_w, self.new_h), Image.BILINEAR))
            return out[:, :, None] if squeeze else out
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize (PIL's NEAREST, as detectron2): values stay labels."""
        seg = np.asarray(segmentation)
        if seg.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects a {self.h}x{self.w} mask, "
                f"got {seg.shape[0]}x{seg.shape[1]}"
            )
        if (self.new_h, self.new_w) == (self.h, self.w):
            return seg
        dtype = seg.dtype
        pil = Image.fromarray(seg.astype(np.uint8))
        return np.asarray(pil.resize((self.new_w, self.new_h), Image.NEAREST)).astype(dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords


class HFlipTransform(Transform):
    """Mirror left-right in an image of width ``width``: x -> width - x."""

    def __init__(self, width: int) -> None:
        self.width = int(width)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class VFlipTransform(Transform):
    """Mirror top-bottom in an image of height ``height``: y -> height - y."""

    def __init__(self, height: int) -> None:
        self.height = int(height)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 1] = self.height - coords[:, 1]
        return coords


def clip_polygon_to_rect(
    polygon: np.ndarray, x0: float, y0: float, x1: float, y1: float
) -> np.ndarray:
    """The part of a flat polygon inside the rectangle ``[x0, x1] x [y0, y1]``
    (Sutherland-Hodgman); may have fewer than 3 points (or zero area) if little or nothing is
    inside. A concave polygon cut in several pieces comes back as one polygon joined along the
    rectangle's border (zero-width seams; its rasterized area is right)."""
    pts = [tuple(p) for p in np.asarray(polygon, dtype=np.float64).reshape(-1, 2)]
    # Each edge of the rectangle: (axis, bound, keep side is >= bound when sign is +1).
    for axis, bound, sign in ((0, x0, 1.0), (0, x1, -1.0), (1, y0, 1.0), (1, y1, -1.0)):
        if not pts:
            break
        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cur_in = sign * (cur[axis] - bound) >= 0
            prev_in = sign * (prev[axis] - bound) >= 0
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [0.0, 0.0]
                cross[axis] = bound
                cross[1 - axis] = prev[1 - axis] + t * (cur[1 - axis] - prev[1 - axis])
                out.append(tuple(cross))
            if cur_in:
                out.append(cur)
        pts = out
    return np.asarray(pts, dtype=np.float64).reshape(-1)


class CropTransform(Transform):
    """Cut the ``h`` x ``w`` window at ``(x0, y0)`` out of the image: coordinates shift by
    ``(-x0, -y0)``. Boxes are clipped later with the other boxes; polygons are also clipped to the
    window here (:func:`clip_polygon_to_rect`, a shift-and-clip rule rather than detectron2's
    shapely intersection: the same region for convex shapes), and a polygon left with no area
    inside the window is dropped."""

    def __init__(self, x0: int, y0: int, w: int, h: int) -> None:
        self.x0, self.y0, self.w, self.h = int(x0), int(y0), int(w), int(h)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        out = []
        for p in super().apply_polygons(polygons):
            q = clip_polygon_to_rect(p, 0.0, 0.0, float(self.w), float(self.h))
            if len(q) >= 6 and _shoelace(q) > 0:
                out.append(q)
        return out


def _shoelace(p: np.ndarray) -> float:
    x, y = p[0::2], p[1::2]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


class TransformList(Transform):
    """Several transforms applied in order."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        flat: List[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, TransformList) else [t])
        self.transforms = flat

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            img = t.apply_image(img)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            box = t.apply_box(box)
        return np.asarray(box, dtype=np.float64).reshape(-1, 4)

    def apply_polygons(self, polygons: List[np.ndarray]) -> List[np.ndarray]:
        for t in self.transforms:
            polygons = t.apply_polygons(polygons)
        return polygons

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            segmentation = t.apply_segmentation(segmentation)
        return segmentation

    def __len__(self) -> int:
        return len(self.transforms)

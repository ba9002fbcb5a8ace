"""A deterministic synthetic "shapes" dataset: the project's embedded default data.

Colored circles, rectangles and triangles on textured backgrounds (gradients, low-frequency color
noise, random lines, pixel noise). Colors are random for every class, so only the geometry tells
the classes apart. Everything is drawn from ``numpy.random.Generator`` streams seeded by
``(seed, split, index)``: the same seed gives byte-identical files, and an image does not depend on
how many other images are requested (train image 7 is the same for ``num_train=10`` or ``1000``).

Layout written by :func:`generate_shapes_dataset` under ``output_dir``::

    train/train_000000.jpg ...             detection images (canonical copies)
    val/val_000000.jpg ...
    annotations/instances_train.json       COCO: image_root = output_dir/train
    annotations/instances_val.json         COCO: image_root = output_dir/val
    VOC/JPEGImages/{train,val}_NNNNNN.jpg  hard links to train/ and val/ (copies where links fail)
    VOC/Annotations/{train,val}_NNNNNN.xml VOC boxes: 1-based inclusive pixel indices
    VOC/ImageSets/Main/train.txt, val.txt  file ids, one a line
    classification/{train,val}/<class>/NNNNNN.jpg  ImageFolder layout, one shape per image
    summary.json                           parameters, counts and relative paths (deterministic)

Boxes are the tight box of the *visible* pixels of each shape (occlusion by later shapes and the
image border removed). In COCO the box is ``[x0, y0, x1 + 1 - x0, y1 + 1 - y0]`` for visible pixel
columns ``x0..x1`` and rows ``y0..y1`` (detectron2's continuous coordinates); in VOC it is
``xmin = x0 + 1, ymin = y0 + 1, xmax = x1 + 1, ymax = y1 + 1``. COCO ``segmentation`` is the
exact outline of the visible part of each shape as polygons: the drawn geometry (triangle and
rectangle vertices; circles as regular polygons of :data:`CIRCLE_POINTS` points of the drawn
radius) grown by :data:`AA_GROWTH` (the reach of cv2's anti-aliased edge), clipped to the image
and with the shapes drawn over it cut away (as convex pieces, so that a shape with a hole in it is
still a union of polygons); COCO ``area`` is the polygons' area. The VOC side has boxes only.
COCO category ids are 1..3 in :data:`SHAPES_CLASSES` order; the in-memory API
(:func:`render_detection_image`) uses 0-based class indices. No shape is drawn if it would leave
itself or any earlier shape with less than ``min_visible_fraction`` of its pixels visible.

Overwriting: an ``output_dir`` that is missing, empty, or holds only entries this generator writes
(the names above) is (re)generated from scratch; any other content makes it refuse with
``FileExistsError`` unless ``force=True``, which still deletes only the generator's own entries.
:func:`ensure_shapes_dataset` skips generation when ``summary.json`` already records the same
parameters.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = [
    "SHAPES_CLASSES",
    "RenderParams",
    "Scene",
    "ShapeInstance",
    "render_background",
    "render_scene",
    "render_detection_image",
    "render_classification_image",
    "generate_shapes_dataset",
    "ensure_shapes_dataset",
    "load_shapes_summary",
]

SHAPES_CLASSES: Tuple[str, ...] = ("circle", "rectangle", "triangle")
GENERATOR_NAME = "resnet_backbones.data.shapes"
FORMAT_VERSION = 2  # 2: COCO segmentation polygons
CIRCLE_POINTS = 64  # vertices of a circle's outline polygon
# cv2's anti-aliased fill reaches about this far (pixels) past the geometry at alpha >= 128; the
# written outlines are grown by it, so that they cover the pixels the shape was drawn on.
AA_GROWTH = 0.6
MANAGED_ENTRIES = ("train", "val", "annotations", "VOC", "classification", "summary.json")
_STREAMS = {"train": 0, "val": 1, "cls_train": 2, "cls_val": 3}
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT

BoxXYXY = Tuple[float, float, float, float]
RngLike = Union[np.random.Generator, int, Sequence[int]]


@dataclass(frozen=True)
class RenderParams:
    """How detection scenes are drawn; every field is validated on construction."""

    min_objects: int = 1
    max_objects: int = 6
    min_object_size: float = 16.0
    max_object_frac: float = 0.6  # largest object extent as a fraction of min(height, width)
    min_visible_fraction: float = 0.5  # of each shape's own pixels, after occlusion and clipping
    max_truncation: float = 0.3  # at most this fraction of a new shape may fall outside the image
    max_tries: int = 30  # placement attempts per object before giving it up

    def __post_init__(self) -> None:
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.min_object_size < 2:
            raise ValueError(f"min_object_size must be >= 2 pixels, got {self.min_object_size}")
        if not 0 < self.max_object_frac <= 1:
            raise ValueError(f"max_object_frac must be in (0, 1], got {self.max_object_frac}")
        if not 0 < self.min_visible_fraction <= 1:
            raise ValueError(
                f"min_visible_fraction must be in (0, 1], got {self.min_visible_fraction}"
            )
        if not 0 <= self.max_truncation < 1:
            raise ValueError(f"max_truncation must be in [0, 1), got {self.max_truncation}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")


@dataclass
class ShapeInstance:
    """One drawn shape: class index (0-based), visible box (xyxy, continuous) and pixel counts."""

    class_id: int
    box: BoxXYXY
    visible_area: int
    full_area: int
    # The whole shape's outline (Nx2, continuous image coordinates) and the visible part of it as
    # COCO polygons (flat lists), filled in by render_scene.
    outline: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    segmentation: List[List[float]] = field(default_factory=list, repr=False, compare=False)


@dataclass
class Scene:
    """A rendered detection image with its per-pixel instance map (0 = background, k = instance
    k-1)."""

    image: np.ndarray  # HxWx3 uint8, BGR (cv2 order)
    label_map: np.ndarray  # HxW int16
    instances: List[ShapeInstance] = field(default_factory=list)


def _as_rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _stream_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """The independent random stream of one image."""
    return np.random.default_rng([seed, _STREAMS[stream], index])


# ----------------------------------------------------------------------------------- rendering


def render_background(rng: RngLike, height: int, width: int) -> np.ndarray:
    """A textured HxWx3 uint8 background: gradient + low-frequency color noise + random lines."""
    rng = _as_rng(rng)
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0 + (c1 - c0) * t[..., None]
    grid = int(rng.integers(3, 9))
    blobs = rng.normal(0, rng.uniform(0, 40), size=(grid, grid, 3)).astype(np.float32)
    img += cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    diag = math.hypot(height, width)
    for _ in range(int(rng.integers(0, 9))):
        x0, y0 = rng.uniform(-0.2, 1.2, size=2) * (width, height)
        ang, length = rng.uniform(0, math.pi), rng.uniform(0.1, 1.0) * diag
        x1, y1 = x0 + length * math.cos(ang), y0 + length * math.sin(ang)
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        pts = [int(round(v * _ONE)) for v in (x0, y0, x1, y1)]
        cv2.line(img, pts[:2], pts[2:], color, int(rng.integers(1, 4)), cv2.LINE_AA, _SHIFT)
    return img


def _shape_alpha(rng: np.random.Generator, class_id: int, size: float) -> np.ndarray:
    """Alpha patch (uint8, anti-aliased) of one shape of extent ``size`` centered in the patch."""
    return _shape_patch(rng, class_id, size)[0]


def _shape_patch(
    rng: np.random.Generator, class_id: int, size: float
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`_shape_alpha` and the shape's exact outline (Nx2 float, counter-clockwise on screen
    or not, in cv2's patch coordinates: pixel centers at integers)."""
    side = int(math.ceil(size)) + 4
    patch = np.zeros((side, side), dtype=np.uint8)
    c = side / 2.0
    name = SHAPES_CLASSES[class_id]
    if name == "circle":
        center = (int(round(c * _ONE)), int(round(c * _ONE)))
        radius = int(round(size / 2 * _ONE))
        cv2.circle(patch, center, radius, 255, -1, cv2.LINE_AA, _SHIFT)
        t = np.arange(CIRCLE_POINTS) * (2 * math.pi / CIRCLE_POINTS)
        r, cc = radius / _ONE + AA_GROWTH, center[0] / _ONE
        return patch, np.stack([cc + r * np.cos(t), cc + r * np.sin(t)], axis=1)
    if name == "rectangle":
        long_side, short_side = size, size * rng.uniform(0.35, 1.0)
        angle = 0.0 if rng.random() < 0.5 else rng.uniform(0, math.pi)
        # Scale so that the rotated rectangle fits in the patch (its diagonal may exceed ``size``).
        scale = min(1.0, size / math.hypot(long_side, short_side)) if angle else 1.0
        hw, hh = long_side * scale / 2, short_side * scale / 2
        corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        if rng.random() < 0.5:
            corners = corners[:, ::-1]  # portrait
    else:  # triangle
        base = rng.uniform(0, 2 * math.pi)
        angles = base + np.radians([0.0, 120.0, 240.0]) + np.radians(rng.uniform(-25, 25, size=3))
        radius = size / 2 * rng.uniform(0.85, 1.0, size=3)
        corners = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
        angle = 0.0
    if angle:
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        corners = corners @ rot.T
    pts = np.round((corners + c) * _ONE).astype(np.int32)
    cv2.fillConvexPoly(patch, pts, 255, cv2.LINE_AA, _SHIFT)
    return patch, _grow_convex(pts.astype(np.float64) / _ONE, AA_GROWTH)


def _grow_convex(poly: np.ndarray, d: float) -> np.ndarray:
    """Convex polygon ``poly`` (Nx2) with every edge moved ``d`` outwards."""
    x, y = poly[:, 0], poly[:, 1]
    orient = 1.0 if float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0 else -1.0
    edge = np.roll(poly, -1, axis=0) - poly  # edge i: vertex i -> i + 1
    normal = np.stack([edge[:, 1], -edge[:, 0]], axis=1) * orient
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    prev = np.roll(normal, 1, axis=0)  # edge i - 1 ends at vertex i
    return poly + d * (prev + normal) / (1.0 + np.sum(prev * normal, axis=1, keepdims=True))


def _pick_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random color that contrasts with the mean of the pixels it will cover."""
    mean = under.reshape(-1, 3).mean(axis=0) if under.size else np.full(3, 127.0)
    best, best_dist = None, -1.0
    for _ in range(10):
        color = rng.uniform(0, 255, size=3)
        dist = float(np.abs(color - mean).max())
        if dist >= 80:
            return color
        if dist > best_dist:
            best, best_dist = color, dist
    return best  # type: ignore[return-value]


def _paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray, rng: np.random.Generator) -> None:
    """Alpha-blend a softly shaded flat color into ``img`` (both already cropped to the same
    region)."""
    h, w = alpha.shape
    gy, gx = rng.uniform(-40, 40, size=2) / max(h, w, 1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = (xs - w / 2) * gx + (ys - h / 2) * gy
    fill = np.clip(color[None, None, :].astype(np.float32) + shade[..., None], 0, 255)
    a = alpha.astype(np.float32)[..., None] / 255.0
    img[...] = (img.astype(np.float32) * (1 - a) + fill * a + 0.5).astype(np.uint8)


def _crop(oy: int, ox: int, ph: int, pw: int, height: int, width: int):
    """Slices of the image region and of the patch where a patch at (oy, ox) overlaps the image."""
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + ph, height), min(ox + pw, width)
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))


def _try_place(
    rng: np.random.Generator,
    scene: Scene,
    full: List[int],
    visible: List[int],
    params: RenderParams,
    size_range: Tuple[float, float],
) -> bool:
    """Draw one random shape if it keeps every shape (itself included) mostly visible."""
    height, width = scene.label_map.shape
    lo, hi = size_range
    class_id = int(rng.integers(0, len(SHAPES_CLASSES)))
    size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    alpha, outline = _shape_patch(rng, class_id, size)
    mask = alpha >= 128
    full_area = int(mask.sum())
    if full_area < 4:
        return False
    ph, pw = alpha.shape
    for _ in range(params.max_tries):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        oy, ox = int(math.floor(cy - ph / 2)), int(math.floor(cx - pw / 2))
        crop = _crop(oy, ox, ph, pw, height, width)
        if crop is None:
            continue
        img_sl, patch_sl = crop
        m = mask[patch_sl]
        inside = int(m.sum())
        if (
            inside < (1 - params.max_truncation) * full_area
            or inside < params.min_visible_fraction * full_area
        ):
            continue
        lost = np.bincount(scene.label_map[img_sl][m], minlength=len(full) + 1)[1:]
        after = np.asarray(visible, dtype=np.int64) - lost
        if np.any(after < params.min_visible_fraction * np.asarray(full, dtype=np.float64)):
            continue
        color = _pick_color(rng, scene.image[img_sl][m])
        _paint(scene.image[img_sl], alpha[patch_sl], color, rng)
        scene.label_map[img_sl][m] = len(full) + 1
        visible[:] = after.tolist() + [inside]
        full.append(full_area)
        # cv2 puts pixel centers at integers; continuous coordinates at half-integers.
        placed = outline + (ox + 0.5, oy + 0.5)
        scene.instances.append(
            ShapeInstance(class_id, (0.0, 0.0, 0.0, 0.0), inside, full_area, placed)
        )
        return True
    return False


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Pixel noise and an occasional slight blur over the whole image."""
    sigma = rng.uniform(2, 12)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * sigma
    out = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (3, 3), 0)
    return out


def _visible_boxes(scene: Scene) -> None:
    """Set each instance's box to the tight box of its visible pixels (continuous xyxy)."""
    for k, inst in enumerate(scene.instances, start=1):
        ys, xs = np.nonzero(scene.label_map == k)
        inst.visible_area = int(ys.size)
        inst.box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _clip_halfplane(pts: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """The part of convex polygon ``pts`` (Nx2) where ``a * x + b * y + c >= 0``."""
    if len(pts) == 0:
        return pts
    f = pts @ np.array([a, b]) + c
    out = []
    n = len(pts)
    for i in range(n):
        j = (i + 1) % n
        if f[i] >= 0:
            out.append(pts[i])
        if (f[i] >= 0) != (f[j] >= 0):
            t = f[i] / (f[i] - f[j])
            out.append(pts[i] + t * (pts[j] - pts[i]))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _area(pts: np.ndarray) -> float:
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _edges_inward(poly: np.ndarray) -> List[Tuple[float, float, float]]:
    """Half-planes ``a x + b y + c >= 0`` whose intersection is the convex polygon ``poly``."""
    x, y = poly[:, 0], poly[:, 1]
    orient = 1.0 if float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) > 0 else -1.0
    planes = []
    for i in range(len(poly)):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
        a, b = -(y1 - y0) * orient, (x1 - x0) * orient
        planes.append((a, b, -(a * x0 + b * y0)))
    return planes


def _subtract_convex(pieces: List[np.ndarray], cut: np.ndarray) -> List[np.ndarray]:
    """Convex pieces minus the convex polygon ``cut``, as convex pieces: for each edge of
    ``cut`` in turn, the part outside it is kept and the part inside goes on to the next edge."""
    planes = _edges_inward(cut)
    out = []
    for rest in pieces:
        for a, b, c in planes:
            outside = _clip_halfplane(rest, -a, -b, -c)
            if _area(outside) > 1e-6:
                out.append(outside)
            rest = _clip_halfplane(rest, a, b, c)
            if _area(rest) <= 1e-6:
                break
    return out


def _visible_polygons(scene: Scene) -> None:
    """Set each instance's ``segmentation``: its outline clipped to the image, minus the shapes
    drawn after it, as COCO polygons (coordinates rounded to 1/100 pixel)."""
    height, width = scene.label_map.shape
    image = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    for k, inst in enumerate(scene.instances):
        pieces = [inst.outline]
        for a, b, c in _edges_inward(image):
            pieces = [_clip_halfplane(p, a, b, c) for p in pieces]
        lo, hi = inst.outline.min(axis=0), inst.outline.max(axis=0)
        for later in scene.instances[k + 1 :]:
            if np.all(later.outline.max(axis=0) > lo) and np.all(later.outline.min(axis=0) < hi):
                pieces = _subtract_convex(pieces, later.outline)  # (their boxes overlap)
        polys = []
        for p in pieces:
            q = np.round(p, 2)
            if len(q) >= 3 and _area(q) > 1e-2:
                polys.append([float(v) for v in q.reshape(-1)])
        if not polys:  # (not expected: every shape keeps most of its pixels) its visible box
            x0, y0, x1, y1 = inst.box
            polys = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        inst.segmentation = polys


def render_scene(
    rng: RngLike, height: int, width: int, params: Optional[RenderParams] = None
) -> Scene:
    """Render one detection scene: image, instance map and visible-pixel boxes."""
    if height < 8 or width < 8:
        raise ValueError(f"image must be at least 8x8, got {height}x{width}")
    rng = _as_rng(rng)
    params = params or RenderParams()
    hi = max(params.max_object_frac * min(height, width), params.min_object_size)
    scene = Scene(render_background(rng, height, width), np.zeros((height, width), dtype=np.int16))
    full: List[int] = []
    visible: List[int] = []
    for _ in range(int(rng.integers(params.min_objects, params.max_objects + 1))):
        _try_place(rng, scene, full, visible, params, (params.min_object_size, hi))
    scene.image = _finish(rng, scene.image)
    _visible_boxes(scene)
    _visible_polygons(scene)
    return scene


def render_detection_image(
    rng: RngLike, height: int = 224, width: int = 224, params: Optional[RenderParams] = None
) -> Tuple[np.ndarray, List[Tuple[int, BoxXYXY]]]:
    """One detection image (HxWx3 uint8 BGR) and its ``(class_index, (x0, y0, x1, y1))`` list.

    Class indices are 0-based into :data:`SHAPES_CLASSES`; boxes are continuous pixel coordinates
    (visible pixel columns ``x0..x1-1``). ``rng`` may be a Generator or a seed.
    """
    scene = render_scene(rng, height, width, params)
    return scene.image, [(inst.class_id, inst.box) for inst in scene.instances]


def render_classification_image(rng: RngLike, class_id: int, size: int = 64) -> np.ndarray:
    """A ``size`` x ``size`` BGR image showing one shape of ``class_id`` on a textured
    background."""
    if not 0 <= class_id < len(SHAPES_CLASSES):
        raise ValueError(f"class_id must be in [0, {len(SHAPES_CLASSES)}), got {class_id}")
    if size < 16:
        raise ValueError(f"classification image size must be >= 16, got {size}")
    rng = _as_rng(rng)
    img = render_background(rng, size, size)
    alpha = _shape_alpha(rng, class_id, float(rng.uniform(0.3, 0.85) * size))
    ph, pw = alpha.shape
    # Up to ~10% of the patch may fall outside, like shapes cut by the border of a detection image.
    oy = int(rng.integers(-(ph // 10), max(size - ph, 0) + ph // 10 + 1))
    ox = int(rng.integers(-(pw // 10), max(size - pw, 0) + pw // 10 + 1))
    crop = _crop(oy, ox, ph, pw, size, size)
    assert crop is not None
    img_sl, patch_sl = crop
    m = alpha[patch_sl] >= 128
    color = _pick_color(rng, img[img_sl][m])
    _paint(img[img_sl], alpha[patch_sl], color, rng)
    return _finish(rng, img)


# ----------------------------------------------------------------------------------- files


def _write_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cv2.imwrite could not write {path}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _voc_xml(file_id: str, height: int, width: int, instances: List[ShapeInstance]) -> str:
    """A VOC annotation: 1-based inclusive pixel indices, difficult 0, truncated when clipped."""
    objs = []
    for inst in instances:
        x0, y0, x1, y1 = (int(v) for v in inst.box)
        truncated = int(inst.box[0] <= 0 or inst.box[1] <= 0 or x1 >= width or y1 >= height)
        objs.append(
            "  <object>\n"
            f"    <name>{SHAPES_CLASSES[inst.class_id]}</name>\n    <pose>Unspecified</pose>\n"
            f"    <truncated>{truncated}</truncated>\n    <difficult>0</difficult>\n"
            f"    <bndbox>\n      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n"
            f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        "<annotation>\n  <folder>VOC</folder>\n"
        f"  <filename>{file_id}.jpg</filename>\n"
        "  <source>\n    <database>resnet-backbones synthetic shapes</database>\n  </source>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n"
        "    <depth>3</depth>\n  </size>\n"
        "  <segmented>0</segmented>\n" + "".join(objs) + "</annotation>\n"
    )


def _flat_area(poly: List[float]) -> float:
    return _area(np.asarray(poly, dtype=np.float64).reshape(-1, 2))


def _coco_categories() -> List[Dict[str, Any]]:
    return [
        {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES_CLASSES)
    ]


def _write_detection_split(
    root: Path,
    split: str,
    num: int,
    seed: int,
    size_range: Tuple[int, int],
    params: RenderParams,
    quality: int,
) -> Dict[str, Any]:
    """Render, write and annotate one detection split; returns its summary."""
    img_dir, voc = root / split, root / "VOC"
    img_dir.mkdir(parents=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    per_class = {n: 0 for n in SHAPES_CLASSES}
    ids: List[str] = []
    for i in range(num):
        rng = _stream_rng(seed, split, i)
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        scene = render_scene(rng, height, width, params)
        file_id = f"{split}_{i:06d}"
        _write_jpeg(img_dir / f"{file_id}.jpg", scene.image, quality)
        _link_or_copy(img_dir / f"{file_id}.jpg", voc / "JPEGImages" / f"{file_id}.jpg")
        (voc / "Annotations" / f"{file_id}.xml").write_text(
            _voc_xml(file_id, height, width, scene.instances)
        )
        ids.append(file_id)
        images.append(
            {"id": i + 1, "file_name": f"{file_id}.jpg", "height": height, "width": width}
        )
        for inst in scene.instances:
            x0, y0, x1, y1 = inst.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": inst.class_id + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": round(sum(_flat_area(p) for p in inst.segmentation), 2),
                    "segmentation": inst.segmentation,
                    "iscrowd": 0,
                }
            )
            per_class[SHAPES_CLASSES[inst.class_id]] += 1
    coco = {
        "info": {
            "description": "resnet-backbones synthetic shapes",
            "version": str(FORMAT_VERSION),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _coco_categories(),
    }
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps(coco, separators=(",", ":"))
    )
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
    return _split_summary(images, annotations, per_class)


def _split_summary(
    images: List[Dict[str, Any]], anns: List[Dict[str, Any]], per_class: Dict[str, int]
) -> Dict[str, Any]:
    sides = [min(a["bbox"][2], a["bbox"][3]) for a in anns]
    return {
        "images": len(images),
        "instances": len(anns),
        "instances_per_class": per_class,
        "images_without_instances": len(images) - len({a["image_id"] for a in anns}),
        "image_height": [
            min((i["height"] for i in images), default=0),
            max((i["height"] for i in images), default=0),
        ],
        "image_width": [
            min((i["width"] for i in images), default=0),
            max((i["width"] for i in images), default=0),
        ],
        "box_min_side": [min(sides, default=0.0), max(sides, default=0.0)],
        "small_medium_large": [
            sum(a["area"] < 32**2 for a in anns),
            sum(32**2 <= a["area"] < 96**2 for a in anns),
            sum(a["area"] >= 96**2 for a in anns),
        ],
    }


def _write_classification_split(
    root: Path, split: str, num: int, seed: int, size: int, quality: int
) -> Dict[str, int]:
    """``num`` images in total, class ``i % 3`` for image ``i``; returns images per class."""
    base = root / "classification" / split
    for name in SHAPES_CLASSES:
        (base / name).mkdir(parents=True)
    counts = {n: 0 for n in SHAPES_CLASSES}
    for i in range(num):
        class_id = i % len(SHAPES_CLASSES)
        img = render_classification_image(_stream_rng(seed, "cls_" + split, i), class_id, size)
        _write_jpeg(base / SHAPES_CLASSES[class_id] / f"{i:06d}.jpg", img, quality)
        counts[SHAPES_CLASSES[class_id]] += 1
    return counts


def _prepare_output(root: Path, force: bool) -> None:
    """Delete the generator's own entries; refuse if foreign entries exist and ``force`` is
    False."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output {root} exists and is not a directory")
    if root.exists():
        foreign = sorted(p.name for p in root.iterdir() if p.name not in MANAGED_ENTRIES)
        if foreign and not force:
            raise FileExistsError(
                f"output directory {root} is not empty and holds entries this generator does not "
                f"own ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); choose an "
                "empty or new directory, or pass force=True (--force) to regenerate (only the "
                "generator's own entries are deleted)"
            )
        for name in MANAGED_ENTRIES:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    for sub in ("annotations", "VOC/JPEGImages", "VOC/Annotations", "VOC/ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _params_dict(
    num_train: int,
    num_val: int,
    seed: int,
    num_cls_train: int,
    num_cls_val: int,
    min_size: int,
    max_size: int,
    cls_image_size: int,
    jpeg_quality: int,
    render: RenderParams,
) -> Dict[str, Any]:
    return {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "num_cls_train": int(num_cls_train),
        "num_cls_val": int(num_cls_val),
        "min_size": int(min_size),
        "max_size": int(max_size),
        "cls_image_size": int(cls_image_size),
        "jpeg_quality": int(jpeg_quality),
        "render": asdict(render),
    }


def _validate(params: Dict[str, Any]) -> None:
    for key in ("num_train", "num_val", "seed", "num_cls_train", "num_cls_val"):
        _check_count(key, params[key])
    if not 8 <= params["min_size"] <= params["max_size"]:
        raise ValueError(
            f"need 8 <= min_size <= max_size, got {params['min_size']}, {params['max_size']}"
        )
    if params["cls_image_size"] < 16:
        raise ValueError(f"cls_image_size must be >= 16, got {params['cls_image_size']}")
    if not 1 <= params["jpeg_quality"] <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {params['jpeg_quality']}")


def generate_shapes_dataset(
    output_dir: Union[str, os.PathLike],
    num_train: int = 400,
    num_val: int = 100,
    seed: int = 0,
    *,
    num_cls_train: int = 600,
    num_cls_val: int = 150,
    min_size: int = 160,
    max_size: int = 256,
    cls_image_size: int = 64,
    jpeg_quality: int = 90,
    render_params: Optional[RenderParams] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Write the whole dataset (layout in the module docstring) and return its summary.

    ``min_size``/``max_size`` bound the random height and width of each detection image;
    ``num_cls_*`` are classification images per split (class ``i % 3`` for image ``i``).
    The returned dict equals ``summary.json`` plus ``"seconds"`` (wall time, not written).
    """
    for key, value in (
        ("num_train", num_train),
        ("num_val", num_val),
        ("seed", seed),
        ("num_cls_train", num_cls_train),
        ("num_cls_val", num_cls_val),
    ):
        _check_count(key, value)
    render = render_params or RenderParams()
    params = _params_dict(
        num_train,
        num_val,
        seed,
        num_cls_train,
        num_cls_val,
        min_size,
        max_size,
        cls_image_size,
        jpeg_quality,
        render,
    )
    _validate(params)
    start = time.perf_counter()
    root = Path(output_dir)
    _prepare_output(root, force)
    splits = {
        split: _write_detection_split(
            root, split, n, int(seed), (min_size, max_size), render, jpeg_quality
        )
        for split, n in (("train", num_train), ("val", num_val))
    }
    classification = {
        split: _write_classification_split(root, split, n, int(seed), cls_image_size, jpeg_quality)
        for split, n in (("train", num_cls_train), ("val", num_cls_val))
    }
    summary = {
        "generator": GENERATOR_NAME,
        "format_version": FORMAT_VERSION,
        "classes": list(SHAPES_CLASSES),
        "params": params,
        "detection": splits,
        "classification": classification,
        "paths": {
            "coco": {
                s: {"json_file": f"annotations/instances_{s}.json", "image_root": s} for s in splits
            },
            "voc": {"dirname": "VOC", "splits": list(splits)},
            "classification": {s: f"classification/{s}" for s in classification},
        },
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "seconds": round(time.perf_counter() - start, 3)}


def load_shapes_summary(output_dir: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The ``summary.json`` of a generated dataset, or None if there is none (or it is not ours)."""
    path = Path(output_dir) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (
        summary
        if isinstance(summary, dict) and summary.get("generator") == GENERATOR_NAME
        else None
    )


def ensure_shapes_dataset(output_dir: Union[str, os.PathLike], **kwargs: Any) -> Dict[str, Any]:
    """Generate the dataset unless ``summary.json`` already records the same parameters.

    Takes the arguments of :func:`generate_shapes_dataset` (after ``output_dir``) as keywords.
    """
    existing = load_shapes_summary(output_dir)
    force = kwargs.pop("force", False)
    defaults = {
        name: p.default
        for name, p in inspect.signature(generate_shapes_dataset).parameters.items()
        if name not in ("output_dir", "render_params", "force")
    }
    unknown = set(kwargs) - set(defaults) - {"render_params"}
    if unknown:
        raise TypeError(
            f"ensure_shapes_dataset() got unexpected arguments: {', '.join(sorted(unknown))}"
        )
    merged = {**defaults, **kwargs}
    render = merged.pop("render_params", None) or RenderParams()
    wanted = _params_dict(render=render, **merged)
    if (
        existing is not None
        and existing.get("format_version") == FORMAT_VERSION
        and existing.get("params") == wanted
    ):
        return existing
    return generate_shapes_dataset(output_dir, render_params=render, force=force, **merged)


def format_shapes_summary(summary: Dict[str, Any], output: Union[str, Path]) -> str:
    """A short human-readable report of a generation summary."""
    seed = summary["params"]["seed"]
    if "seconds" in summary:
        lines = [f"shapes dataset written to {output} in {summary['seconds']:.2f} s (seed {seed})"]
    else:
        lines = [f"shapes dataset already in {output}, same parameters (seed {seed}); reused"]
    for split, s in summary["detection"].items():
        per_class = ", ".join(f"{c} {s['instances_per_class'][c]}" for c in SHAPES_CLASSES)
        lines.append(
            f"  detection {split:5s}: {s['images']} images, {s['instances']} instances "
            f"({per_class}); "
            f"image h {s['image_height'][0]}-{s['image_height'][1]}, "
            f"w {s['image_width'][0]}-{s['image_width'][1]}; "
            f"box min side {s['box_min_side'][0]:.0f}-{s['box_min_side'][1]:.0f}; "
            "small/medium/large {}/{}/{}".format(*s["small_medium_large"])
        )
    for split, counts in summary["classification"].items():
        per_class = ", ".join(f"{c} {counts[c]}" for c in SHAPES_CLASSES)
        lines.append(
            f"  classification {split:5s}: {sum(counts.values())} images ({per_class}), "
            f"{summary['params']['cls_image_size']}x{summary['params']['cls_image_size']}"
        )
    return "\n".join(lines)

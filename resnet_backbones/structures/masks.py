"""Instance masks as polygons (COCO's format) or as bitmaps: ``PolygonMasks`` and ``BitMasks``,
with the part of detectron2's API that Mask R-CNN uses.

The model reads ground-truth masks only through ``crop_and_resize(boxes, M)``: each mask cut to
its proposal box and resampled to an ``M x M`` bool grid, the mask head's training target.
Polygons are rasterized with pycocotools' mask API (``frPyObjects`` / ``merge`` / ``decode``)
after moving them into the box's frame and scaling the box to ``M x M``; bitmaps are resampled
with torchvision's ``roi_align`` (``aligned=True``) and thresholded at 0.5, as detectron2 does.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, List, Sequence, Union

import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision.ops import roi_align

from .boxes import Boxes

__all__ = ["BitMasks", "PolygonMasks", "polygons_to_bitmask", "rasterize_polygons_within_box"]


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """A bool ``(height, width)`` array: the union of the polygons (flat ``[x0, y0, x1, ...]``
    arrays in pixel coordinates), rasterized by pycocotools."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rasterize_polygons_within_box(
    polygons: Sequence[np.ndarray], box: np.ndarray, mask_size: int
) -> torch.Tensor:
    """The polygons of one instance cut to ``box`` (x0, y0, x1, y1) and rasterized on a
    ``mask_size x mask_size`` grid spanning the box: ``(mask_size, mask_size)`` bool tensor."""
    w, h = box[2] - box[0], box[3] - box[1]
    ratio_w = mask_size / max(w, 0.1)  # max(): no division by (near) zero for degenerate boxes
    ratio_h = mask_size / max(h, 0.1)
    moved = []
    for p in polygons:
        q = np.array(p, dtype=np.float64)  # a copy: the instance's polygons stay as they are
        q[0::2] = (q[0::2] - box[0]) * ratio_w
        q[1::2] = (q[1::2] - box[1]) * ratio_h
        moved.append(q)
    return torch.from_numpy(polygons_to_bitmask(moved, mask_size, mask_size))


def _polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Shoelace formula."""
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


class BitMasks:
    """``N`` binary masks of one image as an ``(N, H, W)`` bool tensor (``.tensor``)."""

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray]) -> None:
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.to(torch.bool)
        else:
            tensor = torch.as_tensor(np.asarray(tensor), dtype=torch.bool)
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks expects an (N, H, W) tensor, got {tuple(tensor.shape)}")
        self.image_size = tuple(tensor.shape[1:])
        self.tensor = tensor

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, *args: Any, **kwargs: Any) -> "BitMasks":
        return BitMasks(self.tensor.to(*args, **kwargs))

    def __getitem__(self, item) -> "BitMasks":
        if isinstance(item, int):
            return BitMasks(self.tensor[item].unsqueeze(0))
        m = self.tensor[item]
        if m.dim() != 3:
            raise IndexError(f"Indexing BitMasks with {item!r} gave shape {tuple(m.shape)}")
        return BitMasks(m)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from self.tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)}, image_size={self.image_size})"

    def nonempty(self) -> torch.Tensor:
        """Bool ``(N,)``: which masks have any pixel set."""
        return self.tensor.flatten(1).any(dim=1)

    def area(self) -> torch.Tensor:
        """Pixels set per mask, ``(N,)`` int64."""
        return self.tensor.flatten(1).sum(dim=1)

    def get_bounding_boxes(self) -> Boxes:
        """Tight boxes around each mask (x1, y1 one past the last set column / row; empty masks
        give all-zero boxes)."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        any_x = self.tensor.any(dim=1)  # (N, W)
        any_y = self.tensor.any(dim=2)  # (N, H)
        for i in range(len(self)):
            xs = torch.where(any_x[i])[0]
            ys = torch.where(any_y[i])[0]
            if len(xs) > 0 and len(ys) > 0:
                boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
        return Boxes(boxes)

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """Mask ``i`` cut to ``boxes[i]`` (x0, y0, x1, y1) and resampled to ``mask_size x
        mask_size`` by RoIAlign (aligned, adaptive sampling), thresholded at 0.5: ``(N, M, M)``
        bool."""
        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} masks")
        device = self.tensor.device
        boxes = boxes.to(device=device, dtype=torch.float32)
        idx = torch.arange(len(boxes), device=device, dtype=torch.float32)[:, None]
        rois = torch.cat([idx, boxes], dim=1)
        out = roi_align(
            self.tensor.to(torch.float32)[:, None],
            rois,
            (mask_size, mask_size),
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=True,
        ).squeeze(1)
        return out >= 0.5

    @staticmethod
    def from_polygon_masks(
        polygon_masks: Union["PolygonMasks", List[List[np.ndarray]]], height: int, width: int
    ) -> "BitMasks":
        if isinstance(polygon_masks, PolygonMasks):
            polygon_masks = polygon_masks.polygons
        masks = [polygons_to_bitmask(p, height, width) for p in polygon_masks]
        if not masks:
            return BitMasks(torch.empty(0, height, width, dtype=torch.bool))
        return BitMasks(torch.stack([torch.from_numpy(m) for m in masks]))

    @staticmethod
    def cat(bitmasks_list: List["BitMasks"]) -> "BitMasks":
        if not bitmasks_list:
            raise ValueError("BitMasks.cat needs at least one BitMasks")
        return BitMasks(torch.cat([b.tensor for b in bitmasks_list], dim=0))


class PolygonMasks:
    """``N`` instance masks of one image, each a list of polygons (flat float64 arrays
    ``[x0, y0, x1, y1, ...]`` of at least 3 points, in absolute pixels), as in COCO's
    ``segmentation`` field. ``.polygons`` is the list of instances."""

    def __init__(self, polygons: Sequence[Sequence[Union[torch.Tensor, np.ndarray, list]]]) -> None:
        if not isinstance(polygons, (list, tuple)):
            raise ValueError(
                "PolygonMasks expects a list (instances) of lists (polygons) of flat coordinate "
                f"arrays, got {type(polygons)}"
            )

        def to_array(p) -> np.ndarray:
            if isinstance(p, torch.Tensor):
                p = p.cpu().numpy()
            a = np.asarray(p, dtype=np.float64).reshape(-1)
            if len(a) % 2 != 0 or len(a) < 6:
                raise ValueError(f"A polygon needs >= 3 (x, y) points, got {len(a)} numbers")
            return a

        def instance(polys) -> List[np.ndarray]:
            if not isinstance(polys, (list, tuple)):
                raise ValueError(
                    f"Each instance of PolygonMasks is a list of polygons, got {type(polys)}"
                )
            return [to_array(p) for p in polys]

        self.polygons: List[List[np.ndarray]] = [instance(p) for p in polygons]

    def to(self, *args: Any, **kwargs: Any) -> "PolygonMasks":
        return self  # polygons stay on the CPU

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __getitem__(self, item) -> "PolygonMasks":
        """An int, a slice, a list of indices, or an index / bool tensor (or array)."""
        if isinstance(item, int):
            return PolygonMasks([self.polygons[item]])
        if isinstance(item, slice):
            return PolygonMasks(self.polygons[item])
        if isinstance(item, list):
            return PolygonMasks([self.polygons[i] for i in item])
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.bool:
                if item.dim() != 1 or len(item) != len(self):
                    raise IndexError(f"bool index of shape {tuple(item.shape)} for {len(self)}")
                item = item.nonzero().squeeze(1)
            return PolygonMasks([self.polygons[i] for i in item.cpu().reshape(-1).tolist()])
        raise TypeError(f"Unsupported index {type(item)} for PolygonMasks")

    def __iter__(self) -> Iterator[List[np.ndarray]]:
        return iter(self.polygons)

    def __len__(self) -> int:
        return len(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self)})"

    def nonempty(self) -> torch.Tensor:
        return torch.tensor([len(p) > 0 for p in self.polygons], dtype=torch.bool)

    def get_bounding_boxes(self) -> Boxes:
        """The box around all polygons of each instance (exact coordinates)."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        for i, polys in enumerate(self.polygons):
            if not polys:
                continue
            xy = np.concatenate(polys).reshape(-1, 2)
            boxes[i] = torch.as_tensor(
                [xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()],
                dtype=torch.float32,
            )
        return Boxes(boxes)

    def area(self) -> torch.Tensor:
        """The polygons' area (shoelace formula, summed over each instance's polygons; overlaps
        counted twice, as in detectron2): ``(N,)`` float."""
        return torch.tensor(
            [sum(_polygon_area(p[0::2], p[1::2]) for p in polys) for polys in self.polygons],
            dtype=torch.float32,
        )

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """Instance ``i`` cut to ``boxes[i]`` and rasterized on a ``mask_size x mask_size`` grid
        over the box: ``(N, M, M)`` bool, on ``boxes``' device."""
        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} masks")
        device = boxes.device
        if len(boxes) == 0:
            return torch.empty(0, mask_size, mask_size, dtype=torch.bool, device=device)
        boxes_np = boxes.detach().to("cpu", torch.float32).numpy()
        crops = [
            rasterize_polygons_within_box(polys, box, mask_size)
            for polys, box in zip(self.polygons, boxes_np)
        ]
        return torch.stack(crops).to(device)

    @staticmethod
    def cat(polymasks_list: List["PolygonMasks"]) -> "PolygonMasks":
        return PolygonMasks(list(itertools.chain.from_iterable(m.polygons for m in polymasks_list)))

"""Fast paths for the C4 detector that compute what detectron2 computes with less work.

Everything here transforms an already built
:class:`~resnet_backbones.modeling.meta_arch.GeneralizedRCNN` (or any module tree with the same
parts); nothing changes the default model, its state-dict names, or detectron2 parity.
``MODEL.FAST_PATH`` applies them through
:func:`~resnet_backbones.modeling.prepare_model`, the one place that decides which runs where.
Two entry points, named after what they do to the state dict:

* :func:`optimize_keeping_state_dict` (training, and evaluation during training): the same model
  with less work per step. The state dict (names, shapes, values) is unchanged, so checkpoints,
  optimizers and detectron2 loading are unaffected.
* :func:`optimize_folding_state_dict` (inference, weights already loaded): BN folded into the
  convs as well, so the state dict changes (convs gain a bias, norms disappear).

(Their former names, ``optimize_detector_for_training`` and ``optimize_detector_for_inference``,
still work.)

The transformations, each exact in real arithmetic (float results differ by rounding only,
~1e-6 relative on a full detector; the tests check 1e-4):

1. **Subsampled RoIAlign** (:class:`SubsampledROIPooler`, both modes). In detectron2's C4 head
   (``STRIDE_IN_1X1=True``) the first res5 block reads its 14x14 RoI features only through two
   1x1 convolutions of stride 2 (``conv1`` and the projection ``shortcut``): 3 of every 4 pooled
   positions are computed and then never read. The fast path pools only the 7x7 bins those convs
   read -- bins ``(2i, 2j)`` of the 14x14 grid, sampled exactly as torchvision's RoIAlign samples
   them -- and sets the two convs' stride to 1. RoIAlign work (and, in training, its backward and
   the 14x14 activations kept for the backward) drops 4x. The pooling itself is a weighted gather
   (``F.embedding_bag``) from the features in NHWC layout, multi-threaded, where torchvision's CPU
   kernels (forward and backward) run on one thread. Its output comes in channels_last layout.
2. **FrozenBN into the conv.** Inference: folded into the weights once
   (:func:`~resnet_backbones.modeling.fuse.fold_batch_norm`). Training: every conv followed by a
   ``FrozenBatchNorm2d`` convolves with ``W * scale`` and adds ``shift`` as its bias
   (:class:`FrozenBNConv2d`): one pass over each activation less, forward and backward; the
   parameters and FrozenBN buffers stay as they are, and gradients reach ``W`` through the product.
3. **channels_last** for the convolutions (weights and activations), where oneDNN avoids a layout
   conversion around every conv.
4. res5's global average pool computed inside res5 (:class:`PooledRes5`): as a GEMM with a
   vector of ones under autocast (CPU bfloat16 reductions are slow), with a gradient in
   channels_last layout in training (autograd's would be NCHW and slow down the backward ops);
   at inference res5 runs over ~128 RoIs at a time (same outputs, less memory mapped and zeroed
   per call). With Mask R-CNN's mask head res5 returns its unpooled output where the mask head
   reads it (foreground RoIs in training, detections at inference), chunked as well.
5. **res5's input convs before RoIAlign** (:func:`project_res5_input_before_pooling`, inference).
   After 1., the first res5 block reads its pooled input only through two 1x1 convs (``conv1``
   and the projection shortcut); both are linear and so is RoIAlign, so they commute. The pooler
   applies them to the feature map (~3,750 positions for an 800x1200 image) instead of to the
   ~49,000 pooled bins of 1000 proposals, and pools their 2.5x wider output; the biases are added
   after pooling. 18% of res5's multiply-adds.
6. **Winograd 3x3 convs** (:mod:`~resnet_backbones.modeling.winograd`, inference): res5's 3x3
   convs on 7x7 maps with 3.1x fewer multiply-adds, at CPU float32 only (under bfloat16 autocast,
   with autograd and on CUDA the ordinary convolution runs). Half of res5's multiply-adds.

With 5. and 6. a float32 R50-C4 ``DefaultPredictor`` on the CPU runs res5 over 1000 proposals
in about half the time of the direct convolutions (docs/benchmarks.md).
"""

from __future__ import annotations

import copy
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import Conv2d, FrozenBatchNorm2d
from ..structures import Boxes
from .backbone.resnet import BottleneckBlock, PadShortcut
from .poolers import ROIPooler, convert_boxes_to_pooler_format
from .winograd import use_winograd_convs

__all__ = [
    "FrozenBNConv2d",
    "PooledRes5",
    "PreprojectedBottleneck",
    "ProjectingROIPooler",
    "RES5_CHUNK_SIZE",
    "SubsampledROIPooler",
    "fuse_frozen_bn_into_convs",
    "optimize_detector_for_inference",
    "optimize_detector_for_training",
    "optimize_folding_state_dict",
    "optimize_keeping_state_dict",
    "project_res5_input_before_pooling",
    "roi_align_subsampled",
    "subsample_res5_roi_pooling",
]


# ------------------------------------------------------------------------------ RoIAlign
def _axis_samples(
    start: torch.Tensor,
    bin_size: torch.Tensor,
    grid: torch.Tensor,
    bins: torch.Tensor,
    max_grid: int,
    size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis, torchvision's arithmetic (float32, same operation order).

    For every RoI ``k``, kept bin ``p`` and sample ``i < max_grid``: the two pixel indices
    ``(low, high)`` and their weights ``(1 - l, l)`` (both 0 for a sample outside
    ``[-1, size]``). Shapes ``(K, P, max_grid, 2)``.
    """
    dtype = start.dtype
    p = bins.to(dtype)
    i = torch.arange(max_grid, dtype=dtype, device=start.device) + 0.5
    # yy = roi_start + ph * bin_size + (iy + .5) * bin_size / grid
    pos = (start[:, None] + p[None, :] * bin_size[:, None])[:, :, None] + (
        i[None, None, :] * bin_size[:, None, None]
    ) / grid.to(dtype).clamp_min(1)[:, None, None]
    valid = (pos >= -1.0) & (pos <= size)  # False for NaN as well
    pos = torch.where(valid, pos, torch.zeros((), dtype=dtype, device=pos.device)).clamp_min(0)
    low = pos.to(torch.int64)  # pos >= 0: truncation is floor
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    pos = torch.where(edge, low.to(dtype), pos)
    lw = pos - low.to(dtype)
    hw = 1.0 - lw
    zero = torch.zeros((), dtype=dtype, device=pos.device)
    weights = torch.stack([torch.where(valid, hw, zero), torch.where(valid, lw, zero)], dim=-1)
    return torch.stack([low, high], dim=-1), weights


def _roi_align_taps(
    rois: torch.Tensor,
    height: int,
    width: int,
    output_size: Tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    stride: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indices, weights, offsets)`` of an ``embedding_bag`` that computes RoIAlign bins
    ``(stride * i, stride * j)`` from NHWC features flattened to ``(N * H * W, C)``.

    Bags are ordered ``(roi, i, j)``; a bag holds ``4 * grid_h * grid_w`` taps in torchvision's
    order (samples row by row, corners ``(low, low), (low, high), (high, low), (high, high)``).
    """
    dev = rois.device
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=rois.dtype)  # torchvision casts the scale to T
    start_w = rois[:, 1] * scale - offset
    start_h = rois[:, 2] * scale - offset
    roi_w = (rois[:, 3] * scale - offset) - start_w
    roi_h = (rois[:, 4] * scale - offset) - start_h
    if not aligned:  # malformed RoIs become 1x1
        roi_w, roi_h = roi_w.clamp_min(1.0), roi_h.clamp_min(1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(rois[:, 0], sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).nan_to_num(0.0).clamp(0, 1 << 20).to(torch.int64)
        grid_w = torch.ceil(roi_w / pw).nan_to_num(0.0).clamp(0, 1 << 20).to(torch.int64)
    k = rois.shape[0]
    bins_h = torch.arange(0, ph, stride, device=dev)
    bins_w = torch.arange(0, pw, stride, device=dev)
    gh_max = max(int(grid_h.max()), 1) if k else 1
    gw_max = max(int(grid_w.max()), 1) if k else 1
    rows, wy = _axis_samples(start_h, bin_h, grid_h, bins_h, gh_max, height)  # (K, Py, Gh, 2)
    cols, wx = _axis_samples(start_w, bin_w, grid_w, bins_w, gw_max, width)  # (K, Px, Gw, 2)
    count = (grid_h * grid_w).clamp_min(1).to(rois.dtype)
    base = rois[:, 0].to(torch.int64) * (height * width)
    # (K, Py, Px, Gh, Gw, 2, 2)
    idx = (
        base[:, None, None, None, None, None, None]
        + rows[:, :, None, :, None, :, None] * width
        + cols[:, None, :, None, :, None, :]
    )
    w = (wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]) / count[
        :, None, None, None, None, None, None
    ]
    keep = (torch.arange(gh_max, device=dev)[None, :] < grid_h[:, None])[:, :, None] & (
        torch.arange(gw_max, device=dev)[None, :] < grid_w[:, None]
    )[:, None, :]  # (K, Gh, Gw)
    keep = keep[:, None, None, :, :, None, None].expand(idx.shape)
    indices, weights = idx[keep], w[keep]
    bag_size = (4 * grid_h * grid_w).repeat_interleave(len(bins_h) * len(bins_w))
    offsets = torch.zeros_like(bag_size)
    if bag_size.numel() > 1:
        offsets[1:] = torch.cumsum(bag_size[:-1], dim=0)
    return indices, weights, offsets


class _WeightedGather(torch.autograd.Function):
    """``out[b] = sum_t w[t] * table[idx[t]]`` over the taps ``t`` of bag ``b`` (differentiable in
    ``table``); the backward is the same gather with the roles swapped (bags of each table row)."""

    @staticmethod
    def forward(ctx, table, indices, weights, offsets):  # type: ignore[override]
        ctx.save_for_backward(indices, weights, offsets)
        ctx.num_rows = table.shape[0]
        return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        indices, weights, offsets = ctx.saved_tensors
        num_bags = offsets.numel()
        sizes = torch.diff(offsets, append=offsets.new_tensor([indices.numel()]))
        bag_of_tap = torch.repeat_interleave(torch.arange(num_bags, device=offsets.device), sizes)
        order = torch.argsort(indices, stable=True)
        counts = torch.bincount(indices, minlength=ctx.num_rows)
        row_offsets = torch.zeros_like(counts)
        if counts.numel() > 1:
            row_offsets[1:] = torch.cumsum(counts[:-1], dim=0)
        grad_table = F.embedding_bag(
            bag_of_tap[order],
            grad_out.contiguous(),
            row_offsets,
            mode="sum",
            per_sample_weights=weights[order],
        )
        return grad_table, None, None, None


def roi_align_subsampled(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: Sequence[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    stride: int = 2,
    projection: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``torchvision.ops.roi_align(...)[:, :, ::stride, ::stride]`` without computing the other
    bins; with a ``projection`` (C' x C), that of the 1x1 convolution of ``features`` by it (a
    matrix product over the feature map's positions, before the gather: RoIAlign is linear).

    Same sampling points and bilinear weights as torchvision's CPU/CUDA kernels (float32); the
    sums differ by rounding only. Computed in float32 (autocast off), returned in ``features``'
    dtype, as ``(K, C, ceil(out_h / stride), ceil(out_w / stride))`` in channels_last layout
    (float64 features: computed in float64). Differentiable with respect to ``features``.
    """
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(
            f"expected (N, C, H, W) features and (K, 5) rois, got {tuple(features.shape)}, "
            f"{tuple(rois.shape)}"
        )
    out_h, out_w = (int(s) for s in output_size)
    n, c, h, w = features.shape
    py, px = len(range(0, out_h, stride)), len(range(0, out_w, stride))
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros((0, c, py, px)).contiguous(memory_format=torch.channels_last)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    if projection is not None:
        c = projection.shape[0]
    with torch.autocast(features.device.type, enabled=False):
        with torch.no_grad():
            indices, weights, offsets = _roi_align_taps(
                rois.detach().to(dtype),
                h,
                w,
                (out_h, out_w),
                spatial_scale,
                sampling_ratio,
                aligned,
                stride,
            )
        table = features.to(dtype).permute(0, 2, 3, 1).reshape(n * h * w, -1).contiguous()
        if projection is not None:
            table = torch.matmul(table, projection.to(dtype).t())
        if torch.is_grad_enabled() and table.requires_grad:
            out = _WeightedGather.apply(table, indices, weights, offsets)
        else:
            out = F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)
    return out.view(k, py, px, c).permute(0, 3, 1, 2).to(features.dtype)


class SubsampledROIPooler(nn.Module):
    """A single-level RoIAlign :class:`~resnet_backbones.modeling.poolers.ROIPooler` that outputs
    only every ``stride``-th bin in each direction (see :func:`roi_align_subsampled`).

    Args:
        pooler: the pooler replaced (its output size, scale, sampling ratio and type are used).
        stride: keep bins ``(stride * i, stride * j)``.
        channels_last: return the channels_last tensor the gather produces (default), or an NCHW
            contiguous copy.
    """

    def __init__(self, pooler: ROIPooler, stride: int = 2, channels_last: bool = True) -> None:
        super().__init__()
        if len(pooler.level_poolers) != 1:
            raise ValueError("SubsampledROIPooler supports single-level poolers (C4) only")
        if pooler.pooler_type not in ("ROIAlignV2", "ROIAlign"):
            raise ValueError(
                f"SubsampledROIPooler supports ROIAlignV2/ROIAlign, not {pooler.pooler_type}"
            )
        op = pooler.level_poolers[0]
        self.output_size = tuple(pooler.output_size)
        self.spatial_scale = float(op.spatial_scale)
        self.sampling_ratio = int(op.sampling_ratio)
        self.aligned = pooler.pooler_type == "ROIAlignV2"
        self.pooler_type = pooler.pooler_type
        self.stride = int(stride)
        self.channels_last = bool(channels_last)
        self.original = [pooler]  # a list: not a submodule (no state, not in named_modules)

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        if len(x) != 1:
            raise ValueError(f"SubsampledROIPooler pools from one feature map, got {len(x)}")
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(f"{len(box_lists)} box lists for a batch of {x[0].shape[0]} images")
        rois = convert_boxes_to_pooler_format(box_lists)
        out = roi_align_subsampled(
            x[0],
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.stride,
            projection=self._projection(x[0], rois.shape[0]),
        )
        device_type = out.device.type
        if out.is_floating_point() and torch.is_autocast_enabled(device_type):
            # cast once here, not once per consumer (res5's conv1 and shortcut both read it)
            out = out.to(torch.get_autocast_dtype(device_type))
        return out if self.channels_last else out.contiguous()

    def _projection(self, features: torch.Tensor, num_rois: int) -> Optional[torch.Tensor]:
        """The 1x1 convolution to apply to ``features`` before pooling (none here)."""
        return None

    def extra_repr(self) -> str:
        return (
            f"{self.pooler_type}, output_size={self.output_size} "
            f"keeping every {self.stride}th bin, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}"
        )


# --------------------------------------------------------------------- res5 subsampling
def _is_strided_1x1(module: Any, stride: int) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and tuple(module.kernel_size) == (1, 1)
        and tuple(module.stride) == (stride, stride)
        and tuple(module.padding) == (0, 0)
        and tuple(module.dilation) == (1, 1)
    )


def subsample_res5_roi_pooling(roi_heads: nn.Module, channels_last: bool = True) -> bool:
    """Pool only the RoI bins that res5's first block reads (transformation 1 of the module
    docstring), in place. Returns whether it applies.

    It applies to a C4 head (``pooler`` + ``res5``, e.g. ``Res5ROIHeads``) whose pooler is a
    single-level RoIAlign and whose first res5 block is a bottleneck that reads its input only
    through a 1x1 stride-2 ``conv1`` and a 1x1 stride-2 projection (or option-A) shortcut, i.e.
    ``MODEL.RESNETS.STRIDE_IN_1X1=True`` (detectron2's default for MSRA weights). With the stride in
    the 3x3 conv (torchvision-style weights) every pooled bin is read and nothing changes.
    The swap is consistent: ``conv1`` and the shortcut get stride 1 *and* the pooler is replaced,
    so the head computes the same function; the state dict does not change.
    """
    pooler = getattr(roi_heads, "pooler", None)
    res5 = getattr(roi_heads, "res5", None)
    if isinstance(pooler, SubsampledROIPooler):
        return True
    if not isinstance(pooler, ROIPooler) or not isinstance(res5, nn.Sequential) or len(res5) == 0:
        return False
    if len(pooler.level_poolers) != 1 or pooler.pooler_type not in ("ROIAlignV2", "ROIAlign"):
        return False
    block = res5[0]
    if type(block) is not BottleneckBlock or not _is_strided_1x1(block.conv1, 2):
        return False
    shortcut = block.shortcut
    if _is_strided_1x1(shortcut, 2):
        shortcut.stride = (1, 1)
    elif isinstance(shortcut, PadShortcut) and shortcut.stride == 2:
        shortcut.stride = 1
    else:
        return False
    block.conv1.stride = (1, 1)
    roi_heads.pooler = SubsampledROIPooler(pooler, stride=2, channels_last=channels_last)
    return True


# ------------------------------------------------------- res5's input convs before RoIAlign
class PreprojectedBottleneck(BottleneckBlock):
    """res5's first block (BN folded, stride moved to the pooler) that also accepts its input
    already through its two 1x1 input convs: ``conv1`` and the projection ``shortcut`` both read
    the pooled RoI features and nothing else, both are linear, and so is RoIAlign, so
    ``conv(roi_align(f)) = roi_align(conv(f))``; the biases, which do not commute (RoIAlign's
    weights sum to less than 1 at the image border), are added here.

    ``forward`` takes either the pooled features (``conv1.in_channels`` channels: the block as
    before) or the pooled projection (``conv1.out_channels + shortcut.out_channels``, the first
    ``conv1.out_channels`` those of ``conv1``). Same modules and state dict as the block it was.
    """

    def input_projection(self) -> torch.Tensor:
        """``conv1`` and ``shortcut`` weights stacked as one (C1 + C_sc) x C_in matrix."""
        return torch.cat([self.conv1.weight.flatten(1), self.shortcut.weight.flatten(1)])

    @property
    def projected_channels(self) -> int:
        return self.conv1.out_channels + self.shortcut.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.projected_channels:
            return super().forward(x)
        split = self.conv1.out_channels
        out = x[:, :split]
        if self.conv1.bias is not None:
            out = out + self.conv1.bias.to(out.dtype).view(1, -1, 1, 1)
        out = F.relu(out)
        out = F.relu_(self.conv2(out))
        bias = self.conv3.bias  # the shortcut's bias joins conv3's: one pass less
        if self.shortcut.bias is not None:
            bias = self.shortcut.bias if bias is None else bias + self.shortcut.bias
        out = self.conv3._conv_forward(out, self.conv3.weight, bias)
        out += x[:, split:]
        return F.relu_(out)


class ProjectingROIPooler(SubsampledROIPooler):
    """A :class:`SubsampledROIPooler` that pools the feature map already through res5's first
    1x1 convs (:class:`PreprojectedBottleneck`) whenever the map has fewer positions than the bins
    it pools: the ~1000 proposals of a test image have 49 bins each (49,000 positions) against
    ~3,750 positions of an 800x1200 image's stride-16 map, so the two convs (18% of res5's
    multiply-adds) run ~13x less often, and the gather reads 2.5x the channels. With few RoIs
    (Mask R-CNN's mask pass over the detections, small images) it pools the features as before.
    """

    def __init__(self, pooler: SubsampledROIPooler, block: PreprojectedBottleneck) -> None:
        super().__init__(
            pooler.original[0], stride=pooler.stride, channels_last=pooler.channels_last
        )
        self.block = [block]  # a list: not a submodule (the block stays in res5)

    def _projection(self, features: torch.Tensor, num_rois: int) -> Optional[torch.Tensor]:
        n, _, h, w = features.shape
        py = len(range(0, self.output_size[0], self.stride))
        px = len(range(0, self.output_size[1], self.stride))
        if n * h * w >= num_rois * py * px:
            return None
        return self.block[0].input_projection()


def _is_plain_1x1(module: Any) -> bool:
    return (
        type(module) is Conv2d
        and _is_strided_1x1(module, 1)
        and module.groups == 1
        and module.norm is None
        and module.activation is None
    )


def project_res5_input_before_pooling(roi_heads: nn.Module) -> bool:
    """Let the pooler apply res5's first block's ``conv1`` and projection shortcut to the feature
    map (transformation 5 of the module docstring), in place. Returns whether it applies.

    It applies after :func:`subsample_res5_roi_pooling` and BN folding: a
    :class:`SubsampledROIPooler` and a first block whose ``conv1`` and shortcut are norm-free,
    ungrouped 1x1 stride-1 convs (a ``STRIDE_IN_1X1`` bottleneck with a projection shortcut). Only
    classes change: the state dict stays the same.
    """
    pooler = getattr(roi_heads, "pooler", None)
    res5 = getattr(roi_heads, "res5", None)
    if isinstance(pooler, ProjectingROIPooler):
        return True
    if type(pooler) is not SubsampledROIPooler or not isinstance(res5, nn.Sequential):
        return False
    block = res5[0] if len(res5) else None
    if type(block) is not BottleneckBlock or not all(
        _is_plain_1x1(m) for m in (block.conv1, block.shortcut)
    ):
        return False
    if block.conv3.norm is not None or block.conv3.activation is not None:
        return False
    block.__class__ = PreprojectedBottleneck
    if block.projected_channels == block.conv1.in_channels:  # the two inputs would look alike
        block.__class__ = BottleneckBlock
        return False
    roi_heads.pooler = ProjectingROIPooler(pooler, block)
    return True


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=(2, 3), keepdim=True)``; for float16/bfloat16 channels_last inputs computed as a
    GEMM with a vector of ones (float32 accumulation), ~7x faster than the CPU reduction."""
    n, c, h, w = x.shape
    if x.dtype in (torch.bfloat16, torch.float16) and x.is_contiguous(
        memory_format=torch.channels_last
    ):
        ones = torch.ones((1, h * w), dtype=x.dtype, device=x.device)
        total = torch.matmul(ones, x.permute(0, 2, 3, 1).reshape(n, h * w, c))
        return (total.float() / (h * w)).to(x.dtype).reshape(n, c, 1, 1)
    return x.mean(dim=(2, 3), keepdim=True)


class _GlobalAvgPool(torch.autograd.Function):
    """:func:`_spatial_mean` whose gradient has the input's memory format (autograd's mean backward
    gives an NCHW gradient, which makes every later backward op on channels_last tensors convert
    layouts or take a slow strided path)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.shape = x.shape
        ctx.memory_format = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        return _spatial_mean(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        n, c, h, w = ctx.shape
        out = torch.empty(
            ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.memory_format
        )
        return out.copy_((grad / (h * w)).expand(n, c, h, w))


#: RoIs per res5 call in eval mode (:class:`PooledRes5`).
RES5_CHUNK_SIZE = 128


class PooledRes5(nn.Sequential):
    """res5 (an ``nn.Sequential``) followed by its global average pool: ``(R, C, 1, 1)`` outputs
    (``forward(x, pool=False)``: the unpooled output, e.g. for a mask head).

    ``Res5ROIHeads`` reads the res5 output of its proposals only through its spatial mean (Mask
    R-CNN's mask head reads the unpooled output of the foreground RoIs in training and of the
    detections at inference); with ``pool=True`` the head's mean is then a no-op and the mean itself
    is computed here, by :meth:`spatial_mean`, in a form that is fast in every dtype (CPU reductions
    of bfloat16 channels_last tensors are ~7x slower than the sum as a GEMM with a vector of ones,
    accumulated in float32) and whose gradient keeps the channels_last layout. Same submodules and
    state-dict names as the ``nn.Sequential`` it replaces (only the class changes).

    ``chunk_size`` (eval mode without autograd only, pooled or not): run the RoIs through res5 this
    many at a time. In eval mode every RoI is computed independently (norms use fixed statistics),
    so the outputs are the same; the ~1000 RoIs of a test image at once make activations of hundreds
    of MB that the allocator maps and the kernel zero-fills anew on every call, and chunks of ~100
    RoIs skip much of that (measured on R50's res5 over 1000 RoIs here: ~11% faster in bfloat16,
    ~9% in float32).
    """

    chunk_size: Optional[int] = None
    #: ``Res5ROIHeads._shared_roi_transform`` passes ``pool`` to a res5 with this flag
    accepts_pool: bool = True

    def forward(self, x: torch.Tensor, pool: bool = True) -> torch.Tensor:  # type: ignore[override]
        chunk = self.chunk_size
        run = self._pooled if pool else super().forward
        if chunk and x.shape[0] > chunk and not self.training and not torch.is_grad_enabled():
            return torch.cat([run(part) for part in x.split(chunk)])
        return run(x)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_mean(super().forward(x))

    @staticmethod
    def spatial_mean(x: torch.Tensor) -> torch.Tensor:
        """``x.mean(dim=(2, 3), keepdim=True)`` of a res5 output, fast in every dtype, with a
        gradient in ``x``'s memory format."""
        if torch.is_grad_enabled() and x.requires_grad:
            return _GlobalAvgPool.apply(x)
        return _spatial_mean(x)


def _pool_inside_res5(roi_heads: Optional[nn.Module], chunk_size: Optional[int] = None) -> bool:
    """Make the ``res5`` of a ``Res5ROIHeads`` a :class:`PooledRes5` (in place), with
    ``chunk_size`` RoIs at a time at inference (None: all at once).

    With a mask head (``mask_on``) the head asks res5 for its unpooled output where the mask head
    reads it (``pool=False``, chunked all the same) and takes the box branch's mean with
    :meth:`PooledRes5.spatial_mean`."""
    from .roi_heads.roi_heads import (
        Res5ROIHeads,
    )  # its forward reads res5 via _shared_roi_transform(..., pool=...) and _res5_mean

    res5 = getattr(roi_heads, "res5", None)
    if type(roi_heads) is Res5ROIHeads and type(res5) is nn.Sequential:
        res5.__class__ = PooledRes5
    if isinstance(res5, PooledRes5):
        res5.chunk_size = chunk_size
        return True
    return False


# ------------------------------------------------------------------ FrozenBN in the conv
class FrozenBNConv2d(Conv2d):
    """:class:`~resnet_backbones.layers.Conv2d` whose ``FrozenBatchNorm2d`` norm is applied through
    the convolution: ``conv(x, W * scale) + shift`` instead of ``conv(x, W) * scale + shift``.

    Same parameters, buffers and state-dict names as ``Conv2d`` (the norm stays a submodule and
    keeps its buffers); gradients reach ``W`` through the product. Saves one elementwise pass over
    the output (and its backward) per conv. Other norms run as in ``Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if not isinstance(norm, FrozenBatchNorm2d):
            return super().forward(x)
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.reshape(-1, *([1] * (self.weight.dim() - 1)))
        bias = shift if self.bias is None else self.bias * scale + shift
        x = self._conv_forward(x, weight, bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fuse_frozen_bn_into_convs(model: nn.Module) -> int:
    """Make every ``Conv2d`` with a ``FrozenBatchNorm2d`` norm a :class:`FrozenBNConv2d`, in place
    (the objects stay, only their class changes). Returns how many were changed."""
    changed = 0
    for m in model.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FrozenBNConv2d
            changed += 1
    return changed


# ------------------------------------------------------------------------ entry points
def _to_channels_last(model: nn.Module) -> None:
    """4-d parameters and buffers to channels_last, in place (same Parameter objects); modules
    with a boolean ``channels_last`` flag (``ResNet``) convert their input too."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.dim() == 4:
                setattr(module, name, b.contiguous(memory_format=torch.channels_last))
        if isinstance(getattr(module, "channels_last", None), bool) and not isinstance(
            module, SubsampledROIPooler
        ):
            module.channels_last = True


def _roi_heads(model: nn.Module) -> Optional[nn.Module]:
    return getattr(model, "roi_heads", None)


def optimize_folding_state_dict(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    subsample_roi_pooling: bool = True,
    res5_chunk_size: Optional[int] = RES5_CHUNK_SIZE,
    project_res5_input: bool = True,
    winograd: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """An eval-mode detector computing ``model``'s detections with less work, its BN folded into
    the convs (module docstring). Load the weights first: the state dict changes.

    Args:
        model: a built detector (``GeneralizedRCNN``), weights loaded.
        fold_bn: fold every FrozenBN / BatchNorm into its conv (the state dict changes: convs gain
            a bias, norms disappear -- load weights *before* optimizing).
        channels_last: convolution weights and activations in channels_last layout.
        subsample_roi_pooling: pool only the RoI bins res5 reads
            (:func:`subsample_res5_roi_pooling`).
        res5_chunk_size: run res5 over this many RoIs at a time (:class:`PooledRes5`; None or 0:
            all at once).
        project_res5_input: apply res5's first 1x1 convs to the feature map before pooling
            (:func:`project_res5_input_before_pooling`; needs ``fold_bn`` and
            ``subsample_roi_pooling``).
        winograd: res5's 3x3 convs by Winograd's algorithm at CPU float32 inference
            (:mod:`~resnet_backbones.modeling.winograd`; needs ``fold_bn``).
        inplace: transform ``model`` itself instead of a deep copy.

    fp32 detections equal the unoptimized model's up to float rounding (boxes and scores within
    ~1e-5 relative on R50-C4); under autocast the same switches apply.
    """
    from .fuse import fold_batch_norm

    if res5_chunk_size is not None and res5_chunk_size < 0:
        raise ValueError(
            f"res5_chunk_size: expected a positive number of RoIs or None, got {res5_chunk_size}"
        )
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if fold_bn:
        fold_batch_norm(model, inplace=True)
    roi_heads = _roi_heads(model)
    if subsample_roi_pooling and roi_heads is not None:
        subsample_res5_roi_pooling(roi_heads, channels_last=channels_last)
        if project_res5_input:
            project_res5_input_before_pooling(roi_heads)
    _pool_inside_res5(roi_heads, chunk_size=res5_chunk_size or None)
    if channels_last:
        _to_channels_last(model)
    if winograd and isinstance(getattr(roi_heads, "res5", None), nn.Module):
        use_winograd_convs(roi_heads.res5)
    return model


def optimize_keeping_state_dict(
    model: nn.Module,
    *,
    fuse_frozen_bn: bool = True,
    channels_last: bool = True,
    subsample_roi_pooling: bool = True,
) -> nn.Module:
    """Transform ``model`` in place for faster training steps (and evaluations); returns it.

    Parameters stay the same objects with the same values (an optimizer built before or after
    works alike), and the state dict keeps its names and shapes, so checkpoints load both ways
    (including into detectron2). Losses and gradients equal the unoptimized model's up to float
    rounding.

    Args:
        fuse_frozen_bn: FrozenBN applied through the conv weight (:class:`FrozenBNConv2d`).
        channels_last: conv weights (and their gradients) and activations in channels_last layout.
        subsample_roi_pooling: pool only the RoI bins res5 reads
            (:func:`subsample_res5_roi_pooling`).
    """
    if fuse_frozen_bn:
        fuse_frozen_bn_into_convs(model)
    roi_heads = _roi_heads(model)
    if subsample_roi_pooling and roi_heads is not None:
        subsample_res5_roi_pooling(roi_heads, channels_last=channels_last)
    if channels_last:
        _pool_inside_res5(roi_heads, chunk_size=RES5_CHUNK_SIZE)  # chunks in evaluation only
        _to_channels_last(model)
    return model


# the former names (PR history, user code)
optimize_detector_for_inference = optimize_folding_state_dict
optimize_detector_for_training = optimize_keeping_state_dict

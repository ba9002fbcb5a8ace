"""Winograd convolution for the 3x3 convolutions of the res5 head, at CPU float32 inference.

A C4 detector runs res5 on every proposal (1000 per test image), and half of res5's FLOPs are its
three 3x3 convolutions on 7x7 maps. oneDNN computes them directly (9 multiply-adds per output and
input channel pair at each of the 49 positions: 441) at about the CPU's float32 matmul rate, so
the only way to be faster in float32 is fewer multiplications. Winograd's minimal filtering
algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016) computes
``m`` outputs of a 3-tap correlation from ``m + 2`` transformed points: a 7-wide row as one
F(4, 3) tile and one F(3, 3) tile takes 6 + 5 = 11 points, so a 7x7 map takes 11 x 11 = 121
products per channel pair instead of 441. In matrix form, for input ``x`` (N, C, H, W) and weight
``w`` (K, C, 3, 3)::

    V = T_in @ x         (N, P, C)   input transform, the zero padding folded in
    M[p] = V[:, p] @ U[p]  (P, N, K)   P independent (C x K) matrix products, U = G w G^T
    y = T_out @ M        (N, H*W, K) output transform

``T_in`` (P x H*W) and ``T_out`` (H*W x P) are Kronecker products of the 1-D tile transforms,
dense and small; every step is a batched matrix product at the CPU's matmul rate. On res5
(C = K = 512, 7x7) that is 3.1x fewer multiply-adds than the direct convolution, transforms
included. The transforms are exact in real arithmetic; in float32 the outputs differ from the
direct convolution by rounding (~1e-5 of the output's range, the tile points 0, +-1, +-2 keep the
transforms small).

Used only where it pays and is safe: :class:`WinogradConv2d` takes this route for CPU float32
inputs of at most :data:`MAX_SIZE` x :data:`MAX_SIZE` without autograd or autocast (the res5 head
at inference), and runs the ordinary convolution otherwise (training, bfloat16 autocast, where AMX
/ oneDNN's low-precision kernels are faster and Winograd would lose precision, CUDA, tracing).
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from ..layers import Conv2d

__all__ = ["MAX_SIZE", "WinogradConv2d", "use_winograd_convs", "winograd_conv3x3"]

#: Largest input height / width taken through the Winograd route. The dense transforms grow with
#: the square of the map (their cost passes the main products' above ~10x10); res5 maps are 7x7.
MAX_SIZE = 8

# Interpolation points of each 1-D tile F(m, 3) (plus the point at infinity): small integers keep
# the transform entries small and the float32 rounding at the direct convolution's level.
_POINTS = {1: (0, 1), 2: (0, 1, -1), 3: (0, 1, -1, 2), 4: (0, 1, -1, 2, -2)}


def _toom_cook(m: int, r: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Winograd F(m, r): ``A^T`` (m x n), ``G`` (n x r), ``B^T`` (n x n), n = m + r - 1, with
    ``y = A^T [(G g) * (B^T d)]`` the correlation ``y_i = sum_k g_k d_{i+k}`` (float64)."""
    n = m + r - 1
    points = [float(p) for p in _POINTS[m]]
    a_t, g = np.zeros((m, n)), np.zeros((n, r))
    for j, a in enumerate(points):
        a_t[:, j] = [a**i for i in range(m)]
        scale = np.prod([a - b for k, b in enumerate(points) if k != j])
        g[j] = [a**i / scale for i in range(r)]
    a_t[m - 1, n - 1] = g[n - 1, r - 1] = 1.0  # the point at infinity
    # B^T is what makes the identity hold for every d and g: one linear system per column.
    system = np.stack([a_t[i] * g[:, k] for i in range(m) for k in range(r)])
    target = np.array([[float(c == i + k) for c in range(n)] for i in range(m) for k in range(r)])
    b_t = np.linalg.lstsq(system, target, rcond=None)[0]
    if not np.allclose(system @ b_t, target):
        raise AssertionError(f"no Winograd F({m}, {r}) transform for points {points}")
    return a_t, g, b_t


def _tiles(length: int) -> List[int]:
    """Split ``length`` outputs into as few tiles of at most 4 as possible, evenly (7 -> 4 + 3)."""
    count = -(-length // 4)
    return [length // count + (i < length % count) for i in range(count)]


@functools.lru_cache(maxsize=None)
def _plan_1d(length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense 1-D transforms of a 3-tap 'same' correlation (zero padding 1) of ``length`` points:
    ``T_in`` (P x length, the padding folded in), ``G`` (P x 3), ``T_out`` (length x P)."""
    tiles = _tiles(length)
    points = sum(m + 2 for m in tiles)
    t_in, g_all = np.zeros((points, length)), np.zeros((points, 3))
    t_out = np.zeros((length, points))
    p0 = o0 = 0
    for m in tiles:
        a_t, g, b_t = _toom_cook(m, 3)
        n = m + 2
        for src in range(n):  # tile input src reads padded position o0 + src, i.e. x[o0 + src - 1]
            if 0 <= o0 + src - 1 < length:
                t_in[p0 : p0 + n, o0 + src - 1] += b_t[:, src]
        g_all[p0 : p0 + n] = g
        t_out[o0 : o0 + m, p0 : p0 + n] = a_t
        p0, o0 = p0 + n, o0 + m
    return t_in, g_all, t_out


@functools.lru_cache(maxsize=None)
def _plan_2d(height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """float32 ``T_in`` (P x H*W) and ``T_out`` (H*W x P) of an H x W map (cached per size)."""
    (tin_h, _, tout_h), (tin_w, _, tout_w) = _plan_1d(height), _plan_1d(width)
    t_in = torch.from_numpy(np.kron(tin_h, tin_w)).float()
    t_out = torch.from_numpy(np.kron(tout_h, tout_w)).float()
    return t_in, t_out


def transform_weight(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``U = G w G^T`` for every transformed point: (P, C, K) float32 from a (K, C, 3, 3) weight,
    computed in float64 and rounded once."""
    g_h = torch.from_numpy(_plan_1d(height)[1])
    g_w = torch.from_numpy(_plan_1d(width)[1])
    k, c = weight.shape[:2]
    w = weight.detach().cpu().permute(2, 3, 1, 0).double()  # (i, j, C, K)
    rows = torch.matmul(g_h, w.reshape(3, -1)).view(-1, 3, c * k)  # (p, j, C*K)
    return torch.matmul(g_w, rows).reshape(-1, c, k).float()  # (p, q, C*K) -> (P, C, K)


def winograd_conv3x3(
    x: torch.Tensor, transformed_weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for a 3x3 ``w`` given as ``transform_weight(w, H, W)``;
    ``x`` (N, C, H, W) float32, best in channels_last layout. Returns a channels_last tensor."""
    n, c, h, w = x.shape
    t_in, t_out = _plan_2d(h, w)
    k = transformed_weight.shape[-1]
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view for channels_last x
    v = torch.matmul(t_in, rows)  # (N, P, C)
    m = torch.matmul(v.transpose(0, 1), transformed_weight)  # (P, N, K)
    y = torch.matmul(t_out, m.transpose(0, 1))  # (N, H*W, K)
    if bias is not None:
        y += bias
    return y.view(n, h, w, k).permute(0, 3, 1, 2)


class WinogradConv2d(Conv2d):
    """A 3x3, stride 1, padding 1 :class:`~resnet_backbones.layers.Conv2d` (BN folded: no norm)
    computed by :func:`winograd_conv3x3` at CPU float32 inference on maps of at most
    :data:`MAX_SIZE`, by the ordinary convolution otherwise.

    Same parameters and state dict as the ``Conv2d`` it was (only the class changes). The
    transformed weight (P x C x K floats: 127 MB for 512 channels at 7x7) is kept per map size and
    computed again when the weight changes (its version counter or storage).
    """

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        return (
            x.dim() == 4
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and 0 < x.shape[0]
            and x.shape[-2] <= MAX_SIZE
            and x.shape[-1] <= MAX_SIZE
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing()
        )

    def _transformed(self, height: int, width: int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_winograd_cache", {})
        key = (self.weight._version, self.weight.data_ptr())
        entry = cache.get((height, width))
        if entry is None or entry[0] != key:
            entry = (key, transform_weight(self.weight, height, width))
            cache[(height, width)] = entry
        return entry[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None or not self._winograd_applies(x):
            return super().forward(x)
        y = winograd_conv3x3(x, self._transformed(x.shape[-2], x.shape[-1]), self.bias)
        if self.activation is not None:
            y = self.activation(y)
        return y


def _is_plain_3x3(module: nn.Module) -> bool:
    return (
        type(module) is Conv2d
        and module.norm is None
        and tuple(module.kernel_size) == (3, 3)
        and tuple(module.stride) == (1, 1)
        and tuple(module.padding) == (1, 1)
        and tuple(module.dilation) == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def use_winograd_convs(module: nn.Module) -> int:
    """Make every norm-free 3x3, stride-1, padding-1, ungrouped ``Conv2d`` inside ``module`` a
    :class:`WinogradConv2d`, in place (only the class changes). Returns how many changed.

    Meant for the res5 head of a folded (BN-free) detector at inference, whose maps are 7x7; a
    strided or grouped 3x3 (``STRIDE_IN_1X1=False``'s first block, ResNeXt) keeps its class."""
    changed = 0
    for m in module.modules():
        if _is_plain_3x3(m):
            m.__class__ = WinogradConv2d
            changed += 1
    return changed

"""Winograd convolution (``modeling/winograd.py``): the res5 head's 3x3 convs at CPU float32
inference.

* ``winograd_conv3x3`` equals a float64 ``conv2d`` for every map size it takes (1x1 to 8x8,
  non-square too), NCHW or channels_last input, with and without bias (2e-5 of the output range;
  measured ~4e-6, the direct float32 convolution ~3e-7).
* ``WinogradConv2d`` takes that route only for CPU float32 inputs of at most ``MAX_SIZE`` without
  autograd, autocast or tracing, and otherwise is the plain convolution (same outputs, gradients
  flow); a changed weight (``load_state_dict``) is transformed again.
* ``use_winograd_convs`` converts exactly the norm-free, stride-1, padding-1, ungrouped 3x3 convs.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from resnet_backbones.layers import Conv2d, FrozenBatchNorm2d
from resnet_backbones.modeling import winograd
from resnet_backbones.modeling.winograd import (
    MAX_SIZE,
    WinogradConv2d,
    transform_weight,
    use_winograd_convs,
    winograd_conv3x3,
)


def rel_to_reference(y, x, w, b):
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("size", [(h, h) for h in range(1, MAX_SIZE + 1)] + [(5, 8), (7, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_winograd_conv3x3_equals_conv2d(size, channels_last):
    torch.manual_seed(sum(size))
    c, k = 24, 40
    x = torch.randn(3, c, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(k, c, 3, 3) / (9 * c) ** 0.5
    b = torch.randn(k)
    for bias in (b, None):
        y = winograd_conv3x3(x, transform_weight(w, *size), bias)
        assert y.shape == (3, k, *size) and y.dtype == torch.float32
        assert rel_to_reference(y, x, w, bias) <= 2e-5


def test_winograd_conv3x3_at_res5_width():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 512, 7, 7)).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3) / (9 * 512) ** 0.5
    y = winograd_conv3x3(x, transform_weight(w, 7, 7))
    assert rel_to_reference(y, x, w, None) <= 2e-5


def _conv(c=16, k=12, **kwargs):
    torch.manual_seed(1)
    conv = Conv2d(c, k, kernel_size=3, padding=1, bias=True, **kwargs).eval()
    return conv


def _count_winograd_calls(monkeypatch):
    calls = []
    real = winograd.winograd_conv3x3

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(winograd, "winograd_conv3x3", counting)
    return calls


def test_winograd_conv_route_only_at_cpu_float32_inference(monkeypatch):
    calls = _count_winograd_calls(monkeypatch)
    plain = _conv(activation=torch.relu)
    fast = copy.deepcopy(plain)
    assert use_winograd_convs(fast) == 1 and type(fast) is WinogradConv2d
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(5, 16, 7, 7)
    with torch.no_grad():
        y = fast(x)
        assert len(calls) == 1
        assert ((y - plain(x)).abs().max() / plain(x).abs().max()).item() <= 2e-5
        assert y.min() >= 0  # the activation is applied
        # the plain convolution: larger maps, float64, autocast
        big = torch.randn(2, 16, MAX_SIZE + 1, MAX_SIZE)
        assert torch.equal(fast(big), plain(big))
        fast64, plain64 = copy.deepcopy(fast).double(), copy.deepcopy(plain).double()
        assert torch.equal(fast64(x.double()), plain64(x.double()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(fast(x), plain(x))
        assert fast(x[:0]).shape == (0, 12, 7, 7)
    assert len(calls) == 1
    # with autograd: the plain convolution, and gradients reach the weight
    xg = x.clone().requires_grad_()
    fast(xg).sum().backward()
    assert len(calls) == 1 and fast.weight.grad is not None and xg.grad is not None


def test_winograd_conv_transforms_a_changed_weight_again():
    fast = _conv()
    use_winograd_convs(fast)
    x = torch.randn(2, 16, 7, 7)
    with torch.no_grad():
        fast(x)
        other = _conv()
        other.weight.mul_(-2.0)
        other.bias.add_(1.0)
        fast.load_state_dict(other.state_dict())
        y = fast(x)
        assert ((y - other(x)).abs().max() / other(x).abs().max()).item() <= 2e-5


def test_use_winograd_convs_converts_only_plain_3x3():
    convs = torch.nn.ModuleDict(
        {
            "plain": Conv2d(8, 8, 3, padding=1),
            "strided": Conv2d(8, 8, 3, stride=2, padding=1),
            "grouped": Conv2d(8, 8, 3, padding=1, groups=2),
            "dilated": Conv2d(8, 8, 3, padding=2, dilation=2),
            "with_norm": Conv2d(8, 8, 3, padding=1, norm=FrozenBatchNorm2d(8)),
            "one_by_one": Conv2d(8, 8, 1),
            "torch_conv": torch.nn.Conv2d(8, 8, 3, padding=1),
        }
    )
    assert use_winograd_convs(convs) == 1
    assert [name for name, m in convs.items() if type(m) is WinogradConv2d] == ["plain"]

"""Optimizer parameter groups, gradient clipping, LR schedules and world-size scaling (detectron2
semantics)."""

import logging
import math

import pytest
import torch
from torch import nn

from resnet_backbones.config import get_cfg
from resnet_backbones.solver import (
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    auto_scale_workers,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    get_warmup_factor_at_iter,
    maybe_add_gradient_clipping,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.shared = self.fc  # the same parameters twice


def _group_of(groups, param):
    found = [g for g in groups if any(p is param for p in g["params"])]
    assert len(found) == 1, "every trainable parameter is in exactly one group"
    return found[0]


def test_param_groups_norm_bias_and_frozen():
    net = Net()
    groups = get_default_optimizer_params(
        net,
        base_lr=0.1,
        weight_decay=1e-4,
        weight_decay_norm=0.0,
        bias_lr_factor=2.0,
        weight_decay_bias=1e-5,
    )
    # conv/fc weights: defaults
    for p in (net.conv.weight, net.fc.weight):
        g = _group_of(groups, p)
        assert g["lr"] == 0.1 and g["weight_decay"] == 1e-4
    # norm weights: WEIGHT_DECAY_NORM
    for p in (net.bn.weight, net.gn.weight):
        g = _group_of(groups, p)
        assert g["lr"] == 0.1 and g["weight_decay"] == 0.0
    # every bias (norm biases included): BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS win
    for p in (net.conv.bias, net.fc.bias, net.bn.bias, net.gn.bias):
        g = _group_of(groups, p)
        assert g["lr"] == pytest.approx(0.2) and g["weight_decay"] == 1e-5
    params = [p for g in groups for p in g["params"]]
    assert all(p is not net.frozen.weight and p is not net.frozen.bias for p in params)
    assert len(params) == len({id(p) for p in params}) == 8
    # identical hyper-parameters are merged: 3 groups
    assert len(groups) == 3


def test_param_groups_bias_follows_weight_decay_when_unset():
    net = Net()
    groups = get_default_optimizer_params(
        net, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0
    )
    assert _group_of(groups, net.conv.bias)["weight_decay"] == 1e-4
    assert _group_of(groups, net.bn.bias)["weight_decay"] == 0.0  # norm rule, no bias override
    assert _group_of(groups, net.conv.bias)["lr"] == 0.1


def test_build_optimizer_sgd_from_config():
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.NESTEROV = 0.05, 0.8, True
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM, cfg.SOLVER.BIAS_LR_FACTOR = (
        1e-3,
        0.0,
        2.0,
    )
    opt = build_optimizer(cfg, Net())
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in opt.param_groups)
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.05, 0.1]


def _grads(net, values):
    for p, v in zip(net.parameters(), values):
        p.grad = torch.full_like(p, v)


@pytest.mark.parametrize("clip_type", ["value", "norm", "full_model"])
def test_gradient_clipping(clip_type):
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 1, bias=False))
    sgd = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
    assert issubclass(sgd, torch.optim.SGD) and sgd is not torch.optim.SGD
    opt = sgd(net.parameters(), lr=1.0)
    before = [p.detach().clone() for p in net.parameters()]
    _grads(net, [3.0, -0.1])
    opt.step()
    steps = [
        (b - p.detach()) for b, p in zip(before, net.parameters())
    ]  # = clipped grads (lr 1, no momentum)
    if clip_type == "value":
        assert torch.allclose(steps[0], torch.full((4, 4), 1.0)) and torch.allclose(
            steps[1], torch.full((1, 4), -0.1)
        )
    elif clip_type == "norm":  # each parameter on its own
        assert steps[0].norm().item() == pytest.approx(1.0, rel=1e-5)
        assert torch.allclose(steps[1], torch.full((1, 4), -0.1))
    else:  # all parameters together
        total = math.sqrt(16 * 9 + 4 * 0.01)
        assert math.sqrt(sum(float(s.norm() ** 2) for s in steps)) == pytest.approx(1.0, rel=1e-5)
        assert torch.allclose(steps[1], torch.full((1, 4), -0.1 / total), rtol=1e-4)


def test_no_clipping_by_default():
    assert maybe_add_gradient_clipping(get_cfg(), torch.optim.SGD) is torch.optim.SGD


def _lrs(cfg, n=None):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    assert isinstance(sched, LRMultiplier)
    out = []
    for _ in range(n or cfg.SOLVER.MAX_ITER):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _solver_cfg(**kw):
    cfg = get_cfg()
    s = cfg.SOLVER
    s.BASE_LR, s.MAX_ITER, s.STEPS, s.GAMMA = 0.1, 20, (10, 15), 0.1
    s.WARMUP_ITERS, s.WARMUP_FACTOR, s.WARMUP_METHOD = 5, 0.001, "linear"
    for k, v in kw.items():
        setattr(s, k, v)
    return cfg


def test_warmup_multistep_matches_detectron2_formula():
    cfg = _solver_cfg()
    lrs = _lrs(cfg)
    for i, lr in enumerate(lrs):
        warm = get_warmup_factor_at_iter("linear", i, 5, 0.001)
        expected = 0.1 * warm * 0.1 ** sum(i >= s for s in (10, 15))
        assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), i
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[5:10] == pytest.approx([0.1] * 5)
    assert lrs[10] == pytest.approx(0.01) and lrs[15] == pytest.approx(0.001)


def test_constant_warmup():
    lrs = _lrs(_solver_cfg(WARMUP_METHOD="constant"))
    assert lrs[:5] == pytest.approx([1e-4] * 5)
    assert lrs[5] == pytest.approx(0.1)


def test_warmup_cosine_after_warmup_and_end_value():
    cfg = _solver_cfg(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR_END=0.0)
    lrs = _lrs(cfg)
    for i in range(5, 20):
        assert lrs[i] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * i / 20)), rel=1e-9)
    assert lrs[0] == pytest.approx(1e-4)
    cfg = _solver_cfg(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR_END=0.01, WARMUP_ITERS=0)
    lrs = _lrs(cfg)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_steps_beyond_max_iter_are_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="resnet_backbones.solver.build"):
        lrs = _lrs(_solver_cfg(STEPS=(10, 25), WARMUP_ITERS=0))
    warnings = [r.getMessage() for r in caplog.records if r.name == "resnet_backbones.solver.build"]
    assert warnings == ["SOLVER.STEPS [10, 25] has values >= SOLVER.MAX_ITER 20; they are ignored"]
    assert lrs[19] == pytest.approx(0.01)


def test_bad_scheduler_settings():
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        _lrs(_solver_cfg(LR_SCHEDULER_NAME="Nope"))
    with pytest.raises(ValueError, match="warmup method"):
        _lrs(_solver_cfg(WARMUP_METHOD="exp"))
    with pytest.raises(ValueError, match="STEPS"):
        _lrs(_solver_cfg(STEPS=(15, 10)))


def test_scheduler_state_resumes_the_same_sequence():
    cfg = _solver_cfg()
    full = _lrs(cfg)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(7):
        opt.step()
        sched.step()
    state, opt_state = sched.state_dict(), opt.state_dict()
    assert set(state) == {"base_lrs", "last_epoch"}  # nothing that needs pickling of code
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_lr_scheduler(cfg, opt2)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state)
    rest = []
    for _ in range(7, 20):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(full[7:], rel=1e-12)


def test_bias_group_follows_the_schedule():
    cfg = _solver_cfg(BIAS_LR_FACTOR=2.0, WARMUP_ITERS=0)
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(12):
        opt.step()
        sched.step()
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.01, 0.02])


def test_legacy_scheduler_classes():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = WarmupMultiStepLR(opt, milestones=[3, 6], gamma=0.5, warmup_factor=0.1, warmup_iters=2)
    got = []
    for _ in range(8):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert got == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25])
    opt = torch.optim.SGD([p], lr=1.0)
    c = WarmupCosineLR(opt, max_iters=10, warmup_factor=0.1, warmup_iters=0)
    got = []
    for _ in range(10):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        c.step()
    assert got == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)])


def test_auto_scale_workers():
    cfg = get_cfg()
    s = cfg.SOLVER
    s.REFERENCE_WORLD_SIZE, s.IMS_PER_BATCH, s.BASE_LR = 8, 16, 0.02
    s.MAX_ITER, s.WARMUP_ITERS, s.STEPS, s.CHECKPOINT_PERIOD = 90000, 1000, (60000, 80000), 5000
    cfg.TEST.EVAL_PERIOD = 10000
    cfg.freeze()
    assert auto_scale_workers(cfg, 8) is cfg
    new = auto_scale_workers(cfg, 4)
    assert new.is_frozen() and cfg.SOLVER.IMS_PER_BATCH == 16  # the input is not changed
    assert new.SOLVER.IMS_PER_BATCH == 8 and new.SOLVER.BASE_LR == pytest.approx(0.01)
    assert new.SOLVER.MAX_ITER == 180000 and new.SOLVER.WARMUP_ITERS == 2000
    assert tuple(new.SOLVER.STEPS) == (120000, 160000)
    assert new.SOLVER.CHECKPOINT_PERIOD == 10000 and new.TEST.EVAL_PERIOD == 20000
    assert new.SOLVER.REFERENCE_WORLD_SIZE == 4
    default = get_cfg()
    assert auto_scale_workers(default, 3) is default  # REFERENCE_WORLD_SIZE 0: off
    bad = get_cfg()
    bad.SOLVER.REFERENCE_WORLD_SIZE, bad.SOLVER.IMS_PER_BATCH = 4, 6
    with pytest.raises(ValueError, match="split evenly"):
        auto_scale_workers(bad, 2)  # 3 images for 2 workers

"""FLOPs / parameter counts (resnet_backbones.utils.flops, tools/analyze_model.py) against the
papers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from torch import nn

from resnet_backbones.modeling.backbone import create_model
from resnet_backbones.utils.flops import (
    PAPER_GFLOPS,
    PAPER_PARAMS_M,
    analyze_model,
    count_flops,
    count_params,
    format_stats,
    input_shape_for,
)

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "analyze_model_tool", ROOT / "tools" / "analyze_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(PAPER_GFLOPS))
def test_paper_table1_flops(name):
    """He et al. 2016 Table 1 (multiply-adds at 224x224, stride in the 1x1) within 3%."""
    stats = analyze_model(create_model(name, stride_in_1x1=True), 224)
    paper = PAPER_GFLOPS[name]
    assert abs(stats.gflops - paper) / paper < 0.03, (name, stats.gflops, paper)
    # the per-stage rows add up to the total, and the stages are where the work is
    rows = {row[0]: row for row in stats.rows}
    assert list(rows)[:6] == ["stem", "res2", "res3", "res4", "res5", "avgpool"]
    assert sum(f for _, _, f in stats.rows) == stats.total_flops
    assert sum(p for _, p, _ in stats.rows) == stats.total_params
    assert (
        rows["linear"][2] == rows["linear"][1] - 1000
    )  # one multiply-add per weight (not per bias)
    assert stats.flops_by_operator["conv"] > 0.99 * stats.total_flops


def test_flop_unit_is_one_multiply_add():
    conv = nn.Conv2d(8, 16, kernel_size=3, padding=1, bias=False)
    assert count_flops(conv, 10, in_channels=8) == 3 * 3 * 8 * 16 * 10 * 10
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    assert count_flops(linear, 4) == 48 * 5


def test_stride_in_3x3_costs_more_and_basic_blocks_do_not_care():
    v15 = count_flops(create_model("resnet50"), 224)  # torchvision layout (create_model's default)
    assert 4.05e9 < v15 < 4.15e9  # torchvision documents 4.09 GFLOPS (convs + fc)
    # basic blocks have no 1x1 convs: the flag changes nothing
    small = [
        count_flops(create_model("resnet20_cifar", stride_in_1x1=s), 32) for s in (False, True)
    ]
    assert small[0] == small[1]


def test_cifar_counts():
    model = create_model("resnet20_cifar")
    stats = analyze_model(model, 32)
    assert 40e6 < stats.total_flops < 42e6  # ~41M multiply-adds, the commonly quoted number
    assert abs(stats.params_m - PAPER_PARAMS_M["resnet20_cifar"]) < 0.01  # CVPR 2016 Table 6: 0.27M
    assert [r[0] for r in stats.rows] == ["stem", "res2", "res3", "res4", "avgpool", "linear"]
    assert stats.total_params == count_params(model)
    assert model.training  # analyze_model restores the training mode


def test_params_only_and_format():
    stats = analyze_model(create_model("resnet18"), 224, tasks=("params",))
    assert stats.total_flops is None and all(f is None for _, _, f in stats.rows)
    assert stats.total_params == 11_689_512  # torchvision's resnet18
    text = format_stats(stats)
    assert "| res5 |" in text and "GFLOPs" not in text
    with pytest.raises(ValueError, match="unknown tasks"):
        analyze_model(create_model("resnet18"), tasks=("latency",))
    assert input_shape_for((600, 800), batch_size=2) == (2, 3, 600, 800)
    with pytest.raises(ValueError):
        input_shape_for((1, 2, 3))


def test_analyze_model_tool(capsys, tmp_path):
    tool = _load_tool()
    assert (
        tool.main(["--model", "resnet20_cifar", "--input-size", "32", "--tasks", "flops", "params"])
        == 0
    )
    out = capsys.readouterr().out
    assert "| res4 |" in out and "| **total** | 269,722 |" in out and "multiply-add" in out

    cfg = tmp_path / "r18.yaml"
    cfg.write_text("MODEL:\n  RESNETS:\n    DEPTH: 18\n    RES2_OUT_CHANNELS: 64\n")
    assert tool.main(["--config-file", str(cfg), "--tasks", "params"]) == 0
    out = capsys.readouterr().out
    assert "ResNet-18" in out and "| res4 |" in out and "| res5 |" not in out  # a C4 backbone

    assert tool.main(["--model", "resnet5", "--tasks", "params"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet5'; did you mean 'resnet50', " in err  # the closest name first

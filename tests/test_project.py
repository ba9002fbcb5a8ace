"""Packaging and the README's promises: what a user gets from a fresh clone."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_distribution():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "resnet-backbones"
    assert meta["requires-python"] == ">=3.10"
    deps = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in meta["dependencies"]}
    assert {"torch", "torchvision", "fvcore", "pycocotools", "opencv-python-headless"} <= deps
    dev = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in meta["optional-dependencies"]["dev"]}
    assert "pytest" in dev


def test_constraints_pin_a_working_torch_torchvision_pair():
    pins = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert pins == {"torch": "2.14.1", "torchvision": "0.29.1"}


def _quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert commands == ["./run demo", "./run test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\./run test$", ci, re.M), (
        ".ci/run must call exactly the README's test command"
    )


@pytest.mark.parametrize("pytest_rc, ci_rc", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_ci_fails_when_pytest_collects_nothing(tmp_path, pytest_rc, ci_rc):
    """.ci/run passes ./run test's exit status through, except pytest's 5 ("no tests collected"),
    which fails CI with a message: a suite that collects nothing tests nothing."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    stub = tmp_path / "run"  # stands in for ./run: records its arguments, exits with pytest's code
    stub.write_text(f'#!/usr/bin/env bash\necho "$@" > called\nexit {pytest_rc}\n')
    stub.chmod(0o755)
    result = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, cwd="/"
    )
    assert result.returncode == ci_rc, result.stderr
    assert (tmp_path / "called").read_text() == "test\n"  # from the repository root
    assert ("collected no tests" in result.stderr) == (pytest_rc == 5)


def test_run_script_rejects_unknown_commands():
    result = subprocess.run([str(REPO / "run"), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_installed_package_imports_under_its_name():
    import resnet_backbones

    assert resnet_backbones.__version__
    for name in (
        "get_cfg",
        "list_models",
        "create_model",
        "build_model",
        "DatasetCatalog",
        "MetadataCatalog",
    ):
        assert hasattr(resnet_backbones, name), name


def test_demo_generates_and_summarises_the_shapes_data(tmp_path):
    """./run demo's pipeline end to end on a few images (--smoke): data, pre-training, both
    fine-tunings, evaluation, summary.json, detection PNGs, curves and the table."""
    import json

    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "run_demo.py"), "--output", str(tmp_path), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "detection train: 12 images" in result.stdout
    assert (tmp_path / "shapes" / "annotations" / "instances_val.json").is_file()
    assert (tmp_path / "shapes" / "classification" / "train" / "circle").is_dir()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for run in ("pretrained", "scratch"):
        assert set(summary[run]) == {"bbox", "segm"}  # the demo trains a Mask R-CNN
        for task in ("bbox", "segm"):
            assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(summary[run][task])
            assert all(v is None or 0.0 <= v <= 100.0 for v in summary[run][task].values())
        assert (tmp_path / run / "model_final.pth").is_file()
        assert (tmp_path / run / "metrics.json").is_file()
    assert (tmp_path / "pretrain" / "model_final.pth").is_file()
    assert summary["settings"]["detector_iterations"] == {"pretrained": 4, "scratch": 4}
    pngs = sorted((tmp_path / "detections").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
    assert (tmp_path / "curves.png").is_file() and (
        tmp_path / "pretrained" / "plots" / "loss.png"
    ).is_file()
    for rel in summary["outputs"]["detections"] + summary["outputs"]["plots"]:
        assert (tmp_path / rel).is_file(), rel
    assert "pretrained (shapes cls)" in result.stdout and "scratch (random init)" in result.stdout
    assert "COCO box AP on shapes_val" in result.stdout
    assert "COCO mask AP on shapes_val" in result.stdout

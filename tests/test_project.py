"""Packaging and the README's promises: what a user gets from a fresh clone."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
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
    assert re.search(r"^\./run test$", ci, re.M), ".ci/run must call exactly the README's test command"
    assert "5" in ci  # pytest's "no tests collected" exit code is handled


def test_run_script_rejects_unknown_commands():
    result = subprocess.run([str(REPO / "run"), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_installed_package_imports_under_its_name():
    import resnet_backbones

    assert resnet_backbones.__version__
    for name in ("get_cfg", "list_models", "create_model", "build_model", "DatasetCatalog", "MetadataCatalog"):
        assert hasattr(resnet_backbones, name), name


def test_demo_generates_and_summarises_the_shapes_data(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "run_demo.py"), "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "detection train: 400 images" in result.stdout
    assert (tmp_path / "shapes" / "annotations" / "instances_val.json").is_file()

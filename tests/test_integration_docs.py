"""docs/integrations.md: its code blocks are the files of docs/snippets/, and every snippet runs.

A block is marked ``<!-- snippet: docs/snippets/NAME.py -->`` and must equal that file exactly.
The detectron2 snippets run in tests/test_integration_detectron2.py (they need detectron2).
"""

from __future__ import annotations

import difflib
import os
import re
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "integrations.md"
SNIPPETS = ROOT / "docs" / "snippets"
MARKED_BLOCK = re.compile(r"<!-- snippet: (docs/snippets/[\w.-]+) -->\n```python\n(.*?)```\n", re.S)
RUN_WITH_DETECTRON2 = {
    "detectron2_backbone.py": "test_docs_snippet_detectron2_backbone",
    "detectron2_train_shapes.py": "test_default_trainer_and_coco_evaluator_on_shapes",
}


def doc_blocks():
    return {path: code for path, code in MARKED_BLOCK.findall(DOC.read_text(encoding="utf-8"))}


def test_doc_blocks_are_the_snippet_files():
    blocks = doc_blocks()
    files = sorted(f"docs/snippets/{p.name}" for p in SNIPPETS.glob("*.py"))
    assert sorted(blocks) == files, (
        "every snippet file appears once in docs/integrations.md, and only those"
    )
    for path, code in blocks.items():
        text = (ROOT / path).read_text(encoding="utf-8")
        if code != text:
            diff = "".join(
                difflib.unified_diff(code.splitlines(True), text.splitlines(True), "doc", path)
            )
            pytest.fail(
                f"the block of {path} in docs/integrations.md differs from the file:\n{diff}"
            )
    # Every ```python block of the doc is a marked snippet (no untested code).
    python_blocks = DOC.read_text(encoding="utf-8").count("```python\n")
    assert (
        python_blocks == len(blocks) + 5
    )  # + the five signature summaries, which are not programs


def test_detectron2_snippets_are_run_by_the_detectron2_tests():
    source = (ROOT / "tests" / "test_integration_detectron2.py").read_text(encoding="utf-8")
    for name, test in RUN_WITH_DETECTRON2.items():
        assert f"def {test}(" in source and name in source


@pytest.fixture
def repo_like_dir(tmp_path, monkeypatch):
    """A working directory that looks like the repository root (configs/, hubconf.py) but whose
    outputs (export/, ...) land in a temporary directory."""
    os.symlink(ROOT / "configs", tmp_path / "configs")
    os.symlink(ROOT / "hubconf.py", tmp_path / "hubconf.py")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPUs: OpenMP threads spinning against each other cost ~10x
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "name", sorted(p.name for p in SNIPPETS.glob("*.py") if p.name not in RUN_WITH_DETECTRON2)
)
def test_snippet_runs(name, repo_like_dir, capsys):
    torch.manual_seed(0)
    runpy.run_path(str(SNIPPETS / name), run_name="__main__")
    out = capsys.readouterr().out
    expected = {
        "torchvision_c4.py": "'boxes'",
        "torchvision_fpn.py": "['0', '1', '2', '3', 'pool']",
        "export.py": "model.ts",
        "hub.py": "torch.Size([1, 10]) torch.Size([1, 1024, 4, 4])",
    }[name]
    assert expected in out

"""``tools/benchmark.py detector`` runs end to end (tiny images, one inference round, the bf16
accuracy check): a smoke test of the benchmark's plumbing, not of its numbers (benchmarks are not
tests; docs/benchmarks.md has those). A training round of the full-width R50-C4 takes ~15 s even on
tiny images (512 RoIs per image), too slow for CI."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_detector_benchmark_runs_and_reports(tmp_path):
    pytest.importorskip("pycocotools")
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "tools" / "benchmark.py"), "detector", "--amp", "--variants", "ours-fast",
           "ours-fast-bf16", "--image-size", "96", "128", "--modes", "inference", "--repeats", "1", "--no-memory",
           "--amp-accuracy", "1", "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["depth"], r["mode"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(50, "inference", v) for v in ("ours-fast", "ours-fast-bf16")}
    assert all(r["median_s"] > 0 and r["ratio_to_d2"] is None for r in rows.values())
    acc = result["amp_accuracy"]["50"]
    assert acc["images"] == 1 and 0.0 <= acc["ours-fast bf16"] <= 1.0
    assert "| R50-C4 | inference (s/img) | ours-fast-bf16 |" in proc.stdout

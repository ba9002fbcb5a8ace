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


def run_benchmark(*args: str, json_out: Path):
    """``tools/benchmark.py ARGS --json JSON_OUT`` in a subprocess, which must succeed; returns
    its stdout and the JSON it wrote."""
    cmd = [sys.executable, str(REPO / "tools" / "benchmark.py"), *args, "--json", str(json_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout, json.loads(json_out.read_text())


def test_detector_benchmark_runs_and_reports(tmp_path):
    pytest.importorskip("pycocotools")
    stdout, result = run_benchmark(
        *("detector", "--amp", "--variants", "ours-fast", "ours-fast-bf16"),
        *("--image-size", "96", "128", "--modes", "inference", "--repeats", "1", "--no-memory"),
        *("--amp-accuracy", "1", "--threads", "1"),
        json_out=tmp_path / "bench.json",
    )
    rows = {(r["depth"], r["mode"], r["variant"]): r for r in result["rows"]}
    assert set(rows) == {(50, "inference", v) for v in ("ours-fast", "ours-fast-bf16")}
    assert all(r["median_s"] > 0 and r["ratio_to_d2"] is None for r in rows.values())
    acc = result["amp_accuracy"]["50"]
    assert acc["images"] == 1 and 0.0 <= acc["ours-fast bf16"] <= 1.0
    assert "| R50-C4 | inference (s/img) | ours-fast-bf16 |" in stdout


def test_detector_benchmark_predictor_mode_times_given_photos(tmp_path):
    """``--modes predictor``: the images given (two sizes) go through DefaultPredictor, each
    variant is timed on each of them and its detections are compared to the reference's."""
    import cv2
    import numpy as np

    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.jpg": (60, 80), "b.png": (72, 48)}.items():
        cv2.imwrite(str(images / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image")
    stdout, result = run_benchmark(
        *("detector", "--modes", "predictor", "--variants", "ours", "ours-fast"),
        *("--images", str(images), "--min-size-test", "64", "--max-size-test", "96"),
        # one depth, calibrated on a small image: the calibration at 600x800 took most of the time
        *("--depth", "50", "--image-size", "96", "128", "--repeats", "1", "--threads", "1"),
        json_out=tmp_path / "bench.json",
    )
    assert "a.jpg 60x80, b.png 72x48" in stdout
    assert "avx512_bf16" in stdout  # the CPU's bf16 flags are stated with the results
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"ours", "ours-fast"}
    for row in rows.values():
        assert row["mode"] == "predictor" and len(row["times_s"]) == 2  # 1 round x 2 images
        assert all(t > 0 for t in row["times_s"]) and row["ratio_to_d2"] is None
    assert "of ours's matched" in rows["ours-fast"]["agreement"]
    assert "| R50-C4 | predictor (s/img) | ours-fast |" in stdout


def test_predictor_benchmark_refuses_unreadable_images(tmp_path):
    from resnet_backbones.benchmarks.predictor import load_images

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FileNotFoundError, match="broken.jpg"):
        load_images([str(bad)])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .jpg"):
        load_images([str(empty)])


def test_data_benchmark_runs_and_reports(tmp_path):
    """``tools/benchmark.py data``: both parts run and report (the numbers are not checked: the
    speed promises of tests that used to time these live in the benchmark now)."""
    stdout, result = run_benchmark(
        *("data", "--num-images", "30", "--num-anns", "200", "--repeats", "1"),
        json_out=tmp_path / "data.json",
    )
    coco, shapes = result["coco"], result["shapes"]
    assert (coco["images"], coco["annotations"]) == (30, 200)
    assert coco["pycocotools_s"] > 0 and coco["ours_s"] > 0 and isinstance(coco["kept"], bool)
    assert coco["ratio"] > 0
    assert shapes["num_train"] == 300 and shapes["seconds"] > 0
    assert f"load_coco_json        : {coco['ours_s']:.2f} s" in stdout


def test_detector_benchmark_mask_rcnn_inference(tmp_path):
    """``--mask``: Mask R-CNN C4 in every variant, the mask IoU of matched detections in the
    agreement column (here against itself: the only variant is the reference)."""
    stdout, result = run_benchmark(
        *("detector", "--mask", "--depth", "50", "--variants", "ours-fast"),
        *("--image-size", "160", "224", "--modes", "inference", "--repeats", "1", "--no-memory"),
        *("--threads", "1"),
        json_out=tmp_path / "bench.json",
    )
    (row,) = result["rows"]
    assert row["mask"] and row["variant"] == "ours-fast" and row["median_s"] > 0
    assert "mask IoU mean 1.0000 min 1.0000 (" in row["agreement"]
    compared = int(row["agreement"].rsplit("(", 1)[1].rstrip(")"))
    assert compared > 0
    assert "| Mask R-CNN R50-C4 | inference (s/img) | ours-fast |" in stdout


def test_detector_benchmark_ground_truth_masks():
    """The training step's ground-truth masks: the octagon inscribed in each box (7/9 of its
    area), as PolygonMasks of the library's structures."""
    import torch

    from resnet_backbones.benchmarks.detector import batch_inputs, octagon_in_box
    from resnet_backbones.structures import PolygonMasks

    scene = {
        "image": torch.zeros(3, 60, 80),
        "boxes": torch.tensor([[10.0, 5.0, 40.0, 50.0], [0.0, 0.0, 9.0, 9.0]]),
        "classes": torch.tensor([1, 2]),
    }
    (plain,) = batch_inputs([scene], with_gt=True, d2=False)
    assert not plain["instances"].has("gt_masks")
    (d,) = batch_inputs([scene], with_gt=True, d2=False, mask=True)
    masks = d["instances"].gt_masks
    assert isinstance(masks, PolygonMasks) and len(masks) == 2
    areas = masks.area().float()
    box_areas = torch.tensor([30.0 * 45.0, 81.0])
    assert torch.allclose(areas, box_areas * 7 / 9, rtol=1e-4)
    (poly,) = octagon_in_box([0.0, 0.0, 9.0, 9.0])
    assert poly.shape == (16,) and poly.min() >= 0 and poly.max() <= 9


def test_tta_benchmark_times_plain_and_tta_predictors(tmp_path):
    """``tools/benchmark.py tta``: both predictors run on every image; two sizes with flip are
    four augmented inputs; the numbers are reported, not checked."""
    stdout, r = run_benchmark(
        *("tta", "--config-file", str(REPO / "configs" / "shapes" / "faster_rcnn_tiny_C4.yaml")),
        *("--num-images", "2", "--warmup", "1", "--min-sizes", "96", "128", "--max-size", "256"),
        json_out=tmp_path / "tta.json",
    )
    assert r["images"] == 2 and r["augmented_inputs"] == 4
    assert r["plain_median_s"] > 0 and r["tta_median_s"] > 0 and r["ratio_mean"] > 0
    assert f"TTA / plain {r['ratio_mean']:.2f}x" in stdout and "CPU: " in stdout

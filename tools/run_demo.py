#!/usr/bin/env python
"""The README's main command on the embedded default data: ``./run demo``.

Does ImageNet-style pre-training help a Mask R-CNN C4 detector (boxes and instance masks)? On the
synthetic shapes data, from nothing but this repository:

1. generates the shapes dataset (``--output``/shapes: detection in COCO/VOC layouts, classification
   in ImageFolder layout; skipped when already there with the same parameters);
2. pre-trains a ResNet classifier on the shapes classification images (``tools/train_cls.py``
   with ``configs/shapes/demo_pretrain_cls.yaml``);
3. fine-tunes the C4 detector (``tools/train_net.py`` with ``configs/shapes/demo_C4.yaml``, Mask
   R-CNN: ``MODEL.MASK_ON``) twice with the same schedule and seed, concurrently: from the
   classification checkpoint (backbone and res5 head mapped, classifier dropped) and from random
   initialization;
4. evaluates both on shapes_val with COCO box and mask AP (detectron2's 0-100 scale) and writes
   ``summary.json`` (``{"pretrained": {"bbox": {"AP", "AP50", ...}, "segm": {...}}, "scratch":
   {...}, ...}``), ``detections/*.png`` (ground truth | pretrained | scratch on validation images,
   boxes and masks), ``curves.png`` (losses, box and mask AP of both runs) and each run's
   ``plots/`` (tools/plot_metrics.py);
5. prints a table per task.

Every stage runs the project's command-line tools in subprocesses; their logs go to
``<stage>/stdout.log``. ``--smoke`` runs the same pipeline on a few images for a few iterations
(seconds, for tests; the numbers mean nothing). ``--threads`` caps the CPU threads (default: all).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
DETECTOR_CONFIG = REPO / "configs" / "shapes" / "demo_C4.yaml"
PRETRAIN_CONFIG = REPO / "configs" / "shapes" / "demo_pretrain_cls.yaml"
RUNS = ("pretrained", "scratch")
STAGE_DIRS = ("pretrain", "pretrained", "scratch", "detections", "curves.png", "summary.json")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASK_NAMES = {"bbox": "box", "segm": "mask"}

# The embedded default data: the generator's detection split sizes, and a classification set
# large enough for the pre-training to learn shape features (generated in seconds).
DATA_ARGS: Dict[str, int] = {
    "num_train": 400,
    "num_val": 100,
    "num_cls_train": 6000,
    "num_cls_val": 300,
}
SMOKE_DATA_ARGS: Dict[str, int] = {
    "num_train": 12,
    "num_val": 6,
    "num_cls_train": 24,
    "num_cls_val": 12,
}
# --smoke: the same pipeline, a few iterations (checks the plumbing, not the recipe).
SMOKE_PRETRAIN_OPTS = [
    "SOLVER.EPOCHS",
    "2",
    "SOLVER.BATCH_SIZE",
    "8",
    "SOLVER.WARMUP_EPOCHS",
    "0",
    "SOLVER.CHECKPOINT_PERIOD",
    "1",
    "TEST.EVAL_PERIOD",
    "1",
    "DATA.NUM_WORKERS",
    "0",
    "LOG_PERIOD",
    "1",
]
SMOKE_DETECTOR_OPTS = [
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.STEPS",
    "(3,)",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "TEST.EVAL_PERIOD",
    "0",
]
NUM_VIS_IMAGES, SMOKE_NUM_VIS_IMAGES = 8, 2


def _load_tool(name: str) -> Any:
    """A module of tools/ (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"_rb_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def log(msg: str) -> None:
    """A progress line of the demo (flushed: the stages take minutes)."""
    print(f"[demo] {msg}", flush=True)


def fmt_time(seconds: float) -> str:
    """``m:ss``."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


# ------------------------------------------------------------------------------ subprocesses
class Run:
    """A training subprocess whose progress is read from its OUTPUT_DIR/metrics.json."""

    def __init__(
        self, name: str, cmd: List[str], out_dir: Path, env: Dict[str, str], max_iter: int
    ) -> None:
        self.name, self.cmd, self.out_dir, self.max_iter = name, cmd, out_dir, max_iter
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir / "stdout.log"
        self._log = open(self.log_path, "w", encoding="utf-8")
        self._log.write("$ " + " ".join(cmd) + "\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)
        )
        self.start = time.perf_counter()
        self.seconds: Optional[float] = None

    def poll(self) -> Optional[int]:
        code = self.proc.poll()
        if code is not None and self.seconds is None:
            self.seconds = time.perf_counter() - self.start
            self._log.close()
        return code

    def progress(self) -> Tuple[int, Optional[float]]:
        """(iterations done, latest smoothed total loss) from metrics.json."""
        done, loss = 0, None
        path = self.out_dir / "metrics.json"
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    done = max(done, int(entry.get("iteration", -1)) + 1)
                    if "total_loss" in entry:
                        loss = float(entry["total_loss"])
        except OSError:
            pass
        return min(done, self.max_iter), loss

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


def wait_for(runs: Sequence[Run], title: str) -> None:
    """Show progress until every run ends; on a failure stop the others and raise."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bars = {
        r.name: tqdm(
            total=r.max_iter,
            desc=f"{title} {r.name}",
            unit="it",
            position=i,
            leave=True,
            dynamic_ncols=True,
            disable=not tty,
        )
        for i, r in enumerate(runs)
    }
    last_print = time.perf_counter()
    try:
        while True:
            codes = {r.name: r.poll() for r in runs}
            for r in runs:
                done, loss = r.progress()
                bar = bars[r.name]
                bar.update(done - bar.n)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            failed = [r for r in runs if codes[r.name] not in (None, 0)]
            if failed:
                for r in runs:
                    r.terminate()
                r = failed[0]
                raise RuntimeError(
                    f"{title} '{r.name}' failed (exit code {codes[r.name]}); "
                    f"the end of {r.log_path}:\n{r.tail()}"
                )
            if all(c == 0 for c in codes.values()):
                break
            if not tty and time.perf_counter() - last_print > 30:
                parts = []
                for r in runs:
                    done, loss = r.progress()
                    parts.append(
                        f"{r.name} {done}/{r.max_iter} it"
                        + (f" loss {loss:.3f}" if loss is not None else "")
                    )
                elapsed = fmt_time(time.perf_counter() - runs[0].start)
                log(f"{title}: " + " | ".join(parts) + f" ({elapsed})")
                last_print = time.perf_counter()
            time.sleep(1.0)
    except BaseException:
        for r in runs:
            r.terminate()
        raise
    finally:
        for bar in bars.values():
            bar.close()


def _env(threads: int, data_root: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "RB_DATASETS": str(data_root),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# ------------------------------------------------------------------------------ results
def final_results(run_dir: Path, tasks: Sequence[str] = ("bbox",)) -> Dict[str, Dict[str, float]]:
    """The last evaluation of a run (metrics.json) for each of ``tasks`` (``bbox``, and ``segm``
    for a Mask R-CNN): ``{"bbox": {"AP": ..., "AP50": ..., "AP-circle": ...}, "segm": {...}}``.

    The evaluator reports NaN, which the trainer does not log, when a model detected nothing at
    all (and then only for ``bbox``, as detectron2's); that is an AP of 0 here.
    """
    results: Dict[str, Dict[str, float]] = {}
    with open(run_dir / "metrics.json", encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            found: Dict[str, Dict[str, float]] = {}
            for key, value in entry.items():
                task, _, metric = key.partition("/")
                if task in tasks and metric:
                    found.setdefault(task, {})[metric] = float(value)
            if found:
                results = found
    missing = [t for t in tasks if t not in results]
    if missing:
        predictions = run_dir / "inference" / "coco_instances_results.json"
        if not (
            predictions.is_file() and json.loads(predictions.read_text(encoding="utf-8")) == []
        ):
            raise RuntimeError(
                f"{run_dir / 'metrics.json'}: no evaluation results for {', '.join(missing)} "
                f"({missing[0]}/AP ...) found"
            )
        results = {t: {m: 0.0 for m in METRICS} for t in tasks}
    for task_results in results.values():  # NaN (e.g. APl without large objects) is not logged
        for m in METRICS:
            task_results.setdefault(m, float("nan"))
    return results


def _iterations(metrics_json: Path) -> int:
    n = 0
    with open(metrics_json, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                # a training iteration (not the evaluation after the last one)
                if "total_loss" in entry:
                    n = max(n, int(entry["iteration"]) + 1)
            except (ValueError, KeyError, TypeError):
                pass
    return n


def _finite(obj: Any) -> Any:
    """NaN (a metric without any ground truth, e.g. APl without large objects) -> None (null)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def format_table(summary: Dict[str, Any], task: str = "bbox") -> str:
    """Both runs' AP of one task (``bbox``/``segm``) and their difference, as a text table."""
    head = f"{'init':<28}" + "".join(f"{m:>7}" for m in METRICS)
    rows = [head, "-" * len(head)]
    labels = {"pretrained": "pretrained (shapes cls)", "scratch": "scratch (random init)"}
    res = {run: summary[run].get(task, {}) for run in RUNS}
    for run in RUNS:
        rows.append(
            f"{labels[run]:<28}" + "".join(f"{_number(res[run].get(m)):>7.1f}" for m in METRICS)
        )
    diff = {m: _number(res["pretrained"].get(m)) - _number(res["scratch"].get(m)) for m in METRICS}
    rows.append(f"{'difference':<28}" + "".join(f"{diff[m]:>+7.1f}" for m in METRICS))
    return "\n".join(rows)


def _number(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


# ------------------------------------------------------------------------------ pictures
def draw_comparisons(out: Path, data_dir: Path, num_images: int, threads: int) -> List[str]:
    """``detections/<image>.png``: ground truth | pretrained | scratch, on the first validation
    images (boxes, and the instance masks where the annotations and the model have them)."""
    import cv2
    import numpy as np
    import torch

    from resnet_backbones.config import get_cfg
    from resnet_backbones.data.shapes import SHAPES_CLASSES
    from resnet_backbones.engine import DefaultPredictor

    demo = _load_tool("demo")
    torch.set_num_threads(max(1, threads))
    with open(data_dir / "annotations" / "instances_val.json", encoding="utf-8") as f:
        coco = json.load(f)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(categories)}
    images = sorted(coco["images"], key=lambda im: im["id"])[:num_images]
    predictors = {}
    for run in RUNS:
        cfg = get_cfg()
        cfg.merge_from_file(str(DETECTOR_CONFIG))
        cfg.merge_from_list(
            [
                "MODEL.WEIGHTS",
                str(out / run / "model_final.pth"),
                "MODEL.DEVICE",
                "cpu",
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                "0.5",
            ]
        )
        cfg.freeze()
        predictors[run] = DefaultPredictor(cfg)
    vis_dir = out / "detections"
    vis_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for im in images:
        path = data_dir / "val" / im["file_name"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read validation image {path}")
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        gt_boxes = np.array(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ]
        ).reshape(-1, 4)
        gt_classes = [cat_index[a["category_id"]] for a in anns]
        gt_drawn = demo.draw_detections(
            image, gt_boxes, None, gt_classes, SHAPES_CLASSES, masks=annotation_masks(anns, im)
        )
        panels = [demo.add_title(gt_drawn, "ground truth")]
        for run in RUNS:
            instances = predictors[run](image)["instances"]
            boxes, scores, classes = demo.instances_to_arrays(instances)
            masks = demo.instances_masks(instances)
            drawn = demo.draw_detections(image, boxes, scores, classes, SHAPES_CLASSES, masks=masks)
            panels.append(demo.add_title(drawn, run))
        target = vis_dir / (Path(im["file_name"]).stem + ".png")
        if not cv2.imwrite(str(target), demo.hconcat(panels)):
            raise OSError(f"could not write {target}")
        written.append(str(target))
    return written


def annotation_masks(anns: List[Dict[str, Any]], image: Dict[str, Any]) -> Optional[Any]:
    """``(N, H, W)`` bool masks of COCO annotations (polygons or RLE, pycocotools), or None when
    any has no ``segmentation`` (a box-only dataset)."""
    import numpy as np

    from resnet_backbones.data.detection_utils import rle_to_bitmask
    from resnet_backbones.structures.masks import polygons_to_bitmask

    if not anns or any("segmentation" not in a for a in anns):
        return None
    h, w = int(image["height"]), int(image["width"])
    masks = [
        polygons_to_bitmask(a["segmentation"], h, w)
        if isinstance(a["segmentation"], list)
        else rle_to_bitmask(a["segmentation"]).astype(bool)
        for a in anns
    ]
    return np.stack(masks)


def draw_curves(out: Path) -> List[str]:
    """Each run's plots/ (tools/plot_metrics.py) and curves.png comparing the two fine-tunings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_metrics = _load_tool("plot_metrics")
    written: List[str] = []
    for run in ("pretrain",) + RUNS:
        written += plot_metrics.plot_metrics(str(out / run), smooth=1)
    series = {
        run: plot_metrics.to_series(plot_metrics.read_metrics(str(out / run / "metrics.json")))
        for run in RUNS
    }
    tasks = [t for t in TASK_NAMES if any(series[run].get(f"{t}/AP") for run in RUNS)]
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(6 * (1 + len(tasks)), 4.5), squeeze=False)
    axes = list(axes[0])
    ax_loss, ap_axes = axes[0], dict(zip(tasks, axes[1:]))
    for run, color in zip(RUNS, ("tab:blue", "tab:orange")):
        if series[run].get("total_loss"):
            xs, ys = zip(*series[run]["total_loss"])
            ax_loss.plot(xs, ys, label=run, color=color)
        for task, ax in ap_axes.items():
            for metric, style in (("AP50", "-o"), ("AP", "--s")):
                points = series[run].get(f"{task}/{metric}")
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, label=f"{run} {metric}", color=color, markersize=4)
    model = "Mask R-CNN C4" if "segm" in tasks else "Faster R-CNN C4"
    ax_loss.set(title=f"training loss ({model})", xlabel="iteration", ylabel="total loss")
    for task, ax in ap_axes.items():
        ax.set(
            title=f"COCO {TASK_NAMES[task]} AP on shapes_val",
            xlabel="iteration",
            ylabel="AP (%)",
            ylim=(0, 100),
        )
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return written + [str(path)]


# ------------------------------------------------------------------------------ stages
@dataclass
class Demo:
    """What every stage needs: the output folder, the options and the timings so far."""

    out: Path
    seed: int
    smoke: bool
    threads: int
    start: float = field(default_factory=time.perf_counter)
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def half(self) -> int:
        """Threads for each of the two concurrent fine-tunings."""
        return max(1, self.threads // 2)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line (the module docstring is the help text)."""
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.strip().splitlines()[2:]),
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("demo_output"),
        help="demo folder (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="data generation and training seed (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads to use (default: all available)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a few images and iterations: a fast end-to-end check"
    )
    return parser.parse_args(argv)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_data(demo: Demo) -> Tuple[Path, Dict[str, Any]]:
    """Stage 1: the shapes dataset (reused when already there), then clears earlier results.

    Returns the data folder and the generator's summary (image counts per split and class).
    """
    from resnet_backbones.data.shapes import ensure_shapes_dataset, format_shapes_summary

    t = time.perf_counter()
    data_dir = demo.out / "shapes"
    data_summary = ensure_shapes_dataset(data_dir, seed=demo.seed, **data_args(demo.smoke))
    print(format_shapes_summary(data_summary, data_dir), flush=True)
    demo.timings["data"] = time.perf_counter() - t
    clear_previous_results(demo.out)
    return data_dir, data_summary


def data_args(smoke: bool) -> Dict[str, int]:
    """The dataset generator's split sizes."""
    return SMOKE_DATA_ARGS if smoke else DATA_ARGS


def clear_previous_results(out: Path) -> None:
    """Removes the stages' outputs of an earlier demo run in ``out`` (not the data)."""
    for name in STAGE_DIRS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def pretrain(demo: Demo, data_dir: Path, data_summary: Dict[str, Any]) -> Dict[str, Any]:
    """Stage 2: pre-trains the classifier (tools/train_cls.py) on the shapes classification images.

    Returns its summary: validation top-1 and loss, iterations and model name.
    """
    from resnet_backbones.classification import compute_schedule, get_cls_cfg

    t = time.perf_counter()
    out = demo.out
    cls_opts = [
        "DATA.PATH",
        str(data_dir / "classification"),
        "OUTPUT_DIR",
        str(out / "pretrain"),
        "SEED",
        str(demo.seed),
        "PROGRESS",
        "off",
    ]
    cls_opts += SMOKE_PRETRAIN_OPTS if demo.smoke else []
    cls_cfg = get_cls_cfg()
    cls_cfg.merge_from_file(str(PRETRAIN_CONFIG))
    cls_cfg.merge_from_list(cls_opts)
    num_cls = sum(data_summary["classification"]["train"].values())
    cls_iters = compute_schedule(cls_cfg, num_cls, 1).max_iter
    log(
        f"pre-training {cls_cfg.MODEL.NAME} (stem {cls_cfg.MODEL.STEM_OUT_CHANNELS}, "
        f"res2 {cls_cfg.MODEL.RES2_OUT_CHANNELS} channels) on {num_cls} shapes classification "
        f"images, {cls_iters} iterations ..."
    )
    workers = int(cls_cfg.DATA.NUM_WORKERS)
    cmd = [sys.executable, str(TOOLS / "train_cls.py"), "--config-file", str(PRETRAIN_CONFIG)]
    env = _env(max(1, demo.threads - min(workers, demo.threads // 2)), out)
    pre = Run("classifier", cmd + cls_opts, out / "pretrain", env, cls_iters)
    wait_for([pre], "pre-training")
    with open(out / "pretrain" / "metrics.json", encoding="utf-8") as f:
        cls_entries = [json.loads(line) for line in f if line.strip()]
    cls_res = next((e for e in reversed(cls_entries) if "val/top1" in e), {})
    pretrain_summary = {
        "top1": cls_res.get("val/top1"),
        "val_loss": cls_res.get("val/loss"),
        "iterations": cls_iters,
        "model": cls_cfg.MODEL.NAME,
    }
    demo.timings["pretrain"] = time.perf_counter() - t
    num_val = sum(data_summary["classification"]["val"].values())
    log(
        f"classifier: top-1 {pretrain_summary['top1']:.1f}% on {num_val} "
        f"validation images ({fmt_time(demo.timings['pretrain'])})"
    )
    return pretrain_summary


def finetune(demo: Demo) -> Any:
    """Stage 3: both fine-tunings (tools/train_net.py) at once, same schedule and seed: from the
    classifier's checkpoint and from random initialization. Returns the detector config used."""
    from resnet_backbones.config import get_cfg

    t = time.perf_counter()
    out = demo.out
    det_cfg = get_cfg()
    det_cfg.merge_from_file(str(DETECTOR_CONFIG))
    det_opts_common = ["SEED", str(demo.seed)] + (SMOKE_DETECTOR_OPTS if demo.smoke else [])
    det_cfg.merge_from_list(det_opts_common)
    det_iters = int(det_cfg.SOLVER.MAX_ITER)
    weights = {"pretrained": str(out / "pretrain" / "model_final.pth"), "scratch": ""}
    log(
        f"fine-tuning {model_name(det_cfg)} twice ({det_iters} iterations, batch "
        f"{det_cfg.SOLVER.IMS_PER_BATCH}, same schedule and seed): from the classifier and from "
        f"random initialization, {demo.half} thread(s) each ..."
    )
    cmd = [sys.executable, str(TOOLS / "train_net.py"), "--config-file", str(DETECTOR_CONFIG)]
    runs = [
        Run(
            run,
            cmd + ["OUTPUT_DIR", str(out / run), "MODEL.WEIGHTS", weights[run]] + det_opts_common,
            out / run,
            _env(demo.half, out),
            det_iters,
        )
        for run in RUNS
    ]
    wait_for(runs, "fine-tuning")
    demo.timings["finetune"] = time.perf_counter() - t
    return det_cfg


def model_name(det_cfg: Any) -> str:
    """What the detector config builds, for the log and the table."""
    return "Mask R-CNN C4" if det_cfg.MODEL.MASK_ON else "Faster R-CNN C4"


def evaluate(out: Path, det_cfg: Any) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Stage 4: each fine-tuning's final COCO box (and mask) AP on shapes_val (metrics.json)."""
    tasks = ("bbox", "segm") if det_cfg.MODEL.MASK_ON else ("bbox",)
    return {run: final_results(out / run, tasks) for run in RUNS}


def write_summary(
    demo: Demo,
    results: Dict[str, Dict[str, Dict[str, float]]],
    pretrain_summary: Dict[str, Any],
    det_cfg: Any,
    pictures: List[str],
    plots: List[str],
) -> Dict[str, Any]:
    """``summary.json``: both runs' AP per task (``bbox``, ``segm``), the pre-training, the
    settings, timings and outputs."""
    out = demo.out
    summary: Dict[str, Any] = {run: results[run] for run in RUNS}
    summary["pretraining"] = pretrain_summary
    summary["settings"] = {
        "seed": demo.seed,
        "smoke": bool(demo.smoke),
        "threads": demo.threads,
        "detector_config": str(DETECTOR_CONFIG.relative_to(REPO)),
        "detector": model_name(det_cfg),
        "pretrain_config": str(PRETRAIN_CONFIG.relative_to(REPO)),
        "detector_iterations": {run: _iterations(out / run / "metrics.json") for run in RUNS},
        "ims_per_batch": int(det_cfg.SOLVER.IMS_PER_BATCH),
        "data": data_args(demo.smoke),
    }
    summary["timings_s"] = {k: round(v, 1) for k, v in demo.timings.items()}
    summary["outputs"] = {
        "detections": [os.path.relpath(p, out) for p in pictures],
        "plots": [os.path.relpath(p, out) for p in plots],
    }
    text = json.dumps(_finite(summary), indent=2, allow_nan=False) + "\n"
    (out / "summary.json").write_text(text, encoding="utf-8")
    return summary


def print_table(
    demo: Demo, summary: Dict[str, Any], data_summary: Dict[str, Any], det_cfg: Any
) -> None:
    """Stage 5: the AP tables (box, mask), where the outputs are and how long each stage took."""
    out = demo.out
    tasks = [t for t in TASK_NAMES if any(t in summary[run] for run in RUNS)]
    for task in tasks:
        print()
        print(
            f"COCO {TASK_NAMES[task]} AP on shapes_val "
            f"({data_summary['detection']['val']['images']} images), {model_name(det_cfg)}, "
            f"{int(det_cfg.SOLVER.MAX_ITER)} iterations each:"
        )
        print(format_table(summary, task))
    print()
    log(
        f"summary: {out / 'summary.json'}; detections: {out / 'detections'}; "
        f"curves: {out / 'curves.png'}"
    )
    log("time: " + ", ".join(f"{k} {fmt_time(v)}" for k, v in demo.timings.items()))


# ------------------------------------------------------------------------------ main
def main(argv: Optional[List[str]] = None) -> int:
    """The demo's stages in order; see the module docstring."""
    args = parse_args(argv)
    demo = Demo(
        out=args.output.resolve(),
        seed=args.seed,
        smoke=bool(args.smoke),
        threads=args.threads or available_cpus(),
    )
    data_dir, data_summary = make_data(demo)
    pretrain_summary = pretrain(demo, data_dir, data_summary)
    det_cfg = finetune(demo)

    t = time.perf_counter()
    results = evaluate(demo.out, det_cfg)
    num_images = SMOKE_NUM_VIS_IMAGES if demo.smoke else NUM_VIS_IMAGES
    pictures = draw_comparisons(demo.out, data_dir, num_images, demo.threads)
    plots = draw_curves(demo.out)
    demo.timings["visualize"] = time.perf_counter() - t
    demo.timings["total"] = time.perf_counter() - demo.start

    summary = write_summary(demo, results, pretrain_summary, det_cfg, pictures, plots)
    print_table(demo, summary, data_summary, det_cfg)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)

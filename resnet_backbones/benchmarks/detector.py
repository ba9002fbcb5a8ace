"""Benchmark: Faster R-CNN C4 training step and inference, ours against detectron2 in the same run.

    python tools/benchmark.py detector [--amp] [--mask] [--depth 50 101] [--repeats N]
                                       [--train-repeats N] [--image-size 600 800]
                                       [--modes inference train] [--variants ...] [--threads N]
                                       [--no-memory] [--amp-accuracy N] [--json FILE]

detectron2 is timed when it is importable: run the command with that environment's Python
(``/path/to/d2env/bin/python tools/benchmark.py detector``); elsewhere only our variants run.

Setup, per depth (R50-C4, R101-C4): detectron2's default config values
(``configs/Base-RCNN-C4.yaml`` read by each library's own config code: 6000/1000 test proposals
before/after NMS, 12000/2000 in training, 512 sampled RoIs per image, full-width ResNet with
FrozenBN and the stride in the 1x1 convs, 80 classes, CPU). One set of random weights with sane
statistics (every FrozenBN calibrated on a test image, random affine values, larger predictor
weights, as the parity tests do) is loaded into every model (detectron2's with ``strict=True``).
Images: synthetic 600x800 "shapes" scenes, their shapes as ground truth.

``--mask``: Mask R-CNN C4 instead (``MODEL.MASK_ON`` in each library's config: the same
state-dict names). The mask head's random weights are calibrated too (its predictor redrawn so
that mask logits spread over about +-2 around 0 on the calibration image's detections); the
ground-truth masks of the training step are the octagons inscribed in the ground-truth boxes
(``PolygonMasks``); the agreement column adds the mean (min) IoU of the pasted masks of matched
detections.

* inference: seconds per image (batch of 1, ``model.eval()``, ``torch.no_grad()``);
* training step: forward + backward + ``SGD(momentum=0.9, weight_decay=1e-4).step()`` on a batch of
  2 images, ``zero_grad(set_to_none=True)``;
* peak memory: in a fresh subprocess per (variant, mode): model built and weights loaded, one
  warm-up iteration, then the peak resident set size (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; ``ru_maxrss`` where that is unavailable) during one more iteration,
  minus the resident size just before it.

Variants (``--variants``):

* ``d2``: detectron2, fp32 -- the reference of every ratio;
* ``ours``: our model as built, fp32 (the default: the same operations as detectron2);
* ``ours-fast``: our model with ``MODEL.FAST_PATH`` through
  :func:`~resnet_backbones.modeling.prepare_model` (inference: BN folded into the convs; training:
  FrozenBN applied through the conv weights; both: subsampled RoIAlign, channels_last), fp32;
* ``ours-fast-bf16``: ``ours-fast`` under ``torch.autocast(dtype=bfloat16)`` (box decoding, NMS,
  losses and scores stay float32) -- ``--amp`` selects it.

Timing: every variant is built and warmed up first; then ``--repeats`` (inference, default 5) or
``--train-repeats`` (default 3) rounds, each running every variant once in an order rotated from
round to round, so that load changes on a shared machine
hit all variants alike. Reported: the median time per variant and the median over rounds of the
per-round time ratio to detectron2 (< 1: faster than detectron2). The load average is printed
before, during and after. Agreement: inference detections of each variant against detectron2's
(matched at IoU >= 0.9 with the same class), and the training losses of a seeded step.

Accuracy of bfloat16 (``--amp-accuracy N``, default 4 images with ``--amp``): COCO AP@[.5:.95]
(pycocotools) of bf16 detections scored with our unoptimized fp32 detections (= detectron2's) as
ground truth, on N new images; the fp32 fast path is scored too, as a control.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..utils.testing import coco_ap
from . import docstring_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIG = os.path.join(ROOT, "configs", "Base-RCNN-C4.yaml")
ALL_VARIANTS = ("d2", "ours", "ours-fast", "ours-fast-bf16")
VARIANT_DESCRIPTIONS = {
    "d2": "detectron2, fp32 (reference)",
    "ours": "ours as built, fp32 (same operations as detectron2)",
    "ours-fast": (
        "ours, fast path (subsampled RoIAlign, FrozenBN in convs, channels_last; inference: res5's"
        " 1x1 input convs before RoIAlign, Winograd 3x3 in fp32), fp32"
    ),
    "ours-fast-bf16": "ours, fast path, bfloat16 autocast (decoding/NMS/losses/scores fp32)",
}
MODES = ("inference", "train", "predictor")
_WORKER_FLAG = "--memory-worker"
_RESULT_MARK = "@@RESULT@@"


def detectron2_available() -> bool:
    try:
        import detectron2  # noqa: F401
        from detectron2.modeling import build_model  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------------ setup
def _overrides(depth: int, mask: bool = False) -> List[str]:
    out = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", str(depth)]
    return out + ["MODEL.MASK_ON", "True"] if mask else out


def our_config(depth: int, mask: bool = False):
    from ..config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(BASE_CONFIG)
    cfg.merge_from_list(_overrides(depth, mask))
    return cfg


def d2_config(depth: int, mask: bool = False):
    from detectron2.config import get_cfg as d2_get_cfg

    cfg = d2_get_cfg()
    cfg.merge_from_file(BASE_CONFIG)
    cfg.merge_from_list(_overrides(depth, mask))
    return cfg


def make_images(
    image_size: Tuple[int, int], count: int = 2, seed: int = 100
) -> List[Dict[str, Any]]:
    """``count`` synthetic scenes:
    ``{"image": (3, H, W) float BGR, "boxes": (G, 4), "classes": (G,)}``."""
    from ..utils.testing import random_scene

    return [random_scene(seed + i, image_size[0], image_size[1]) for i in range(count)]


def octagon_in_box(box: Sequence[float]) -> List[Any]:
    """The polygon (one ``[x0, y0, x1, y1, ...]`` array) of the octagon inscribed in ``box``
    (corners cut at a third of each side): a simple ground-truth mask for a box."""
    import numpy as np

    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = (x1 - x0) / 3, (y1 - y0) / 3
    pts = [
        (x0 + dx, y0), (x1 - dx, y0), (x1, y0 + dy), (x1, y1 - dy),
        (x1 - dx, y1), (x0 + dx, y1), (x0, y1 - dy), (x0, y0 + dy),
    ]  # fmt: skip
    return [np.array(pts, dtype=np.float64).reshape(-1)]


def batch_inputs(
    images: Sequence[Dict[str, Any]], *, with_gt: bool, d2: bool, mask: bool = False
) -> List[Dict[str, Any]]:
    """Detector inputs; with ``mask`` and ``with_gt``, ``gt_masks`` too (:func:`octagon_in_box`
    of every ground-truth box, as the library's ``PolygonMasks``)."""
    from ..utils.testing import detector_inputs

    batch = detector_inputs(images, with_gt=with_gt, d2=d2)
    if mask and with_gt:
        if d2:
            from detectron2.structures import PolygonMasks
        else:
            from ..structures import PolygonMasks
        for d in batch:
            inst = d["instances"]
            inst.gt_masks = PolygonMasks([octagon_in_box(b) for b in inst.gt_boxes.tensor])
    return batch


@torch.no_grad()
def calibrate_mask_head_(
    model, images: Sequence[Dict[str, Any]], logit_std: float = 2.0, seed: int = 0
):
    """Redraw the mask predictor of ``model`` so that its logits on the ground-truth boxes of
    ``images`` (scenes as :func:`make_images` gives them) have standard deviation ``logit_std``
    and mean ~0 per class (with the default init, std 0.001, every mask probability is ~0.5 and
    the pasted masks are noise)."""
    from ..structures import Boxes

    heads = model.roi_heads
    predictor = heads.mask_head.predictor
    torch.manual_seed(seed)
    predictor.weight.normal_(0.0, 1.0)
    predictor.bias.zero_()
    model.eval()
    inputs = batch_inputs(images, with_gt=False, d2=False)
    features = model.backbone(model.preprocess_image(inputs).tensor)
    boxes = [Boxes(im["boxes"].clone()) for im in images]
    if sum(len(b) for b in boxes) == 0:
        raise ValueError("calibrate_mask_head_: the scenes have no boxes")
    res5_out = heads._shared_roi_transform([features[f] for f in heads.in_features], boxes)
    seen: List[torch.Tensor] = []
    hook = predictor.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        heads.mask_head.layers(res5_out)
    finally:
        hook.remove()
    std = float(predictor(seen[0]).std())
    if not math.isfinite(std) or std == 0.0:
        # non-finite res5 outputs: FrozenBN statistics calibrated on too small an image
        raise ValueError(
            f"calibrate_mask_head_: mask logits of std {std} on the ground-truth boxes; calibrate "
            "on larger images (e.g. 160x224 or more)"
        )
    predictor.weight.mul_(logit_std / std)
    predictor.bias.copy_(-predictor(seen[0]).mean(dim=(0, 2, 3)))
    return model


@torch.no_grad()
def sane_random_weights(
    depth: int,
    images: Sequence[Dict[str, Any]],
    seed: int = 0,
    residual_gain: Tuple[float, float] = (0.1, 0.3),
    mask: bool = False,
) -> Dict[str, torch.Tensor]:
    """Our R{depth}-C4 state dict with calibrated FrozenBN statistics
    (:func:`~resnet_backbones.utils.testing.calibrate_random_detector_` on the first image; small
    residual-branch gains, as trained ResNets have, so that fp32-vs-bf16 comparisons mean
    something); with ``mask``, Mask R-CNN's, its mask predictor calibrated as well
    (:func:`calibrate_mask_head_`)."""
    from ..modeling import build_model
    from ..utils.testing import calibrate_random_detector_

    torch.manual_seed(seed)
    model = build_model(our_config(depth, mask)).eval()
    inputs = batch_inputs(images[:1], with_gt=False, d2=False)
    calibrate_random_detector_(model, inputs, residual_gain)
    if mask:
        calibrate_mask_head_(model, images[:1], seed=seed)
    return {k: v.clone() for k, v in model.state_dict().items()}


def build_variant(
    variant: str, depth: int, state: Dict[str, torch.Tensor], mode: str, mask: bool = False
):
    """The model of ``variant`` for ``mode``, weights loaded (eval mode for inference); ``mask``:
    Mask R-CNN."""
    if variant == "d2":
        from detectron2.modeling import build_model as d2_build_model

        model = d2_build_model(d2_config(depth, mask))
        model.load_state_dict(state, strict=True)
    else:
        from ..modeling import build_model, prepare_model

        cfg = our_config(depth, mask)
        cfg.MODEL.FAST_PATH = variant.startswith("ours-fast")
        model = build_model(cfg)
        model.load_state_dict(state, strict=True)
        model = prepare_model(model, cfg, "inference" if mode == "inference" else "train")
    return model.eval() if mode == "inference" else model.train()


def _autocast(variant: str):
    from ..precision import autocast_context

    return autocast_context("cpu", enabled=variant.endswith("bf16"), dtype="bfloat16")


def _event_storage(variant: str):
    if variant == "d2":
        from detectron2.utils.events import EventStorage
    else:
        from ..utils.events import EventStorage
    return EventStorage(0)


def make_step(
    variant: str, mode: str, model, images: Sequence[Dict[str, Any]], mask: bool = False
) -> Callable[[], Any]:
    """A no-argument callable doing one inference (first image) or one training step (all
    images; ``mask``: with ground-truth masks)."""
    d2 = variant == "d2"
    if mode == "inference":
        inputs = batch_inputs(images[:1], with_gt=False, d2=d2)

        def infer():
            with torch.no_grad(), _autocast(variant):
                return model(inputs)

        return infer
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    inputs = batch_inputs(images, with_gt=True, d2=d2, mask=mask)

    def train_step():
        with _event_storage(variant):
            with _autocast(variant):
                losses = model(inputs)
                total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    return train_step


# --------------------------------------------------------------------------------- memory
def _rss_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


def memory_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in a fresh process: peak RSS increase during one iteration after a warm-up."""
    import resource

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    state = torch.load(spec["weights"], map_location="cpu")
    images = torch.load(spec["images"], map_location="cpu")
    mask = bool(spec.get("mask", False))
    model = build_variant(spec["variant"], spec["depth"], state, spec["mode"], mask)
    del state
    step = make_step(spec["variant"], spec["mode"], model, images, mask)
    torch.manual_seed(0)
    step()  # warm-up: oneDNN primitives, optimizer state
    _trim_heap()
    before = _rss_kib("VmRSS")
    reset = _reset_peak()
    start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    step()
    peak = _rss_kib("VmHWM") if reset else None
    if peak is None:  # no clear_refs: ru_maxrss is the peak since the process started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss" if peak > start_maxrss else "ru_maxrss (peak before the iteration)"
    else:
        method = "VmHWM"
    return {
        "baseline_mib": (before or 0) / 1024,
        "peak_mib": peak / 1024,
        "delta_mib": (peak - (before or 0)) / 1024,
        "method": method,
    }


def measure_memory(spec: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "resnet_backbones.benchmarks.detector",
        _WORKER_FLAG,
        json.dumps(spec),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}


# -------------------------------------------------------------------------------- agreement
def _match_detections(ref, other, iou_thresh: float = 0.9) -> Tuple[float, float]:
    """(fraction of ``ref`` detections with a same-class match at IoU >= thresh in ``other``,
    max |score difference| over those matches)."""
    from torchvision.ops import box_iou

    a, b = ref["instances"], other["instances"]
    if len(a) == 0:
        return (1.0 if len(b) == 0 else 0.0), 0.0
    if len(b) == 0:
        return 0.0, float("nan")
    iou = box_iou(a.pred_boxes.tensor.float(), b.pred_boxes.tensor.float())
    iou[a.pred_classes[:, None] != b.pred_classes[None, :]] = 0
    best, idx = iou.max(dim=1)
    ok = best >= iou_thresh
    diff = (
        (a.scores[ok].float() - b.scores[idx[ok]].float()).abs().max().item()
        if ok.any()
        else float("nan")
    )
    return ok.float().mean().item(), diff


def _match_masks(ref, other, iou_thresh: float = 0.9) -> Tuple[float, float, int]:
    """(mean, min) IoU of the pasted masks of the ``ref`` detections matched in ``other`` (as in
    :func:`_match_detections`), and how many were compared (masks empty in both are skipped)."""
    from torchvision.ops import box_iou

    a, b = ref["instances"], other["instances"]
    if len(a) == 0 or len(b) == 0 or not (a.has("pred_masks") and b.has("pred_masks")):
        return float("nan"), float("nan"), 0
    iou = box_iou(a.pred_boxes.tensor.float(), b.pred_boxes.tensor.float())
    iou[a.pred_classes[:, None] != b.pred_classes[None, :]] = 0
    best, idx = iou.max(dim=1)
    ok = (best >= iou_thresh).nonzero().squeeze(1)
    ma = a.pred_masks[ok].flatten(1).bool()
    mb = b.pred_masks[idx[ok]].flatten(1).bool()
    union = (ma | mb).sum(1).float()
    inter = (ma & mb).sum(1).float()
    keep = union > 0
    if not keep.any():
        return float("nan"), float("nan"), 0
    m_iou = inter[keep] / union[keep]
    return m_iou.mean().item(), m_iou.min().item(), int(keep.sum())


def amp_accuracy(
    depth: int,
    state: Dict[str, torch.Tensor],
    image_size: Tuple[int, int],
    num_images: int,
    log: Callable[[str], None],
    mask: bool = False,
) -> Dict[str, Any]:
    """COCO AP of bf16 detections (and, as a control, of the fp32 fast path) scored against our
    unoptimized fp32 detections (= detectron2's) as ground truth, on ``num_images`` new images."""
    from ..precision import autocast_context

    images = make_images(image_size, count=num_images, seed=200)
    runs = {
        "ours fp32 (ground truth)": ("ours", False),
        "ours-fast fp32": ("ours-fast", False),
        "ours bf16": ("ours", True),
        "ours-fast bf16": ("ours-fast", True),
    }
    outputs: Dict[str, List[Any]] = {}
    for name, (variant, bf16) in runs.items():
        model = build_variant(variant, depth, state, "inference", mask)
        outs = []
        for im in images:
            with torch.no_grad(), autocast_context("cpu", bf16, "bfloat16"):
                outs.append(model(batch_inputs([im], with_gt=False, d2=False))[0]["instances"])
        outputs[name] = outs
        del model
    reference = outputs.pop("ours fp32 (ground truth)")
    num_classes = int(our_config(depth).MODEL.ROI_HEADS.NUM_CLASSES)
    result = {
        "images": num_images,
        "image_size": list(image_size),
        "detections_per_image": [len(r) for r in reference],
    }
    for name, outs in outputs.items():
        result[name] = coco_ap(reference, outs, num_classes)
        log(f"  R{depth}-C4 COCO AP of {name} against fp32 detections: {result[name]:.4f}")
    return result


# ----------------------------------------------------------------------------------- timing
@dataclass
class Row:
    depth: int
    mode: str
    variant: str
    median_s: float
    min_s: float
    ratio_to_d2: Optional[float]
    times_s: List[float] = field(default_factory=list)
    memory: Dict[str, Any] = field(default_factory=dict)
    agreement: str = ""
    mask: bool = False

    @property
    def model(self) -> str:
        return f"{'Mask R-CNN ' if self.mask else ''}R{self.depth}-C4"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def time_variants(
    depth: int,
    mode: str,
    variants: Sequence[str],
    state: Dict[str, torch.Tensor],
    images: Sequence[Dict[str, Any]],
    repeats: int,
    log: Callable[[str], None],
    mask: bool = False,
) -> List[Row]:
    steps, agreement, outputs = {}, {}, {}
    for variant in variants:
        start = time.perf_counter()
        model = build_variant(variant, depth, state, mode, mask)
        steps[variant] = make_step(variant, mode, model, images, mask)
        torch.manual_seed(0)
        outputs[variant] = steps[variant]()  # warm-up; seeded so that training samples alike
        log(
            f"  R{depth}-C4 {mode:9s} {variant:15s} built + warm-up "
            f"{time.perf_counter() - start:6.1f}s"
        )
    ref_name = "d2" if "d2" in variants else variants[0]
    for variant in variants:
        if mode == "inference":
            frac, diff = _match_detections(outputs[ref_name][0], outputs[variant][0])
            n = len(outputs[variant][0]["instances"])
            agreement[variant] = (
                f"{n} dets, {100 * frac:.0f}% of {ref_name}'s matched, max |dscore| {diff:.1e}"
            )
            if mask:
                mean_iou, min_iou, k = _match_masks(outputs[ref_name][0], outputs[variant][0])
                agreement[variant] += f", mask IoU mean {mean_iou:.4f} min {min_iou:.4f} ({k})"
        else:
            agreement[variant] = "losses " + ", ".join(
                f"{k[5:]}={v:.4f}" for k, v in sorted(outputs[variant].items())
            )
    times: Dict[str, List[float]] = {v: [] for v in variants}
    for r in range(repeats):
        order = list(variants[r % len(variants) :]) + list(variants[: r % len(variants)])
        for variant in order:
            t0 = time.perf_counter()
            steps[variant]()
            times[variant].append(time.perf_counter() - t0)
        log(
            f"  R{depth}-C4 {mode:9s} round {r + 1}/{repeats}: "
            + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants)
            + f" (load {load_average()})"
        )
    rows = []
    for variant in variants:
        ratio = None
        if "d2" in times:
            ratio = statistics.median(t / t_ref for t, t_ref in zip(times[variant], times["d2"]))
        rows.append(
            Row(
                depth,
                mode,
                variant,
                statistics.median(times[variant]),
                min(times[variant]),
                ratio,
                times[variant],
                agreement=agreement[variant],
                mask=mask,
            )
        )
    del steps, outputs
    gc.collect()
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | mode | variant | median s | min s | vs detectron2 | peak mem. delta (MiB) "
        "| agreement |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        unit = "s/step" if r.mode == "train" else "s/img"
        ratio = f"{r.ratio_to_d2:.2f}x" if r.ratio_to_d2 is not None else "n/a"
        if r.memory.get("error"):
            mem = f"error: {r.memory['error']}"
        elif r.memory:
            mem = f"{r.memory['delta_mib']:.0f} (peak {r.memory['peak_mib']:.0f})"
        else:
            mem = "not measured"
        lines.append(
            f"| {r.model} | {r.mode} ({unit}) | {r.variant} | {r.median_s:.2f} "
            f"| {r.min_s:.2f} | "
            f"{ratio} | {mem} | {r.agreement} |"
        )
    return "\n".join(lines)


def environment() -> str:
    from ..utils.env import cpu_flags_summary, cpu_name

    cpu = cpu_name()
    d2 = "not importable"
    if detectron2_available():
        import detectron2

        d2 = detectron2.__version__
    return (
        f"torch {torch.__version__}, detectron2 {d2}, CPU: {cpu} ({os.cpu_count()} cores, "
        f"{cpu_flags_summary()}), {torch.get_num_threads()} threads"
    )


# -------------------------------------------------------------------------------------- CLI
def test_size_overrides(args: argparse.Namespace) -> List[str]:
    """``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` overrides of the predictor mode."""
    out: List[str] = []
    for key, value in (
        ("INPUT.MIN_SIZE_TEST", args.min_size_test),
        ("INPUT.MAX_SIZE_TEST", args.max_size_test),
    ):
        if value is not None:
            out += [key, str(value)]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = docstring_parser("detector", __doc__)
    parser.add_argument(
        "--amp",
        action="store_true",
        help="time ours-fast-bf16 (bfloat16 autocast) against detectron2's fp32; "
        "default depth 50 and variants d2 ours-fast ours-fast-bf16",
    )
    parser.add_argument(
        "--mask",
        action="store_true",
        help="Mask R-CNN C4 (MODEL.MASK_ON) in every variant: calibrated random mask head, "
        "ground-truth masks in the training step, mask IoU in the agreement column "
        "(inference and train modes)",
    )
    parser.add_argument(
        "--depth",
        type=int,
        nargs="+",
        default=None,
        choices=[50, 101],
        help="ResNet depths (default: 50 101; with --amp: 50)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["inference", "train"],
        choices=list(MODES),
        help="inference and train time one 600x800 tensor (default); predictor "
        "times whole photos of several sizes through each DefaultPredictor",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="PATH",
        help="predictor mode: image files or folders (default: scikit-image's "
        "sample photos where installed, else synthetic scenes)",
    )
    parser.add_argument(
        "--min-size-test",
        type=int,
        default=None,
        metavar="N",
        help="predictor mode: INPUT.MIN_SIZE_TEST (default: the config's 800)",
    )
    parser.add_argument(
        "--max-size-test",
        type=int,
        default=None,
        metavar="N",
        help="predictor mode: INPUT.MAX_SIZE_TEST (default: the config's 1333)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(ALL_VARIANTS),
        help="default: d2 ours ours-fast (--amp: d2 ours-fast ours-fast-bf16); d2 is "
        "dropped where detectron2 is not importable",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed inference rounds (median taken; default 5)"
    )
    parser.add_argument(
        "--train-repeats",
        type=int,
        default=None,
        help="timed training rounds (default: 3, or --repeats if that is smaller)",
    )
    parser.add_argument("--image-size", type=int, nargs=2, default=[600, 800], metavar=("H", "W"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument(
        "--memory-timeout", type=float, default=1800.0, help="seconds per memory subprocess"
    )
    parser.add_argument(
        "--amp-accuracy",
        type=int,
        default=None,
        metavar="N",
        help="COCO AP of bf16 detections against fp32 ones on N images (default: 4 with "
        "--amp, else 0); needs pycocotools",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def _log(message: str) -> None:
    print(message, flush=True)


def _variants(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[str]:
    """The variants to time: the requested ones, less ``d2`` where detectron2 is missing."""
    variants = args.variants or (
        ["d2", "ours-fast", "ours-fast-bf16"] if args.amp else ["d2", "ours", "ours-fast"]
    )
    if not detectron2_available() and "d2" in variants:
        variants = [v for v in variants if v != "d2"]
        print(
            "# detectron2 is not importable here: timing our variants only (no ratios). "
            "Run with a Python in which detectron2 is installed to compare."
        )
    if not variants:
        parser.error("no variant left to time")
    return variants


def _time_mode(
    args: argparse.Namespace,
    mode: str,
    depth: int,
    variants: Sequence[str],
    state: Dict[str, torch.Tensor],
    images: Sequence[Dict[str, Any]],
    repeats: int,
    tmp: str,
) -> List[Row]:
    """Rows of one mode for one depth, with their peak memory unless ``--no-memory``."""
    if mode == "predictor":
        from .predictor import time_predictors

        rows, _ = time_predictors(
            depth, variants, state, args.images, repeats, tmp, _log, test_size_overrides(args)
        )
        return rows  # whole predictors: memory is measured for the tensor modes only
    rows = time_variants(depth, mode, variants, state, images, repeats, _log, args.mask)
    if not args.no_memory:
        for row in rows:
            spec = {
                "weights": os.path.join(tmp, f"R{depth}.pth"),
                "images": os.path.join(tmp, "images.pt"),
                "depth": depth,
                "variant": row.variant,
                "mode": mode,
                "threads": args.threads,
                "mask": args.mask,
            }
            row.memory = measure_memory(spec, args.memory_timeout)
            _log(f"  {row.model} {mode:9s} {row.variant:15s} peak memory {row.memory}")
    return rows


def _print_results(rows: Sequence[Row], variants: Sequence[str], accuracy: Dict[int, Any]) -> None:
    print()
    print(format_table(rows))
    print()
    for variant in variants:
        print(f"- {variant}: {VARIANT_DESCRIPTIONS[variant]}")
    for depth, acc in accuracy.items():
        scores = ", ".join(f"{k}: {v:.4f}" for k, v in acc.items() if isinstance(v, float))
        print(
            f"- R{depth}-C4 accuracy, COCO AP@[.5:.95] against our fp32 detections "
            f"on {acc['images']} images "
            f"of {acc['image_size'][0]}x{acc['image_size'][1]}: {scores}"
        )
    print(f"\n# load average at the end: {load_average()}")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_WORKER_FLAG]:
        result = memory_worker(json.loads(argv[1]))
        print(_RESULT_MARK + json.dumps(result), flush=True)
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    depths = args.depth or ([50] if args.amp else [50, 101])
    variants = _variants(args, parser)
    h, w = args.image_size
    train_repeats = args.train_repeats if args.train_repeats is not None else min(3, args.repeats)
    if min(args.repeats, train_repeats) < 1:
        parser.error("--repeats and --train-repeats must be >= 1")
    if args.mask and "predictor" in args.modes:
        parser.error("--mask times the inference and train modes only, not predictor")
    print(f"# detector benchmark: {environment()}")
    print(
        f"# images {h}x{w}, rounds: {args.repeats} inference, {train_repeats} training; variants "
        f"{' '.join(variants)}{'; Mask R-CNN' if args.mask else ''}; "
        f"load average {load_average()}\n"
    )
    images = make_images((h, w))
    rows: List[Row] = []
    accuracy: Dict[int, Any] = {}
    num_accuracy_images = (
        args.amp_accuracy if args.amp_accuracy is not None else (4 if args.amp else 0)
    )
    with tempfile.TemporaryDirectory(prefix="detector_bench_") as tmp:
        torch.save(images, os.path.join(tmp, "images.pt"))
        for depth in depths:
            start = time.perf_counter()
            state = sane_random_weights(depth, images, mask=args.mask)
            torch.save(state, os.path.join(tmp, f"R{depth}.pth"))
            _log(f"R{depth}-C4: weights calibrated in {time.perf_counter() - start:.1f}s")
            for mode in args.modes:
                repeats = train_repeats if mode == "train" else args.repeats
                rows += _time_mode(args, mode, depth, variants, state, images, repeats, tmp)
            if num_accuracy_images > 0:
                try:
                    accuracy[depth] = amp_accuracy(
                        depth, state, (h, w), num_accuracy_images, _log, args.mask
                    )
                except ImportError as e:
                    print(f"  bf16 accuracy not measured: {e}")
            del state
            gc.collect()
    _print_results(rows, variants, accuracy)
    if args.json:
        result = {
            "environment": environment(),
            "argv": argv,
            "rows": [asdict(r) for r in rows],
            "amp_accuracy": accuracy,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark mode ``predictor`` of ``tools/benchmark.py detector``: whole photos of different sizes
through each library's ``DefaultPredictor`` (resize, normalisation, model, rescaled detections),
as a user runs them, instead of one fixed 600x800 tensor.

    python tools/benchmark.py detector --modes predictor [--images FILE_OR_DIR ...]

Images: ``--images`` (files or folders of .jpg/.png), else scikit-image's sample photos where
scikit-image is installed (``pip install scikit-image``: coffee, astronaut, chelsea, rocket, the
Hubble deep field; 300x451 to 872x1000 pixels), else synthetic shapes scenes of several sizes.
Each predictor resizes them as its config says (``INPUT.MIN_SIZE_TEST`` 800, ``MAX_SIZE_TEST``
1333: 800x800 to 800x1203). Weights: the calibrated random R{depth}-C4 weights of the other modes,
written to a ``.pth`` file and loaded through each predictor's own checkpointer.

Variants: ``d2`` detectron2's ``DefaultPredictor``; ``ours`` ours with ``MODEL.FAST_PATH False``;
``ours-fast`` ours as configured by default (``MODEL.FAST_PATH``: ``prepare_model(...,
"inference")``); ``ours-fast-bf16`` the same with ``TEST.AMP.ENABLED True`` and
``TEST.AMP.DTYPE bfloat16``. Timing: every round runs every image through every variant, in an
order rotated from round to round; reported per variant are the median seconds per image and
the median over (round, image) of the time ratio to detectron2 on the same image.
"""

from __future__ import annotations

import glob
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SKIMAGE_PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "hubble_deep_field")
SYNTHETIC_SIZES = ((480, 640), (600, 800), (427, 640), (800, 1200), (512, 512))


def load_images(paths: Sequence[str]) -> Tuple[List[Tuple[str, np.ndarray]], str]:
    """``[(name, HxWx3 uint8 BGR)]`` and where they came from (see the module docstring)."""
    import cv2

    if paths:
        files: List[str] = []
        for path in paths:
            if os.path.isdir(path):
                files += sorted(
                    f
                    for f in glob.glob(os.path.join(path, "*"))
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                )
            else:
                files.append(path)
        images = []
        for f in files:
            img = cv2.imread(f, cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"--images: cannot read {f!r} as an image")
            images.append((os.path.basename(f), img))
        if not images:
            raise FileNotFoundError(
                f"--images: no {'/'.join(IMAGE_EXTENSIONS)} file in {list(paths)}"
            )
        return images, "given files"
    try:
        import skimage.data
    except ImportError:
        from ..data.shapes import render_detection_image

        return (
            [
                (f"shapes {h}x{w}", render_detection_image(100 + i, h, w)[0])
                for i, (h, w) in enumerate(SYNTHETIC_SIZES)
            ],
            "synthetic shapes scenes (pip install scikit-image for real photos)",
        )
    return (
        [
            (name, np.ascontiguousarray(getattr(skimage.data, name)()[:, :, ::-1]))
            for name in SKIMAGE_PHOTOS
        ],
        "scikit-image sample photos",
    )


def build_predictor(
    variant: str, depth: int, weights_path: str, test_sizes: Sequence[str] = ()
) -> Callable[[np.ndarray], Any]:
    """The ``DefaultPredictor`` of ``variant`` with the weights at ``weights_path``;
    ``test_sizes``: config overrides of ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``."""
    from .detector import d2_config, our_config

    overrides = ["MODEL.WEIGHTS", weights_path, *test_sizes]
    if variant == "d2":
        from detectron2.engine import DefaultPredictor as D2Predictor

        cfg = d2_config(depth)
        cfg.merge_from_list(overrides)
        return D2Predictor(cfg)
    from ..engine.predictor import DefaultPredictor

    cfg = our_config(depth)
    cfg.merge_from_list(overrides)
    cfg.MODEL.FAST_PATH = variant.startswith("ours-fast")
    if variant.endswith("bf16"):
        cfg.merge_from_list(["TEST.AMP.ENABLED", "True", "TEST.AMP.DTYPE", "bfloat16"])
    return DefaultPredictor(cfg)


Times = Dict[str, List[List[float]]]  # variant -> [round][image] seconds


def _time_rounds(
    predictors: Dict[str, Callable[[np.ndarray], Any]],
    images: Sequence[Tuple[str, np.ndarray]],
    repeats: int,
    log: Callable[[str], None],
) -> Tuple[Times, Dict[str, List[Any]]]:
    """Every image through every predictor per round, in an order rotated from round to round;
    the times and each predictor's outputs of the last round."""
    variants = list(predictors)
    times: Times = {v: [] for v in variants}
    outputs: Dict[str, List[Any]] = {}
    for r in range(repeats):
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            per_image, outputs[variant] = [], []
            for _, img in images:
                t0 = time.perf_counter()
                outputs[variant].append(predictors[variant](img))
                per_image.append(time.perf_counter() - t0)
            times[variant].append(per_image)
        log(
            f"  predictor round {r + 1}/{repeats}: "
            + ", ".join(f"{v} {sum(times[v][-1]):.2f}s" for v in variants)
        )
    return times, outputs


def _row(depth: int, variant: str, times: Times, outputs: Dict[str, List[Any]]) -> Any:
    """The ``detector.Row`` of ``variant``: median seconds per image, ratio to detectron2 (median
    over round and image), detections matched against the reference's."""
    from .detector import Row, _match_detections

    flat = [t for per_round in times[variant] for t in per_round]
    ratio = None
    if "d2" in times:
        ratio = statistics.median(
            t / t_ref
            for run, run_ref in zip(times[variant], times["d2"])
            for t, t_ref in zip(run, run_ref)
        )
    ref = "d2" if "d2" in outputs else next(iter(outputs))
    matched = [_match_detections(a, b)[0] for a, b in zip(outputs[ref], outputs[variant])]
    dets = sum(len(o["instances"]) for o in outputs[variant])
    agreement = (
        f"{dets} dets on {len(matched)} images, "
        f"{100 * statistics.mean(matched):.0f}% of {ref}'s matched"
    )
    median = statistics.median(flat)
    return Row(depth, "predictor", variant, median, min(flat), ratio, flat, agreement=agreement)


def time_predictors(
    depth: int,
    variants: Sequence[str],
    state: Dict[str, torch.Tensor],
    image_paths: Sequence[str],
    repeats: int,
    tmp: str,
    log: Callable[[str], None],
    test_sizes: Sequence[str] = (),
) -> Tuple[List[Any], str]:
    """Rows (``detector.Row``, mode "predictor") for every variant, and the images' description."""
    if test_sizes:
        log(f"  predictor config overrides: {' '.join(test_sizes)}")
    images, source = load_images(image_paths)
    log(
        f"  predictor images ({source}): "
        + ", ".join(f"{name} {img.shape[0]}x{img.shape[1]}" for name, img in images)
    )
    weights_path = os.path.join(tmp, f"R{depth}_predictor.pth")
    torch.save({"model": state}, weights_path)
    predictors = {}
    for variant in variants:
        start = time.perf_counter()
        predictors[variant] = build_predictor(variant, depth, weights_path, test_sizes)
        predictors[variant](images[0][1])  # warm-up
        log(
            f"  R{depth}-C4 predictor {variant:15s} built + warm-up "
            f"{time.perf_counter() - start:6.1f}s"
        )
    times, outputs = _time_rounds(predictors, images, repeats, log)
    return [_row(depth, variant, times, outputs) for variant in variants], source

"""tools/train_net.py end to end with the real detector on a tiny synthetic shapes dataset (CPU).

a. 2 gloo processes give the parameters of 1 process with the same global batch;
b. a run killed with SIGKILL between two checkpoints and resumed with --resume ends with exactly
   the weights (and final evaluation) of an uninterrupted run;
c. --eval-only on the final checkpoint reproduces the final evaluation numbers exactly;
plus the run's outputs (config.yaml, env.txt, metrics.json, TensorBoard, console line, plots) and
the fail-fast checks for missing paths.

The tiny config makes the losses independent of how the global batch is split, and smooth in the
weights: square 96x96 images, no flip, FrozenBN (stem and res2 frozen, detectron2's C4 default),
one anchor per position, every anchor and every proposal used (no NMS, no top-k, no random
subsampling), no ground-truth boxes appended (the same number of RoIs per image), a fixed RoIAlign
sampling ratio. MODEL.WEIGHTS stands in for pretrained weights: the random initialization with
BatchNorm statistics measured on the data, so that FrozenBN keeps activations in range as it does
with ImageNet weights.
"""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import logging_state, restore_logging_state

from resnet_backbones.data import DatasetCatalog
from resnet_backbones.data.datasets import register_coco_instances
from resnet_backbones.data.shapes import SHAPES_CLASSES, generate_shapes_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

TINY_CONFIG = """
_BASE_: "{repo}/configs/shapes/faster_rcnn_tiny_C4.yaml"
MODEL:
  WEIGHTS: "{weights}"
  BACKBONE:
    FREEZE_AT: 2  # detectron2's C4 default: stem and res2 frozen
  RESNETS:
    NORM: "FrozenBN"
  ANCHOR_GENERATOR:
    SIZES: [[32]]
    ASPECT_RATIOS: [[1.0]]
  RPN:
    BATCH_SIZE_PER_IMAGE: 4096
    NMS_THRESH: 1.0
    PRE_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TRAIN: 1000
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    BATCH_SIZE_PER_IMAGE: 512
    PROPOSAL_APPEND_GT: False
    SCORE_THRESH_TEST: 0.0
  ROI_BOX_HEAD:
    POOLER_SAMPLING_RATIO: 2
INPUT:
  MIN_SIZE_TRAIN: (96,)
  MAX_SIZE_TRAIN: 96
  MIN_SIZE_TEST: 96
  MAX_SIZE_TEST: 96
  RANDOM_FLIP: "none"
DATASETS:
  TRAIN: ("rbtest_shapes_train",)
  TEST: ("rbtest_shapes_val",)
DATALOADER:
  NUM_WORKERS: 0
  ASPECT_RATIO_GROUPING: False
SOLVER:
  IMS_PER_BATCH: 2
  BASE_LR: 0.005
  STEPS: (4,)
  MAX_ITER: 6
  WARMUP_ITERS: 2
  CHECKPOINT_PERIOD: 2
TEST:
  EVAL_PERIOD: 0
  DETECTIONS_PER_IMAGE: 20
SEED: 7
"""

# Runs train_net in a subprocess with the test datasets registered (module level: spawned workers
# run it too), optionally killing itself with SIGKILL after an iteration.
DRIVER = """
import os, signal, sys
sys.path.insert(0, {tools!r})
from resnet_backbones.data import DatasetCatalog
from resnet_backbones.data.datasets import register_coco_instances
for split in ("train", "val"):
    name = "rbtest_shapes_" + split
    if name not in DatasetCatalog:
        register_coco_instances(
            name, {meta!r}, os.path.join({root!r}, "annotations", "instances_%s.json" % split),
            os.path.join({root!r}, split),
        )
import train_net
from resnet_backbones.engine.hooks import CallbackHook

KILL_AT = int(os.environ.get("RBTEST_SIGKILL_AT", "-1"))
if KILL_AT >= 0:
    build_hooks = train_net.Trainer.build_hooks
    def _with_kill(self):
        def kill(trainer):
            if trainer.iter == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
        return build_hooks(self) + [CallbackHook(after_step=kill)]
    train_net.Trainer.build_hooks = _with_kill

if __name__ == "__main__":
    sys.exit(train_net.invoke_main(sys.argv[1:]))
"""


def _meta():
    return {
        "thing_classes": list(SHAPES_CLASSES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPES_CLASSES))},
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    saved = logging_state()
    root = tmp_path_factory.mktemp("rbtest")
    shapes = root / "shapes"
    generate_shapes_dataset(
        shapes,
        num_train=8,
        num_val=4,
        seed=0,
        num_cls_train=0,
        num_cls_val=0,
        min_size=96,
        max_size=96,
    )
    for split in ("train", "val"):
        name = f"rbtest_shapes_{split}"
        if name not in DatasetCatalog:
            register_coco_instances(
                name,
                _meta(),
                str(shapes / "annotations" / f"instances_{split}.json"),
                str(shapes / split),
            )
    weights = root / "init.pth"
    cfg_file = root / "tiny.yaml"
    cfg_file.write_text(TINY_CONFIG.format(repo=REPO, weights=weights))
    _calibrated_init(str(cfg_file), str(weights))
    driver = root / "driver.py"
    driver.write_text(
        DRIVER.format(tools=os.path.join(REPO, "tools"), meta=_meta(), root=str(shapes))
    )
    spec = importlib.util.spec_from_file_location("rb_train_net_under_test", TRAIN_NET)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    yield {"root": root, "cfg": str(cfg_file), "driver": str(driver), "train_net": train_net}
    restore_logging_state(saved)


def _calibrated_init(cfg_file, path):
    """Random weights plus (damped) BatchNorm statistics of a few training batches, as a
    checkpoint."""
    from resnet_backbones.config import get_cfg
    from resnet_backbones.data import build_detection_train_loader
    from resnet_backbones.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(cfg_file)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.NORM = "BN"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg).train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # plain average over the batches
        batches = iter(build_detection_train_loader(cfg))
        with torch.no_grad():
            for _ in range(4):
                model(next(batches))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            # damped: at least 3x the layer's mean variance, which keeps this random network well
            # conditioned (without it, float rounding noise grows by 1e3-1e4 through its gradients)
            m.running_var.clamp_(min=3.0 * m.running_var.mean().item())
    torch.save({"model": model.state_dict()}, path)


class one_thread:
    """Bitwise-reproducible CPU math: the same single thread in every process that is compared."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _args(env, out, *extra, opts=()):
    argv = ["--config-file", env["cfg"], *extra, "OUTPUT_DIR", str(out), *opts]
    return env["train_net"].default_argument_parser().parse_args(argv)


def _subprocess(env, out, *extra, opts=(), kill_at=None):
    e = dict(os.environ, OMP_NUM_THREADS="1")
    if kill_at is not None:
        e["RBTEST_SIGKILL_AT"] = str(kill_at)
    cmd = [
        sys.executable,
        env["driver"],
        "--config-file",
        env["cfg"],
        *extra,
        "OUTPUT_DIR",
        str(out),
        *opts,
    ]
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=600)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_results(a, b):
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys()
        for k in a[task]:
            x, y = a[task][k], b[task][k]
            assert x == y or (math.isnan(x) and math.isnan(y)), (task, k, x, y)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(env, tmp_path):
    tn = env["train_net"]
    opts = ("SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()")
    out1, out2 = tmp_path / "one", tmp_path / "two"
    cfg = tn.setup(_args(env, out1, opts=opts))
    trainer = tn.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    init = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()

    proc = _subprocess(env, out2, "--num-gpus", "2", opts=opts)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out2 / "log.txt.rank1").exists()  # the second process really ran

    one, two = _weights(out1 / "model_final.pth"), _weights(out2 / "model_final.pth")
    assert one.keys() == two.keys()
    updated = 0
    for k in one:
        if not one[k].is_floating_point():
            assert torch.equal(one[k], two[k]), k
            continue
        # the parameters agree within 1e-5 (relative) ...
        rel = ((one[k] - two[k]).norm() / one[k].norm().clamp_min(1e-12)).item()
        assert rel <= 1e-5, (k, rel)
        # ... and so do the updates themselves (up to 10% of the weights here), within 2%: a wrong
        # data order, summed instead of averaged gradients or a missed step would be off by tens of
        # percent
        d1, d2 = one[k] - init[k], two[k] - init[k]
        if d1.norm() > 0:
            updated += 1
            upd = ((d1 - d2).norm() / d1.norm()).item()
            assert upd <= 2e-2, (k, upd)
    assert updated > 20


@pytest.mark.slow
def test_sigkill_resume_and_eval_only_are_exact(env, tmp_path):
    tn = env["train_net"]
    full, killed, evald = tmp_path / "full", tmp_path / "killed", tmp_path / "eval"

    with one_thread():
        final_results = tn.main(_args(env, full))
    assert final_results and "bbox" in final_results
    assert not math.isnan(final_results["bbox"]["AP"])  # there are detections to compare

    # a second run killed (SIGKILL) after iteration 2: between the checkpoints of iterations 1 and 3
    proc = _subprocess(env, killed, kill_at=2)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (killed / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (killed / "model_0000003.pth").exists() and not (killed / "model_final.pth").exists()
    assert not [n for n in os.listdir(killed) if n.endswith(".tmp")]

    with one_thread():
        resumed_results = tn.main(_args(env, killed, "--resume"))
    a, b = _weights(full / "model_final.pth"), _weights(killed / "model_final.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    _same_results(resumed_results, final_results)
    ckpt = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 5 and ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6

    # c. --eval-only on the final checkpoint: the same numbers as the evaluation after training
    with one_thread():
        eval_results = tn.main(
            _args(env, evald, "--eval-only", opts=("MODEL.WEIGHTS", str(full / "model_final.pth")))
        )
    _same_results(eval_results, final_results)

    # the run's records
    names = set(os.listdir(full))
    assert {
        "config.yaml",
        "env.txt",
        "log.txt",
        "metrics.json",
        "last_checkpoint",
        "model_0000001.pth",
        "model_0000003.pth",
        "model_final.pth",
    } <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    lines = [json.loads(text) for text in (full / "metrics.json").read_text().splitlines()]
    train_line = [entry for entry in lines if "total_loss" in entry][-1]
    assert train_line["iteration"] == 5
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "lr", "data_time"} <= set(
        train_line
    )
    eval_line = [entry for entry in lines if any(k.startswith("bbox/") for k in entry)][-1]
    for k, v in final_results["bbox"].items():
        if not math.isnan(v):
            assert eval_line[f"bbox/{k}"] == v
    log = (full / "log.txt").read_text()
    line = [text for text in log.splitlines() if "iter: 5" in text][-1]
    for field in (
        "eta:",
        "loss_cls:",
        "loss_box_reg:",
        "loss_rpn_cls:",
        "time:",
        "data_time:",
        "lr:",
        "max_mem:",
    ):
        assert field in line, (field, line)
    assert "Environment info" in log

    plot = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "plot_metrics.py"), str(full)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plot.returncode == 0, plot.stderr
    for png in ("loss.png", "lr.png", "ap.png"):
        assert (full / "plots" / png).stat().st_size > 1000


def test_missing_paths_fail_before_any_process_starts(env, tmp_path, capsys):
    tn = env["train_net"]
    out = tmp_path / "never"
    code = tn.invoke_main(
        [
            "--config-file",
            env["cfg"],
            "--num-gpus",
            "2",
            "OUTPUT_DIR",
            str(out),
            "MODEL.WEIGHTS",
            str(tmp_path / "missing" / "R-101.pkl"),
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert code == 2
    assert str(tmp_path / "missing" / "R-101.pkl") in capsys.readouterr().err
    assert not out.exists()  # nothing started, nothing written

    name = "rbtest_missing_train"
    if name not in DatasetCatalog:
        register_coco_instances(
            name, _meta(), str(tmp_path / "nowhere" / "instances.json"), str(tmp_path / "nowhere")
        )
    code = tn.invoke_main(
        ["--config-file", env["cfg"], "OUTPUT_DIR", str(out), "DATASETS.TRAIN", f"('{name}',)"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "instances.json") in err and name in err
    assert not out.exists()

    code = tn.invoke_main(
        ["--config-file", env["cfg"], "OUTPUT_DIR", str(out), "DATASETS.TEST", "('no_such_set',)"]
    )
    assert code == 2 and "no_such_set" in capsys.readouterr().err

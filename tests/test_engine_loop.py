"""The training loop, hooks, writers and checkpoints, on a tiny stand-in model (fast, in-process).

The detector itself is exercised end to end in test_engine_train_net.py.
"""

import json
import logging
import os
import platform
import re
import signal
from itertools import count

import numpy as np
import pytest
import torch
from helpers import logging_state, restore_logging_state
from torch import nn

from resnet_backbones.checkpoint.atomic import AtomicCheckpointer, atomic_torch_save
from resnet_backbones.config import get_cfg
from resnet_backbones.engine import hooks
from resnet_backbones.engine.defaults import (
    DefaultTrainer,
    default_argument_parser,
    default_setup,
    revert_sync_batchnorm,
    setup_logger,
)
from resnet_backbones.engine.train_loop import AMPTrainer, SimpleTrainer
from resnet_backbones.utils.env import get_rng_states, seed_all_rng, set_rng_states
from resnet_backbones.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    get_event_storage,
)


@pytest.fixture(autouse=True, scope="module")
def restore_logging():
    """The trainer configures logging (as detectron2's does); give other tests theirs back."""
    saved = logging_state()
    yield
    restore_logging_state(saved)


# ----------------------------------------------------------------------------- stand-ins
class ToyModel(nn.Module):
    """Losses depend on the batch, on the global torch RNG (noise) and on the weights."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.bn = nn.BatchNorm1d(4)
        self.nan_at = nan_at

    def forward(self, batch):
        x = torch.stack([torch.as_tensor(b["x"]) for b in batch])
        y = torch.stack([torch.as_tensor(b["y"]) for b in batch])
        if not self.training:
            return self.lin(self.bn(x)).squeeze(1)
        pred = self.lin(self.bn(x) + 0.01 * torch.randn(x.shape)).squeeze(1)
        loss_l1 = (pred - y).abs().mean() * 0.1
        if self.nan_at is not None and get_event_storage().iter == self.nan_at:
            loss_l1 = loss_l1 * float("nan")
        return {"loss_mse": ((pred - y) ** 2).mean(), "loss_l1": loss_l1}


class ToyLoader:
    """Endless batches: a deterministic function of (seed, position) plus
    np.random 'augmentation'."""

    def __init__(self, batch_size, seed):
        self.batch_size, self.seed = batch_size, seed

    def __iter__(self):
        for pos in count():
            batch = []
            for j in range(self.batch_size):
                g = np.random.default_rng([self.seed, pos, j])
                x = (
                    g.normal(size=4).astype(np.float32)
                    + np.random.normal(size=4).astype(np.float32) * 0.1
                )
                batch.append({"x": torch.from_numpy(x), "y": torch.tensor(float(x.sum() > 0))})
            yield batch


class ToyTrainer(DefaultTrainer):
    nan_at = None

    @classmethod
    def build_model(cls, cfg):
        return ToyModel(cls.nan_at)

    @classmethod
    def build_train_loader(cls, cfg):
        return ToyLoader(cfg.SOLVER.IMS_PER_BATCH, cfg.SEED)

    @classmethod
    def build_checkpointer(cls, cfg, model, **checkpointables):
        return AtomicCheckpointer(model, cfg.OUTPUT_DIR, **checkpointables)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        was = model.training
        model.eval()
        with torch.no_grad():
            x = torch.linspace(-1, 1, 8).reshape(2, 4)
            out = model([{"x": x[0], "y": torch.tensor(0.0)}, {"x": x[1], "y": torch.tensor(1.0)}])
        model.train(was)
        torch.rand(3)  # evaluation may draw random numbers: training must not notice
        return {"toy": {"AP": float(out.sum()) * 10, "AP50": float(out.mean())}}


def make_cfg(out_dir, **solver):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.SEED = 3
    s = cfg.SOLVER
    s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, s.STEPS = 4, 0.1, 10, (6,)
    s.WARMUP_ITERS, s.CHECKPOINT_PERIOD = 2, 4
    for k, v in solver.items():
        setattr(s, k, v)
    cfg.TEST.EVAL_PERIOD = 5
    return cfg


def run(cfg, resume=False, extra_hooks=(), trainer_cls=ToyTrainer):
    setup_logger(cfg.OUTPUT_DIR)  # what default_setup does
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    trainer = trainer_cls(cfg)
    trainer.register_hooks(list(extra_hooks))
    trainer.resume_or_load(resume=resume)
    results = trainer.train()
    return trainer, results


def state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


class Crash(hooks.HookBase):
    def __init__(self, at, how="raise"):
        self.at, self.how = at, how

    def after_step(self):
        if self.trainer.iter == self.at:
            if self.how == "raise":
                raise RuntimeError(f"simulated crash at {self.at}")
            os.kill(os.getpid(), signal.SIGTERM)


# ----------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    trainer, results = run(make_cfg(out))
    return out, state(trainer), results, trainer


def test_complete_run_outputs(reference):
    out, _, results, trainer = reference
    assert trainer.finished and trainer.iter == 10
    assert results == trainer._last_eval_results and set(results["toy"]) == {"AP", "AP50"}
    names = sorted(os.listdir(out))
    assert {
        "model_0000003.pth",
        "model_0000007.pth",
        "model_final.pth",
        "last_checkpoint",
        "metrics.json",
    } <= set(names)
    assert "model_0000009.pth" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert any(n.startswith("events.out.tfevents") for n in names)
    with open(out / "last_checkpoint") as f:
        assert f.read() == "model_final.pth"
    ckpt = torch.load(out / "model_final.pth", weights_only=True)  # loadable without pickled code
    assert ckpt["iteration"] == 9 and ckpt["trainer"]["iteration"] == 9
    tr = ckpt["trainer"]
    assert {"optimizer", "rng_states"} <= set(tr["_trainer"]) | set(tr)
    assert tr["hooks"]["LRScheduler"]["last_epoch"] == 10 and len(tr["rng_states"]) == 1
    lines = read_metrics(out)
    iters = [entry["iteration"] for entry in lines]
    assert iters == sorted(set(iters))  # one line per logged iteration
    last_train = [entry for entry in lines if "total_loss" in entry][-1]
    assert last_train["iteration"] == 9
    assert {"loss_mse", "loss_l1", "lr", "data_time", "time"} <= set(last_train)
    assert last_train["total_loss"] == pytest.approx(
        last_train["loss_mse"] + last_train["loss_l1"], rel=0.5
    )
    evals = [entry for entry in lines if "toy/AP" in entry]
    assert [entry["iteration"] for entry in evals] == [
        4,
        10,
    ]  # TEST.EVAL_PERIOD 5 (after iteration 4) and at the end
    assert evals[-1]["toy/AP"] == results["toy"]["AP"]


def test_lr_schedule_reaches_the_optimizer(reference):
    _, _, _, trainer = reference
    # 10 iterations, step at 6: 0.1 * 0.1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_console_line(tmp_path):
    cfg = make_cfg(tmp_path, MAX_ITER=6, STEPS=(4,))
    cfg.TEST.EVAL_PERIOD = 0
    run(cfg)
    with open(tmp_path / "log.txt") as f:  # the console handler's twin
        line = [text for text in f.read().splitlines() if "iter: 5" in text][-1]
    for field in (
        "eta:",
        "total_loss:",
        "loss_mse:",
        "loss_l1:",
        "time:",
        "data_time:",
        "lr:",
        "max_mem:",
    ):
        assert field in line, (field, line)


def test_crash_then_resume_equals_uninterrupted(reference, tmp_path):
    _, ref_state, ref_results, _ = reference
    cfg = make_cfg(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, extra_hooks=[Crash(6)])
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_0000003.pth"
    trainer, results = run(cfg, resume=True)
    assert trainer.start_iter == 4
    assert_same_state(state(trainer), ref_state)
    assert results == ref_results
    iters = [entry["iteration"] for entry in read_metrics(tmp_path)]
    assert iters == sorted(
        set(iters)
    )  # lines of the recomputed iterations were replaced, not duplicated


def test_sigterm_saves_a_checkpoint_and_resume_continues(reference, tmp_path):
    _, ref_state, ref_results, _ = reference
    cfg = make_cfg(tmp_path)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(hooks.TrainingInterrupted) as info:
        run(cfg, extra_hooks=[Crash(5, how="sigterm")])
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored
    # the signal arrived after iteration 5's check (the hook runs last): iteration 6 is finished,
    # then saved
    assert info.value.exit_code == 128 + signal.SIGTERM and info.value.iteration == 6
    assert info.value.checkpoint.endswith("model_0000006.pth")
    with open(tmp_path / "last_checkpoint") as f:
        assert f.read() == "model_0000006.pth"
    assert not os.path.exists(tmp_path / "model_final.pth")
    trainer, results = run(cfg, resume=True)
    assert trainer.start_iter == 7
    assert_same_state(state(trainer), ref_state)
    assert results == ref_results


def test_random_seed_is_saved_and_reused_on_resume(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.SEED = -1  # a random data order: it must still be the same after resuming
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, extra_hooks=[Crash(4)])
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=True)["trainer"]["data_seed"]
    assert saved >= 0
    seed_all_rng(12345)  # a different draw for the resumed run's own random seed
    trainer = ToyTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.cfg.SEED == saved and trainer.data_loader.seed == saved


def test_non_finite_loss_names_iteration_and_terms(tmp_path):
    class NanTrainer(ToyTrainer):
        nan_at = 3

    with pytest.raises(FloatingPointError) as info:
        run(make_cfg(tmp_path), trainer_cls=NanTrainer)
    msg = str(info.value)
    assert "iteration=3" in msg and "loss_l1=nan" in msg and "loss_mse" in msg


def test_atomic_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ck = AtomicCheckpointer(model, str(tmp_path))
    ck.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save("model_0000003", iteration=3)
    with pytest.raises(OSError):
        ck.save("model_0000001", iteration=1)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000001.pth",
    ]  # no temp file left
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert ck.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    umask = os.umask(0)
    os.umask(umask)
    assert (
        os.stat(tmp_path / "model_0000001.pth").st_mode & 0o777 == 0o666 & ~umask
    )  # not mkstemp's 0600
    atomic_torch_save({"a": 1}, str(tmp_path / "x.pth"))
    assert torch.load(tmp_path / "x.pth") == {"a": 1}


def test_rng_states_roundtrip():
    seed_all_rng(5)
    s = get_rng_states()
    a = (np.random.rand(), torch.rand(1).item(), __import__("random").random())
    set_rng_states(s)
    assert (np.random.rand(), torch.rand(1).item(), __import__("random").random()) == a


def test_event_storage_and_json_writer(tmp_path):
    path = tmp_path / "m.json"
    w = JSONWriter(str(path), window_size=3)
    with EventStorage(start_iter=0) as s:
        for i in range(5):
            s.iter = i
            s.put_scalar("loss", float(i))
            s.put_scalar("lr", 0.1 * i, smoothing_hint=False)
            if i == 2:
                with s.name_scope("bbox"):
                    s.put_scalar("AP", 50.0, smoothing_hint=False)
            if i in (2, 4):
                w.write()
        assert s.count_samples("loss", 3) == 3
        assert s.latest_with_smoothing_hint(3)["loss"] == (3.0, 4)  # median of 2, 3, 4
        assert s.latest()["bbox/AP"] == (50.0, 2)
        with pytest.raises(ValueError):
            s.put_scalar("lr", 1.0)  # the hint of a name cannot change
    w.close()
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert [entry["iteration"] for entry in lines] == [2, 4]
    assert lines[0] == {"iteration": 2, "loss": 1.0, "lr": pytest.approx(0.2), "bbox/AP": 50.0}


def test_metric_printer_line(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("resnet_backbones"), "propagate", True)  # to caplog
    printer = CommonMetricPrinter(max_iter=100)
    with (
        EventStorage(0) as s,
        caplog.at_level(logging.INFO, logger="resnet_backbones.utils.events"),
    ):
        for i in range(3):
            s.iter = i
            s.put_scalars(total_loss=1.0, loss_cls=0.5, time=0.2, data_time=0.01)
            s.put_scalar("lr", 0.02, smoothing_hint=False)
        printer.write()
    msg = caplog.records[-1].getMessage()
    for field in (
        "eta: 0:00:19",
        "iter: 2",
        "total_loss: 1",
        "loss_cls: 0.5",
        "time: 0.2000",
        "data_time: 0.0100",
        "lr: 0.02",
        "max_mem:",
    ):
        assert field in msg, (field, msg)


def test_amp_trainer_cpu_bfloat16_and_fp16_refused():
    model = ToyModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA"):
        AMPTrainer(model, ToyLoader(2, 0), opt)  # float16 autocast needs CUDA
    trainer = AMPTrainer(model, ToyLoader(2, 0), opt, precision="bfloat16")
    trainer.train(0, 2)
    assert "grad_scaler" in trainer.state_dict() and trainer.iter == 2


def test_simple_trainer_rejects_eval_mode():
    model = ToyModel()
    t = SimpleTrainer(model, ToyLoader(2, 0), torch.optim.SGD(model.parameters(), lr=0.1))
    model.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        t.train(0, 1)


def test_revert_sync_batchnorm_keeps_state():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))
    net[1].running_mean.fill_(0.5)
    net[1].weight.data.fill_(2.0)
    out = revert_sync_batchnorm(net)
    assert type(out[1]) is nn.BatchNorm2d
    assert torch.equal(out[1].running_mean, torch.full((4,), 0.5)) and torch.equal(
        out[1].weight, torch.full((4,), 2.0)
    )
    out.train()(torch.randn(2, 3, 5, 5))  # runs on CPU without a process group


def test_sync_bn_on_cpu_with_processes_falls_back_to_bn(monkeypatch, caplog):
    from resnet_backbones.engine import ddp

    monkeypatch.setattr(logging.getLogger("resnet_backbones"), "propagate", True)  # to caplog
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))
    assert ddp.adapt_sync_bn(net, "cpu") is net and isinstance(net[1], nn.SyncBatchNorm)  # no group
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(ddp.comm, "get_world_size", lambda: 2)
    assert isinstance(ddp.adapt_sync_bn(net, "cuda")[1], nn.SyncBatchNorm)  # CUDA keeps SyncBN
    with caplog.at_level(logging.WARNING, logger="resnet_backbones.engine.ddp"):
        out = ddp.adapt_sync_bn(net, "cpu")
    assert type(out[1]) is nn.BatchNorm2d and "only implemented for CUDA" in caplog.text


def test_argument_parser_flags():
    p = default_argument_parser()
    a = p.parse_args(["--config", "x.yaml", "--num-gpus", "2", "--resume", "SOLVER.BASE_LR", "0.1"])
    assert a.config_file == "x.yaml" and a.num_gpus == 2 and a.resume and not a.eval_only
    assert a.opts == ["SOLVER.BASE_LR", "0.1"] and a.dist_url == "auto"
    a = p.parse_args(
        [
            "--config-file",
            "y.yaml",
            "--eval-only",
            "--num-machines",
            "2",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://h:1234",
        ]
    )
    assert (a.config_file, a.eval_only, a.num_machines, a.machine_rank, a.dist_url) == (
        "y.yaml",
        True,
        2,
        1,
        "tcp://h:1234",
    )


def test_default_setup_writes_config_and_env(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = 11
    cfg.SOLVER.BASE_LR = 0.123
    args = default_argument_parser().parse_args([])
    default_setup(cfg, args)
    again = get_cfg()
    again.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    assert again.SOLVER.BASE_LR == 0.123 and again.SEED == 11
    env = (tmp_path / "out" / "env.txt").read_text()
    versions = dict(re.findall(r"^(PyTorch|numpy|Python) {2,}(\S+)", env, re.M))
    assert versions == {
        "PyTorch": torch.__version__,
        "numpy": np.__version__,
        "Python": platform.python_version(),
    }
    assert (tmp_path / "out" / "log.txt").exists()
    a = torch.rand(1)
    seed_all_rng(11)
    assert torch.equal(torch.rand(1), a)  # seeded with SEED + rank


# ---------------------------------------------------------------------------- bad runs lose nothing
class Snapshot(hooks.HookBase):
    """The model's state after each iteration, kept in ``states[iteration]``."""

    def __init__(self):
        self.states = {}

    def after_step(self):
        self.states[self.trainer.iter] = state(self.trainer)


def _trainer(cfg, trainer_cls=ToyTrainer, resume=False):
    setup_logger(cfg.OUTPUT_DIR)
    seed_all_rng(cfg.SEED)
    trainer = trainer_cls(cfg)
    snap = Snapshot()
    trainer.register_hooks([snap])
    trainer.resume_or_load(resume=resume)
    return trainer, snap


def test_nan_loss_keeps_the_last_good_checkpoint(tmp_path):
    class NanTrainer(ToyTrainer):
        nan_at = 5  # checkpoints after iterations 3 and 7 (CHECKPOINT_PERIOD 4)

    cfg = make_cfg(tmp_path)
    trainer, snap = _trainer(cfg, NanTrainer)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    msg = str(info.value)
    assert msg.startswith(
        "Loss became infinite or NaN at iteration=5: loss_l1=nan (rank 0). "
        "Loss terms (rank 0): loss_mse="
    )
    assert msg.endswith(
        ", loss_l1=nan. Training stopped before the weights were updated "
        "(lower SOLVER.BASE_LR, check the data, or enable SOLVER.CLIP_GRADIENTS)."
    )
    weights = [k for k, _ in trainer.model.named_parameters()]
    assert weights and all(torch.equal(state(trainer)[k], snap.states[4][k]) for k in weights)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth")) == ["model_0000003.pth"]
    resumed, _ = _trainer(cfg, resume=True)
    assert resumed.start_iter == 4
    assert_same_state(state(resumed), snap.states[3])


@pytest.mark.parametrize("failing", ["checkpoint", "pointer"])
def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch, failing):
    import errno

    from resnet_backbones.checkpoint import atomic

    def full(what):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_save, real_write = torch.save, atomic.atomic_write_text

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("iteration") == 7 and failing == "checkpoint":
            f.write(b"PK\x03\x04 the first bytes of a checkpoint")
            full("checkpoint")
        return real_save(obj, f, *args, **kwargs)

    def write_text(path, text, *args, **kwargs):
        if text == "model_0000007.pth" and failing == "pointer":
            full("pointer")
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(atomic, "atomic_write_text", write_text)
    cfg = make_cfg(tmp_path)
    trainer, snap = _trainer(cfg)
    with pytest.raises(OSError) as info:
        trainer.train()
    path = tmp_path / "model_0000007.pth"
    kept = "last_checkpoint still names model_0000003.pth, which is unchanged"
    assert info.value.errno == errno.ENOSPC
    if failing == "checkpoint":
        assert str(info.value) == (
            f"[Errno {errno.ENOSPC}] No space left on device: "
            f"checkpoint {path} was not written ({kept})"
        )
        names = [n for n in os.listdir(tmp_path) if not n.startswith("events.out.tfevents")]
        assert sorted(names) == [  # no partial file left behind
            "last_checkpoint",
            "log.txt",
            "metrics.json",
            "model_0000003.pth",
        ]
    else:
        assert str(info.value) == (
            f"[Errno {errno.ENOSPC}] No space left on device: "
            f"checkpoint {path} was written, but {kept}"
        )
        assert torch.load(path, weights_only=False)["iteration"] == 7
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    resumed, _ = _trainer(cfg, resume=True)
    assert resumed.start_iter == 4
    assert_same_state(state(resumed), snap.states[3])


_KILLED_WHILE_SAVING = """
import io, os, sys, time
import torch
from torch import nn
from resnet_backbones.checkpoint.atomic import AtomicCheckpointer

out, marker = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = nn.Linear(64, 64)
ck = AtomicCheckpointer(model, out)
ck.save("model_0000001", iteration=1)
real_save = torch.save

def slow_save(obj, f, *args, **kwargs):  # half the file written, then the process is killed
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    open(marker, "w").close()
    time.sleep(600)

torch.save = slow_save
with torch.no_grad():
    model.weight.add_(1.0)
ck.save("model_0000002", iteration=2)
"""


def test_kill_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, caplog):
    import subprocess
    import sys
    import time

    out, marker = tmp_path / "out", tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WHILE_SAVING, str(out), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300  # a bound on a stuck child, not a timing check
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=60)[1].decode()[-3000:]
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    left = [
        n for n in os.listdir(out) if n.startswith(".model_0000002.pth.") and n.endswith(".tmp")
    ]
    assert sorted(os.listdir(out)) == sorted(["last_checkpoint", "model_0000001.pth", *left])
    assert len(left) == 1  # the half-written temporary file, never under the checkpoint's name
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    with caplog.at_level(logging.WARNING):
        extra = AtomicCheckpointer(model, str(out)).resume_or_load("", resume=True)
    assert extra == {"iteration": 1}
    assert_same_state(model.state_dict(), expected)
    assert f"{out}: {left[0]} left by an interrupted save; not used, safe to delete" in caplog.text


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished toy run (checkpoints of iterations 3, 7 and 9 = model_final) to damage."""
    out = tmp_path_factory.mktemp("finished")
    trainer, snap = _trainer(make_cfg(out))
    trainer.train()
    return out, snap.states


def _damaged_copy(finished_run, tmp_path):
    import shutil

    src, states = finished_run
    out = tmp_path / "out"
    shutil.copytree(src, out)
    return out, states


def test_resume_with_a_missing_last_checkpoint_lists_the_ones_that_load(finished_run, tmp_path):
    from resnet_backbones.checkpoint.atomic import ResumeError
    from resnet_backbones.engine.defaults import check_inputs_exist

    out, states = _damaged_copy(finished_run, tmp_path)
    (out / "model_final.pth").unlink()
    cfg = make_cfg(out)
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    expected = (
        f"--resume: {out}/last_checkpoint names 'model_final.pth', which does not exist. "
        f"Nothing was loaded, changed or deleted. Checkpoints in {out} that load: "
        f"model_0000007.pth (iteration 7), model_0000003.pth (iteration 3). To resume from one, "
        f"write its name into {out}/last_checkpoint "
        f"(e.g. echo model_0000007.pth > {out}/last_checkpoint); to start over, run without "
        f"--resume or with another OUTPUT_DIR."
    )
    with pytest.raises(ResumeError) as info:
        _trainer(cfg, resume=True)
    assert str(info.value) == expected
    # tools/train_net.py checks it before any process starts, with the same message
    with pytest.raises(FileNotFoundError) as info:
        check_inputs_exist(cfg, resume=True)
    assert str(info.value) == expected
    assert {n: (out / n).read_bytes() for n in os.listdir(out) if n in before} == before
    # following the advice resumes
    (out / "last_checkpoint").write_text("model_0000007.pth")
    resumed, _ = _trainer(cfg, resume=True)
    assert resumed.start_iter == 8
    assert_same_state(state(resumed), states[7])


def test_resume_with_a_corrupt_last_checkpoint_names_it(finished_run, tmp_path):
    from resnet_backbones.checkpoint.atomic import ResumeError

    out, states = _damaged_copy(finished_run, tmp_path)
    final = (out / "model_final.pth").read_bytes()
    (out / "model_final.pth").write_bytes(final[: len(final) // 2])
    (out / "model_0000007.pth").write_bytes(b"")  # unreadable too: not offered
    with pytest.raises(ResumeError) as info:
        _trainer(make_cfg(out), resume=True)
    msg = str(info.value)
    assert msg.startswith(
        f"--resume: {out}/last_checkpoint names 'model_final.pth', which cannot be read ("
    )
    assert (
        f"Nothing was loaded, changed or deleted. Checkpoints in {out} that load: "
        f"model_0000003.pth (iteration 3). To resume from one"
    ) in msg
    assert (out / "model_final.pth").read_bytes() == final[: len(final) // 2]  # left for the user
    (out / "last_checkpoint").write_text("")
    empty = f"^--resume: {out}/last_checkpoint is empty. Nothing was loaded"
    with pytest.raises(ResumeError, match=empty):
        _trainer(make_cfg(out), resume=True)

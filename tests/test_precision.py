"""Mixed precision: dtype parsing, the autocast helper, the TEST.AMP / SOLVER.AMP keys, and bfloat16
inference and training of a small C4 detector against float32.

Tolerance of bf16 against fp32 (stated, checked below): on a narrow R50-C4 with random weights of
stable statistics (FrozenBN calibrated on the test image, residual-branch gains 0.1-0.3 as in
trained ResNets), >= 80% of the fp32 detections scoring above 0.5 have a bf16 detection of the same
class with IoU >= 0.8, and their scores differ by at most 0.1; the RPN/box outputs and the losses
stay float32.
"""

import contextlib

import pytest
import torch
from helpers import calibrated_narrow_c4, scene_inputs
from helpers import narrow_c4_cfg as _cfg

from resnet_backbones import get_cfg, precision
from resnet_backbones.data.shapes import render_detection_image
from resnet_backbones.precision import (
    Bf16Speed,
    autocast_context,
    check_amp_device,
    inference_amp_dtype,
    measure_cpu_bf16_speed,
    needs_grad_scaler,
    parse_amp_dtype,
    resolve_amp_dtype,
    training_amp_dtype,
)
from resnet_backbones.structures import pairwise_iou


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "name, dtype",
    [
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
    ],
)
def test_parse_amp_dtype(name, dtype):
    assert parse_amp_dtype(name) is dtype


@pytest.mark.parametrize("bad", ["float32", "fp32", "int8", "", torch.float32, 16, None])
def test_parse_amp_dtype_rejects_with_the_accepted_values(bad):
    with pytest.raises(ValueError) as e:
        parse_amp_dtype(bad, "TEST.AMP.DTYPE")
    msg = str(e.value)
    assert "TEST.AMP.DTYPE" in msg and "bfloat16" in msg and "float16" in msg


def test_float16_on_cpu_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="bfloat16"):
        check_amp_device("cpu", torch.float16)
    with pytest.raises(ValueError, match="bfloat16"):
        autocast_context("cpu", True, "float16")
    check_amp_device("cpu", torch.bfloat16)
    check_amp_device("cuda", torch.float16)  # validated without a GPU: nothing runs
    with pytest.raises(ValueError, match="device type"):
        check_amp_device("tpu", torch.bfloat16)


def test_autocast_context():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_context("cpu", enabled=False, dtype="not-even-a-dtype"):
        assert torch.equal(a @ b, torch.mm(a, b)) and (a @ b).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")
    for device in ("cpu", torch.device("cpu")):
        with autocast_context(device, enabled=True, dtype="bf16"):
            assert (a @ b).dtype == torch.bfloat16
    assert isinstance(autocast_context("cpu", False), contextlib.nullcontext)


def test_needs_grad_scaler():
    assert needs_grad_scaler("cuda", "float16")
    assert needs_grad_scaler(torch.device("cuda:0"), torch.float16)
    assert not needs_grad_scaler("cuda", "bfloat16")
    assert not needs_grad_scaler("cpu", "bfloat16")


# ------------------------------------------------------------------------ bf16 on this CPU
@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend this CPU measured ``bf16`` GFLOP/s in bfloat16 against ``fp32`` in float32."""

    def set_speed(fp32: float, bf16: float) -> Bf16Speed:
        speed = Bf16Speed(fp32_gflops=fp32, bf16_gflops=bf16, threads=torch.get_num_threads())
        monkeypatch.setattr(precision, "measure_cpu_bf16_speed", lambda: speed)
        precision._warn_bf16_slower.cache_clear()
        return speed

    set_speed(100.0, 400.0)  # bfloat16 faster unless a test says otherwise
    yield set_speed
    precision._warn_bf16_slower.cache_clear()


def test_measure_cpu_bf16_speed_is_measured_once_per_process():
    first = measure_cpu_bf16_speed()
    assert first.fp32_gflops > 0 and first.bf16_gflops > 0
    assert first.threads == torch.get_num_threads()
    assert measure_cpu_bf16_speed() is first  # cached: measured once
    assert first.bf16_faster == (first.bf16_gflops > first.fp32_gflops)
    assert "GFLOP/s" in str(first)


def test_only_config_dtypes_offer_auto():
    """'auto' is a config value (resolved with the device); AMPTrainer's precision is a dtype."""
    with pytest.raises(ValueError) as plain:
        parse_amp_dtype("auto", "AMPTrainer precision")
    assert "expected 'bfloat16' (alias 'bf16') or 'float16'" in str(plain.value)
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE: .*expected 'auto', 'bfloat16'"):
        resolve_amp_dtype("fp32", "cpu", "TEST.AMP.DTYPE")


def test_auto_uses_bfloat16_only_where_it_is_faster(cpu_bf16):
    assert resolve_amp_dtype("auto", "cpu") is torch.bfloat16
    cpu_bf16(290.0, 165.0)  # the Intel Xeon of issue 15: avx512_bf16, no AMX
    assert resolve_amp_dtype("auto", "cpu") is None
    assert resolve_amp_dtype("", "cpu") is None  # the classification config's empty default


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp_dtype("auto", "cuda:0") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp_dtype("AUTO", "cuda") is torch.float16


def test_explicit_bfloat16_on_a_slower_cpu_warns_once_with_both_rates(cpu_bf16, caplog):
    cpu_bf16(290.0, 165.0)
    with caplog.at_level("WARNING", logger="resnet_backbones.precision"):
        assert resolve_amp_dtype("bfloat16", "cpu", "TEST.AMP.DTYPE") is torch.bfloat16
        assert resolve_amp_dtype("bf16", "cpu", "TEST.AMP.DTYPE") is torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "TEST.AMP.DTYPE" in warnings[0] and "165 GFLOP/s" in warnings[0]
    assert "290 GFLOP/s" in warnings[0] and "'auto'" in warnings[0]
    caplog.clear()
    cpu_bf16(100.0, 400.0)
    with caplog.at_level("WARNING", logger="resnet_backbones.precision"):
        resolve_amp_dtype("bfloat16", "cpu", "TEST.AMP.DTYPE")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# ------------------------------------------------------------------------------ config keys
def test_config_keys_default_off():
    cfg = get_cfg()
    assert cfg.TEST.AMP.ENABLED is False and cfg.TEST.AMP.DTYPE == "auto"
    assert cfg.SOLVER.AMP.ENABLED is False and cfg.SOLVER.AMP.DTYPE == "float16"
    assert inference_amp_dtype(cfg) is None and training_amp_dtype(cfg) is None


def test_test_amp_auto_follows_the_measurement(cpu_bf16):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "TEST.AMP.ENABLED", "True"])
    assert inference_amp_dtype(cfg) is torch.bfloat16
    cpu_bf16(290.0, 165.0)
    assert inference_amp_dtype(cfg) is None
    cfg.merge_from_list(["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "auto"])
    assert training_amp_dtype(cfg) is None


def test_config_keys_enable_and_validate(cpu_bf16):
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "TEST.AMP.ENABLED",
            "True",
            "SOLVER.AMP.ENABLED",
            "True",
            "SOLVER.AMP.DTYPE",
            "bfloat16",
        ]
    )
    assert inference_amp_dtype(cfg) is torch.bfloat16
    assert training_amp_dtype(cfg) is torch.bfloat16
    cfg.merge_from_list(["TEST.AMP.DTYPE", "float16"])
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE.*bfloat16"):
        inference_amp_dtype(cfg)
    cfg.merge_from_list(["TEST.AMP.DTYPE", "float64"])
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE"):
        inference_amp_dtype(cfg)
    cfg.merge_from_list(["SOLVER.AMP.DTYPE", "float16"])  # detectron2's default: CUDA only
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE"):
        training_amp_dtype(cfg)
    cfg.merge_from_list(["MODEL.DEVICE", "cuda", "TEST.AMP.DTYPE", "float16"])
    assert training_amp_dtype(cfg) is torch.float16 and inference_amp_dtype(cfg) is torch.float16


# ------------------------------------------------------------------------ bf16 vs fp32 detector


IMAGE = (5, 192, 256)  # (seed, height, width) of the calibration and comparison scene


@pytest.fixture(scope="module")
def tiny_model():
    return calibrated_narrow_c4(scene_inputs(IMAGE), residual_gain=(0.1, 0.3))


def _match_fraction(ref, other, score_min=0.5, iou_min=0.8):
    keep = ref.scores > score_min
    ref_boxes, ref_cls, ref_scores = ref.pred_boxes[keep], ref.pred_classes[keep], ref.scores[keep]
    assert len(ref_boxes) >= 5, "too few confident fp32 detections for a meaningful comparison"
    iou = pairwise_iou(ref_boxes, other.pred_boxes)
    iou[ref_cls[:, None] != other.pred_classes[None, :]] = 0
    best, idx = iou.max(dim=1)
    ok = best >= iou_min
    score_diff = (
        (ref_scores[ok] - other.scores[idx[ok]]).abs().max().item() if ok.any() else float("inf")
    )
    return ok.float().mean().item(), score_diff


def test_bf16_inference_matches_fp32_within_tolerance(tiny_model):
    with torch.no_grad():
        fp32 = tiny_model(scene_inputs(IMAGE))[0]["instances"]
        with autocast_context("cpu", True, "bfloat16"):
            bf16 = tiny_model(scene_inputs(IMAGE))[0]["instances"]
    # decoding, NMS and scores ran in float32
    assert bf16.pred_boxes.tensor.dtype == torch.float32 and bf16.scores.dtype == torch.float32
    frac, score_diff = _match_fraction(fp32, bf16)
    print(
        f"bf16 vs fp32: {100 * frac:.0f}% of confident fp32 detections matched, "
        f"max |dscore| {score_diff:.3f}"
    )
    assert frac >= 0.8
    assert score_diff <= 0.1


def test_rpn_outputs_and_losses_are_float32_under_autocast(tiny_model):
    model = tiny_model
    with torch.no_grad(), autocast_context("cpu", True, "bfloat16"):
        images = model.preprocess_image(scene_inputs(IMAGE))
        features = model.backbone(images.tensor)
        assert features["res4"].dtype == torch.bfloat16  # the convs did run in bf16
        proposals, _ = model.proposal_generator(images, features, None)
    assert proposals[0].proposal_boxes.tensor.dtype == torch.float32
    assert proposals[0].objectness_logits.dtype == torch.float32
    model.train()
    try:
        with autocast_context("cpu", True, "bfloat16"):
            losses = model(scene_inputs(IMAGE, with_gt=True))
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
        for k, v in losses.items():
            assert v.dtype == torch.float32 and torch.isfinite(v), k
        sum(losses.values()).backward()
        grad = model.roi_heads.res5[0].conv1.weight.grad
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_default_predictor_test_amp(tiny_model, tmp_path, cpu_bf16):
    from resnet_backbones import DefaultPredictor

    weights = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model.state_dict()}, weights)
    img, _ = render_detection_image(7, 200, 240)
    cfg = _cfg(
        ["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", 192, "INPUT.MAX_SIZE_TEST", 256]
    )
    fp32 = DefaultPredictor(cfg)
    assert fp32.autocast_dtype is None
    cfg.merge_from_list(["TEST.AMP.ENABLED", "True"])
    bf16 = DefaultPredictor(cfg)
    assert bf16.autocast_dtype is torch.bfloat16
    out32, out16 = fp32(img)["instances"], bf16(img)["instances"]
    assert out16.image_size == out32.image_size == img.shape[:2]
    assert out16.scores.dtype == torch.float32
    frac, _ = _match_fraction(out32, out16, score_min=0.3)
    assert frac >= 0.7
    cfg.merge_from_list(["TEST.AMP.DTYPE", "float16"])
    with pytest.raises(ValueError, match="bfloat16"):
        DefaultPredictor(cfg)


def test_amp_trainer_bfloat16_step_on_cpu(tiny_model):
    """SOLVER.AMP.ENABLED with SOLVER.AMP.DTYPE bfloat16 trains on the CPU through AMPTrainer
    (what DefaultTrainer / tools/train_net.py use): float32 losses, no loss scaling, weights
    move."""
    import copy

    from resnet_backbones.engine.train_loop import AMPTrainer

    cfg = _cfg(["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"])
    dtype = training_amp_dtype(cfg)
    model = copy.deepcopy(tiny_model).train()
    batches = [scene_inputs((8, 192, 256), with_gt=True)] * 2
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    trainer = AMPTrainer(model, batches, torch.optim.SGD(params, lr=1e-3), precision=dtype)
    assert not trainer.grad_scaler.is_enabled()
    trainer.train(0, 2)
    assert trainer.storage.history("total_loss").latest() > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    assert all(p.dtype == torch.float32 for p in params)


def _proposals_of(model, inputs, amp):
    """The RPN proposals of one inference (through GeneralizedRCNN.inference), fp32 or bf16
    autocast."""
    seen = []
    handle = model.proposal_generator.register_forward_hook(
        lambda m, i, out: seen.append(out[0][0])
    )
    try:
        with torch.no_grad(), autocast_context("cpu", amp, "bfloat16"):
            model(inputs)
    finally:
        handle.remove()
    return seen[0]


def test_test_amp_scope_roi_heads_keeps_fp32_proposals(tiny_model):
    """TEST.AMP.SCOPE "roi_heads" (default): the backbone and RPN run in float32 under the inference
    autocast, so the proposals equal fp32 ones exactly; "all" puts them in bf16 and they move."""
    inputs = scene_inputs((9, 192, 256))
    assert get_cfg().TEST.AMP.SCOPE == "roi_heads" and tiny_model.inference_amp_scope == "roi_heads"
    ref = _proposals_of(tiny_model, inputs, amp=False)
    scoped = _proposals_of(tiny_model, inputs, amp=True)
    assert torch.equal(ref.proposal_boxes.tensor, scoped.proposal_boxes.tensor)
    assert torch.equal(ref.objectness_logits, scoped.objectness_logits)
    tiny_model.inference_amp_scope = "all"
    try:
        everything = _proposals_of(tiny_model, inputs, amp=True)
    finally:
        tiny_model.inference_amp_scope = "roi_heads"
    assert not torch.equal(ref.objectness_logits, everything.objectness_logits)


def test_test_amp_scope_is_validated():
    cfg = get_cfg()
    cfg.merge_from_list(["TEST.AMP.ENABLED", "True", "TEST.AMP.SCOPE", "backbone"])
    with pytest.raises(ValueError, match="TEST.AMP.SCOPE.*roi_heads"):
        inference_amp_dtype(cfg)


def test_inference_on_dataset_runs_under_the_given_autocast():
    from resnet_backbones.evaluation import DatasetEvaluator, inference_on_dataset

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.dtypes = []

        def forward(self, x):
            self.dtypes.append(self.lin(x).dtype)
            return x

    class Count(DatasetEvaluator):
        def reset(self):
            self.n = 0

        def process(self, inputs, outputs):
            self.n += 1

        def evaluate(self):
            return {"n": self.n}

    probe = Probe()
    batches = [torch.randn(2, 4) for _ in range(3)]
    assert inference_on_dataset(probe, batches, Count()) == {"n": 3}
    assert inference_on_dataset(probe, batches, Count(), autocast_dtype=torch.bfloat16) == {"n": 3}
    assert probe.dtypes == [torch.float32] * 3 + [torch.bfloat16] * 3

"""``GeneralizedRCNN``: backbone + proposal generator + RoI heads (Faster R-CNN), and
``ProposalNetwork``: backbone + RPN only (proposals, scored by proposal recall); detectron2's API.

Input: a list of dicts, one per image, with

* ``"image"``: ``(C, H, W)`` tensor in ``INPUT.FORMAT`` channel order ("BGR" or "RGB"), 0-255
  values, already resized (the data loader or :class:`~resnet_backbones.engine.DefaultPredictor`
  resizes);
* ``"instances"`` (training): ``Instances`` with ``gt_boxes`` and ``gt_classes`` in the
  coordinates of ``"image"``;
* ``"height"``, ``"width"`` (optional, inference): the size to report detections in, normally the
  original image size.

Training returns ``{"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}``; inference
returns ``[{"instances": Instances(pred_boxes, scores, pred_classes)}, ...]`` in ``height x width``
coordinates.

State-dict names and shapes are detectron2's (``backbone.*``, ``proposal_generator.rpn_head.*``,
``roi_heads.res5.*``, ``roi_heads.box_predictor.*``); ``pixel_mean``/``pixel_std`` are
non-persistent buffers, as in detectron2, so they come from the config, not the checkpoint.

``ProposalNetwork`` (``MODEL.META_ARCHITECTURE "ProposalNetwork"``) takes the same inputs; training
returns ``{"loss_rpn_cls", "loss_rpn_loc"}``, inference ``[{"proposals": Instances(proposal_boxes,
objectness_logits)}, ...]`` (at most ``MODEL.RPN.POST_NMS_TOPK_TEST`` per image, best first) in
``height x width`` coordinates; its state dict is detectron2's ProposalNetwork's (``backbone.*``,
``proposal_generator.*``).
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...precision import fp32_outside_scope
from ...structures import ImageList, Instances
from ..backbone import Backbone, build_backbone
from ..postprocessing import detector_postprocess
from ..proposal_generator import build_proposal_generator
from ..roi_heads import build_roi_heads
from .build import META_ARCH_REGISTRY

__all__ = ["GeneralizedRCNN", "ProposalNetwork", "check_device"]

INPUT_FORMATS = ("BGR", "RGB")


def check_device(device: Any) -> torch.device:
    """``torch.device(device)``, refusing a CUDA device this machine cannot provide with a fix."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(
            f"MODEL.DEVICE={device!r} is not a valid torch device ({e}); use 'cpu' or 'cuda'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"MODEL.DEVICE is {device!r} but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
                "Run on the CPU by setting MODEL.DEVICE cpu, "
                "e.g. append 'MODEL.DEVICE cpu' to the command line "
                "options, or cfg.MODEL.DEVICE = 'cpu' in Python."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"MODEL.DEVICE is {device!r} but only {torch.cuda.device_count()} "
                "CUDA device(s) exist; use 'cuda' / 'cuda:0', or MODEL.DEVICE cpu"
            )
    elif dev.type == "mps" and not (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    ):
        raise RuntimeError(
            f"MODEL.DEVICE is {device!r} but MPS is not available; set MODEL.DEVICE cpu"
        )
    return dev


def _check_input_format(input_format: Optional[str]) -> Optional[str]:
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise ValueError(f"INPUT.FORMAT must be one of {INPUT_FORMATS}, got {input_format!r}")
    return input_format


def _register_pixel_stats(
    module: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> None:
    """Validate and register ``pixel_mean``/``pixel_std`` as non-persistent ``(C, 1, 1)``
    buffers (they come from the config, not the checkpoint, as in detectron2)."""
    if len(pixel_mean) != len(pixel_std):
        raise ValueError(
            f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} "
            "differ in length"
        )
    if any(s <= 0 for s in pixel_std):
        raise ValueError(f"MODEL.PIXEL_STD must be positive, got {list(pixel_std)}")
    module.register_buffer(
        "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
    )
    module.register_buffer(
        "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
    )


def _config_or_parts(model: nn.Module, cfg: Any, parts: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of ``model``'s ``_build``: ``from_config(cfg)``, or the parts given
    instead of a config (both at once is an error)."""
    if cfg is None:
        return parts
    if parts:
        raise TypeError(
            f"{type(model).__name__}: pass a config or the parts, not both (got {sorted(parts)})"
        )
    return model.from_config(cfg)


def _normalize_and_pad(
    batched_inputs: List[Dict[str, Any]],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    backbone: Backbone,
) -> ImageList:
    """Normalize every image and pad them (bottom/right, zeros after normalization) into one
    batch whose size is a multiple of the backbone's size divisibility."""
    images = [x["image"].to(pixel_mean.device, non_blocking=True) for x in batched_inputs]
    images = [(x - pixel_mean) / pixel_std for x in images]
    size_divisibility = backbone.size_divisibility
    constraints = backbone.padding_constraints or {}
    if constraints.get("square_size", 0):
        raise ValueError("backbone padding_constraints 'square_size' is not supported")
    size_divisibility = constraints.get("size_divisibility", size_divisibility)
    return ImageList.from_tensors(images, size_divisibility)


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(nn.Module):
    """Faster R-CNN: per-channel normalization, backbone, RPN, RoI heads, rescaling of detections.

    Build it from a config, ``GeneralizedRCNN(cfg)`` (what ``build_model`` does), or from its
    parts, ``GeneralizedRCNN(backbone=..., proposal_generator=..., roi_heads=..., pixel_mean=...,
    pixel_std=...)``.

    Args:
        backbone: maps the normalized image batch to named feature maps.
        proposal_generator: the RPN (``None``: proposals come with the inputs as ``"proposals"``).
        roi_heads: the box head.
        pixel_mean, pixel_std: per-channel statistics in ``input_format`` order.
        input_format: "BGR" or "RGB": the channel order of ``"image"``.
    """

    def __init__(self, cfg: Any = None, **kwargs: Any) -> None:
        self._build(**_config_or_parts(self, cfg, kwargs))

    def _build(
        self,
        *,
        backbone: Backbone,
        proposal_generator: Optional[nn.Module],
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
        vis_period: int = 0,
        inference_amp_scope: str = "roi_heads",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.input_format = _check_input_format(input_format)
        self.vis_period = vis_period
        # TEST.AMP.SCOPE, set by prepare_model: under an inference autocast, "roi_heads" keeps the
        # backbone and the RPN in float32 (see resnet_backbones.precision); "all" leaves every part
        # to the autocast.
        self.inference_amp_scope = inference_amp_scope
        _register_pixel_stats(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        """Build the parts from ``cfg``; model-level keys are read here only."""
        check_device(cfg.MODEL.DEVICE)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # --------------------------------------------------------------------------------- inputs
    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """Normalize every image and pad them (bottom/right, zeros after normalization) into one
        batch whose size is a multiple of the backbone's size divisibility."""
        return _normalize_and_pad(batched_inputs, self.pixel_mean, self.pixel_std, self.backbone)

    # -------------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """Training: dict of losses; eval mode: list of ``{"instances": Instances}``."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("training inputs need 'instances' (gt_boxes, gt_classes)")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            proposal_losses = {}
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        losses: Dict[str, torch.Tensor] = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses

    def inference(
        self,
        batched_inputs: List[Dict[str, Any]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Detections per image; with ``do_postprocess`` rescaled to each input's height/width."""
        if self.training:
            raise RuntimeError("call model.eval() before inference")
        images = self.preprocess_image(batched_inputs)
        fp32 = fp32_outside_scope(self.device, self.inference_amp_scope, "backbone")
        with fp32:
            features = self.backbone(images.tensor)
        if detected_instances is None:
            if self.proposal_generator is not None:
                with fp32:
                    proposals, _ = self.proposal_generator(images, features, None)
            else:
                proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        if do_postprocess:
            return self._postprocess(results, batched_inputs, images.image_sizes)
        return results

    @staticmethod
    def _postprocess(
        instances: List[Instances],
        batched_inputs: List[Dict[str, Any]],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        out = []
        for result, inputs, size in zip(instances, batched_inputs, image_sizes):
            height = inputs.get("height", size[0])
            width = inputs.get("width", size[1])
            out.append({"instances": detector_postprocess(result, height, width)})
        return out


@META_ARCH_REGISTRY.register()
class ProposalNetwork(nn.Module):
    """RPN-only model (detectron2's ``ProposalNetwork``): per-channel normalization, backbone, RPN,
    rescaling of the proposals. Evaluate it with ``COCOEvaluator`` (proposal recall, task
    ``"box_proposals"``).

    Build it from a config, ``ProposalNetwork(cfg)`` (what ``build_model`` does with
    ``MODEL.META_ARCHITECTURE "ProposalNetwork"``), or from its parts, ``ProposalNetwork(
    backbone=..., proposal_generator=..., pixel_mean=..., pixel_std=...)``.

    Args:
        backbone: maps the normalized image batch to named feature maps (C4: ``res4``).
        proposal_generator: the RPN.
        pixel_mean, pixel_std: per-channel statistics in ``input_format`` order.
        input_format: "BGR" or "RGB": the channel order of ``"image"``.
    """

    def __init__(self, cfg: Any = None, **kwargs: Any) -> None:
        self._build(**_config_or_parts(self, cfg, kwargs))

    def _build(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
        inference_amp_scope: str = "roi_heads",
    ) -> None:
        super().__init__()
        if proposal_generator is None:
            raise ValueError(
                "ProposalNetwork needs a proposal generator: set MODEL.PROPOSAL_GENERATOR.NAME "
                "to 'RPN' (not 'PrecomputedProposals')"
            )
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.input_format = _check_input_format(input_format)
        # TEST.AMP.SCOPE, set by prepare_model: "roi_heads" (the default) keeps the backbone and
        # the RPN, so the whole of this model, in float32 under an inference autocast; "all" leaves
        # them to the autocast.
        self.inference_amp_scope = inference_amp_scope
        _register_pixel_stats(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg: Any) -> Dict[str, Any]:
        """Build the parts from ``cfg`` (``MODEL.ROI_HEADS`` is not read; ``MODEL.MASK_ON`` is
        refused: there are no detections to predict masks for)."""
        check_device(cfg.MODEL.DEVICE)
        if cfg.MODEL.MASK_ON:
            raise ValueError(
                "MODEL.MASK_ON: a ProposalNetwork predicts proposals only, not masks; set "
                "MODEL.MASK_ON False, or MODEL.META_ARCHITECTURE 'GeneralizedRCNN' for Mask R-CNN"
            )
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict[str, Any]]) -> ImageList:
        """As :meth:`GeneralizedRCNN.preprocess_image`."""
        return _normalize_and_pad(batched_inputs, self.pixel_mean, self.pixel_std, self.backbone)

    def _inference_fp32(self, part: str) -> ContextManager:
        """In eval mode, float32 for ``part`` where ``TEST.AMP.SCOPE`` leaves it out of an active
        autocast; training (AMPTrainer) keeps the autocast everywhere."""
        if self.training:
            return contextlib.nullcontext()
        return fp32_outside_scope(self.device, self.inference_amp_scope, part)

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        """Training: ``{"loss_rpn_cls", "loss_rpn_loc"}``; eval mode: a list of
        ``{"proposals": Instances(proposal_boxes, objectness_logits)}``, one per input, rescaled
        to its ``height`` x ``width`` (default: the size of ``"image"``)."""
        images = self.preprocess_image(batched_inputs)
        gt_instances = None
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        elif self.training:
            raise ValueError("training inputs need 'instances' (gt_boxes)")
        with self._inference_fp32("backbone"):
            features = self.backbone(images.tensor)
        with self._inference_fp32("rpn"):
            # in training the proposals are not needed, but the RPN makes them anyway (as in
            # detectron2)
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        if self.training:
            return proposal_losses
        out = []
        for result, inputs, size in zip(proposals, batched_inputs, images.image_sizes):
            height = inputs.get("height", size[0])
            width = inputs.get("width", size[1])
            out.append({"proposals": detector_postprocess(result, height, width)})
        return out

"""The ResNet paper's classification test protocols (He et al., CVPR 2016, Sec. 3.4 and 4.1).

``TEST.PROTOCOLS`` (or ``tools/train_cls.py --test-protocol``) names any of:

* ``"single"``: resize the short side to ``INPUT.RESIZE_SIZE`` (``SIZE x 256 / 224``), one center
  crop of ``INPUT.SIZE``: the default validation (:func:`~.data.build_transform`). Reported as
  ``val/top1``, ``val/top5``, ``val/loss``.
* ``"10crop"``: the standard 10-crop testing the paper adopts for its comparisons (Krizhevsky et
  al. 2012): the same resize (256 for 224 crops), the 4 corner crops and the center crop of
  ``INPUT.SIZE`` and their horizontal flips; the softmax outputs of the 10 crops are averaged.
  CIFAR-style configs (``INPUT.PAD_CROP``) take the crops from the image zero-padded by
  ``INPUT.PADDING``, the extreme positions of the training crops. Reported as ``val_10crop/*``.
* ``"multiscale"``: the paper's best results: "the fully-convolutional form as in [41, 13],
  [averaging] the scores at multiple scales (images are resized such that the shorter side is in
  {224, 256, 384, 480, 640})". The whole image (no crop) is resized to each
  ``TEST.MULTISCALE_SIZES`` short side (default: those five sides x ``INPUT.SIZE / 224``, so
  64, 73, 110, 137, 183 for 64-pixel crops). Reported as ``val_multiscale/*``.

The fully-convolutional form (:class:`FullyConvolutionalClassifier`) is the trained network with
its classifier made convolutional, as in Caffe/Torch deployments of the paper's models (pool5 is a
7x7 average pool of stride 1, fc a 1x1 convolution): the final feature map is average-pooled over
windows the size of the map a ``SIZE x SIZE`` crop gives (7x7 for 224), with stride 1; the fc layer
scores every window position; the class score map is averaged over space (VGG's "spatially
averaged" score map, [41]). Because fc is linear, averaging the per-position logits is the same as
scoring the averaged window feature. On a ``SIZE x SIZE`` image there is one window: the plain
forward. Across views (crops, flips, scales) the softmax probabilities are averaged (Krizhevsky's
10-crop, VGG's "class posteriors ... averaged"). The reported ``loss`` of an averaged protocol is
the cross-entropy of the averaged probabilities.

Cost: ``TEST.BATCH_SIZE`` counts images, so a 10-crop batch runs 10x as many crops (lower it on a
small GPU); multi-scale batches together the images of one scale that have the same size (all of
them for the square shapes images; ImageNet's images of one aspect ratio, e.g. 500x375).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .data import ToModelInput, build_dataset, build_test_loader, build_transform, resize_size

__all__ = [
    "PAPER_SCALES",
    "PROTOCOLS",
    "FullyConvolutionalClassifier",
    "MultiScaleEnsemble",
    "MultiScaleViews",
    "TenCrop",
    "TenCropEnsemble",
    "build_protocol_loader",
    "check_protocols",
    "describe",
    "multiscale_sizes",
    "protocol_model",
    "result_name",
    "ten_crop",
]

logger = logging.getLogger(__name__)

PROTOCOLS = ("single", "10crop", "multiscale")
# The paper's test scales (short sides) for 224-pixel crops; scaled by INPUT.SIZE / 224.
PAPER_SCALES = (224, 256, 384, 480, 640)


# ------------------------------------------------------------------------------ config
def check_protocols(protocols: Sequence[str]) -> Tuple[str, ...]:
    """``protocols`` as a tuple without repeats, or ``ValueError`` naming the unknown ones."""
    names = tuple(dict.fromkeys(str(p) for p in protocols))
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown or not names:
        raise ValueError(
            f"TEST.PROTOCOLS must name one or more of {list(PROTOCOLS)}, got {list(protocols)}"
        )
    return names


def result_name(protocol: str) -> str:
    """The results group of ``protocol``: ``"val"`` (single), ``"val_10crop"``, ...; metrics are
    logged as ``<group>/top1``, ``<group>/top5``, ``<group>/loss``."""
    return "val" if protocol == "single" else f"val_{protocol}"


def multiscale_sizes(cfg: Any) -> List[int]:
    """``TEST.MULTISCALE_SIZES``, or the paper's scales x ``INPUT.SIZE / 224``."""
    sizes = [int(s) for s in cfg.TEST.MULTISCALE_SIZES] or [
        int(round(int(cfg.INPUT.SIZE) * s / 224)) for s in PAPER_SCALES
    ]
    if any(s < 8 for s in sizes):
        raise ValueError(f"TEST.MULTISCALE_SIZES must be >= 8, got {sizes}")
    return sizes


# ------------------------------------------------------------------------------ views
def ten_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(10, C, size, size)``: the top-left, top-right, bottom-left, bottom-right and center crops
    of a ``(C, H, W)`` image, then the horizontal flip of each, in that order.

    The center crop is :func:`torchvision.transforms.functional.center_crop`'s (the single
    protocol's).
    """
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"ten_crop: a {h}x{w} image is smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    crops = torch.stack([image[..., y : y + size, x : x + size] for y, x in corners])
    return torch.cat([crops, crops.flip(-1)])


class TenCrop:
    """PIL image -> ``(10, 3, SIZE, SIZE)`` network inputs (:func:`ten_crop` of the resized or
    padded image)."""

    def __init__(self, cfg: Any) -> None:
        from torchvision import transforms as T

        self.size = int(cfg.INPUT.SIZE)
        self.prepare: Callable[[Image.Image], Image.Image] = (
            T.Pad(int(cfg.INPUT.PADDING), fill=0)
            if cfg.INPUT.PAD_CROP
            else T.Resize(resize_size(cfg), antialias=True)
        )
        self.to_input = ToModelInput(cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return ten_crop(self.to_input(self.prepare(image)), self.size)


class MultiScaleViews:
    """PIL image -> list of network inputs, the whole image resized to each short side in
    ``sizes`` (each followed by its horizontal flip with ``flip``)."""

    def __init__(self, cfg: Any, sizes: Sequence[int], flip: bool = False) -> None:
        from torchvision import transforms as T

        self.resizes = [T.Resize(int(s), antialias=True) for s in sizes]
        self.flip = flip
        self.to_input = ToModelInput(cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)

    def __call__(self, image: Image.Image) -> List[torch.Tensor]:
        views = []
        for resize in self.resizes:
            x = self.to_input(resize(image))
            views += [x, x.flip(-1)] if self.flip else [x]
        return views


def _collate_views(samples: List[Tuple[List[torch.Tensor], int]]) -> Tuple[Any, torch.Tensor]:
    """Multi-scale samples -> ``(views, labels)``: ``views[v]`` lists view ``v`` of every image."""
    views = [list(v) for v in zip(*(s[0] for s in samples))]
    return views, torch.as_tensor([s[1] for s in samples], dtype=torch.int64)


# ------------------------------------------------------------------------------ models
class FullyConvolutionalClassifier(nn.Module):
    """A ResNet classifier applied convolutionally: ``forward`` -> ``(N, classes)`` logits, the
    spatial mean of :meth:`score_map` (see the module docstring).

    ``crop_size`` is the training crop side: the pooling window is the final feature map of a
    ``crop_size x crop_size`` input (7x7 for 224 on a stride-32 ResNet), clipped to the map.
    """

    def __init__(self, model: nn.Module, crop_size: int) -> None:
        super().__init__()
        if not isinstance(getattr(model, "avgpool", None), nn.Module) or not isinstance(
            getattr(model, "linear", None), nn.Linear
        ):
            raise TypeError(
                f"{type(model).__name__} is not a ResNet classifier (avgpool + linear): "
                "the fully-convolutional form needs its pooling and fc layers"
            )
        self.model = model
        param = next(model.parameters())
        was_training = model.training
        model.eval()  # no BatchNorm statistics are updated by this probe
        try:
            with torch.no_grad():
                probe = torch.zeros(1, 3, crop_size, crop_size, device=param.device)
                self.window: Tuple[int, int] = tuple(self.feature_map(probe).shape[-2:])
        finally:
            model.train(was_training)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output (the input of the classifier's global pooling)."""
        captured: List[torch.Tensor] = []
        handle = self.model.avgpool.register_forward_pre_hook(
            lambda _module, args: captured.append(args[0])
        )
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, classes, h, w)``: the fc layer at every window position of the feature map."""
        fmap = self.feature_map(x)
        window = (min(self.window[0], fmap.shape[-2]), min(self.window[1], fmap.shape[-1]))
        pooled = F.avg_pool2d(fmap, window, stride=1)
        linear = self.model.linear
        return F.conv2d(pooled, linear.weight[:, :, None, None], linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_map(x).mean(dim=(2, 3))


def _log_mean_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(mean(softmax(logits)))`` over ``dim``: what :func:`~.trainer.evaluate` scores (its
    softmax gives back the averaged probabilities, its cross-entropy their negative log)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(log_probs, dim=dim) - torch.log(
        torch.tensor(float(logits.shape[dim]), device=logits.device)
    )


class TenCropEnsemble(nn.Module):
    """``(N, 10, C, S, S)`` crops -> ``(N, classes)`` log of the crops' averaged softmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        n, v = crops.shape[:2]
        logits = self.model(crops.flatten(0, 1))
        return _log_mean_softmax(logits.view(n, v, -1), dim=1)


class MultiScaleEnsemble(nn.Module):
    """``views[v][i]`` (view ``v`` of image ``i``, any size) -> ``(N, classes)`` log of the averaged
    softmax of the fully-convolutional scores. Images of one view with equal sizes share a batch."""

    def __init__(self, model: nn.Module, crop_size: int) -> None:
        super().__init__()
        self.fcn = FullyConvolutionalClassifier(model, crop_size)

    def forward(self, views: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        per_view = []
        for images in views:
            groups: Dict[Tuple[int, ...], List[int]] = {}
            for i, image in enumerate(images):
                groups.setdefault(tuple(image.shape), []).append(i)
            logits: List[Optional[torch.Tensor]] = [None] * len(images)
            for idx in groups.values():
                out = self.fcn(torch.stack([images[i] for i in idx]))
                for i, row in zip(idx, out):
                    logits[i] = row
            per_view.append(torch.stack(logits))  # type: ignore[arg-type]
        return _log_mean_softmax(torch.stack(per_view, dim=1), dim=1)


# ------------------------------------------------------------------------------ wiring
def protocol_model(model: nn.Module, protocol: str, cfg: Any) -> nn.Module:
    """``model`` as the protocol scores it: itself (single), or an ensemble returning log
    probabilities."""
    if protocol == "single":
        return model
    if protocol == "10crop":
        return TenCropEnsemble(model)
    if protocol == "multiscale":
        return MultiScaleEnsemble(model, int(cfg.INPUT.SIZE))
    raise ValueError(f"unknown test protocol {protocol!r}; expected one of {list(PROTOCOLS)}")


def build_protocol_loader(
    cfg: Any,
    protocol: str,
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Any:
    """The validation loader of ``protocol``: batches of ``(inputs, labels)`` for
    :func:`protocol_model`'s model."""
    collate = None
    if protocol == "single":
        transform: Callable[[Image.Image], Any] = build_transform(cfg, is_train=False)
    elif protocol == "10crop":
        transform = TenCrop(cfg)
    elif protocol == "multiscale":
        transform = MultiScaleViews(cfg, multiscale_sizes(cfg), bool(cfg.TEST.MULTISCALE_FLIP))
        collate = _collate_views
    else:
        raise ValueError(f"unknown test protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    dataset = build_dataset(cfg, is_train=False, transform=transform)
    return build_test_loader(
        dataset,
        batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate,
    )


def describe(cfg: Any, protocol: str) -> str:
    """One line saying what ``protocol`` evaluates (for the logs)."""
    size = int(cfg.INPUT.SIZE)
    view = f"pad {int(cfg.INPUT.PADDING)}" if cfg.INPUT.PAD_CROP else f"resize {resize_size(cfg)}"
    if protocol == "single":
        return f"center crop {size}" if cfg.INPUT.PAD_CROP else f"{view}, center crop {size}"
    if protocol == "10crop":
        return f"{view}, corner + center crops {size} and their flips"
    flip = " and flips" if cfg.TEST.MULTISCALE_FLIP else ""
    return f"fully convolutional, short sides {multiscale_sizes(cfg)}{flip}"

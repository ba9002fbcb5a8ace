"""Rename ResNet weights between naming schemes; pure functions on ``{name: tensor}`` dicts.

Schemes (``FORMATS``):

* ``ours``: this package's ResNet names, which are detectron2's ResNet names: ``stem.conv1.weight``,
  ``stem.conv1.norm.{weight,bias,running_mean,running_var}``, ``res2.0.conv1.weight``,
  ``res2.0.conv1.norm.*``, ``res2.0.shortcut.weight``, ``res2.0.shortcut.norm.*``, ``linear.*``.
  A detector's state dict keeps its own prefixes (``backbone.res2...``, ``roi_heads.res5...``).
* ``detectron2``: a detectron2 model: the ResNet under ``backbone.``; a C4 detector also has
  ``proposal_generator.*`` and ``roi_heads.*`` (res5 is ``roi_heads.res5``).
* ``torchvision`` (and ``timm``, whose ResNets use the same names): ``conv1``, ``bn1``,
  ``layer1.0.conv1``, ``layer1.0.bn1``, ``layer1.0.downsample.{0,1}``, ``fc``.
* ``msra-pkl``: the Caffe2 blob names of MSRA's original ImageNet models as published by
  Detectron (``R-50.pkl``): ``conv1_w``, ``res_conv1_bn_{s,b}``, ``res2_0_branch2a_w``,
  ``res2_0_branch2a_bn_{s,b}``, ``res2_0_branch1_w``, ``fc1000_{w,b}``.

Every conversion goes through ``ours``: ``convert_state_dict(sd, "torchvision", "detectron2")`` is
``ours -> detectron2`` of ``torchvision -> ours``. Each returns a :class:`ConversionResult` that
lists every tensor mapped, every tensor dropped with the reason, added tensors, and notes about
what the weights expect (input format, pixel statistics, where bottlenecks stride).

Caffe2 BatchNorm (MSRA models)
------------------------------
Caffe2 stores each BN as an affine transform ``y = x * s + b`` (the statistics were folded in).
It becomes a ``FrozenBatchNorm2d`` with ``weight = s``, ``bias = b``, ``running_mean = 0`` and
``running_var = 1 - eps`` (``eps = 1e-5``, FrozenBN's and detectron2's): FrozenBN computes
``(x - mean) / sqrt(var + eps) * weight + bias`` and ``(1 - 1e-5) + 1e-5`` is exactly ``1.0`` in
float32, so the layer is exactly ``x * s + b``. ``running_var = 1`` instead would scale every BN by
``1 / sqrt(1 + 1e-5)`` (a 5e-6 relative error per layer, compounding over ~50 layers). This is the
value a fresh FrozenBN holds and what detectron2 leaves in place when it loads such a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..modeling.backbone.resnet import IMAGENET_BLOCKS_PER_STAGE, imagenet_uses_bottleneck

__all__ = [
    "FORMATS",
    "SOURCE_FORMATS",
    "TARGET_FORMATS",
    "ConversionResult",
    "FormatDetectionError",
    "convert_state_dict",
    "detect_format",
    "infer_resnet_architecture",
    "ours_to_detectron2",
    "ours_to_msra",
    "ours_to_torchvision",
    "to_ours",
    "from_ours",
    "torchvision_to_ours",
    "msra_to_ours",
    "detectron2_to_ours",
    "INPUT_CONVENTIONS",
]

FORMATS = ("ours", "detectron2", "torchvision", "timm", "msra-pkl")
SOURCE_FORMATS = ("torchvision", "timm", "msra-pkl", "detectron2", "ours")
TARGET_FORMATS = ("ours", "detectron2", "torchvision")

FROZEN_BN_EPS = 1e-5
BACKBONE_PREFIX = "backbone."

#: What the original weights expect as input; recorded in conversion metadata.
INPUT_CONVENTIONS: Dict[str, Dict[str, Any]] = {
    "msra-pkl": {
        "input_format": "BGR",
        "pixel_range": "0-255",
        "pixel_mean": [103.530, 116.280, 123.675],
        "pixel_std": [1.0, 1.0, 1.0],
        "stride_in_1x1": True,
        "norm": "FrozenBN",
    },
    "torchvision": {
        "input_format": "RGB",
        "pixel_range": "0-255 (normalized by pixel_mean/pixel_std; equivalently 0-1 with mean/255)",
        "pixel_mean": [123.675, 116.280, 103.530],
        "pixel_std": [58.395, 57.120, 57.375],
        "stride_in_1x1": False,
        "norm": "BN",
    },
}
INPUT_CONVENTIONS["timm"] = dict(
    INPUT_CONVENTIONS["torchvision"],
    stride_in_1x1=False,
    note="timm ResNets (a1/a2/a3/tv_in1k ...) use torchvision's layout and normalization; "
    "check the model card for the exact mean/std of a given weight set",
)


class FormatDetectionError(ValueError):
    """The naming scheme of a state dict could not be recognised."""


@dataclass
class ConversionResult:
    """A converted state dict and an account of every input tensor.

    Attributes:
        state_dict: the converted ``{name: tensor}``.
        source, target: the naming schemes converted between.
        mapped: ``(source name, target name)`` for every tensor carried over (renamed or not).
        dropped: ``(source name, reason)`` for every input tensor not carried over.
        added: ``(target name, reason)`` for tensors the target needs that the input lacks.
        notes: anything the user must know to use the weights (input format, architecture).
        metadata: machine-readable facts (input convention, stride_in_1x1, ...), saved with the
            file.
    """

    state_dict: Dict[str, torch.Tensor]
    source: str
    target: str
    mapped: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    added: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    metadata: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_renamed(self) -> int:
        return sum(1 for a, b in self.mapped if a != b)

    def summary(self, max_added: int = 12) -> str:
        """A readable account: counts, every dropped tensor by name with its reason, what was added
        (grouped by reason; the first ``max_added`` names of each), notes and metadata."""
        n_params = sum(int(t.numel()) for t in self.state_dict.values())
        lines = [
            f"converted {self.source} -> {self.target}: {len(self.mapped)} tensors mapped "
            f"({self.num_renamed} renamed), {len(self.dropped)} dropped, {len(self.added)} added; "
            f"{len(self.state_dict)} tensors / {n_params:,} values out"
        ]
        if self.dropped:
            lines.append(f"dropped ({len(self.dropped)}):")
            lines.extend(f"  {name}: {reason}" for name, reason in self.dropped)
        if self.added:
            lines.append(f"added ({len(self.added)}):")
            for reason, names in _by_reason(self.added).items():
                shown = ", ".join(names[:max_added])
                if len(names) > max_added:
                    shown += f", ... ({len(names) - max_added} more)"
                lines.append(f"  {len(names)} x {reason}: {shown}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.metadata:
            lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in self.metadata.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _by_reason(items: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    for name, reason in items:
        groups.setdefault(reason, []).append(name)
    return groups


# ------------------------------------------------------------------------------- detection
_MSRA_RE = re.compile(
    r"^(conv1_w|res_conv1_(bn|gn)_[sb]|res\d+_\d+_branch(1|2[abc])_\w+|fc1000_[wb])$"
)
_TV_RE = re.compile(r"^(conv1\.weight|bn1\.\w+|layer[1-4]\.\d+\.\w+|fc\.(weight|bias))")
_OURS_RE = re.compile(r"^(stem\.conv1\.|res[2-5]\.\d+\.|linear\.(weight|bias)$)")
_D2_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")


def detect_format(state_dict: Mapping[str, Any], author: Optional[str] = None) -> str:
    """Guess the naming scheme of ``state_dict`` from its keys.

    ``author`` is detectron2's ``__author__``.

    Returns one of ``"msra-pkl"``, ``"detectron2"``, ``"torchvision"`` (timm is identical) or
    ``"ours"``; raises :class:`FormatDetectionError` when no scheme has the majority of the keys.
    """
    keys = list(state_dict)
    if not keys:
        raise FormatDetectionError("cannot detect the format of an empty state dict")
    counts = {
        "msra-pkl": sum(1 for k in keys if _MSRA_RE.match(k) or k.endswith("_momentum")),
        "detectron2": sum(1 for k in keys if k.startswith(_D2_PREFIXES)),
        "torchvision": sum(1 for k in keys if _TV_RE.match(k)),
        "ours": sum(1 for k in keys if _OURS_RE.match(k)),
    }
    if author == "Caffe2" and counts["msra-pkl"]:
        return "msra-pkl"
    if "stem.fc.weight" in state_dict and counts["ours"] * 2 > len(keys):
        return "detectron2"  # written by detectron2's tools/convert-torchvision-to-d2.py
    best = max(counts, key=lambda f: counts[f])
    if counts[best] * 2 <= len(keys):
        raise FormatDetectionError(
            f"cannot tell the naming scheme of this state dict ({len(keys)} tensors; matches per "
            f"scheme: {counts}); first keys: {keys[:6]}. Pass the source format explicitly "
            f"(one of {', '.join(SOURCE_FORMATS)})"
        )
    return best


# ----------------------------------------------------------------------- torchvision / timm
_TV_STEM = {"conv1.weight": "stem.conv1.weight"}
_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_to_ours(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "torchvision"
) -> ConversionResult:
    """torchvision / timm ResNet names -> ours (``layerN`` -> ``res{N+1}``,
    ``bnK`` -> ``convK.norm``, ``downsample.0/1`` -> ``shortcut`` / ``shortcut.norm``,
    ``fc`` -> ``linear``). Values are shared."""
    result = ConversionResult({}, source, "ours")
    for key, value in state_dict.items():
        new, reason = _tv_key_to_ours(key)
        if new is None:
            result.dropped.append((key, reason))
        else:
            result.state_dict[new] = value
            result.mapped.append((key, new))
    result.metadata.update(INPUT_CONVENTIONS[source])
    result.notes.append(
        f"{source} weights expect RGB input normalized with ImageNet mean/std and stride in the "
        "3x3 conv of each bottleneck: build the model with stride_in_1x1=False "
        "(create_model's default)"
    )
    return result


def _tv_key_to_ours(key: str) -> Tuple[Optional[str], str]:
    if key in _TV_STEM:
        return _TV_STEM[key], ""
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[4:], ""
    if key in ("fc.weight", "fc.bias"):
        return "linear." + key[3:], ""
    if key.startswith("conv1.") and key[len("conv1.") :].split(".")[0].isdigit():
        return None, "deep stem (ResNet-C/D, e.g. timm resnet50d) is not supported"
    m = _TV_BLOCK.match(key)
    if m:
        stage, block, rest = f"res{int(m.group(1)) + 1}", m.group(2), m.group(3)
        conv = re.match(r"^conv(\d)\.weight$", rest)
        if conv:
            return f"{stage}.{block}.conv{conv.group(1)}.weight", ""
        bn = re.match(r"^bn(\d)\.(\w+)$", rest)
        if bn and bn.group(2) in _BN_FIELDS:
            return f"{stage}.{block}.conv{bn.group(1)}.norm.{bn.group(2)}", ""
        if rest == "downsample.0.weight":
            return f"{stage}.{block}.shortcut.weight", ""
        ds = re.match(r"^downsample\.1\.(\w+)$", rest)
        if ds and ds.group(1) in _BN_FIELDS:
            return f"{stage}.{block}.shortcut.norm.{ds.group(1)}", ""
        if rest.startswith(("se.", "attn.", "drop_block", "aa.")):
            return (
                None,
                "attention/SE/anti-aliasing module (timm variant) has no counterpart in ours",
            )
        if rest.startswith("downsample."):
            return None, "avg-pool shortcut (ResNet-D style downsample) is not supported"
        return None, "unrecognised tensor inside a torchvision block"
    return None, "not part of a torchvision ResNet"


def ours_to_torchvision(
    state_dict: Mapping[str, torch.Tensor], *, add_num_batches_tracked: bool = True
) -> ConversionResult:
    """ours -> torchvision names (the inverse of :func:`torchvision_to_ours`).

    ``add_num_batches_tracked``: torchvision's BatchNorm2d has a ``num_batches_tracked`` buffer
    that a FrozenBN checkpoint lacks; add it as 0 (listed in ``added``).
    """
    result = ConversionResult({}, "ours", "torchvision")
    norms_seen = set()
    for key, value in state_dict.items():
        new = _ours_key_to_tv(key)
        if new is None:
            result.dropped.append((key, "no torchvision counterpart (not part of a plain ResNet)"))
            continue
        result.state_dict[new] = value
        result.mapped.append((key, new))
        if new.endswith(".running_var"):
            norms_seen.add(new[: -len("running_var")])
    if add_num_batches_tracked:
        for prefix in sorted(norms_seen):
            name = prefix + "num_batches_tracked"
            if name not in result.state_dict:
                result.state_dict[name] = torch.tensor(0, dtype=torch.long)
                result.added.append(
                    (name, "BatchNorm2d step counter, absent from FrozenBN weights")
                )
    result.notes.append(
        "torchvision bottlenecks stride in the 3x3 conv: weights trained with stride_in_1x1=True "
        "(MSRA/detectron2) load by name but compute a different function there; torchvision "
        "models also expect RGB input with ImageNet mean/std"
    )
    return result


def _ours_key_to_tv(key: str) -> Optional[str]:
    if key == "stem.conv1.weight":
        return "conv1.weight"
    if key.startswith("stem.conv1.norm."):
        return "bn1." + key[len("stem.conv1.norm.") :]
    if key in ("linear.weight", "linear.bias"):
        return "fc." + key[len("linear.") :]
    m = re.match(r"^res([2-5])\.(\d+)\.(.+)$", key)
    if not m:
        return None
    head = f"layer{int(m.group(1)) - 1}.{m.group(2)}."
    rest = m.group(3)
    conv = re.match(r"^conv(\d)\.weight$", rest)
    if conv:
        return head + f"conv{conv.group(1)}.weight"
    bn = re.match(r"^conv(\d)\.norm\.(\w+)$", rest)
    if bn:
        return head + f"bn{bn.group(1)}.{bn.group(2)}"
    if rest == "shortcut.weight":
        return head + "downsample.0.weight"
    if rest.startswith("shortcut.norm."):
        return head + "downsample.1." + rest[len("shortcut.norm.") :]
    return None


# ------------------------------------------------------------------------------ MSRA / Caffe2
_C2_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "branch1": "shortcut"}
_C2_NORM = {"bn_s": "weight", "bn_b": "bias", "gn_s": "weight", "gn_b": "bias"}


def msra_to_ours(
    state_dict: Mapping[str, torch.Tensor], *, eps: float = FROZEN_BN_EPS
) -> ConversionResult:
    """Caffe2 blob names (MSRA ImageNet models) -> ours, with FrozenBN statistics filled in.

    Every ``*_bn_s``/``*_bn_b`` pair becomes ``norm.weight``/``norm.bias`` plus
    ``running_mean = 0`` and ``running_var = 1 - eps`` (see the module docstring for why
    ``1 - eps`` and not 1). ``*_momentum`` blobs (SGD state) are dropped.
    """
    result = ConversionResult({}, "msra-pkl", "ours")
    bn_layers: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("_momentum"):
            result.dropped.append((key, "SGD momentum buffer (training state, not a weight)"))
            continue
        new = _msra_key_to_ours(key)
        if new is None:
            result.dropped.append((key, "not a ResNet blob (e.g. a Detectron1 detection head)"))
            continue
        result.state_dict[new] = value
        result.mapped.append((key, new))
        if "_bn_" in key:
            bn_layers[new.rsplit(".", 1)[0]] = value
    reason = (
        f"Caffe2 BN holds only s/b (statistics folded in): running_mean = 0 and running_var = "
        f"1 - eps = {1.0 - eps!r} make FrozenBN (eps={eps}) exactly x * s + b"
    )
    for prefix, ref in bn_layers.items():
        for name, fill in (("running_mean", 0.0), ("running_var", 1.0 - eps)):
            full = f"{prefix}.{name}"
            if full not in result.state_dict:
                result.state_dict[full] = torch.full(ref.shape, fill, dtype=ref.dtype)
                result.added.append((full, reason))
    result.metadata.update(INPUT_CONVENTIONS["msra-pkl"])
    result.notes.append(
        "MSRA weights expect BGR input in 0-255 with pixel_mean [103.530, 116.280, 123.675] and "
        "pixel_std [1, 1, 1], FrozenBN (eps=1e-5) and stride_in_1x1=True "
        "(create_backbone's default; for create_model pass stride_in_1x1=True, norm='FrozenBN')"
    )
    return result


def _msra_key_to_ours(key: str) -> Optional[str]:
    if key == "conv1_w":
        return "stem.conv1.weight"
    m = re.match(r"^res_conv1_((?:bn|gn)_[sb])$", key)
    if m:
        return "stem.conv1.norm." + _C2_NORM[m.group(1)]
    if key in ("fc1000_w", "pred_w"):
        return "linear.weight"
    if key in ("fc1000_b", "pred_b"):
        return "linear.bias"
    m = re.match(r"^res(\d+)_(\d+)_(branch1|branch2[abc])_(w|bn_s|bn_b|gn_s|gn_b)$", key)
    if not m:
        return None
    head = f"res{m.group(1)}.{m.group(2)}.{_C2_BRANCH[m.group(3)]}"
    return head + ".weight" if m.group(4) == "w" else f"{head}.norm.{_C2_NORM[m.group(4)]}"


def ours_to_msra(
    state_dict: Mapping[str, torch.Tensor], *, eps: float = FROZEN_BN_EPS
) -> ConversionResult:
    """ours -> Caffe2 blob names, folding BN statistics into ``s``/``b`` (for tests and export).

    ``s = weight / sqrt(running_var + eps)``, ``b = bias - running_mean * s``; exact when the
    statistics are FrozenBN's identity (mean 0, var ``1 - eps``). ``num_batches_tracked`` is
    dropped.
    """
    result = ConversionResult({}, "ours", "msra-pkl")
    inverse_branch = {v: k for k, v in _C2_BRANCH.items()}
    norms: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = re.match(
            r"^(.*)\.norm\.(weight|bias|running_mean|running_var|num_batches_tracked)$", key
        )
        if m:
            norms.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        if key == "stem.conv1.weight":
            new = "conv1_w"
        elif key in ("linear.weight", "linear.bias"):
            new = "fc1000_w" if key == "linear.weight" else "fc1000_b"
        else:
            mm = re.match(r"^res(\d)\.(\d+)\.(conv[123]|shortcut)\.weight$", key)
            if not mm:
                result.dropped.append((key, "no Caffe2 counterpart"))
                continue
            new = f"res{mm.group(1)}_{mm.group(2)}_{inverse_branch[mm.group(3)]}_w"
        result.state_dict[new] = value
        result.mapped.append((key, new))
    for prefix, parts in norms.items():
        if prefix == "stem.conv1":
            c2 = "res_conv1_bn"
        else:
            mm = re.match(r"^res(\d)\.(\d+)\.(conv[123]|shortcut)$", prefix)
            if not mm:
                result.dropped.extend(
                    (f"{prefix}.norm.{k}", "no Caffe2 counterpart") for k in parts
                )
                continue
            c2 = f"res{mm.group(1)}_{mm.group(2)}_{inverse_branch[mm.group(3)]}_bn"
        if "weight" not in parts or "bias" not in parts:
            result.dropped.extend(
                (f"{prefix}.norm.{k}", "norm without weight and bias") for k in parts
            )
            continue
        weight, bias = parts["weight"], parts["bias"]
        if "running_mean" not in parts and "running_var" not in parts:  # GroupNorm: no statistics
            gn = c2[: -len("_bn")] + "_gn"
            result.state_dict[gn + "_s"], result.state_dict[gn + "_b"] = weight, bias
            result.mapped.extend(
                [(f"{prefix}.norm.weight", gn + "_s"), (f"{prefix}.norm.bias", gn + "_b")]
            )
            continue
        mean = parts.get("running_mean", torch.zeros_like(weight))
        var = parts.get("running_var", torch.full_like(weight, 1.0 - eps))
        scale = weight * torch.rsqrt(var + eps)
        result.state_dict[c2 + "_s"] = scale
        result.state_dict[c2 + "_b"] = bias - mean * scale
        result.mapped.extend(
            [(f"{prefix}.norm.weight", c2 + "_s"), (f"{prefix}.norm.bias", c2 + "_b")]
        )
        for k in ("running_mean", "running_var"):
            if k in parts:
                result.mapped.append((f"{prefix}.norm.{k}", f"{c2}_s/{c2}_b (folded)"))
        if "num_batches_tracked" in parts:
            result.dropped.append(
                (f"{prefix}.norm.num_batches_tracked", "BN step counter; Caffe2 has none")
            )
    result.metadata.update(INPUT_CONVENTIONS["msra-pkl"])
    return result


# ---------------------------------------------------------------------------------- detectron2
_OURS_BACKBONE_RE = re.compile(r"^(stem\.|res[2-9]\.|linear\.)")


def detectron2_to_ours(
    state_dict: Mapping[str, torch.Tensor], *, backbone_only: Optional[bool] = None
) -> ConversionResult:
    """detectron2 names -> ours.

    * A bare backbone (every key under ``backbone.``): the prefix is removed.
    * A full detector (also ``proposal_generator.*``, ``roi_heads.*``, ...): by default every key is
      kept as it is, since our detector uses detectron2's names. With ``backbone_only=True`` the
      ResNet alone is extracted (``backbone.*`` and a C4 head's ``roi_heads.res5.*`` -> ``res5.*``)
      and every other tensor is dropped with its reason.
    * Keys already in our backbone naming (detectron2's ImageNet ``.pkl`` files) pass unchanged.
    """
    result = ConversionResult({}, "detectron2", "ours")
    keys = list(state_dict)
    full_model = any(
        not k.startswith(BACKBONE_PREFIX) and not _OURS_BACKBONE_RE.match(k) for k in keys
    )
    if backbone_only is None:
        backbone_only = not full_model
    for key, value in state_dict.items():
        if key.startswith("stem.fc."):
            # detectron2's convert-torchvision-to-d2.py prefixes every non-"layer" key with "stem.",
            # torchvision's classifier included
            new: Optional[str] = "linear." + key[len("stem.fc.") :]
            if not any(n.startswith("stem.fc") for n in result.notes):
                result.notes.append(
                    "stem.fc.* (the classifier as detectron2's convert-torchvision-to-d2.py "
                    "names it) -> linear.*"
                )
        elif not backbone_only:
            new = key
        elif key.startswith(BACKBONE_PREFIX):
            new = key[len(BACKBONE_PREFIX) :]
        elif key.startswith("roi_heads.res5."):
            new = key[len("roi_heads.") :]
        elif _OURS_BACKBONE_RE.match(key):
            new = key
        else:
            result.dropped.append((key, "not part of the ResNet backbone (backbone_only=True)"))
            continue
        if new in result.state_dict:
            result.dropped.append((key, f"duplicate of {new} (already taken from another key)"))
            continue
        result.state_dict[new] = value
        result.mapped.append((key, new))
    if not backbone_only:
        result.notes.append(
            "full detectron2 model: names kept as they are (our detector uses detectron2's names); "
            "pass backbone_only=True (CLI: --backbone-only) to extract the ResNet alone"
        )
    elif any(k.startswith("roi_heads.res5.") for k in keys):
        result.notes.append("res5 was taken from the C4 head (roi_heads.res5 -> res5)")
    return result


def ours_to_detectron2(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = BACKBONE_PREFIX
) -> ConversionResult:
    """ours -> detectron2: backbone keys (``stem.*``, ``resN.*``, ``linear.*``) get ``prefix``.

    Keys that already carry a prefix (a detector's ``backbone.*``, ``roi_heads.*``, ...) are left
    untouched, so ``detectron2 -> ours -> detectron2`` returns the original names exactly.
    ``prefix=""`` gives the unprefixed layout of detectron2's ImageNet initialization files.
    """
    result = ConversionResult({}, "ours", "detectron2")
    for key, value in state_dict.items():
        new = prefix + key if _OURS_BACKBONE_RE.match(key) else key
        if new in result.state_dict:
            result.dropped.append((key, f"duplicate of {new}"))
            continue
        result.state_dict[new] = value
        result.mapped.append((key, new))
    return result


def _identity(state_dict: Mapping[str, torch.Tensor], source: str, target: str) -> ConversionResult:
    result = ConversionResult(dict(state_dict), source, target)
    result.mapped = [(k, k) for k in state_dict]
    return result


# ------------------------------------------------------------------------------------- driver
def to_ours(state_dict: Mapping[str, torch.Tensor], source: str, **kwargs: Any) -> ConversionResult:
    """Convert from ``source`` (one of ``SOURCE_FORMATS``; ``"auto"`` detects it) to ours."""
    if source == "auto":
        source = detect_format(state_dict)
    converters: Dict[str, Callable[..., ConversionResult]] = {
        "torchvision": lambda sd: torchvision_to_ours(sd, source="torchvision"),
        "timm": lambda sd: torchvision_to_ours(sd, source="timm"),
        "msra-pkl": lambda sd: msra_to_ours(sd, **kwargs),
        "detectron2": lambda sd: detectron2_to_ours(sd, **kwargs),
        "ours": lambda sd: _identity(sd, "ours", "ours"),
    }
    if source not in converters:
        raise ValueError(
            f"unknown source format {source!r}; expected one of {', '.join(SOURCE_FORMATS)} "
            "or 'auto'"
        )
    return converters[source](state_dict)


def from_ours(
    state_dict: Mapping[str, torch.Tensor], target: str, **kwargs: Any
) -> ConversionResult:
    """Convert ours to ``target`` (one of ``TARGET_FORMATS``, or ``"msra-pkl"``)."""
    converters: Dict[str, Callable[..., ConversionResult]] = {
        "ours": lambda sd: _identity(sd, "ours", "ours"),
        "detectron2": lambda sd: ours_to_detectron2(sd, **kwargs),
        "torchvision": lambda sd: ours_to_torchvision(sd, **kwargs),
        "timm": lambda sd: ours_to_torchvision(sd, **kwargs),
        "msra-pkl": lambda sd: ours_to_msra(sd, **kwargs),
    }
    if target not in converters:
        raise ValueError(
            f"unknown target format {target!r}; expected one of {', '.join(TARGET_FORMATS)}"
        )
    return converters[target](state_dict)


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    target: str,
    *,
    source_kwargs: Optional[Dict[str, Any]] = None,
    target_kwargs: Optional[Dict[str, Any]] = None,
) -> ConversionResult:
    """Convert ``state_dict`` from ``source`` to ``target`` through ours, with one combined account.

    ``source`` may be ``"auto"``. ``mapped`` pairs are composed (original name -> final name);
    drops of both steps are listed under the original name where one exists.
    """
    if source == "auto":
        source = detect_format(state_dict)
    first = to_ours(state_dict, source, **(source_kwargs or {}))
    if target == "ours":
        return first
    second = from_ours(first.state_dict, target, **(target_kwargs or {}))
    back = {ours: orig for orig, ours in first.mapped}
    result = ConversionResult(second.state_dict, source, target)
    result.mapped = [(back.get(a, a), b) for a, b in second.mapped]
    result.dropped = first.dropped + [(back.get(a, a), r) for a, r in second.dropped]
    result.added = first.added + second.added
    result.notes = first.notes + second.notes
    result.metadata = {**first.metadata, **second.metadata}
    if source == "msra-pkl" and target == "torchvision":
        result.notes.append(
            "MSRA weights in a torchvision model: torchvision strides in the 3x3 conv and "
            "expects RGB, so the resulting model will NOT reproduce the MSRA network; use ours "
            "with stride_in_1x1=True"
        )
    return result


# ------------------------------------------------------------------------- architecture guess
# (bottleneck, blocks per stage) -> depth, from the network's own depth table (18, 34, 50, ...).
_DEPTHS: Dict[Tuple[bool, Tuple[int, ...]], int] = {
    (imagenet_uses_bottleneck(depth), blocks): depth
    for depth, blocks in IMAGENET_BLOCKS_PER_STAGE.items()
}


def infer_resnet_architecture(state_dict: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
    """Guess ``create_model`` arguments from an ours-named ResNet state dict, or ``None``.

    Returns ``{"name": "resnet50", "depth": 50, "blocks": (3, 4, 6, 3), "bottleneck": True,
    "num_classes": 1000 or None, "stages": ("res2", ...), "norm": "BN"|"FrozenBN"|"GN"}``.
    A state dict with fewer than four stages (a C4 detection backbone) gets the depth of the
    first ImageNet ResNet whose leading stages match.
    """
    if "stem.conv1.weight" not in state_dict:
        return None
    blocks: List[int] = []
    for stage in range(2, 6):
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^res{stage}\.(\d+)\.", k))}
        if not ids:
            break
        if ids != set(range(len(ids))):
            return None
        blocks.append(len(ids))
    if not blocks:
        return None
    bottleneck = "res2.0.conv3.weight" in state_dict
    depth = None
    for (bn, counts), d in _DEPTHS.items():
        if bn == bottleneck and counts[: len(blocks)] == tuple(blocks):
            depth = d
            break
    if depth is None:
        return None
    has_stats = "stem.conv1.norm.running_mean" in state_dict
    has_counter = "stem.conv1.norm.num_batches_tracked" in state_dict
    norm = (
        ("BN" if has_counter else "FrozenBN")
        if has_stats
        else ("GN" if "stem.conv1.norm.weight" in state_dict else "")
    )
    linear = state_dict.get("linear.weight")
    return {
        "name": f"resnet{depth}",
        "depth": depth,
        "blocks": tuple(blocks),
        "bottleneck": bottleneck,
        "num_classes": int(linear.shape[0]) if linear is not None and len(blocks) == 4 else None,
        "stages": tuple(f"res{i + 2}" for i in range(len(blocks))),
        "norm": norm,
    }

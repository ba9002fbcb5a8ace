"""Configuration: detectron2's keys and defaults in an fvcore ``CfgNode``."""

from .config import CfgNode, ConfigError


def get_cfg() -> CfgNode:
    """A fresh copy of the default config (detectron2's C4 keys and defaults, plus ours)."""
    from .defaults import _C

    return _C.clone()


__all__ = ["CfgNode", "ConfigError", "get_cfg"]

"""An fvcore ``CfgNode`` that refuses bad input with a message a user can act on.

Differences from detectron2's ``CfgNode`` (same key names, same ``_BASE_`` inheritance):

* YAML is always read with ``yaml.safe_load``: a config file cannot run code.
* Every file of a ``_BASE_`` chain is checked on its own, so an unknown key or a value of the wrong
  type is reported with the file it came from and the closest valid key ("did you mean ...").
* An integer is accepted where a float is expected (``BASE_LR: 1``).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterable

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from yacs.config import _check_and_coerce_cfg_value_type

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema of :func:`get_cfg`."""


class CfgNode(_FvcoreCfgNode):
    """detectron2-compatible config node with strict, explained validation."""

    # ----------------------------------------------------------------- loading
    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge ``cfg_filename`` and its ``_BASE_`` chain into this config.

        ``allow_unsafe`` is accepted for detectron2 compatibility and ignored: YAML is always
        loaded safely.
        """
        merged = self._load_checked(os.fspath(cfg_filename), chain=())
        self.merge_from_other_cfg(type(self)(merged))

    def merge_from_list(self, cfg_list: list) -> None:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` command-line overrides into this config."""
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"command line: overrides must be KEY VALUE pairs, got an odd number of items: "
                f"{list(cfg_list)}"
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            parent, leaf = self._resolve(full_key, source="command line")
            if isinstance(parent[leaf], CfgNode):
                raise ConfigError(
                    f"command line: '{full_key}' is a group of keys, not a value; set one of "
                    f"{sorted(parent[leaf].keys())}"
                )
            parent[leaf] = _coerce(
                self._decode_cfg_value(raw), parent[leaf], full_key, "command line"
            )

    def _load_checked(self, filename: str, chain: tuple[str, ...]) -> dict[str, Any]:
        """Load one YAML file and its bases, checking each file's own keys against the schema."""
        filename = os.path.abspath(os.path.expanduser(filename))
        if filename in chain:
            raise ConfigError(f"{filename}: _BASE_ cycle: {' -> '.join(chain + (filename,))}")
        if not os.path.isfile(filename):
            where = f" (the _BASE_ of {chain[-1]})" if chain else ""
            raise ConfigError(f"config file '{filename}'{where} does not exist")
        with open(filename, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"{filename}: not valid YAML: {e}") from e
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(
                f"{filename}: expected a mapping of config keys, got {type(data).__name__}"
            )

        bases = data.pop(BASE_KEY, [])
        merged: dict[str, Any] = {}
        for base in [bases] if isinstance(bases, str) else list(bases):
            base_path = os.path.expanduser(str(base))
            if not os.path.isabs(base_path):
                base_path = os.path.join(os.path.dirname(filename), base_path)
            _merge_dicts(self._load_checked(base_path, chain + (filename,)), merged)
        self._check_dict(data, self, prefix="", source=filename)
        _merge_dicts(data, merged)
        return merged

    # -------------------------------------------------------------- validation
    def _check_dict(self, data: dict, node: "CfgNode", prefix: str, source: str) -> None:
        """Check (and coerce in place) every key of ``data`` against ``node``."""
        for key in list(data):
            full_key = prefix + str(key)
            if key not in node:
                full_key = _first_leaf(data[key], full_key)
                raise ConfigError(
                    f"{source}: unknown config key '{full_key}'{self._suggest(full_key)}"
                )
            default = node[key]
            if isinstance(default, CfgNode):
                if not isinstance(data[key], dict):
                    raise ConfigError(
                        f"{source}: '{full_key}' is a group of keys and expects a mapping, "
                        f"got {type(data[key]).__name__} {data[key]!r}"
                    )
                self._check_dict(data[key], default, full_key + ".", source)
            else:
                data[key] = _coerce(self._decode_cfg_value(data[key]), default, full_key, source)

    def _resolve(self, full_key: str, source: str) -> tuple["CfgNode", str]:
        node = self
        parts = full_key.split(".")
        for part in parts[:-1]:
            if not isinstance(node, CfgNode) or part not in node:
                raise ConfigError(
                    f"{source}: unknown config key '{full_key}'{self._suggest(full_key)}"
                )
            node = node[part]
        if not isinstance(node, CfgNode) or parts[-1] not in node:
            raise ConfigError(f"{source}: unknown config key '{full_key}'{self._suggest(full_key)}")
        return node, parts[-1]

    def all_keys(self) -> list[str]:
        """Every leaf key as a dotted path, e.g. ``MODEL.RESNETS.DEPTH``."""
        return list(_flatten_keys(self, ""))

    def _suggest(self, full_key: str) -> str:
        keys = self.all_keys()
        leaf = full_key.rsplit(".", 1)[-1].upper()
        same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
        close = same_leaf or difflib.get_close_matches(full_key.upper(), keys, n=1, cutoff=0.6)
        if not close:
            close = [k for k in keys if leaf in k.rsplit(".", 1)[-1].split("_")][:1]
        return f"; did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, default: Any, full_key: str, source: str) -> Any:
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        return _check_and_coerce_cfg_value_type(
            value, default, full_key.rsplit(".", 1)[-1], full_key
        )
    except ValueError:
        raise ConfigError(
            f"{source}: config key '{full_key}' expects {type(default).__name__} "
            f"(default {default!r}), got {type(value).__name__} {value!r}"
        ) from None


def _first_leaf(value: Any, full_key: str) -> str:
    """The dotted path of the first leaf under ``value`` (for naming an unknown group's key)."""
    while isinstance(value, dict) and value:
        key, value = next(iter(value.items()))
        full_key = f"{full_key}.{key}"
    return full_key


def _flatten_keys(node: CfgNode, prefix: str) -> Iterable[str]:
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _flatten_keys(value, prefix + key + ".")
        else:
            yield prefix + key


def _merge_dicts(src: dict, dst: dict) -> None:
    """Merge ``src`` into ``dst`` recursively; values of ``src`` win."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_dicts(value, dst[key])
        else:
            dst[key] = value

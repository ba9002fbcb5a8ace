"""Look names up in registries with errors that say what to fix.

Every config key that names a registered builder (``MODEL.META_ARCHITECTURE``,
``MODEL.BACKBONE.NAME``, ``MODEL.RPN.HEAD_NAME`` ...) and every registry of names (models,
datasets) fails the same way on an unknown name: a ``KeyError`` naming the key or kind, the
bad value, the closest registered names ("did you mean ...", as the config's unknown-key errors)
and all registered names.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, List

from fvcore.common.registry import Registry

__all__ = ["build_from_registry", "did_you_mean", "lookup", "not_registered"]


def did_you_mean(name: str, candidates: Iterable[str], *, n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the candidates closest to ``name``, or ``""``.

    Closeness is difflib's ratio (at least ``cutoff``, the ``n`` best); where none is that close,
    a candidate equal to ``name`` but for case (``rpn`` for ``RPN``).
    """
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=cutoff)
    if not close:
        close = [c for c in candidates if c.lower() == name.lower()][:n]
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _registered(known: List[str]) -> str:
    return f"(registered: {', '.join(known) or 'none'})"


def not_registered(kind: str, name: str, known: Iterable[str]) -> KeyError:
    """``KeyError: <kind> '<name>' is not registered; did you mean ...? (registered: ...)``."""
    known = sorted(known)
    return KeyError(
        f"{kind} '{name}' is not registered{did_you_mean(name, known)} {_registered(known)}"
    )


def lookup(registry: Registry, name: str, key: str, what: str) -> Any:
    """What ``registry`` holds under ``name``, which came from config key ``key``.

    An unknown name raises ``KeyError: <key>: unknown <what> '<name>'; did you mean ...?
    (registered: ...)``, e.g. ``what="backbone builder"`` for ``MODEL.BACKBONE.NAME``.
    """
    if name not in registry:
        known = sorted(n for n, _ in registry)
        raise KeyError(
            f"{key}: unknown {what} '{name}'{did_you_mean(name, known)} {_registered(known)}"
        )
    return registry.get(name)


def build_from_registry(
    registry: Registry, name: str, key: str, what: str, *args: Any, **kwargs: Any
) -> Any:
    """``lookup(registry, name, key, what)(*args, **kwargs)``: build the registered thing."""
    return lookup(registry, name, key, what)(*args, **kwargs)

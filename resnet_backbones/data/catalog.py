"""Datasets by name: detectron2's ``DatasetCatalog`` and ``MetadataCatalog``.

``DatasetCatalog.register(name, func)`` records a zero-argument function returning a list of
detectron2-style dicts; ``MetadataCatalog.get(name)`` holds facts about it (thing_classes,
evaluator_type, json_file, ...). Names and behaviour mirror detectron2 so that user code ports as
is.
"""

from __future__ import annotations

from collections import UserDict
from typing import Any, Callable, Dict, List

from ..utils.registry import not_registered


class _DatasetCatalog(UserDict):
    """A global map from dataset name to the function that loads it."""

    def register(self, name: str, func: Callable[[], List[Dict[str, Any]]]) -> None:
        if not callable(func):
            raise TypeError(
                f"DatasetCatalog.register('{name}', ...): expected a callable, "
                f"got {type(func).__name__}"
            )
        if name in self:
            raise ValueError(f"dataset '{name}' is already registered")
        self[name] = func

    def get(self, name: str) -> List[Dict[str, Any]]:  # type: ignore[override]
        """Call the registered loader of ``name`` and return its list of dicts."""
        try:
            func = self[name]
        except KeyError:
            raise not_registered("dataset", name, self.keys()) from None
        return func()

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


class Metadata:
    """Attributes of one dataset; an attribute, once set, cannot silently change."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        object.__setattr__(self, "name", name)
        self.set(**kwargs)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        known = [k for k in self.__dict__ if k != "name"]
        raise AttributeError(
            f"metadata of dataset '{self.__dict__.get('name')}' has no attribute '{key}' "
            f"(it has: {', '.join(sorted(known)) or 'nothing'})"
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and self.__dict__[key] != value:
            raise ValueError(
                f"metadata '{key}' of dataset '{self.name}' is already {self.__dict__[key]!r}; "
                f"refusing to change it to {value!r}"
            )
        object.__setattr__(self, key, value)

    def set(self, **kwargs: Any) -> "Metadata":
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


class _MetadataCatalog(UserDict):
    """A global map from dataset name to its :class:`Metadata`, created on first access."""

    def get(self, name: str) -> Metadata:  # type: ignore[override]
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()

"""Read pickle files without running code from them: a restricted unpickler.

A pickle can name any importable callable and call it while loading (``os.system``,
``builtins.eval``, ...). Weight files (detectron2 ``.pkl`` checkpoints, Caffe2/MSRA ImageNet models)
only need plain containers and numpy arrays, so :class:`RestrictedUnpickler` admits exactly those
globals and refuses every other one *before* it is imported or called.

Admitted globals (``find_class``):

* builtins (``builtins``, or ``__builtin__`` in Python 2 pickles): ``dict``, ``list``, ``tuple``,
  ``set``, ``frozenset``, ``bytearray``, ``str``, ``bytes``, ``int``, ``float``, ``complex``,
  ``bool``, ``slice``; ``collections.OrderedDict``;
* ``_codecs.encode`` (how Python 3 writes ``bytes`` at protocol <= 2; it only encodes a string);
* numpy arrays, dtypes and scalars: ``numpy.ndarray``, ``numpy.dtype``, and
  ``_reconstruct`` / ``scalar`` / ``_frombuffer`` from ``numpy.core.multiarray`` /
  ``numpy.core.numeric`` (numpy 1) or ``numpy._core.*`` (numpy 2, both spellings load in both).

str, bytes, numbers, bool and None need no global at all. Python 2 pickles (Caffe2 model zoo
files) must be read with ``encoding="latin1"``, the default here, so that their byte strings
(numpy array data) come back unchanged.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO, Dict, FrozenSet, Optional, Tuple, Union

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "UnsafePickleError", "safe_load", "safe_loads"]

_BUILTIN_NAMES = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "bytearray",
        "str",
        "bytes",
        "int",
        "float",
        "complex",
        "bool",
        "slice",
    }
)
_NUMPY_MULTIARRAY = frozenset({"_reconstruct", "scalar"})
_NUMPY_NUMERIC = frozenset({"_frombuffer"})

#: module -> names that may be looked up while unpickling. Anything else raises UnsafePickleError.
ALLOWED_GLOBALS: Dict[str, FrozenSet[str]] = {
    "builtins": _BUILTIN_NAMES,
    "__builtin__": _BUILTIN_NAMES,  # Python 2 spelling (mapped to builtins by fix_imports)
    "collections": frozenset({"OrderedDict"}),
    "_codecs": frozenset({"encode"}),
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": _NUMPY_MULTIARRAY,
    "numpy._core.multiarray": _NUMPY_MULTIARRAY,
    "numpy.core.numeric": _NUMPY_NUMERIC,
    "numpy._core.numeric": _NUMPY_NUMERIC,
}

# numpy 2 renamed numpy.core to numpy._core (keeping a deprecated alias); numpy 1 has only the old
# name. Resolve either spelling to whichever this numpy provides.
_NUMPY_CORE_ALIASES = {
    "numpy.core.multiarray": ("numpy._core.multiarray", "numpy.core.multiarray"),
    "numpy._core.multiarray": ("numpy._core.multiarray", "numpy.core.multiarray"),
    "numpy.core.numeric": ("numpy._core.numeric", "numpy.core.numeric"),
    "numpy._core.numeric": ("numpy._core.numeric", "numpy.core.numeric"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside :data:`ALLOWED_GLOBALS`; nothing of it was run."""

    def __init__(self, message: str, *, source: str, module: str, name: str) -> None:
        super().__init__(message)
        self.source = source
        self.module = module
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`.

    Args:
        file: a binary file object.
        source: how to name the data in error messages (usually the file path).
        encoding: how to decode Python 2 byte strings; ``"latin1"`` keeps numpy data intact.
    """

    def __init__(
        self, file: BinaryIO, *, source: str = "<pickle>", encoding: str = "latin1"
    ) -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name not in ALLOWED_GLOBALS.get(module, ()):
            raise UnsafePickleError(
                f"{self.source}: refusing to load the global '{module}.{name}' from a pickle: "
                f"only plain containers, numbers, strings and numpy arrays may appear in a weights "
                f"file (a pickle that names other globals can run arbitrary code). Nothing from "
                f"the file was executed. "
                f"If you trust the file, convert it in a separate process into a plain state dict "
                f"(torch.save of name -> tensor) and load that instead.",
                source=self.source,
                module=module,
                name=name,
            )
        if module in _NUMPY_CORE_ALIASES:
            import importlib

            for candidate in _NUMPY_CORE_ALIASES[module]:
                try:
                    return getattr(importlib.import_module(candidate), name)
                except (ImportError, AttributeError):
                    continue
        return super().find_class(module, name)


def safe_loads(data: bytes, *, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()


def safe_load(
    file: Union[str, os.PathLike, BinaryIO],
    *,
    encoding: str = "latin1",
    source: Optional[str] = None,
) -> Any:
    """Unpickle a path or binary file object with :class:`RestrictedUnpickler`.

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafePickleError: the pickle names a global that is not admitted (nothing was executed).
        pickle.UnpicklingError: the data is not a (complete) pickle; the message names the file.
    """
    if isinstance(file, (str, os.PathLike)):
        path = os.fspath(file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        with open(path, "rb") as f:
            return safe_load(f, encoding=encoding, source=source or path)
    name = source or getattr(file, "name", None) or "<stream>"
    try:
        return RestrictedUnpickler(file, source=str(name), encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        UnicodeDecodeError,
    ) as e:
        raise pickle.UnpicklingError(
            f"{name}: not a readable pickle ({type(e).__name__}: {e})"
        ) from e


def allowed_globals() -> Tuple[str, ...]:
    """``"module.name"`` for every admitted global (for documentation and error messages)."""
    return tuple(sorted(f"{m}.{n}" for m, names in ALLOWED_GLOBALS.items() for n in names))

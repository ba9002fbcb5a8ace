"""Crash-safe checkpoint writes for fvcore's ``Checkpointer``.

A checkpoint file is written to a temporary file in the same directory, flushed and ``fsync``-ed,
then renamed over the final name with ``os.replace`` (atomic on POSIX and Windows), and the
directory entry is ``fsync``-ed. The ``last_checkpoint`` pointer is written the same way, after the
checkpoint it names. A process killed at any moment (``SIGKILL``, power loss after the rename)
therefore leaves either the previous complete checkpoint and pointer, or the new ones: never a
truncated ``.pth`` file nor a pointer to a file that is not fully on disk.

* :func:`atomic_torch_save`, :func:`atomic_write_text`, :func:`atomic_write_bytes`: the primitives.
* :class:`AtomicSaveMixin`: put it before any fvcore ``Checkpointer`` subclass in the bases
  (``class C(AtomicSaveMixin, DetectionCheckpointer)``) to make its ``save`` and
  ``tag_last_checkpoint`` atomic; :func:`with_atomic_save` builds that class for you.
* :class:`AtomicCheckpointer`: fvcore's ``Checkpointer`` with atomic saves.
"""
from __future__ import annotations

import io
import os
import tempfile
import threading
from typing import Any, Callable, Dict, Type

import torch
from fvcore.common.checkpoint import Checkpointer

__all__ = [
    "AtomicCheckpointer",
    "AtomicSaveMixin",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "with_atomic_save",
]

LAST_CHECKPOINT = "last_checkpoint"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK_LOCK = threading.Lock()


def _file_mode() -> int:
    """The mode ``open()`` would give a new file (mkstemp's 0600 would hide checkpoints from other users)."""
    with _UMASK_LOCK:
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + fsync + rename)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f))


class AtomicSaveMixin:
    """Atomic ``save``/``tag_last_checkpoint`` for an fvcore ``Checkpointer`` subclass (list it first)."""

    def _checkpoint_data(self, **kwargs: Any) -> Dict[str, Any]:
        data: Dict[str, Any] = {"model": self.model.state_dict()}  # type: ignore[attr-defined]
        for key, obj in self.checkpointables.items():  # type: ignore[attr-defined]
            data[key] = obj.state_dict()
        data.update(kwargs)
        return data

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` (model, checkpointables, ``kwargs``) and point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:  # type: ignore[attr-defined]
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)  # type: ignore[attr-defined]
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
        data = self._checkpoint_data(**kwargs)
        self.logger.info("Saving checkpoint to %s", save_file)  # type: ignore[attr-defined]
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write the ``last_checkpoint`` pointer file."""
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename)  # type: ignore[attr-defined]


class AtomicCheckpointer(AtomicSaveMixin, Checkpointer):
    """fvcore's ``Checkpointer`` whose checkpoints and ``last_checkpoint`` are written atomically."""


def with_atomic_save(checkpointer_cls: Type[Checkpointer]) -> Type[Checkpointer]:
    """A subclass of ``checkpointer_cls`` with :class:`AtomicSaveMixin` (itself if it already has it)."""
    if issubclass(checkpointer_cls, AtomicSaveMixin):
        return checkpointer_cls
    return type(f"Atomic{checkpointer_cls.__name__}", (AtomicSaveMixin, checkpointer_cls), {})

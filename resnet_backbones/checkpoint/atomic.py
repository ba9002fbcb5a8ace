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
  ``tag_last_checkpoint`` atomic; :func:`with_atomic_save` builds that class for you. A save
  that fails (a full disk) says which file was not written and that ``last_checkpoint`` still
  names the previous one. Its ``resume_or_load(resume=True)`` refuses a ``last_checkpoint`` that
  names a missing or unreadable file with :class:`ResumeError`, listing the checkpoints of the
  directory that do load, rather than crashing deep in ``torch.load``: nothing is changed or
  deleted, the user picks the checkpoint to resume from.
* :class:`AtomicCheckpointer`: fvcore's ``Checkpointer`` with atomic saves.

A process killed during a save leaves its temporary file (``.model_0000009.pth.XXXX.tmp``) next
to the checkpoints; a resume logs a warning naming such files, which are safe to delete.
"""

from __future__ import annotations

import glob
import io
import os
import re
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from fvcore.common.checkpoint import Checkpointer

__all__ = [
    "AtomicCheckpointer",
    "AtomicSaveMixin",
    "ResumeError",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "unusable_last_checkpoint",
    "with_atomic_save",
]

LAST_CHECKPOINT = "last_checkpoint"
# the temporary files of _atomic_write: ".{final name}.{random}.tmp"
_TEMP_RE = re.compile(r"^\..+\.[^.]+\.tmp$")


class ResumeError(RuntimeError):
    """``last_checkpoint`` names a checkpoint that is missing or cannot be read."""


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
    """The mode ``open()`` would give a new file.

    (mkstemp's 0600 would hide checkpoints from other users.)
    """
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


def _read_pointer(save_dir: str) -> Optional[str]:
    """The file name written in ``save_dir/last_checkpoint`` (None if there is no such file)."""
    try:
        with open(os.path.join(save_dir, LAST_CHECKPOINT), encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _loadable_checkpoints(
    save_dir: str, exclude: str, load_file: Callable[[str], Any]
) -> List[Tuple[str, Optional[int]]]:
    """``(file name, iteration)`` of every ``.pth`` in ``save_dir`` that ``load_file`` reads,
    newest iteration first (only called when a resume has failed: it reads every file)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(save_dir), "*.pth")):
        name = os.path.basename(path)
        if name == exclude:
            continue
        try:
            data = load_file(path)
        except Exception:  # unreadable: not a candidate
            continue
        it = data.get("iteration") if isinstance(data, dict) else None
        found.append((name, int(it) if isinstance(it, (int, float)) else None))
    return sorted(found, key=lambda x: (x[1] is None, -(x[1] or 0), x[0]))


def unusable_last_checkpoint(save_dir: str, problem: str, load_file: Callable[[str], Any]) -> str:
    """The message of a resume whose ``last_checkpoint`` target ``problem`` (e.g. "does not
    exist"): what was found, the checkpoints of ``save_dir`` that ``load_file`` reads, and how to
    resume from one of them."""
    pointer = os.path.join(save_dir, LAST_CHECKPOINT)
    name = _read_pointer(save_dir) or ""
    target = f"names {name!r}, which {problem}" if name else "is empty"
    others = _loadable_checkpoints(save_dir, name, load_file)
    if others:
        listed = ", ".join(n + (f" (iteration {i})" if i is not None else "") for n, i in others)
        choice = (
            f"Checkpoints in {save_dir} that load: {listed}. To resume from one, write its name "
            f"into {pointer} (e.g. echo {others[0][0]} > {pointer}); to start over, run without "
            f"--resume or with another OUTPUT_DIR."
        )
    else:
        choice = (
            f"No other checkpoint in {save_dir} loads; restore the file, or start over without "
            f"--resume or with another OUTPUT_DIR."
        )
    return f"--resume: {pointer} {target}. Nothing was loaded, changed or deleted. {choice}"


class AtomicSaveMixin:
    """Atomic ``save``/``tag_last_checkpoint`` and a checked resume for an fvcore ``Checkpointer``
    subclass (list it first)."""

    def _checkpoint_data(self, **kwargs: Any) -> Dict[str, Any]:
        data: Dict[str, Any] = {"model": self.model.state_dict()}  # type: ignore[attr-defined]
        for key, obj in self.checkpointables.items():  # type: ignore[attr-defined]
            data[key] = obj.state_dict()
        data.update(kwargs)
        return data

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``{save_dir}/{name}.pth`` (model, checkpointables, ``kwargs``) and point
        ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:  # type: ignore[attr-defined]
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)  # type: ignore[attr-defined]
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name, got {name!r}")
        data = self._checkpoint_data(**kwargs)
        self.logger.info("Saving checkpoint to %s", save_file)  # type: ignore[attr-defined]
        previous = _read_pointer(self.save_dir)  # type: ignore[attr-defined]
        kept = (
            f"{LAST_CHECKPOINT} still names {previous}, which is unchanged"
            if previous
            else f"no {LAST_CHECKPOINT} was written"
        )
        try:
            atomic_torch_save(data, save_file)
        except OSError as e:
            raise _save_error(e, f"checkpoint {save_file} was not written ({kept})") from e
        try:
            self.tag_last_checkpoint(basename)
        except OSError as e:
            raise _save_error(e, f"checkpoint {save_file} was written, but {kept}") from e

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """fvcore's ``resume_or_load``; a ``last_checkpoint`` naming a missing or unreadable file
        raises :class:`ResumeError` (see :func:`unusable_last_checkpoint`) instead."""
        if not (resume and self.has_checkpoint()):  # type: ignore[attr-defined]
            return super().resume_or_load(path, resume=resume)  # type: ignore[misc]
        save_dir = self.save_dir  # type: ignore[attr-defined]
        self._warn_about_temp_files(save_dir)
        name = _read_pointer(save_dir) or ""
        target = os.path.join(save_dir, name)
        if not name or not os.path.isfile(target):
            raise ResumeError(unusable_last_checkpoint(save_dir, "does not exist", self._load_file))
        try:
            checkpoint = self._load_file(target)  # type: ignore[attr-defined]
        except Exception as e:
            problem = f"cannot be read ({type(e).__name__}: {e})"
            raise ResumeError(unusable_last_checkpoint(save_dir, problem, self._load_file)) from e
        self._preloaded = (target, checkpoint)  # load() reads it from here, not twice
        try:
            return self.load(target)  # type: ignore[attr-defined]
        finally:
            self._preloaded = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        preloaded = getattr(self, "_preloaded", None)
        if preloaded is not None and preloaded[0] == filename:
            return preloaded[1]
        return super()._load_file(filename)  # type: ignore[misc]

    def _warn_about_temp_files(self, save_dir: str) -> None:
        names = os.listdir(save_dir) if os.path.isdir(save_dir) else []
        left = sorted(n for n in names if _TEMP_RE.match(n))
        if left:
            self.logger.warning(  # type: ignore[attr-defined]
                "%s: %s left by an interrupted save; not used, safe to delete",
                save_dir,
                ", ".join(left),
            )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write the ``last_checkpoint`` pointer file."""
        atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT), last_filename_basename)  # type: ignore[attr-defined]


def _save_error(e: OSError, what: str) -> OSError:
    """``e`` (a full disk, ...) with what happened to the checkpoint and the pointer."""
    message = f"{e.strerror or e}: {what}"
    return OSError(e.errno, message) if e.errno is not None else OSError(message)


class AtomicCheckpointer(AtomicSaveMixin, Checkpointer):
    """fvcore's ``Checkpointer`` whose checkpoints and ``last_checkpoint`` are written
    atomically."""


def with_atomic_save(checkpointer_cls: Type[Checkpointer]) -> Type[Checkpointer]:
    """A subclass of ``checkpointer_cls`` with :class:`AtomicSaveMixin` (itself if it already
    has it)."""
    if issubclass(checkpointer_cls, AtomicSaveMixin):
        return checkpointer_cls
    return type(f"Atomic{checkpointer_cls.__name__}", (AtomicSaveMixin, checkpointer_cls), {})

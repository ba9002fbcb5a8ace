"""Start single- or multi-process training (detectron2's ``launch``), on CUDA or on CPU.

``launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args)``:

* world size 1: calls ``main_func(*args)`` in this process;
* otherwise starts ``num_gpus_per_machine`` worker processes (``spawn``); each joins the process
  group (NCCL on CUDA, gloo for ``backend="gloo"``, e.g. ``MODEL.DEVICE cpu``), sets its CUDA device
  and calls ``main_func(*args)``;
* under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set by the launcher) no process is
  started: this process joins the group through ``env://`` and runs ``main_func``; the process
  count comes from ``torchrun --nproc-per-node`` and ``--num-gpus`` is ignored.

Failures never hang: if a worker fails, the others get ``failure_grace_period`` seconds to end on
their own (a collective with the dead peer errors out under gloo), then are killed; ``launch``
raises :class:`ProcessFailedError` with the failing rank's traceback (the earliest failure, i.e.
the cause rather than its echoes on other ranks). Workers die with their parent (Linux
``PR_SET_PDEATHSIG``). Collectives time out after ``timeout`` (30 minutes by default).
SIGTERM/SIGINT sent to the launching process are forwarded to the workers, which save a checkpoint
and stop (see ``hooks.StopOnSignal``); ``launch`` then raises :class:`LaunchInterrupted`.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..utils import comm

__all__ = [
    "DEFAULT_TIMEOUT",
    "LaunchInterrupted",
    "ProcessFailedError",
    "launch",
    "launched_by_torchrun",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


class ProcessFailedError(RuntimeError):
    """A worker process failed; the message holds its rank, pid and traceback (or exit code)."""

    def __init__(
        self, message: str, rank: int, pid: Optional[int], exitcode: Optional[int]
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.pid = pid
        self.exitcode = exitcode


class LaunchInterrupted(KeyboardInterrupt):
    """The launching process got SIGTERM/SIGINT; the workers were told to checkpoint and stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"interrupted by {signal.Signals(signum).name}; "
            "the workers saved a checkpoint and stopped"
        )
        self.signum = signum
        self.exit_code = 128 + signum


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun / torch.distributed.elastic (env:// variables
    set)."""
    return (
        all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        and not dist.is_initialized()
    )


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _set_cpu_threads(nprocs: int) -> None:
    # N processes sharing the machine's cores: don't let each of them use all of them
    if "OMP_NUM_THREADS" not in os.environ:
        try:
            ncpu = len(os.sched_getaffinity(0))
        except AttributeError:
            ncpu = os.cpu_count() or 1
        torch.set_num_threads(max(1, ncpu // max(1, nprocs)))


def _setup_rank(backend: str, local_rank: int, local_world_size: int) -> None:
    comm.create_local_process_group(local_world_size)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    else:
        _set_cpu_threads(local_world_size)
    comm.synchronize()


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
    failure_grace_period: float = 10.0,
) -> Any:
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes (or this one).

    Args:
        num_gpus_per_machine: processes per machine (GPUs; or CPU processes with
            ``backend="gloo"``).
        dist_url: ``tcp://host:port`` of machine 0 (``"auto"``: a free local port, one machine
            only), or ``file:///shared/path``.
        timeout: the process-group timeout (collectives that wait longer fail).
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
        failure_grace_period: seconds the other workers get to exit after one fails before they
            are killed.

    Returns ``main_func``'s result when it runs in this process (world size 1 or torchrun), else
    None.
    """
    backend = (backend or _default_backend()).lower()
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if launched_by_torchrun():
        return _run_under_torchrun(
            main_func, args, timeout, backend, num_gpus_per_machine * num_machines
        )

    world_size = num_machines * num_gpus_per_machine
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(
            "need num_gpus_per_machine >= 1, num_machines >= 1 "
            "and 0 <= machine_rank < num_machines; got "
            f"{num_gpus_per_machine}, {num_machines}, {machine_rank}"
        )
    if world_size == 1:
        return main_func(*args)

    if backend == "nccl":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available < num_gpus_per_machine:
            raise RuntimeError(
                f"--num-gpus {num_gpus_per_machine} needs as many CUDA devices, "
                f"this machine has {available}; "
                f"for CPU processes set MODEL.DEVICE cpu (gloo backend)"
            )
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError(
                "dist_url='auto' works on one machine only; "
                "pass --dist-url tcp://<machine 0>:<port>"
            )
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method across machines; prefer tcp://")
    _spawn_and_supervise(
        main_func,
        args,
        num_gpus_per_machine,
        world_size,
        machine_rank,
        dist_url,
        timeout,
        backend,
        failure_grace_period,
    )
    return None


def _run_under_torchrun(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    timeout: timedelta,
    backend: str,
    requested_world: int,
) -> Any:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if requested_world not in (1, world) and rank == 0:
        logger.warning(
            "running under torchrun with %d processes; --num-gpus/--num-machines (%d) ignored",
            world,
            requested_world,
        )
    if world == 1:
        return main_func(*args)
    dist.init_process_group(
        backend=backend, init_method="env://", world_size=world, rank=rank, timeout=timeout
    )
    try:
        _setup_rank(backend, local_rank, local_world)
        return main_func(*args)
    finally:
        # a clean exit only; on an error the launcher (torchrun) tears the other ranks down
        if sys.exc_info()[0] is None:
            _close_process_group()


def _close_process_group() -> None:
    """After a clean finish: wait for every rank to be done, then tear the process group down.

    Without the barrier one rank can shut its gloo connections while a peer is still completing
    its last collective.
    """
    if not dist.is_initialized():
        return
    comm.synchronize()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------- spawning
def _set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Linux: get ``sig`` when the parent dies, so that no worker outlives its launcher."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: Sequence[Any],
    local_world: int,
    world_size: int,
    machine_rank: int,
    dist_url: str,
    timeout: timedelta,
    backend: str,
    error_dir: str,
    parent_pid: int,
) -> None:
    _set_pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    rank = machine_rank * local_world + local_rank
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
        )
        _setup_rank(backend, local_rank, local_world)
        main_func(*args)
    except KeyboardInterrupt as e:  # a graceful stop on a signal (TrainingInterrupted) or Ctrl-C
        sys.stderr.flush()
        os._exit(int(getattr(e, "exit_code", 130)))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code != 0:
            _write_error(error_dir, rank, f"SystemExit: {e.code}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    except BaseException:  # noqa: BLE001 - reported to the parent, then exit without hanging
        _write_error(error_dir, rank, traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        # os._exit: interpreter shutdown could block on a broken process group or on threads
        os._exit(1)
    try:
        _close_process_group()
    except Exception:  # noqa: BLE001 - main_func succeeded; a failed peer is the supervisor's to report
        pass


def _write_error(error_dir: str, rank: int, text: str) -> None:
    path = os.path.join(error_dir, f"rank{rank}.err")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"{time.time():.6f}\n{text}")
        os.replace(path + ".tmp", path)
    except OSError:
        sys.stderr.write(f"[rank {rank}] failed:\n{text}\n")


def _read_error(error_dir: str, rank: int) -> Optional[tuple]:
    try:
        with open(os.path.join(error_dir, f"rank{rank}.err"), encoding="utf-8") as f:
            stamp, _, text = f.read().partition("\n")
        return float(stamp), text
    except (OSError, ValueError):
        return None


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "was killed"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _spawn_and_supervise(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    local_world: int,
    world_size: int,
    machine_rank: int,
    dist_url: str,
    timeout: timedelta,
    backend: str,
    grace: float,
) -> None:
    ctx = multiprocessing.get_context("spawn")
    error_dir = tempfile.mkdtemp(prefix="rb_launch_")
    procs: List[Any] = []
    received: List[int] = []

    def forward(signum: int, frame: Any) -> None:
        if received and signum == signal.SIGINT and signal.SIGINT in received:
            # a second Ctrl-C: stop waiting for the workers
            for p in procs:
                if p.is_alive():
                    p.kill()
            return
        received.append(signum)
        for p in procs:
            if p.is_alive():
                try:
                    os.kill(p.pid, signum)
                except OSError:
                    pass

    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, forward)
    try:
        for local_rank in range(local_world):
            p = ctx.Process(
                target=_worker,
                args=(
                    local_rank,
                    main_func,
                    tuple(args),
                    local_world,
                    world_size,
                    machine_rank,
                    dist_url,
                    timeout,
                    backend,
                    error_dir,
                    os.getpid(),
                ),
                daemon=False,
            )
            p.start()
            procs.append(p)
        failed = _supervise(procs, received, grace)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for p in procs:  # nothing may outlive launch()
            if p.is_alive():
                p.kill()
            p.join()

    if failed is not None:
        _raise_failure(procs, failed, error_dir, machine_rank * local_world)
    if received:
        raise LaunchInterrupted(received[0])


def _supervise(procs: List[Any], received: List[int], grace: float) -> Optional[List[int]]:
    """Wait for the workers; on the first failure give the others ``grace`` seconds, then kill them.

    Returns the local indices of the workers that failed (None if none did).
    """
    alive = {p.sentinel: i for i, p in enumerate(procs)}
    failed: List[int] = []
    deadline: Optional[float] = None
    while alive:
        wait = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(list(alive), timeout=wait)
        for sentinel in ready:
            i = alive.pop(sentinel)
            procs[i].join()
            code = procs[i].exitcode
            # after a forwarded signal, ending by it (or by our 128 + signum exit) is not a failure
            interrupted_ok = bool(received) and code in (128 + received[0], -received[0])
            if code != 0 and not interrupted_ok:
                failed.append(i)
        if failed and deadline is None:
            logger.error(
                "worker %d %s; stopping the other workers (they are killed after %.0f s)",
                failed[0],
                _describe_exit(procs[failed[0]].exitcode),
                grace,
            )
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() >= deadline:
            for sentinel, i in list(alive.items()):
                procs[i].kill()
                procs[i].join()
                alive.pop(sentinel)
    return failed or None


def _raise_failure(procs: List[Any], failed: List[int], error_dir: str, rank_offset: int) -> None:
    # report the earliest error: the cause, not a peer's "connection closed" that followed it
    reports = []
    for i in failed:
        err = _read_error(error_dir, rank_offset + i)
        reports.append((err[0] if err else float("inf"), i, err[1] if err else None))
    reports.sort(key=lambda r: (r[0], r[1]))
    _, first, text = reports[0]
    p = procs[first]
    rank = rank_offset + first
    others = [
        f"rank {rank_offset + i} {_describe_exit(procs[i].exitcode)}"
        for i in range(len(procs))
        if i != first
    ]
    msg = f"\n\n-- rank {rank} (pid {p.pid}) {_describe_exit(p.exitcode)}"
    msg += (
        ":\n" + text
        if text
        else " without a Python traceback (killed, or crashed in native code)\n"
    )
    if others:
        msg += "\n-- other ranks: " + "; ".join(others)
    raise ProcessFailedError(msg, rank, p.pid, p.exitcode)

"""Helpers for multi-process (distributed) runs, named as in detectron2's ``utils/comm.py``.

Every function also works without ``torch.distributed`` being initialized: then the world has one
process, ``all_gather``/``gather`` return ``[data]`` and ``synchronize`` does nothing.
Objects are exchanged with ``all_gather_object``/``gather_object`` over a gloo group, so any
picklable Python object can be gathered regardless of the training backend (NCCL included).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

_LOCAL_PROCESS_GROUP: Optional[Any] = None
_MISSING_LOCAL_PG = (
    "the local (per-machine) process group was not created; call "
    "comm.create_local_process_group(num_workers_per_machine) after "
    "torch.distributed.init_process_group()"
)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _initialized() else 0


def is_main_process() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


@functools.lru_cache()
def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the group of ranks on this machine (a collective call: every process must call it)."""
    global _LOCAL_PROCESS_GROUP
    if _LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("the local process group already exists")
    world = get_world_size()
    if num_workers_per_machine <= 0 or world % num_workers_per_machine != 0:
        raise ValueError(
            f"world size {world} is not a multiple of "
            f"num_workers_per_machine={num_workers_per_machine}"
        )
    machine_rank = get_rank() // num_workers_per_machine
    for machine in range(world // num_workers_per_machine):
        ranks = list(
            range(machine * num_workers_per_machine, (machine + 1) * num_workers_per_machine)
        )
        group = dist.new_group(ranks)
        if machine == machine_rank:
            _LOCAL_PROCESS_GROUP = group


def get_local_process_group() -> Any:
    """The group created by :func:`create_local_process_group`."""
    if _LOCAL_PROCESS_GROUP is None:
        raise RuntimeError(_MISSING_LOCAL_PG)
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """Rank of this process within its machine (0 when not distributed)."""
    if not _initialized():
        return 0
    return dist.get_rank(group=get_local_process_group())


def get_local_size() -> int:
    """Number of processes on this machine (1 when not distributed)."""
    if not _initialized():
        return 1
    return dist.get_world_size(group=get_local_process_group())


def synchronize() -> None:
    """Barrier across all processes; a no-op when there is only one."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache()
def _get_global_gloo_group() -> Any:
    """A gloo group over all ranks (object collectives over NCCL would need CUDA tensors)."""
    if dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data: Any, group: Optional[Any] = None) -> List[Any]:
    """Gather a picklable object from every rank; every rank receives the list ordered by rank."""
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world = dist.get_world_size(group)
    if world == 1:
        return [data]
    output: List[Any] = [None] * world
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group: Optional[Any] = None) -> List[Any]:
    """Gather a picklable object from every rank onto global rank ``dst``.

    Returns the list ordered by rank on ``dst`` and ``[]`` on the other ranks.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world = dist.get_world_size(group=group)
    if world == 1:
        return [data]
    if dist.get_rank() == dst:
        output: List[Any] = [None] * world
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """A random integer that is identical on all ranks (drawn on each, rank 0's is used)."""
    ints = np.random.randint(2**31)
    return int(all_gather(ints)[0])


def reduce_dict(
    input_dict: Dict[str, torch.Tensor], average: bool = True
) -> Dict[str, torch.Tensor]:
    """Reduce scalar tensors of the same keys from all ranks onto rank 0 (sum, or mean if
    ``average``).

    Only rank 0 receives the reduced values; other ranks get their input back unchanged in shape.
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return dict(zip(names, values))

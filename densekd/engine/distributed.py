"""torch.distributed helpers: torchrun setup (gloo on CPU, nccl on GPU), rank queries, object gathering."""
from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def setup() -> tuple[torch.device, bool]:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1). Returns (device,
    whether this call created the group, so the caller destroys it)."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = False
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_dist():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
        created = True
    return device, created


def cleanup(created: bool) -> None:
    """Destroy the group this process created, after every rank got here: a rank that tears gloo down while
    its peer is still finishing (rank 0 writes files last) was seen to abort at exit ("terminate called
    without an active exception", SIGABRT)."""
    if created and is_dist():
        gc.collect()  # free a finished DDP wrapper (its reducer holds the group) before the group goes
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` on rank 0 (a list ordered by rank); ``[]`` on other ranks."""
    if not is_dist():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out if out is not None else []


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks (one collective for all keys)."""
    if not is_dist() or not values:
        return values
    keys = list(values)  # same order on every rank (same code, same loss dict)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (used for SIGTERM)."""
    if not is_dist():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

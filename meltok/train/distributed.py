"""Process-group helpers for ``torchrun`` DDP; every function is a no-op in a single process.

``torchrun --nproc-per-node G -m meltok.cli train stage1 ...`` sets ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK``; ``setup`` then joins the group (NCCL on CUDA, gloo on CPU) and picks
``cuda:LOCAL_RANK``. Only rank 0 writes files and logs scalars.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import torch_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info() -> DistInfo:
    if not active():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def setup(device: str | None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); choose the device.

    ``device`` None means CUDA when available, else CPU (DeviceError if it does not exist here).
    Returns ``(DistInfo, device)``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    wanted = torch_device(device or None)
    if world_size <= 1:
        return DistInfo(), wanted
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if wanted.type == "cuda":
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wanted.type == "cuda" else "gloo")
    details = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    log.info("DDP: rank %d of %d on %s", details.rank, details.world_size, wanted)
    return details, wanted


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor; the input is unchanged)."""
    if not active():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_process(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (used to stop all ranks together)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s tensor on every process (in place; returned for convenience)."""
    if active():
        dist.broadcast(tensor, src)
    return tensor


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (picklable objects)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when several processes run, else ``module``."""
    if not active():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def no_sync(module: torch.nn.Module):
    """Context without gradient all-reduce for a DDP module (``contextlib.nullcontext`` otherwise)."""
    import contextlib

    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()

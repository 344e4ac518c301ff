"""DistributedDataParallel set-up: process ranks from the environment, process group, model wrapping.

``torchrun --nproc_per_node N train.py ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` for every process.
Without them training is single-process and ``rank == -1`` (YOLOv5's convention). The backend is NCCL for CUDA
devices and gloo on the CPU. Only rank -1 or 0 writes files, logs progress and validates.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.errors import SlideYoloError
from utils.log import get_logger


@dataclass(frozen=True)
class DistEnv:
    """Ranks of this process: ``rank`` / ``local_rank`` are -1 and ``world_size`` 1 when not distributed."""

    rank: int = -1
    local_rank: int = -1
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """True when launched by torchrun with more than one process (or an explicit rank)."""
        return self.rank != -1

    @property
    def is_main(self) -> bool:
        """True for the process that writes files, logs and validates (rank -1 or 0)."""
        return self.rank in (-1, 0)


def dist_env(local_rank_arg: int = -1) -> DistEnv:
    """Read RANK, LOCAL_RANK and WORLD_SIZE from the environment (``--local_rank`` for old launchers)."""
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg))
    rank = int(os.environ.get("RANK", local_rank if local_rank != -1 else -1))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return DistEnv(rank, local_rank, world_size)


def is_main(rank: int | None = None) -> bool:
    """True on the main process; rank None reads RANK from the environment."""
    rank = int(os.environ.get("RANK", -1)) if rank is None else rank
    return rank in (-1, 0)


def backend_for(device: torch.device) -> str:
    """'nccl' for CUDA devices when available, else 'gloo'."""
    return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"


def init_distributed(env: DistEnv, device: torch.device, timeout_s: int = 3 * 3600) -> None:
    """Join the process group of a torchrun launch (no-op when not distributed or already initialised)."""
    if not env.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s))


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first(env: DistEnv) -> Iterator[None]:
    """Let the main process run the block first (e.g. generate or cache a dataset), the others after it.

    The main process tells the others how its block ended; if it raised, they stop with a one-line SlideYoloError
    naming the main process's error, instead of a broken collective's traceback when it exits.
    """
    if not env.distributed:
        yield
        return
    if not env.is_main:
        failure = broadcast_object(None)
        if failure:
            raise SlideYoloError(f"rank {env.rank}: stopped, as the main process failed ({failure})")
        yield
        return
    try:
        yield
    except BaseException as e:
        broadcast_object(f"{type(e).__name__}: {e}")
        raise
    broadcast_object(None)


def all_true(flag: bool, device: torch.device) -> bool:
    """Logical AND of a flag over all processes (the flag itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every process (obj itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: nn.Module, env: DistEnv, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """SyncBatchNorm if asked (CUDA only), then DistributedDataParallel; the model itself when not distributed."""
    if not env.distributed:
        return model
    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model).to(device)
    elif sync_bn:
        get_logger().warning("--sync-bn needs CUDA devices; ignored on the CPU (plain BatchNorm per process)")
    ids = [env.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

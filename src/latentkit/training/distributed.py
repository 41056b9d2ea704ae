"""Multi-process data parallel training through ``torch.distributed`` (DDP).

Launched by ``torchrun``, which sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the process
group uses NCCL on CUDA and gloo on CPU. Everything here is a thin layer over
``torch.distributed`` and ``torch.utils.data.DistributedSampler`` (no home-made
communication).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "DistributedInfo",
    "ResumableSampler",
    "agree_on_stopping",
    "all_gather_objects",
    "barrier",
    "init_distributed",
    "is_main_process",
    "wrap_ddp",
]


@attrs.frozen
class DistributedInfo:
    """Where this process sits: global ``rank``, ``local_rank`` on its node, ``world_size``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True when a process group is up (launched by ``torchrun``): the model is wrapped
        in DDP, even with a single process."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that logs and writes checkpoints)."""
        return self.rank == 0


def init_distributed(device_type: str) -> DistributedInfo:
    """Join the process group when launched by ``torchrun`` (even with one process, so DDP
    runs as it would on many).

    Uses NCCL for CUDA devices and gloo otherwise; a group initialised by the caller is
    reused. Without ``torchrun`` returns a single-process :class:`DistributedInfo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        return DistributedInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())
    launched = "RANK" in os.environ and "MASTER_ADDR" in os.environ  # torchrun sets both
    if world <= 1 and not launched:
        return DistributedInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistributedInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def is_main_process() -> bool:
    """True on rank 0, and in a single-process run."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when a process group is up; nothing otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """``dist.all_gather_object`` when a process group is up, else ``[obj]``."""
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def agree_on_stopping(seconds: float, stop_requested: bool, device: torch.device) -> tuple[float, bool]:
    """What every rank goes by after a step: rank 0's training time (its clock is the run's)
    and whether any rank was asked to stop. One small all-reduce; without a process group,
    the arguments themselves."""
    if not (dist.is_available() and dist.is_initialized()):
        return seconds, stop_requested
    rank0 = dist.get_rank() == 0
    values = torch.tensor([seconds if rank0 else -1.0, float(stop_requested)], dtype=torch.float64,
                          device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return float(values[0]), bool(values[1] > 0)


class ResumableSampler(Sampler[int]):
    """A :class:`DistributedSampler` (one replica when not distributed) that can start part
    way into an epoch.

    The permutation of each epoch depends only on ``seed`` and the epoch, so a resumed run
    that skips the ``start`` indices it already consumed sees exactly the data an
    uninterrupted run would have seen.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        info: DistributedInfo,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.inner: DistributedSampler[int] = DistributedSampler(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last and info.world_size > 1,
        )
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select ``epoch``'s permutation and skip its first ``start`` indices."""
        self.inner.set_epoch(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.inner):
            if i >= self.start:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP and ``torch.compile`` wrappers."""
    module_: Any = module
    while True:
        if isinstance(module_, torch.nn.parallel.DistributedDataParallel):
            module_ = module_.module
        elif hasattr(module_, "_orig_mod"):
            module_ = module_._orig_mod
        else:
            return module_  # type: ignore[no-any-return]


def wrap_ddp(module: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool) -> torch.nn.Module:
    """``module`` in ``DistributedDataParallel`` for this process's ``device``."""
    return torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )

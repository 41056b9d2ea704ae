"""Where training runs: the device a trainer uses, channels-last storage, and batches moved
onto the device."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from latentkit.errors import ConfigError
from latentkit.training.config import TrainingConfig
from latentkit.training.distributed import DistributedInfo, init_distributed

__all__ = ["available_device", "batch_size_of", "resolve_device", "setup_process", "to_channels_last", "to_device"]

#: The channels-last memory format of each tensor rank that has one (images, video / volumes).
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def available_device(name: str, label: str = "[training] device") -> torch.device:
    """``name`` as a device that exists here (``"auto"``: CUDA when available, else the
    CPU); a :class:`~latentkit.errors.ConfigError` naming what was asked and what there is
    for an unknown name, a CUDA device without CUDA, or a GPU index past the last one
    (``label`` is how the message names the setting)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{label}: unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or "
                          "'cuda:N'", section="training", key="device") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{label} {name!r} is not available here: torch sees no CUDA device; use "
                              "'cpu' or 'auto'", section="training", key="device")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{label} {name!r} is not available here: there are {count} CUDA "
                              f"device(s), cuda:0 to cuda:{count - 1}", section="training", key="device")
    elif device.type not in ("cpu", "meta"):
        backend = getattr(torch.backends, device.type, None)
        if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
            raise ConfigError(f"{label} {name!r} is not available here; use 'cpu' or 'auto'",
                              section="training", key="device")
    return device


def resolve_device(name: str, info: DistributedInfo) -> torch.device:
    """The device ``name`` means for this process: ``"auto"`` is CUDA when available
    (``cuda:LOCAL_RANK``) else the CPU; a bare ``"cuda"`` gets this rank's index."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return device


def setup_process(config: TrainingConfig) -> tuple[DistributedInfo, torch.device]:
    """Join the process group when launched by ``torchrun``, pick this process's device and
    set what the config asks of torch there (deterministic algorithms, TF32 on CUDA); fp16 is
    refused off CUDA."""
    info = init_distributed(available_device(config.device).type)
    device = resolve_device(config.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"[training] precision = 'fp16' needs a CUDA device (the device is {device}); "
                          "use 'bf16' or 'fp32'", section="training", key="precision")
    cpus = os.cpu_count() or 1
    if config.num_workers > cpus:  # each worker is a process: more than the CPUs only exhausts memory
        raise ConfigError(f"[training] num_workers must be at most the {cpus} CPUs of this machine, got "
                          f"{config.num_workers}", section="training", key="num_workers")
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda" and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return info, device


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer channels-last and every 5-D one channels-last-3d
    (``module.to(memory_format=...)`` refuses a model that mixes 2-D and 3-D convolutions)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.ndim in CHANNELS_LAST:
            tensor.data = tensor.data.contiguous(memory_format=CHANNELS_LAST[tensor.ndim])
    return module


def to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """``batch`` (tensors in dicts, lists and tuples) on ``device``, floating 4-D / 5-D
    tensors channels-last when asked."""
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if channels_last and out.is_floating_point() and out.ndim in CHANNELS_LAST:
            out = out.contiguous(memory_format=CHANNELS_LAST[out.ndim])
        return out
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device, channels_last) for v in batch]
    if isinstance(batch, tuple):
        return tuple(to_device(v, device, channels_last) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Items in ``batch``: the leading size of its first tensor (0 when it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = batch_size_of(v)
            if n:
                return n
    if isinstance(batch, (list, tuple)) and batch:
        return len(batch) if not isinstance(batch[0], torch.Tensor) else batch_size_of(batch[0])
    return 0

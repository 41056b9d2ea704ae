"""The shared training loop: :class:`Trainer` (EMA, stopping, atomic checkpoints with exact
resume, DDP), its options :class:`TrainingConfig`, the lr schedule and the model protocol.
Configs, runs and samples are the layers above (:mod:`latentkit.experiment`,
:mod:`latentkit.samples`). See ``docs/training.md``."""

from __future__ import annotations

from latentkit.errors import CheckpointError, ConfigError
from latentkit.training.checkpoint import (
    LoadedCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from latentkit.training.config import TrainingConfig
from latentkit.training.ema import EMA
from latentkit.training.metrics import CSVLogger
from latentkit.training.optim import WarmupDecay
from latentkit.training.trainer import NonFiniteLossError, Trainer

__all__ = [
    "EMA",
    "CSVLogger",
    "CheckpointError",
    "ConfigError",
    "LoadedCheckpoint",
    "NonFiniteLossError",
    "Trainer",
    "TrainingConfig",
    "WarmupDecay",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "resolve_checkpoint",
    "save_checkpoint",
]

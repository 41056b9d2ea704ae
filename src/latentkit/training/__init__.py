"""The shared training loop: :class:`Trainer`, EMA, atomic checkpoints, TOML configs,
metrics, sample grids and distributed (DDP) helpers. See ``docs/training.md``."""

from __future__ import annotations

from latentkit.training.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from latentkit.training.config import (
    ConfigError,
    ExperimentConfig,
    TrainingConfig,
    build_dataset,
    build_model,
    load_config,
    loads_config,
)
from latentkit.training.ema import EMA
from latentkit.training.metrics import CSVLogger, make_image_grid, save_image_grid
from latentkit.training.trainer import NonFiniteLossError, Trainer, WarmupDecay

__all__ = [
    "EMA",
    "CSVLogger",
    "CheckpointError",
    "ConfigError",
    "ExperimentConfig",
    "LoadedCheckpoint",
    "NonFiniteLossError",
    "Trainer",
    "TrainingConfig",
    "WarmupDecay",
    "build_dataset",
    "build_model",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_weights",
    "loads_config",
    "make_image_grid",
    "save_checkpoint",
    "save_image_grid",
]

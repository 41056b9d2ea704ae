"""Runs: training what a config describes into a run directory, and loading a trained run.

A run directory, as ``latentkit train``, :func:`train` and the quickstart write it::

    <output_dir>/
      config.toml        the config the run was trained with (overrides noted at the top)
      checkpoints/       step_<N>/ atomic checkpoints (latentkit.training.checkpoint)
      metrics.csv        one row every log_every steps
      samples/           sample grids every sample_every steps

:func:`load_run` rebuilds the model from ``config.toml`` and loads the newest intact
checkpoint's weights (EMA preferred): what ``latentkit sample`` and ``latentkit eval`` use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from latentkit.experiment.build import build_dataset, build_model, fit_statistics
from latentkit.experiment.parse import load_config
from latentkit.experiment.schema import ExperimentConfig
from latentkit.fileio import atomic_write_text
from latentkit.plugins import PluginManager
from latentkit.training import Trainer, load_weights

__all__ = ["RUN_CONFIG", "build_trainer", "find_run_config", "load_run", "train", "with_overrides"]

#: The config a run was trained with, inside its run directory.
RUN_CONFIG = "config.toml"


def with_overrides(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with ``[training]`` fields replaced (``output_dir``, ``max_steps``, ...);
    the run's copy of the config notes each one at the top."""
    if not overrides:
        return config
    note = "".join(f"# override: [training] {k} = {v!r}\n" for k, v in overrides.items())
    return attrs.evolve(config, training=attrs.evolve(config.training, **overrides), text=note + config.text)


def build_trainer(
    config: ExperimentConfig,
    *,
    manager: PluginManager | None = None,
    plugins: Iterable[Any] = (),
) -> Trainer:
    """The :class:`~latentkit.training.Trainer` of ``config``: torch seeded with
    ``[training] seed`` (the same config builds the same initial weights), model built, its
    latent statistics fitted when ``[autoencoder] fit_statistics`` asks, dataset built, and
    the config copied into the run directory (main process) so that the run can be loaded
    back. ``plugins`` are lifecycle hooks for this run only."""
    torch.manual_seed(config.training.seed)
    model = build_model(config, manager=manager)
    fit_statistics(config, model, manager=manager)  # before a latent cache: it stores raw latents
    data = build_dataset(config, model, manager=manager)
    trainer = Trainer(model, data, config.training, plugin_manager=manager, plugins=plugins)
    if trainer.is_main_process:
        source = f"# written by latentkit from {Path(config.path).resolve()}\n" if config.path else ""
        atomic_write_text(trainer.output_dir / RUN_CONFIG, source + config.text)
    return trainer


def train(config: ExperimentConfig | str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None,
          manager: PluginManager | None = None, plugins: Iterable[Any] = ()) -> Trainer:
    """Train what ``config`` (a checked config or a TOML file) describes, resuming its run
    directory when it holds a checkpoint; returns the trainer (``step``, ``last_metrics``,
    ``last_checkpoint``, ``stop_reason``)."""
    if not isinstance(config, ExperimentConfig):
        config = load_config(config, manager=manager)
    trainer = build_trainer(with_overrides(config, overrides or {}), manager=manager, plugins=plugins)
    trainer.fit()
    return trainer


def find_run_config(path: str | os.PathLike[str]) -> Path:
    """The ``config.toml`` of the run that ``path`` (a run, its ``checkpoints/`` or one
    ``step_N``) is in."""
    path = Path(path)
    for d in (path, *list(path.parents)[:3]):
        if (d / RUN_CONFIG).is_file():
            return d / RUN_CONFIG
    raise FileNotFoundError(
        2, f"no {RUN_CONFIG} next to this checkpoint or above it (runs written by `latentkit train` "
        "or `latentkit quickstart` have one)", str(path))


def load_run(path: str | os.PathLike[str], *, ema: bool = True, device: str = "cpu",
             manager: PluginManager | None = None) -> tuple[Any, ExperimentConfig]:
    """``(model, config)`` of a trained run: the model its ``config.toml`` describes, with the
    weights of ``path`` (a run directory, its ``checkpoints/`` folder or one ``step_N``
    checkpoint; the newest intact one, EMA weights unless ``ema=False``), in eval mode.

    The components' ``weights_from`` are not followed: the checkpoint holds every weight.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "no such run or checkpoint", str(path))
    config = load_config(find_run_config(path), manager=manager)
    parts: dict[str, Any] = {name: attrs.evolve(comp, weights_from=None) for name, comp in config.parts().items()}
    config = attrs.evolve(config, **parts)
    model = build_model(config, manager=manager)
    model.load_state_dict(load_weights(path, ema=ema))
    return model.to(device).eval(), config



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

from latentkit.errors import ConfigError, LatentkitError
from latentkit.experiment.build import build_dataset, build_model, fit_statistics
from latentkit.experiment.parse import load_config
from latentkit.experiment.schema import ExperimentConfig
from latentkit.fileio import atomic_write_text
from latentkit.plugins import PluginManager, get_plugin_manager
from latentkit.training import Trainer, load_weights

__all__ = ["RESUMABLE_CHANGES", "RUN_CONFIG", "build_trainer", "find_run_config", "load_run", "train",
           "with_overrides"]

#: The config a run was trained with, inside its run directory.
RUN_CONFIG = "config.toml"


def with_overrides(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """``config`` with ``[training]`` fields replaced (``output_dir``, ``max_steps``, ...);
    the run's copy of the config notes each one at the top."""
    if not overrides:
        return config
    note = "".join(f"# override: [training] {k} = {v!r}\n" for k, v in overrides.items())
    return attrs.evolve(config, training=attrs.evolve(config.training, **overrides), text=note + config.text)


#: ``[training]`` keys a resumed run may change: steps and time, the lr schedule, logging,
#: sampling and checkpointing, and where and how it runs. Any other difference from the run's
#: own config (a part, the model, the data, the optimizer, EMA, the seed) is refused.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "max_seconds", "lr", "warmup_steps", "lr_decay", "min_lr_ratio",
    "log_every", "csv", "tensorboard", "progress", "sample_every", "sample_prompts", "sample_labels",
    "sample_count", "sample_steps", "sample_sampler", "sample_guidance", "sample_seed",
    "checkpoint_every", "keep_last", "resume", "output_dir", "num_workers", "device", "compile",
    "channels_last", "tf32", "nonfinite", "nonfinite_skip_limit", "find_unused_parameters",
})


#: Keys of a part table a resumed run may change: the checkpoint holds its weights and
#: latent statistics anyway.
_RESUMABLE_PART_KEYS = frozenset({"weights_from", "fit_statistics"})


def _changed_keys(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """``[section] key`` of every difference between two configs that a resume cannot take."""
    changed = []
    for section in ("autoencoder", "denoiser", "conditioner", "schedule", "model", "data", "training"):
        a, b = getattr(old, section), getattr(new, section)
        da = attrs.asdict(a) if a is not None else {}
        db = attrs.asdict(b) if b is not None else {}
        flat_a = {**da.pop("options", {}), **da}
        flat_b = {**db.pop("options", {}), **db}
        for key in sorted(set(flat_a) | set(flat_b)):
            resumable = RESUMABLE_CHANGES if section == "training" else _RESUMABLE_PART_KEYS
            if flat_a.get(key) != flat_b.get(key) and key not in resumable:
                changed.append(f"[{section}] {key}")
    return changed


def _check_resumable(config: ExperimentConfig, output_dir: Path) -> None:
    """Refuse to resume the run in ``output_dir`` with a config that does not fit it."""
    own = output_dir / RUN_CONFIG
    if not config.training.resume or not own.is_file() or not any((output_dir / "checkpoints").glob("step_*")):
        return
    try:
        previous = load_config(own, check_components=False)
    except ConfigError as exc:
        raise ConfigError(f"cannot resume {output_dir}: its own {RUN_CONFIG} does not load ({exc.message})",
                          path=config.path) from exc
    changed = _changed_keys(previous, config)
    if changed:
        raise ConfigError(
            f"cannot resume {output_dir} with this config: it changes {', '.join(changed)} from the run's own "
            f"{RUN_CONFIG}, which its checkpoints were trained with; use another --output (or output_dir), "
            f"or --no-resume to start over there", path=config.path)


def _check_sampling(config: ExperimentConfig, model: Any, manager: PluginManager | None) -> None:
    """The ``sample_*`` options are checked now, not when the first grid is drawn: the sampler
    is registered, and the conditioner takes the prompts or labels (a dry run of it)."""
    cfg = config.training
    if not cfg.sample_every:
        return
    pm = manager or get_plugin_manager()
    if cfg.sample_sampler is not None:
        try:
            pm.get("sampler", cfg.sample_sampler)
        except LatentkitError as exc:
            raise config.error(f"[training] sample_sampler: {exc}", "training", "sample_sampler") from None
    conditioner = getattr(model, "conditioner", None)
    if conditioner is None or not (cfg.sample_prompts or cfg.sample_labels):
        return
    from latentkit.samples import conditioning_batch

    key = "sample_prompts" if cfg.sample_prompts else "sample_labels"
    try:
        batch, _ = conditioning_batch(model, prompts=cfg.sample_prompts, labels=cfg.sample_labels,
                                      names=("sample_prompts", "sample_labels"))
        with torch.no_grad():
            conditioner(batch)
    except Exception as exc:  # any refusal of the conditioner: now, before training
        raise config.error(f"[training] {key}: {type(exc).__name__}: {exc}" if not isinstance(exc, (
            LatentkitError, ValueError)) else f"[training] {key}: {exc}", "training", key) from exc


def build_trainer(
    config: ExperimentConfig,
    *,
    manager: PluginManager | None = None,
    plugins: Iterable[Any] = (),
) -> Trainer:
    """The :class:`~latentkit.training.Trainer` of ``config``, resumed from its run directory
    when that holds a checkpoint (and ``[training] resume``).

    In order: a resume with a config that changes more than :data:`RESUMABLE_CHANGES` is
    refused; torch is seeded with ``[training] seed`` (the same config builds the same initial
    weights); the model is built, its latent statistics fitted when ``[autoencoder]
    fit_statistics`` asks, the ``sample_*`` options checked, the dataset built; the trainer
    resumes; only then is the config copied into the run directory (main process), so a
    refused or failed resume leaves the run as it was. ``plugins`` are lifecycle hooks for
    this run only."""
    _check_resumable(config, Path(config.training.output_dir))
    torch.manual_seed(config.training.seed)
    model = build_model(config, manager=manager)
    fit_statistics(config, model, manager=manager)  # before a latent cache: it stores raw latents
    _check_sampling(config, model, manager)
    data = build_dataset(config, model, manager=manager)
    trainer = Trainer(model, data, config.training, plugin_manager=manager, plugins=plugins)
    if config.training.resume:
        trainer.resume()
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



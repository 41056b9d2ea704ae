"""Every latentkit hook, documented.

A plugin is a module (or object) with functions decorated by :data:`latentkit.hookimpl`, named
after the specs below, and published under the setuptools entry-point group ``latentkit``::

    [project.entry-points.latentkit]
    my_plugin = "my_package.plugin"

Three families of hooks exist:

* **registration hooks**, one per component kind, each given a
  :class:`~latentkit.plugins.Registrar` whose ``add(name, factory, summary=...)`` registers a
  component. Built-in components are registered by built-in plugin modules through exactly
  these hooks.
* **lifecycle hooks** fired by the shared training and sampling loop, so that logging,
  profiling, sample grids and the like can be plugins too. Their return values are ignored;
  they see the trainer through :class:`TrainerView`.
* **output hooks**, ``firstresult`` hooks through which a plugin owns the files written for
  the data layout it adds (``latentkit sample`` asks them before its PNG grid).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from latentkit.plugins import PluginManager, Registrar
    from latentkit.training.config import TrainingConfig
    from latentkit.training.distributed import DistributedInfo
    from latentkit.training.ema import EMA

__all__ = ["TrainerView", "hookimpl", "hookspec", "output_suffix"]

PROJECT = "latentkit"

#: Marker for hook specifications (latentkit itself).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker for hook implementations (plugins).
hookimpl = pluggy.HookimplMarker(PROJECT)


# ----------------------------------------------------------------- registration hooks


@hookspec
def latentkit_register_autoencoders(registry: Registrar) -> None:
    """Register first-stage autoencoders.

    Called once, when the plugin manager first loads plugins (lazily, on the first query).
    ``registry.add(name, factory, summary=...)`` registers a factory returning an
    :class:`~latentkit.interfaces.Autoencoder`. Return value ignored.
    """


@hookspec
def latentkit_register_denoisers(registry: Registrar) -> None:
    """Register denoiser backbones (:class:`~latentkit.interfaces.Denoiser` factories).

    Called once at plugin loading; return value ignored.
    """


@hookspec
def latentkit_register_conditioners(registry: Registrar) -> None:
    """Register conditioners (:class:`~latentkit.interfaces.Conditioner` factories).

    Called once at plugin loading; return value ignored.
    """


@hookspec
def latentkit_register_samplers(registry: Registrar) -> None:
    """Register samplers (:class:`~latentkit.interfaces.Sampler` factories).

    Called once at plugin loading; return value ignored.
    """


@hookspec
def latentkit_register_schedules(registry: Registrar) -> None:
    """Register noise schedules (:class:`~latentkit.interfaces.Schedule` factories).

    Called once at plugin loading; return value ignored.
    """


@hookspec
def latentkit_register_datasets(registry: Registrar) -> None:
    """Register datasets (:class:`~latentkit.interfaces.Dataset` factories).

    Called once at plugin loading; return value ignored.
    """


@hookspec
def latentkit_register_models(registry: Registrar) -> None:
    """Register trainable models: what ``[model] kind = "<name>"`` of a config builds and the
    :class:`~latentkit.training.Trainer` trains (``diffusion``, ``autoencoder``,
    ``stable_diffusion`` are built in; a plugin adds, e.g., its own training loss).

    A factory takes the built parts it needs as keyword parameters named after the config's
    tables (``autoencoder``, ``denoiser``, ``conditioner``, ``schedule``; a parameter with a
    default makes that table optional, and a table the factory does not take is an error),
    plus the ``[model]`` options, and returns an ``nn.Module`` that follows the trainer's
    model protocol (:mod:`latentkit.training.protocol`). Called once at plugin loading;
    return value ignored.
    """


# ----------------------------------------------------------------- the trainer hooks see


class TrainerView(Protocol):
    """What the lifecycle hooks may read and call on the trainer they are given.

    Everything else on a :class:`~latentkit.training.Trainer` is its own business: a hook that
    needs more should ask for it in the public API. Assigning to these attributes is not
    part of the contract; to end a run early call :meth:`request_stop`.
    """

    @property
    def model(self) -> nn.Module:
        """The model being trained (unwrapped: not the DDP / compiled loss module)."""

    @property
    def config(self) -> TrainingConfig:
        """The run's options (frozen)."""

    @property
    def step(self) -> int:
        """Optimizer steps done (after a resume: including those of earlier runs)."""

    @property
    def output_dir(self) -> Path:
        """The run directory: ``checkpoints/``, ``metrics.csv``, ``samples/``."""

    @property
    def device(self) -> torch.device:
        """The device the model and batches are on."""

    @property
    def dist(self) -> DistributedInfo:
        """This process's rank, local rank and the world size."""

    @property
    def is_main_process(self) -> bool:
        """True on rank 0, the one that should write files and print."""

    @property
    def dataset(self) -> Any:
        """The training dataset (items are dicts)."""

    @property
    def ema(self) -> EMA | None:
        """The EMA of the weights (``None`` without ``ema_decay``); the trainer updates it."""

    @property
    def plugin_manager(self) -> PluginManager:
        """The manager whose hooks this trainer fires."""

    @property
    def plugin_state(self) -> dict[str, Any]:
        """Per-run objects of plugins, by a key each plugin picks (its module name)."""

    @property
    def last_checkpoint(self) -> Path | None:
        """The checkpoint written or loaded last."""

    @property
    def last_metrics(self) -> dict[str, float]:
        """The metrics of the last step."""

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds of training so far (summed over resumed runs)."""

    @property
    def stop_reason(self) -> str | None:
        """Why training ends (``"max_steps"``, ``"max_seconds"``, ``"requested"``, or a reason
        given to :meth:`request_stop`): set before the hooks of the last step fire (after
        them, when a hook of that step requests the stop); ``None`` before."""

    def request_stop(self, reason: str = "requested") -> None:
        """End training after the current step, with a checkpoint of it."""

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when training returns or raises (close files here)."""


# ----------------------------------------------------------------- lifecycle hooks


@hookspec
def latentkit_train_start(trainer: TrainerView) -> None:
    """Called by the trainer once before the first step (after a resume, too), on every rank."""


@hookspec
def latentkit_train_step_end(trainer: TrainerView, step: int, metrics: dict[str, float]) -> None:
    """Called after each optimizer step (and its EMA update), on every rank, with the global
    ``step`` (1-based) and that step's ``metrics`` (``loss``, ``lr``, ``grad_norm``, and the
    model's own loss terms)."""


@hookspec
def latentkit_checkpoint_saved(trainer: TrainerView, step: int, path: str) -> None:
    """Called on rank 0 after a checkpoint was written completely (atomically) to ``path``."""


@hookspec
def latentkit_train_end(trainer: TrainerView, step: int) -> None:
    """Called once when training stops normally (``trainer.stop_reason`` says why), with the
    last step."""


@hookspec
def latentkit_sampling_step(info: dict[str, Any]) -> None:
    """Called once per sampler step by the shared sampling loop, with the sampler callback's
    dict (``i``, ``x``, ``sigma``, ``sigma_next``, ``denoised``) plus ``total`` steps."""


# ----------------------------------------------------------------- output hooks


@hookspec(firstresult=True)
def latentkit_write_samples(
    samples: torch.Tensor,
    path: str,
    layout: str,
    captions: Sequence[str] | None,
    value_range: tuple[float, float],
) -> list[Path] | None:
    """Write generated samples of ``layout`` to files; called by ``latentkit sample`` and, for
    ``sample_every``, by the trainer (``path`` then is ``samples/step_<N>.png``; a writer that
    raises there costs a warning and the built-in grid, not the run).

    ``samples`` is an (N, C, *spatial) float tensor on the CPU, clamped to ``value_range``
    (the autoencoder's ``data_spec.value_range``); ``layout`` is its data layout string
    (``"CHW"``, ``"CTHW"``, ``"CDHW"``, ...); ``captions`` holds one caption per sample (the
    prompt or ``"label N"``), or is None for an unconditional model; ``path`` is what the user
    passed to ``--out``, whose suffix picks the format.

    Return the list of paths written, or None when ``layout`` is not yours: the first
    non-None answer wins, and when nobody answers latentkit writes its captioned PNG grid.
    For your layout but a suffix you do not write, raise
    :class:`~latentkit.errors.LatentkitError` naming the suffixes you do write
    (:func:`output_suffix` does both: it returns the suffix or raises that error).
    """


def output_suffix(path: str | os.PathLike[str], formats: Mapping[str, str], *, writer: str, layout: str) -> str:
    """The lower-case suffix of ``path`` when ``formats`` (suffix -> what it gives) has it;
    else a :class:`~latentkit.errors.LatentkitError` naming what was asked and every format
    ``writer`` has for ``layout``. For ``latentkit_write_samples`` implementations."""
    from latentkit.errors import LatentkitError

    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        asked = f"{suffix!r} files" if suffix else "files without a suffix"
        available = ", ".join(f"{s} ({what})" for s, what in formats.items())
        raise LatentkitError(f"{writer} cannot write {asked} for {layout} samples; available: {available}; "
                             "change --out")
    return suffix

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
* **lifecycle hooks** fired by the shared training and sampling loop, so that logging, EMA,
  profiling and the like can be plugins too. Their return values are ignored.
* **output hooks**, ``firstresult`` hooks through which a plugin owns the files written for
  the data layout it adds (``latentkit sample`` asks them before its PNG grid).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from latentkit.plugins import Registrar

__all__ = ["hookimpl", "hookspec", "output_suffix"]

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


# ----------------------------------------------------------------- lifecycle hooks


@hookspec
def latentkit_train_start(trainer: Any) -> None:
    """Called by the trainer once before the first step (after a resume, too).

    ``trainer`` exposes ``model``, ``config``, ``step`` and ``output_dir``.
    """


@hookspec
def latentkit_train_step_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Called after each optimizer step with the global ``step`` (1-based) and that step's
    ``metrics`` (``loss``, ``lr``, ``grad_norm``, and the model's own loss terms)."""


@hookspec
def latentkit_checkpoint_saved(trainer: Any, step: int, path: str) -> None:
    """Called after a checkpoint was written completely (atomically) to ``path``."""


@hookspec
def latentkit_train_end(trainer: Any, step: int) -> None:
    """Called once when training stops normally, with the last step."""


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

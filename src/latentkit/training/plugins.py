"""Built-in lifecycle plugins of the training loop: the progress bar, metrics to CSV /
TensorBoard, and sample grids.

They are hook implementations like any third party's, registered as the built-in plugin
module ``latentkit.training.plugins`` (block it like any plugin to turn them off; the EMA and
checkpoints are the trainer's own and do not depend on it). Per-run objects live in
``trainer.plugin_state["latentkit.training"]``; files go under ``trainer.output_dir``:

* ``metrics.csv`` — one row every ``log_every`` steps (and at the last step);
* ``tensorboard/`` — the same scalars, when ``tensorboard = true`` and it is installed;
* ``samples/step_<N>.png`` — samples every ``sample_every`` steps through the sampling
  pipeline (:mod:`latentkit.samples`), drawn with the EMA weights when EMA is on: a captioned
  grid, or what the plugin of the data layout writes (a filmstrip for video, projections for
  volumes).

Only rank 0 logs and draws samples.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from latentkit.errors import LatentkitError, warn_once
from latentkit.hookspecs import TrainerView, hookimpl
from latentkit.samples import (
    Samples,
    conditioning_batch,
    draw,
    latent_size,
    reconstructions,
    write_samples,
)
from latentkit.training.metrics import CSVLogger, ProgressBar, TensorBoardLogger
from latentkit.training.rng import isolated_rng

__all__ = [
    "draw_samples",
    "latentkit_checkpoint_saved",
    "latentkit_train_end",
    "latentkit_train_start",
    "latentkit_train_step_end",
    "write_sample_grid",
]

_KEY = "latentkit.training"


def _state(trainer: TrainerView) -> dict[str, Any]:
    return trainer.plugin_state.setdefault(_KEY, {})  # type: ignore[no-any-return]


@hookimpl(tryfirst=True)
def latentkit_train_start(trainer: TrainerView) -> None:
    """Open the CSV / TensorBoard loggers and the progress bar (rank 0)."""
    state = _state(trainer)
    cfg = trainer.config
    if not trainer.is_main_process:
        return
    loggers: list[Any] = []
    if cfg.csv:
        loggers.append(CSVLogger(Path(trainer.output_dir) / "metrics.csv", resume_step=trainer.step))
    if cfg.tensorboard:
        if TensorBoardLogger.available():
            loggers.append(TensorBoardLogger(Path(trainer.output_dir) / "tensorboard", purge_step=trainer.step + 1))
        else:
            warn_once("tensorboard = true but the tensorboard package is not installed; "
                      "metrics go to metrics.csv only (pip install tensorboard)")
    state["loggers"] = loggers
    state["progress"] = ProgressBar(cfg.max_steps, trainer.step, enabled=cfg.progress)
    trainer.add_cleanup(lambda: _close(state))


def _close(state: dict[str, Any]) -> None:
    for logger in state.pop("loggers", []):
        logger.close()
    bar = state.pop("progress", None)
    if bar is not None:
        bar.close()


@hookimpl(tryfirst=True)
def latentkit_train_step_end(trainer: TrainerView, step: int, metrics: dict[str, float]) -> None:
    """Advance the bar, log every ``log_every`` steps and draw samples every
    ``sample_every`` steps."""
    cfg = trainer.config
    if not trainer.is_main_process:
        return
    state = _state(trainer)
    bar = state.get("progress")
    if bar is not None:
        bar.update(metrics)
    if step % cfg.log_every == 0 or trainer.stop_reason is not None:  # and the last step
        for logger in state.get("loggers", []):
            logger.log(step, metrics)
    if cfg.sample_every and step % cfg.sample_every == 0:
        path = write_sample_grid(trainer, Path(trainer.output_dir) / "samples" / f"step_{step:08d}.png")
        if path is not None and bar is not None and cfg.progress:
            bar.write(f"step {step}: samples written to {path}")


@hookimpl(tryfirst=True)
def latentkit_checkpoint_saved(trainer: TrainerView, step: int, path: str) -> None:
    """Mention the checkpoint above the progress bar."""
    bar = _state(trainer).get("progress")
    if bar is not None and trainer.config.progress:
        bar.write(f"step {step}: checkpoint saved to {path}")


@hookimpl(tryfirst=True)
def latentkit_train_end(trainer: TrainerView, step: int) -> None:
    """Close the loggers and the progress bar."""
    _close(_state(trainer))


# ----------------------------------------------------------------------- sample grids


def draw_samples(trainer: TrainerView) -> Samples | None:
    """The samples of a ``sample_every`` grid; ``None`` when the model can neither sample
    nor reconstruct.

    * Models with ``sample(batch, ...)`` (:class:`latentkit.LatentDiffusion`): generated for
      ``sample_prompts``, else ``sample_labels``, else the conditioning of the first
      ``sample_count`` dataset items, else ``sample_count`` unconditional samples; with
      ``sample_steps``, ``sample_sampler``, ``sample_guidance`` and ``sample_seed``.
    * Models with an ``autoencoder`` (autoencoder training): the first ``sample_count``
      dataset items next to their reconstructions.
    """
    cfg = trainer.config
    model: Any = trainer.model
    dataset = trainer.dataset
    given = bool(cfg.sample_prompts or cfg.sample_labels)
    items = [] if given else [dataset[i] for i in range(min(cfg.sample_count, len(dataset)))]
    if callable(getattr(model, "sample", None)):
        batch, captions = conditioning_batch(
            model, prompts=cfg.sample_prompts, labels=cfg.sample_labels, num=1 if given else cfg.sample_count,
            items=items, names=("sample_prompts", "sample_labels"))
        options: dict[str, Any] = {"steps": cfg.sample_steps, "seed": cfg.sample_seed}
        if cfg.sample_sampler is not None:
            options["sampler"] = cfg.sample_sampler
        if cfg.sample_guidance is not None:
            options["guidance_scale"] = cfg.sample_guidance
        return draw(model, batch, captions, latent_size=latent_size(model, dataset=dataset),
                    data_spec=getattr(dataset, "data_spec", None), **options)
    autoencoder = getattr(model, "autoencoder", None)
    key = getattr(dataset, "data_key", "image")
    items = items or [dataset[i] for i in range(min(cfg.sample_count, len(dataset)))]
    if autoencoder is not None and callable(getattr(autoencoder, "reconstruct", None)) and items and key in items[0]:
        return reconstructions(autoencoder, items, key, trainer.device)
    return None


def write_sample_grid(trainer: TrainerView, path: str | Path) -> Path | None:
    """Draw :func:`draw_samples` (EMA weights when EMA is on, eval mode, training RNG left
    untouched) and write them at ``path`` (a ``.png``) through
    :func:`latentkit.samples.write_samples`. Returns the (first) file written.

    Samples never end a training run: a writer that fails costs a warning and the built-in
    grid, a model or config that cannot draw samples a warning and no grid."""
    model = trainer.model
    was_training = model.training
    ema_ctx = trainer.ema.applied(model) if trainer.ema is not None else contextlib.nullcontext()
    try:
        with isolated_rng(trainer.device), ema_ctx, torch.no_grad():
            model.eval()
            drawn = draw_samples(trainer)
    except Exception as exc:  # a model or config that cannot draw: a warning, never the run
        warn_once(f"sample grid skipped: {exc}" if isinstance(exc, (LatentkitError, ValueError, KeyError))
                  else f"sample grid skipped: {type(exc).__name__}: {exc}")
        return None
    finally:
        model.train(was_training)
    if drawn is None:
        warn_once(f"{type(model).__name__} has neither sample() nor an autoencoder to "
                  "reconstruct with; no sample grids are written")
        return None
    written = write_samples(drawn, path, plugin_manager=trainer.plugin_manager, grid_if_writer_fails=True)
    return written.paths[0]

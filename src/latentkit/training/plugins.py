"""Built-in lifecycle plugins of the training loop: EMA updates, the progress bar, metrics to
CSV / TensorBoard and sample grids.

They are hook implementations like any third party's, registered as the built-in plugin
module ``latentkit.training.plugins`` (block it like any plugin to turn them off). Per-run objects live in
``trainer.plugin_state["latentkit.training"]``; files go under ``trainer.output_dir``:

* ``metrics.csv`` — one row every ``log_every`` steps (and at the last step);
* ``tensorboard/`` — the same scalars, when ``tensorboard = true`` and it is installed;
* ``samples/step_<N>.png`` — a captioned grid every ``sample_every`` steps, drawn with the
  EMA weights when EMA is on (for a layout a plugin writes through ``latentkit_write_samples``,
  that plugin's PNG: a filmstrip for video, projections for volumes).

Only rank 0 logs and draws samples; EMA is updated on every rank.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from latentkit.hookspecs import hookimpl
from latentkit.training.metrics import (
    CSVLogger,
    ProgressBar,
    TensorBoardLogger,
    save_image_grid,
    warn_once,
)

__all__ = [
    "draw_samples",
    "latentkit_checkpoint_saved",
    "latentkit_train_end",
    "latentkit_train_start",
    "latentkit_train_step_end",
    "write_sample_grid",
]

_KEY = "latentkit.training"


def _state(trainer: Any) -> dict[str, Any]:
    return trainer.plugin_state.setdefault(_KEY, {})  # type: ignore[no-any-return]


@hookimpl(tryfirst=True)
def latentkit_train_start(trainer: Any) -> None:
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
def latentkit_train_step_end(trainer: Any, step: int, metrics: dict[str, float]) -> None:
    """Update the EMA, advance the bar, log every ``log_every`` steps and draw a sample grid
    every ``sample_every`` steps."""
    cfg = trainer.config
    if trainer.ema is not None:
        trainer.ema.update(trainer.model, step)
    if not trainer.is_main_process:
        return
    state = _state(trainer)
    bar = state.get("progress")
    if bar is not None:
        bar.update(metrics)
    if step % cfg.log_every == 0 or step == cfg.max_steps:
        for logger in state.get("loggers", []):
            logger.log(step, metrics)
    if cfg.sample_every and step % cfg.sample_every == 0:
        path = write_sample_grid(trainer, Path(trainer.output_dir) / "samples" / f"step_{step:08d}.png")
        if path is not None and bar is not None and cfg.progress:
            bar.write(f"step {step}: samples written to {path}")


@hookimpl(tryfirst=True)
def latentkit_checkpoint_saved(trainer: Any, step: int, path: str) -> None:
    """Mention the checkpoint above the progress bar."""
    bar = _state(trainer).get("progress")
    if bar is not None and trainer.config.progress:
        bar.write(f"step {step}: checkpoint saved to {path}")


@hookimpl(tryfirst=True)
def latentkit_train_end(trainer: Any, step: int) -> None:
    """Close the loggers and the progress bar."""
    _close(_state(trainer))


# ----------------------------------------------------------------------- sample grids


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Sampling must not move the training RNG streams (exact resume depends on them)."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _first_items(dataset: Any, n: int) -> list[dict[str, Any]]:
    return [dataset[i] for i in range(min(n, len(dataset)))]


def _captions(items: Sequence[dict[str, Any]]) -> list[str] | None:
    if items and all("caption" in it for it in items):
        return [str(it["caption"]) for it in items]
    if items and all("label" in it for it in items):
        return [f"label {int(it['label'])}" for it in items]
    return None


def _latent_size(trainer: Any, autoencoder: Any) -> tuple[int, ...] | None:
    """Latent spatial size of the training data (cached latents, or data through the
    autoencoder's downsampling factors)."""
    if len(trainer.dataset) == 0:
        return None
    item = trainer.dataset[0]
    if isinstance(item.get("latents"), torch.Tensor):
        return tuple(int(s) for s in item["latents"].shape[1:])
    key = getattr(trainer.dataset, "data_key", "image")
    x = item.get(key)
    spec = getattr(autoencoder, "latent_spec", None)
    if isinstance(x, torch.Tensor) and spec is not None:
        return tuple(spec.latent_size(tuple(x.shape[1:])))
    return None


def draw_samples(trainer: Any) -> tuple[torch.Tensor, list[str] | None, tuple[float, float]] | None:
    """Images for a sample grid, their captions and value range; ``None`` when the model can
    neither sample nor reconstruct.

    * Models with ``sample(batch, ...)`` (:class:`latentkit.LatentDiffusion`): generated for
      ``sample_prompts`` (batch key ``caption``), else ``sample_labels`` (``label``), else
      the conditioning of the first ``sample_count`` dataset items, else ``sample_count``
      unconditional samples; with ``sample_steps``, ``sample_sampler``,
      ``sample_guidance`` and ``sample_seed`` passed where ``sample`` accepts them.
    * Models with an ``autoencoder`` (autoencoder training): the first ``sample_count``
      dataset items next to their reconstructions.
    """
    cfg = trainer.config
    model = trainer.model
    autoencoder = getattr(model, "autoencoder", None)
    spec = getattr(autoencoder, "data_spec", None) or getattr(trainer.dataset, "data_spec", None)
    value_range = tuple(spec.value_range) if spec is not None else (-1.0, 1.0)
    sample_fn = getattr(model, "sample", None)
    if callable(sample_fn):
        conditioner = getattr(model, "conditioner", None)
        keys = tuple(getattr(conditioner, "input_keys", ()) or ())
        batch: Any
        captions: list[str] | None
        if cfg.sample_prompts:
            batch, captions = {"caption": list(cfg.sample_prompts)}, list(cfg.sample_prompts)
        elif cfg.sample_labels:
            batch = {"label": torch.tensor(cfg.sample_labels, dtype=torch.long)}
            captions = [f"label {v}" for v in cfg.sample_labels]
        elif conditioner is not None and keys:
            items = _first_items(trainer.dataset, cfg.sample_count)
            if not all(all(k in it for k in keys) for it in items):
                warn_once(f"sample grid skipped: the conditioner reads batch keys {list(keys)}, "
                          "which the dataset items lack; set sample_prompts or sample_labels")
                return None
            batch = default_collate([{k: it[k] for k in keys} for it in items])
            captions = _captions(items)
        else:
            batch, captions = cfg.sample_count, None
        accepted = set(inspect.signature(sample_fn).parameters)
        options = {"steps": cfg.sample_steps, "seed": cfg.sample_seed}
        if cfg.sample_sampler is not None:
            options["sampler"] = cfg.sample_sampler
        if cfg.sample_guidance is not None:
            options["guidance_scale"] = cfg.sample_guidance
        if getattr(model, "latent_size", None) is None:
            size = _latent_size(trainer, autoencoder)
            if size is not None:
                options["latent_size"] = size
        images = sample_fn(batch, **{k: v for k, v in options.items() if k in accepted})
        return images, captions, value_range  # type: ignore[return-value]
    if autoencoder is not None and callable(getattr(autoencoder, "reconstruct", None)):
        items = _first_items(trainer.dataset, cfg.sample_count)
        key = getattr(trainer.dataset, "data_key", "image")
        if not items or key not in items[0]:
            return None
        x = default_collate([it[key] for it in items]).to(trainer.device)
        out = autoencoder.reconstruct(x)
        rec = getattr(out, "reconstruction", out)
        pairs = torch.stack([x, rec.to(x.dtype)], dim=1).flatten(0, 1)  # input, reconstruction, ...
        base = _captions(items) or [f"item {i}" for i in range(len(items))]
        captions = [c for b in base for c in (f"{b} (input)", f"{b} (reconstruction)")]
        return pairs, captions, value_range  # type: ignore[return-value]
    return None


def write_sample_grid(trainer: Any, path: str | Path) -> Path | None:
    """Draw :func:`draw_samples` (EMA weights when EMA is on, eval mode, training RNG left
    untouched) and save them at ``path`` (a ``.png``): through the plugin that owns the data
    layout (``latentkit_write_samples``, e.g. a filmstrip for video or projections for
    volumes), else as a captioned PNG grid. Returns the (first) file written.

    A writer that fails (it refuses ``.png``, say) costs a warning and the grid, never the
    training run."""
    model = trainer.model
    was_training = model.training
    ema_ctx = trainer.ema.applied(model) if trainer.ema is not None else contextlib.nullcontext()
    try:
        with _isolated_rng(trainer.device), ema_ctx, torch.no_grad():
            model.eval()
            drawn = draw_samples(trainer)
    finally:
        model.train(was_training)
    if drawn is None:
        warn_once(f"{type(model).__name__} has neither sample() nor an autoencoder to "
                  "reconstruct with; no sample grids are written")
        return None
    images, captions, value_range = drawn
    images = images.float().cpu().clamp(*value_range)
    spec = getattr(getattr(model, "autoencoder", None), "data_spec", None) or getattr(
        trainer.dataset, "data_spec", None)
    layout = getattr(spec, "layout", None)
    if layout is not None:
        try:
            written = trainer.plugin_manager.hook.latentkit_write_samples(
                samples=images, path=str(path), layout=layout, captions=captions, value_range=value_range)
        except Exception as exc:  # a third party's writer must not end training
            warn_once(f"the sample writer for layout {layout} failed ({type(exc).__name__}: {exc}); "
                      "writing the built-in grid instead")
            written = None
        if written:
            return Path(written[0])
    return save_image_grid(images, path, captions=captions, value_range=value_range)

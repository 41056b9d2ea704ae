"""Building what a checked config describes: its components, the model and the dataset.

Every part is created through the registry (``latentkit.create`` of the config's plugin
manager), its options checked against the factory (a refusal names the key and its line);
the denoiser gets the composition keys (in/out channels, cross-attention and vector widths,
layout) from the autoencoder's latent spec and the conditioner's output when the config leaves
them out. The model is the registered model ``[model] kind`` names (:mod:`latentkit.models`),
called with the parts its factory takes and the ``[model]`` options, and refused with a
:class:`~latentkit.errors.ConfigError` unless the trainer can train it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from latentkit.errors import CheckpointError, ConfigError, LatentkitError, UnknownComponentError
from latentkit.experiment import loss_path
from latentkit.experiment.parse import model_factory
from latentkit.experiment.schema import (
    ComponentConfig,
    ExperimentConfig,
    check_model_options,
    model_parts,
)
from latentkit.plugins import PluginManager, get_plugin_manager
from latentkit.training.protocol import trainability_problem
from latentkit.validation import factory_parameters

__all__ = ["build_component", "build_dataset", "build_model", "construct", "create_dataset", "fit_statistics"]


def build_component(config: ExperimentConfig, section: str, kind: str, comp: ComponentConfig,
                    manager: PluginManager | None = None, **defaults: Any) -> Any:
    """Create the component of table ``[section]`` (``defaults`` fill the keys the table
    leaves out and the factory takes) and load its ``weights_from``."""
    pm = manager or get_plugin_manager()
    try:
        info = pm.get(kind, comp.name)
    except UnknownComponentError as exc:
        raise config.error(f"[{section}] name: {exc}", section, "name") from None
    params, var_kw = factory_parameters(info.resolve())
    options = dict(comp.options)
    for key, value in defaults.items():
        if key not in options and (key in params or var_kw):
            options[key] = value
    if kind != "dataset":
        _check_memory(config, section, kind, comp.name, pm, options)
    try:
        module = pm.create(kind, comp.name, **options)
    except Exception as exc:  # whatever the factory (or torch inside it) raises: one line, at its table
        bad = next((k for k in comp.options if repr(k) in str(exc) or k in str(exc)), None)
        what = str(exc) if isinstance(exc, (LatentkitError, TypeError, ValueError)) else f"{type(exc).__name__}: {exc}"
        raise config.error(f"[{section}] cannot create {kind} {comp.name!r}: {what}", section, bad) from exc
    empty = next(((n, tuple(p.shape)) for n, p in getattr(module, "named_parameters", lambda: [])() if p.numel() == 0),
                 None)
    if empty is not None:
        raise config.error(f"[{section}] {kind} {comp.name!r} has a parameter with no elements ({empty[0]} of shape "
                           f"{empty[1]}): a width, depth or channel count is 0", section)
    if comp.weights_from is not None:
        _load_component_weights(config, module, comp.weights_from, section)
    return module


def available_memory() -> int | None:
    """Bytes of memory this process may still allocate (``MemAvailable`` of /proc/meminfo,
    else the free physical pages), or ``None`` where the platform does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(config: ExperimentConfig, section: str, kind: str, name: str, pm: PluginManager,
                  options: Mapping[str, Any]) -> None:
    """Build the component on the meta device first (no memory is allocated) and refuse it
    when its parameters and buffers alone would not fit in the memory available: a width or
    depth typed one digit too long must be an error, not the kernel's out-of-memory killer. A
    factory that cannot build on the meta device is not checked."""
    import torch

    try:
        with torch.device("meta"):
            probe = pm.create(kind, name, **options)
        need = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    except Exception:
        return
    have = available_memory()
    if have is not None and need > have:
        raise config.error(f"[{section}] {kind} {name!r} would need {need / 2**30:.1f} GiB for its parameters "
                           f"alone, more than the {have / 2**30:.1f} GiB of memory available; check its sizes "
                           "(widths, depths, channel counts)", section)


def _load_component_weights(config: ExperimentConfig, module: Any, weights: str, section: str) -> None:
    """Load ``weights`` (the ``weights_from`` key) into a freshly created component.

    It is a ``.safetensors`` file, a directory written by
    ``latentkit.autoencoders.io.save_pretrained``, a training checkpoint (``step_N``), a
    ``checkpoints/`` folder or a run directory (its newest intact checkpoint, EMA weights
    preferred). Keys of a whole training model (``autoencoder.*``, ``denoiser.*``, ...) are
    matched by their prefix. A relative path is taken from the working directory, like every
    path of a config (``output_dir``, ``cache_dir``) and of the command line.
    """
    from latentkit.checkpoint_files import read_checkpoint
    from latentkit.training.checkpoint import MANIFEST, RUN_CHECKPOINTS, load_weights

    path = Path(weights)  # relative to the working directory, as every path of a config
    try:
        if path.is_file():
            state = dict(read_checkpoint(path).state)  # safetensors checked, a pickle refused
        elif (path / MANIFEST).exists() or any(path.glob("step_*")) or (path / RUN_CHECKPOINTS).is_dir():
            state = load_weights(path)
        elif (path / "model.safetensors").is_file():
            state = dict(read_checkpoint(path / "model.safetensors").state)
        else:
            raise FileNotFoundError(f"no weights found at {str(path)!r}")
    except Exception as exc:  # a missing, corrupt or foreign file: one line, at the key
        what = str(exc) if isinstance(exc, (OSError, CheckpointError, ValueError)) else f"{type(exc).__name__}: {exc}"
        raise config.error(f"[{section}] weights_from: {what}", section, "weights_from") from exc
    wanted = set(module.state_dict())
    for prefix in ("", f"{section}.", "autoencoder.", "denoiser.", "conditioner.", "model."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if wanted <= set(sub):
            module.load_state_dict({k: sub[k] for k in wanted})
            return
    missing = sorted(wanted - set(state))[:5]
    raise config.error(f"[{section}] weights_from: {str(path)!r} does not hold this {section}'s "
                       f"parameters (e.g. {missing} are missing)", section, "weights_from")


def _build_parts(config: ExperimentConfig, takes: Mapping[str, bool], manager: PluginManager | None) -> dict[str, Any]:
    """The parts a model factory takes, in the order that fixes the random initial weights:
    autoencoder, conditioner, denoiser (sized from the other two), schedule."""
    parts: dict[str, Any] = {}
    if "autoencoder" in takes and config.autoencoder is not None:
        parts["autoencoder"] = build_component(config, "autoencoder", "autoencoder", config.autoencoder, manager)
    if "conditioner" in takes:
        parts["conditioner"] = None if config.conditioner is None else build_component(
            config, "conditioner", "conditioner", config.conditioner, manager)
    if "denoiser" in takes and config.denoiser is not None:
        latent = parts["autoencoder"].latent_spec if "autoencoder" in parts else None
        spec = parts["conditioner"].output_spec if parts.get("conditioner") is not None else None
        sizes = {} if latent is None else {
            "in_channels": latent.channels + (spec.concat_channels if spec else 0),
            "out_channels": latent.channels,
            "layout": latent.layout,
        }
        parts["denoiser"] = build_component(
            config, "denoiser", "denoiser", config.denoiser, manager, **sizes,
            crossattn_dim=spec.crossattn_dim if spec else None, vector_dim=spec.vector_dim if spec else None)
    if "schedule" in takes and config.schedule is not None:
        parts["schedule"] = build_component(config, "schedule", "schedule", config.schedule, manager)
    return parts


def build_model(config: ExperimentConfig, *, manager: PluginManager | None = None) -> Any:
    """The model a config describes: the registered model ``[model] kind`` (default
    ``diffusion``, a :class:`latentkit.LatentDiffusion`) called with the parts its factory
    takes and the ``[model]`` options. ``kind = "autoencoder"`` with the deprecated ``loss =
    "module:Name"`` calls ``Name(autoencoder=..., **[model] keys)`` instead
    (:mod:`latentkit.experiment.loss_path`). Refused with a :class:`ConfigError` unless it is
    an ``nn.Module`` the :class:`~latentkit.training.Trainer` can call ``loss(batch)`` on."""
    pm = manager or get_plugin_manager()
    kind = config.model.kind
    if config.model.loss is not None:
        spec = config.model.loss
        if kind != "autoencoder":
            raise config.error(loss_path.kind_message(kind), "model", "loss")
        factory = loss_path.checked_factory(config, spec)
        name = str(getattr(factory, "__name__", spec))
        parts = _build_parts(config, {"autoencoder": True}, pm)
        return construct(config, factory, parts, source=spec, name=name, label=f"{name} (loss = {spec!r})",
                         fixed="kind, loss", key="loss", prefix="[model] loss: ")
    try:
        factory = model_factory(kind, pm)
    except ConfigError as exc:
        raise config.error(exc.message, "model", "kind") from None
    parts = _build_parts(config, model_parts(factory), pm)
    if manager is not None and "plugin_manager" in factory_parameters(factory)[0]:
        parts["plugin_manager"] = manager  # the model samples through the manager that built it
    name = _model_name(factory, kind)
    return construct(config, factory, parts, source=kind, name=name, label=name, fixed="kind", key="kind")


def _model_name(factory: Callable[..., Any], kind: str) -> str:
    """What messages call a model factory: the class it is or returns, else its name."""
    if inspect.isclass(factory):
        return factory.__name__
    returned = getattr(factory, "__annotations__", {}).get("return")
    if isinstance(returned, str):  # postponed annotations: the name as written
        return returned if returned.isidentifier() else str(getattr(factory, "__name__", kind))
    return str(getattr(returned, "__name__", None) or getattr(factory, "__name__", kind))


def construct(config: ExperimentConfig, factory: Callable[..., Any], parts: Mapping[str, Any], *,
              source: str, name: str, label: str, fixed: str, key: str, prefix: str = "[model] ") -> Any:
    """``factory(**parts, **[model] options)``: the options checked against its parameters
    first and the result against the trainer's model protocol after; every problem a
    :class:`ConfigError` at ``[model] key`` (or the key it is about). ``name`` / ``label``
    name the factory in messages, ``source`` what built the model, ``fixed`` the keys the
    config reads itself."""

    def error(message: str, at: str = key) -> ConfigError:
        return config.error(message if message.startswith("[model]") else prefix + message, "model", at)

    params, var_kw = factory_parameters(factory)
    options = config.model.options
    check_model_options(name, params, var_kw, options, parts, fixed, error)
    try:
        required = [p.name for p in inspect.signature(factory).parameters.values()
                    if p.default is inspect.Parameter.empty and p.name not in parts
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        required = []
    missing = [p for p in required if p not in options]
    if missing:
        raise error(f"[model] kind = {config.model.kind!r} needs {', '.join(missing)} = ... "
                    f"(a required parameter of {name})")
    try:
        model = factory(**parts, **options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, LatentkitError):  # already says what is wrong, with both sides
            raise
        bad = next((k for k in options if repr(k) in str(exc) or k in str(exc)), key)
        raise error(f"[model] cannot create {label}: {exc}", bad) from exc
    problem = trainability_problem(model, source)
    if problem is not None:
        raise error(problem)
    return model


#: Training items ``[autoencoder] fit_statistics`` encodes at most.
FIT_STATISTICS_ITEMS = 1024


def fit_statistics(config: ExperimentConfig, model: Any, *, manager: PluginManager | None = None) -> Any:
    """``[autoencoder] fit_statistics``: fit the frozen autoencoder's latent normalisation on
    (up to :data:`FIT_STATISTICS_ITEMS` of) the training data, posterior samples drawn with
    ``[training] seed``, before training; returns the
    :class:`~latentkit.latent_statistics.LatentStatistics`, or ``None`` when not asked."""
    comp = config.autoencoder
    if comp is None or comp.fit_statistics is None:
        return None
    autoencoder = getattr(model, "autoencoder", None)
    if autoencoder is None or any(p.requires_grad for p in autoencoder.parameters()):
        raise config.error("[autoencoder] fit_statistics needs a model that keeps its autoencoder frozen (a "
                           f"diffusion model's first stage); {type(model).__name__} trains it", "autoencoder",
                           "fit_statistics")
    import torch
    from torch.utils.data import default_collate

    dataset = create_dataset(config, manager=manager)
    n = min(len(dataset), FIT_STATISTICS_ITEMS)
    size = config.training.batch_size
    batches = (default_collate([dataset[i] for i in range(start, min(n, start + size))]) for start in range(0, n, size))
    return autoencoder.fit_latent_statistics(
        batches, shift=comp.fit_statistics == "scale_shift", data_key=getattr(dataset, "data_key", None),
        generator=torch.Generator(next(iter(autoencoder.buffers())).device).manual_seed(config.training.seed))


def create_dataset(config: ExperimentConfig, *, manager: PluginManager | None = None) -> Any:
    """The dataset of ``[data]`` as registered (no latent caching)."""
    return build_component(config, "data", "dataset", ComponentConfig(config.data.name, config.data.options),
                           manager)


def build_dataset(config: ExperimentConfig, model: Any = None, *, manager: PluginManager | None = None) -> Any:
    """The dataset of ``[data]``; with ``cache_latents`` the latents of that dataset encoded
    once through ``model.autoencoder`` (cached under ``cache_dir``, reused when it matches)."""
    dataset = create_dataset(config, manager=manager)
    if not config.data.cache_latents:
        return dataset
    autoencoder = getattr(model, "autoencoder", None)
    if autoencoder is None:
        raise config.error("[data] cache_latents needs a model with an autoencoder", "data", "cache_latents")
    from latentkit.data.latent_cache import LatentCacheDataset, cache_latents

    cache_dir = Path(config.data.cache_dir or Path(config.training.output_dir) / "latent_cache")
    path = cache_latents(dataset, autoencoder, cache_dir / f"{config.data.name}.safetensors",
                         flip=config.data.cache_flip, batch_size=config.training.batch_size)
    return LatentCacheDataset(path, seed=config.training.seed)

"""The schema of an experiment config: one frozen attrs class per TOML table.

A config file has one table per part::

    [autoencoder]            # name = a registered autoencoder; other keys go to its factory
    name = "kl"
    [denoiser]               # composition keys (in/out channels, crossattn_dim, vector_dim,
    name = "unet"            #  layout) are filled in from the other parts when left out
    [conditioner]            # optional
    name = "class_label"
    [schedule]
    name = "scaled_linear"
    [model]                  # kind = a registered model (default "diffusion"); its other keys
    parameterization = "eps" #  go to that model's factory
    [data]                   # name = a registered dataset; cache_latents / cache_dir are ours
    name = "shapes"
    [training]               # the fields of latentkit.training.TrainingConfig
    max_steps = 1000

Which part tables a model kind reads follows from its factory's parameters (see
:func:`model_parts`): ``diffusion`` takes all four, ``autoencoder`` the autoencoder alone,
``stable_diffusion`` none (its checkpoint holds them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from latentkit.errors import ConfigError
from latentkit.experiment.source import find_line
from latentkit.training.config import TrainingConfig
from latentkit.validation import matches, suggest, type_name

__all__ = [
    "PART_SECTIONS",
    "SECTIONS",
    "ComponentConfig",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "check_model_options",
    "model_parts",
]

#: Tables naming a registered component, mapped to its kind: the parts of a model.
PART_SECTIONS: dict[str, str] = {
    "autoencoder": "autoencoder",
    "denoiser": "denoiser",
    "conditioner": "conditioner",
    "schedule": "schedule",
}
#: Every table a config may have, in the order they are read.
SECTIONS = ("autoencoder", "denoiser", "conditioner", "schedule", "model", "data", "training")


def model_parts(factory: Callable[..., Any]) -> dict[str, bool]:
    """The part tables a model factory takes (its parameters named after
    :data:`PART_SECTIONS`), each mapped to whether it is required (no default)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default is inspect.Parameter.empty for name, p in params.items() if name in PART_SECTIONS}


def check_model_options(name: str, params: Mapping[str, Any], var_kw: bool, options: Mapping[str, Any],
                        parts: Mapping[str, Any], fixed: str, error: Callable[[str, str], ConfigError]) -> None:
    """Check the ``[model]`` keys against the parameters of the model factory ``name``
    (``parts`` are filled in by the builder; ``fixed`` are the keys the config reads itself)."""
    for key, value in options.items():
        if key in parts or (key not in params and not var_kw):
            allowed = sorted(k for k in params if k not in parts)
            raise error(
                f"[model] unknown key {key!r} for {name}; allowed keys: "
                f"{', '.join([fixed, *allowed])}.{suggest(key, allowed)}", key)
        if key in params and matches(value, params[key]) is False:
            raise error(f"[model] {key} must be {type_name(params[key])}, got {value!r}", key)


@attrs.frozen
class ComponentConfig:
    """A part table such as ``[autoencoder]``: the registered ``name`` and its factory options."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    weights_from: str | None = None  # weights loaded after creation (checkpoint, run dir, .safetensors)
    fit_statistics: Literal["scale", "scale_shift"] | None = None  # [autoencoder] only: latent normalisation fitted on the training data


@attrs.frozen
class DataConfig:
    """The ``[data]`` table: a registered dataset, its options, and latent caching."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    cache_latents: bool = False  # encode once through the frozen autoencoder, train on latents
    cache_dir: str | None = None  # default: <output_dir>/latent_cache
    cache_flip: bool = True  # also store the latents of horizontally flipped images


@attrs.frozen
class ModelConfig:
    """The ``[model]`` table: which registered model is trained, and its options."""

    kind: str = "diffusion"  # a registered model (`latentkit plugins --kind model`)
    options: dict[str, Any] = attrs.field(factory=dict)
    loss: str | None = None  # deprecated: kind = "autoencoder" with a "module:attr" training loss


@attrs.frozen
class ExperimentConfig:
    """A whole config file, checked. ``path`` and ``text`` keep the source, so that errors
    found later (when the model is built) name their line too."""

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    autoencoder: ComponentConfig | None = None
    denoiser: ComponentConfig | None = None
    conditioner: ComponentConfig | None = None
    schedule: ComponentConfig | None = None
    path: str | None = None
    text: str = attrs.field(default="", repr=False)

    def error(self, message: str, section: str, key: str | None = None) -> ConfigError:
        """A :class:`ConfigError` for ``[section] key`` of this file, with its line."""
        return ConfigError(message, path=self.path, line=find_line(self.text, section, key),
                           section=section, key=key)

    def parts(self) -> dict[str, ComponentConfig]:
        """The part tables present, by section name."""
        return {name: comp for name in PART_SECTIONS if (comp := getattr(self, name)) is not None}

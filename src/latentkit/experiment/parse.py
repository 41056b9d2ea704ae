"""Reading a TOML config into the checked schema (:mod:`latentkit.experiment.schema`).

An unknown table or key, a value of the wrong type, an unknown component name or model kind,
a missing table, or an option that a component's factory does not take raises
:class:`~latentkit.errors.ConfigError`, whose message names the file, the line and the key,
and what is allowed there. Component options are checked against the registered factory's
signature and type hints (:mod:`latentkit.validation`) of the plugin manager given, or of the
process-wide one; the ``[model]`` options when the model is built
(:func:`latentkit.experiment.build.build_model`), against the parts built.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from latentkit.errors import ConfigError, UnknownComponentError
from latentkit.experiment import loss_path
from latentkit.experiment.schema import (
    PART_SECTIONS,
    SECTIONS,
    ComponentConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    model_parts,
)
from latentkit.experiment.source import find_line
from latentkit.plugins import PluginManager, get_plugin_manager
from latentkit.training.config import TrainingConfig
from latentkit.validation import check_fields, factory_parameters, matches, suggest, type_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["load_config", "loads_config", "model_factory"]

#: The ``[data]`` keys read by latentkit itself (the others go to the dataset).
_DATA_FIELDS: dict[str, Any] = {"cache_latents": bool, "cache_dir": str | None, "cache_flip": bool}


def load_config(path: str | os.PathLike[str], *, manager: PluginManager | None = None,
                check_components: bool = True) -> ExperimentConfig:
    """Read and check the TOML config at ``path``.

    ``check_components`` looks every component ``name`` up in the registry (of ``manager``,
    default the process-wide one) and checks its options against the factory's signature
    and type hints. Raises :class:`ConfigError` on any problem.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=str(p)) from exc
    return loads_config(text, path=str(p), manager=manager, check_components=check_components)


def loads_config(text: str, *, path: str | None = None, manager: PluginManager | None = None,
                 check_components: bool = True) -> ExperimentConfig:
    """:func:`load_config` for TOML ``text`` (``path`` is only used in messages)."""
    where = path or "<config>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"invalid TOML: {exc}", path=where, line=int(m.group(1)) if m else None) from exc
    try:
        return _parse(raw, text, where, manager or get_plugin_manager(), check_components)
    except ConfigError as exc:
        if exc.line is None and exc.section is not None:
            line = find_line(text, exc.section, exc.key) or find_line(text, exc.section)
            raise ConfigError(exc.message, path=where, line=line, section=exc.section, key=exc.key) from None
        if exc.path is None:
            raise ConfigError(exc.message, path=where, line=exc.line, section=exc.section, key=exc.key) from None
        raise


def model_factory(kind: str, manager: PluginManager) -> Callable[..., Any]:
    """The factory of the registered model ``kind``; a :class:`ConfigError` on ``[model]
    kind`` naming the registered ones when there is none."""
    try:
        return manager.get("model", kind).resolve()
    except UnknownComponentError:
        names = [info.name for info in manager.list("model", sort=False)]
        shown = ", ".join(map(repr, names[:-1])) + f" or {names[-1]!r}" if len(names) > 1 else repr(names)
        raise ConfigError(f"[model] kind must be {shown}, got {kind!r}.{suggest(str(kind), names)}",
                          section="model", key="kind") from None


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table (a [{name}] section), got {type(value).__name__}",
                          section=name)
    return value


def _check_sections(raw: Mapping[str, Any], text: str, where: str) -> None:
    for key in raw:
        if key not in SECTIONS:
            allowed = list(SECTIONS)
            line = find_line(text, key) or find_line(text, None, key)
            raise ConfigError(
                f"unknown section [{key}]; allowed sections: {', '.join(allowed)}.{suggest(key, allowed)}",
                path=where, line=line, key=key,
            )
        if not isinstance(raw[key], dict):
            raise ConfigError(f"{key} must be a table ([{key}] section), got {raw[key]!r}",
                              path=where, line=find_line(text, None, key), key=key)


def _parse_model(raw: Mapping[str, Any], where: str, manager: PluginManager, check: bool) -> tuple[ModelConfig, dict[str, bool]]:
    """The ``[model]`` table and the parts its kind takes (part -> required)."""
    options = dict(_section(raw, "model") or {})
    kind = options.pop("kind", "diffusion")
    if not isinstance(kind, str):
        raise ConfigError(f"[model] kind must be a string naming a registered model, got {kind!r}",
                          section="model", key="kind")
    factory = model_factory(kind, manager)
    loss = options.pop("loss", None)
    if loss is not None:
        loss_path.check_spelling(kind, loss, options, check)
    return ModelConfig(kind=kind, options=options, loss=loss), model_parts(factory)


def _parse(raw: Mapping[str, Any], text: str, where: str, manager: PluginManager, check: bool) -> ExperimentConfig:
    _check_sections(raw, text, where)
    model, parts = _parse_model(raw, where, manager, check)
    required = [name for name, needed in parts.items() if needed] + ["data", "training"]
    for name in required:
        if name not in raw:
            hint = (" (or set [model] kind = \"autoencoder\" to train the autoencoder alone)"
                    if "denoiser" in parts and name in ("denoiser", "schedule") else "")
            at = find_line(text, "model", "kind")  # the line that asks for it, when there is one
            raise ConfigError(f"missing section [{name}], required for kind = {model.kind!r}{hint}",
                              path=where, line=at)
    for name in PART_SECTIONS:
        if name in raw and name not in parts:
            raise ConfigError(f"section [{name}] is not used when [model] kind = {model.kind!r}; remove it",
                              section=name)

    components: dict[str, ComponentConfig | None] = {}
    for section, comp_kind in PART_SECTIONS.items():
        values = _section(raw, section)
        components[section] = None if values is None else _component(values, section, comp_kind, manager, check)

    data_raw = dict(_section(raw, "data") or {})
    data_kwargs: dict[str, Any] = {}
    for key, hint in _DATA_FIELDS.items():
        if key in data_raw:
            value = data_raw.pop(key)
            if matches(value, hint) is False:
                raise ConfigError(f"[data] {key} must be {type_name(hint)}, got {value!r}", section="data", key=key)
            data_kwargs[key] = value
    data_comp = _component(data_raw, "data", "dataset", manager, check)
    data = DataConfig(name=data_comp.name, options=data_comp.options, **data_kwargs)

    training = TrainingConfig(**check_fields(TrainingConfig, _section(raw, "training") or {}, "training"))
    return ExperimentConfig(model=model, data=data, training=training, path=where, text=text, **components)


def _component(values: Mapping[str, Any], section: str, kind: str, manager: PluginManager,
               check: bool) -> ComponentConfig:
    values = dict(values)
    name = values.pop("name", None)
    weights_from = values.pop("weights_from", None) if kind != "dataset" else None
    if weights_from is not None and not isinstance(weights_from, str):
        raise ConfigError(f"[{section}] weights_from must be a string (a path), got {weights_from!r}",
                          section=section, key="weights_from")
    fit_statistics = _fit_statistics(values.pop("fit_statistics", None), section) if kind == "autoencoder" else None
    if name is None:
        raise ConfigError(f"[{section}] needs a 'name' key naming a registered {kind}", section=section)
    if not isinstance(name, str):
        raise ConfigError(f"[{section}] name must be a string naming a registered {kind}, got {name!r}",
                          section=section, key="name")
    if check:
        _check_component(kind, name, values, section, manager)
    return ComponentConfig(name=name, options=values, weights_from=weights_from, fit_statistics=fit_statistics)


def _fit_statistics(value: Any, section: str) -> Literal["scale", "scale_shift"] | None:
    """``fit_statistics = false | true | "scale" | "scale_shift"`` -> None, "scale" or
    "scale_shift"."""
    if value is None or value is False:
        return None
    if value is True or value == "scale":
        return "scale"
    if value == "scale_shift":
        return "scale_shift"
    raise ConfigError(f"[{section}] fit_statistics must be true, false, 'scale' or 'scale_shift', got {value!r}",
                      section=section, key="fit_statistics")


def _check_component(kind: str, name: str, options: Mapping[str, Any], section: str,
                     manager: PluginManager) -> None:
    try:
        info = manager.get(kind, name)
    except UnknownComponentError:
        available = sorted(i.name for i in manager.list(kind))
        raise ConfigError(
            f"[{section}] name: unknown {kind} {name!r}; registered {kind}s: "
            f"{', '.join(available) or '(none)'}.{suggest(name, available)}",
            section=section, key="name",
        ) from None
    try:
        factory = info.resolve()
    except Exception as exc:
        raise ConfigError(f"[{section}] {kind} {name!r} cannot be loaded: {exc}", section=section, key="name") from exc
    params, var_kw = factory_parameters(factory)
    for key, value in options.items():
        if key not in params:
            if var_kw:
                continue
            allowed = sorted(params)
            raise ConfigError(
                f"[{section}] unknown key {key!r} for {kind} {name!r}; allowed keys: name, "
                f"{'weights_from, ' if kind != 'dataset' else ''}{'fit_statistics, ' if kind == 'autoencoder' else ''}"
                f"{', '.join(allowed)}.{suggest(key, allowed)}",
                section=section, key=key,
            )
        if matches(value, params[key]) is False:
            raise ConfigError(
                f"[{section}] {key} must be {type_name(params[key])} for {kind} {name!r}, got "
                f"{value!r} ({type(value).__name__})",
                section=section, key=key,
            )

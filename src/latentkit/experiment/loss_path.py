"""The deprecated ``[model] loss = "module:attr"`` spelling of a plugin's training loss.

Training losses are registered models now: a plugin adds its loss through
``latentkit_register_models`` and a config names it with ``[model] kind = "<name>"``, as every
other component is found. The import-string spelling (``kind = "autoencoder"`` plus
``loss = "module:attr"``, called as ``attr(autoencoder=<the autoencoder>, **[model] keys)``)
keeps working with a :class:`DeprecationWarning`, and with the same checks as before: when the
config is loaded (importable, callable with ``autoencoder``, the other keys fit its signature)
and on the built model (what the Trainer calls).
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from latentkit.errors import ConfigError
from latentkit.experiment.schema import check_model_options
from latentkit.validation import factory_parameters, suggest

if TYPE_CHECKING:
    from latentkit.experiment.schema import ExperimentConfig

__all__ = ["check_spelling", "checked_factory", "kind_message", "resolve"]


def check_spelling(kind: str, spec: Any, options: Mapping[str, Any], check: bool) -> None:
    """The load-time checks of ``loss = spec`` (with ``kind``), and the deprecation warning."""
    if kind != "autoencoder":
        raise ConfigError(kind_message(kind), section="model", key="loss")
    parse_spec(spec)
    warnings.warn(
        f"[model] loss = {spec!r} is deprecated: register the loss as a model in your plugin "
        "(latentkit_register_models, docs/plugins.md) and name it with [model] kind = \"<name>\"",
        DeprecationWarning, stacklevel=5)
    if check:
        check_factory(spec, options)


def kind_message(kind: str) -> str:
    return (f"[model] loss is only valid with kind = 'autoencoder' (a training loss wrapping the "
            f"autoencoder); here kind = {kind!r}. Remove loss, or set kind = \"autoencoder\"")


def loss_error(message: str) -> ConfigError:
    return ConfigError(f"[model] loss: {message}", section="model", key="loss")


def parse_spec(spec: Any) -> tuple[str, str]:
    """``(module, attr)`` of a ``loss = "module:attr"`` value (the entry-point form)."""
    if not isinstance(spec, str):
        raise loss_error(f"expected a string 'module:attr' naming a training loss, got {spec!r} "
                          f"({type(spec).__name__})")
    module, sep, attr = spec.partition(":")
    if not (sep and all(p.isidentifier() for p in module.split("."))
            and all(p.isidentifier() for p in attr.split("."))):
        raise loss_error(f"expected an import path 'module:attr' (e.g. "
                          f"'latentkit_volume.losses:VolumeAutoencoderLoss'), got {spec!r}")
    return module, attr


def resolve(spec: str) -> Callable[..., Any]:
    """Import the training loss that ``loss = "module:attr"`` names; ConfigError when the
    module cannot be imported, lacks the attribute, or the attribute is not callable."""
    module_name, attr = parse_spec(spec)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or any error while running it
        cause = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise loss_error(f"expected an importable module {module_name!r} (from {spec!r}); "
                          f"importing it failed: {cause}") from exc
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = getattr(obj, "__all__", None) if isinstance(obj, types.ModuleType) else None
            names = list(names) if isinstance(names, (list, tuple)) else dir(obj)
            public = sorted(n for n in names if not n.startswith("_") and callable(getattr(obj, n, None)))
            shown = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
            raise loss_error(f"expected {where!r} to have an attribute {part!r} (from {spec!r}), "
                              f"found none; its public callables: {shown or '(none)'}."
                              f"{suggest(part, public)}")
        obj = getattr(obj, part)
        where = f"{where}:{part}" if where == module_name else f"{where}.{part}"
    if not callable(obj):
        raise loss_error(f"expected {spec!r} to be a class or function called as "
                          f"{attr}(autoencoder=..., **[model] keys), found {obj!r} "
                          f"({type(obj).__name__})")
    return typing.cast("Callable[..., Any]", obj)


def parameters(factory: Callable[..., Any], spec: str) -> tuple[dict[str, Any], bool]:
    """The keyword parameters of a loss factory (as :func:`_factory_parameters`), which must
    include ``autoencoder``: ``build_model`` passes the built autoencoder under that name."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise loss_error(f"cannot read the signature of {spec!r} ({exc}), so its autoencoder "
                          "parameter and the [model] keys cannot be checked") from exc
    param = sig.parameters.get("autoencoder")
    if param is None or param.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                           inspect.Parameter.KEYWORD_ONLY):
        found = ", ".join(str(p) for p in sig.parameters.values()) or "none"
        raise loss_error(f"expected {spec!r} to take an 'autoencoder' keyword parameter (it is "
                          f"called as {spec.partition(':')[2]}(autoencoder=<the built autoencoder>, "
                          f"**[model] keys)); its parameters: ({found})")
    return factory_parameters(factory)


def check_factory(spec: str, options: Mapping[str, Any]) -> None:
    """The load-time checks of ``loss = "module:attr"``: importable, callable with
    ``autoencoder``, the other ``[model]`` keys fit its signature, and a class is a module
    with ``loss`` (the rest of what the Trainer needs is checked on the built model)."""
    factory = resolve(spec)
    params, var_kw = parameters(factory, spec)
    if inspect.isclass(factory):
        from torch import nn

        if not issubclass(factory, nn.Module):
            raise loss_error(f"expected {spec!r} to be a torch.nn.Module subclass (the Trainer moves, "
                              f"checkpoints and optimizes the model as a module), found a class "
                              f"based on {', '.join(b.__name__ for b in factory.__mro__[1:]) or 'nothing'}")
        if not callable(getattr(factory, "loss", None)):
            raise loss_error(f"expected {spec!r} to have a loss(batch) method, which the Trainer "
                              "calls every step (docs/training.md, 'The model protocol'); found none")
    check_model_options(getattr(factory, "__name__", spec), params, var_kw, options,
                         {"autoencoder": None}, "kind, loss",
                         lambda message, key: ConfigError(message, section="model", key=key))


def checked_factory(config: ExperimentConfig, spec: str) -> Callable[..., Any]:
    """The factory ``loss = spec`` names, checked as at load time; problems are
    :class:`ConfigError` at the ``loss`` line of ``config``."""
    try:
        factory = resolve(spec)
        parameters(factory, spec)
    except ConfigError as exc:
        raise config.error(exc.message, "model", "loss") from exc.__cause__
    return factory

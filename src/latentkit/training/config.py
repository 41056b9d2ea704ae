"""TOML experiment configs read into strict attrs classes.

A config file has one table per part::

    [autoencoder]            # name = a registered autoencoder; other keys go to its factory
    name = "kl"
    [denoiser]               # composition keys (in/out channels, crossattn_dim, vector_dim,
    name = "unet"            #  layout) are filled in from the other parts when left out
    [conditioner]            # optional
    name = "class"
    [schedule]
    name = "scaled_linear"
    [model]                  # optional: kind = "diffusion" (default) or "autoencoder"; other
    parameterization = "eps" #  keys go to LatentDiffusion (or the autoencoder training loss:
                             #  the core one, or loss = "module:attr" from any package)
    [data]                   # name = a registered dataset; cache_latents / cache_dir are ours
    name = "shapes"
    [training]               # the fields of TrainingConfig
    max_steps = 1000

An unknown key, a value of the wrong type, an unknown component name or a missing section
raises :class:`ConfigError`, whose message names the key, the file and the line, and what is
allowed there.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from latentkit.errors import ConfigError, UnknownComponentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "COMPONENT_SECTIONS",
    "ComponentConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TrainingConfig",
    "build_dataset",
    "build_model",
    "load_config",
    "loads_config",
]

#: Sections naming a registered component, mapped to its kind.
COMPONENT_SECTIONS: dict[str, str] = {
    "autoencoder": "autoencoder",
    "denoiser": "denoiser",
    "conditioner": "conditioner",
    "schedule": "schedule",
}
SECTIONS = ("autoencoder", "denoiser", "conditioner", "schedule", "model", "data", "training")


# ----------------------------------------------------------------------- type checks


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is type(None) or hint is None:
        return "none"
    if hint is Any:
        return "any value"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (list, tuple, dict):
        args = typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"array of {_type_name(args[0])}"
        if origin is tuple:
            return f"array of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        if origin is list:
            return f"array of {_type_name(args[0])}" if args else "array"
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(hint, getattr(hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` (as read from TOML) fits ``hint``; ``None`` when the hint is not one
    this checker understands (then the value is passed through unchecked)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return False
            results = [_matches(v, a) for v, a in zip(value, args)]
        else:
            results = [_matches(v, args[0]) for v in value]
        return False if any(r is False for r in results) else True
    if origin is dict or hint is dict or origin is Mapping:
        return isinstance(value, dict)
    return None


def _convert(value: Any, hint: Any) -> Any:
    """TOML value -> the field's Python type (int -> float, array -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(hint):
            if _matches(value, a):
                return _convert(value, a)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        elem = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(_convert(v, a) for v, a in zip(value, elem))
    if origin is list and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        return [_convert(v, args[0]) if args else v for v in value]
    return value


def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_fields(cls: type, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Check ``values`` against the attrs fields of ``cls``; raise ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    out = {}
    for key, value in values.items():
        if key not in fields:
            allowed = sorted(fields)
            raise ConfigError(
                f"[{section}] unknown key {key!r}; allowed keys: {', '.join(allowed)}.{_suggest(key, allowed)}",
                section=section, key=key,
            )
        hint = hints[key]
        if _matches(value, hint) is False:
            raise ConfigError(
                f"[{section}] {key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})",
                section=section, key=key,
            )
        out[key] = _convert(value, hint)
    return out


def _validate_attrs(instance: Any, section: str) -> None:
    """Type-check an attrs instance built from Python (same rules as from TOML)."""
    hints = typing.get_type_hints(type(instance))
    for f in attrs.fields(type(instance)):
        value = getattr(instance, f.name)
        if _matches(value, hints[f.name]) is False:
            raise ConfigError(
                f"[{section}] {f.name} must be {_type_name(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})",
                section=section, key=f.name,
            )


# ----------------------------------------------------------------------- config classes


def _positive(section: str, **values: float | int | None) -> None:
    for key, v in values.items():
        if v is not None and not v > 0:
            raise ConfigError(f"[{section}] {key} must be > 0, got {v!r}", section=section, key=key)


@attrs.define(kw_only=True)
class TrainingConfig:
    """Everything the :class:`~latentkit.training.Trainer` needs besides model and data."""

    output_dir: str = "runs/latentkit"  # checkpoints/, metrics.csv, samples/ go here
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate (AdamW, Loshchilov & Hutter 2019)
    weight_decay: float = 0.0  # decoupled; never applied to biases and norm weights (ndim < 2)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    lr_decay: Literal["constant", "cosine", "linear"] = "constant"  # after warm-up
    min_lr_ratio: float = 0.0  # final lr / peak lr for cosine and linear decay
    grad_clip: float | None = 1.0  # max global gradient norm; 0 or None = no clipping
    ema_decay: float | None = None  # None = no EMA; e.g. 0.9999
    ema_warmup: bool = True  # d_t = 1 - (1 + t)^-ema_power, capped at ema_decay
    ema_power: float = 2.0 / 3.0
    ema_start_step: int = 0
    ema_update_every: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 autocast; fp16 + GradScaler (CUDA)
    device: str = "auto"  # "auto" = CUDA when available (cuda:LOCAL_RANK), else CPU
    compile: bool = False  # torch.compile the model's compile_targets() (LatentDiffusion: the denoiser), else the loss
    channels_last: bool | None = None  # None = on CUDA only
    tf32: bool = True  # TF32 matmuls/convolutions on CUDA
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)
    num_workers: int = 0  # DataLoader workers
    shuffle: bool = True
    checkpoint_every: int = 1000  # steps between checkpoints (also at the end)
    keep_last: int = 3  # checkpoints kept
    resume: bool = True  # continue from the newest intact checkpoint in output_dir
    nonfinite: Literal["stop", "skip"] = "stop"  # on a NaN/inf loss: stop, or skip the step
    log_every: int = 10  # steps between metric rows (CSV/TensorBoard)
    csv: bool = True
    tensorboard: bool = False  # when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar
    sample_every: int = 0  # steps between sample grids (0 = never); needs model.sample
    sample_prompts: list[str] = attrs.field(factory=list)  # captions for sample grids
    sample_labels: list[int] = attrs.field(factory=list)  # class labels for sample grids
    sample_count: int = 8  # images per grid when no prompts/labels are given
    sample_steps: int = 20
    sample_sampler: str | None = None  # registered sampler; None = the model's default
    sample_guidance: float | None = None  # classifier-free guidance scale
    sample_seed: int = 0
    find_unused_parameters: bool | None = None  # DDP; None = only for several optimizer groups

    def __attrs_post_init__(self) -> None:
        _validate_attrs(self, "training")
        _positive("training", max_steps=self.max_steps, batch_size=self.batch_size,
                  grad_accum=self.grad_accum, lr=self.lr, checkpoint_every=self.checkpoint_every,
                  keep_last=self.keep_last, log_every=self.log_every,
                  ema_update_every=self.ema_update_every, sample_count=self.sample_count,
                  sample_steps=self.sample_steps, eps=self.eps)
        for key in ("warmup_steps", "num_workers", "sample_every", "ema_start_step", "weight_decay",
                    "grad_clip"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"[training] {key} must be >= 0, got {getattr(self, key)!r}",
                                  section="training", key=key)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"[training] min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}",
                              section="training", key="min_lr_ratio")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"[training] ema_decay must lie in (0, 1), got {self.ema_decay!r}",
                              section="training", key="ema_decay")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"[training] betas must lie in [0, 1), got {self.betas!r}",
                              section="training", key="betas")


@attrs.frozen
class ComponentConfig:
    """A ``[autoencoder]``-style section: the registered ``name`` and its factory options."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    weights_from: str | None = None  # weights loaded after creation (checkpoint, run dir, .safetensors)


@attrs.frozen
class DataConfig:
    """The ``[data]`` section: a registered dataset, its options, and latent caching."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
    cache_latents: bool = False  # encode once through the frozen autoencoder, train on latents
    cache_dir: str | None = None  # default: <output_dir>/latent_cache
    cache_flip: bool = True  # also store the latents of horizontally flipped images


@attrs.frozen
class ModelConfig:
    """The ``[model]`` section: what is trained and the options of the composed model."""

    kind: Literal["diffusion", "autoencoder", "stable_diffusion"] = "diffusion"
    options: dict[str, Any] = attrs.field(factory=dict)
    loss: str | None = None  # kind = "autoencoder" only: "module:attr" of a training loss


@attrs.frozen
class ExperimentConfig:
    """A whole config file, checked. ``path`` and ``text`` keep the source for late errors
    (those found when the model is built) to name their line too."""

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


# ----------------------------------------------------------------------- line lookup

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+))\s*[.=]""")


def find_line(text: str, section: str | None, key: str | None = None) -> int | None:
    """1-based line of ``key`` inside table ``[section]`` of TOML ``text`` (of the table
    header when ``key`` is None); ``None`` when not found. Scans the text, so it works for
    values that the parser accepted and for ones it did not."""
    current: str | None = None
    in_multiline = False
    for i, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline = False
            continue
        m = _HEADER.match(line)
        if m:
            current = ".".join(p.strip().strip('"').strip("'") for p in m.group(1).split("."))
            if key is None and current == section:
                return i
            continue
        km = _KEY.match(line)
        if km and key is not None and current == section:
            found = next(g for g in km.groups() if g is not None)
            if found == key:
                return i
        if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
            in_multiline = True
    return None


# ----------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str], *, manager: Any = None, check_components: bool = True) -> ExperimentConfig:
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


def loads_config(text: str, *, path: str | None = None, manager: Any = None, check_components: bool = True) -> ExperimentConfig:
    """:func:`load_config` for TOML ``text`` (``path`` is only used in messages)."""
    where = path or "<config>"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"invalid TOML: {exc}", path=where, line=int(m.group(1)) if m else None) from exc
    try:
        return _parse(raw, text, where, manager, check_components)
    except ConfigError as exc:
        if exc.line is None and exc.section is not None:
            exc = ConfigError(exc.message, path=where, line=find_line(text, exc.section, exc.key)
                              or find_line(text, exc.section), section=exc.section, key=exc.key)
            raise exc from None
        if exc.path is None:
            raise ConfigError(exc.message, path=where, line=exc.line, section=exc.section, key=exc.key) from None
        raise


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table (a [{name}] section), got {type(value).__name__}",
                          section=None if name not in raw else name, key=None)
    return value


def _parse(raw: Mapping[str, Any], text: str, where: str, manager: Any, check: bool) -> ExperimentConfig:
    for key in raw:
        if key not in SECTIONS:
            allowed = list(SECTIONS)
            line = find_line(text, key) or find_line(text, None, key)
            raise ConfigError(
                f"unknown section [{key}]; allowed sections: {', '.join(allowed)}.{_suggest(key, allowed)}",
                path=where, line=line, key=key,
            )
    for key in SECTIONS:
        if key in raw and not isinstance(raw[key], dict):
            raise ConfigError(f"{key} must be a table ([{key}] section), got {raw[key]!r}",
                              path=where, line=find_line(text, None, key), key=key)

    model_raw = dict(_section(raw, "model") or {})
    kind = model_raw.pop("kind", "diffusion")
    if kind not in ("diffusion", "autoencoder", "stable_diffusion"):
        raise ConfigError(
            f"[model] kind must be 'diffusion', 'autoencoder' or 'stable_diffusion', got {kind!r}",
            section="model", key="kind")
    loss = model_raw.pop("loss", None)
    if loss is not None:
        if kind != "autoencoder":
            raise ConfigError(_loss_kind_message(kind), section="model", key="loss")
        _parse_loss_path(loss)
        if check:
            _check_loss_factory(loss, model_raw)
    model = ModelConfig(kind=kind, options=model_raw, loss=loss)

    required = {"diffusion": ("autoencoder", "denoiser", "schedule", "data", "training"),
                "autoencoder": ("autoencoder", "data", "training"),
                "stable_diffusion": ("data", "training")}[kind]
    for name in required:
        if name not in raw:
            hint = (" (or set [model] kind = \"autoencoder\" to train the autoencoder alone)"
                    if kind == "diffusion" and name in ("denoiser", "schedule") else "")
            raise ConfigError(f"missing section [{name}], required for kind = {kind!r}{hint}",
                              path=where, line=None, section=None)
    unused = {"autoencoder": ("denoiser", "conditioner", "schedule"),
              "stable_diffusion": ("autoencoder", "denoiser", "conditioner", "schedule")}.get(kind, ())
    for name in unused:
        if name in raw:
            raise ConfigError(f"section [{name}] is not used when [model] kind = {kind!r}; remove it",
                              section=name)

    components: dict[str, ComponentConfig | None] = {}
    for section, comp_kind in COMPONENT_SECTIONS.items():
        values = _section(raw, section)
        components[section] = None if values is None else _component(values, section, comp_kind, manager, check)

    data_raw = dict(_section(raw, "data") or {})
    data_fields: dict[str, Any] = {"cache_latents": bool, "cache_dir": str | None, "cache_flip": bool}
    data_kwargs: dict[str, Any] = {}
    for key, hint in data_fields.items():
        if key in data_raw:
            value = data_raw.pop(key)
            if _matches(value, hint) is False:
                raise ConfigError(f"[data] {key} must be {_type_name(hint)}, got {value!r}",
                                  section="data", key=key)
            data_kwargs[key] = value
    data_comp = _component(data_raw, "data", "dataset", manager, check)
    data = DataConfig(name=data_comp.name, options=data_comp.options, **data_kwargs)

    training_raw = _section(raw, "training") or {}
    training = TrainingConfig(**_check_fields(TrainingConfig, training_raw, "training"))
    return ExperimentConfig(model=model, data=data, training=training, path=where, text=text, **components)


def _component(values: Mapping[str, Any], section: str, kind: str, manager: Any, check: bool) -> ComponentConfig:
    values = dict(values)
    name = values.pop("name", None)
    weights_from = values.pop("weights_from", None) if kind != "dataset" else None
    if weights_from is not None and not isinstance(weights_from, str):
        raise ConfigError(f"[{section}] weights_from must be a string (a path), got {weights_from!r}",
                          section=section, key="weights_from")
    if name is None:
        raise ConfigError(f"[{section}] needs a 'name' key naming a registered {kind}", section=section)
    if not isinstance(name, str):
        raise ConfigError(f"[{section}] name must be a string naming a registered {kind}, got {name!r}",
                          section=section, key="name")
    if check:
        _check_component(kind, name, values, section, manager)
    return ComponentConfig(name=name, options=values, weights_from=weights_from)


def _factory_parameters(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """(parameter name -> type hint, accepts **kwargs) of a factory (class or function)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    params: dict[str, Any] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            params[p.name] = hints.get(p.name, Any)
    returned = hints.get("return")
    if var_kw and not inspect.isclass(factory) and inspect.isclass(returned):
        # ``def unet(preset=None, **config) -> UNetModel``: the keywords go to the class.
        class_params, class_var_kw = _factory_parameters(returned)
        params = {**class_params, **params}
        var_kw = class_var_kw
    return params, var_kw


def _check_component(kind: str, name: str, options: Mapping[str, Any], section: str, manager: Any) -> None:
    from latentkit.plugins import get_plugin_manager

    pm = manager or get_plugin_manager()
    try:
        info = pm.get(kind, name)
    except UnknownComponentError:
        available = sorted(i.name for i in pm.list(kind))
        raise ConfigError(
            f"[{section}] name: unknown {kind} {name!r}; registered {kind}s: "
            f"{', '.join(available) or '(none)'}.{_suggest(name, available)}",
            section=section, key="name",
        ) from None
    try:
        factory = info.resolve()
    except Exception as exc:
        raise ConfigError(f"[{section}] {kind} {name!r} cannot be loaded: {exc}", section=section, key="name") from exc
    params, var_kw = _factory_parameters(factory)
    for key, value in options.items():
        if key not in params:
            if var_kw:
                continue
            allowed = sorted(params)
            raise ConfigError(
                f"[{section}] unknown key {key!r} for {kind} {name!r}; allowed keys: name, "
                f"{'weights_from, ' if kind != 'dataset' else ''}{', '.join(allowed)}.{_suggest(key, allowed)}",
                section=section, key=key,
            )
        if _matches(value, params[key]) is False:
            raise ConfigError(
                f"[{section}] {key} must be {_type_name(params[key])} for {kind} {name!r}, got "
                f"{value!r} ({type(value).__name__})",
                section=section, key=key,
            )


# ----------------------------------------------------------------------- training losses

#: The attributes by which a model asks the Trainer for several optimizers (both or neither).
_MULTI_OPTIMIZER = ("optimizer_names", "parameters_for")


def _loss_kind_message(kind: str) -> str:
    return (f"[model] loss is only valid with kind = 'autoencoder' (a training loss wrapping the "
            f"autoencoder); here kind = {kind!r}. Remove loss, or set kind = \"autoencoder\"")


def _loss_error(message: str) -> ConfigError:
    return ConfigError(f"[model] loss: {message}", section="model", key="loss")


def _parse_loss_path(spec: Any) -> tuple[str, str]:
    """``(module, attr)`` of a ``loss = "module:attr"`` value (the entry-point form)."""
    if not isinstance(spec, str):
        raise _loss_error(f"expected a string 'module:attr' naming a training loss, got {spec!r} "
                          f"({type(spec).__name__})")
    module, sep, attr = spec.partition(":")
    if not (sep and all(p.isidentifier() for p in module.split("."))
            and all(p.isidentifier() for p in attr.split("."))):
        raise _loss_error(f"expected an import path 'module:attr' (e.g. "
                          f"'latentkit_volume.losses:VolumeAutoencoderLoss'), got {spec!r}")
    return module, attr


def _resolve_loss(spec: str) -> Callable[..., Any]:
    """Import the training loss that ``loss = "module:attr"`` names; ConfigError when the
    module cannot be imported, lacks the attribute, or the attribute is not callable."""
    module_name, attr = _parse_loss_path(spec)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or any error while running it
        cause = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise _loss_error(f"expected an importable module {module_name!r} (from {spec!r}); "
                          f"importing it failed: {cause}") from exc
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = getattr(obj, "__all__", None) if isinstance(obj, types.ModuleType) else None
            names = list(names) if isinstance(names, (list, tuple)) else dir(obj)
            public = sorted(n for n in names if not n.startswith("_") and callable(getattr(obj, n, None)))
            shown = ", ".join(public[:12]) + (", ..." if len(public) > 12 else "")
            raise _loss_error(f"expected {where!r} to have an attribute {part!r} (from {spec!r}), "
                              f"found none; its public callables: {shown or '(none)'}."
                              f"{_suggest(part, public)}")
        obj = getattr(obj, part)
        where = f"{where}:{part}" if where == module_name else f"{where}.{part}"
    if not callable(obj):
        raise _loss_error(f"expected {spec!r} to be a class or function called as "
                          f"{attr}(autoencoder=..., **[model] keys), found {obj!r} "
                          f"({type(obj).__name__})")
    return typing.cast("Callable[..., Any]", obj)


def _loss_parameters(factory: Callable[..., Any], spec: str) -> tuple[dict[str, Any], bool]:
    """The keyword parameters of a loss factory (as :func:`_factory_parameters`), which must
    include ``autoencoder``: ``build_model`` passes the built autoencoder under that name."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise _loss_error(f"cannot read the signature of {spec!r} ({exc}), so its autoencoder "
                          "parameter and the [model] keys cannot be checked") from exc
    param = sig.parameters.get("autoencoder")
    if param is None or param.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                           inspect.Parameter.KEYWORD_ONLY):
        found = ", ".join(str(p) for p in sig.parameters.values()) or "none"
        raise _loss_error(f"expected {spec!r} to take an 'autoencoder' keyword parameter (it is "
                          f"called as {spec.partition(':')[2]}(autoencoder=<the built autoencoder>, "
                          f"**[model] keys)); its parameters: ({found})")
    return _factory_parameters(factory)


def _check_model_options(name: str, params: Mapping[str, Any], var_kw: bool, options: Mapping[str, Any],
                         parts: Mapping[str, Any], fixed: str,
                         error: Callable[[str, str], ConfigError]) -> None:
    """Check the ``[model]`` keys against the parameters of the model's constructor ``name``
    (``parts`` are filled in by ``build_model``; ``fixed`` are the keys read by the config)."""
    for key, value in options.items():
        if key in parts or (key not in params and not var_kw):
            allowed = sorted(k for k in params if k not in parts)
            raise error(
                f"[model] unknown key {key!r} for {name}; allowed keys: "
                f"{', '.join([fixed, *allowed])}.{_suggest(key, allowed)}", key)
        if key in params and _matches(value, params[key]) is False:
            raise error(f"[model] {key} must be {_type_name(params[key])}, got {value!r}", key)


def _check_loss_factory(spec: str, options: Mapping[str, Any]) -> None:
    """The load-time checks of ``loss = "module:attr"``: importable, callable with
    ``autoencoder``, the other ``[model]`` keys fit its signature, and a class is a module
    with ``loss`` (the rest of what the Trainer needs is checked on the built model)."""
    factory = _resolve_loss(spec)
    params, var_kw = _loss_parameters(factory, spec)
    if inspect.isclass(factory):
        from torch import nn

        if not issubclass(factory, nn.Module):
            raise _loss_error(f"expected {spec!r} to be a torch.nn.Module subclass (the Trainer moves, "
                              f"checkpoints and optimizes the model as a module), found a class "
                              f"based on {', '.join(b.__name__ for b in factory.__mro__[1:]) or 'nothing'}")
        if not callable(getattr(factory, "loss", None)):
            raise _loss_error(f"expected {spec!r} to have a loss(batch) method, which the Trainer "
                              "calls every step (docs/training.md, 'The model protocol'); found none")
    _check_model_options(getattr(factory, "__name__", spec), params, var_kw, options,
                         {"autoencoder": None}, "kind, loss",
                         lambda message, key: ConfigError(message, section="model", key=key))


def _check_training_model(model: Any, spec: str, error: Callable[[str], ConfigError]) -> None:
    """Refuse a built loss model that :class:`~latentkit.training.Trainer` cannot train: not
    an ``nn.Module``, no ``loss(batch)`` callable the way the Trainer calls it, or half of
    the several-optimizers protocol (``optimizer_names`` without ``parameters_for``)."""
    from torch import nn

    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise error(f"expected {spec!r} to build a torch.nn.Module (the Trainer moves, checkpoints "
                    f"and optimizes the model as a module), found a value of type {name}")
    declared = [a for a in _MULTI_OPTIMIZER if hasattr(model, a)]
    if len(declared) == 1:
        missing = next(a for a in _MULTI_OPTIMIZER if a not in declared)
        raise error(f"{name} has {declared[0]} but no {missing}; the Trainer needs both for several "
                    "optimizers (or neither for one)")
    loss_fn = getattr(model, "loss", None)
    if not callable(loss_fn):
        raise error(f"expected {name} to have a loss(batch) method, which the Trainer calls every "
                    "step (docs/training.md, 'The model protocol'); found none")
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError) as exc:
        raise error(f"cannot read the signature of {name}.loss ({exc}); the Trainer inspects it "
                    "to pass global_step, generator and return_terms") from exc
    # The keywords the Trainer passes on the first call (trainer.Trainer._loss_kwargs).
    kwargs: dict[str, Any] = {k: None for k in ("global_step", "generator", "return_terms")
                              if k in sig.parameters}
    if len(declared) == 2:
        kwargs["optimizer_idx"] = 0
    try:
        sig.bind(None, **kwargs)
    except TypeError as exc:
        shown = "".join(f", {k}=..." for k in kwargs)
        shown_sig = sig.replace(return_annotation=inspect.Signature.empty)
        raise error(f"expected {name}.loss to accept the Trainer's call loss(batch{shown}); its "
                    f"signature {shown_sig} does not: {exc}") from exc


# ----------------------------------------------------------------------- building


def _create_checked(config: ExperimentConfig, section: str, kind: str, comp: ComponentConfig,
                    manager: Any = None, **defaults: Any) -> Any:
    from latentkit.plugins import get_plugin_manager

    pm = manager or get_plugin_manager()
    try:
        info = pm.get(kind, comp.name)
    except UnknownComponentError as exc:
        raise config.error(f"[{section}] name: {exc}", section, "name") from None
    params, var_kw = _factory_parameters(info.resolve())
    options = dict(comp.options)
    for key, value in defaults.items():
        if key not in options and (key in params or var_kw):
            options[key] = value
    try:
        module = pm.create(kind, comp.name, **options)
    except (TypeError, ValueError) as exc:
        bad = next((k for k in comp.options if repr(k) in str(exc) or k in str(exc)), None)
        raise config.error(f"[{section}] cannot create {kind} {comp.name!r}: {exc}", section, bad) from exc
    if comp.weights_from is not None:
        _load_component_weights(config, module, comp.weights_from, section)
    return module


def _load_component_weights(config: ExperimentConfig, module: Any, weights: str, section: str) -> None:
    """Load ``weights`` (the ``weights_from`` key) into a freshly created component.

    It is a ``.safetensors`` file, a directory written by
    ``latentkit.autoencoders.io.save_pretrained``, a training checkpoint (``step_N``), a
    ``checkpoints/`` folder or a run directory (its newest intact checkpoint, EMA weights
    preferred). Keys of a whole training model (``autoencoder.*``, ``denoiser.*``, ...) are
    matched by their prefix. Relative paths are taken from the config file's directory.
    """
    import safetensors.torch

    from latentkit.errors import CheckpointError
    from latentkit.training.checkpoint import MANIFEST, load_weights

    path = Path(weights)
    if not path.is_absolute() and config.path and Path(config.path).parent.joinpath(path).exists():
        path = Path(config.path).parent / path
    try:
        if path.is_file():
            state = safetensors.torch.load_file(str(path))
        elif (path / MANIFEST).exists() or any(path.glob("step_*")):
            state = load_weights(path)
        elif (path / "checkpoints").is_dir():
            state = load_weights(path / "checkpoints")
        elif (path / "model.safetensors").is_file():
            state = safetensors.torch.load_file(str(path / "model.safetensors"))
        else:
            raise FileNotFoundError(f"no weights found at {str(path)!r}")
    except (OSError, CheckpointError, ValueError) as exc:
        raise config.error(f"[{section}] weights_from: {exc}", section, "weights_from") from exc
    wanted = set(module.state_dict())
    for prefix in ("", f"{section}.", "autoencoder.", "denoiser.", "conditioner.", "model."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if wanted <= set(sub):
            module.load_state_dict({k: sub[k] for k in wanted})
            return
    missing = sorted(wanted - set(state))[:5]
    raise config.error(f"[{section}] weights_from: {str(path)!r} does not hold this {section}'s "
                       f"parameters (e.g. {missing} are missing)", section, "weights_from")


def build_model(config: ExperimentConfig, *, manager: Any = None) -> Any:
    """The model a config describes, created through :func:`latentkit.create`.

    ``kind = "diffusion"``: a :class:`latentkit.LatentDiffusion` (the diffusion core is
    imported only here) whose denoiser gets ``in_channels``, ``out_channels``,
    ``crossattn_dim``, ``vector_dim`` and ``layout`` from the autoencoder's latent spec and
    the conditioner's output when the config leaves them out. ``kind = "autoencoder"``: the
    autoencoder wrapped in its training loss with discriminator
    (:class:`latentkit.autoencoders.losses.AutoencoderTrainingLoss`), the ``[model]`` keys
    going to the loss; with ``loss = "module:Name"``, ``Name(autoencoder=<the autoencoder>,
    **[model] keys)`` instead, refused with a :class:`ConfigError` unless it is an
    ``nn.Module`` the :class:`~latentkit.training.Trainer` can call ``loss(batch)`` on.
    """
    if config.model.loss is not None and config.model.kind != "autoencoder":
        raise config.error(_loss_kind_message(config.model.kind), "model", "loss")
    if config.model.kind == "stable_diffusion":
        # Fine-tuning a Stable Diffusion single-file checkpoint: the [model] keys (``path``,
        # ``prefer_ema``, ``prediction_type``, ...) go to ``load_stable_diffusion``.
        from latentkit.interop.stable_diffusion import load_stable_diffusion

        if "path" not in config.model.options:
            raise config.error("[model] kind = 'stable_diffusion' needs path = \"FILE\" (a .safetensors "
                               "or .ckpt checkpoint)", "model", "kind")
        return _construct(config, load_stable_diffusion, {})
    assert config.autoencoder is not None
    autoencoder = _create_checked(config, "autoencoder", "autoencoder", config.autoencoder, manager)
    if config.model.kind == "autoencoder" and config.model.loss is not None:
        return _construct_loss(config, config.model.loss, autoencoder)
    if config.model.kind == "autoencoder":
        from latentkit.autoencoders.losses import AutoencoderTrainingLoss

        return _construct(config, AutoencoderTrainingLoss, {"autoencoder": autoencoder})

    from latentkit.diffusion import LatentDiffusion

    conditioner = None
    if config.conditioner is not None:
        conditioner = _create_checked(config, "conditioner", "conditioner", config.conditioner, manager)
    latent = autoencoder.latent_spec
    spec = conditioner.output_spec if conditioner is not None else None
    assert config.denoiser is not None and config.schedule is not None
    denoiser = _create_checked(
        config, "denoiser", "denoiser", config.denoiser, manager,
        in_channels=latent.channels + (spec.concat_channels if spec else 0),
        out_channels=latent.channels,
        crossattn_dim=spec.crossattn_dim if spec else None,
        vector_dim=spec.vector_dim if spec else None,
        layout=latent.layout,
    )
    schedule = _create_checked(config, "schedule", "schedule", config.schedule, manager)
    parts = {"autoencoder": autoencoder, "denoiser": denoiser, "conditioner": conditioner, "schedule": schedule}
    return _construct(config, LatentDiffusion, parts)


def _construct(config: ExperimentConfig, cls: Callable[..., Any], parts: dict[str, Any]) -> Any:
    params, var_kw = _factory_parameters(cls)
    _check_model_options(str(getattr(cls, "__name__", cls)), params, var_kw, config.model.options,
                         parts, "kind", lambda message, key: config.error(message, "model", key))
    kwargs = {k: v for k, v in parts.items() if k in params or var_kw}
    return cls(**kwargs, **config.model.options)


def _construct_loss(config: ExperimentConfig, spec: str, autoencoder: Any) -> Any:
    """``Name(autoencoder=autoencoder, **[model] keys)`` for ``loss = "module:Name"``,
    checked as at load time and then against what the Trainer needs."""

    def error(message: str, key: str = "loss") -> ConfigError:
        return config.error(message if message.startswith("[model]") else f"[model] loss: {message}",
                            "model", key)

    try:
        factory = _resolve_loss(spec)
        params, var_kw = _loss_parameters(factory, spec)
    except ConfigError as exc:
        raise error(exc.message) from exc.__cause__
    name = str(getattr(factory, "__name__", spec))
    _check_model_options(name, params, var_kw, config.model.options, {"autoencoder": autoencoder},
                         "kind, loss", error)
    try:
        model = factory(autoencoder=autoencoder, **config.model.options)
    except (TypeError, ValueError) as exc:
        bad = next((k for k in config.model.options if repr(k) in str(exc) or k in str(exc)), "loss")
        raise error(f"[model] cannot create {name} (loss = {spec!r}): {exc}", bad) from exc
    _check_training_model(model, spec, error)
    return model


def build_dataset(config: ExperimentConfig, model: Any = None, *, manager: Any = None) -> Any:
    """The dataset of ``[data]``; with ``cache_latents`` the latents of that dataset encoded
    once through ``model.autoencoder`` (cached under ``cache_dir``, reused when it matches)."""
    dataset = _create_checked(config, "data", "dataset", ComponentConfig(config.data.name, config.data.options),
                              manager)
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

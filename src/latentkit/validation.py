"""Option values checked against type hints: the rules that TOML configs and configs built
in Python share.

TOML gives ``int``, ``float``, ``str``, ``bool``, arrays and tables; component factories and
config classes declare what they take with type hints. :func:`matches` decides whether a
value fits a hint (``None`` for hints it does not understand, which pass unchecked),
:func:`convert` turns the TOML value into the declared type (an integer where a float is
declared, an array where a tuple is), and :func:`type_name` names a hint the way an error
message should ("array of 2 (number, number)"). :func:`factory_parameters` reads what a
registered factory accepts, following ``**config`` to the class it returns.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from latentkit.errors import ConfigError

__all__ = [
    "check_fields",
    "check_finite",
    "check_positive",
    "convert",
    "factory_parameters",
    "matches",
    "suggest",
    "type_name",
    "validate_attrs",
]



def type_name(hint: Any) -> str:
    """How an error message names ``hint``: "integer", "array of number", "'a' | 'b'"."""
    origin = typing.get_origin(hint)
    if hint is type(None) or hint is None:
        return "none"
    if hint is Any:
        return "any value"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if origin in (list, tuple, dict, abc.Sequence, abc.Iterable):
        args = typing.get_args(hint)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"array of {type_name(args[0])}"
        if origin is tuple:
            return f"array of {len(args)} ({', '.join(type_name(a) for a in args)})"
        if origin is not dict:
            return f"array of {type_name(args[0])}" if args else "array"
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool | None:
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
        results = [matches(value, a) for a in args]
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
    if origin in (list, tuple, abc.Sequence, abc.Iterable) or hint in (list, tuple, abc.Sequence, abc.Iterable):
        if not isinstance(value, (list, tuple)):  # a string is no array: "12" is not (1, 2)
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return False
            results = [matches(v, a) for v, a in zip(value, args)]
        else:
            results = [matches(v, args[0]) for v in value]
        return False if any(r is False for r in results) else True
    if origin is dict or hint is dict or origin is Mapping:
        return isinstance(value, dict)
    return None


def convert(value: Any, hint: Any) -> Any:
    """TOML value -> the field's Python type (int -> float, array -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(hint):
            if matches(value, a):
                return convert(value, a)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        elem = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        return tuple(convert(v, a) for v, a in zip(value, elem))
    if origin is list and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        return [convert(v, args[0]) if args else v for v in value]
    return value


def suggest(key: str, allowed: list[str]) -> str:
    """``" Did you mean 'x'?"`` for the entry of ``allowed`` closest to ``key``, else ``""``."""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_fields(cls: type, values: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Check ``values`` against the attrs fields of ``cls``; raise ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    out = {}
    for key, value in values.items():
        if key not in fields:
            allowed = sorted(fields)
            raise ConfigError(
                f"[{section}] unknown key {key!r}; allowed keys: {', '.join(allowed)}.{suggest(key, allowed)}",
                section=section, key=key,
            )
        hint = hints[key]
        if matches(value, hint) is False:
            raise ConfigError(
                f"[{section}] {key} must be {type_name(hint)}, got {value!r} ({type(value).__name__})",
                section=section, key=key,
            )
        out[key] = convert(value, hint)
    return out


def validate_attrs(instance: Any, section: str) -> None:
    """Type-check an attrs instance built from Python (same rules as from TOML)."""
    hints = typing.get_type_hints(type(instance))
    for f in attrs.fields(type(instance)):
        value = getattr(instance, f.name)
        if matches(value, hints[f.name]) is False:
            raise ConfigError(
                f"[{section}] {f.name} must be {type_name(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})",
                section=section, key=f.name,
            )


def check_positive(section: str, **values: float | int | None) -> None:
    """Raise a :class:`ConfigError` naming the first of ``values`` that is not ``> 0``."""
    for key, v in values.items():
        if v is not None and not v > 0:
            raise ConfigError(f"[{section}] {key} must be > 0, got {v!r}", section=section, key=key)


def check_finite(section: str, **values: float | tuple[float, ...] | None) -> None:
    """Raise a :class:`ConfigError` naming the first of ``values`` that is NaN or infinite
    (tuples are checked element by element)."""
    for key, v in values.items():
        items = v if isinstance(v, tuple) else (v,)
        if any(x is not None and not math.isfinite(x) for x in items):
            raise ConfigError(f"[{section}] {key} must be a finite number, got {v!r}", section=section, key=key)


def factory_parameters(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
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
        class_params, class_var_kw = factory_parameters(returned)
        params = {**class_params, **params}
        var_kw = class_var_kw
    return params, var_kw

"""Plugin manager, entry-point loading and the component registry.

Plugins are found in three places, in this order:

1. the built-in plugin modules (:data:`BUILTIN_PLUGINS`), registered through the same hooks
   as everyone else's;
2. setuptools entry points in the group ``latentkit`` (unless
   ``LATENTKIT_DISABLE_PLUGIN_AUTOLOAD`` is set, as with pytest);
3. modules named in ``LATENTKIT_PLUGINS`` (comma-separated), loaded even when autoload is off.

A plugin that fails to import, or whose registration hook raises, is recorded as a
:class:`BrokenPlugin` and skipped, so it never takes the others down; strict mode
(``strict=True`` or ``LATENTKIT_STRICT_PLUGINS=1``) raises :class:`PluginError` instead.
Plugins are blocked by entry-point name, plugin name or distribution name through ``block=``
or ``LATENTKIT_BLOCK_PLUGINS`` (comma-separated).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any

import attrs
import pluggy

from latentkit import hookspecs
from latentkit.errors import (
    LatentkitError,
    MissingDependencyError,
    PluginError,
    UnknownComponentError,
)
from latentkit.interfaces import KINDS

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "ComponentInfo",
    "PluginManager",
    "Registrar",
    "create",
    "get_plugin_manager",
    "list_components",
    "register_plugin",
    "reset_plugin_manager",
    "stamp_identity",
]

ENTRY_POINT_GROUP = "latentkit"

#: Modules that register the built-in components, through the same hooks as third parties.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "latentkit.autoencoders",
    "latentkit.denoisers",
    "latentkit.conditioners",
    "latentkit.samplers",
    "latentkit.schedules",
    "latentkit.data",
    "latentkit.models",
    "latentkit.training.plugins",
)

_HOOK_OF_KIND = {kind: f"latentkit_register_{kind}s" for kind in KINDS}

_TRUE = {"1", "true", "yes", "on"}


def _importable(module: str) -> bool:
    """Whether ``import module`` would find it (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _env_list(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def _builtin_version() -> str:
    try:
        return metadata.version("latentkit")
    except metadata.PackageNotFoundError:  # running from a source tree
        from latentkit import __version__

        return __version__


@attrs.frozen
class ComponentInfo:
    """One registered component, as listed by :func:`list_components`."""

    kind: str
    name: str
    summary: str
    plugin: str  # plugin name (entry-point name, or module name for built-ins)
    distribution: str | None  # the pip distribution that provides it
    version: str | None
    factory: Callable[..., Any] | str = attrs.field(repr=False)  # callable or "module:attr"
    tiny_config: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    override: bool = False
    requires: tuple[str, ...] = ()  # modules the component imports beyond latentkit's own dependencies
    install: str | None = None  # how to get them, e.g. "pip install 'latentkit[data]'"

    def missing(self) -> list[str]:
        """The modules of ``requires`` that cannot be imported here."""
        return [name for name in self.requires if not _importable(name)]

    def check_requirements(self) -> None:
        """A :class:`~latentkit.errors.MissingDependencyError` naming the missing modules and
        how to install them, when there are any."""
        missing = self.missing()
        if missing:
            how = f": {self.install}" if self.install else ""
            raise MissingDependencyError(
                f"{self.kind} {self.name!r} needs {', '.join(map(repr, missing))}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed{how}")

    def resolve(self) -> Callable[..., Any]:
        """The factory callable (importing it now if it was given as ``"module:attr"``)."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise PluginError(
                f"{self.kind} {self.name!r} from plugin {self.plugin!r} "
                f"(distribution {self.distribution}): cannot import factory {self.factory!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return obj  # type: ignore[no-any-return]


@attrs.frozen
class BrokenPlugin:
    """A plugin that failed to load or register, with its distribution and the error."""

    plugin: str
    distribution: str | None
    version: str | None
    stage: str  # "import" or the hook / registration that failed
    error: str  # "ExcType: message"
    traceback: str = attrs.field(default="", repr=False)


class Registrar:
    """What a registration hook receives: ``add`` components of one kind."""

    def __init__(self, kind: str, plugin: str, distribution: str | None, version: str | None) -> None:
        self.kind = kind
        self.plugin = plugin
        self.distribution = distribution
        self.version = version
        self.entries: list[ComponentInfo] = []

    def add(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        summary: str = "",
        tiny_config: Mapping[str, Any] | None = None,
        override: bool = False,
        requires: Iterable[str] = (),
        install: str | None = None,
    ) -> None:
        """Register ``factory`` under ``name``.

        ``factory`` is a callable returning the component, or a ``"module:attr"`` string
        imported only when the component is created (keeps registration cheap).
        ``tiny_config`` is a small configuration used by the conformance kit and property
        tests. ``override=True`` replaces a component of the same name registered earlier
        (without it a duplicate name is an error). ``requires`` names modules the component
        imports that may be absent (an optional extra), ``install`` how to get them: creating
        it without them is a one-line error that says so, and ``latentkit plugins`` marks it.
        """
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise PluginError(
                f"plugin {self.plugin!r}: component names are non-empty strings of letters, "
                f"digits, '_', '-' or '.', got {name!r}"
            )
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise PluginError(
                f"plugin {self.plugin!r}: factory for {self.kind} {name!r} must be callable or "
                f"a 'module:attr' string, got {factory!r}"
            )
        self.entries.append(
            ComponentInfo(
                kind=self.kind,
                name=name,
                summary=summary,
                plugin=self.plugin,
                distribution=self.distribution,
                version=self.version,
                factory=factory,
                tiny_config=dict(tiny_config or {}),
                override=override,
                requires=tuple(requires),
                install=install,
            )
        )


def _suggest(name: str, options: Iterable[str]) -> str:
    options = sorted(options)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"available: {', '.join(options) if options else '(none)'}.{hint}"


class PluginManager:
    """Loads plugins and holds the component registry.

    ``strict``: raise on a broken plugin instead of reporting it (default from
    ``LATENTKIT_STRICT_PLUGINS``). ``autoload``: load entry points (default: unless
    ``LATENTKIT_DISABLE_PLUGIN_AUTOLOAD`` is set). ``block``: entry-point, plugin or
    distribution names to skip (added to ``LATENTKIT_BLOCK_PLUGINS``).
    """

    def __init__(
        self,
        *,
        strict: bool | None = None,
        autoload: bool | None = None,
        block: Iterable[str] = (),
    ) -> None:
        self.strict = _env_flag("LATENTKIT_STRICT_PLUGINS") if strict is None else strict
        self.autoload = (
            not os.environ.get("LATENTKIT_DISABLE_PLUGIN_AUTOLOAD") if autoload is None else autoload
        )
        self.block = set(block) | set(_env_list("LATENTKIT_BLOCK_PLUGINS"))
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._components: dict[str, dict[str, ComponentInfo]] = {k: {} for k in KINDS}
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        self._broken: list[BrokenPlugin] = []
        self._loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading

    @property
    def hook(self) -> Any:
        """The pluggy hook relay (``manager.hook.latentkit_train_start(trainer=...)``)."""
        self.load()
        return self.pm.hook

    def _fail(self, plugin: str, stage: str, exc: BaseException) -> None:
        dist, version = self._dists.get(plugin, (None, None))
        broken = BrokenPlugin(
            plugin=plugin,
            distribution=dist,
            version=version,
            stage=stage,
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        if self.strict:
            raise PluginError(
                f"plugin {plugin!r} (distribution {dist}) failed at {stage}: {broken.error}"
            ) from exc
        self._broken.append(broken)

    @property
    def broken(self) -> list[BrokenPlugin]:
        """Plugins that failed to import or register (loads plugins first)."""
        self.load()
        return list(self._broken)

    def _is_blocked(self, *names: str | None) -> bool:
        return any(n in self.block for n in names if n)

    def _register(self, obj: Any, name: str, dist: str | None, version: str | None) -> bool:
        self._dists[name] = (dist, version)
        try:
            self.pm.register(obj, name=name)
            self._check_hook_names(obj, name)
        except Exception as exc:  # a hookimpl whose arguments or name match no hookspec
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            self._fail(name, "register", exc)
            return False
        return True

    def _check_hook_names(self, obj: Any, name: str) -> None:
        """A ``@hookimpl`` whose name is no latentkit hook (``latentkit_register_sampler``)
        would never be called: refuse it, naming the closest hook (pluggy's
        ``check_pending``, for one plugin)."""
        known = sorted(n for n in dir(self.pm.hook) if n.startswith(f"{hookspecs.PROJECT}_")
                       and getattr(self.pm.hook, n).has_spec())
        for caller in self.pm.get_hookcallers(obj) or []:
            if not caller.has_spec():
                close = difflib.get_close_matches(caller.name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; latentkit's hooks: {', '.join(known)}"
                raise PluginError(f"plugin {name!r} implements {caller.name!r}, which is no latentkit "
                                  f"hook, so it would never be called{hint}")

    def _candidates(self) -> list[tuple[str, Callable[[], Any], str | None, str | None]]:
        found: list[tuple[str, Callable[[], Any], str | None, str | None]] = []
        version = _builtin_version()
        for module in BUILTIN_PLUGINS:
            found.append((module, functools.partial(importlib.import_module, module), "latentkit", version))
        if self.autoload:
            # Sorted, so that which of two clashing plugins loses does not depend on sys.path
            # listing order.
            eps = sorted(
                metadata.entry_points(group=ENTRY_POINT_GROUP),
                key=lambda ep: (getattr(getattr(ep, "dist", None), "name", "") or "", ep.name),
            )
            for ep in eps:
                dist = getattr(ep, "dist", None)
                found.append((ep.name, ep.load, dist.name if dist else None, dist.version if dist else None))
        for module in _env_list("LATENTKIT_PLUGINS"):
            found.append((module, functools.partial(importlib.import_module, module), None, None))
        return found

    def load(self) -> None:
        """Load every plugin and run the registration hooks (once; later calls do nothing)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            seen: set[str] = set()
            for name, loader, dist, version in self._candidates():
                if name in seen or self._is_blocked(name, dist):
                    continue
                seen.add(name)
                self._dists[name] = (dist, version)
                try:
                    obj = loader()
                except (Exception, SystemExit) as exc:  # a module that calls sys.exit() is broken too
                    self._fail(name, "import", exc)
                    continue
                self._register(obj, name, dist, version)
            for kind in KINDS:
                for impl in self._impls(kind):
                    self._run_registration(kind, impl.plugin_name, impl.function)

    def _impls(self, kind: str) -> list[Any]:
        caller = getattr(self.pm.hook, _HOOK_OF_KIND[kind])
        return list(caller.get_hookimpls())  # registration order

    def _run_registration(self, kind: str, plugin: str, function: Callable[..., Any]) -> None:
        dist, version = self._dists.get(plugin, (None, None))
        registrar = Registrar(kind, plugin, dist, version)
        try:
            function(registry=registrar)
        except (Exception, SystemExit) as exc:
            self._fail(plugin, _HOOK_OF_KIND[kind], exc)
            return
        table = self._components[kind]
        for info in registrar.entries:
            previous = table.get(info.name)
            if previous is not None and not info.override:
                err = PluginError(
                    f"{kind} {info.name!r} from plugin {plugin!r} (distribution {dist}) is already "
                    f"registered by plugin {previous.plugin!r} (distribution "
                    f"{previous.distribution}); pass override=True to registry.add to replace it"
                )
                self._fail(plugin, f"{_HOOK_OF_KIND[kind]} ({info.name})", err)
                continue
            table[info.name] = info

    def register(self, plugin: Any, name: str | None = None, *, distribution: str | None = None) -> str:
        """Register an in-process plugin object or module (e.g. from a notebook or a test).

        Its registration hooks run now if plugins are already loaded, else with the rest.
        Returns the plugin name.
        """
        with self._lock:
            name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin)}"
            if not self._register(plugin, name, distribution, None):
                return name
            if self._loaded:
                for kind in KINDS:
                    for impl in self._impls(kind):
                        if impl.plugin_name == name:
                            self._run_registration(kind, name, impl.function)
            return name

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Fire ``hook`` with ``kwargs``. An implementation that fails unexpectedly (any
        exception but a :class:`~latentkit.errors.LatentkitError`, which already says what is
        wrong) has the hook, the plugin and its distribution added to its notes
        (``exc.__notes__``, which the command line prints on its one line) and is raised as it
        is; ``sys.exit()`` in a hook becomes a :class:`PluginError`."""
        caller = getattr(self.hook, hook)
        try:
            return caller(**kwargs)
        except (Exception, SystemExit) as exc:
            if isinstance(exc, LatentkitError):
                raise
            plugin = self._culprit(caller, exc)
            dist, version = self._dists.get(plugin or "", (None, None))
            where = (f"plugin {plugin!r} (distribution {dist or 'unknown'}{' ' + version if version else ''})"
                     if plugin else "a plugin")
            note = f"raised by {hook} of {where}"
            if isinstance(exc, SystemExit):
                raise PluginError(f"{hook} of {where} called sys.exit({exc.code!r})") from exc
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]  # add_note, 3.10 too
            raise

    @staticmethod
    def _culprit(caller: Any, exc: BaseException) -> str | None:
        """The plugin whose implementation of ``caller``'s hook is on ``exc``'s traceback."""
        codes = {impl.function.__code__: impl.plugin_name for impl in caller.get_hookimpls()
                 if hasattr(impl.function, "__code__")}
        tb = exc.__traceback__
        found = None
        while tb is not None:
            found = codes.get(tb.tb_frame.f_code, found)
            tb = tb.tb_next
        return found

    @contextlib.contextmanager
    def registered(self, *plugins: Any) -> Iterator[None]:
        """Register lifecycle-hook implementations (objects or modules with ``@hookimpl``
        methods) for the duration of a block, e.g. the hooks of one training run. They must
        implement latentkit hooks; registration hooks in them are not run."""
        self.load()
        added = []
        try:
            for plugin in plugins:
                if self.pm.is_registered(plugin):
                    continue
                name = f"{getattr(plugin, '__name__', type(plugin).__name__)}-{id(plugin)}"
                self.pm.register(plugin, name=name)
                added.append(plugin)
                self._check_hook_names(plugin, name)
            yield
        finally:
            for plugin in reversed(added):
                self.pm.unregister(plugin)

    # ------------------------------------------------------------------ queries

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind {kind!r}; {_suggest(kind, KINDS)}")

    def list(self, kind: str | None = None, *, sort: bool = True) -> list[ComponentInfo]:
        """Registered components by kind (``kind=None``: all kinds), sorted by name, or in
        the order they were registered (built-ins first) with ``sort=False``."""
        self.load()
        if kind is not None:
            self._check_kind(kind)
        kinds = KINDS if kind is None else (kind,)
        return [info for k in kinds
                for _, info in (sorted(self._components[k].items()) if sort else self._components[k].items())]

    def get(self, kind: str, name: str) -> ComponentInfo:
        """The :class:`ComponentInfo` of ``kind``/``name``; an error lists what is available."""
        self.load()
        self._check_kind(kind)
        table = self._components[kind]
        if name not in table:
            raise UnknownComponentError(f"unknown {kind} {name!r}; {_suggest(name, table)}")
        return table[name]

    def create(self, kind: str, name: str, **config: Any) -> Any:
        """Create the component ``kind``/``name`` with ``config`` as keyword arguments.

        An unknown configuration key raises ``TypeError`` naming it and the accepted keys.
        The result carries ``latentkit_name`` (kind, name) and ``latentkit_config``.
        """
        info = self.get(kind, name)
        info.check_requirements()
        factory = info.resolve()
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):
            signature = None
        if signature is not None and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        ):
            accepted = [
                p.name
                for p in signature.parameters.values()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            ]
            unknown = [k for k in config if k not in accepted]
            if unknown:
                raise TypeError(
                    f"{kind} {name!r} got unknown config key(s) {unknown}; accepted: {accepted}"
                )
        return stamp_identity(factory(**config), kind, name, config)


def stamp_identity(obj: Any, kind: str, name: str, config: Mapping[str, Any], *,
                   keep_existing: bool = False) -> Any:
    """Record on ``obj`` how it was created: ``latentkit_name = (kind, name)`` and
    ``latentkit_config`` (what checkpoints and the conformance kit use to re-create it).
    With ``keep_existing`` an object that already has an identity keeps it; objects that
    take no attributes are left alone. Returns ``obj``."""
    if keep_existing and getattr(obj, "latentkit_name", None) is not None:
        return obj
    with contextlib.suppress(AttributeError, TypeError):  # __slots__, frozen attrs classes
        obj.latentkit_name = (kind, name)
        obj.latentkit_config = dict(config)
    return obj


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (created on first use, plugins loaded lazily)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> PluginManager:
    """Replace the process-wide manager (a fresh one by default); returns the new one.

    Useful after installing a distribution at run time, and in tests.
    """
    global _manager
    with _manager_lock:
        _manager = manager if manager is not None else PluginManager()
        return _manager


def create(kind: str, name: str, **config: Any) -> Any:
    """Create a registered component by kind and name: ``create("sampler", "euler")``."""
    return get_plugin_manager().create(kind, name, **config)


def list_components(kind: str | None = None) -> list[ComponentInfo]:
    """Registered components (each with kind, name, summary, plugin, distribution, version)."""
    return get_plugin_manager().list(kind)


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register an in-process plugin with the process-wide manager (see
    :meth:`PluginManager.register`)."""
    return get_plugin_manager().register(plugin, name)

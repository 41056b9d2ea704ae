"""Exceptions raised by latentkit, and its one-time warnings.

Every error says what was expected, what was found and, where it helps, what to do.
"""

from __future__ import annotations

import warnings

__all__ = [
    "CheckpointError",
    "CompositionError",
    "ConfigError",
    "LatentkitError",
    "MissingDependencyError",
    "PluginError",
    "ShapeError",
    "SpecError",
    "UnknownComponentError",
    "warn_once",
]


class LatentkitError(Exception):
    """Base class of every error latentkit raises on purpose."""


class SpecError(LatentkitError, ValueError):
    """An invalid :class:`~latentkit.specs.LatentSpec`, :class:`~latentkit.specs.DataSpec` or
    :class:`~latentkit.specs.ConditioningSpec` field (the message names the field)."""


class ShapeError(LatentkitError, ValueError):
    """A tensor handed to a component has the wrong shape, dtype or layout."""


class CompositionError(LatentkitError, ValueError):
    """Components that do not fit together, found before any forward pass.

    The message names both components and both numbers (e.g. latent channels against the
    denoiser's input channels).
    """


class PluginError(LatentkitError):
    """A plugin failed to import, its registration hook raised, or it registered a duplicate."""


class MissingDependencyError(LatentkitError, ImportError):
    """A component needs a package that is not installed (an optional extra); the message
    names the module and the command that installs it."""


class UnknownComponentError(LatentkitError, LookupError):
    """``create`` or a query named a kind or component that is not registered."""


class CheckpointError(LatentkitError, ValueError, RuntimeError):
    """A checkpoint (a training checkpoint directory or a single-file checkpoint) is missing,
    truncated, corrupt or unsafe to read; the message names the file and why.

    One class for every checkpoint format. It is a ``ValueError`` (bad input, as the
    single-file readers always raised) and a ``RuntimeError`` (as the training checkpoints
    raised), so handlers written for either keep working.
    """


class ConfigError(LatentkitError, ValueError):
    """An invalid config: the message names the file, the line, the key and what is allowed.

    ``path``, ``line``, ``section`` and ``key`` are also attributes (``None`` when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.section = section
        self.key = key
        where = f"{path or '<config>'}:{line}" if line is not None else (path or "")
        super().__init__(f"{where}: {message}" if where else message)


def warn_once(message: str, _seen: set[str] = set()) -> None:  # noqa: B006 - intentional cache
    """``warnings.warn`` a message only the first time in this process (for conditions a
    loop would otherwise report every step)."""
    if message not in _seen:
        _seen.add(message)
        warnings.warn(message, stacklevel=2)

"""Exceptions raised by latentkit.

Every error says what was expected, what was found and, where it helps, what to do.
"""

from __future__ import annotations

__all__ = [
    "CompositionError",
    "LatentkitError",
    "PluginError",
    "ShapeError",
    "SpecError",
    "UnknownComponentError",
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


class UnknownComponentError(LatentkitError, LookupError):
    """``create`` or a query named a kind or component that is not registered."""

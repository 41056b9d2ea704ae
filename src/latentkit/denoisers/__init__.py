"""Built-in denoisers, registered through ``latentkit_register_denoisers``."""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_denoisers(registry: Registrar) -> None:
    """Register the built-in denoisers."""

"""Built-in samplers, registered through ``latentkit_register_samplers``."""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_samplers(registry: Registrar) -> None:
    """Register the built-in samplers."""

"""Built-in conditioners, registered through ``latentkit_register_conditioners``."""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_conditioners(registry: Registrar) -> None:
    """Register the built-in conditioners."""

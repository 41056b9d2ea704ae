"""Built-in schedules, registered through ``latentkit_register_schedules``."""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_schedules(registry: Registrar) -> None:
    """Register the built-in schedules."""

"""Built-in first-stage autoencoders, registered through ``latentkit_register_autoencoders``."""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_autoencoders(registry: Registrar) -> None:
    """Register the built-in autoencoders."""
    registry.add(
        "identity",
        "latentkit.autoencoders.identity:IdentityAutoencoder",
        summary="Pixel space as the latent: makes LatentDiffusion a pixel-space model",
        tiny_config={"channels": 3},
    )

"""Built-in trainable models, registered through ``latentkit_register_models``: what a
config's ``[model] kind`` names and the :class:`~latentkit.training.Trainer` trains.

* ``diffusion`` (the default): :class:`~latentkit.LatentDiffusion` of the ``[autoencoder]``,
  ``[denoiser]``, ``[schedule]`` and optional ``[conditioner]`` parts (Rombach et al. 2022);
* ``autoencoder``: the ``[autoencoder]`` inside its training loss, reconstruction + KL or VQ
  terms + a patch discriminator (Esser et al. 2021;
  :class:`~latentkit.autoencoders.losses.AutoencoderTrainingLoss`);
* ``stable_diffusion``: a Stable Diffusion 1.x / 2.x single-file checkpoint (``[model] path``)
  to fine-tune (:func:`~latentkit.interop.stable_diffusion.load_stable_diffusion`).

A plugin registers its own (e.g. a training loss for its autoencoder) the same way; which part
tables a model takes follows from its factory's parameters (see the hook's documentation).
"""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar


@hookimpl
def latentkit_register_models(registry: Registrar) -> None:
    """Register the built-in models."""
    registry.add(
        "diffusion",
        "latentkit.diffusion.model:latent_diffusion",
        summary="LatentDiffusion of the autoencoder, denoiser, schedule and conditioner parts",
    )
    registry.add(
        "autoencoder",
        "latentkit.autoencoders.losses:AutoencoderTrainingLoss",
        summary="the autoencoder in its training loss: reconstruction, KL/VQ, patch discriminator",
    )
    registry.add(
        "stable_diffusion",
        "latentkit.interop.stable_diffusion:load_stable_diffusion",
        summary="a Stable Diffusion 1.x/2.x single-file checkpoint ([model] path) to fine-tune",
    )

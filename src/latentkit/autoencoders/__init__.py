"""Built-in first-stage autoencoders, registered through ``latentkit_register_autoencoders``.

* ``identity``: pixel space as the latent.
* ``kl``: KL-regularised autoencoder; ``config="f4" | "f8" | "f16" | "f32"`` picks the paper's
  preset (:data:`latentkit.autoencoders.kl.KL_CONFIGS`).
* ``vq``: VQ-regularised autoencoder; ``config="f4" | "f8" | "f16"``
  (:data:`latentkit.autoencoders.vq.VQ_CONFIGS`).

``kl`` and ``vq`` accept ``layout=`` any of ``CL``, ``CHW``, ``CTHW``, ``CDHW``. Checkpoints:
:func:`latentkit.autoencoders.io.save_pretrained` / ``load_pretrained``.
"""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar

#: Small architectures for the conformance kit and property tests (build in milliseconds).
KL_TINY_CONFIG = {
    "config": "f4",
    "base_channels": 8,
    "channel_multipliers": (1, 2),
    "num_res_blocks": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
}
VQ_TINY_CONFIG = {**KL_TINY_CONFIG, "codebook_size": 32}


@hookimpl
def latentkit_register_autoencoders(registry: Registrar) -> None:
    """Register the built-in autoencoders."""
    registry.add(
        "identity",
        "latentkit.autoencoders.identity:IdentityAutoencoder",
        summary="Pixel space as the latent: makes LatentDiffusion a pixel-space model",
        tiny_config={"channels": 3},
    )
    registry.add(
        "kl",
        "latentkit.autoencoders.kl:KLAutoencoder",
        summary="KL-regularised autoencoder (LDM kl-f4/f8/f16/f32), any layout",
        tiny_config=KL_TINY_CONFIG,
    )
    registry.add(
        "vq",
        "latentkit.autoencoders.vq:VQAutoencoder",
        summary="VQ-regularised autoencoder (LDM vq-f4/f8/f16), quantiser in the decoder, any layout",
        tiny_config=VQ_TINY_CONFIG,
    )

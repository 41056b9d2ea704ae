"""Identity first stage: pixel space as the "latent".

With it, :class:`~latentkit.LatentDiffusion` is a pixel-space diffusion model, so latent-
versus pixel-space comparisons run through one code path (Rombach et al. 2022, Sec. 4.1
compare f=1 against larger downsampling factors).
"""

from __future__ import annotations

import torch

from latentkit.interfaces import Autoencoder, DiracDistribution
from latentkit.specs import LAYOUTS, DataSpec, LatentSpec

__all__ = ["IdentityAutoencoder"]


class IdentityAutoencoder(Autoencoder):
    """``encode(x) = x``, ``decode(z) = z``; any layout, any channel count."""

    supported_layouts = tuple(LAYOUTS)

    def __init__(
        self,
        channels: int = 3,  # data (= latent) channels
        layout: str = "CHW",  # any of LAYOUTS
        scaling_factor: float = 1.0,  # latent normalisation, z_norm = (x - shift) * scale
        shift_factor: float = 0.0,
    ) -> None:
        super().__init__(
            DataSpec(channels=channels, layout=layout),
            LatentSpec(
                channels=channels,
                layout=layout,
                scaling_factor=scaling_factor,
                shift_factor=shift_factor,
            ),
        )

    @property
    def is_pixel_space(self) -> bool:
        """True: the latents are the data."""
        return True

    def encode(self, x: torch.Tensor) -> DiracDistribution:
        """Data -> a point mass at the data."""
        return DiracDistribution(self.check_data(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> the same tensor."""
        return self.check_latent(z)

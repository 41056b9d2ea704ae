"""KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1 "KL-reg.").

The encoder predicts the mean and log-variance of a diagonal Gaussian posterior q(z|x); a
slight KL penalty towards N(0, I) (weight ~1e-6, as in the paper) keeps the latent space from
drifting to arbitrary scales. Presets follow the paper's ``kl-f{4,8,16,32}`` first stages
(128 base channels, 2 ResNet blocks per level). Every layout is supported through
:class:`~latentkit.autoencoders.base.ConvAutoencoder`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch

from latentkit.autoencoders.base import AutoencoderOutput, ConvAutoencoder, resolve_downsampling
from latentkit.autoencoders.nets import Decoder, Encoder, conv_nd
from latentkit.interfaces import DiagonalGaussianDistribution
from latentkit.random import Generators

__all__ = ["KL_CONFIGS", "KLAutoencoder"]

#: Named presets (LDM's kl-f4 ... kl-f32 first stages): downsampling factor f = 2 ** (levels - 1).
KL_CONFIGS: dict[str, dict[str, Any]] = {
    "f4": {"latent_channels": 3, "channel_multipliers": (1, 2, 4)},
    "f8": {"latent_channels": 4, "channel_multipliers": (1, 2, 4, 4)},
    "f16": {"latent_channels": 16, "channel_multipliers": (1, 1, 2, 2, 4)},
    "f32": {"latent_channels": 64, "channel_multipliers": (1, 1, 2, 2, 4, 4)},
}

_DEFAULTS: dict[str, Any] = {
    "base_channels": 128,
    "num_res_blocks": 2,
    "norm_num_groups": 32,
}


class KLAutoencoder(ConvAutoencoder):
    """KL-regularised first stage with a diagonal-Gaussian posterior, any layout.

    ``config`` names a preset of :data:`KL_CONFIGS` (``"f4"``, ``"f8"``, ``"f16"``,
    ``"f32"``); explicit arguments override it.
    """

    registry_name = "kl"

    def __init__(
        self,
        config: str | None = "f8",  # preset name in KL_CONFIGS, or None
        *,
        channels: int = 3,  # data channels
        layout: str = "CHW",  # CL, CHW, CTHW or CDHW
        latent_channels: int | None = None,  # from the preset unless given
        base_channels: int | None = None,  # width of the first level (128)
        channel_multipliers: Sequence[int] | None = None,  # one per level; f = 2**(levels-1)
        num_res_blocks: int | None = None,  # ResNet blocks per encoder level (decoder: +1)
        norm_num_groups: int | None = None,  # GroupNorm groups (32)
        downsampling: int | Sequence[int] | None = None,  # per-axis factors (default: f; CTHW time 1)
        attention: bool = True,  # self-attention at the lowest resolution
        dropout: float = 0.0,
        scaling_factor: float = 1.0,  # latent normalisation (fit with fit_latent_statistics)
        shift_factor: float = 0.0,
    ) -> None:
        if layout not in self.supported_layouts:
            raise ValueError(f"KLAutoencoder: layout must be one of {self.supported_layouts}, got {layout!r}")
        if config is not None and config not in KL_CONFIGS:
            raise ValueError(f"KLAutoencoder: unknown config {config!r}; presets: {sorted(KL_CONFIGS)}")
        preset = {**_DEFAULTS, **(KL_CONFIGS[config] if config is not None else KL_CONFIGS["f8"])}
        given: dict[str, Any] = {
            "latent_channels": latent_channels,
            "base_channels": base_channels,
            "channel_multipliers": channel_multipliers,
            "num_res_blocks": num_res_blocks,
            "norm_num_groups": norm_num_groups,
        }
        arch: dict[str, Any] = {k: (preset[k] if v is None else v) for k, v in given.items()}
        arch["channel_multipliers"] = tuple(int(m) for m in arch["channel_multipliers"])
        max_factor = 2 ** (len(arch["channel_multipliers"]) - 1)
        factors = resolve_downsampling(layout, downsampling, max_factor)
        full_config = {
            "config": None,
            "channels": channels,
            "layout": layout,
            **arch,
            "channel_multipliers": list(arch["channel_multipliers"]),
            "downsampling": list(factors),
            "attention": attention,
            "dropout": dropout,
            "scaling_factor": scaling_factor,
            "shift_factor": shift_factor,
        }
        super().__init__(
            config=full_config,
            channels=channels,
            latent_channels=arch["latent_channels"],
            layout=layout,
            downsampling=factors,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )
        z = arch["latent_channels"]
        common: dict[str, Any] = {
            "base_channels": arch["base_channels"],
            "channel_multipliers": arch["channel_multipliers"],
            "num_res_blocks": arch["num_res_blocks"],
            "factors_log2": self.net_factors_log2,
            "num_groups": arch["norm_num_groups"],
            "dropout": dropout,
            "attention": attention,
        }
        self.encoder = Encoder(self.net_ndim, channels, z, double_z=True, **common)
        self.decoder = Decoder(self.net_ndim, channels, z, **common)
        self.quant_conv = conv_nd(self.net_ndim, 2 * z, 2 * z, 1)
        self.post_quant_conv = conv_nd(self.net_ndim, z, z, 1)

    def _encode_net(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (B, 2 z, *latent): mean and log-variance

    def _distribution(self, params: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(params)

    def _decode_net(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Data -> diagonal Gaussian posterior over raw latents (``sample``, ``mode``, ``kl``)."""
        return self._distribution(self.encode_parameters(x))

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (where the adaptive GAN weight is taken)."""
        return cast(torch.Tensor, self.decoder.conv_out.weight)

    def reconstruct(
        self, x: torch.Tensor, *, generator: Generators = None, sample_posterior: bool = True
    ) -> AutoencoderOutput:
        """Encode, sample z ~ q(z|x) (or take its mean) and decode.

        ``regularization`` is KL(q(z|x) || N(0, I)) summed over the latent and divided by the
        number of data elements per item, averaged over the batch: with the reconstruction loss
        a per-element mean, the paper's kl weight (1e-6, for per-item sums) keeps its meaning.
        """
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        rec = self.decode(z)
        per_item = math.prod(x.shape[1:])
        kl = posterior.kl().mean() / per_item
        return AutoencoderOutput(
            reconstruction=rec,
            latent=z,
            regularization=kl,
            regularization_name="kl",
            logs={"kl": float(kl.detach()), "posterior_std": float(posterior.std.detach().mean())},
        )

"""What the convolutional first stages (``kl``, ``vq``) share: layouts and per-axis factors,
frame-wise video, tiling, latent statistics, checkpoints and the training-step output.

A subclass builds its networks for ``self.net_ndim`` spatial axes and implements
``_encode_net`` (data -> distribution parameters), ``_distribution`` (parameters ->
:class:`~latentkit.interfaces.LatentDistribution`), ``_decode_net`` and ``reconstruct``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from einops import rearrange

from latentkit.autoencoders.tiling import tiled_apply
from latentkit.interfaces import Autoencoder, LatentDistribution
from latentkit.random import Generators
from latentkit.specs import LAYOUTS, DataSpec, LatentSpec, spatial_ndim

__all__ = ["AutoencoderOutput", "ConvAutoencoder", "resolve_downsampling"]


@attrs.frozen(eq=False)
class AutoencoderOutput:
    """One training-time pass through an autoencoder (see ``reconstruct``)."""

    reconstruction: torch.Tensor  # (B, C_data, *spatial)
    latent: torch.Tensor  # the latent that was decoded (raw, not normalised)
    regularization: torch.Tensor  # scalar: KL per data element (kl) or VQ loss (vq)
    regularization_name: str  # "kl" or "codebook"
    logs: dict[str, float] = attrs.field(factory=dict)  # e.g. perplexity, codebook usage


def resolve_downsampling(
    layout: str, downsampling: int | Sequence[int] | None, max_factor: int
) -> tuple[int, ...]:
    """Per-axis downsampling factors for ``layout``.

    ``None``: ``max_factor`` on every axis, except the time axis of ``CTHW`` (factor 1:
    frame-wise). An int is used on every axis. Each factor must be a power of two no larger
    than ``max_factor = 2 ** (levels - 1)``.
    """
    n = spatial_ndim(layout)
    if downsampling is None:
        factors = (1,) + (max_factor,) * (n - 1) if layout == "CTHW" else (max_factor,) * n
    elif isinstance(downsampling, int):
        factors = (int(downsampling),) * n
    else:
        factors = tuple(int(f) for f in downsampling)
    if len(factors) != n:
        raise ValueError(f"downsampling: layout {layout!r} has {n} spatial axes, got factors {factors}")
    for f in factors:
        if f < 1 or f & (f - 1) or f > max_factor:
            raise ValueError(
                f"downsampling: each factor must be a power of two in [1, {max_factor}] (the "
                f"channel multipliers give {int(math.log2(max_factor)) + 1} levels); got {factors}"
            )
    return factors


class ConvAutoencoder(Autoencoder):
    """Base of the convolutional first stages: one implementation for every layout.

    For ``CTHW`` with temporal factor 1 the model is *frame-wise*: frames are folded into the
    batch and a 2-D network encodes each frame on its own (the video LDM recipe of Blattmann
    et al. 2023); with temporal factor 2 or 4 a 3-D network compresses time as well.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = tuple(LAYOUTS)
    #: The registry name ``save_pretrained`` records (``latentkit.create("autoencoder", name)``).
    registry_name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        config: dict[str, Any],  # the full constructor config, JSON-friendly (for checkpoints)
        channels: int,
        latent_channels: int,
        layout: str,
        downsampling: tuple[int, ...],
        scaling_factor: float,
        shift_factor: float,
    ) -> None:
        super().__init__(
            DataSpec(channels=channels, layout=layout),
            LatentSpec(
                channels=latent_channels,
                layout=layout,
                downsampling=downsampling,
                scaling_factor=scaling_factor,
                shift_factor=shift_factor,
            ),
        )
        self.config = config
        self.frame_wise = layout == "CTHW" and downsampling[0] == 1
        net_factors = downsampling[1:] if self.frame_wise else downsampling
        self.net_ndim = len(net_factors)
        self.net_factors_log2 = tuple(int(math.log2(f)) for f in net_factors)

    # ----------------------------------------------------------------- subclass hooks

    @abc.abstractmethod
    def _encode_net(self, x: torch.Tensor) -> torch.Tensor:
        """Data in network layout -> distribution parameters in network layout."""

    @abc.abstractmethod
    def _distribution(self, params: torch.Tensor) -> LatentDistribution:
        """Distribution parameters (B, P, *latent_spatial) -> latent distribution."""

    @abc.abstractmethod
    def _decode_net(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent in network layout -> data in network layout."""

    @abc.abstractmethod
    def reconstruct(
        self, x: torch.Tensor, *, generator: Generators = None, sample_posterior: bool = True
    ) -> AutoencoderOutput:
        """Encode, regularise and decode ``x`` for training (what the losses consume)."""

    @abc.abstractmethod
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's last layer (for the adaptive GAN weight)."""

    # ----------------------------------------------------------------- layouts

    def _run(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        """Run a network on ``x`` in data layout, folding frames into the batch if frame-wise."""
        if not self.frame_wise:
            return fn(x)  # type: ignore[no-any-return]
        frames = x.shape[2]
        y = fn(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=frames)

    def encode_parameters(self, x: torch.Tensor) -> torch.Tensor:
        """Data -> raw distribution parameters (what ``encode`` wraps in a distribution)."""
        return self._run(self._encode_net, self.check_data(x))

    def encode(self, x: torch.Tensor) -> LatentDistribution:
        """Data (B, C, *spatial) -> distribution over raw latents (B, C_latent, *spatial // f)."""
        return self._distribution(self.encode_parameters(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C_latent, *latent_spatial) -> data (B, C, *latent_spatial * f)."""
        return self._run(self._decode_net, self.check_latent(z))

    def forward(self, x: torch.Tensor, *, generator: Generators = None, sample_posterior: bool = True) -> AutoencoderOutput:
        """Same as :meth:`reconstruct`."""
        return self.reconstruct(x, generator=generator, sample_posterior=sample_posterior)

    # ----------------------------------------------------------------- tiling

    def _per_axis(self, value: int | Sequence[int | None] | None, sizes: Sequence[int]) -> tuple[int, ...]:
        n = len(sizes)
        if value is None:
            return tuple(sizes)
        if isinstance(value, int):
            return (value,) * n
        values = tuple(value)
        if len(values) != n:
            raise ValueError(f"expected {n} per-axis values (one per spatial axis), got {values}")
        return tuple(s if v is None else int(v) for v, s in zip(values, sizes))

    def tiled_encode(
        self,
        x: torch.Tensor,
        *,
        tile_size: int | Sequence[int | None] = 256,  # data units; None on an axis: no tiling
        overlap: int | Sequence[int] = 64,  # data units
    ) -> LatentDistribution:
        """``encode`` in overlapping tiles blended with linear ramps (see :mod:`.tiling`).

        The distribution parameters are blended, so peak memory is that of one tile. Away from
        tile borders the result matches ``encode`` up to the change of GroupNorm and attention
        statistics from the whole input to one tile.
        """
        x = self.check_data(x)
        spatial = tuple(x.shape[2:])
        factors = self._latent_spec.downsampling
        params = tiled_apply(
            lambda t: self._run(self._encode_net, t),
            x,
            tile_size=self._per_axis(tile_size, spatial),
            overlap=self._per_axis(overlap, spatial),
            multiple=factors,
            scale=[(1, f) for f in factors],
        )
        return self._distribution(params)

    def tiled_decode(
        self,
        z: torch.Tensor,
        *,
        tile_size: int | Sequence[int | None] = 256,  # data units, as for tiled_encode
        overlap: int | Sequence[int] = 64,  # data units
    ) -> torch.Tensor:
        """``decode`` in overlapping latent tiles, blended with linear ramps in data space."""
        z = self.check_latent(z)
        factors = self._latent_spec.downsampling
        spatial = tuple(z.shape[2:])
        data_spatial = tuple(s * f for s, f in zip(spatial, factors))
        tiles = self._per_axis(tile_size, data_spatial)
        overlaps = (overlap,) * len(spatial) if isinstance(overlap, int) else tuple(overlap)
        return tiled_apply(
            lambda t: self._run(self._decode_net, t),
            z,
            tile_size=[max(1, t // f) for t, f in zip(tiles, factors)],
            overlap=[math.ceil(o / f) for o, f in zip(overlaps, factors)],
            multiple=(1,) * len(spatial),
            scale=[(f, 1) for f in factors],
        )

    # ----------------------------------------------------------------- checkpoints

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (see :mod:`latentkit.autoencoders.io`)."""
        from latentkit.autoencoders.io import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> ConvAutoencoder:
        """Load a checkpoint written by :meth:`save_pretrained` (safetensors, no pickle)."""
        from latentkit.autoencoders.io import load_pretrained

        model = load_pretrained(directory, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

"""Volumetric components built from latentkit's N-d parts, through the public registry only.

* :class:`VolumeKLAutoencoder` (``volume_kl``): the core ``kl`` autoencoder (Rombach et al.
  2022, Sec. 3.1) built for ``CDHW`` single-channel fields, with presets sized for 16^3 to
  64^3 grids. Train it with :class:`latentkit_volume.losses.VolumeAutoencoderLoss` (SDF-aware
  reconstruction).
* :class:`VolumeUNet` (``volume_unet``): the core ``unet`` (Ronneberger et al. 2015; LDM's
  variant) for ``CDHW`` latents, plus CoordConv input channels (Liu et al. 2018): the
  normalised (z, y, x) position of every voxel, concatenated to the input so that the
  convolutions know where in the volume they are (a translation-equivariant network otherwise
  cannot place an object, and a volume's centre matters more than an image's).
* :class:`VolumeDiT` (``volume_dit``): the core ``dit`` (Peebles & Xie 2023) on 3-D patches;
  with ``patch_size=4`` a 16^3 grid is 64 tokens, which trains on a CPU in minutes.

Each wraps the core component it creates with :func:`latentkit.create` (no private import):
the wrappers declare ``CDHW`` as their only layout and add the volumetric defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar

import latentkit
import torch
from latentkit.errors import ShapeError
from latentkit.interfaces import Autoencoder, Denoiser, LatentDistribution
from latentkit.random import Generators
from latentkit.specs import Conditioning, DataSpec, LatentSpec

__all__ = [
    "VOLUME_DIT_PRESETS",
    "VOLUME_KL_PRESETS",
    "VOLUME_UNET_PRESETS",
    "VolumeDiT",
    "VolumeKLAutoencoder",
    "VolumeUNet",
    "coordinate_channels",
]

#: ``volume_kl`` presets: f = 2 ** (len(channel_multipliers) - 1) on every axis.
VOLUME_KL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(latent_channels=2, base_channels=4, channel_multipliers=(1, 2), num_res_blocks=1,
                 norm_num_groups=2, attention=False),
    "f2": dict(latent_channels=4, base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1,
               norm_num_groups=8, attention=False),
    "f4": dict(latent_channels=4, base_channels=32, channel_multipliers=(1, 2, 4), num_res_blocks=2,
               norm_num_groups=8, attention=True),
}

#: ``volume_unet`` presets (widths for 8^3 to 32^3 latents).
VOLUME_UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model_channels=4, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                 num_heads=2, norm_groups=2),
    "small": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                  attention_resolutions=(4,), num_heads=4, norm_groups=8),
    "base": dict(model_channels=64, channel_mult=(1, 2, 4), num_res_blocks=2,
                 attention_resolutions=(4,), num_heads=8, norm_groups=32),
}

#: ``volume_dit`` presets (``patch_size`` 4: a 16^3 grid is 4^3 = 64 tokens).
VOLUME_DIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=24, depth=2, num_heads=2, patch_size=2),
    "small": dict(hidden_size=128, depth=4, num_heads=4, patch_size=4),
    "base": dict(hidden_size=256, depth=8, num_heads=8, patch_size=4),
}


def _preset(presets: dict[str, dict[str, Any]], name: str | None, owner: str) -> dict[str, Any]:
    if name is None:
        return {}
    if name not in presets:
        raise ValueError(f"{owner}: unknown preset {name!r}; presets: {', '.join(presets)}")
    return dict(presets[name])


def _check_layout(layout: str, owner: str) -> None:
    if layout != "CDHW":
        raise ValueError(f"{owner}: layout must be 'CDHW' (volumes), got {layout!r}")


def coordinate_channels(batch: int, spatial: tuple[int, ...], *, device: Any = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CoordConv channels (Liu et al. 2018): (B, 3, D, H, W) holding each voxel's normalised
    (d, h, w) position, voxel centres spread evenly over [-1, 1]."""
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n * 2 - 1 for n in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, D, H, W)
    return grid.unsqueeze(0).expand(batch, *grid.shape)


# --------------------------------------------------------------------------- autoencoder


class VolumeKLAutoencoder(Autoencoder):
    """KL-regularised autoencoder for single-channel volumes (signed fields, ``CDHW``).

    ``preset`` picks :data:`VOLUME_KL_PRESETS` (``"tiny"``, ``"f2"``, ``"f4"``); explicit
    arguments override it. The network is the core ``kl`` autoencoder created through
    ``latentkit.create``; this class owns the latent normalisation (``scaling_factor``,
    ``shift_factor``) and exposes ``reconstruct`` and ``last_layer`` for training.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CDHW",)

    def __init__(
        self,
        preset: str | None = "f2",  # name in VOLUME_KL_PRESETS, or None
        *,
        channels: int = 1,  # data channels (1: one signed field)
        layout: str = "CDHW",  # volumes only
        latent_channels: int | None = None,
        base_channels: int | None = None,  # width of the first level
        channel_multipliers: tuple[int, ...] | list[int] | None = None,  # one per level
        num_res_blocks: int | None = None,
        norm_num_groups: int | None = None,
        attention: bool | None = None,  # self-attention at the lowest resolution
        scaling_factor: float = 1.0,  # latent normalisation (fit it on data before diffusion)
        shift_factor: float = 0.0,
    ) -> None:
        _check_layout(layout, "VolumeKLAutoencoder")
        arch = _preset(VOLUME_KL_PRESETS, preset, "VolumeKLAutoencoder")
        given = dict(latent_channels=latent_channels, base_channels=base_channels,
                     channel_multipliers=channel_multipliers, num_res_blocks=num_res_blocks,
                     norm_num_groups=norm_num_groups, attention=attention)
        arch.update({k: v for k, v in given.items() if v is not None})
        missing = [k for k in given if k not in arch]
        if missing:
            raise ValueError(f"VolumeKLAutoencoder: without a preset, give {missing}")
        net = latentkit.create("autoencoder", "kl", config=None, channels=channels, layout="CDHW",
                               latent_channels=int(arch["latent_channels"]),
                               base_channels=int(arch["base_channels"]),
                               channel_multipliers=tuple(arch["channel_multipliers"]),
                               num_res_blocks=int(arch["num_res_blocks"]),
                               norm_num_groups=int(arch["norm_num_groups"]),
                               attention=bool(arch["attention"]))
        inner: LatentSpec = net.latent_spec
        super().__init__(
            DataSpec(channels=channels, layout="CDHW"),
            LatentSpec(channels=inner.channels, layout="CDHW", downsampling=inner.downsampling,
                       scaling_factor=scaling_factor, shift_factor=shift_factor),
        )
        self.net = net
        self.preset = preset

    def encode(self, x: torch.Tensor) -> LatentDistribution:
        """Field (B, 1, D, H, W) -> diagonal Gaussian posterior over raw latents."""
        return self.net.encode(self.check_data(x))  # type: ignore[no-any-return]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, d, h, w) -> field (B, 1, D, H, W)."""
        return self.net.decode(self.check_latent(z))  # type: ignore[no-any-return]

    def reconstruct(self, x: torch.Tensor, *, generator: Generators = None,
                    sample_posterior: bool = True) -> Any:
        """Encode, sample (or take the mean) and decode; returns the core autoencoder's output
        (``reconstruction``, ``latent``, ``regularization`` = KL per data element, ``logs``)."""
        return self.net.reconstruct(self.check_data(x), generator=generator,
                                    sample_posterior=sample_posterior)

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight."""
        return self.net.last_layer()  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- denoisers


class _WrappedDenoiser(Denoiser):
    """A core denoiser created by name for ``CDHW``, with optional CoordConv channels."""

    supported_layouts: ClassVar[tuple[str, ...]] = ("CDHW",)
    core_name: ClassVar[str] = ""

    def _build(self, *, in_channels: int, out_channels: int | None, crossattn_dim: int | None,
               vector_dim: int | None, layout: str, coord_channels: bool,
               config: dict[str, Any]) -> None:
        owner = type(self).__name__
        _check_layout(layout, owner)
        out_channels = in_channels if out_channels is None else out_channels
        extra = 3 if coord_channels else 0
        net = latentkit.create("denoiser", self.core_name, in_channels=in_channels + extra,
                               out_channels=out_channels, crossattn_dim=crossattn_dim,
                               vector_dim=vector_dim, layout="CDHW", **config)
        Denoiser.__init__(self, in_channels=in_channels, out_channels=out_channels, layouts=("CDHW",),
                          crossattn_dim=crossattn_dim, vector_dim=vector_dim,
                          size_multiple=net.size_multiple)  # an int or one per axis, as the core declares it
        self.net = net
        self.coord_channels = bool(coord_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """(B, C, D, H, W), (B,), Conditioning -> (B, C, D, H, W)."""
        x_in, t, cond = self.prepare_input(x, t, cond)
        x, extra = x_in[:, : self.out_channels], x_in[:, self.out_channels:]
        if self.coord_channels:
            coords = coordinate_channels(x.shape[0], tuple(x.shape[2:]), device=x.device, dtype=x.dtype)
            extra = torch.cat([extra, coords], dim=1)
        inner = Conditioning(crossattn=cond.crossattn, vector=cond.vector,
                             concat=extra if extra.shape[1] else None)
        out = self.net(x, t, inner)
        if out.shape != x.shape:  # a broken core part, reported rather than passed on
            raise ShapeError(f"{type(self).__name__}: core {self.core_name!r} returned {tuple(out.shape)} "
                             f"for input {tuple(x.shape)}")
        return out  # type: ignore[no-any-return]


class VolumeUNet(_WrappedDenoiser):
    """The core ``unet`` for volumes (``CDHW``) with CoordConv input channels.

    ``preset`` picks :data:`VOLUME_UNET_PRESETS` (``"tiny"``, ``"small"``, ``"base"``);
    explicit arguments override it. Spatial sizes must be multiples of
    ``2 ** (len(channel_mult) - 1)``.
    """

    core_name = "unet"

    def __init__(
        self,
        preset: str | None = "small",  # name in VOLUME_UNET_PRESETS, or None
        *,
        in_channels: int = 1,  # latent channels + concat conditioning channels
        out_channels: int | None = None,  # latent channels (default: in_channels)
        crossattn_dim: int | None = None,  # context width D of crossattn (B, L, D)
        vector_dim: int | None = None,  # width of the vector conditioning (B, D)
        layout: str = "CDHW",  # volumes only
        coord_channels: bool = True,  # append normalised voxel coordinates (CoordConv)
        model_channels: int | None = None,  # width of the first level
        channel_mult: tuple[int, ...] | list[int] | None = None,  # width multiplier per level
        num_res_blocks: int | None = None,  # residual blocks per level
        attention_resolutions: tuple[int, ...] | list[int] | None = None,  # factors with attention
        num_heads: int | None = None,
        norm_groups: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        config = _preset(VOLUME_UNET_PRESETS, preset, "VolumeUNet")
        given = dict(model_channels=model_channels, channel_mult=channel_mult,
                     num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                     num_heads=num_heads, norm_groups=norm_groups)
        config.update({k: v for k, v in given.items() if v is not None})
        config["dropout"] = dropout
        self._build(in_channels=in_channels, out_channels=out_channels, crossattn_dim=crossattn_dim,
                    vector_dim=vector_dim, layout=layout, coord_channels=coord_channels, config=config)
        self.preset = preset


class VolumeDiT(_WrappedDenoiser):
    """The core ``dit`` on 3-D patches (``CDHW``), sinusoidal 3-D position embeddings.

    ``preset`` picks :data:`VOLUME_DIT_PRESETS` (``"tiny"``, ``"small"``, ``"base"``);
    explicit arguments override it. Spatial sizes must be multiples of ``patch_size``.
    """

    core_name = "dit"

    def __init__(
        self,
        preset: str | None = "small",  # name in VOLUME_DIT_PRESETS, or None
        *,
        in_channels: int = 1,  # latent channels + concat conditioning channels
        out_channels: int | None = None,  # latent channels (default: in_channels)
        crossattn_dim: int | None = None,  # context width D of crossattn (B, L, D)
        vector_dim: int | None = None,  # width of the vector conditioning (B, D)
        layout: str = "CDHW",  # volumes only
        coord_channels: bool = False,  # position embeddings already say where a patch is
        hidden_size: int | None = None,  # token width
        depth: int | None = None,  # number of DiT blocks
        num_heads: int | None = None,
        patch_size: int | None = None,  # patch edge on every axis
    ) -> None:
        config = _preset(VOLUME_DIT_PRESETS, preset, "VolumeDiT")
        given = dict(hidden_size=hidden_size, depth=depth, num_heads=num_heads, patch_size=patch_size)
        config.update({k: v for k, v in given.items() if v is not None})
        self._build(in_channels=in_channels, out_channels=out_channels, crossattn_dim=crossattn_dim,
                    vector_dim=vector_dim, layout=layout, coord_channels=coord_channels, config=config)
        self.preset = preset

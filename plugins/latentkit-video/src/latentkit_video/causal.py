"""A spatio-temporal KL autoencoder with causal 3-D convolutions and temporal downsampling.

Causal video tokenizers (MAGVIT-v2, Yu et al. 2024, Sec. 3.1; also CV-VAE, CogVideoX and
Cosmos) pad every 3-D convolution on the *past* side of the time axis only, so latent frame
``j`` depends on data frames up to its own time and never on later ones. With a temporal
factor ``f`` the clip has ``T = 1 + f k`` frames and the latent ``1 + k``: the first frame
is encoded alone (a one-frame clip is an image), every later latent frame covers ``f`` new
frames. The decoder mirrors it: temporal upsampling repeats every latent frame ``f`` times
and drops the ``f - 1`` copies before the first frame.

Group normalisation is taken per frame (frames folded into the batch), since statistics over
the whole clip would let early latents see later frames. The posterior is a diagonal Gaussian
with a KL penalty (Rombach et al. 2022, Sec. 3.1), as in latentkit's ``kl`` autoencoder.

latentkit's :class:`~latentkit.specs.LatentSpec` maps a data size ``s`` to ``s / f`` on
every axis; the ``1 + (T - 1) / f`` rule of the time axis lives in :class:`CausalLatentSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import einops
import torch
import torch.nn.functional as F
from latentkit.errors import ShapeError
from latentkit.interfaces import Autoencoder, DiagonalGaussianDistribution
from latentkit.random import Generators
from latentkit.specs import DataSpec, LatentSpec
from torch import nn

__all__ = [
    "CausalAutoencoderOutput",
    "CausalConv3d",
    "CausalLatentSpec",
    "CausalResnetBlock",
    "CausalVideoAutoencoder",
]


@attrs.frozen
class CausalLatentSpec(LatentSpec):
    """A ``CTHW`` latent spec whose time axis follows ``T_latent = 1 + (T - 1) / f_t``
    (first frame alone); height and width divide by their factors as usual."""

    def latent_size(self, data_spatial: Sequence[int]) -> tuple[int, ...]:
        """Latent (T', h, w) for data (T, H, W); raises ShapeError naming valid sizes."""
        if len(data_spatial) != 3:
            raise ShapeError(f"causal video latents need a data size (T, H, W), got {tuple(data_spatial)}")
        t, *rest = (int(s) for s in data_spatial)
        ft = self.downsampling[0]
        if t < 1 or (t - 1) % ft:
            near = sorted({1 + ft * max(0, (t - 1) // ft), 1 + ft * (max(0, (t - 1) // ft) + 1)})
            raise ShapeError(
                f"causal video latents need T = 1 + {ft} k frames (first frame alone), got data "
                f"size {tuple(data_spatial)}; nearest valid frame counts: {near}"
            )
        space = LatentSpec(channels=self.channels, layout="CHW", downsampling=self.downsampling[1:])
        return (1 + (t - 1) // ft, *space.latent_size(rest))

    def data_size(self, latent_spatial: Sequence[int]) -> tuple[int, ...]:
        """Data (T, H, W) decoded from a latent (T', h, w)."""
        if len(latent_spatial) != 3 or any(int(s) < 1 for s in latent_spatial):
            raise ShapeError(f"causal video latents have a positive size (T', h, w), got {tuple(latent_spatial)}")
        t, h, w = (int(s) for s in latent_spatial)
        ft, fh, fw = self.downsampling
        return (1 + (t - 1) * ft, h * fh, w * fw)


@attrs.frozen(eq=False)
class CausalAutoencoderOutput:
    """One training pass (what latentkit's autoencoder training loss reads)."""

    reconstruction: torch.Tensor
    latent: torch.Tensor
    regularization: torch.Tensor  # KL per data element
    regularization_name: str = "kl"
    logs: dict[str, float] = attrs.field(factory=dict)


# --------------------------------------------------------------------------- blocks


class CausalConv3d(nn.Module):
    """3-D convolution padded on the past side of time (replicating the first frame) and
    symmetrically (zeros) in space, so output frame ``j`` sees input frames ``<= j * stride``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1) -> None:
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        self.time_pad = kt - 1
        self.space_pad = (kw // 2, kw // 2, kh // 2, kh // 2)
        st, sh, sw = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), stride=(st, sh, sw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C', T', H', W')."""
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(F.pad(x, (*self.space_pad, 0, 0)))  # type: ignore[no-any-return]


class FrameGroupNorm(nn.GroupNorm):
    """Group normalisation with statistics per frame (keeps the network causal in time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> same shape."""
        b = x.shape[0]
        y = super().forward(einops.rearrange(x, "b c t h w -> (b t) c h w"))
        return einops.rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _norm(channels: int, groups: int) -> FrameGroupNorm:
    if channels % groups:
        raise ValueError(f"{channels} channels are not divisible into {groups} groups; set norm_num_groups")
    return FrameGroupNorm(groups, channels, eps=1e-6)


class CausalResnetBlock(nn.Module):
    """ResNet block of the LDM first stage (norm, swish, conv, twice) with causal 3-D convs."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C', T, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h  # type: ignore[no-any-return]


class CausalDownsample(nn.Module):
    """Halve H and W (and T when ``time``) with a strided causal convolution: with a time
    stride of 2, ``T = 1 + 2 k`` frames become ``1 + k`` and the first stays alone."""

    def __init__(self, channels: int, time: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=(2 if time else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T', H/2, W/2)."""
        return self.conv(x)  # type: ignore[no-any-return]


class CausalUpsample(nn.Module):
    """Double H and W (nearest) and, when ``time``, map ``1 + k`` frames to ``1 + 2 k`` (each
    frame repeated twice, the copy before the first frame dropped), then a causal conv."""

    def __init__(self, channels: int, time: bool) -> None:
        super().__init__()
        self.time = time
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T', 2H, 2W)."""
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        if self.time:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        return self.conv(x)  # type: ignore[no-any-return]


class CausalEncoder(nn.Module):
    """conv_in, per level ``num_res_blocks`` blocks then a downsample (not after the last),
    two middle blocks, norm, swish, conv_out to ``out_channels``."""

    def __init__(self, channels: int, out_channels: int, base: int, mults: Sequence[int],
                 num_res_blocks: int, groups: int, time_levels: int) -> None:
        super().__init__()
        self.conv_in = CausalConv3d(channels, base)
        blocks: list[nn.Module] = []
        ch = base
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                blocks.append(CausalResnetBlock(ch, base * mult, groups))
                ch = base * mult
            if level != len(mults) - 1:
                blocks.append(CausalDownsample(ch, time=level < time_levels))
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(CausalResnetBlock(ch, ch, groups), CausalResnetBlock(ch, ch, groups))
        self.norm_out = _norm(ch, groups)
        self.conv_out = CausalConv3d(ch, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, out_channels, T', h, w)."""
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))  # type: ignore[no-any-return]


class CausalDecoder(nn.Module):
    """The encoder's mirror: conv_in, two middle blocks, per level ``num_res_blocks + 1``
    blocks then an upsample (not after the last), norm, swish, conv_out."""

    def __init__(self, channels: int, latent_channels: int, base: int, mults: Sequence[int],
                 num_res_blocks: int, groups: int, time_levels: int) -> None:
        super().__init__()
        ch = base * mults[-1]
        self.conv_in = CausalConv3d(latent_channels, ch)
        self.mid = nn.Sequential(CausalResnetBlock(ch, ch, groups), CausalResnetBlock(ch, ch, groups))
        blocks: list[nn.Module] = []
        levels = len(mults)
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                blocks.append(CausalResnetBlock(ch, base * mults[level], groups))
                ch = base * mults[level]
            if level != 0:
                # the encoder's level-(level-1) downsample compressed time when level-1 < time_levels
                blocks.append(CausalUpsample(ch, time=level - 1 < time_levels))
        self.up = nn.Sequential(*blocks)
        self.norm_out = _norm(ch, groups)
        self.conv_out = CausalConv3d(ch, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_channels, T', h, w) -> (B, channels, T, H, W)."""
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- model


class CausalVideoAutoencoder(Autoencoder):
    """KL-regularised ``CTHW`` autoencoder with causal 3-D convolutions.

    Spatial factor ``2 ** (len(channel_multipliers) - 1)``; temporal factor
    ``temporal_downsampling`` (1, 2 or 4, at most the spatial factor), applied in the first
    downsampling stages. Clips need ``T = 1 + temporal_downsampling * k`` frames (any ``T``
    with factor 1); ``T = 1`` is a single image, encoded exactly as the first frame of any clip.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CTHW",)

    def __init__(
        self,
        channels: int = 3,  # data channels
        latent_channels: int = 4,
        base_channels: int = 64,  # width of the first level
        channel_multipliers: Sequence[int] = (1, 2, 4),  # one per level; spatial f = 2**(levels-1)
        num_res_blocks: int = 1,  # per encoder level (decoder: +1)
        norm_num_groups: int = 16,
        temporal_downsampling: int = 4,  # 1, 2 or 4
        layout: str = "CTHW",  # the only layout
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ) -> None:
        if layout != "CTHW":
            raise ValueError(f"CausalVideoAutoencoder: layout must be 'CTHW', got {layout!r}")
        mults = tuple(int(m) for m in channel_multipliers)
        levels = len(mults)
        f_space = 2 ** (levels - 1)
        ft = int(temporal_downsampling)
        if ft < 1 or ft & (ft - 1) or ft > f_space:
            raise ValueError(
                f"CausalVideoAutoencoder: temporal_downsampling must be a power of two in [1, {f_space}] "
                f"(the spatial factor of {levels} levels), got {temporal_downsampling}"
            )
        super().__init__(
            DataSpec(channels=channels, layout="CTHW"),
            CausalLatentSpec(channels=latent_channels, layout="CTHW", downsampling=(ft, f_space, f_space),
                             scaling_factor=scaling_factor, shift_factor=shift_factor),
        )
        time_levels = int(math.log2(ft))
        args = (base_channels, mults, num_res_blocks, norm_num_groups, time_levels)
        self.encoder = CausalEncoder(channels, 2 * latent_channels, *args)
        self.decoder = CausalDecoder(channels, latent_channels, *args)

    def _check_frames(self, x: torch.Tensor, owner: str) -> None:
        try:
            self._latent_spec.latent_size(x.shape[2:])
        except ShapeError as exc:
            raise ShapeError(f"{owner}: got shape {tuple(x.shape)}; {exc}") from None

    def check_data(self, x: Any) -> torch.Tensor:
        """Channels, rank, spatial factors and ``T = 1 + f_t k`` of a data batch."""
        owner = f"{type(self).__name__}.encode"
        from latentkit.interfaces import check_tensor

        x = check_tensor(x, name="data", owner=owner, channels=self.data_spec.channels,
                         layouts=("CTHW",), size_multiple=(1, *self._latent_spec.downsampling[1:]))
        self._check_frames(x, owner)
        return x

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Data (B, C, 1 + f k, H, W) -> posterior over raw latents (B, c, 1 + k, H/s, W/s)."""
        return DiagonalGaussianDistribution(self.encoder(self.check_data(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, c, 1 + k, h, w) -> data (B, C, 1 + f k, h s, w s)."""
        return self.decoder(self.check_latent(z))  # type: ignore[no-any-return]

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (for an adaptive GAN weight)."""
        return self.decoder.conv_out.conv.weight

    def reconstruct(self, x: torch.Tensor, *, generator: Generators = None,
                    sample_posterior: bool = True) -> CausalAutoencoderOutput:
        """Encode, sample z ~ q(z|x) (or take its mean), decode; the KL is summed over the
        latent and divided by the data elements per item (as latentkit's ``kl`` does)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        rec = self.decode(z)
        kl = posterior.kl().mean() / math.prod(x.shape[1:])
        return CausalAutoencoderOutput(reconstruction=rec, latent=z, regularization=kl,
                                       logs={"kl": float(kl.detach())})

    def forward(self, x: torch.Tensor, *, generator: Generators = None,
                sample_posterior: bool = True) -> CausalAutoencoderOutput:
        """Same as :meth:`reconstruct`."""
        return self.reconstruct(x, generator=generator, sample_posterior=sample_posterior)

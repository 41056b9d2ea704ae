"""N-d convolutional encoder and decoder of the first-stage autoencoders.

The architecture is the one of Rombach et al. 2022 (LDM, App. G; itself after Esser et al.
2021, "Taming Transformers"): a ResNet encoder/decoder with GroupNorm and swish, strided
downsampling, nearest-neighbour upsampling and self-attention at the lowest resolution (the
"mid" block). One implementation covers every number of spatial axes: the convolution class
is picked by the rank and attention flattens the spatial axes with one einops pattern, so the
same code builds the 1-D (``CL``), 2-D (``CHW``) and 3-D (``CTHW`` / ``CDHW``) networks.

Downsampling is per axis: an axis with factor ``2**k`` is halved by the first ``k`` of the
encoder's downsampling stages (and doubled by the decoder's last ``k`` upsampling stages), so a
video encoder may compress time by 1, 2 or 4 while compressing space by 8.

These blocks are kept apart from the denoiser's UNet blocks on purpose, as in the LDM code
base: the first stage is trained once and frozen, and its weights layout must stay stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import nn

__all__ = [
    "AttentionBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "Upsample",
    "conv_nd",
    "group_norm",
]

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def conv_nd(ndim: int, *args: object, **kwargs: object) -> nn.Module:
    """``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` for ``ndim`` spatial axes."""
    try:
        cls = _CONVS[ndim]
    except KeyError:
        raise ValueError(f"conv_nd: ndim must be 1, 2 or 3, got {ndim}") from None
    return cls(*args, **kwargs)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm as in LDM (eps 1e-6, affine); works for any number of spatial axes."""
    if channels % num_groups:
        raise ValueError(
            f"GroupNorm: {channels} channels are not divisible into {num_groups} groups; "
            "pick norm_num_groups dividing every block width"
        )
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, swish, conv3) x 2 plus a 1x1 shortcut when the
    width changes (He et al. 2016; LDM's ``ResnetBlock`` without the time embedding)."""

    def __init__(
        self,
        ndim: int,  # number of spatial axes
        in_channels: int,
        out_channels: int,
        *,
        num_groups: int,  # GroupNorm groups
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = conv_nd(ndim, in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv_nd(ndim, out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            conv_nd(ndim, in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *spatial) -> (B, C_out, *spatial)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection
    (LDM's ``AttnBlock``; Vaswani et al. 2017, Eq. 1). The spatial axes are flattened by one
    einops pattern, whatever their number."""

    def __init__(self, channels: int, *, num_groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *spatial)."""
        h, packed_shape = pack([self.norm(x)], "b c *")  # (B, C, N)
        h = rearrange(h, "b c n -> b 1 n c")  # one head
        q, k, v = self.q(h), self.k(h), self.v(h)
        h = self.proj_out(F.scaled_dot_product_attention(q, k, v))  # (B, 1, N, C)
        (h,) = unpack(rearrange(h, "b 1 n c -> b c n"), packed_shape, "b c *")
        return x + h


class Downsample(nn.Module):
    """Strided 3-wide convolution halving the axes flagged in ``axes``.

    Halved axes are padded by one on the right only (LDM's asymmetric padding, so that a size
    ``2n`` becomes exactly ``n``); the other axes get the usual symmetric padding and stride 1.
    """

    def __init__(self, ndim: int, channels: int, axes: Sequence[bool]) -> None:
        super().__init__()
        if len(axes) != ndim:
            raise ValueError(f"Downsample: need one flag per spatial axis ({ndim}), got {axes}")
        self.axes = tuple(bool(a) for a in axes)
        self.conv = conv_nd(
            ndim, channels, channels, 3, stride=tuple(2 if a else 1 for a in self.axes), padding=0
        )
        # F.pad lists (left, right) pairs starting from the last axis.
        self._pad = tuple(p for a in reversed(self.axes) for p in ((0, 1) if a else (1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *spatial halved on the flagged axes)."""
        return self.conv(F.pad(x, self._pad, mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 on the axes flagged in ``axes``, then a 3-wide conv."""

    def __init__(self, ndim: int, channels: int, axes: Sequence[bool]) -> None:
        super().__init__()
        if len(axes) != ndim:
            raise ValueError(f"Upsample: need one flag per spatial axis ({ndim}), got {axes}")
        self.axes = tuple(bool(a) for a in axes)
        self.conv = conv_nd(ndim, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *spatial doubled on the flagged axes)."""
        scale = tuple(2.0 if a else 1.0 for a in self.axes)
        return self.conv(F.interpolate(x, scale_factor=scale, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, then an optional resampling layer."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.resample: nn.Module | None = None


class _MidBlock(nn.Module):
    """ResNet, attention at the lowest resolution, ResNet."""

    def __init__(self, ndim: int, channels: int, *, num_groups: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ndim, channels, channels, num_groups=num_groups, dropout=dropout)
        self.attn_1 = AttentionBlock(channels, num_groups=num_groups) if attention else None
        self.block_2 = ResnetBlock(ndim, channels, channels, num_groups=num_groups, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


def _check_levels(channel_multipliers: Sequence[int], factors_log2: Sequence[int]) -> None:
    if not channel_multipliers:
        raise ValueError("channel_multipliers must list at least one level")
    most = len(channel_multipliers) - 1
    if any(k < 0 or k > most for k in factors_log2):
        raise ValueError(
            f"{len(channel_multipliers)} levels downsample each axis at most 2**{most} = "
            f"{2**most} times; got log2 factors {tuple(factors_log2)}"
        )


class Encoder(nn.Module):
    """LDM encoder: conv_in, one level per channel multiplier (``num_res_blocks`` ResNet blocks,
    then a downsampling on the axes that still need it), mid block, GroupNorm, swish, conv_out.

    ``factors_log2[a] = k`` makes the first ``k`` levels halve axis ``a``.
    """

    def __init__(
        self,
        ndim: int,  # number of spatial axes
        in_channels: int,  # data channels
        z_channels: int,  # latent channels (doubled when double_z: mean and log-variance)
        *,
        base_channels: int = 128,  # width of the first level
        channel_multipliers: Sequence[int] = (1, 2, 4, 4),  # width of level i = base * mult[i]
        num_res_blocks: int = 2,  # ResNet blocks per level
        factors_log2: Sequence[int],  # per axis: how many levels halve it
        num_groups: int = 32,  # GroupNorm groups
        dropout: float = 0.0,
        attention: bool = True,  # self-attention in the mid block
        double_z: bool = True,
    ) -> None:
        super().__init__()
        _check_levels(channel_multipliers, factors_log2)
        self.ndim = ndim
        widths = [base_channels * m for m in channel_multipliers]
        self.conv_in = conv_nd(ndim, in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = base_channels
        for i, width in enumerate(widths):
            level = _Level()
            for _ in range(num_res_blocks):
                level.block.append(
                    ResnetBlock(ndim, block_in, width, num_groups=num_groups, dropout=dropout)
                )
                block_in = width
            if i != len(widths) - 1:
                level.resample = Downsample(ndim, block_in, [i < k for k in factors_log2])
            self.down.append(level)
        self.mid = _MidBlock(ndim, block_in, num_groups=num_groups, dropout=dropout, attention=attention)
        self.norm_out = group_norm(block_in, num_groups)
        self.conv_out = conv_nd(ndim, block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_data, *spatial) -> (B, [2 x] z_channels, *spatial // factors)."""
        h = self.conv_in(x)
        for level in cast("Iterable[_Level]", self.down):
            for block in level.block:
                h = block(h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """LDM decoder, the encoder's mirror: conv_in, mid block, levels from the lowest resolution
    up (``num_res_blocks + 1`` ResNet blocks, then an upsampling), GroupNorm, swish, conv_out.

    ``up[i]`` is the level of width ``base * mult[i]`` (as in LDM, so ``up[-1]`` runs first);
    ``up[i]`` doubles axis ``a`` when ``i - 1 < factors_log2[a]``.
    """

    def __init__(
        self,
        ndim: int,
        out_channels: int,  # data channels
        z_channels: int,  # latent channels
        *,
        base_channels: int = 128,
        channel_multipliers: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        factors_log2: Sequence[int],
        num_groups: int = 32,
        dropout: float = 0.0,
        attention: bool = True,
    ) -> None:
        super().__init__()
        _check_levels(channel_multipliers, factors_log2)
        self.ndim = ndim
        widths = [base_channels * m for m in channel_multipliers]
        block_in = widths[-1]
        self.conv_in = conv_nd(ndim, z_channels, block_in, 3, padding=1)
        self.mid = _MidBlock(ndim, block_in, num_groups=num_groups, dropout=dropout, attention=attention)
        levels: list[_Level] = []
        for i in reversed(range(len(widths))):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.block.append(
                    ResnetBlock(ndim, block_in, widths[i], num_groups=num_groups, dropout=dropout)
                )
                block_in = widths[i]
            if i != 0:
                level.resample = Upsample(ndim, block_in, [i - 1 < k for k in factors_log2])
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, num_groups)
        self.conv_out = conv_nd(ndim, block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_channels, *latent_spatial) -> (B, C_data, *latent_spatial * factors)."""
        h = self.mid(self.conv_in(z))
        for level in cast("Iterable[_Level]", reversed(self.up)):
            for block in level.block:
                h = block(h)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

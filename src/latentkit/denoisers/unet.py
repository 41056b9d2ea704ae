"""The LDM / ADM UNet for 1, 2 or 3 spatial axes from one implementation.

Ho et al. 2020 (DDPM UNet), Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs", ADM:
residual blocks with scale-shift norm, multi-head self-attention at several resolutions) and
Rombach et al. 2022 (LDM: spatial transformers with cross-attention to a context). Timestep
embedding + ``vector`` conditioning enter every residual block; ``crossattn`` enters the
transformer blocks; ``concat`` conditioning is stacked onto the input channels.

Module names follow LDM's ``openaimodel.py`` (``time_embed``, ``label_emb``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``; inside blocks ``in_layers``, ``emb_layers``,
``out_layers``, ``skip_connection``, ``op``, ``conv``, ``transformer_blocks``...), so an LDM or
Stable Diffusion state dict maps onto it key by key (after stripping the
``model.diffusion_model.`` prefix).

Order of this file: blocks, model, factory, presets.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from latentkit.interfaces import Denoiser
from latentkit.layers import (
    AttentionBlock,
    SpatialTransformer,
    avg_pool_nd,
    conv_nd,
    maybe_checkpoint,
    normalization,
    timestep_embedding,
    zero_module,
)
from latentkit.specs import LAYOUTS, Conditioning, spatial_ndim

__all__ = [
    "PRESETS",
    "Downsample",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "layouts_of_rank",
    "unet",
]


# --------------------------------------------------------------------------- blocks


class TimestepBlock(nn.Module, abc.ABC):
    """A module whose ``forward`` takes the timestep embedding as second argument."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial), (B, emb_dim) -> (B, C', *spatial')."""


class TimestepEmbedSequential(nn.Sequential):
    """A sequence that hands the timestep embedding to :class:`TimestepBlock` children and the
    cross-attention context to attention children."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, C, *spatial), (B, emb_dim), optional (B, L, D) -> (B, C', *spatial')."""
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, (SpatialTransformer, AttentionBlock)):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    """Halve every spatial axis with a stride-2 3x3 convolution (or average pooling)."""

    def __init__(self, channels: int, dims: int, use_conv: bool = True, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = conv_nd(dims, channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("Downsample without convolution cannot change the channel count")
            self.op = avg_pool_nd(dims, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C', *spatial / 2)."""
        return self.op(x)  # type: ignore[no-any-return]


class Upsample(nn.Module):
    """Double every spatial axis (nearest neighbour), then a 3x3 convolution."""

    def __init__(self, channels: int, dims: int, use_conv: bool = True, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.conv = conv_nd(dims, channels, out_channels, 3, padding=1) if use_conv else None
        if self.conv is None and out_channels != channels:
            raise ValueError("Upsample without convolution cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C', *spatial * 2)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding (ADM ``ResBlock``).

    ``h = conv(silu(norm(x)))``; the embedding is added (``h + e``) or, with scale-shift norm,
    applied as ``norm(h) * (1 + scale) + shift`` (Dhariwal & Nichol 2021, Sec. 3); then a
    zero-initialised conv, and a skip connection (1x1 conv when the width changes). With
    ``up`` / ``down`` the block also resamples (nearest / average pooling before its first
    conv, on both paths), BigGAN style (ADM's ``resblock_updown``).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        dims: int = 2,
        use_scale_shift_norm: bool = False,
        norm_groups: int = 32,
        checkpoint: bool = False,
        up: bool = False,  # double every spatial axis
        down: bool = False,  # halve every spatial axis
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, dims, use_conv=False)
            self.x_upd: nn.Module = Upsample(channels, dims, use_conv=False)
        elif down:
            self.h_upd = Downsample(channels, dims, use_conv=False)
            self.x_upd = Downsample(channels, dims, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.checkpoint = checkpoint
        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups),
            nn.SiLU(),
            conv_nd(dims, channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)
        )

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[-1](self.h_upd(self.in_layers[:-1](x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)
        emb_out = emb_out[(...,) + (None,) * (h.ndim - 2)]  # (B, C, 1, ..., 1)
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial), (B, emb_channels) -> (B, out_channels, *spatial)."""
        return maybe_checkpoint(self._forward, x, emb, enabled=self.checkpoint)


# --------------------------------------------------------------------------- model


def _per_level(value: int | Sequence[int], levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * levels
    value = tuple(int(v) for v in value)
    if len(value) != levels:
        raise ValueError(f"UNetModel: {name} needs one entry per level ({levels}), got {value}")
    return value


def layouts_of_rank(layout: str) -> tuple[str, ...]:
    """Every layout with the same number of spatial axes as ``layout``."""
    n = spatial_ndim(layout)
    return tuple(name for name, rank in LAYOUTS.items() if rank == n)


class UNetModel(Denoiser):
    """The LDM / ADM UNet denoiser for 1-D, 2-D or 3-D latents (``layout`` picks the rank).

    ``input_blocks`` go down ``len(channel_mult)`` levels (``num_res_blocks`` residual blocks
    per level, each followed by attention when the level's downsampling factor is in
    ``attention_resolutions``), ``middle_block`` is ResBlock-attention-ResBlock, and
    ``output_blocks`` go up with skip connections. Attention is a :class:`SpatialTransformer`
    (cross-attention to ``crossattn`` when ``crossattn_dim`` is set) or, with
    ``use_spatial_transformer=False``, ADM's :class:`AttentionBlock`.

    Spatial sizes must be multiples of ``2 ** (len(channel_mult) - 1)``.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CL", "CHW", "CTHW", "CDHW")

    def __init__(
        self,
        in_channels: int = 4,  # latent channels + concat conditioning channels
        out_channels: int | None = None,  # latent channels (default: in_channels)
        model_channels: int = 320,  # width of the first level
        channel_mult: Sequence[int] = (1, 2, 4, 4),  # width multiplier per level
        num_res_blocks: int | Sequence[int] = 2,  # residual blocks per level
        attention_resolutions: Sequence[int] = (4, 2, 1),  # downsampling factors with attention
        num_heads: int = 8,  # attention heads (used when num_head_channels is None)
        num_head_channels: int | None = None,  # channels per head (overrides num_heads)
        use_new_attention_order: bool = False,  # ADM blocks: split qkv before heads
        transformer_depth: int | Sequence[int] = 1,  # transformer blocks per attention (per level)
        transformer_depth_middle: int | None = None,  # default: the last level's depth
        crossattn_dim: int | None = None,  # context width D of crossattn (B, L, D)
        vector_dim: int | None = None,  # width of the vector conditioning (B, D)
        layout: str = "CHW",  # picks the spatial rank
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,  # ADM's adaptive group norm
        use_spatial_transformer: bool | None = None,  # default: True with crossattn_dim
        use_linear_in_transformer: bool = False,  # SD 2.x: linear instead of 1x1 conv proj
        conv_resample: bool = True,  # learned up/down sampling convolutions
        resblock_updown: bool = False,  # ADM / BigGAN: resample inside residual blocks
        norm_groups: int = 32,  # group norm groups
        use_checkpoint: bool = False,  # gradient checkpointing per block
    ) -> None:
        if layout not in self.supported_layouts:
            raise ValueError(f"UNetModel: layout must be one of {self.supported_layouts}, got {layout!r}")
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult = tuple(int(m) for m in channel_mult)
        levels = len(channel_mult)
        if levels < 1:
            raise ValueError("UNetModel: channel_mult needs at least one level")
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            layouts=layouts_of_rank(layout),
            crossattn_dim=crossattn_dim,
            vector_dim=vector_dim,
            size_multiple=2 ** (levels - 1),
        )
        dims = spatial_ndim(layout)
        res_blocks = _per_level(num_res_blocks, levels, "num_res_blocks")
        depth = _per_level(transformer_depth, levels, "transformer_depth")
        depth_middle = depth[-1] if transformer_depth_middle is None else int(transformer_depth_middle)
        if use_spatial_transformer is None:
            use_spatial_transformer = crossattn_dim is not None
        if crossattn_dim is not None and not use_spatial_transformer:
            raise ValueError("UNetModel: cross-attention (crossattn_dim) needs use_spatial_transformer=True")
        self.dims = dims
        self.model_channels = model_channels
        self.channel_mult = channel_mult
        self.attention_resolutions = tuple(attention_resolutions)
        time_embed_dim = model_channels * 4

        def make_attention(ch: int, d: int) -> nn.Module:
            if num_head_channels is None:
                heads, dim_head = num_heads, ch // num_heads
            else:
                heads, dim_head = ch // num_head_channels, num_head_channels
            if heads * dim_head != ch:
                raise ValueError(
                    f"UNetModel: {ch} channels cannot be split into heads "
                    f"(num_heads={num_heads}, num_head_channels={num_head_channels})"
                )
            if use_spatial_transformer:
                return SpatialTransformer(
                    ch, heads, dim_head, depth=d, context_dim=crossattn_dim, dropout=dropout,
                    use_linear=use_linear_in_transformer, dims=dims, norm_groups=norm_groups,
                    checkpoint=use_checkpoint,
                )
            return AttentionBlock(ch, heads, norm_groups=norm_groups, checkpoint=use_checkpoint,
                                  use_new_attention_order=use_new_attention_order)

        def make_res(ch: int, out: int, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(
                ch, time_embed_dim, dropout, out, dims=dims, use_scale_shift_norm=use_scale_shift_norm,
                norm_groups=norm_groups, checkpoint=use_checkpoint, up=up, down=down,
            )

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        # nested Sequential: the SDXL key layout label_emb.0.{0,2}
        self.label_emb = (
            nn.Sequential(
                nn.Sequential(
                    nn.Linear(vector_dim, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
                )
            )
            if vector_dim is not None
            else None
        )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
        )
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(res_blocks[level]):
                layers: list[nn.Module] = [make_res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in self.attention_resolutions and depth[level] > 0:
                    layers.append(make_attention(ch, depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                down: nn.Module = (
                    make_res(ch, ch, down=True) if resblock_updown else Downsample(ch, dims, conv_resample)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2

        middle: list[nn.Module] = [make_res(ch, ch)]
        if depth_middle > 0:
            middle.append(make_attention(ch, depth_middle))
        middle.append(make_res(ch, ch))
        self.middle_block = TimestepEmbedSequential(*middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(res_blocks[level] + 1):
                layers = [make_res(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in self.attention_resolutions and depth[level] > 0:
                    layers.append(make_attention(ch, depth[level]))
                if level and i == res_blocks[level]:
                    layers.append(make_res(ch, ch, up=True) if resblock_updown else Upsample(ch, dims, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch, norm_groups),
            nn.SiLU(),
            zero_module(conv_nd(dims, ch, out_channels, 3, padding=1)),
        )

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn gradient checkpointing of every residual and attention block on or off."""
        for module in self.modules():
            if hasattr(module, "checkpoint") and isinstance(module.checkpoint, bool):
                module.checkpoint = enabled

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """(B, out_channels, *spatial), (B,), Conditioning -> (B, out_channels, *spatial)."""
        h, t, cond = self.prepare_input(x, t, cond)
        dtype = next(self.time_embed.parameters()).dtype
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dtype))  # (B, 4 mc)
        if self.label_emb is not None:
            assert cond.vector is not None  # prepare_input checked it
            emb = emb + self.label_emb(cond.vector.to(dtype))
        context = cond.crossattn
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- factory and presets

#: Named architectures; ``unet(preset=name, **overrides)``.
PRESETS: dict[str, dict[str, Any]] = {
    # LDM-KL-8-G text-to-image (Rombach et al. 2022, Tab. 14; txt2img-1p4B-eval.yaml)
    "ldm-txt2img": dict(
        in_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_heads=8, transformer_depth=1, crossattn_dim=1280,
    ),
    # Stable Diffusion 1.x (v1-inference.yaml): CLIP ViT-L/14 context
    "sd1": dict(
        in_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_heads=8, transformer_depth=1, crossattn_dim=768,
    ),
    # Stable Diffusion 2.x (v2-inference.yaml): OpenCLIP ViT-H context, 64-channel heads
    "sd2": dict(
        in_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
        attention_resolutions=(4, 2, 1), num_head_channels=64, transformer_depth=1,
        crossattn_dim=1024, use_linear_in_transformer=True,
    ),
    # SDXL base (sd_xl_base.yaml): size/crop vector conditioning of width 2816
    "sdxl": dict(
        in_channels=4, model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2,
        attention_resolutions=(4, 2), num_head_channels=64, transformer_depth=(0, 2, 10),
        crossattn_dim=2048, vector_dim=2816, use_linear_in_transformer=True,
    ),
    # LDM-VQ-4 unconditional CelebA-HQ 256 (celebahq-ldm-vq-4.yaml): ADM attention blocks
    "ldm-celebahq256": dict(
        in_channels=3, model_channels=224, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
        attention_resolutions=(8, 4, 2), num_head_channels=32,
    ),
    # ADM ImageNet 64x64 pixel model (Dhariwal & Nichol 2021, guided-diffusion flags), with
    # the class embedding replaced by a vector input (e.g. from the class_label conditioner)
    "adm-64": dict(
        in_channels=3, model_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(2, 4, 8), num_head_channels=64, use_scale_shift_norm=True,
        resblock_updown=True, use_new_attention_order=True, dropout=0.1,
    ),
}

def unet(preset: str | None = None, **config: Any) -> UNetModel:
    """Create a :class:`UNetModel`, from a named preset (see :data:`PRESETS`) updated with
    ``config``, or from ``config`` alone. An unknown key raises ``TypeError`` naming it."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown unet preset {preset!r}; available: {sorted(PRESETS)}")
    accepted = [p for p in inspect.signature(UNetModel.__init__).parameters if p != "self"]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise TypeError(f"denoiser 'unet' got unknown config key(s) {unknown}; accepted: {['preset', *accepted]}")
    return UNetModel(**{**(PRESETS[preset] if preset else {}), **config})

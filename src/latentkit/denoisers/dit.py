"""DiT: the diffusion transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with
Transformers"), for 1-D, 2-D and 3-D latents.

The latent is cut into non-overlapping patches (a stride-``patch_size`` convolution, as
timm's ``PatchEmbed``, over any number of spatial axes), position embeddings are added, and
``depth`` transformer blocks built from timm's ``Attention`` and ``Mlp`` run on the tokens.
The timestep embedding plus the ``vector`` conditioning regress the scale, shift and gate of
every block (adaLN-Zero, Sec. 3.2: the gates start at zero, so each block starts as the
identity). An optional cross-attention branch per block attends to ``crossattn`` tokens (as
in PixArt-alpha, Chen et al. 2023). Position embeddings are sinusoidal and computed for any
token grid, or learned at the training grid and interpolated to other grids.

Parameter names follow the DiT reference code (``x_embedder.proj``, ``t_embedder.mlp``,
``blocks.N.attn.qkv``, ``blocks.N.adaLN_modulation.1``, ``final_layer.linear``...).

Order of this file: blocks, model, factory, presets.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import Mlp
from torch import nn

from latentkit.denoisers.unet import layouts_of_rank
from latentkit.interfaces import Denoiser
from latentkit.layers import (
    Attention,
    conv_nd,
    maybe_checkpoint,
    sincos_pos_embed,
    timestep_embedding,
    to_tokens,
    unpatchify,
)
from latentkit.specs import Conditioning, spatial_ndim

__all__ = ["PRESETS", "DiT", "DiTBlock", "FinalLayer", "dit"]


# --------------------------------------------------------------------------- blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Adaptive layer-norm modulation ``x * (1 + scale) + shift`` (DiT Sec. 3.2), with
    (B, D) shift and scale broadcast over the tokens of x (B, N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class GELUTanh(nn.GELU):
    """GELU with the tanh approximation (as in DiT's MLPs)."""

    def __init__(self) -> None:
        super().__init__(approximate="tanh")


class TimestepEmbedder(nn.Module):
    """Timestep (B,) -> (B, hidden): sinusoidal features, then a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, hidden_size)."""
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))  # type: ignore[no-any-return]


class PatchEmbed(nn.Module):
    """Non-overlapping patches of an N-d input as tokens: a convolution with kernel and stride
    ``patch_size`` (timm's ``PatchEmbed`` for any number of spatial axes)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, dims: int) -> None:
        super().__init__()
        self.proj = conv_nd(dims, in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(B, C, *spatial) -> tokens (B, N, hidden) and the token grid."""
        return to_tokens(self.proj(x))


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero (Peebles & Xie 2023, Fig. 3): modulated, gated
    self-attention and MLP branches; optionally a cross-attention branch to the context
    (zero-initialised output, so the block still starts as the identity)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        crossattn_dim: int | None = None,  # None: no cross-attention branch
        qk_norm: bool = False,  # layer-normalised queries and keys
        checkpoint: bool = False,  # gradient checkpointing of this block
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = TimmAttention(hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=qk_norm,
                                  norm_layer=nn.LayerNorm)
        if crossattn_dim is not None:
            self.norm_cross: nn.Module | None = nn.LayerNorm(hidden_size, eps=1e-6)
            self.cross_attn: Attention | None = Attention(
                hidden_size, crossattn_dim, num_heads, hidden_size // num_heads, qkv_bias=True
            )
        else:
            self.norm_cross = self.cross_attn = None
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=GELUTanh)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def _forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        if self.cross_attn is not None and self.norm_cross is not None:
            x = x + self.cross_attn(self.norm_cross(x), context)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, N, D), conditioning (B, D), optional context (B, L, crossattn_dim)."""
        return maybe_checkpoint(self._forward, x, c, context, enabled=self.checkpoint)


class FinalLayer(nn.Module):
    """Modulated layer norm and a linear map from tokens to patches (DiT ``FinalLayer``)."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, N, D), (B, D) -> (B, N, patch_volume * out_channels)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- model


class DiT(Denoiser):
    """Diffusion transformer (Peebles & Xie 2023) on 1-D, 2-D or 3-D latents.

    Spatial sizes must be multiples of ``patch_size``. ``pos_embed="sincos"`` computes fixed
    sinusoidal embeddings for whatever token grid the input has; ``pos_embed="learned"``
    learns them on the grid of ``input_size`` and interpolates them (linear / bilinear /
    trilinear) to other grids.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CL", "CHW", "CTHW", "CDHW")

    def __init__(
        self,
        in_channels: int = 4,  # latent channels + concat conditioning channels
        out_channels: int | None = None,  # latent channels (default: in_channels)
        hidden_size: int = 384,  # token width D
        depth: int = 12,  # number of DiT blocks
        num_heads: int = 6,
        patch_size: int = 2,  # patch edge, on every spatial axis
        mlp_ratio: float = 4.0,
        crossattn_dim: int | None = None,  # context width of crossattn (B, L, D)
        vector_dim: int | None = None,  # width of the vector conditioning (B, D)
        layout: str = "CHW",  # picks the spatial rank
        pos_embed: str = "sincos",  # "sincos" (computed per grid) or "learned"
        input_size: int | Sequence[int] = 32,  # training latent size (learned pos. embeddings)
        qk_norm: bool = False,
        use_checkpoint: bool = False,  # gradient checkpointing per block
    ) -> None:
        if layout not in self.supported_layouts:
            raise ValueError(f"DiT: layout must be one of {self.supported_layouts}, got {layout!r}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"DiT: pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        if hidden_size % num_heads:
            raise ValueError(f"DiT: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        out_channels = in_channels if out_channels is None else out_channels
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            layouts=layouts_of_rank(layout),
            crossattn_dim=crossattn_dim,
            vector_dim=vector_dim,
            size_multiple=patch_size,
        )
        dims = spatial_ndim(layout)
        self.dims = dims
        self.hidden_size = hidden_size
        self.patch_size = (patch_size,) * dims
        self.pos_embed_type = pos_embed
        size = (input_size,) * dims if isinstance(input_size, int) else tuple(int(s) for s in input_size)
        if len(size) != dims or any(s % patch_size for s in size):
            raise ValueError(f"DiT: input_size {input_size} must give {dims} multiples of patch_size {patch_size}")
        self.train_grid = tuple(s // patch_size for s in size)

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size, dims)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.vector_embedder = (
            nn.Sequential(nn.Linear(vector_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
            if vector_dim is not None
            else None
        )
        if pos_embed == "learned":
            init = sincos_pos_embed(self.train_grid, hidden_size)[None]  # (1, N, D)
            self.pos_embed: nn.Parameter | None = nn.Parameter(init)
        else:
            self.pos_embed = None
        self._pos_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.blocks = nn.ModuleList(
            [DiTBlock(hidden_size, num_heads, mlp_ratio, crossattn_dim, qk_norm, use_checkpoint) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear layers and patch projection, N(0, 0.02)
        timestep / vector MLPs, and zero adaLN modulations and output layer (adaLN-Zero), so
        every block starts as the identity; cross-attention outputs also start at zero."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        if self.x_embedder.proj.bias is not None:
            nn.init.zeros_(self.x_embedder.proj.bias)
        for mlp in (self.t_embedder.mlp, self.vector_embedder):
            if mlp is not None:
                for layer in mlp:
                    if isinstance(layer, nn.Linear):
                        nn.init.normal_(layer.weight, std=0.02)
        zero: list[nn.Module] = [self.final_layer.linear]
        for module in self.modules():
            if isinstance(module, (DiTBlock, FinalLayer)):
                zero.append(module.adaLN_modulation[-1])
            if isinstance(module, DiTBlock) and module.cross_attn is not None:
                zero.append(module.cross_attn.to_out[0])
        for layer in zero:
            for p in layer.parameters():
                nn.init.zeros_(p)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn gradient checkpointing of every block on or off."""
        for block in self.modules():
            if isinstance(block, DiTBlock):
                block.checkpoint = enabled

    def position_embedding(
        self, grid: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Position embeddings (1, prod(grid), hidden_size) for a token grid of any size."""
        grid = tuple(grid)
        if self.pos_embed is None:
            # fixed values: computed once per grid, device and dtype (not part of the state dict)
            key = (grid, str(device), dtype)
            cached = self._pos_cache.get(key)
            if cached is None:
                cached = sincos_pos_embed(grid, self.hidden_size, device=device, dtype=dtype)[None]
                self._pos_cache[key] = cached
            return cached
        if grid == self.train_grid:
            return self.pos_embed.to(dtype)
        pe = self.pos_embed.transpose(1, 2).unflatten(2, self.train_grid)  # (1, D, *train_grid)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.dims]
        pe = F.interpolate(pe, size=grid, mode=mode, align_corners=False)
        return pe.flatten(2).transpose(1, 2).to(dtype)  # (1, N, D)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """(B, out_channels, *spatial), (B,), Conditioning -> (B, out_channels, *spatial)."""
        h, t, cond = self.prepare_input(x, t, cond)
        tokens, grid = self.x_embedder(h)  # (B, N, D)
        tokens = tokens + self.position_embedding(grid, tokens.device, tokens.dtype)
        c = self.t_embedder(t)  # (B, D)
        if self.vector_embedder is not None:
            assert cond.vector is not None  # prepare_input checked it
            c = c + self.vector_embedder(cond.vector.to(c.dtype))
        context = cond.crossattn
        for block in self.blocks:
            tokens = block(tokens, c, context)
        tokens = self.final_layer(tokens, c)  # (B, N, prod(patch) * C_out)
        return unpatchify(tokens, grid, self.patch_size).to(x.dtype)  # (B, C_out, *spatial)


# --------------------------------------------------------------------------- factory and presets

#: DiT model sizes (Peebles & Xie 2023, Tab. 1) with their patch sizes: ``dit(preset="DiT-XL/2")``.
PRESETS: dict[str, dict[str, Any]] = {
    f"DiT-{name}/{p}": dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=p)
    for name, depth, hidden, heads in (
        ("S", 12, 384, 6),
        ("B", 12, 768, 12),
        ("L", 24, 1024, 16),
        ("XL", 28, 1152, 16),
    )
    for p in (2, 4, 8)
}

def dit(preset: str | None = None, **config: Any) -> DiT:
    """Create a :class:`DiT`, from a named preset (see :data:`PRESETS`, e.g. ``"DiT-XL/2"``)
    updated with ``config``, or from ``config`` alone. An unknown key raises ``TypeError``."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown dit preset {preset!r}; available: {sorted(PRESETS)}")
    accepted = [p for p in inspect.signature(DiT.__init__).parameters if p != "self"]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise TypeError(f"denoiser 'dit' got unknown config key(s) {unknown}; accepted: {['preset', *accepted]}")
    return DiT(**{**(PRESETS[preset] if preset else {}), **config})

"""Shared building blocks for the denoiser backbones, written once for any number of spatial
axes (1-D signals, 2-D images, 3-D video and volumes).

* convolutions and pooling chosen by spatial rank (:func:`conv_nd`, :func:`avg_pool_nd`);
* group normalisation computed in float32 (:class:`GroupNorm32`, as in LDM / ADM);
* sinusoidal timestep embeddings (Ho et al. 2020, after Vaswani et al. 2017) and N-d
  sinusoidal position embeddings (the 2-D case is DiT's / MAE's ``get_2d_sincos_pos_embed``);
* multi-head attention through :func:`torch.nn.functional.scaled_dot_product_attention`:
  self- and cross-attention (:class:`Attention`), the LDM transformer block with GEGLU
  feed-forward (:class:`BasicTransformerBlock`), the LDM spatial transformer
  (:class:`SpatialTransformer`) and ADM's attention block (:class:`AttentionBlock`), each over
  any number of spatial axes through :func:`to_tokens` / :func:`from_tokens`.

Module and parameter names follow the original LDM code (``openaimodel.py`` and
``attention.py`` of CompVis/latent-diffusion), so state dicts in that format map key by key.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import einops
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

__all__ = [
    "GEGLU",
    "Attention",
    "AttentionBlock",
    "BasicTransformerBlock",
    "FeedForward",
    "GroupNorm32",
    "SpatialTransformer",
    "attention",
    "avg_pool_nd",
    "conv_nd",
    "from_tokens",
    "maybe_checkpoint",
    "normalization",
    "patchify",
    "sincos_pos_embed",
    "timestep_embedding",
    "to_tokens",
    "unpatchify",
    "zero_module",
]

_CONV: dict[int, type[_ConvNd]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOL: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _check_dims(dims: int) -> None:
    if dims not in _CONV:
        raise ValueError(f"dims must be 1, 2 or 3 spatial axes, got {dims!r}")


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> _ConvNd:
    """``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` for ``dims`` spatial axes (same arguments)."""
    _check_dims(dims)
    return _CONV[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """``nn.AvgPool1d`` / ``AvgPool2d`` / ``AvgPool3d`` for ``dims`` spatial axes."""
    _check_dims(dims)
    return _POOL[dims](*args, **kwargs)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it (zero-initialised output layers make a
    residual branch start as the identity, as in ADM, Dhariwal & Nichol 2021)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in float32 and cast back (LDM/ADM ``GroupNorm32``), so
    half-precision activations keep accurate statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> same shape and dtype."""
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int, groups: int = 32, eps: float = 1e-5) -> GroupNorm32:
    """The normalisation layer of the UNet: ``GroupNorm32(groups, channels)``.

    Raises ``ValueError`` when ``groups`` does not divide ``channels``.
    """
    if channels % groups:
        raise ValueError(
            f"group normalisation needs channels divisible by norm_groups; got {channels} "
            f"channels and {groups} groups (choose channel widths that are multiples of "
            f"{groups}, or set norm_groups)"
        )
    return GroupNorm32(groups, channels, eps=eps)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim) in float32.

    ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = max_period ** (-i / (dim // 2))`` for
    ``i < dim // 2`` (Vaswani et al. 2017, Sec. 3.5, as used by DDPM, ADM, LDM and DiT; cosines
    first, as in LDM's ``timestep_embedding``). An odd ``dim`` is zero-padded.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed(
    grid: Sequence[int],
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Fixed sinusoidal position embedding of an N-d token grid, shape (prod(grid), dim).

    Each spatial axis gets ``dim // n`` channels (rounded down to even), holding
    ``[sin(p * w_i), cos(p * w_i)]`` of its integer position ``p`` with
    ``w_i = max_period ** (-i / (d / 2))``; leftover channels are zero. Axes are taken last
    first, so the 2-D case equals DiT's / MAE's ``get_2d_sincos_pos_embed`` (width, then
    height). Tokens are ordered row-major over ``grid`` (as :func:`to_tokens` makes them).
    The embedding is computed for any grid, so a model sees sensible positions at sizes
    other than its training size.
    """
    n = len(grid)
    per_axis = (dim // n) // 2 * 2
    if per_axis == 0:
        raise ValueError(f"sincos_pos_embed: dim {dim} is too small for {n} spatial axes")
    half = per_axis // 2
    omega = 1.0 / max_period ** (torch.arange(half, dtype=torch.float64, device=device) / half)
    coords = torch.meshgrid(
        *[torch.arange(s, dtype=torch.float64, device=device) for s in grid], indexing="ij"
    )
    parts = []
    for axis in reversed(range(n)):
        pos = coords[axis].reshape(-1)[:, None] * omega[None]  # (N, half)
        parts += [torch.sin(pos), torch.cos(pos)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < dim:
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.to(dtype)


def to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, *spatial) -> tokens (B, N, C) with N = prod(spatial), and the spatial shape.

    For channels-last inputs this is a view (no copy)."""
    return einops.rearrange(x, "b c ... -> b ... c").flatten(1, -2), tuple(x.shape[2:])


def from_tokens(tokens: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Tokens (B, N, C) -> (B, C, *spatial); the inverse of :func:`to_tokens` (the result is
    channels-last in memory, which convolutions accept as is)."""
    return tokens.unflatten(1, tuple(spatial)).movedim(-1, 1)


@functools.cache
def _patch_patterns(n: int) -> tuple[str, str]:
    grid = " ".join(f"g{i}" for i in range(n))
    patch = " ".join(f"p{i}" for i in range(n))
    image = " ".join(f"(g{i} p{i})" for i in range(n))
    return f"b c {image}", f"b ({grid}) ({patch} c)"


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, prod(patch_size) * C): non-overlapping patches as tokens,
    row-major over the patch grid, each patch flattened (patch axes, then channels)."""
    image, tokens = _patch_patterns(len(patch_size))
    return einops.rearrange(x, f"{image} -> {tokens}", **{f"p{i}": p for i, p in enumerate(patch_size)})


def unpatchify(tokens: torch.Tensor, grid: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """(B, N, prod(patch_size) * C) -> (B, C, *(grid * patch_size)); inverse of :func:`patchify`."""
    image, tok = _patch_patterns(len(patch_size))
    sizes = {f"g{i}": g for i, g in enumerate(grid)} | {f"p{i}": p for i, p in enumerate(patch_size)}
    return einops.rearrange(tokens, f"{tok} -> {image}", **sizes)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention, softmax(q k^T / sqrt(d)) v (Vaswani et al.
    2017, Eq. 1), on (B, N, heads * d) queries and (B, L, heads * d) keys / values.

    Runs :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
    kernels where available). Returns (B, N, heads * d_v).
    """
    q, k, v = (einops.rearrange(a, "b n (h d) -> b h n d", h=heads) for a in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return einops.rearrange(out, "b h n d -> b n (h d)")


def maybe_checkpoint(fn: Callable[..., torch.Tensor], *args: Any, enabled: bool) -> torch.Tensor:
    """``fn(*args)``, recomputed in the backward pass instead of storing activations when
    ``enabled`` and gradients are on (gradient checkpointing, Chen et al. 2016)."""
    if enabled and torch.is_grad_enabled():
        out: torch.Tensor = _torch_checkpoint(fn, *args, use_reentrant=False)
        return out
    return fn(*args)


class Attention(nn.Module):
    """Multi-head self-attention, or cross-attention to a context (LDM ``CrossAttention``).

    ``forward(x, context=None)``: queries from ``x`` (B, N, query_dim); keys and values from
    ``context`` (B, L, context_dim), or from ``x`` when ``context`` is ``None``.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,  # None: self-attention
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        qkv_bias: bool = False,  # LDM: no bias on q, k, v
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, query_dim), optional (B, L, context_dim) -> (B, N, query_dim)."""
        context = x if context is None else context.to(x.dtype)
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)  # type: ignore[no-any-return]


class GEGLU(nn.Module):
    """Gated GELU projection, ``a * gelu(b)`` with ``[a, b] = proj(x)`` (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim_in) -> (..., dim_out)."""
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer feed-forward with a GEGLU input projection (LDM ``FeedForward`` with
    ``glu=True``): ``dim -> mult * dim -> dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return self.net(x)  # type: ignore[no-any-return]


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block of LDM: self-attention, cross-attention to the context (when
    ``context_dim`` is given), GEGLU feed-forward, each a residual branch."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,  # None: no cross-attention branch
        dropout: float = 0.0,
        checkpoint: bool = False,  # gradient checkpointing of this block
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.attn1 = Attention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, dropout) if context_dim else None
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim) if context_dim else None
        self.norm3 = nn.LayerNorm(dim)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None and self.norm2 is not None:
            if context is None:
                raise ValueError("BasicTransformerBlock with cross-attention needs a context")
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, N, dim), context (B, L, context_dim) -> (B, N, dim)."""
        return maybe_checkpoint(self._forward, x, context, enabled=self.checkpoint)


class SpatialTransformer(nn.Module):
    """LDM's spatial transformer over any number of spatial axes: group norm, 1x1 projection
    in (a convolution, or a linear layer on tokens as in SD 2.x), ``depth`` transformer
    blocks on the flattened positions, zero-initialised projection out, residual."""

    def __init__(
        self,
        in_channels: int,
        heads: int,
        dim_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        use_linear: bool = False,  # SD 2.x style token-wise projections
        dims: int = 2,  # spatial axes
        norm_groups: int = 32,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = normalization(in_channels, norm_groups, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else conv_nd(dims, in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, checkpoint)
                for _ in range(depth)
            ]
        )
        proj_out = nn.Linear(inner, in_channels) if use_linear else conv_nd(dims, inner, in_channels, 1)
        self.proj_out = zero_module(proj_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *spatial), context (B, L, context_dim) -> (B, C, *spatial)."""
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h, spatial = to_tokens(h)  # (B, N, inner)
        if self.use_linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.use_linear:
            h = self.proj_out(h)
        h = from_tokens(h, spatial)  # (B, C, *spatial)
        if not self.use_linear:
            h = self.proj_out(h)
        return x + h


class AttentionBlock(nn.Module):
    """ADM's self-attention block (Dhariwal & Nichol 2021): group norm, fused qkv 1x1
    convolution, multi-head attention over all positions, zero-initialised projection.

    Heads read the qkv channels in LDM's default ("legacy") order: the 3C channels are split
    into heads first, then into q, k, v within each head (``QKVAttentionLegacy``); with
    ``use_new_attention_order`` into q, k, v first, then heads (ADM's ``QKVAttention``).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        norm_groups: int = 32,
        checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.qkv_pattern = (
            "b (three h d) n -> three b h n d" if use_new_attention_order else "b (h three d) n -> three b h n d"
        )
        if channels % heads:
            raise ValueError(f"AttentionBlock: {channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.checkpoint = checkpoint
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # (B, 3C, N)
        q, k, v = einops.rearrange(qkv, self.qkv_pattern, h=self.heads, three=3)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        h = self.proj_out(einops.rearrange(h, "b h n d -> b (h d) n"))
        return x + h.reshape(x.shape)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *spatial); ``context`` is ignored (self-attention)."""
        return maybe_checkpoint(self._forward, x, enabled=self.checkpoint)

"""MMDiT: the multimodal diffusion transformer of Stable Diffusion 3 (Esser et al. 2024,
"Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", Sec. 4 and
Fig. 2), with the SD3.5 additions (QK RMS-norm, MMDiT-X dual attention).

The latent is cut into patches (a stride-``patch_size`` convolution over any number of
spatial axes) and given fixed sin-cos position embeddings; the ``crossattn`` tokens go
through a linear ``context_embedder``. Every joint block keeps separate weights for the two
streams (image and text: adaLN modulation, q/k/v projections, output projection, MLP) and
runs one attention over the concatenation of both token sets. The timestep embedding plus
the embedded pooled ``vector`` drive the adaLN-Zero modulation of both streams (DiT Sec. 3.2:
the gates start at zero, so every block starts as the identity). The last block is
"context pre only": its text output would be discarded, so its text stream only supplies
keys and values (no output projection, no MLP, a two-way (shift, scale) modulation, and its
queries are not computed at all). A final modulated layer norm and a linear map return the
patches.

SD3 reads its position embeddings from a fixed ``pos_embed_max_size`` square grid (positions
spaced ``(input_size / patch_size) / pos_embed_max_size`` apart) and crops the centre of it
for each input; with ``pos_embed_max_size=None`` they are computed for any grid instead (unit
spacing, as in DiT). SD3.5 normalises queries and keys per head with RMSNorm (``qk_norm``) and
adds, in the blocks listed in ``dual_attention_layers``, a second self-attention over the
image tokens alone (MMDiT-X), modulated and gated like the first.

Parameter names follow Stability AI's reference code (``mmditx.py``: ``x_embedder.proj``,
``t_embedder.mlp``, ``y_embedder.mlp``, ``context_embedder``,
``joint_blocks.N.{x_block,context_block}.{adaLN_modulation.1,attn.qkv,attn.ln_q,attn.proj,
mlp.fc1}``, ``final_layer.*``, ``pos_embed``), so an SD3 checkpoint maps key by key after
stripping ``model.diffusion_model.``; :func:`from_diffusers_state_dict` and
:func:`to_diffusers_state_dict` translate diffusers' ``SD3Transformer2DModel`` state dicts.

Order of this file: blocks, model, diffusers key map, factory, presets.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, cast

import einops
import torch
import torch.nn.functional as F
from timm.layers import Mlp, RmsNorm
from torch import nn

from latentkit.denoisers.dit import FinalLayer, GELUTanh, PatchEmbed, TimestepEmbedder, modulate
from latentkit.denoisers.unet import layouts_of_rank
from latentkit.errors import CheckpointError, ConfigError, ShapeError
from latentkit.interfaces import Denoiser
from latentkit.layers import maybe_checkpoint, sincos_pos_embed, unpatchify
from latentkit.specs import Conditioning, spatial_ndim

__all__ = [
    "PRESETS",
    "JointAttention",
    "JointBlock",
    "MMDiT",
    "QKNorm",
    "StreamBlock",
    "UnusedQueryNorm",
    "config_from_diffusers",
    "from_diffusers_state_dict",
    "mmdit",
    "to_diffusers_state_dict",
]

QKV = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]  # queries, keys, values


# --------------------------------------------------------------------------- blocks


def scaled_sincos_pos_embed(
    grid: Sequence[int],
    dim: int,
    spacing: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """:func:`latentkit.layers.sincos_pos_embed` with positions ``spacing`` apart instead of
    one, shape (prod(grid), dim): SD3's table puts ``pos_embed_max_size`` positions on the
    extent of ``input_size / patch_size`` tokens. Each axis is embedded once and broadcast, so
    a large table costs no float64 copy of itself."""
    n = len(grid)
    per_axis = (dim // n) // 2 * 2
    if per_axis == 0:
        raise ConfigError(f"MMDiT: hidden_size {dim} is too small for {n} spatial axes of position embedding")
    half = per_axis // 2
    omega = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64, device=device) / half)
    parts = []
    for axis in reversed(range(n)):  # last axis first: width, then height (as DiT / SD3)
        pos = torch.arange(grid[axis], dtype=torch.float64, device=device) * spacing
        angles = pos[:, None] * omega[None]  # (g, half)
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).to(dtype)  # (g, per_axis)
        shape = [1] * n
        shape[axis] = grid[axis]
        parts.append(emb.reshape(*shape, per_axis).expand(*grid, per_axis))
    table = torch.cat(parts, dim=-1).reshape(-1, n * per_axis)  # (N, n * per_axis)
    return F.pad(table, (0, dim - table.shape[1])) if table.shape[1] < dim else table


class VectorEmbedder(nn.Module):
    """Pooled text vector (B, vector_dim) -> (B, hidden): a two-layer SiLU MLP (SD3's
    ``y_embedder``)."""

    def __init__(self, vector_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(vector_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """(B, vector_dim) -> (B, hidden_size)."""
        return self.mlp(y)  # type: ignore[no-any-return]


class QKNorm(RmsNorm):
    """timm's ``RmsNorm`` over the channels of one head, its weight cast to the input's dtype:
    under autocast the queries and keys arrive in bf16 / fp16, and the fused kernel needs
    one dtype for input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., head_dim) -> same shape and dtype."""
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class UnusedQueryNorm(nn.Module):
    """The query norm of a pre-only stream. Its queries would only produce the discarded
    text output, so they are never computed; SD3.5's checkpoints still carry the weight,
    which is kept as a buffer (loaded and saved, not trained)."""

    weight: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(dim))


class JointAttention(nn.Module):
    """One stream's share of an attention: fused q/k/v projection, optional per-head RMSNorm
    of queries and keys (SD3.5), and the output projection. A ``pre_only`` stream supplies
    keys and values only (no queries, no output projection)."""

    def __init__(
        self, hidden_size: int, num_heads: int, qk_norm: bool = False, pre_only: bool = False
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pre_only = pre_only
        head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)  # q, k, v stacked (SD3's layout)
        query_norm = UnusedQueryNorm(head_dim) if pre_only else QKNorm(head_dim, eps=1e-6)
        self.ln_q: nn.Module = query_norm if qk_norm else nn.Identity()
        self.ln_k: nn.Module = QKNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj: nn.Linear | None = None if pre_only else nn.Linear(hidden_size, hidden_size)

    def heads(self, x: torch.Tensor) -> QKV:
        """Tokens (B, N, D) -> queries (None when ``pre_only``), keys, values, each
        (B, heads, N, D / heads)."""
        if self.pre_only:
            d = self.qkv.out_features // 3
            kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:])  # the query rows are unused
            k, v = einops.rearrange(kv, "b n (two h d) -> two b h n d", two=2, h=self.num_heads)
            return None, self.ln_k(k), v
        q, k, v = einops.rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return self.ln_q(q), self.ln_k(k), v

    def out(self, attended: torch.Tensor) -> torch.Tensor:
        """Attention output (B, N, D) through the output projection."""
        assert self.proj is not None, "a pre-only stream has no attention output"
        return self.proj(attended)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over this stream alone (SD3.5's second attention), (B, N, D) -> (B, N, D)."""
        return self.out(cast(torch.Tensor, attend([self.heads(x)])[0]))


def attend(streams: Sequence[QKV]) -> list[torch.Tensor | None]:
    """Joint attention (Esser et al. 2024, Fig. 2b): the queries of every stream attend to the
    keys and values of all streams together (each (B, heads, N_i, d)); returns per-stream
    outputs (B, N_i, D), None for a stream without queries (a query's output does not depend
    on the other queries, so leaving some out changes nothing else)."""
    k = torch.cat([s[1] for s in streams], dim=2)
    v = torch.cat([s[2] for s in streams], dim=2)
    asking = [s[0] for s in streams if s[0] is not None]
    out = F.scaled_dot_product_attention(torch.cat(asking, dim=2), k, v)  # (B, heads, sum N_i, d)
    parts = iter(einops.rearrange(out, "b h n d -> b n (h d)").split([q.shape[2] for q in asking], dim=1))
    return [None if s[0] is None else next(parts) for s in streams]


class StreamBlock(nn.Module):
    """One stream of a joint block (the reference code's ``DismantledBlock``): adaLN-Zero
    modulation, the stream's attention projections and its gated MLP. ``pre_only`` keeps only
    the part before the attention (shift and scale of the first norm, keys and values);
    ``dual_attention`` adds SD3.5's second, image-only self-attention with its own shift,
    scale and gate (nine modulation outputs instead of six)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        pre_only: bool = False,  # last text stream: keys and values only
        qk_norm: bool = False,
        dual_attention: bool = False,  # SD3.5 MMDiT-X second self-attention
    ) -> None:
        super().__init__()
        if pre_only and dual_attention:
            raise ConfigError("MMDiT: a pre-only stream cannot have a second attention")
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = JointAttention(hidden_size, num_heads, qk_norm, pre_only)
        self.attn2 = JointAttention(hidden_size, num_heads, qk_norm) if dual_attention else None
        if pre_only:
            self.norm2: nn.Module | None = None
            self.mlp: Mlp | None = None
        else:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=GELUTanh)
        self.n_mod = 2 if pre_only else 9 if dual_attention else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.n_mod * hidden_size))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor) -> tuple[QKV, tuple[torch.Tensor, ...]]:
        """Tokens (B, N, D), conditioning (B, D) -> this stream's q, k, v and what
        :meth:`post_attention` needs."""
        mods = self.adaLN_modulation(c).chunk(self.n_mod, dim=1)
        h = self.norm1(x)
        qkv = self.attn.heads(modulate(h, mods[0], mods[1]))
        return qkv, (x, h, *mods)

    def post_attention(self, attended: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """This stream's attention output (B, N, D) -> the block's output tokens (B, N, D)."""
        x, h, _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp, *second = state
        assert self.mlp is not None and self.norm2 is not None, "a pre-only stream has no output"
        x = x + gate_msa.unsqueeze(1) * self.attn.out(attended)
        if self.attn2 is not None:
            shift_msa2, scale_msa2, gate_msa2 = second
            x = x + gate_msa2.unsqueeze(1) * self.attn2(modulate(h, shift_msa2, scale_msa2))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """MMDiT block (Esser et al. 2024, Fig. 2b): an image stream and (with a context) a text
    stream, each with its own weights, joined in one attention over both token sets."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        has_context: bool = True,  # False: image tokens only
        context_pre_only: bool = False,  # the last block: the text output is not needed
        qk_norm: bool = False,
        dual_attention: bool = False,
        checkpoint: bool = False,  # gradient checkpointing of this block
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.x_block = StreamBlock(
            hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm, dual_attention=dual_attention
        )
        self.context_block = (
            StreamBlock(hidden_size, num_heads, mlp_ratio, pre_only=context_pre_only, qk_norm=qk_norm)
            if has_context
            else None
        )

    def _forward(
        self, context: torch.Tensor | None, x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        x_qkv, x_state = self.x_block.pre_attention(x, c)
        if self.context_block is None:
            return None, self.x_block.post_attention(cast(torch.Tensor, attend([x_qkv])[0]), x_state)
        assert context is not None, "a joint block with a text stream needs the context tokens"
        c_qkv, c_state = self.context_block.pre_attention(context, c)
        x_att, c_att = attend([x_qkv, c_qkv])  # (B, N, D), (B, L, D) or None when pre-only
        x = self.x_block.post_attention(cast(torch.Tensor, x_att), x_state)
        return (None if c_att is None else self.context_block.post_attention(c_att, c_state)), x

    def forward(
        self, context: torch.Tensor | None, x: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Context tokens (B, L, D) or None, image tokens (B, N, D), conditioning (B, D) ->
        (context, image tokens); the context is None after a pre-only text stream."""
        # maybe_checkpoint is typed for one output; torch's checkpoint passes the pair through
        fn = cast(Any, self._forward)
        out = maybe_checkpoint(fn, context, x, c, enabled=self.checkpoint)
        return cast(tuple[torch.Tensor | None, torch.Tensor], out)


# --------------------------------------------------------------------------- model


class MMDiT(Denoiser):
    """Multimodal diffusion transformer (SD3, Esser et al. 2024) on 1-D, 2-D or 3-D latents.

    Spatial sizes must be multiples of ``patch_size``; with ``pos_embed_max_size`` the token
    grid must also fit in the position table (at most ``pos_embed_max_size`` tokens per axis).
    ``crossattn`` tokens form the text stream (absent without ``crossattn_dim``: the model
    then runs on image tokens only); ``vector`` (the pooled text embedding) is added to the
    timestep embedding (absent without ``vector_dim``). The noise-level input ``t`` is used as
    given (SD3: the flow-matching time times 1000).
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CL", "CHW", "CTHW", "CDHW")
    pos_embed: torch.Tensor | None

    def __init__(
        self,
        in_channels: int = 16,  # latent channels + concat conditioning channels
        out_channels: int | None = None,  # latent channels (default: in_channels)
        hidden_size: int = 1536,  # token width D of both streams (SD3: 64 * depth)
        depth: int = 24,  # number of joint blocks
        num_heads: int = 24,  # attention heads (head width hidden_size / num_heads)
        patch_size: int = 2,  # patch edge, on every spatial axis
        mlp_ratio: float = 4.0,  # MLP width / hidden_size
        crossattn_dim: int | None = None,  # width of the crossattn tokens (SD3: 4096); None: no text stream
        vector_dim: int | None = None,  # width of the pooled vector (SD3: 2048); None: no y_embedder
        layout: str = "CHW",  # picks the spatial rank
        pos_embed_max_size: int | None = None,  # side of SD3's position table, centre-cropped; None: any grid
        input_size: int = 64,  # training latent size (SD3: 128); sets the table's position spacing
        qk_norm: bool = False,  # per-head RMSNorm of queries and keys (SD3.5)
        dual_attention_layers: Sequence[int] = (),  # blocks with SD3.5's second image self-attention
        use_checkpoint: bool = False,  # gradient checkpointing per block
    ) -> None:
        if layout not in self.supported_layouts:
            raise ConfigError(f"MMDiT: layout must be one of {self.supported_layouts}, got {layout!r}")
        if hidden_size % num_heads:
            raise ConfigError(f"MMDiT: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        dual = sorted({int(i) for i in dual_attention_layers})
        if any(not 0 <= i < depth for i in dual):
            raise ConfigError(f"MMDiT: dual_attention_layers {tuple(dual_attention_layers)} must be block "
                              f"indices in 0..{depth - 1}")
        if pos_embed_max_size is not None and pos_embed_max_size < 1:
            raise ConfigError(
                f"MMDiT: pos_embed_max_size must be a positive int or None, got {pos_embed_max_size}"
            )
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
        self.pos_embed_max_size = pos_embed_max_size
        self.dual_attention_layers = tuple(dual)

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size, dims)
        if pos_embed_max_size is not None:
            # SD3's table: positions of (input_size / patch_size) tokens stretched over the
            # table side; a buffer, so that a checkpoint's table is loaded as it was trained.
            spacing = (input_size // patch_size) / pos_embed_max_size
            table = scaled_sincos_pos_embed((pos_embed_max_size,) * dims, hidden_size, spacing)
            self.register_buffer("pos_embed", table[None])  # (1, max_size ** dims, D)
        else:
            self.pos_embed = None
        self._pos_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = VectorEmbedder(vector_dim, hidden_size) if vector_dim is not None else None
        self.context_embedder = nn.Linear(crossattn_dim, hidden_size) if crossattn_dim is not None else None
        has_context = crossattn_dim is not None
        self.joint_blocks = nn.ModuleList(
            [
                JointBlock(hidden_size, num_heads, mlp_ratio, has_context, context_pre_only=i == depth - 1,
                           qk_norm=qk_norm, dual_attention=i in dual, checkpoint=use_checkpoint)
                for i in range(depth)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's / SD3's initialisation: Xavier-uniform linear layers and patch projection,
        N(0, 0.02) timestep / vector MLPs, and zero adaLN modulations and output layer
        (adaLN-Zero): every block starts as the identity and the model outputs zeros."""

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
        for embedder in (self.t_embedder, self.y_embedder):
            if embedder is not None:
                for layer in embedder.mlp:
                    if isinstance(layer, nn.Linear):
                        nn.init.normal_(layer.weight, std=0.02)
        zero: list[nn.Module] = [self.final_layer.linear]
        for module in self.modules():
            if isinstance(module, (StreamBlock, FinalLayer)):
                zero.append(module.adaLN_modulation[-1])
        for layer in zero:
            for p in layer.parameters():
                nn.init.zeros_(p)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn gradient checkpointing of every joint block on or off."""
        for block in self.joint_blocks:
            cast(JointBlock, block).checkpoint = enabled

    def position_embedding(
        self, grid: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Position embeddings (1, prod(grid), hidden_size) for a token grid: the centre crop
        of the table (SD3's ``cropped_pos_embed``) or, without a table, computed for the grid."""
        grid = tuple(grid)
        if self.pos_embed is None:
            # fixed values: computed once per grid, device and dtype (not part of the state dict)
            key = (grid, str(device), dtype)
            cached = self._pos_cache.get(key)
            if cached is None:
                cached = sincos_pos_embed(grid, self.hidden_size, device=device, dtype=dtype)[None]
                self._pos_cache[key] = cached
            return cached
        side = cast(int, self.pos_embed_max_size)
        if any(g > side for g in grid):
            largest = side * self.patch_size[0]
            raise ShapeError(
                f"MMDiT.forward: the latent gives a token grid {grid}, larger than pos_embed_max_size "
                f"{side} on some axis; latents may be at most {largest} per axis (build with a larger "
                f"pos_embed_max_size, or pos_embed_max_size=None for any size)"
            )
        table = self.pos_embed.reshape(1, *([side] * self.dims), self.hidden_size)
        crop = tuple(slice((side - g) // 2, (side - g) // 2 + g) for g in grid)
        return table[(slice(None), *crop)].reshape(1, -1, self.hidden_size).to(dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """(B, out_channels, *spatial), (B,), Conditioning -> (B, out_channels, *spatial)."""
        h, t, cond = self.prepare_input(x, t, cond)
        tokens, grid = self.x_embedder(h)  # (B, N, D)
        tokens = tokens + self.position_embedding(grid, tokens.device, tokens.dtype)
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            assert cond.vector is not None  # prepare_input checked it
            c = c + self.y_embedder(cond.vector.to(c.dtype))
        context = None
        if self.context_embedder is not None:
            assert cond.crossattn is not None  # prepare_input checked it
            context = self.context_embedder(cond.crossattn.to(tokens.dtype))  # (B, L, D)
        for block in self.joint_blocks:
            context, tokens = block(context, tokens, c)
        tokens = self.final_layer(tokens, c)  # (B, N, prod(patch) * C_out)
        return unpatchify(tokens, grid, self.patch_size).to(x.dtype)  # (B, C_out, *spatial)


# --------------------------------------------------------------------------- diffusers key map

# One table for both directions: (our key, diffusers key, how the tensor maps). ``{i}`` is a
# block index, ``{p}`` ``weight`` or ``bias``. "qkv": our fused projection is diffusers'
# q, k and v stacked (the ``{qkv}`` slot); "swap": diffusers' AdaLayerNormContinuous orders
# its two modulation outputs (scale, shift), ours (shift, scale).
_B = "joint_blocks.{i}"
_D = "transformer_blocks.{i}"
_KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    ("x_embedder.proj.{p}", "pos_embed.proj.{p}", "same"),
    ("pos_embed", "pos_embed.pos_embed", "same"),
    ("t_embedder.mlp.0.{p}", "time_text_embed.timestep_embedder.linear_1.{p}", "same"),
    ("t_embedder.mlp.2.{p}", "time_text_embed.timestep_embedder.linear_2.{p}", "same"),
    ("y_embedder.mlp.0.{p}", "time_text_embed.text_embedder.linear_1.{p}", "same"),
    ("y_embedder.mlp.2.{p}", "time_text_embed.text_embedder.linear_2.{p}", "same"),
    ("context_embedder.{p}", "context_embedder.{p}", "same"),
    (f"{_B}.x_block.adaLN_modulation.1.{{p}}", f"{_D}.norm1.linear.{{p}}", "same"),
    (f"{_B}.x_block.attn.qkv.{{p}}", f"{_D}.attn.to_{{qkv}}.{{p}}", "qkv"),
    (f"{_B}.x_block.attn.ln_q.weight", f"{_D}.attn.norm_q.weight", "same"),
    (f"{_B}.x_block.attn.ln_k.weight", f"{_D}.attn.norm_k.weight", "same"),
    (f"{_B}.x_block.attn.proj.{{p}}", f"{_D}.attn.to_out.0.{{p}}", "same"),
    (f"{_B}.x_block.attn2.qkv.{{p}}", f"{_D}.attn2.to_{{qkv}}.{{p}}", "qkv"),
    (f"{_B}.x_block.attn2.ln_q.weight", f"{_D}.attn2.norm_q.weight", "same"),
    (f"{_B}.x_block.attn2.ln_k.weight", f"{_D}.attn2.norm_k.weight", "same"),
    (f"{_B}.x_block.attn2.proj.{{p}}", f"{_D}.attn2.to_out.0.{{p}}", "same"),
    (f"{_B}.x_block.mlp.fc1.{{p}}", f"{_D}.ff.net.0.proj.{{p}}", "same"),
    (f"{_B}.x_block.mlp.fc2.{{p}}", f"{_D}.ff.net.2.{{p}}", "same"),
    # the text stream's modulation has two outputs in the pre-only block: "swap" applies there
    (f"{_B}.context_block.adaLN_modulation.1.{{p}}", f"{_D}.norm1_context.linear.{{p}}", "swap"),
    (f"{_B}.context_block.attn.qkv.{{p}}", f"{_D}.attn.add_{{qkv}}_proj.{{p}}", "qkv"),
    (f"{_B}.context_block.attn.ln_q.weight", f"{_D}.attn.norm_added_q.weight", "same"),
    (f"{_B}.context_block.attn.ln_k.weight", f"{_D}.attn.norm_added_k.weight", "same"),
    (f"{_B}.context_block.attn.proj.{{p}}", f"{_D}.attn.to_add_out.{{p}}", "same"),
    (f"{_B}.context_block.mlp.fc1.{{p}}", f"{_D}.ff_context.net.0.proj.{{p}}", "same"),
    (f"{_B}.context_block.mlp.fc2.{{p}}", f"{_D}.ff_context.net.2.{{p}}", "same"),
    ("final_layer.adaLN_modulation.1.{p}", "norm_out.linear.{p}", "swap"),
    ("final_layer.linear.{p}", "proj_out.{p}", "same"),
)
_SLOTS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "qkv": r"(?P<qkv>q|k|v)"}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(_SLOTS[s[1:-1]] if s.startswith("{") else re.escape(s) for s in parts) + "$")


_RULES = [(ours, theirs, how, _pattern(ours), _pattern(theirs)) for ours, theirs, how in _KEY_TABLE]


def _hidden_size(state: Mapping[str, torch.Tensor], key: str) -> int:
    if key not in state:
        raise CheckpointError(
            f"MMDiT key map: {key!r} is missing (the patch projection gives the hidden size)"
        )
    return int(state[key].shape[0])


def _swap_halves(tensor: torch.Tensor, hidden: int) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift) of a two-output modulation (first axis 2 * hidden);
    six- and nine-output modulations are the same in both formats."""
    if tensor.shape[0] != 2 * hidden:
        return tensor
    a, b = tensor.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _report(what: str, unknown: Iterable[str], missing: Iterable[str]) -> None:
    unknown, missing = sorted(unknown), sorted(missing)
    if unknown or missing:
        parts = [f"unknown keys {unknown}"] if unknown else []
        parts += [f"missing keys {missing}"] if missing else []
        raise CheckpointError(f"{what}: {'; '.join(parts)}")


def from_diffusers_state_dict(
    state: Mapping[str, torch.Tensor], *, expected: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """diffusers ``SD3Transformer2DModel`` state dict -> :class:`MMDiT` state dict.

    Raises :class:`~latentkit.errors.CheckpointError` naming every key the table does not
    know and every missing part of a fused projection (``to_q`` without ``to_k``, ...). With
    ``expected`` (e.g. ``model.state_dict().keys()``) it also names the keys the model needs
    that the state dict lacks, and those it gives that the model does not have."""
    hidden = _hidden_size(state, "pos_embed.proj.weight")
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        for ours, _, how, _, theirs in _RULES:
            match = theirs.match(key)
            if match is None:
                continue
            slots = match.groupdict()
            target = ours.format(**slots)
            if how == "qkv":
                fused.setdefault(target, {})[slots["qkv"]] = tensor
            else:
                out[target] = _swap_halves(tensor, hidden) if how == "swap" else tensor
            break
        else:
            unknown.append(key)
    missing = []
    for target, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            rule = next(r for r in _RULES if r[3].match(target))
            slots = cast(re.Match[str], rule[3].match(target)).groupdict()
            missing += [rule[1].format(**slots, qkv=n) for n in "qkv" if n not in parts]
            continue
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if expected is not None:
        expected = set(expected)
        missing += [k for k in expected if k not in out]
        unknown += [k for k in out if k not in expected]
    _report("from_diffusers_state_dict", unknown, missing)
    return out


def to_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:class:`MMDiT` state dict -> diffusers ``SD3Transformer2DModel`` state dict (the inverse
    of :func:`from_diffusers_state_dict`). diffusers' model always has the text stream and the
    pooled projection, so a model built without ``crossattn_dim`` or ``vector_dim`` maps to a
    state dict that diffusers' model does not load. Raises
    :class:`~latentkit.errors.CheckpointError` naming every key the table does not know."""
    hidden = _hidden_size(state, "x_embedder.proj.weight")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        for _, theirs, how, ours, _ in _RULES:
            match = ours.match(key)
            if match is None:
                continue
            slots = match.groupdict()
            if how == "qkv":
                for name, part in zip("qkv", tensor.chunk(3, dim=0)):
                    out[theirs.format(**slots, qkv=name)] = part
            else:
                out[theirs.format(**slots)] = _swap_halves(tensor, hidden) if how == "swap" else tensor
            break
        else:
            unknown.append(key)
    _report("to_diffusers_state_dict", unknown, ())
    return out


def config_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``SD3Transformer2DModel`` config (``model.config``) -> :func:`mmdit` keys.

    Raises :class:`~latentkit.errors.ConfigError` for what MMDiT does not build the same way:
    a ``caption_projection_dim`` other than the hidden size, a ``qk_norm`` other than
    ``"rms_norm"``, or no ``pos_embed_max_size`` (diffusers then stretches the positions of
    every grid over ``sample_size``; MMDiT's table-free embeddings have unit spacing)."""
    hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    caption = config.get("caption_projection_dim", hidden)
    if caption != hidden:
        raise ConfigError(f"config_from_diffusers: caption_projection_dim {caption} must equal the hidden "
                          f"size num_attention_heads * attention_head_dim = {hidden}")
    qk_norm = config.get("qk_norm")
    if qk_norm not in (None, "rms_norm"):
        raise ConfigError(f"config_from_diffusers: qk_norm {qk_norm!r} is not supported (None or 'rms_norm')")
    if config.get("pos_embed_max_size") is None:
        raise ConfigError("config_from_diffusers: pos_embed_max_size is None; MMDiT matches diffusers' "
                          "position embeddings only with a position table (SD3 / SD3.5 have one)")
    return dict(
        in_channels=int(config["in_channels"]),
        out_channels=int(config.get("out_channels") or config["in_channels"]),
        hidden_size=hidden,
        depth=int(config["num_layers"]),
        num_heads=int(config["num_attention_heads"]),
        patch_size=int(config["patch_size"]),
        crossattn_dim=int(config["joint_attention_dim"]),
        vector_dim=int(config["pooled_projection_dim"]),
        pos_embed_max_size=int(config["pos_embed_max_size"]),
        input_size=int(config["sample_size"]),
        qk_norm=qk_norm == "rms_norm",
        dual_attention_layers=tuple(config.get("dual_attention_layers") or ()),
    )


# --------------------------------------------------------------------------- factory and presets

_SD3 = dict(patch_size=2, in_channels=16, crossattn_dim=4096, vector_dim=2048, input_size=128)

#: Named MMDiT architectures: ``mmdit(preset="sd3-medium")``. The SD3 / SD3.5 ones match the
#: released models (``hidden_size = 64 * depth`` heads of 64 channels, Esser et al. 2024,
#: Sec. 5.3); ``mmdit-s`` / ``mmdit-b`` are small ones (DiT-S / DiT-B widths, no conditioning
#: widths) for experiments and tests.
PRESETS: dict[str, dict[str, Any]] = {
    "sd3-medium": dict(_SD3, depth=24, hidden_size=1536, num_heads=24, pos_embed_max_size=192),
    "sd3.5-medium": dict(_SD3, depth=24, hidden_size=1536, num_heads=24, pos_embed_max_size=384, qk_norm=True,
                         dual_attention_layers=tuple(range(13))),
    "sd3.5-large": dict(_SD3, depth=38, hidden_size=2432, num_heads=38, pos_embed_max_size=192, qk_norm=True),
    "mmdit-s": dict(depth=12, hidden_size=384, num_heads=6, patch_size=2, in_channels=4, input_size=32),
    "mmdit-b": dict(depth=12, hidden_size=768, num_heads=12, patch_size=2, in_channels=4, input_size=32),
}


def mmdit(preset: str | None = None, **config: Any) -> MMDiT:
    """Create an :class:`MMDiT`, from a named preset (see :data:`PRESETS`, e.g.
    ``"sd3-medium"``) updated with ``config``, or from ``config`` alone. An unknown key raises
    ``TypeError``."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown mmdit preset {preset!r}; available: {sorted(PRESETS)}")
    accepted = [p for p in inspect.signature(MMDiT.__init__).parameters if p != "self"]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise TypeError(
            f"denoiser 'mmdit' got unknown config key(s) {unknown}; accepted: {['preset', *accepted]}"
        )
    return MMDiT(**{**(PRESETS[preset] if preset else {}), **config})

"""A video UNet with factorized space-time attention, inflated from an image UNet.

Video LDM (Blattmann et al. 2023, "Align your Latents", Sec. 3.1) turns a trained image LDM
into a video model by keeping every spatial layer, run on each frame on its own (frames folded
into the batch), and interleaving *temporal* layers after them that mix information across
frames at each spatial position. The temporal layers are initialised so that the network
starts as the image model applied frame by frame: here each temporal branch is a residual
whose output projection is zero (the AnimateDiff / "zero-initialised residual" form of the
paper's learnable mixing factor), so a fresh :class:`VideoUNet` built around a trained image
UNet reproduces that UNet on every frame exactly.

Each temporal layer has

* a temporal convolution (kernel 3 along time, 1x1 in space; Video LDM's 3-D conv layers);
* temporal self-attention over the frames at each spatial position, with a sinusoidal
  temporal position embedding (Vaswani et al. 2017, Sec. 3.5), so attention is factorized:
  spatial (the image UNet's transformers) then temporal.

In Video LDM the temporal layers see no conditioning: the caption reaches the video only
through the spatial cross-attention of each frame. Two options (both off by default) feed it
into the temporal layers as well, so the motion itself can depend on the prompt:

* ``temporal_context``: cross-attention from the frame tokens to the ``crossattn`` context
  (the text tokens) in every temporal transformer block, after the self-attention, as in
  the spatial transformer blocks of Rombach et al. 2022 (Sec. 3.3);
* ``temporal_embedding``: the UNet's embedding (timestep, plus the ``vector`` conditioning,
  e.g. a pooled text embedding, when the image UNet takes one) projected and added to the
  temporal tokens, as the ResBlocks add it to their features (Ho et al. 2020; Podell et al.
  2023 for the pooled text vector).

Both sit inside the zero-initialised residual, so the identity initialisation holds.

The spatial layers themselves run on each frame without knowing which frame it is, and, being
convolutions, know where they are in the frame only through the zero padding. A prompt such as
"moving left" asks every frame for a different position (the right side in frame 0, the left
side in the last), so two more options (off by default, zero-initialised, so the identity
initialisation holds with them too) give the spatial layers what that needs:

* ``frame_embedding``: an MLP of the video's embedding (timestep plus ``vector``) and the
  sinusoidal embedding of the frame index, added to the embedding each frame's ResBlocks
  get, so a ResBlock can act differently on frame ``f`` of "moving left" than on frame ``f``
  of "moving right" (in Video LDM every frame of a clip gets the same embedding);
* ``position_embedding``: normalised pixel coordinates (CoordConv, Liu et al. 2018) through
  a 1x1 convolution, added to the features after the image UNet's first block, so absolute
  position is available everywhere rather than only near the border.

Both work for any number of frames. The image backbone is any registered denoiser with the
LDM UNet layout (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``,
``out``: latentkit's ``unet``), created through :func:`latentkit.create`.

Order of this file: temporal layers, model, factory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import einops
import latentkit
import torch
import torch.nn.functional as F
from latentkit.errors import ShapeError
from latentkit.interfaces import Denoiser
from latentkit.layers import (
    normalization,
    sincos_pos_embed,
    timestep_embedding,
    zero_module,
)
from latentkit.specs import Conditioning
from torch import nn

__all__ = ["TemporalAttention", "TemporalConv", "TemporalLayer", "VideoUNet", "video_unet"]

_UNET_PARTS = ("time_embed", "input_blocks", "middle_block", "output_blocks", "out", "model_channels")


# --------------------------------------------------------------------------- temporal layers


class TemporalConv(nn.Module):
    """Residual temporal convolution: norm, SiLU, conv (3, 1, 1), norm, SiLU, zero-initialised
    conv (3, 1, 1). Zero padding in time, so any number of frames (even one) works."""

    def __init__(self, channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups), nn.SiLU(),
            nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)),
        )
        self.out_layers = nn.Sequential(
            normalization(channels, norm_groups), nn.SiLU(),
            zero_module(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, C, T, H, W)."""
        return x + self.out_layers(self.in_layers(x))


class TemporalAttention(nn.Module):
    """Self-attention along time at every spatial position (Blattmann et al. 2023, Sec. 3.1).

    Group norm, a linear projection in, a sinusoidal temporal position embedding added to the
    tokens, then ``depth`` pre-norm transformer blocks (multi-head self-attention,
    softmax(q k^T / sqrt(d)) v of Vaswani et al. 2017, Eq. 1, and a GELU MLP) on the
    (B H W, T, C) frame sequences, and a zero-initialised projection out, residual.
    Attention is a batched matmul: the sequences are short (T frames) and many (B H W).

    With ``context_dim`` every block also cross-attends from its tokens to a ``(B, L,
    context_dim)`` context (pre-norm, between self-attention and MLP); with ``emb_dim`` a
    ``(B, emb_dim)`` embedding goes through SiLU and a linear layer and is added to every token
    after the projection in. Both are required in :meth:`forward` when configured.
    """

    def __init__(self, channels: int, heads: int, depth: int = 1, norm_groups: int = 32,
                 max_period: float = 10000.0, mlp_ratio: int = 2, *,
                 context_dim: int | None = None, emb_dim: int | None = None) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"TemporalAttention: {channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.max_period = float(max_period)
        self.context_dim = context_dim
        self.emb_dim = emb_dim
        self.norm = normalization(channels, norm_groups)
        self.proj_in = nn.Linear(channels, channels)
        self.emb_proj = (nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, channels))
                         if emb_dim is not None else None)

        def block() -> nn.ModuleDict:
            parts: dict[str, nn.Module] = {
                "norm1": nn.LayerNorm(channels),
                "qkv": nn.Linear(channels, 3 * channels, bias=False),
                "attn_out": nn.Linear(channels, channels),
            }
            if context_dim is not None:
                parts.update({
                    "norm_ctx": nn.LayerNorm(channels),
                    "q_ctx": nn.Linear(channels, channels, bias=False),
                    "kv_ctx": nn.Linear(context_dim, 2 * channels, bias=False),
                    "ctx_out": nn.Linear(channels, channels),
                })
            parts.update({
                "norm2": nn.LayerNorm(channels),
                "mlp": nn.Sequential(nn.Linear(channels, mlp_ratio * channels), nn.GELU(),
                                     nn.Linear(mlp_ratio * channels, channels)),
            })
            return nn.ModuleDict(parts)

        self.blocks = nn.ModuleList(block() for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def _attention(self, block: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        q, k, v = einops.rearrange(block["qkv"](x), "n t (three h d) -> three (n h) t d", three=3, h=self.heads)
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * q.shape[-1] ** -0.5, dim=-1)  # (N h, T, T)
        out = einops.rearrange(torch.bmm(weights, v), "(n h) t d -> n t (h d)", h=self.heads)
        return block["attn_out"](out)  # type: ignore[no-any-return]

    def _cross_attention(self, block: nn.ModuleDict, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # The queries of one batch item (all H W positions, all T frames) attend to its own
        # context: fold them into one sequence per item, (B H W, T, C) -> (B, H W T, C).
        t, b = x.shape[1], context.shape[0]
        q = einops.rearrange(block["q_ctx"](x), "(b s) t (h d) -> b h (s t) d", b=b, h=self.heads)
        k, v = einops.rearrange(block["kv_ctx"](context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H W T, d)
        out = einops.rearrange(out, "b h (s t) d -> (b s) t (h d)", t=t)
        return block["ctx_out"](out)  # type: ignore[no-any-return]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W), context (B, L, context_dim), emb (B, emb_dim) -> (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        if self.context_dim is not None and context is None:
            raise ShapeError("TemporalAttention: built with context_dim, so forward needs a context")
        if self.emb_proj is not None and emb is None:
            raise ShapeError("TemporalAttention: built with emb_dim, so forward needs emb")
        tokens = einops.rearrange(self.norm(x), "b c t h w -> (b h w) t c")
        tokens = self.proj_in(tokens)
        pos = sincos_pos_embed((t,), c, device=x.device, dtype=tokens.dtype, max_period=self.max_period)
        tokens = tokens + pos[None]  # (B H W, T, C)
        if self.emb_proj is not None:
            assert emb is not None
            tokens = tokens + self.emb_proj(emb.to(tokens.dtype)).repeat_interleave(h * w, dim=0)[:, None]
        if self.context_dim is None:
            context = None  # a layer without cross-attention ignores a context
        elif context is not None:
            context = context.to(tokens.dtype)
        for block in self.blocks:
            assert isinstance(block, nn.ModuleDict)
            tokens = tokens + self._attention(block, block["norm1"](tokens))
            if context is not None:
                tokens = tokens + self._cross_attention(block, block["norm_ctx"](tokens), context)
            tokens = tokens + block["mlp"](block["norm2"](tokens))
        out = einops.rearrange(self.proj_out(tokens), "(b h w) t c -> b c t h w", b=b, h=h, w=w)
        return x + out


class TemporalLayer(nn.Module):
    """The temporal layer inserted after one spatial block: optional temporal convolution,
    then temporal attention (optionally conditioned on ``context`` and ``emb``, see
    :class:`TemporalAttention`). An identity map at initialisation."""

    def __init__(self, channels: int, heads: int, *, conv: bool = True, attention: bool = True,
                 depth: int = 1, norm_groups: int = 32, context_dim: int | None = None,
                 emb_dim: int | None = None) -> None:
        super().__init__()
        self.conv = TemporalConv(channels, norm_groups) if conv else None
        self.attention = (
            TemporalAttention(channels, heads, depth, norm_groups, context_dim=context_dim, emb_dim=emb_dim)
            if attention else None
        )

    def forward(self, h: torch.Tensor, frames: int, context: torch.Tensor | None = None,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """Folded frames (B T, C, H, W) -> (B T, C, H, W), mixing information along T.
        ``context`` (B, L, D) and ``emb`` (B, E) are per video, not per frame."""
        x = einops.rearrange(h, "(b t) c h w -> b c t h w", t=frames)
        if self.conv is not None:
            x = self.conv(x)
        if self.attention is not None:
            x = self.attention(x, context, emb)
        return einops.rearrange(x, "b c t h w -> (b t) c h w")


# --------------------------------------------------------------------------- model


def _heads_for(channels: int, head_channels: int) -> int:
    heads = max(1, channels // head_channels)
    while channels % heads:
        heads -= 1
    return heads


class VideoUNet(Denoiser):
    """An image UNet run on each frame, with a :class:`TemporalLayer` after every block
    (Blattmann et al. 2023). Runs on ``CTHW`` latents with any number of frames.

    ``image_unet`` is a 2-D denoiser with the LDM UNet layout (latentkit's ``unet``); its
    weights are used as they are, so a trained image model becomes the spatial part. The
    temporal layers start as identity maps. Spatial sizes that are not multiples of the
    image UNet's ``size_multiple`` are zero-padded up to one and cropped back, so every
    ``T, H, W`` is accepted (``size_multiple`` is 1).

    ``temporal_context`` (needs a ``crossattn_dim``) adds cross-attention to the text tokens
    to every temporal attention block; ``temporal_embedding`` adds the UNet's timestep (and
    ``vector``) embedding to the temporal tokens. Both need ``temporal_attention``.
    """

    supported_layouts: ClassVar[tuple[str, ...]] = ("CTHW",)

    def __init__(
        self,
        image_unet: Denoiser,  # a 2-D denoiser with the LDM UNet layout
        *,
        temporal_head_channels: int = 32,  # channels per temporal attention head
        temporal_depth: int = 1,  # transformer blocks per temporal attention
        temporal_conv: bool = True,  # temporal convolutions
        temporal_attention: bool = True,  # temporal self-attention
        temporal_resolutions: Sequence[int] | None = None,  # downsampling factors with temporal layers (None: all)
        norm_groups: int = 32,  # group norm groups of the temporal layers
        temporal_context: bool = False,  # cross-attention to crossattn in the temporal blocks
        temporal_embedding: bool = False,  # timestep (+ vector) embedding added to temporal tokens
        frame_embedding: bool = False,  # per-frame embedding (frame index x video embedding) in the ResBlocks
        position_embedding: bool = False,  # pixel coordinates added after the first block
    ) -> None:
        missing = [name for name in _UNET_PARTS if not hasattr(image_unet, name)]
        if missing or not isinstance(image_unet, Denoiser):
            raise TypeError(
                f"VideoUNet needs an image denoiser with the LDM UNet layout (latentkit's 'unet'); "
                f"{type(image_unet).__name__} lacks {missing or 'the Denoiser interface'}"
            )
        if "CHW" not in image_unet.layouts:
            raise ValueError(f"VideoUNet: the image UNet must run on CHW, it runs on {image_unet.layouts}")
        spec = image_unet.conditioning_spec
        super().__init__(
            in_channels=image_unet.in_channels,
            out_channels=image_unet.out_channels,
            layouts=("CTHW",),
            crossattn_dim=spec.crossattn_dim,
            vector_dim=spec.vector_dim,
            size_multiple=1,
        )
        if not (temporal_conv or temporal_attention):
            raise ValueError("VideoUNet: enable temporal_conv, temporal_attention or both")
        if (temporal_context or temporal_embedding) and not temporal_attention:
            raise ValueError("VideoUNet: temporal_context and temporal_embedding need temporal_attention")
        if temporal_context and spec.crossattn_dim is None:
            raise ValueError("VideoUNet: temporal_context needs an image UNet with crossattn_dim")
        self.image_unet = image_unet
        self.spatial_multiple = int(getattr(image_unet, "size_multiple", 1) or 1)
        self.temporal_config = {
            "temporal_head_channels": temporal_head_channels, "temporal_depth": temporal_depth,
            "temporal_conv": temporal_conv, "temporal_attention": temporal_attention,
            "temporal_resolutions": None if temporal_resolutions is None else list(temporal_resolutions),
            "norm_groups": norm_groups, "temporal_context": temporal_context,
            "temporal_embedding": temporal_embedding, "frame_embedding": frame_embedding,
            "position_embedding": position_embedding,
        }
        widths = self._block_widths()
        context_dim = spec.crossattn_dim if temporal_context else None
        embed_dim = self._embedding_dim()  # the width of the UNet's timestep embedding
        emb_dim = embed_dim if temporal_embedding else None
        resolutions = None if temporal_resolutions is None else {int(r) for r in temporal_resolutions}

        def make(ch: int, ds: int) -> nn.Module:
            if resolutions is not None and ds not in resolutions:
                return nn.Identity()  # no temporal layer at this resolution
            groups = math.gcd(ch, norm_groups)
            return TemporalLayer(ch, _heads_for(ch, temporal_head_channels), conv=temporal_conv,
                                 attention=temporal_attention, depth=temporal_depth, norm_groups=groups,
                                 context_dim=context_dim, emb_dim=emb_dim)

        unet: Any = image_unet
        # frame_embedding: (video embedding, sinusoidal frame index) -> per-frame addition
        self.frame_embed = (
            nn.Sequential(nn.Linear(embed_dim + unet.model_channels, embed_dim), nn.SiLU(),
                          zero_module(nn.Linear(embed_dim, embed_dim)))
            if frame_embedding else None
        )
        # position_embedding: (x, y) in [-1, 1] -> the first block's channels
        self.position_proj = (zero_module(nn.Conv2d(2, widths["input"][0][0], 1))
                              if position_embedding else None)
        self.temporal_input = nn.ModuleList([make(*cd) for cd in widths["input"]])
        self.temporal_middle = make(*widths["middle"][0])
        self.temporal_output = nn.ModuleList([make(*cd) for cd in widths["output"]])
        if not any(isinstance(m, TemporalLayer) for m in self.modules()):
            raise ValueError(
                f"VideoUNet: temporal_resolutions {sorted(resolutions or ())} match no block; the "
                f"image UNet has downsampling factors {sorted({d for _, d in widths['input']})}"
            )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_image_unet(cls, image_unet: Denoiser, **temporal: Any) -> VideoUNet:
        """A video UNet whose spatial layers are a copy of the (trained) ``image_unet`` and
        whose temporal layers are identity maps: at initialisation it equals ``image_unet``
        applied to each frame (Blattmann et al. 2023, Sec. 3.1)."""
        return cls(copy.deepcopy(image_unet), **temporal)

    def load_image_weights(self, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True) -> None:
        """Load an image UNet's weights into the spatial layers. Keys may carry a
        ``denoiser.`` prefix (a :class:`latentkit.LatentDiffusion` state dict)."""
        prefix = "denoiser."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.image_unet.load_state_dict(dict(state_dict), strict=strict)

    @torch.no_grad()
    def _embedding_dim(self) -> int:
        """Width of the image UNet's timestep embedding (``time_embed``'s output)."""
        unet: Any = self.image_unet
        param = next(unet.time_embed.parameters())
        t = timestep_embedding(torch.zeros(1, device=param.device), unet.model_channels).to(param.dtype)
        return int(unet.time_embed(t).shape[-1])

    @torch.no_grad()
    def _block_widths(self) -> dict[str, list[tuple[int, int]]]:
        """(output channels, downsampling factor) of every block, from one forward pass on a
        tiny input."""
        unet: Any = self.image_unet
        m = self.spatial_multiple
        param = next(unet.parameters())
        x = torch.zeros(1, self.in_channels, m, m, device=param.device, dtype=param.dtype)
        emb = unet.time_embed(timestep_embedding(torch.zeros(1, device=x.device), unet.model_channels).to(x.dtype))
        spec = self.conditioning_spec
        context = None
        if spec.crossattn_dim is not None:
            context = torch.zeros(1, 1, spec.crossattn_dim, device=x.device, dtype=x.dtype)
        widths: dict[str, list[tuple[int, int]]] = {"input": [], "middle": [], "output": []}
        h, skips = x, []
        for block in unet.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
            widths["input"].append((h.shape[1], m // h.shape[-1]))
        h = unet.middle_block(h, emb, context)
        widths["middle"].append((h.shape[1], m // h.shape[-1]))
        for block in unet.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
            widths["output"].append((h.shape[1], m // h.shape[-1]))
        return widths

    # ------------------------------------------------------------------ forward

    @staticmethod
    def _temporal(layer: nn.Module, h: torch.Tensor, frames: int, context: torch.Tensor | None,
                  emb: torch.Tensor | None) -> torch.Tensor:
        return layer(h, frames, context, emb) if isinstance(layer, TemporalLayer) else h

    @staticmethod
    def _coordinates(height: int, width: int, padded: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """(1, 2, H', W'): x and y of every pixel, -1 at the first and +1 at the last pixel of
        the unpadded ``height`` x ``width`` frame (padding continues the line)."""
        def axis(n: int, size: int) -> torch.Tensor:
            return (torch.arange(size, device=like.device, dtype=like.dtype) * 2 - (n - 1)) / max(n - 1, 1)
        ys, xs = torch.meshgrid(axis(height, int(padded[0])), axis(width, int(padded[1])), indexing="ij")
        return torch.stack([xs, ys])[None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """(B, out_channels, T, H, W), (B,), Conditioning -> (B, out_channels, T, H, W)."""
        h, t, cond = self.prepare_input(x, t, cond)
        b, _, frames, height, width = h.shape
        if frames < 1 or height < 1 or width < 1:
            raise ShapeError(f"VideoUNet.forward: x must have T, H, W >= 1, got shape {tuple(x.shape)}")
        unet: Any = self.image_unet
        m = self.spatial_multiple
        pad_h, pad_w = (-height) % m, (-width) % m
        h = einops.rearrange(h, "b c t h w -> (b t) c h w")
        if pad_h or pad_w:
            h = F.pad(h, (0, pad_w, 0, pad_h))
        dtype = next(unet.time_embed.parameters()).dtype
        emb = unet.time_embed(timestep_embedding(t, unet.model_channels).to(dtype))  # (B, E)
        if getattr(unet, "label_emb", None) is not None:
            assert cond.vector is not None  # prepare_input checked it
            emb = emb + unet.label_emb(cond.vector.to(dtype))
        # per-video conditioning of the temporal layers (None when the option is off)
        t_emb = emb if self.temporal_config["temporal_embedding"] else None
        t_ctx = cond.crossattn if self.temporal_config["temporal_context"] else None
        if self.frame_embed is not None:
            index = timestep_embedding(torch.arange(frames, device=h.device), unet.model_channels).to(dtype)
            pairs = torch.cat([emb[:, None].expand(-1, frames, -1), index[None].expand(b, -1, -1)], dim=-1)
            emb = (emb[:, None] + self.frame_embed(pairs)).flatten(0, 1)  # (B T, E)
        else:
            emb = emb.repeat_interleave(frames, dim=0)  # (B T, E)
        context = cond.crossattn
        if context is not None:
            context = context.repeat_interleave(frames, dim=0)  # (B T, L, D)
        skips = []
        for i, (block, temporal) in enumerate(zip(unet.input_blocks, self.temporal_input)):
            h = block(h, emb, context)
            if i == 0 and self.position_proj is not None:
                h = h + self.position_proj(self._coordinates(height, width, h.shape[-2:], h))
            h = self._temporal(temporal, h, frames, t_ctx, t_emb)
            skips.append(h)
        h = self._temporal(self.temporal_middle, unet.middle_block(h, emb, context), frames, t_ctx, t_emb)
        for block, temporal in zip(unet.output_blocks, self.temporal_output):
            h = self._temporal(temporal, block(torch.cat([h, skips.pop()], dim=1), emb, context), frames,
                               t_ctx, t_emb)
        out = unet.out(h)[..., :height, :width]  # (B T, C, H, W)
        return einops.rearrange(out, "(b t) c h w -> b c t h w", b=b).to(x.dtype)


# --------------------------------------------------------------------------- factory


def video_unet(
    in_channels: int = 4,  # latent channels + concat conditioning channels
    out_channels: int | None = None,  # latent channels (default: in_channels)
    crossattn_dim: int | None = None,  # context width of crossattn (B, L, D)
    vector_dim: int | None = None,  # width of the vector conditioning (B, D)
    layout: str = "CTHW",  # the only layout: video latents
    image_denoiser: str = "unet",  # registered image denoiser with the LDM UNet layout
    preset: str | None = None,  # a preset of the image denoiser (e.g. "sd1")
    model_channels: int | None = None,
    channel_mult: Sequence[int] | None = None,
    num_res_blocks: int | Sequence[int] | None = None,
    attention_resolutions: Sequence[int] | None = None,
    num_heads: int | None = None,
    num_head_channels: int | None = None,
    transformer_depth: int | Sequence[int] | None = None,
    norm_groups: int | None = None,
    dropout: float | None = None,
    image_config: Mapping[str, Any] | None = None,  # any other option of the image denoiser
    temporal_head_channels: int = 32,
    temporal_depth: int = 1,
    temporal_conv: bool = True,
    temporal_attention: bool = True,
    temporal_resolutions: Sequence[int] | None = None,  # e.g. [2]: temporal layers at f = 2 only
    temporal_context: bool = False,  # cross-attention to the crossattn context in temporal blocks
    temporal_embedding: bool = False,  # timestep (+ vector) embedding added to the temporal tokens
    frame_embedding: bool = False,  # per-frame embedding of (frame index, video embedding) in the ResBlocks
    position_embedding: bool = False,  # pixel coordinates added to the first block's features
) -> VideoUNet:
    """Create a :class:`VideoUNet` around a freshly created image denoiser
    (``latentkit.create("denoiser", image_denoiser, layout="CHW", ...)``).

    The image options left ``None`` keep the image denoiser's defaults (or its ``preset``).
    To start from trained image weights use :meth:`VideoUNet.load_image_weights` or
    :meth:`VideoUNet.from_image_unet`.
    """
    if layout != "CTHW":
        raise ValueError(f"video_unet: layout must be 'CTHW', got {layout!r}")
    given = {
        "preset": preset, "model_channels": model_channels, "channel_mult": channel_mult,
        "num_res_blocks": num_res_blocks, "attention_resolutions": attention_resolutions,
        "num_heads": num_heads, "num_head_channels": num_head_channels,
        "transformer_depth": transformer_depth, "norm_groups": norm_groups, "dropout": dropout,
    }
    config = {k: v for k, v in given.items() if v is not None}
    clash = sorted(set(config) & set(image_config or {}))
    if clash:
        raise ValueError(f"video_unet: {clash} given both directly and in image_config")
    config.update(image_config or {})
    image = latentkit.create(
        "denoiser", image_denoiser, in_channels=in_channels, out_channels=out_channels,
        crossattn_dim=crossattn_dim, vector_dim=vector_dim, layout="CHW", **config,
    )
    groups = norm_groups if norm_groups is not None else 32
    return VideoUNet(
        image, temporal_head_channels=temporal_head_channels, temporal_depth=temporal_depth,
        temporal_conv=temporal_conv, temporal_attention=temporal_attention,
        temporal_resolutions=temporal_resolutions, norm_groups=groups,
        temporal_context=temporal_context, temporal_embedding=temporal_embedding,
        frame_embedding=frame_embedding, position_embedding=position_embedding,
    )

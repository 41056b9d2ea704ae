"""Shared N-d building blocks: attention equals a plain softmax reference, embeddings have their
closed forms, token / patch reshapes round-trip, checkpointing changes nothing numerically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentkit.layers import (
    Attention,
    AttentionBlock,
    BasicTransformerBlock,
    SpatialTransformer,
    attention,
    conv_nd,
    from_tokens,
    maybe_checkpoint,
    normalization,
    patchify,
    sincos_pos_embed,
    timestep_embedding,
    to_tokens,
    unpatchify,
)

# tiny models run many times faster single-threaded on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, written out with explicit loops over heads."""
    inner = q.shape[-1]
    d = inner // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        outs.append(w @ v[..., sl])
    return torch.cat(outs, dim=-1)


@pytest.mark.parametrize(("n", "length", "heads", "d"), [(7, 7, 1, 8), (10, 3, 4, 16), (1, 5, 2, 4)])
def test_sdpa_attention_equals_softmax_reference(n: int, length: int, heads: int, d: int) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, n, heads * d, generator=g, dtype=torch.float64)
    k = torch.randn(3, length, heads * d, generator=g, dtype=torch.float64)
    v = torch.randn(3, length, heads * d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(attention(q, k, v, heads), reference_attention(q, k, v, heads))


def test_cross_attention_module_matches_reference() -> None:
    torch.manual_seed(0)
    attn = Attention(12, context_dim=5, heads=3, dim_head=4).double()
    x, ctx = torch.randn(2, 6, 12).double(), torch.randn(2, 9, 5).double()
    expected = attn.to_out(reference_attention(attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx), 3))
    torch.testing.assert_close(attn(x, ctx), expected)
    # without a context it is self-attention
    self_attn = Attention(12, None, heads=3, dim_head=4).double()
    ref = self_attn.to_out(reference_attention(self_attn.to_q(x), self_attn.to_k(x), self_attn.to_v(x), 3))
    torch.testing.assert_close(self_attn(x), ref)


@pytest.mark.parametrize("new_order", [False, True])
def test_adm_attention_block_head_order(new_order: bool) -> None:
    """Legacy (LDM default): per head [q | k | v]; new (ADM): [q heads | k heads | v heads]."""
    torch.manual_seed(0)
    block = AttentionBlock(8, heads=2, norm_groups=4, use_new_attention_order=new_order).double()
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    qkv = block.qkv(block.norm(x).reshape(2, 8, -1))  # (B, 3C, N)
    heads = []
    for h in range(2):
        if new_order:
            q, k, v = (part[:, h * 4 : (h + 1) * 4] for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv[:, h * 12 : (h + 1) * 12].chunk(3, dim=1)  # (B, d, N) each
        heads.append(reference_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 1))
    out = torch.cat(heads, dim=-1).transpose(1, 2)  # (B, C, N)
    expected = x + block.proj_out(out).reshape(x.shape)
    torch.testing.assert_close(block(x), expected)


def test_timestep_embedding_closed_form() -> None:
    t = torch.tensor([0.0, 1.0, 250.5])
    emb = timestep_embedding(t, 8, max_period=10000.0)
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expected)
    assert torch.equal(timestep_embedding(torch.zeros(1), 6), torch.tensor([[1.0, 1, 1, 0, 0, 0]]))
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and torch.all(odd[:, -1] == 0)


def _dit_2d_sincos(dim: int, h: int, w: int) -> np.ndarray:
    """DiT / MAE ``get_2d_sincos_pos_embed`` written plainly (numpy, 'xy' meshgrid)."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_sincos_pos_embed_matches_dit_2d_formula() -> None:
    ours = sincos_pos_embed((3, 5), 16, dtype=torch.float64)
    torch.testing.assert_close(ours, torch.from_numpy(_dit_2d_sincos(16, 3, 5)))


@pytest.mark.parametrize("grid", [(6,), (4, 5), (2, 3, 4)])
def test_sincos_pos_embed_is_grid_size_independent(grid: tuple[int, ...]) -> None:
    """A position's embedding does not depend on the grid it sits in (so other sizes work)."""
    big = tuple(g + 2 for g in grid)
    small_emb = sincos_pos_embed(grid, 24).reshape(*grid, 24)
    big_emb = sincos_pos_embed(big, 24).reshape(*big, 24)
    torch.testing.assert_close(big_emb[tuple(slice(0, g) for g in grid)], small_emb)
    flat = sincos_pos_embed(grid, 24)
    assert torch.unique(flat, dim=0).shape[0] == math.prod(grid)  # positions distinguishable


@pytest.mark.parametrize("spatial", [(5,), (3, 4), (2, 3, 4)])
def test_tokens_round_trip_and_order(spatial: tuple[int, ...]) -> None:
    x = torch.randn(2, 6, *spatial)
    tokens, found = to_tokens(x)
    assert tokens.shape == (2, math.prod(spatial), 6) and found == spatial
    assert torch.equal(tokens[:, 1], x.flatten(2)[:, :, 1])  # row-major positions
    assert torch.equal(from_tokens(tokens, spatial), x)


def test_to_tokens_is_a_view_for_channels_last() -> None:
    x = torch.randn(2, 6, 4, 5).to(memory_format=torch.channels_last)
    tokens, _ = to_tokens(x)
    assert tokens.data_ptr() == x.data_ptr()


@pytest.mark.parametrize(("spatial", "patch"), [((8,), (2,)), ((4, 6), (2, 3)), ((2, 4, 4), (1, 2, 2))])
def test_patchify_round_trip(spatial: tuple[int, ...], patch: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, *spatial)
    tokens = patchify(x, patch)
    grid = tuple(s // p for s, p in zip(spatial, patch))
    assert tokens.shape == (2, math.prod(grid), math.prod(patch) * 3)
    # the first token holds the first patch, patch axes first, channels last
    first = x[(slice(None), slice(None), *[slice(0, p) for p in patch])]
    assert torch.equal(tokens[:, 0], first.movedim(1, -1).reshape(2, -1))
    assert torch.equal(unpatchify(tokens, grid, patch), x)


def test_checkpointing_is_numerically_transparent() -> None:
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, heads=2, dim_head=8, context_dim=6)
    x = torch.randn(2, 10, 16, requires_grad=True)
    ctx = torch.randn(2, 3, 6)
    grads = []
    outs = []
    for enabled in (False, True):
        block.checkpoint = enabled
        block.zero_grad()
        x.grad = None
        y = block(x, ctx)
        (y**2).sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in block.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    y = maybe_checkpoint(lambda a: a * 2, torch.ones(2), enabled=True)
    assert torch.equal(y, torch.full((2,), 2.0))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_spatial_transformer_any_rank(dims: int) -> None:
    torch.manual_seed(0)
    for use_linear in (False, True):
        st = SpatialTransformer(8, heads=2, dim_head=4, depth=1, context_dim=5, use_linear=use_linear,
                                dims=dims, norm_groups=4)
        x = torch.randn(2, 8, *([4] * dims))
        assert torch.equal(st(x, torch.randn(2, 3, 5)), x)  # zero-initialised proj_out
        torch.nn.init.normal_(st.proj_out.weight)
        y = st(x, torch.randn(2, 3, 5))
        assert y.shape == x.shape and not torch.allclose(y, x)


def test_conv_nd_and_normalization_validate() -> None:
    assert isinstance(conv_nd(3, 2, 2, 1), torch.nn.Conv3d)
    with pytest.raises(ValueError, match="1, 2 or 3"):
        conv_nd(4, 2, 2, 1)
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        normalization(24, 32)
    x = torch.randn(2, 8, 3).to(torch.bfloat16)
    assert normalization(8, 4)(x).dtype == torch.bfloat16


def test_unpatchify_matches_dit_reference_order() -> None:
    """DiT's ``unpatchify``: tokens (N, h*w, p*p*c) -> reshape (N, h, w, p, p, c) -> einsum
    ``nhwpqc->nchpwq`` -> (N, c, h*p, w*p)."""
    n, h, w, p, c = 2, 3, 4, 2, 5
    tokens = torch.randn(n, h * w, p * p * c)
    expected = torch.einsum("nhwpqc->nchpwq", tokens.reshape(n, h, w, p, p, c)).reshape(n, c, h * p, w * p)
    assert torch.equal(unpatchify(tokens, (h, w), (p, p)), expected)

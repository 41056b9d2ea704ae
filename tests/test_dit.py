"""The ``dit`` denoiser: shapes in every layout, adaLN-Zero identity start, each conditioning
input matters, position embeddings at sizes other than the training size, gradient
checkpointing, and the DiT paper's parameter count and key names."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import latentkit
from latentkit.denoisers import DIT_TINY_CONFIG
from latentkit.denoisers.dit import PRESETS, DiT, dit
from latentkit.errors import ShapeError
from latentkit.specs import Conditioning
from latentkit.testing import check_denoiser

# tiny models run many times faster single-threaded on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")

SPATIAL = {"CL": (8,), "CHW": (8, 8), "CTHW": (4, 8, 8), "CDHW": (4, 4, 8)}


def _tiny(**overrides: Any) -> DiT:
    return dit(**{**DIT_TINY_CONFIG, **overrides})


def _perturb_zero_layers(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights for the zero-initialised (adaLN-Zero, output) layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _cond(model: DiT, batch: int, spatial: tuple[int, ...], seed: int) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    spec = model.conditioning_spec
    return Conditioning(
        crossattn=None if spec.crossattn_dim is None else torch.randn(batch, 3, spec.crossattn_dim, generator=g),
        concat=torch.randn(batch, spec.concat_channels, *spatial, generator=g) if spec.concat_channels else None,
        vector=None if spec.vector_dim is None else torch.randn(batch, spec.vector_dim, generator=g),
    )


@pytest.mark.parametrize("layout", list(SPATIAL))
@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_shapes_in_every_layout(layout: str, pos_embed: str) -> None:
    model = _tiny(layout=layout, in_channels=5, out_channels=4, crossattn_dim=10, vector_dim=3,
                  pos_embed=pos_embed, input_size=SPATIAL[layout])
    assert layout in model.layouts and model.size_multiple == 2
    x = torch.randn(2, 4, *SPATIAL[layout])
    y = model(x, torch.tensor([0.5, -1.0]), _cond(model, 2, SPATIAL[layout], 0))
    assert y.shape == x.shape
    assert not y.any()  # adaLN-Zero: zero output layer at init


def test_blocks_start_as_identity() -> None:
    """adaLN-Zero (Peebles & Xie, Sec. 3.2): gates and cross-attention outputs start at 0."""
    model = _tiny(crossattn_dim=10)
    x, c, ctx = torch.randn(2, 16, 24), torch.randn(2, 24), torch.randn(2, 3, 10)
    for block in model.blocks:
        assert torch.equal(block(x, c, ctx), x)


@pytest.mark.parametrize("entry", ["crossattn", "concat", "vector", "t"])
def test_each_conditioning_input_changes_the_output(entry: str) -> None:
    torch.manual_seed(0)
    model = _tiny(in_channels=6, out_channels=4, crossattn_dim=10, vector_dim=5).eval()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0.1, 0.7])
    a, b = _cond(model, 2, (8, 8), 1), _cond(model, 2, (8, 8), 2)
    if entry == "t":
        y0, y1 = model(x, t, a), model(x, t + 0.5, a)
    else:
        mixed = Conditioning(**{n: (getattr(b, n) if n == entry else v) for n, v in a.items()})
        y0, y1 = model(x, t, a), model(x, t, mixed)
    assert (y0 - y1).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_sincos_positions_work_at_other_sizes() -> None:
    """Computed per grid: a token's embedding does not depend on the grid size, and a model
    trained at 8x8 runs at 16x12 with every position distinguishable."""
    model = _tiny(pos_embed="sincos")
    small = model.position_embedding((4, 4), torch.device("cpu"), torch.float32)[0].reshape(4, 4, -1)
    large = model.position_embedding((8, 6), torch.device("cpu"), torch.float32)[0].reshape(8, 6, -1)
    torch.testing.assert_close(large[:4, :4], small)
    _perturb_zero_layers(model)
    y = model(torch.randn(1, 4, 16, 12), torch.ones(1))
    assert y.shape == (1, 4, 16, 12) and torch.isfinite(y).all()


@pytest.mark.parametrize("layout", ["CL", "CHW", "CTHW"])
def test_learned_positions_interpolate_to_other_sizes(layout: str) -> None:
    train = SPATIAL[layout]
    model = _tiny(layout=layout, pos_embed="learned", input_size=train)
    grid = tuple(s // 2 for s in train)
    dev = torch.device("cpu")
    assert torch.equal(model.position_embedding(grid, dev, torch.float32), model.pos_embed)
    # a field that is constant along space stays constant under interpolation to any grid
    with torch.no_grad():
        model.pos_embed.copy_(torch.arange(24.0).expand_as(model.pos_embed))
    bigger = tuple(g * 2 + 1 for g in grid)
    pe = model.position_embedding(bigger, dev, torch.float32)
    assert pe.shape == (1, torch.Size(bigger).numel(), 24)
    torch.testing.assert_close(pe, torch.arange(24.0).expand_as(pe))
    # a linear ramp along the last axis is still monotone on the larger grid
    with torch.no_grad():
        ramp = torch.arange(grid[-1], dtype=torch.float32).expand(*grid)
        model.pos_embed.copy_(ramp.reshape(1, -1, 1).expand_as(model.pos_embed))
    pe = model.position_embedding(bigger, dev, torch.float32)[0, :, 0].reshape(bigger)
    assert (pe.diff(dim=-1) >= 0).all() and pe.max() > pe.min()
    y = model(torch.randn(1, 4, *(b * 2 for b in bigger)), torch.ones(1))
    assert y.shape[2:] == tuple(b * 2 for b in bigger)


def test_gradient_checkpointing_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=10, vector_dim=5).double()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    cond = _cond(model, 2, (8, 8), 0).to(torch.float64)
    results = []
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        model.zero_grad()
        y = model(x, torch.tensor([0.2, 0.9]), cond)
        (y**2).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)


def test_dit_xl2_parameter_count_matches_the_paper_model() -> None:
    """DiT-XL/2 for ImageNet 256 has 675,129,632 parameters in the reference code. Ours has the
    same parameters except: the reference also predicts the variance (8 output channels: a
    final linear layer wider by 2*2*4 outputs), has a 1001 x 1152 label table (we take the
    ``vector`` input instead) and stores its fixed position embedding (256 x 1152) as a
    parameter (we compute it on the fly)."""
    with torch.device("meta"):
        model = dit(preset="DiT-XL/2", in_channels=4)
    ours = sum(p.numel() for p in model.parameters())
    learned_sigma = 1152 * (2 * 2 * 4) + 2 * 2 * 4
    assert ours + learned_sigma + 1001 * 1152 + 256 * 1152 == 675_129_632


def test_dit_reference_key_names() -> None:
    keys = set(_tiny(depth=1).state_dict())
    for key in (
        "x_embedder.proj.weight",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.2.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.weight",
    ):
        assert key in keys, key


def test_presets_and_errors() -> None:
    assert {"DiT-S/2", "DiT-B/4", "DiT-L/8", "DiT-XL/2"} <= set(PRESETS)
    with torch.device("meta"):
        m = dit(preset="DiT-B/4")
    assert (len(m.blocks), m.hidden_size, m.size_multiple) == (12, 768, 4)
    with pytest.raises(ShapeError, match="divisible"):
        _tiny()(torch.randn(1, 4, 7, 8), torch.ones(1))
    with pytest.raises(TypeError, match="hidden_dim"):
        dit(hidden_dim=8)
    with pytest.raises(ValueError, match="unknown dit preset"):
        dit(preset="DiT-H/2")
    with pytest.raises(ValueError, match="num_heads"):
        _tiny(num_heads=5)
    model = latentkit.create("denoiser", "dit", **DIT_TINY_CONFIG)
    assert isinstance(model, DiT) and sum(p.numel() for p in model.parameters()) < 100_000


@pytest.mark.parametrize("layout", ["CL", "CHW", "CTHW"])
def test_conformance_kit_in_every_rank_with_all_conditioning(layout: str) -> None:
    """The conformance kit on an instance of each spatial rank taking crossattn, concat and
    vector (the 3-D instance declares, and is checked on, both CTHW and CDHW)."""
    check_denoiser(_tiny(layout=layout, in_channels=6, out_channels=4, crossattn_dim=12, vector_dim=5))


def test_block_equals_plain_adaln_zero_formula() -> None:
    """One DiT block against Peebles & Xie's adaLN-Zero block written out (softmax attention
    per head, tanh-GELU MLP, shift / scale / gate from the conditioning)."""
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=None).double()
    _perturb_zero_layers(model)
    block = model.blocks[0]
    x, c = torch.randn(2, 16, 24, dtype=torch.float64), torch.randn(2, 24, dtype=torch.float64)
    ada = block.adaLN_modulation[1]
    s1, sc1, g1, s2, sc2, g2 = (torch.nn.functional.silu(c) @ ada.weight.T + ada.bias).chunk(6, dim=1)

    def ln(a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(a, (24,), eps=1e-6)

    h = ln(x) * (1 + sc1[:, None]) + s1[:, None]
    q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
    heads = []
    for i in range(2):  # 2 heads of width 12
        sl = slice(12 * i, 12 * (i + 1))
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 12**0.5, dim=-1)
        heads.append(w @ v[..., sl])
    attn = torch.cat(heads, -1) @ block.attn.proj.weight.T + block.attn.proj.bias
    x1 = x + g1[:, None] * attn
    h = ln(x1) * (1 + sc2[:, None]) + s2[:, None]
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    mlp = torch.nn.functional.gelu(h @ fc1.weight.T + fc1.bias, approximate="tanh") @ fc2.weight.T + fc2.bias
    torch.testing.assert_close(block(x, c), x1 + g2[:, None] * mlp)


def test_bf16_autocast_keeps_dtype_and_values() -> None:
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=10, vector_dim=5)
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8)
    cond = _cond(model, 2, (8, 8), 0)
    ref = model(x, torch.ones(2), cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, torch.ones(2), cond)
    assert y.dtype == torch.float32
    assert (y - ref).norm() / ref.norm() < 0.05  # bf16 rounding only

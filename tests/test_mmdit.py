"""The ``mmdit`` denoiser (SD3's MMDiT): parity with diffusers' ``SD3Transformer2DModel``
through the library's key map (QK-norm and dual attention on and off, square and non-square
latents), the presets' parameters against diffusers' SD3 / SD3.5 configurations, shapes in
every rank, adaLN-Zero identity start, each conditioning input matters, SD3's cropped
position table, gradient checkpointing, and the errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import latentkit
from latentkit.denoisers import MMDIT_TINY_CONFIG
from latentkit.denoisers.mmdit import (
    PRESETS,
    MMDiT,
    config_from_diffusers,
    from_diffusers_state_dict,
    mmdit,
    scaled_sincos_pos_embed,
    to_diffusers_state_dict,
)
from latentkit.errors import CheckpointError, ConfigError, ShapeError
from latentkit.layers import sincos_pos_embed
from latentkit.specs import Conditioning
from latentkit.testing import check_denoiser

# tiny models run many times faster single-threaded on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")

SPATIAL = {"CL": (8,), "CHW": (8, 6), "CTHW": (4, 8, 6), "CDHW": (4, 4, 8)}


def _tiny(**overrides: Any) -> MMDiT:
    return mmdit(**{**MMDIT_TINY_CONFIG, **overrides})


def _perturb_zero_layers(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights for the zero-initialised (adaLN-Zero, output) layers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _cond(model: MMDiT, batch: int, spatial: tuple[int, ...], seed: int, tokens: int = 3) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    spec = model.conditioning_spec
    crossattn = concat = vector = None
    if spec.crossattn_dim is not None:
        crossattn = torch.randn(batch, tokens, spec.crossattn_dim, generator=g)
    if spec.concat_channels:
        concat = torch.randn(batch, spec.concat_channels, *spatial, generator=g)
    if spec.vector_dim is not None:
        vector = torch.randn(batch, spec.vector_dim, generator=g)
    return Conditioning(crossattn=crossattn, concat=concat, vector=vector)


# --------------------------------------------------------------------------- parity with diffusers

PARITY_CONFIGS = {
    "sd3": dict(qk_norm=None, dual_attention_layers=()),
    "qk_norm": dict(qk_norm="rms_norm", dual_attention_layers=()),
    "sd3.5-dual": dict(qk_norm="rms_norm", dual_attention_layers=(0, 1)),
}


def _diffusers_model(qk_norm: str | None, dual_attention_layers: tuple[int, ...], seed: int = 0) -> Any:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=24,
        pos_embed_max_size=32, qk_norm=qk_norm, dual_attention_layers=dual_attention_layers,
    ).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing, but lift any zero layer anyway
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_matches_diffusers_sd3_transformer(name: str) -> None:
    """Weights copied through ``from_diffusers_state_dict`` give diffusers' output to 1e-4
    (float32), at the training size, a non-square size and one larger than the training size
    (a different crop of the position table); the reverse map gives diffusers' state dict back."""
    ref = _diffusers_model(**PARITY_CONFIGS[name])
    ours = mmdit(**config_from_diffusers(ref.config)).eval()
    assert ours.pos_embed_max_size == 32
    assert ours.dual_attention_layers == PARITY_CONFIGS[name]["dual_attention_layers"]
    ref_state = ref.state_dict()
    ours.load_state_dict(from_diffusers_state_dict(ref_state, expected=ours.state_dict().keys()), strict=True)
    back = to_diffusers_state_dict(ours.state_dict())
    assert set(back) == set(ref_state)
    assert all(torch.equal(back[k], ref_state[k]) for k in ref_state)

    g = torch.Generator().manual_seed(1)
    for size in ((16, 16), (12, 20), (40, 24)):
        x = torch.randn(2, 4, *size, generator=g)
        ctx, pooled = torch.randn(2, 5, 32, generator=g), torch.randn(2, 24, generator=g)
        t = torch.tensor([3.0, 870.5])  # the schedule's t (flow models: t * 1000), used as given
        with torch.no_grad():
            expected = ref(
                hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t
            ).sample
            found = ours(x, t, Conditioning(crossattn=ctx, vector=pooled))
        assert expected.abs().amax() > 0.5  # a real output, not a zero-initialised one
        assert (found - expected).abs().amax() < 1e-4, (size, (found - expected).abs().amax())


def test_key_map_names_unknown_and_missing_keys() -> None:
    ref_state = _diffusers_model(None, ()).state_dict()
    with pytest.raises(CheckpointError, match=r"unknown keys \['transformer_blocks.0.attn.extra.weight'\]"):
        from_diffusers_state_dict({**ref_state, "transformer_blocks.0.attn.extra.weight": torch.zeros(1)})
    partial = {k: v for k, v in ref_state.items() if k != "transformer_blocks.1.attn.add_k_proj.bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \['transformer_blocks.1.attn.add_k_proj.bias"):
        from_diffusers_state_dict(partial)
    model = mmdit(**config_from_diffusers({**_diffusers_model(None, ()).config, "qk_norm": "rms_norm"}))
    with pytest.raises(CheckpointError, match=r"missing keys \[.*joint_blocks.0.x_block.attn.ln_q.weight"):
        from_diffusers_state_dict(ref_state, expected=model.state_dict().keys())
    with pytest.raises(CheckpointError, match=r"unknown keys \['joint_blocks.0.extra'\]"):
        to_diffusers_state_dict({**model.state_dict(), "joint_blocks.0.extra": torch.zeros(1)})
    with pytest.raises(ConfigError, match="caption_projection_dim"):
        config_from_diffusers({**_diffusers_model(None, ()).config, "caption_projection_dim": 48})
    with pytest.raises(ConfigError, match="pos_embed_max_size is None"):
        config_from_diffusers({**_diffusers_model(None, ()).config, "pos_embed_max_size": None})


DIFFUSERS_RELEASES = {  # the transformer configs of the released SD3 / SD3.5 checkpoints
    "sd3-medium": dict(num_layers=24, num_attention_heads=24, pos_embed_max_size=192),
    "sd3.5-medium": dict(num_layers=24, num_attention_heads=24, pos_embed_max_size=384, qk_norm="rms_norm",
                         dual_attention_layers=tuple(range(13))),
    "sd3.5-large": dict(num_layers=38, num_attention_heads=38, pos_embed_max_size=192, qk_norm="rms_norm"),
}


@pytest.mark.parametrize("preset", list(DIFFUSERS_RELEASES))
def test_presets_have_the_released_models_tensors(preset: str) -> None:
    """Built on the meta device: the preset maps onto diffusers' model of the released
    configuration tensor by tensor (names and shapes), position table included."""
    diffusers = pytest.importorskip("diffusers")
    release = DIFFUSERS_RELEASES[preset]
    config = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048,
                  caption_projection_dim=64 * release["num_attention_heads"], **release)
    with torch.device("meta"):
        ref = diffusers.SD3Transformer2DModel(**config)
        ours = mmdit(preset=preset)
    assert PRESETS[preset].items() <= config_from_diffusers(ref.config).items()
    theirs = {k: v.shape for k, v in ref.state_dict().items()}
    mapped = {k: v.shape for k, v in to_diffusers_state_dict(ours.state_dict()).items()}
    assert mapped == theirs
    if preset == "sd3-medium":
        assert sum(p.numel() for p in ours.parameters()) == 2_028_328_000  # SD3 Medium, "2B"


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("layout", list(SPATIAL))
def test_shapes_in_every_layout_and_zero_output_at_init(layout: str) -> None:
    model = _tiny(layout=layout, in_channels=5, out_channels=4, crossattn_dim=10, vector_dim=3)
    assert layout in model.layouts and model.size_multiple == 2
    for scale in (1, 2):
        spatial = tuple(s * scale for s in SPATIAL[layout])
        x = torch.randn(2, 4, *spatial)
        y = model(x, torch.tensor([0.5, 999.0]), _cond(model, 2, spatial, 0, tokens=scale * 3))
        assert y.shape == x.shape
        assert not y.any()  # adaLN-Zero: zero output layer at init


@pytest.mark.parametrize(("crossattn_dim", "vector_dim"), [(None, None), (10, None), (None, 5), (10, 5)])
def test_conditioning_is_optional(crossattn_dim: int | None, vector_dim: int | None) -> None:
    """Without ``crossattn_dim`` there is no text stream (image tokens only), without
    ``vector_dim`` no pooled projection; the declared spec says so."""
    model = _tiny(crossattn_dim=crossattn_dim, vector_dim=vector_dim)
    keys = set(model.state_dict())
    assert any(k.startswith("joint_blocks.0.context_block.") for k in keys) == (crossattn_dim is not None)
    assert ("context_embedder.weight" in keys) == (crossattn_dim is not None)
    assert ("y_embedder.mlp.0.weight" in keys) == (vector_dim is not None)
    spec = model.conditioning_spec
    assert (spec.crossattn_dim, spec.vector_dim, spec.concat_channels) == (crossattn_dim, vector_dim, 0)
    _perturb_zero_layers(model)
    y = model(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), _cond(model, 2, (8, 8), 0))
    assert y.shape == (2, 4, 8, 8) and torch.isfinite(y).all()


def test_last_block_is_context_pre_only() -> None:
    """SD3: the last text stream supplies keys and values only (two-way modulation, no output
    projection, no MLP) and its output is discarded."""
    model = _tiny(crossattn_dim=10, depth=3)
    last = model.joint_blocks[-1].context_block
    assert last.pre_only and last.attn.proj is None and last.mlp is None
    assert last.adaLN_modulation[1].out_features == 2 * 24
    assert not any(b.context_block.pre_only for b in model.joint_blocks[:-1])
    assert model.joint_blocks[0].x_block.adaLN_modulation[1].out_features == 9 * 24  # dual attention
    assert model.joint_blocks[1].x_block.attn2 is None
    x, c, ctx = torch.randn(2, 16, 24), torch.randn(2, 24), torch.randn(2, 3, 24)
    context, tokens = model.joint_blocks[-1](ctx, x, c)
    assert context is None and tokens.shape == x.shape


def test_blocks_start_as_identity() -> None:
    """adaLN-Zero: every gate starts at 0, so both streams of every block pass through."""
    model = _tiny(crossattn_dim=10, depth=3)
    x, c, ctx = torch.randn(2, 16, 24), torch.randn(2, 24), torch.randn(2, 3, 24)
    for block in model.joint_blocks[:-1]:
        context, tokens = block(ctx, x, c)
        assert torch.equal(tokens, x) and torch.equal(context, ctx)
    assert torch.equal(model.joint_blocks[-1](ctx, x, c)[1], x)


@pytest.mark.parametrize("entry", ["crossattn", "concat", "vector", "t"])
def test_each_conditioning_input_changes_the_output(entry: str) -> None:
    torch.manual_seed(0)
    model = _tiny(in_channels=6, out_channels=4, crossattn_dim=10, vector_dim=5).eval()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100.0, 700.0])
    a, b = _cond(model, 2, (8, 8), 1), _cond(model, 2, (8, 8), 2)
    if entry == "t":
        y0, y1 = model(x, t, a), model(x, t + 50.0, a)
    else:
        mixed = Conditioning(**{n: (getattr(b, n) if n == entry else v) for n, v in a.items()})
        y0, y1 = model(x, t, a), model(x, t, mixed)
    assert (y0 - y1).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_text_tokens_are_order_free_and_length_free() -> None:
    """Joint attention has no positions on the text side: permuting the crossattn tokens
    changes nothing, and any token count runs."""
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=10).eval()
    _perturb_zero_layers(model)
    x, ctx = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 10)
    y = model(x, torch.ones(1), Conditioning(crossattn=ctx))
    torch.testing.assert_close(model(x, torch.ones(1), Conditioning(crossattn=ctx[:, [3, 0, 4, 1, 2]])), y)
    assert model(x, torch.ones(1), Conditioning(crossattn=ctx[:, :1])).shape == y.shape


def test_position_table_is_cropped_at_the_centre() -> None:
    """SD3: a (max, max) table with positions (input_size / patch) / max apart; an input's
    grid reads the centre crop, so a token's embedding depends on the grid size (unlike the
    table-free embeddings, which equal latentkit's sincos_pos_embed for any grid)."""
    model = _tiny(pos_embed_max_size=8, input_size=8)  # 4 training tokens per axis over 8 positions
    dev = torch.device("cpu")
    assert model.pos_embed is not None and model.pos_embed.shape == (1, 64, 24)
    full = scaled_sincos_pos_embed((8, 8), 24, 0.5).reshape(8, 8, 24)
    torch.testing.assert_close(model.pos_embed[0].reshape(8, 8, 24), full)
    crop = model.position_embedding((4, 2), dev, torch.float32)[0].reshape(4, 2, 24)
    torch.testing.assert_close(crop, full[2:6, 3:5])
    torch.testing.assert_close(scaled_sincos_pos_embed((3, 5), 24, 1.0), sincos_pos_embed((3, 5), 24))
    free = _tiny(pos_embed_max_size=None)
    assert free.pos_embed is None and "pos_embed" not in free.state_dict()
    torch.testing.assert_close(free.position_embedding((6, 3), dev, torch.float32)[0],
                               sincos_pos_embed((6, 3), 24))
    y = free(torch.randn(1, 4, 40, 8), torch.ones(1))  # any size without a table
    assert y.shape == (1, 4, 40, 8)
    with pytest.raises(ShapeError, match="pos_embed_max_size 8"):
        model(torch.randn(1, 4, 18, 8), torch.ones(1))  # 9 tokens on the first axis


def test_gradient_checkpointing_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=10, vector_dim=5, depth=3).double()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    cond = _cond(model, 2, (8, 8), 0).to(torch.float64)
    results = []
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        assert all(block.checkpoint == enabled for block in model.joint_blocks)
        model.zero_grad()
        y = model(x, torch.tensor([20.0, 900.0]), cond)
        (y**2).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)
    assert all(block.checkpoint for block in _tiny(use_checkpoint=True).joint_blocks)


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


@pytest.mark.parametrize("layout", ["CL", "CHW", "CTHW"])
def test_conformance_kit_in_every_rank_with_all_conditioning(layout: str) -> None:
    check_denoiser(_tiny(layout=layout, in_channels=6, out_channels=4, crossattn_dim=12, vector_dim=5))


def test_errors() -> None:
    model = _tiny(crossattn_dim=10, vector_dim=5)
    cond = _cond(model, 1, (8, 8), 0)
    with pytest.raises(ShapeError, match="divisible"):
        model(torch.randn(1, 4, 7, 8), torch.ones(1), cond)
    with pytest.raises(ShapeError, match="crossattn of width 10, got None"):
        model(torch.randn(1, 4, 8, 8), torch.ones(1), Conditioning(vector=cond.vector))
    with pytest.raises(ShapeError, match="crossattn of width 10, got 12"):
        wide = Conditioning(crossattn=torch.randn(1, 3, 12), vector=cond.vector)
        model(torch.randn(1, 4, 8, 8), torch.ones(1), wide)
    with pytest.raises(ShapeError, match="vector of width 5, got None"):
        model(torch.randn(1, 4, 8, 8), torch.ones(1), Conditioning(crossattn=cond.crossattn))
    with pytest.raises(TypeError, match=r"unknown config key\(s\) \['joint_attention_dim'\]"):
        mmdit(joint_attention_dim=32)
    with pytest.raises(TypeError, match="joint_attention_dim"):
        latentkit.create("denoiser", "mmdit", joint_attention_dim=32)
    with pytest.raises(ConfigError, match="unknown mmdit preset"):
        mmdit(preset="sd4")
    with pytest.raises(ConfigError, match="num_heads"):
        _tiny(num_heads=5)
    with pytest.raises(ConfigError, match="dual_attention_layers"):
        _tiny(dual_attention_layers=(2,))


def test_registered_with_presets() -> None:
    assert {"sd3-medium", "sd3.5-medium", "sd3.5-large", "mmdit-s", "mmdit-b"} <= set(PRESETS)
    info = next(i for i in latentkit.list_components("denoiser") if i.name == "mmdit")
    assert info.tiny_config == MMDIT_TINY_CONFIG
    model = latentkit.create("denoiser", "mmdit", **MMDIT_TINY_CONFIG)
    assert isinstance(model, MMDiT) and sum(p.numel() for p in model.parameters()) < 100_000
    with torch.device("meta"):
        small = mmdit(preset="mmdit-s", crossattn_dim=768)
    assert (len(small.joint_blocks), small.hidden_size, small.size_multiple) == (12, 384, 2)

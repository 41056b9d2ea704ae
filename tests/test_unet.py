"""The ``unet`` denoiser: shapes in every layout, each conditioning input matters, gradient
checkpointing is transparent, and the architecture equals diffusers' UNet2DConditionModel
(parameter count and parameter shapes) at the LDM / SD configurations."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

import latentkit
from latentkit.denoisers import UNET_TINY_CONFIG
from latentkit.denoisers.unet import PRESETS, UNetModel, unet
from latentkit.errors import ShapeError
from latentkit.specs import Conditioning
from latentkit.testing import check_denoiser

# tiny models run many times faster single-threaded on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")

SPATIAL = {"CL": (8,), "CHW": (8, 8), "CTHW": (4, 8, 8), "CDHW": (4, 4, 8)}


def _tiny(**overrides: Any) -> UNetModel:
    return unet(**{**UNET_TINY_CONFIG, **overrides})


def _perturb_zero_layers(model: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised layers (output convs, projections) random weights so that every
    branch contributes to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _cond(model: UNetModel, batch: int, spatial: tuple[int, ...], seed: int) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    spec = model.conditioning_spec
    return Conditioning(
        crossattn=None if spec.crossattn_dim is None else torch.randn(batch, 5, spec.crossattn_dim, generator=g),
        concat=torch.randn(batch, spec.concat_channels, *spatial, generator=g) if spec.concat_channels else None,
        vector=None if spec.vector_dim is None else torch.randn(batch, spec.vector_dim, generator=g),
    )


@pytest.mark.parametrize("layout", list(SPATIAL))
def test_shapes_in_every_layout(layout: str) -> None:
    model = _tiny(layout=layout, in_channels=6, out_channels=4, crossattn_dim=12, vector_dim=5)
    spatial = SPATIAL[layout]
    assert layout in model.layouts and model.size_multiple == 2
    x = torch.randn(2, 4, *spatial)
    y = model(x, torch.tensor([3.0, 999.5]), _cond(model, 2, spatial, 0))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not y.any()  # zero-initialised output layer: starts at 0


def test_declares_what_it_accepts() -> None:
    model = _tiny(in_channels=7, out_channels=4, crossattn_dim=32, vector_dim=3, layout="CTHW")
    spec = model.conditioning_spec
    assert (spec.crossattn_dim, spec.concat_channels, spec.vector_dim) == (32, 3, 3)
    assert model.layouts == ("CTHW", "CDHW")
    assert _tiny(channel_mult=(1, 2, 2)).size_multiple == 4


@pytest.mark.parametrize("entry", ["crossattn", "concat", "vector", "t"])
def test_each_conditioning_input_changes_the_output(entry: str) -> None:
    torch.manual_seed(0)
    model = _tiny(in_channels=6, out_channels=4, crossattn_dim=12, vector_dim=5).eval()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10.0, 500.0])
    a = _cond(model, 2, (8, 8), 1)
    b = _cond(model, 2, (8, 8), 2)
    if entry == "t":
        y0, y1 = model(x, t, a), model(x, t + 50, a)
    else:
        mixed = Conditioning(**{n: (getattr(b, n) if n == entry else v) for n, v in a.items()})
        y0, y1 = model(x, t, a), model(x, t, mixed)
    assert (y0 - y1).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every item changes


@pytest.mark.parametrize("variant", ["transformer", "adm"])
def test_gradient_checkpointing_same_outputs_and_gradients(variant: str) -> None:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = (
        dict(crossattn_dim=12, vector_dim=5)
        if variant == "transformer"
        else dict(use_spatial_transformer=False, use_scale_shift_norm=True, resblock_updown=True,
                  use_new_attention_order=True)
    )
    model = _tiny(**kwargs).double()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t = torch.tensor([3.0, 700.0])
    cond = _cond(model, 2, (8, 8), 0).to(torch.float64)
    results = []
    for enabled in (False, True):
        model.set_gradient_checkpointing(enabled)
        model.zero_grad()
        y = model(x, t, cond)
        (y**2).sum().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)
    assert any(m.checkpoint for m in model.modules() if hasattr(m, "checkpoint"))


def test_channels_last_input_gives_same_output() -> None:
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=12).eval()
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8)
    cond = _cond(model, 2, (8, 8), 0)
    ref = model(x, torch.ones(2), cond)
    model_cl = model.to(memory_format=torch.channels_last)
    y = model_cl(x.to(memory_format=torch.channels_last), torch.ones(2), cond)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def _shape_counter(model: torch.nn.Module) -> Counter[tuple[int, ...]]:
    return Counter(tuple(p.shape) for p in model.parameters())


@pytest.mark.parametrize(
    ("preset", "ours", "theirs"),
    [
        # LDM-KL-8-G txt2img (context 1280) at 1/10 width
        (
            "ldm-txt2img",
            dict(model_channels=32),
            dict(block_out_channels=(32, 64, 128, 128), cross_attention_dim=1280, attention_head_dim=8),
        ),
        # SD 1.x (context 768) at 1/10 width
        (
            "sd1",
            dict(model_channels=32),
            dict(block_out_channels=(32, 64, 128, 128), cross_attention_dim=768, attention_head_dim=8),
        ),
        # SD 2.x (linear projections, 64-channel heads) at 1/5 width
        (
            "sd2",
            dict(model_channels=64),
            dict(block_out_channels=(64, 128, 256, 256), cross_attention_dim=1024,
                 attention_head_dim=(1, 2, 4, 4), use_linear_projection=True),
        ),
    ],
)
def test_parameters_equal_diffusers_unet2dcondition(preset: str, ours: dict, theirs: dict) -> None:
    from diffusers import UNet2DConditionModel

    model = unet(preset=preset, **ours)
    reference = UNet2DConditionModel(in_channels=4, out_channels=4, layers_per_block=2, **theirs)
    n_ours = sum(p.numel() for p in model.parameters())
    n_ref = sum(p.numel() for p in reference.parameters())
    assert n_ours == n_ref
    assert _shape_counter(model) == _shape_counter(reference)  # same tensors, not just same total


def test_sdxl_preset_equals_diffusers_at_reduced_width() -> None:
    from diffusers import UNet2DConditionModel

    model = unet(preset="sdxl", model_channels=32, num_head_channels=16, transformer_depth=(0, 1, 2),
                 crossattn_dim=64, vector_dim=48)
    reference = UNet2DConditionModel(
        block_out_channels=(32, 64, 128), layers_per_block=2, cross_attention_dim=64,
        attention_head_dim=(2, 4, 8), use_linear_projection=True, transformer_layers_per_block=(1, 1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=48,
    )
    assert _shape_counter(model) == _shape_counter(reference)


def test_full_size_parameter_counts() -> None:
    """Stable Diffusion 1.x's UNet has 859,520,964 parameters; ADM's ImageNet-64 model 296M
    (ours plus its 1000 x 768 class table and 3 extra learned-sigma output channels)."""
    with torch.device("meta"):
        sd1 = unet(preset="sd1")
        adm = unet(preset="adm-64")
    assert sum(p.numel() for p in sd1.parameters()) == 859_520_964
    class_table, sigma_out = 1000 * 768, 3 * 192 * 3 * 3 + 3
    assert round((sum(p.numel() for p in adm.parameters()) + class_table + sigma_out) / 1e6) == 296


def test_ldm_key_names() -> None:
    model = unet(preset="sd1", model_channels=32)
    keys = set(model.state_dict())
    for key in (  # keys of the LDM / SD 1.x checkpoint, without "model.diffusion_model."
        "time_embed.0.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
        "input_blocks.1.1.transformer_blocks.0.norm3.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "middle_block.1.proj_out.weight",
        "middle_block.2.out_layers.3.bias",
        "output_blocks.2.1.conv.weight",
        "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight",
        "out.0.weight",
        "out.2.weight",
    ):
        assert key in keys, key
    assert len(model.input_blocks) == 12 and len(model.output_blocks) == 12


def test_errors_name_expected_and_found() -> None:
    model = _tiny(crossattn_dim=12)
    with pytest.raises(ShapeError, match="divisible"):
        model(torch.randn(1, 4, 7, 8), torch.ones(1), _cond(model, 1, (7, 8), 0))
    with pytest.raises(ShapeError, match="crossattn"):
        model(torch.randn(1, 4, 8, 8), torch.ones(1), Conditioning())
    with pytest.raises(ShapeError, match="4 channels"):
        model(torch.randn(1, 3, 8, 8), torch.ones(1), _cond(model, 1, (8, 8), 0))
    with pytest.raises(TypeError, match="channel_mults"):
        unet(channel_mults=(1, 2))
    with pytest.raises(ValueError, match="unknown unet preset"):
        unet(preset="sd3")
    with pytest.raises(ValueError, match="norm_groups"):
        _tiny(model_channels=6)


def test_presets_build_and_registry_creates_tiny_config() -> None:
    assert {"ldm-txt2img", "sd1", "sd2", "sdxl", "ldm-celebahq256", "adm-64"} <= set(PRESETS)
    with torch.device("meta"):
        for name in PRESETS:
            assert isinstance(unet(preset=name), UNetModel)
    model = latentkit.create("denoiser", "unet", **UNET_TINY_CONFIG)
    assert isinstance(model, UNetModel)
    assert sum(p.numel() for p in model.parameters()) < 100_000
    y = model(torch.randn(2, 4, 8, 8), torch.ones(2))
    assert y.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("layout", ["CL", "CHW", "CTHW"])
def test_conformance_kit_in_every_rank_with_all_conditioning(layout: str) -> None:
    """The conformance kit on an instance of each spatial rank taking crossattn, concat and
    vector (the 3-D instance declares, and is checked on, both CTHW and CDHW)."""
    check_denoiser(_tiny(layout=layout, in_channels=6, out_channels=4, crossattn_dim=12, vector_dim=5))


def _diffusers_to_ldm_key(key: str, layers: int, attn_in_up: set[int]) -> str:
    """Map a diffusers UNet2DConditionModel key to the LDM ``openaimodel`` key (SD layout):
    the renaming a checkpoint converter has to do, written plainly."""
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for prefix, target in top.items():
        if key.startswith(prefix + "."):
            return target + key[len(prefix) :]
    parts = key.split(".")

    def sub(kind: str, rest: list[str]) -> str:
        if kind == "resnets":
            return f"{resnet[rest[0]]}.{'.'.join(rest[1:])}"
        return ".".join(rest)

    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            return f"input_blocks.{(layers + 1) * (i + 1)}.0.op.{rest[-1]}"
        return f"input_blocks.{(layers + 1) * i + j + 1}.{0 if kind == 'resnets' else 1}.{sub(kind, rest)}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        index = 1 if kind == "attentions" else 2 * j
        return f"middle_block.{index}.{sub(kind, rest)}"
    if parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        block = (layers + 1) * i
        if kind == "upsamplers":
            return f"output_blocks.{block + layers}.{2 if i in attn_in_up else 1}.conv.{rest[-1]}"
        return f"output_blocks.{block + j}.{0 if kind == 'resnets' else 1}.{sub(kind, rest)}"
    raise KeyError(key)


def test_same_function_as_diffusers_after_key_mapping() -> None:
    """diffusers' weights, renamed key by key to the LDM names, load strictly into ``unet`` and
    give the same output: the architecture (not only the parameter count) is the same."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    reference = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    ).eval()
    model = unet(preset="sd1", model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(1,), num_heads=4, crossattn_dim=16, norm_groups=8).eval()
    state = {_diffusers_to_ldm_key(k, 1, {1}): v for k, v in reference.state_dict().items()}
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10.0, 731.5])
    ctx = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=ctx).sample
        found = model(x, t, Conditioning(crossattn=ctx))
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_and_bf16_weights() -> None:
    """Mixed precision: autocast keeps the output dtype of x; bf16 weights run end to end with
    group norm statistics in float32."""
    torch.manual_seed(0)
    model = _tiny(crossattn_dim=12, vector_dim=5)
    _perturb_zero_layers(model)
    x = torch.randn(2, 4, 8, 8)
    cond = _cond(model, 2, (8, 8), 0)
    ref = model(x, torch.ones(2), cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, torch.ones(2), cond)
    assert y.dtype == torch.float32
    assert (y - ref).norm() / ref.norm() < 0.05  # bf16 rounding only
    half = model.to(torch.bfloat16)
    y16 = half(x.bfloat16(), torch.ones(2), cond.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - ref).norm() / ref.norm() < 0.05

"""Parity with an independent implementation (issue 8): a random-weight, reduced-width
checkpoint in the exact SD key format is loaded by latentkit and by diffusers through its own
single-file conversion (``from_single_file`` with a locally written original LDM config,
``create_diffusers_clip_model_from_ldm`` with a local text-encoder config; nothing reaches the
hub). Both must give the same UNet, autoencoder and text-encoder outputs (max abs difference
< 1e-4 in float32) and the same latents from a deterministic sampler (Euler, with
classifier-free guidance), for SD 1.x-, SD 2.x (768 v-prediction)- and inpainting-shaped files.

The real-size key sets are checked too, on the meta device: for the released architectures,
diffusers' conversion of latentkit's keys fills diffusers' models exactly.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers / transformers are imported

import pytest
import torch
import torch.nn.functional as F

from latentkit.interop.stable_diffusion import (
    StableDiffusionConfig,
    detect_stable_diffusion,
    ldm_meta_state,
    load_stable_diffusion,
    released_config,
    text_conditioner,
)
from latentkit.specs import Conditioning
from latentkit.testing.stable_diffusion import tiny_config, write_random_checkpoint

diffusers = pytest.importorskip("diffusers")
yaml = pytest.importorskip("yaml")

TOL = 1e-4
VARIANTS = {
    "sd1": dict(family="sd1"),
    "sd2-v": dict(family="sd2"),
    "sd1-inpainting": dict(family="sd1", inpainting=True),
    "sd2-inpainting": dict(family="sd2", inpainting=True),
}


def original_ldm_config(config: StableDiffusionConfig) -> dict[str, Any]:
    """The LDM yaml (``v1-inference.yaml`` / ``v2-inference-v.yaml`` shape) describing
    ``config``: what diffusers' single-file loader reads the architecture from."""
    u, a = config.unet, config.autoencoder
    unet = {
        "in_channels": u["in_channels"],
        "out_channels": u["out_channels"],
        "model_channels": u["model_channels"],
        "attention_resolutions": list(u["attention_resolutions"]),
        "num_res_blocks": u["num_res_blocks"],
        "channel_mult": list(u["channel_mult"]),
        "transformer_depth": 1,
        "context_dim": u["crossattn_dim"],
        "use_linear_in_transformer": u["use_linear_in_transformer"],
    }
    unet.update({"num_head_channels": 64} if config.family == "sd2" else {"num_heads": 8})
    ddconfig = {
        "double_z": True,
        "z_channels": a["latent_channels"],
        "resolution": 256,
        "in_channels": a["channels"],
        "out_ch": a["channels"],
        "ch": a["base_channels"],
        "ch_mult": list(a["channel_multipliers"]),
        "num_res_blocks": a["num_res_blocks"],
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return {
        "model": {
            "params": {
                "linear_start": 0.00085,
                "linear_end": 0.012,
                "scale_factor": 0.18215,
                "parameterization": "v" if config.prediction_type == "v" else "eps",
                "unet_config": {"params": unet},
                "first_stage_config": {
                    "params": {"embed_dim": a["latent_channels"], "ddconfig": ddconfig}
                },
            }
        }
    }


def clip_text_config(config: StableDiffusionConfig) -> Any:
    """transformers' CLIPTextConfig of the text encoder diffusers builds for SD 1.x
    (``CLIPTextModel``, quick-GELU) or SD 2.x (the OpenCLIP tower minus its last block, GELU)."""
    transformers = pytest.importorskip("transformers")
    t = config.text["text_cfg"]
    return transformers.CLIPTextConfig(
        vocab_size=t["vocab_size"],
        hidden_size=t["width"],
        intermediate_size=int(t["width"] * t["mlp_ratio"]),
        num_hidden_layers=t["layers"] - (1 if config.family == "sd2" else 0),
        num_attention_heads=t["heads"],
        max_position_embeddings=t["context_length"],
        hidden_act="quick_gelu" if config.family == "sd1" else "gelu",
        projection_dim=config.text["embed_dim"],
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=49406,
        eos_token_id=49407,
    )


class Pair:
    """One checkpoint, loaded by latentkit and by diffusers."""

    def __init__(self, root: Path, name: str, seed: int) -> None:
        self.config = tiny_config(**VARIANTS[name])
        self.path = write_random_checkpoint(root / f"{name}.safetensors", self.config, seed=seed)
        yaml_path = root / f"{name}.yaml"
        yaml_path.write_text(yaml.safe_dump(original_ldm_config(self.config)))
        self.model = load_stable_diffusion(self.path)
        self.unet = diffusers.UNet2DConditionModel.from_single_file(
            os.fspath(self.path), original_config=os.fspath(yaml_path), local_files_only=True
        ).eval()
        self.vae = diffusers.AutoencoderKL.from_single_file(
            os.fspath(self.path), original_config=os.fspath(yaml_path), local_files_only=True
        ).eval()
        self.root = root
        self.name = name
        self._text: Any = None

    def text_encoder(self) -> Any:
        if self._text is None:
            transformers = pytest.importorskip("transformers")
            from diffusers.loaders.single_file_utils import (
                create_diffusers_clip_model_from_ldm,
                load_single_file_checkpoint,
            )

            config_dir = self.root / f"{self.name}-text"
            clip_text_config(self.config).save_pretrained(config_dir)
            checkpoint = load_single_file_checkpoint(os.fspath(self.path))
            self._text = create_diffusers_clip_model_from_ldm(
                transformers.CLIPTextModel,
                checkpoint,
                config=os.fspath(config_dir),
                local_files_only=True,
            ).eval()
        return self._text


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    root = tmp_path_factory.mktemp("parity")
    return {name: Pair(root, name, seed) for seed, name in enumerate(VARIANTS)}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def _scale(a: torch.Tensor) -> float:
    return float(a.abs().max())


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_unet_outputs_match_diffusers(pairs: dict[str, Pair], name: str) -> None:
    pair = pairs[name]
    gen = torch.Generator().manual_seed(0)
    cin = pair.config.unet["in_channels"]
    x = torch.randn(2, cin, 8, 8, generator=gen)
    t = torch.tensor([3.0, 871.0])
    context = torch.randn(2, 77, pair.config.unet["crossattn_dim"], generator=gen)
    reference = pair.unet(x, t, encoder_hidden_states=context).sample
    concat = x[:, 4:] if cin > 4 else None
    ours = pair.model.denoiser(x[:, :4], t, Conditioning(crossattn=context, concat=concat))
    assert _scale(reference) > 0.1  # random output layers: not a trivially zero output
    assert _max_diff(ours, reference) < TOL


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
@torch.no_grad()
def test_autoencoder_outputs_match_diffusers(pairs: dict[str, Pair], name: str) -> None:
    pair = pairs[name]
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    posterior = pair.vae.encode(image).latent_dist
    ours = pair.model.autoencoder.encode(image)
    assert _max_diff(ours.mode(), posterior.mode()) < TOL
    assert _max_diff(ours.std, posterior.std) < TOL
    z = posterior.mode()
    assert _max_diff(pair.model.autoencoder.decode(z), pair.vae.decode(z).sample) < TOL
    # normalised latents: the 0.18215 scaling of both
    assert _max_diff(pair.model.encode(image), z * pair.vae.config.scaling_factor) < TOL


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
@torch.no_grad()
def test_text_encoder_outputs_match_diffusers(pairs: dict[str, Pair], name: str) -> None:
    pair = pairs[name]
    encoder = pair.text_encoder()
    text = text_conditioner(pair.model)
    prompts = ["a photograph of an astronaut riding a horse", "", "sketch, red"]
    ids = text.tokenize(prompts)
    reference = encoder(ids).last_hidden_state  # SD 2.x: 23 of 24 blocks + final norm
    ours = text.encode(prompts).crossattn
    assert _scale(reference) > 0.5
    assert _max_diff(ours, reference) < TOL


def _hf_tokenizer(pad_token: str, root: Path) -> Any:
    """transformers' CLIPTokenizer over the same BPE vocabulary (built from open_clip's files,
    offline)."""
    import json

    import open_clip

    transformers = pytest.importorskip("transformers")
    bpe = open_clip.SimpleTokenizer()
    names = {
        "<start_of_text>": "<|startoftext|>",
        "<end_of_text>": "<|endoftext|>",
    }  # open_clip's names
    (root / "vocab.json").write_text(
        json.dumps({names.get(k, k): v for k, v in bpe.encoder.items()})
    )
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (root / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    return transformers.CLIPTokenizer(
        os.fspath(root / "vocab.json"), os.fspath(root / "merges.txt"), pad_token=pad_token
    )


@pytest.mark.parametrize(("name", "pad"), [("sd1", "<|endoftext|>"), ("sd2-v", "!")])
def test_token_ids_match_the_hugging_face_tokenizer(
    pairs: dict[str, Pair], name: str, pad: str, tmp_path: Path
) -> None:
    """SD 1.x's tokenizer pads with <|endoftext|>, SD 2.x's (diffusers' copy of open_clip's)
    with "!" (id 0)."""
    tokenizer = _hf_tokenizer(pad, tmp_path)
    prompts = ["A photo of a cat", "", "an oil painting, trending on artstation"]
    expected = tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    assert torch.equal(text_conditioner(pairs[name].model).tokenize(prompts), expected.input_ids)


def _diffusers_euler(
    pair: Pair,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    steps: int,
    guidance: float,
    concat: torch.Tensor | None = None,
) -> torch.Tensor:
    """diffusers' EulerDiscreteScheduler with SD's schedule and classifier-free guidance,
    started from sigma_max * noise (diffusers scales ``leading`` noise by sqrt(sigma^2 + 1),
    a VP-style initial variance; both samplers get the same start here)."""
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
        prediction_type="v_prediction" if pair.config.prediction_type == "v" else "epsilon",
    )
    scheduler.set_timesteps(steps)
    x = noise * scheduler.sigmas[0]
    context = torch.cat([uncond, cond])
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        if concat is not None:
            x_in = torch.cat([x_in, torch.cat([concat, concat])], dim=1)
        out_uncond, out_cond = pair.unet(x_in, t, encoder_hidden_states=context).sample.chunk(2)
        x = scheduler.step(out_uncond + guidance * (out_cond - out_uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
@torch.no_grad()
def test_sampled_latents_match_diffusers(pairs: dict[str, Pair], name: str) -> None:
    pair = pairs[name]
    text = text_conditioner(pair.model)
    prompt = ["a lighthouse at dusk"]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    reference = _diffusers_euler(
        pair,
        noise,
        text.encode(prompt).crossattn,
        text.encode([""]).crossattn,
        steps=5,
        guidance=4.0,
    )
    ours = pair.model.sample(
        {"caption": prompt},
        sampler="euler",
        steps=5,
        guidance_scale=4.0,
        noise=noise,
        latent_size=(8, 8),
        return_latents=True,
    )
    assert _max_diff(ours, reference) < TOL * max(1.0, _scale(reference))


@pytest.mark.parametrize("name", ["sd1-inpainting", "sd2-inpainting"])
@torch.no_grad()
def test_inpainting_latents_match_diffusers(pairs: dict[str, Pair], name: str) -> None:
    """The 9-channel model conditioned as SD inpainting is: latent, the mask resized to the
    latent (nearest), the scaled latent of the masked image (posterior mode)."""
    pair = pairs[name]
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 2:9, 5:16] = 1.0
    masked = image * (1 - mask)
    concat = torch.cat(
        [
            F.interpolate(mask, size=(8, 8)),
            pair.vae.encode(masked).latent_dist.mode() * pair.vae.config.scaling_factor,
        ],
        dim=1,
    )
    text = text_conditioner(pair.model)
    noise = torch.randn(1, 4, 8, 8, generator=gen)
    reference = _diffusers_euler(
        pair,
        noise,
        text.encode(["a boat"]).crossattn,
        text.encode([""]).crossattn,
        steps=4,
        guidance=3.0,
        concat=concat,
    )
    ours = pair.model.inpaint(
        image,
        mask,
        batch={"caption": ["a boat"]},
        blend=False,
        sampler="euler",
        steps=4,
        guidance_scale=3.0,
        noise=noise,
        return_latents=True,
    )
    assert _max_diff(ours, reference) < TOL * max(1.0, _scale(reference))


# ----------------------------------------------------------------------------- real sizes


def _assert_fills(
    module: torch.nn.Module, converted: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()
) -> None:
    own = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith(ignore)}
    got = {k: tuple(v.shape) for k, v in converted.items() if not k.endswith(ignore)}
    assert sorted(own) == sorted(got)
    assert own == got


@pytest.mark.parametrize(("family", "inpainting"), [("sd1", False), ("sd2", False), ("sd1", True)])
def test_released_architectures_fill_diffusers_models_exactly(
    family: str, inpainting: bool
) -> None:
    """At real size (meta tensors): the keys and shapes latentkit reads and writes are the ones
    diffusers' converters expect from an original SD file, and detection reads the released
    architecture back from them."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    config = released_config(family, inpainting=inpainting)
    state = ldm_meta_state(config)
    detected = detect_stable_diffusion(state)
    assert detected == config
    reread = ldm_meta_state(detected)
    assert {k: v.shape for k, v in reread.items()} == {k: v.shape for k, v in state.items()}

    original = original_ldm_config(config)
    unet_config = create_unet_diffusers_config_from_ldm(original, state)
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_config)
    _assert_fills(unet, convert_ldm_unet_checkpoint(state, unet_config))
    vae_config = create_vae_diffusers_config_from_ldm(original, state)
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(**vae_config)
    _assert_fills(vae, convert_ldm_vae_checkpoint(state, vae_config))
    if importlib.util.find_spec("transformers") is not None:
        from diffusers.loaders.single_file_utils import (
            convert_ldm_clip_checkpoint,
            convert_open_clip_checkpoint,
        )
        from transformers import CLIPTextModel

        with torch.device("meta"):
            text = CLIPTextModel(clip_text_config(config))
        if family == "sd1":
            converted = convert_ldm_clip_checkpoint(state)
        else:
            converted = convert_open_clip_checkpoint(text, state)
        if not hasattr(text, "text_model"):
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        converted.pop("embeddings.position_ids", None)
        converted.pop("text_projection.weight", None)  # CLIPTextModel has no projection
        _assert_fills(text, converted, ignore=("position_ids",))

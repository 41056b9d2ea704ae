"""Stable Diffusion stand-ins for plugin authors and tests: tiny SD-shaped configs and random
single-file checkpoints in the real key layout.

There are no real weights on a test machine, so tools built on
:mod:`latentkit.interop.stable_diffusion` are exercised on files that have the released
checkpoints' exact key names and layout but reduced widths and random values::

    from latentkit.interop.stable_diffusion import load_stable_diffusion
    from latentkit.testing.stable_diffusion import tiny_config, write_random_checkpoint

    path = write_random_checkpoint(tmp_path / "sd2.safetensors", tiny_config("sd2"), seed=0)
    model = load_stable_diffusion(path)  # a complete SD 2.x-v model, built in about a second

* :func:`tiny_config`: a reduced-width SD 1.x / 2.x architecture (optionally inpainting);
* :func:`randomize_weights_`: draw every parameter of a module, zero-initialised output
  layers included, so a random model computes non-trivial outputs;
* :func:`write_random_checkpoint`: a random-weight single-file checkpoint (``.safetensors``
  or ``.ckpt``), optionally with an EMA copy of the UNet and the entries LDM training
  checkpoints carry besides weights.

This module builds on the product module; the product never imports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentkit.checkpoint_files import write_checkpoint
from latentkit.interop import sd_keys
from latentkit.interop.sd_keys import CLIP_PREFIX, OPENCLIP_PREFIX, UNET_PREFIX
from latentkit.interop.stable_diffusion import (
    StableDiffusionConfig,
    build_stable_diffusion_parts,
    custom_config,
    to_ldm_state_dict_from_parts,
)

__all__ = ["randomize_weights_", "tiny_config", "write_random_checkpoint"]


def tiny_config(
    family: str = "sd1", *, inpainting: bool = False, prediction_type: str | None = None
) -> StableDiffusionConfig:
    """A reduced-width architecture in the exact SD 1.x / 2.x key format (three UNet levels,
    attention on the first two; a two-level autoencoder, f = 2; a small text tower with the
    real 49408-token vocabulary and 77-token context). Builds in well under a second; for
    tests, examples and CLI smoke runs. Widths follow the released models' head conventions,
    so the detected config of a saved file equals this one."""
    if family not in ("sd1", "sd2"):
        raise ValueError(f"family must be 'sd1' or 'sd2', got {family!r}")
    sd2 = family == "sd2"
    width = 128 if sd2 else 64  # text width = UNet context width; heads = width / 64
    mc = 64 if sd2 else 32  # SD 2.x uses 64 channels per head
    unet: dict[str, Any] = dict(
        in_channels=9 if inpainting else 4,
        out_channels=4,
        model_channels=mc,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2),
        transformer_depth=(1, 1, 0),
        transformer_depth_middle=1,
        crossattn_dim=width,
        use_linear_in_transformer=sd2,
        layout="CHW",
    )
    unet.update({"num_head_channels": 64} if sd2 else {"num_heads": 8})
    autoencoder: dict[str, Any] = dict(
        config=None,
        channels=3,
        layout="CHW",
        latent_channels=4,
        base_channels=32,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        norm_num_groups=32,
        attention=True,
    )
    return custom_config(
        family,
        unet=unet,
        autoencoder=autoencoder,
        text_width=width,
        text_layers=3 if sd2 else 2,
        prediction_type=prediction_type,
    )


@torch.no_grad()
def randomize_weights_(model: nn.Module, *, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Draw every parameter of ``model`` at random, zero-initialised output layers included,
    so that a random-weight model computes non-trivial outputs: normalisation gains
    ``1 + 0.1 n``, biases ``0.1 n``, other weights ``n * scale / sqrt(fan_in)`` with ``n``
    standard normal from a generator seeded with ``seed``. Returns ``model``."""
    gen = torch.Generator().manual_seed(int(seed))
    for name, p in model.named_parameters():
        if p.ndim == 1 and name.endswith("weight"):
            p.normal_(1.0, 0.1, generator=gen)
        elif p.ndim <= 1:
            p.normal_(0.0, 0.1, generator=gen)
        else:
            p.normal_(0.0, scale / max(1.0, p[0].numel()) ** 0.5, generator=gen)
    return model


def _ldm_schedule_buffers() -> dict[str, torch.Tensor]:
    """The DDPM buffers an LDM training checkpoint carries (``DDPM.register_schedule`` with
    SD's scaled-linear betas), float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    out = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {k: v.float() for k, v in out.items()}


def write_random_checkpoint(
    path: str | os.PathLike[str],
    config: StableDiffusionConfig | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    ema: bool = False,
    ldm_extras: bool = True,
) -> Path:
    """Write a random-weight checkpoint in the exact SD single-file format (default
    architecture: :func:`tiny_config`), as a stand-in for real weights in tests and smoke runs.

    Every weight is drawn (:func:`randomize_weights_`). ``ema`` adds a ``model_ema.*`` copy of
    the UNet with other random values plus LDM's EMA counters; ``ldm_extras`` adds what
    training checkpoints carry besides weights (DDPM schedule buffers, CLIP's
    ``position_ids`` or OpenCLIP's ``logit_scale``). Returns the path written."""
    config = tiny_config() if config is None else config
    with torch.device("meta"):  # skip the default initialisation: every weight is drawn anyway
        parts = build_stable_diffusion_parts(config)
    for part in parts:
        randomize_weights_(part.to_empty(device="cpu"), seed=seed)
        seed += 1
    weights = to_ldm_state_dict_from_parts(*parts, config.family)
    state = {k: v.to(dtype) for k, v in weights.items()}
    if ldm_extras:
        state.update(_ldm_schedule_buffers())
        if config.family == "sd1":
            context = int(config.text["text_cfg"]["context_length"])
            state[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(context)[None]
        else:
            state[OPENCLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    if ema:
        gen = torch.Generator().manual_seed(int(seed) + 1)
        for key, value in list(state.items()):
            if key.startswith(UNET_PREFIX):
                noise = 0.01 * torch.randn(value.shape, generator=gen)
                state[sd_keys.ema_key(key[len(UNET_PREFIX) :])] = (value.float() + noise).to(dtype)
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    meta = (
        {"prediction_type": config.prediction_type}
        if Path(path).suffix in (".safetensors", ".sft")
        else {}
    )
    return write_checkpoint(state, path, metadata=meta)

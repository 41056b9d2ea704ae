"""Key and layout mapping between Stable Diffusion's original single-file format (the LDM
code of CompVis/stablediffusion and Stability-AI/stablediffusion) and latentkit's components.

A Stable Diffusion 1.x / 2.x checkpoint is the ``state_dict`` of LDM's ``LatentDiffusion``:

* ``model.diffusion_model.``: the ``unet`` denoiser
  (:class:`~latentkit.denoisers.unet.UNetModel`), key by key;
* ``model_ema.diffusion_model<key without dots>``: the EMA copy of the UNet (LDM's ``LitEma``
  flattens the names);
* ``first_stage_model.``: the ``kl`` autoencoder; ``down.i.downsample`` / ``up.i.upsample``
  are ``resample`` there, and the mid-attention 1x1 convolutions are linear layers;
* ``cond_stage_model.transformer.text_model.``: SD 1.x, a Hugging Face ``CLIPTextModel``
  (ViT-L/14), mapped onto open_clip's ``TextTransformer`` (q, k, v fused into ``in_proj``);
* ``cond_stage_model.model.``: SD 2.x, an open_clip ``TextTransformer`` (ViT-H/14), key by key.

Every mapping here is a pair of pure functions ``to_ldm`` / ``from_ldm`` over state dicts that
only reshape, split or concatenate tensors, never change values: they also run on meta
tensors, which is how the expected keys and shapes of a checkpoint are computed before
anything is read. Shapes decide the architecture (:func:`infer_unet_config`,
:func:`infer_vae_config`, :func:`infer_text_config`); the number of attention heads, which no
shape shows, follows the released models' convention (SD 1.x: 8 heads; SD 2.x: 64 channels per
head; CLIP / OpenCLIP text towers: 64 channels per head).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "AUX_KEYS",
    "CLIP_PREFIX",
    "OPENCLIP_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "clip_from_ldm",
    "clip_to_ldm",
    "ema_key",
    "infer_text_config",
    "infer_unet_config",
    "infer_vae_config",
    "vae_from_ldm",
    "vae_to_ldm",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
EMA_PREFIX = "model_ema."

#: Entries of an LDM checkpoint that are not weights of the three networks: the DDPM
#: schedule buffers of ``ldm.models.diffusion.ddpm.DDPM``, its ``logvar``, the EMA counters,
#: CLIP's ``position_ids`` buffer, OpenCLIP's ``logit_scale`` and the ``v_pred`` marker some
#: tools add to v-prediction files. They are kept as they are and written back on save.
AUX_KEYS: frozenset[str] = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
        "lvlb_weights",
        "model_ema.decay",
        "model_ema.num_updates",
        "v_pred",
        CLIP_PREFIX + "embeddings.position_ids",
        OPENCLIP_PREFIX + "logit_scale",
    }
)


def ema_key(unet_key: str) -> str:
    """LDM's EMA name of UNet key ``unet_key`` (without the ``model.diffusion_model.``
    prefix): ``LitEma`` stores ``model.diffusion_model.a.b`` as ``model_ema.diffusion_modelab``."""
    return EMA_PREFIX + "diffusion_model" + unet_key.replace(".", "")


# --------------------------------------------------------------------------- autoencoder

_VAE_RESAMPLE_TO_LDM = (
    (re.compile(r"^encoder\.down\.(\d+)\.resample\."), r"encoder.down.\1.downsample."),
    (re.compile(r"^decoder\.up\.(\d+)\.resample\."), r"decoder.up.\1.upsample."),
)
_VAE_RESAMPLE_FROM_LDM = (
    (re.compile(r"^encoder\.down\.(\d+)\.downsample\."), r"encoder.down.\1.resample."),
    (re.compile(r"^decoder\.up\.(\d+)\.upsample\."), r"decoder.up.\1.resample."),
)
_VAE_ATTN_WEIGHT = re.compile(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def vae_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``KLAutoencoder`` state -> LDM ``first_stage_model`` state (without the prefix).

    Mid-block attention projections become 1x1 convolutions (C, C, 1, 1), as in LDM's
    ``AttnBlock``; ``resample`` layers are named ``downsample`` / ``upsample``."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _VAE_RESAMPLE_TO_LDM:
            new = pattern.sub(repl, new)
        if _VAE_ATTN_WEIGHT.match(key) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out


def vae_from_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`vae_to_ldm` (views, no copies)."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _VAE_RESAMPLE_FROM_LDM:
            new = pattern.sub(repl, new)
        if _VAE_ATTN_WEIGHT.match(new) and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


# --------------------------------------------------------------------------- CLIP text model

_CLIP_RENAMES = (  # open_clip name part -> Hugging Face CLIPTextModel name part
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
)
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


def clip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``TextTransformer`` state (of a CLIP ViT-L/14-shaped tower) -> SD 1.x
    ``cond_stage_model.transformer.text_model`` state (without the prefix).

    The fused ``in_proj`` (3D, D) is split into ``q_proj``, ``k_proj``, ``v_proj``, in that
    order (``nn.MultiheadAttention``'s layout). ``text_projection``, which SD 1.x's
    ``CLIPTextModel`` lacks, must not be present."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key[len("ln_final.") :]] = value
        elif m := _RESBLOCK.match(key):
            layer, rest = m.groups()
            base = f"encoder.layers.{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_") :]  # weight / bias
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part
                continue
            for lk, hf in _CLIP_RENAMES:
                if rest.startswith(lk):
                    out[base + hf + rest[len(lk) :]] = value
                    break
            else:
                raise KeyError(f"no SD 1.x CLIP name for text-tower key {key!r}")
        else:
            raise KeyError(f"no SD 1.x CLIP name for text-tower key {key!r}")
    return out


def clip_from_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`clip_to_ldm`: q, k, v are concatenated into ``in_proj`` (the one
    copy made while loading: 3 x D x D per layer). Keys it does not know are left out (the
    caller has checked the key set before)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key[len("final_layer_norm.") :]] = value
        elif m := _LAYER.match(key):
            layer, rest = m.groups()
            base = f"transformer.resblocks.{layer}."
            qkv = re.match(r"^self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
            if qkv:
                fused.setdefault((base, qkv.group(2)), {})[qkv.group(1)] = value
                continue
            for lk, hf in _CLIP_RENAMES:
                if rest.startswith(hf):
                    out[base + lk + rest[len(hf) :]] = value
                    break
    for (base, kind), parts in fused.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{base}attn.in_proj_{kind}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]], dim=0
            )
    return out


# --------------------------------------------------------------------------- config inference


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    return tuple(state[key].shape)


def infer_unet_config(unet: Mapping[str, torch.Tensor], *, sd2: bool) -> dict[str, Any]:
    """``UNetModel`` keyword arguments from the shapes of an LDM UNet state (keys without
    ``model.diffusion_model.``): input / output channels, base width, per-level multipliers,
    residual blocks per level, the levels with attention and their transformer depth, the
    context width and whether projections are linear (SD 2.x) or 1x1 convolutions (SD 1.x).

    Heads follow the released models: SD 1.x 8 heads, SD 2.x 64 channels per head.
    Raises ``KeyError`` naming a key that a UNet of this format must have.
    """
    first = _shape(unet, "input_blocks.0.0.weight")
    model_channels, in_channels = first[0], first[1]
    out_channels = _shape(unet, "out.2.weight")[0]
    mults: list[int] = []
    res_blocks: list[int] = []
    depths: list[int] = []
    attention_ds: list[int] = []
    count, ds, level_depth, level_has_attn = 0, 1, 0, False
    i = 1
    while (
        f"input_blocks.{i}.0.op.weight" in unet or f"input_blocks.{i}.0.in_layers.2.weight" in unet
    ):
        if f"input_blocks.{i}.0.op.weight" in unet:  # downsampling closes a level
            res_blocks.append(count)
            depths.append(level_depth)
            if level_has_attn:
                attention_ds.append(ds)
            count, level_depth, level_has_attn = 0, 0, False
            ds *= 2
        else:
            width = _shape(unet, f"input_blocks.{i}.0.in_layers.2.weight")[0]
            if count == 0:
                mults.append(width // model_channels)
            count += 1
            if f"input_blocks.{i}.1.norm.weight" in unet:
                level_has_attn = True
                level_depth = sum(
                    1
                    for k in unet
                    if re.match(
                        rf"^input_blocks\.{i}\.1\.transformer_blocks\.\d+\.norm1\.weight$", k
                    )
                )
        i += 1
    res_blocks.append(count)
    depths.append(level_depth)
    if level_has_attn:
        attention_ds.append(ds)
    if not mults or len(mults) != len(res_blocks):
        raise KeyError("input_blocks.1.0.in_layers.2.weight")
    context_dim = None
    linear = False
    for key in unet:
        if key.endswith("attn2.to_k.weight"):
            context_dim = _shape(unet, key)[1]
        if key.endswith(".proj_in.weight"):
            linear = unet[key].ndim == 2
    depth_middle = sum(
        1 for k in unet if re.match(r"^middle_block\.1\.transformer_blocks\.\d+\.norm1\.weight$", k)
    )
    config: dict[str, Any] = dict(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(mults),
        num_res_blocks=res_blocks[0] if len(set(res_blocks)) == 1 else tuple(res_blocks),
        attention_resolutions=tuple(attention_ds),
        transformer_depth=tuple(depths),
        transformer_depth_middle=depth_middle,
        crossattn_dim=context_dim,
        use_linear_in_transformer=linear,
        layout="CHW",
    )
    if sd2:
        config["num_head_channels"] = 64
    else:
        config["num_heads"] = 8
    return config


def infer_vae_config(vae: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``KLAutoencoder`` keyword arguments from an LDM ``first_stage_model`` state (keys
    without the prefix): data channels, base width, multipliers, ResNet blocks per level,
    latent channels and whether the mid blocks have attention (LDM's ``ddconfig``)."""
    conv_in = _shape(vae, "encoder.conv_in.weight")
    base, channels = conv_in[0], conv_in[1]
    mults = []
    level = 0
    while f"encoder.down.{level}.block.0.conv1.weight" in vae:
        mults.append(_shape(vae, f"encoder.down.{level}.block.0.conv1.weight")[0] // base)
        level += 1
    if not mults:
        raise KeyError("encoder.down.0.block.0.conv1.weight")
    blocks = sum(1 for k in vae if re.match(r"^encoder\.down\.0\.block\.\d+\.conv1\.weight$", k))
    latent = _shape(vae, "post_quant_conv.weight")[0]
    return dict(
        config=None,
        channels=channels,
        layout="CHW",
        latent_channels=latent,
        base_channels=base,
        channel_multipliers=tuple(mults),
        num_res_blocks=blocks,
        norm_num_groups=32,
        attention="encoder.mid.attn_1.q.weight" in vae,
    )


def infer_text_config(text: Mapping[str, torch.Tensor], *, sd2: bool) -> dict[str, Any]:
    """open_clip text-tower settings (``text_cfg``, ``embed_dim``, ``quick_gelu``) from the
    text-encoder state of a checkpoint (keys without the prefix; SD 1.x keys in Hugging Face
    CLIP names). Heads are width / 64, as in CLIP ViT-L/14 (768 / 12) and OpenCLIP ViT-H/14
    (1024 / 16)."""
    if sd2:
        vocab, width = _shape(text, "token_embedding.weight")
        context = _shape(text, "positional_embedding")[0]
        layers = sum(1 for k in text if re.match(r"^transformer\.resblocks\.\d+\.ln_1\.weight$", k))
        mlp = _shape(text, "transformer.resblocks.0.mlp.c_fc.weight")[0]
        embed_dim = _shape(text, "text_projection")[1] if "text_projection" in text else width
        proj = "linear" if "text_projection" in text else "none"
    else:
        vocab, width = _shape(text, "embeddings.token_embedding.weight")
        context = _shape(text, "embeddings.position_embedding.weight")[0]
        layers = sum(1 for k in text if re.match(r"^encoder\.layers\.\d+\.layer_norm1\.weight$", k))
        mlp = _shape(text, "encoder.layers.0.mlp.fc1.weight")[0]
        embed_dim, proj = width, "none"  # CLIPTextModel has no projection
    return {
        "text_cfg": {
            "context_length": context,
            "vocab_size": vocab,
            "width": width,
            "heads": max(1, width // 64),
            "layers": layers,
            "mlp_ratio": mlp / width,
            "proj_type": proj,
        },
        "embed_dim": embed_dim,
        "quick_gelu": not sd2,  # OpenAI CLIP uses x * sigmoid(1.702 x); OpenCLIP ViT-H GELU
    }

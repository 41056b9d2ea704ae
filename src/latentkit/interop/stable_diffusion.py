"""Stable Diffusion 1.x / 2.x single-file checkpoints <-> latentkit (Rombach et al. 2022).

A user who has ``v1-5-pruned-emaonly.safetensors``, ``v2-1_768-ema-pruned.ckpt``,
``sd-v1-5-inpainting.ckpt`` or a fine-tune of them loads it into a
:class:`~latentkit.LatentDiffusion` made of latentkit's own parts, samples with any registered
sampler, fine-tunes it in the shared loop and saves it back in the same format::

    from latentkit.interop.stable_diffusion import load_stable_diffusion, save_stable_diffusion

    model = load_stable_diffusion("v1-5-pruned-emaonly.safetensors")
    images = model.sample({"caption": ["a watercolor fox"]}, sampler="dpmpp_2m", steps=25,
                          guidance_scale=7.5, seed=0)
    save_stable_diffusion(model, "my-finetune.safetensors")

What the parts are:

* denoiser: ``unet`` (:class:`~latentkit.denoisers.unet.UNetModel`), keys of
  ``model.diffusion_model.*`` one to one; 4 input channels, or 9 for inpainting (latent, mask,
  masked-image latent);
* first stage: ``kl`` (:class:`~latentkit.autoencoders.kl.KLAutoencoder`), scaling factor
  0.18215;
* text: :class:`StableDiffusionTextConditioner`, an open_clip text tower: SD 2.x's OpenCLIP
  ViT-H/14 read at the penultimate layer (then the final layer norm), or SD 1.x's CLIP
  ViT-L/14 ``CLIPTextModel`` mapped onto open_clip's architecture (quick-GELU, last layer,
  prompts padded with the end-of-text token as SD 1.x's tokenizer did);
* inpainting: the text conditioner combined with a ``concat`` conditioner (mask, then the
  encoded masked image);
* schedule: ``scaled_linear`` (1000 steps, betas 0.00085..0.012), ``leading`` spacing with
  offset 1 as the original DDIM/PLMS samplers; parameterization ``eps`` or ``v``.

Reading is memory-mapped and weights are *assigned* into modules built on the meta device,
so loading does not hold the checkpoint twice (see :mod:`latentkit.checkpoint_files`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from latentkit.checkpoint_files import (
    CheckpointError,
    RawCheckpoint,
    read_checkpoint,
    write_checkpoint,
)
from latentkit.conditioners.openclip_text import OpenCLIPTextConditioner
from latentkit.interop import sd_keys
from latentkit.interop.sd_keys import CLIP_PREFIX, OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

if TYPE_CHECKING:
    from latentkit.autoencoders.kl import KLAutoencoder
    from latentkit.denoisers.unet import UNetModel

__all__ = [
    "SD_SCALING_FACTOR",
    "CheckpointError",
    "StableDiffusionCheckpoint",
    "StableDiffusionConfig",
    "StableDiffusionTextConditioner",
    "build_stable_diffusion",
    "build_stable_diffusion_parts",
    "custom_config",
    "detect_stable_diffusion",
    "ldm_meta_state",
    "load_stable_diffusion",
    "released_config",
    "save_stable_diffusion",
    "text_conditioner",
    "to_ldm_state_dict",
    "to_ldm_state_dict_from",
    "to_ldm_state_dict_from_parts",
]

#: Latent scaling factor of the SD 1.x / 2.x autoencoder (``scale_factor`` in the LDM configs).
SD_SCALING_FACTOR = 0.18215
_PREDICTION_NAMES = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v"}
#: Global step of the SD 2.x 512-base (eps) checkpoint; the 768 model is v-prediction.
_SD2_BASE_GLOBAL_STEP = 875000
_EOT_TOKEN = 49407  # CLIP's <|endoftext|>


# --------------------------------------------------------------------------- configuration


@attrs.frozen
class StableDiffusionConfig:
    """The architecture of one Stable Diffusion checkpoint, as read from its keys and shapes.

    ``family`` is ``"sd1"`` (CLIP ViT-L/14 text encoder) or ``"sd2"`` (OpenCLIP ViT-H/14);
    ``unet`` / ``autoencoder`` are the keyword arguments of
    :class:`~latentkit.denoisers.unet.UNetModel` / :class:`~latentkit.autoencoders.kl.KLAutoencoder`
    and ``text`` those of the open_clip text tower (``text_cfg``, ``embed_dim``, ``quick_gelu``).
    """

    family: str = attrs.field(validator=attrs.validators.in_(("sd1", "sd2")))
    prediction_type: str = attrs.field(validator=attrs.validators.in_(("eps", "v")))
    unet: dict[str, Any] = attrs.field(factory=dict)
    autoencoder: dict[str, Any] = attrs.field(factory=dict)
    text: dict[str, Any] = attrs.field(factory=dict)
    scaling_factor: float = SD_SCALING_FACTOR

    @property
    def inpainting(self) -> bool:
        """True for the 9-channel inpainting UNet (latent + mask + masked-image latent)."""
        return int(self.unet["in_channels"]) != int(
            self.unet.get("out_channels") or self.unet["in_channels"]
        )

    @property
    def name(self) -> str:
        """``sd1``, ``sd1-inpainting``, ``sd2``, ``sd2-v``, ``sd2-inpainting`` ..."""
        suffix = "-inpainting" if self.inpainting else ""
        v = "-v" if self.prediction_type == "v" else ""
        return f"{self.family}{v}{suffix}"

    @property
    def latent_size(self) -> tuple[int, int]:
        """Default latent size: 96 x 96 (768 px) for SD 2.x v-prediction, 64 x 64 (512 px)
        otherwise, for the released 8x autoencoder."""
        return (96, 96) if self.family == "sd2" and self.prediction_type == "v" else (64, 64)


@attrs.define(eq=False)
class StableDiffusionCheckpoint:
    """Where a loaded model came from, attached as ``model.stable_diffusion``: what
    :func:`save_stable_diffusion` needs to write the file back as it was.

    ``extra`` holds the file's entries that are not weights of the model (DDPM schedule
    buffers, the EMA copy that was not loaded, ``position_ids``, ...), still memory-mapped;
    ``dtypes`` the stored dtype of every LDM key; ``unet_source`` is ``"ema"`` when the UNet was
    read from the ``model_ema.*`` copy.
    """

    config: StableDiffusionConfig
    path: Path | None = None
    extra: dict[str, torch.Tensor] = attrs.field(factory=dict)
    dtypes: dict[str, torch.dtype] = attrs.field(factory=dict)
    unet_source: str = "model"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    prediction_type_reason: str = ""


# --------------------------------------------------------------------------- text conditioner


class StableDiffusionTextConditioner(OpenCLIPTextConditioner):
    """The text encoder of Stable Diffusion as an open_clip text tower: ``caption`` ->
    ``crossattn`` (B, 77, width).

    * ``family="sd1"``: CLIP ViT-L/14's text model (Radford et al. 2021) with quick-GELU,
      the last layer's tokens after the final layer norm (``FrozenCLIPEmbedder``); prompts
      are padded with ``<|endoftext|>`` as the Hugging Face tokenizer of SD 1.x does.
    * ``family="sd2"``: OpenCLIP ViT-H/14 (Cherti et al. 2023), the penultimate layer's
      tokens after the final layer norm (``FrozenOpenCLIPEmbedder(layer="penultimate")``);
      prompts padded with 0 as ``open_clip.tokenize``.
    """

    def __init__(
        self,
        family: str = "sd1",  # "sd1" (CLIP ViT-L/14) or "sd2" (OpenCLIP ViT-H/14)
        *,
        text_cfg: Mapping[str, Any]
        | None = None,  # open_clip text_cfg overrides (width, layers...)
        embed_dim: int | None = None,  # pooled projection width (SD 2.x: 1024)
        quick_gelu: bool | None = None,  # default: True for sd1, False for sd2
        dropout: float = 0.0,  # probability of the empty prompt in training (CFG)
        trainable: bool = False,  # fine-tune the text encoder too
    ) -> None:
        if family not in ("sd1", "sd2"):
            raise ValueError(
                f"StableDiffusionTextConditioner: family must be 'sd1' or 'sd2', got {family!r}"
            )
        cfg = dict(text_cfg or {})
        if family == "sd1":
            cfg.setdefault("proj_type", "none")  # CLIPTextModel has no text projection
        super().__init__(
            "ViT-L-14" if family == "sd1" else "ViT-H-14",
            text_cfg=cfg,
            embed_dim=embed_dim,
            quick_gelu=(family == "sd1") if quick_gelu is None else quick_gelu,
            layer="last" if family == "sd1" else "penultimate",
            final_norm=True,
            outputs="crossattn",
            dropout=dropout,
            trainable=trainable,
        )
        self.family = family

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> token ids (B, 77): ``<|startoftext|>``, BPE tokens, ``<|endoftext|>``,
        then padding (end-of-text for SD 1.x, 0 for SD 2.x), truncated to fit."""
        tokens = super().tokenize(prompts)
        if self.family == "sd1":
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            eot = tokens.argmax(dim=1, keepdim=True)  # <|endoftext|> has the largest id
            tokens = tokens.masked_fill(positions[None] > eot, _EOT_TOKEN)
        return tokens


def text_conditioner(model: nn.Module) -> OpenCLIPTextConditioner:
    """The text conditioner of a Stable Diffusion :class:`~latentkit.LatentDiffusion` (also
    inside the combined conditioner of an inpainting model); use its ``tokenize`` /
    ``encode`` for prompts."""
    from latentkit.conditioners.combined import CombinedConditioner

    cond = getattr(model, "conditioner", None)
    children = list(cond.conditioners) if isinstance(cond, CombinedConditioner) else [cond]
    for child in children:
        if isinstance(child, OpenCLIPTextConditioner):
            return child
    raise TypeError(
        f"not a Stable Diffusion model: its conditioner ({type(cond).__name__}) holds no "
        "open_clip text conditioner"
    )


# --------------------------------------------------------------------------- building


def build_stable_diffusion_parts(
    config: StableDiffusionConfig,
) -> tuple[UNetModel, KLAutoencoder, StableDiffusionTextConditioner]:
    """The denoiser, first stage and text conditioner of architecture ``config``, randomly
    initialised and not yet assembled (:func:`build_stable_diffusion` assembles them). Built
    under ``torch.device("meta")`` they allocate nothing, for code that fills every weight
    itself (the loader assigns the file's tensors)."""
    from latentkit.autoencoders.kl import KLAutoencoder
    from latentkit.denoisers.unet import UNetModel

    denoiser = UNetModel(**config.unet)
    autoencoder = KLAutoencoder(**{**config.autoencoder, "scaling_factor": config.scaling_factor})
    text = StableDiffusionTextConditioner(
        config.family,
        text_cfg=config.text.get("text_cfg"),
        embed_dim=config.text.get("embed_dim"),
        quick_gelu=config.text.get("quick_gelu"),
    )
    return denoiser, autoencoder, text


def _assemble(
    config: StableDiffusionConfig, denoiser: nn.Module, autoencoder: nn.Module, text: nn.Module
) -> Any:
    from latentkit.conditioners.combined import CombinedConditioner
    from latentkit.conditioners.concat import ConcatConditioner
    from latentkit.diffusion.model import LatentDiffusion
    from latentkit.schedules.discrete import ScaledLinearSchedule

    conditioner: nn.Module = text
    if config.inpainting:
        latent_channels = int(config.autoencoder["latent_channels"])
        concat = ConcatConditioner("inpainting", latent_channels=latent_channels)
        conditioner = CombinedConditioner([text, concat])  # type: ignore[list-item]
    # LDM's DDIM / PLMS samplers and diffusers' SD schedulers: "leading" timesteps + 1
    schedule = ScaledLinearSchedule(
        1000, beta_start=0.00085, beta_end=0.012, spacing="leading", steps_offset=1
    )
    return LatentDiffusion(
        autoencoder,  # type: ignore[arg-type]
        denoiser,  # type: ignore[arg-type]
        conditioner,  # type: ignore[arg-type]
        schedule=schedule,
        parameterization=config.prediction_type,
        latent_size=config.latent_size,
    )


def build_stable_diffusion(config: StableDiffusionConfig) -> Any:
    """A randomly initialised Stable Diffusion :class:`~latentkit.LatentDiffusion` of the given
    architecture (e.g. a reduced-width one for tests); :func:`save_stable_diffusion` writes it
    in the original single-file format."""
    model = _assemble(config, *build_stable_diffusion_parts(config))
    model.stable_diffusion = StableDiffusionCheckpoint(config=config)
    return model


def ldm_meta_state(config: StableDiffusionConfig) -> dict[str, torch.Tensor]:
    """Every key of a complete checkpoint of architecture ``config``, in the LDM format, as a
    meta tensor of the right shape (no memory is allocated)."""
    with torch.device("meta"):
        parts = build_stable_diffusion_parts(config)
    return to_ldm_state_dict_from_parts(*parts, config.family)


def custom_config(
    family: str,
    *,
    unet: Mapping[str, Any],
    autoencoder: Mapping[str, Any],
    text_width: int,
    text_layers: int,
    prediction_type: str | None = None,
) -> StableDiffusionConfig:
    """An SD 1.x / 2.x architecture of one's own: the given UNet and autoencoder (keyword
    arguments of :class:`~latentkit.denoisers.unet.UNetModel` and
    :class:`~latentkit.autoencoders.kl.KLAutoencoder`) around the text tower of ``family``
    (SD 1.x: CLIP, quick-GELU, no projection; SD 2.x: OpenCLIP, linear projection; both with
    77 tokens, the 49408-token vocabulary and 64-wide heads) of ``text_width`` channels and
    ``text_layers`` blocks. ``prediction_type`` ``None`` is the family's default: v for a
    SD 2.x text-to-image UNet, eps otherwise (SD 1.x and inpainting). :func:`released_config`
    is this with the released models' widths."""
    if family not in ("sd1", "sd2"):
        raise ValueError(f"family must be 'sd1' or 'sd2', got {family!r}")
    if prediction_type is not None and prediction_type not in _PREDICTION_NAMES:
        raise ValueError(
            f"prediction_type must be one of {sorted(_PREDICTION_NAMES)}, got {prediction_type!r}"
        )
    sd2 = family == "sd2"
    # the 9-channel inpainting UNet, as StableDiffusionConfig.inpainting reads it
    inpainting = int(unet["in_channels"]) != int(unet.get("out_channels") or unet["in_channels"])
    text = {
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": text_width // 64,
            "layers": text_layers,
            "mlp_ratio": 4.0,
            "proj_type": "linear" if sd2 else "none",
        },
        "embed_dim": text_width,
        "quick_gelu": not sd2,
    }
    if prediction_type is None:
        prediction_type = "v" if sd2 and not inpainting else "eps"
    return StableDiffusionConfig(
        family=family,
        prediction_type=_PREDICTION_NAMES[prediction_type],
        unet=dict(unet),
        autoencoder=dict(autoencoder),
        text=text,
    )


def released_config(
    family: str = "sd1", *, inpainting: bool = False, prediction_type: str | None = None
) -> StableDiffusionConfig:
    """The architecture of the released models: SD 1.x (``v1-inference.yaml``: UNet width
    320, 8 heads, CLIP ViT-L/14 text) or SD 2.x (``v2-inference(-v).yaml``: 64-channel heads,
    linear projections, OpenCLIP ViT-H/14 text, penultimate layer), each with the 8x KL
    autoencoder (``kl-f8``, 4 latent channels); ``inpainting`` gives the 9-channel UNet."""
    if family not in ("sd1", "sd2"):
        raise ValueError(f"family must be 'sd1' or 'sd2', got {family!r}")
    sd2 = family == "sd2"
    unet: dict[str, Any] = dict(
        in_channels=9 if inpainting else 4,
        out_channels=4,
        model_channels=320,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(1, 2, 4),
        transformer_depth=(1, 1, 1, 0),
        transformer_depth_middle=1,
        crossattn_dim=1024 if sd2 else 768,
        use_linear_in_transformer=sd2,
        layout="CHW",
    )
    unet.update({"num_head_channels": 64} if sd2 else {"num_heads": 8})
    autoencoder = dict(
        config=None,
        channels=3,
        layout="CHW",
        latent_channels=4,
        base_channels=128,
        channel_multipliers=(1, 2, 4, 4),
        num_res_blocks=2,
        norm_num_groups=32,
        attention=True,
    )
    width = 1024 if sd2 else 768
    return custom_config(
        family,
        unet=unet,
        autoencoder=autoencoder,
        text_width=width,
        text_layers=24 if sd2 else 12,
        prediction_type=prediction_type,
    )


# --------------------------------------------------------------------------- model <-> LDM keys


def _sd_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, OpenCLIPTextConditioner, str]:
    from latentkit.autoencoders.kl import KLAutoencoder
    from latentkit.denoisers.unet import UNetModel

    denoiser = getattr(model, "denoiser", None)
    autoencoder = getattr(model, "autoencoder", None)
    if not isinstance(denoiser, UNetModel) or not isinstance(autoencoder, KLAutoencoder):
        raise TypeError(
            "a Stable Diffusion checkpoint holds a 'unet' denoiser and a 'kl' autoencoder; this "
            f"model has {type(denoiser).__name__} and {type(autoencoder).__name__}"
        )
    text = text_conditioner(model)
    family = getattr(text, "family", None)
    if family is None:  # a plain open_clip conditioner: CLIP-style if it has no projection
        family = (
            "sd1" if text.text.text_projection is None and text.config.get("quick_gelu") else "sd2"
        )
    return denoiser, autoencoder, text, family


def _own_states(
    denoiser: nn.Module, autoencoder: nn.Module, text: OpenCLIPTextConditioner
) -> tuple[dict, dict, dict]:
    vae = {
        k: v
        for k, v in autoencoder.state_dict().items()
        if k not in ("scaling_factor", "shift_factor")
    }
    return dict(denoiser.state_dict()), vae, dict(text.text.state_dict())


def to_ldm_state_dict_from_parts(
    denoiser: nn.Module, autoencoder: nn.Module, text: OpenCLIPTextConditioner, family: str
) -> dict[str, torch.Tensor]:
    """The weights of the three parts (as :func:`build_stable_diffusion_parts` returns them)
    under the LDM key names of ``family`` (``"sd1"`` or ``"sd2"``); works on meta tensors.
    The latent normalisation buffers are not weights of an LDM file and are left out."""
    return to_ldm_state_dict_from(*_own_states(denoiser, autoencoder, text), family)


def to_ldm_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the original LDM / Stable Diffusion key names (views of the
    parameters where the layout allows; q, k, v are split out of open_clip's ``in_proj``)."""
    return to_ldm_state_dict_from_parts(*_sd_parts(model))


# --------------------------------------------------------------------------- detection


def _group(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


def _resolve_prediction_type(
    family: str, inpainting: bool, raw: RawCheckpoint, given: str | None
) -> tuple[str, str]:
    if given is not None:
        if given not in _PREDICTION_NAMES:
            raise ValueError(
                f"prediction_type must be one of {sorted(_PREDICTION_NAMES)}, got {given!r}"
            )
        return _PREDICTION_NAMES[given], "given"
    stored = raw.metadata.get("prediction_type")
    if isinstance(stored, str) and stored in _PREDICTION_NAMES:
        return _PREDICTION_NAMES[stored], "file metadata 'prediction_type'"
    if "v_pred" in raw.state:
        return "v", "'v_pred' key in the file"
    if family == "sd1":
        return "eps", "SD 1.x is eps-prediction"
    if inpainting:
        return "eps", "SD 2.x inpainting is eps-prediction"
    step = raw.metadata.get("global_step")
    if step == _SD2_BASE_GLOBAL_STEP:
        return "eps", f"global_step {step} is the SD 2.x 512-base (eps) checkpoint"
    return "v", (
        "SD 2.x defaults to v-prediction (the 768-v models); pass prediction_type='eps' for "
        "2.x-base 512 files without global_step"
    )


def _detect(
    raw: RawCheckpoint, prediction_type: str | None, overrides: Mapping[str, Mapping[str, Any]]
) -> tuple[StableDiffusionConfig, str]:
    state = raw.state
    where = os.fspath(raw.path)
    if any(k.startswith("conditioner.embedders.") for k in state):
        raise CheckpointError(
            f"{where}: this is an SDXL-style checkpoint (conditioner.embedders.*); only "
            "SD 1.x / 2.x are supported"
        )
    has_clip = any(k.startswith(CLIP_PREFIX) for k in state)
    has_openclip = any(k.startswith(OPENCLIP_PREFIX) for k in state)
    groups = {
        "UNet (model.diffusion_model.*)": any(k.startswith(UNET_PREFIX) for k in state),
        "autoencoder (first_stage_model.*)": any(k.startswith(VAE_PREFIX) for k in state),
        "text encoder (cond_stage_model.transformer.text_model.* or cond_stage_model.model.*)": (
            has_clip or has_openclip
        ),
    }
    absent = [name for name, present in groups.items() if not present]
    if absent:
        kind = (
            "not a Stable Diffusion 1.x / 2.x checkpoint"
            if len(absent) == 3
            else "incomplete Stable Diffusion checkpoint"
        )
        raise CheckpointError(
            f"{where}: {kind}: no weights for the {', '.join(absent)}; found {len(state)} "
            f"tensors with keys like {sorted(state)[:5]}"
        )
    if has_clip and has_openclip:
        raise CheckpointError(
            f"{where}: holds both a CLIP (SD 1.x) and an OpenCLIP (SD 2.x) text encoder"
        )
    family = "sd2" if has_openclip else "sd1"
    unet_state = _group(state, UNET_PREFIX)
    vae_state = _group(state, VAE_PREFIX)
    text_state = _group(state, OPENCLIP_PREFIX if family == "sd2" else CLIP_PREFIX)
    text_prefix = OPENCLIP_PREFIX if family == "sd2" else CLIP_PREFIX
    prefix = UNET_PREFIX
    try:
        unet = sd_keys.infer_unet_config(unet_state, sd2=family == "sd2")
        prefix = VAE_PREFIX
        autoencoder = sd_keys.infer_vae_config(vae_state)
        prefix = text_prefix
        text = sd_keys.infer_text_config(text_state, sd2=family == "sd2")
    except (KeyError, IndexError, ValueError) as exc:
        key = f"{prefix}{exc.args[0]}" if exc.args and isinstance(exc.args[0], str) else "?"
        raise CheckpointError(
            f"{where}: missing or misshapen key needed to read the architecture: {key!r} "
            f"({type(exc).__name__}); the checkpoint is partial or not in the SD 1.x / 2.x format"
        ) from None
    unet.update(overrides.get("unet", {}))
    autoencoder.update(overrides.get("autoencoder", {}))
    text = {**text, **{k: v for k, v in overrides.get("text", {}).items() if k != "text_cfg"}}
    text["text_cfg"] = {**text["text_cfg"], **dict(overrides.get("text", {}).get("text_cfg", {}))}
    in_ch, out_ch = int(unet["in_channels"]), int(unet["out_channels"])
    latent = int(autoencoder["latent_channels"])
    if out_ch != latent or in_ch not in (latent, 2 * latent + 1):
        raise CheckpointError(
            f"{where}: unsupported UNet: {in_ch} input / {out_ch} output channels for "
            f"{latent}-channel latents (supported: {latent} -> {latent} text-to-image, "
            f"{2 * latent + 1} -> {latent} inpainting)"
        )
    inpainting = in_ch == 2 * latent + 1
    prediction, reason = _resolve_prediction_type(family, inpainting, raw, prediction_type)
    config = StableDiffusionConfig(
        family=family, prediction_type=prediction, unet=unet, autoencoder=autoencoder, text=text
    )
    return config, reason


def detect_stable_diffusion(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    prediction_type: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> StableDiffusionConfig:
    """The :class:`StableDiffusionConfig` of a checkpoint file (mapped, not read) or of a state
    dict in the LDM format (meta tensors will do), from its keys and shapes; ``metadata`` plays
    the part of a file's header / top-level entries (``global_step``, ``prediction_type``)."""
    if isinstance(source, Mapping):
        raw = RawCheckpoint(
            state=dict(source),
            metadata=dict(metadata or {}),
            path=Path("<state dict>"),
            format="state",
        )
    else:
        raw = read_checkpoint(source)
        raw.metadata.update(metadata or {})
    config, _ = _detect(raw, prediction_type, {})
    return config


def _key_report(
    missing: list[str], unexpected: list[str], misshapen: list[str], limit: int = 8
) -> str:
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"{len(keys)} {name} key(s): {', '.join(keys[:limit])}{more}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- loading


def _materialize_buffers(text: OpenCLIPTextConditioner) -> None:
    tower = text.text
    if getattr(tower, "attn_mask", None) is not None and tower.attn_mask.is_meta:
        tower.attn_mask = tower.build_causal_mask()  # open_clip's non-persistent causal mask


def _assign(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    result = module.load_state_dict(dict(state), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:  # the key check before makes this a bug
        raise CheckpointError(
            f"internal mapping error for the {what}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def _match_keys(
    raw: RawCheckpoint,
    expected: Mapping[str, torch.Tensor],
    config: StableDiffusionConfig,
    prefer_ema: bool,
    strict: bool,
) -> tuple[dict[str, str], list[str], str]:
    """Where each expected LDM key is read from (the EMA copy for the UNet when asked for and
    present), which other entries of the file are kept as extras, and the UNet's source.
    Raises :class:`CheckpointError` naming missing, misshapen and (strict) unexpected keys."""
    where, state = os.fspath(raw.path), raw.state
    unet_keys = [k for k in expected if k.startswith(UNET_PREFIX)]
    ema_names = {k: sd_keys.ema_key(k[len(UNET_PREFIX) :]) for k in unet_keys}
    ema_found = [k for k in unet_keys if ema_names[k] in state]
    unet_source = "model"
    if prefer_ema:
        if len(ema_found) == len(unet_keys):
            unet_source = "ema"
        elif ema_found:
            lacking = [ema_names[k] for k in unet_keys if ema_names[k] not in state]
            raise CheckpointError(
                f"{where}: the EMA copy of the UNet is incomplete: {_key_report(lacking, [], [])}"
            )
        else:
            warnings.warn(
                f"{where}: prefer_ema=True but the file has no EMA weights (model_ema.*); "
                "using the UNet weights",
                stacklevel=3,
            )
    source = {k: k for k in expected}  # LDM key of the model -> key in the file
    if unet_source == "ema":
        source.update({k: ema_names[k] for k in unet_keys})

    missing = [source[k] for k in expected if source[k] not in state]
    misshapen = [
        f"{source[k]} (expected {tuple(v.shape)}, found {tuple(state[source[k]].shape)})"
        for k, v in expected.items()
        if source[k] in state and tuple(state[source[k]].shape) != tuple(v.shape)
    ]
    used = set(source.values())
    # entries that are not weights of the model but belong in an LDM file: DDPM buffers,
    # the EMA copy not loaded (or the plain UNet when the EMA one was)
    known = (
        sd_keys.AUX_KEYS
        | set(ema_names.values())
        | (set(expected) if unet_source == "ema" else set())
    )
    extra_keys = [k for k in state if k not in used and k in known]
    unexpected = [k for k in state if k not in used and k not in known]
    if missing or misshapen or (unexpected and strict):
        raise CheckpointError(
            f"{where}: does not match the {config.name} architecture read from its shapes: "
            + _key_report(missing, unexpected if strict else [], misshapen)
        )
    if unexpected:
        warnings.warn(
            f"{where}: keeping {len(unexpected)} unknown key(s) as extra entries: {unexpected[:5]}",
            stacklevel=3,
        )
    return source, extra_keys + unexpected, unet_source


def load_stable_diffusion(
    path: str | os.PathLike[str],
    *,
    prefer_ema: bool = False,
    dtype: torch.dtype | None = None,
    prediction_type: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Any:
    """Load a Stable Diffusion 1.x / 2.x single-file checkpoint into a
    :class:`~latentkit.LatentDiffusion` (see the module docstring for its parts).

    Parameters:
        path: ``.safetensors`` (memory-mapped) or ``.ckpt`` / ``.pt`` (``torch.load`` with
            ``weights_only=True``: a pickle naming code is refused), weights at the top level
            or nested under ``state_dict``.
        prefer_ema: take the UNet from the ``model_ema.*`` copy when the file has one (a
            warning says so when it has none).
        dtype: floating dtype of the model; ``None`` keeps the file's (the UNet's dtype if the
            file mixes several). Tensors already in that dtype are used in place, not copied.
        prediction_type: ``"eps"`` or ``"v"`` (diffusers' ``"epsilon"`` / ``"v_prediction"``
            too); ``None`` detects it (SD 1.x and inpainting: eps; SD 2.x: v unless the file
            says otherwise, see ``model.stable_diffusion.prediction_type_reason``).
        device: where the weights go (a copy when it is not the CPU).
        strict: with ``True`` a key that is neither a weight nor a known LDM entry is an error;
            with ``False`` such keys are kept (and written back on save) with a warning.
        overrides: ``{"unet": {...}, "autoencoder": {...}, "text": {...}}`` replacing detected
            settings, for checkpoints that break the released models' conventions (e.g. a
            different number of attention heads, which no shape shows).

    Raises :class:`CheckpointError` naming the missing, unexpected and misshapen keys when the
    file is not a complete SD 1.x / 2.x checkpoint, and for unreadable or unsafe files.
    The model gets ``model.stable_diffusion``, a :class:`StableDiffusionCheckpoint`.
    """
    raw = read_checkpoint(path)
    config, reason = _detect(raw, prediction_type, overrides or {})
    state = raw.state
    with torch.device("meta"):  # no memory for the random initialisation
        denoiser, autoencoder, text = build_stable_diffusion_parts(config)
    family = config.family
    unet_own, vae_own, tower_own = _own_states(denoiser, autoencoder, text)
    expected = to_ldm_state_dict_from(unet_own, vae_own, tower_own, family)

    source, extra_keys, unet_source = _match_keys(raw, expected, config, prefer_ema, strict)
    dtypes = {k: state[source[k]].dtype for k in expected}
    if dtype is None:
        dtype = state[source[UNET_PREFIX + "input_blocks.0.0.weight"]].dtype
    target = torch.device(device)

    def take(k: str) -> torch.Tensor:
        t = state[source[k]]
        if t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t if target.type == "cpu" else t.to(target)

    ldm = {k: take(k) for k in expected}
    unet_state = _group(ldm, UNET_PREFIX)
    vae_state = sd_keys.vae_from_ldm(_group(ldm, VAE_PREFIX))
    vae_state["scaling_factor"] = torch.tensor(config.scaling_factor, device=target)
    vae_state["shift_factor"] = torch.tensor(0.0, device=target)
    if family == "sd1":
        tower_state = sd_keys.clip_from_ldm(_group(ldm, CLIP_PREFIX))
    else:
        tower_state = _group(ldm, OPENCLIP_PREFIX)
    _assign(denoiser, unet_state, "UNet")
    _assign(autoencoder, vae_state, "autoencoder")
    _assign(text.text, tower_state, "text encoder")
    _materialize_buffers(text)
    if target.type != "cpu":
        text.text.to(target)
    left = [
        f"{name}.{n}"
        for name, m in (("denoiser", denoiser), ("autoencoder", autoencoder), ("text", text))
        for n, t in [*m.named_parameters(), *m.named_buffers()]
        if t.is_meta
    ]
    if left:
        raise CheckpointError(f"internal error: tensors not loaded: {left[:5]}")
    model = _assemble(config, denoiser, autoencoder, text)
    model.eval()
    model.stable_diffusion = StableDiffusionCheckpoint(
        config=config,
        path=raw.path,
        extra={k: state[k] for k in extra_keys},
        dtypes=dtypes,
        unet_source=unet_source,
        metadata=dict(raw.metadata),
        prediction_type_reason=reason,
    )
    return model


def to_ldm_state_dict_from(
    unet: Mapping[str, torch.Tensor],
    vae: Mapping[str, torch.Tensor],
    tower: Mapping[str, torch.Tensor],
    family: str,
) -> dict[str, torch.Tensor]:
    """LDM-format state from the three component states (works on meta tensors)."""
    out = {UNET_PREFIX + k: v for k, v in unet.items()}
    out.update({VAE_PREFIX + k: v for k, v in sd_keys.vae_to_ldm(vae).items()})
    if family == "sd1":
        out.update({CLIP_PREFIX + k: v for k, v in sd_keys.clip_to_ldm(tower).items()})
    else:
        out.update({OPENCLIP_PREFIX + k: v for k, v in tower.items()})
    return out


# --------------------------------------------------------------------------- saving


def save_stable_diffusion(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    include_extra: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Stable Diffusion :class:`~latentkit.LatentDiffusion` as an SD 1.x / 2.x
    single-file checkpoint (``.safetensors``, or ``.ckpt`` through ``torch.save`` with the
    weights under ``state_dict``), atomically.

    Parameters:
        dtype: floating dtype to store; ``None`` stores each tensor in the dtype it had in
            the file the model was loaded from (so load -> save reproduces that file's tensors
            bit for bit), else in the model's dtype.
        include_extra: write back the loaded file's other entries (schedule buffers, the EMA
            copy not loaded, ...) and put the UNet where it was read from (``model_ema.*``
            when loaded with ``prefer_ema``); ``False`` writes the model's weights only, under
            ``model.diffusion_model.*`` (a pruned file; drop stale EMA copies after
            fine-tuning this way).
        metadata: extra safetensors header entries (strings) or top-level ``.ckpt`` entries.

    The prediction type is recorded in the safetensors header (``prediction_type``), so the
    file reloads with the right parameterization.
    """
    info: StableDiffusionCheckpoint | None = getattr(model, "stable_diffusion", None)
    ldm = to_ldm_state_dict(model)
    if info is not None and include_extra and info.unet_source == "ema":
        ldm = {
            (sd_keys.ema_key(k[len(UNET_PREFIX) :]) if k.startswith(UNET_PREFIX) else k): v
            for k, v in ldm.items()
        }
        source_dtypes = {
            (sd_keys.ema_key(k[len(UNET_PREFIX) :]) if k.startswith(UNET_PREFIX) else k): d
            for k, d in info.dtypes.items()
        }
    else:
        source_dtypes = dict(info.dtypes) if info is not None else {}
    out: dict[str, torch.Tensor] = {}
    for key, value in ldm.items():
        want = dtype if dtype is not None else source_dtypes.get(key, value.dtype)
        out[key] = value.to(want) if value.is_floating_point() and value.dtype != want else value
    if info is not None and include_extra:
        for key, value in info.extra.items():
            out.setdefault(key, value)
    meta: dict[str, Any] = {}
    if info is not None and include_extra:
        meta.update(info.metadata)
    parameterization = getattr(model, "parameterization", None)
    if parameterization is not None and getattr(parameterization, "name", None) in ("eps", "v"):
        meta["prediction_type"] = parameterization.name
    meta.update(metadata or {})
    return write_checkpoint(out, path, metadata=meta)

"""Built-in denoisers, registered through ``latentkit_register_denoisers``.

* ``unet``: the LDM / ADM UNet for 1-D, 2-D and 3-D latents (:mod:`latentkit.denoisers.unet`);
* ``dit``: the diffusion transformer of Peebles & Xie (:mod:`latentkit.denoisers.dit`);
* ``mmdit``: SD3's multimodal diffusion transformer of Esser et al. 2024, with joint
  image-text attention (:mod:`latentkit.denoisers.mmdit`).

All take ``preset=`` (a named architecture) plus free configuration; see docs/denoisers.md.
"""

from __future__ import annotations

from typing import Any

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar

# Kept here (not in the model modules) so that registration imports no model code.
#: Tiny ``unet``: builds in milliseconds, runs on 8x8 latents (used by the conformance kit).
UNET_TINY_CONFIG: dict[str, Any] = dict(
    in_channels=4, out_channels=4, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
    attention_resolutions=(2,), num_heads=2, norm_groups=4, crossattn_dim=None, vector_dim=None,
    layout="CHW",
)
#: Tiny ``dit``: builds in milliseconds, runs on 8x8 latents (used by the conformance kit).
DIT_TINY_CONFIG: dict[str, Any] = dict(
    in_channels=4, out_channels=4, hidden_size=24, depth=2, num_heads=2, patch_size=2,
    crossattn_dim=None, vector_dim=None, layout="CHW", input_size=8,
)
#: Tiny ``mmdit``: builds in milliseconds, runs on 8x8 latents (used by the conformance kit);
#: QK-norm and a dual-attention block on, so that the kit covers the SD3.5 paths too.
MMDIT_TINY_CONFIG: dict[str, Any] = dict(
    in_channels=4, out_channels=4, hidden_size=24, depth=2, num_heads=2, patch_size=2,
    crossattn_dim=None, vector_dim=None, layout="CHW", input_size=8, qk_norm=True,
    dual_attention_layers=(0,),
)


@hookimpl
def latentkit_register_denoisers(registry: Registrar) -> None:
    """Register the built-in denoisers."""
    registry.add(
        "unet",
        "latentkit.denoisers.unet:unet",
        summary="LDM/ADM UNet (1-3 spatial axes): ResBlocks, self-/cross-attention transformers, "
        "presets ldm-txt2img, sd1, sd2, sdxl, ldm-celebahq256, adm-64",
        tiny_config=UNET_TINY_CONFIG,
    )
    registry.add(
        "dit",
        "latentkit.denoisers.dit:dit",
        summary="Diffusion transformer (Peebles & Xie) on timm layers, adaLN-Zero, optional "
        "cross-attention, presets DiT-S/B/L/XL with patch 2/4/8",
        tiny_config=DIT_TINY_CONFIG,
    )
    registry.add(
        "mmdit",
        "latentkit.denoisers.mmdit:mmdit",
        summary="SD3's multimodal diffusion transformer (Esser et al. 2024): separate image / text "
        "streams, joint attention, adaLN-Zero, optional QK RMS-norm and SD3.5 dual attention, "
        "diffusers key map, presets sd3-medium, sd3.5-medium, sd3.5-large, mmdit-s, mmdit-b",
        tiny_config=MMDIT_TINY_CONFIG,
    )

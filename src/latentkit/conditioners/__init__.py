"""Built-in conditioners, registered through ``latentkit_register_conditioners``.

=================  ==========================================  ===============================
name               reads (batch keys)                          produces
=================  ==========================================  ===============================
``class_label``    ``label`` (B,) ints                         ``vector`` and/or ``crossattn``
``openclip_text``  ``caption`` list of str                     ``crossattn`` and/or ``vector``
``timm_image``     ``image`` (B, C, H, W)                      ``vector`` and/or ``crossattn``
``concat``         ``mask``, ``masked_image``, ``low_res``...  ``concat``
``size``           ``original_size``, ``crop_coords``,         ``vector``
                   ``target_size`` (B, 2)
``combined``       the children's keys                         the children's entries, joined
=================  ==========================================  ===============================

See ``docs/conditioners.md`` for configurations and null inputs.
"""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar

__all__ = ["latentkit_register_conditioners"]


@hookimpl
def latentkit_register_conditioners(registry: Registrar) -> None:
    """Register the built-in conditioners (factories imported lazily on ``create``)."""
    registry.add(
        "class_label",
        "latentkit.conditioners.class_label:ClassLabelConditioner",
        summary="Learned class embedding with a null class, as vector and/or crossattn",
        tiny_config={"num_classes": 10, "embed_dim": 16, "outputs": ["crossattn", "vector"], "dropout": 0.1},
    )
    registry.add(
        "openclip_text",
        "latentkit.conditioners.openclip_text:OpenCLIPTextConditioner",
        summary="open_clip text tower (any model name, local weights), crossattn and pooled vector",
        tiny_config={"model_name": "tiny", "outputs": ["crossattn", "vector"], "trainable": True},
    )
    registry.add(
        "timm_image",
        "latentkit.conditioners.timm_image:TimmImageConditioner",
        summary="Any timm model as image encoder: pooled vector and/or projected token features",
        tiny_config={
            "model_name": "test_vit",
            "model_kwargs": {"img_size": 32},
            "outputs": ["crossattn", "vector"],
            "crossattn_dim": 16,
            "trainable": True,
        },
    )
    registry.add(
        "concat",
        "latentkit.conditioners.concat:ConcatConditioner",
        summary="Masks, images or low-res inputs resized (and optionally encoded) to the latent size",
        tiny_config={
            "inputs": [
                {"key": "mask", "channels": 1},
                {"key": "low_res", "channels": 3, "scale": 2, "interpolation": "linear"},
            ]
        },
    )
    registry.add(
        "size",
        "latentkit.conditioners.size:SizeConditioner",
        summary="SDXL Fourier-feature embedding of original size, crop offset and target size",
        tiny_config={"embed_dim": 8},
    )
    registry.add(
        "combined",
        "latentkit.conditioners.combined:CombinedConditioner",
        summary="Several conditioners in one, each with its own keys, dropout and trainable flag",
        tiny_config={
            "conditioners": [
                {"name": "class_label", "config": {"num_classes": 10, "embed_dim": 16,
                                                   "outputs": ["crossattn", "vector"]}, "dropout": 0.1},
                {"name": "size", "config": {"embed_dim": 8}},
            ],
            "crossattn_join": "tokens",
        },
    )

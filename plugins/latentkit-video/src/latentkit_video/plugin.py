"""The latentkit plugin of ``latentkit-video``, published under the ``latentkit`` entry-point
group (``video = "latentkit_video.plugin"``). Factories are ``"module:attr"`` strings, so
registration imports no model code."""

from __future__ import annotations

from typing import Any

from latentkit import hookimpl
from latentkit.plugins import Registrar

from latentkit_video.cli_output import latentkit_write_samples  # `latentkit sample` writes GIFs

__all__ = [
    "CAUSAL_TINY_CONFIG",
    "FIRST_FRAME_TINY_CONFIG",
    "FRAMEWISE_TINY_CONFIG",
    "MOVING_SHAPES_TINY_CONFIG",
    "VIDEO_UNET_TINY_CONFIG",
    "latentkit_register_autoencoders",
    "latentkit_register_conditioners",
    "latentkit_register_datasets",
    "latentkit_register_denoisers",
    "latentkit_write_samples",
]

#: Frame-wise ``kl`` (f4 in space, 1 in time), small enough for the conformance kit.
FRAMEWISE_TINY_CONFIG: dict[str, Any] = {
    "image_autoencoder": "kl",
    "image_config": {"config": "f4", "base_channels": 8, "channel_multipliers": [1, 2],
                     "num_res_blocks": 1, "norm_num_groups": 4, "latent_channels": 4},
}
#: Causal 3-D autoencoder: spatial factor 2, temporal factor 2, so the kit draws clips of
#: T = 1 + 2 k frames through CausalLatentSpec.data_size and checks the causal time rule.
CAUSAL_TINY_CONFIG: dict[str, Any] = {
    "base_channels": 8, "channel_multipliers": [1, 2], "num_res_blocks": 1, "norm_num_groups": 4,
    "latent_channels": 4, "temporal_downsampling": 2,
}
#: Video UNet: one image-UNet level with attention, temporal layers after every block.
VIDEO_UNET_TINY_CONFIG: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "crossattn_dim": None, "vector_dim": None,
    "layout": "CTHW", "model_channels": 8, "channel_mult": [1], "num_res_blocks": 1,
    "attention_resolutions": [1], "num_heads": 2, "norm_groups": 4, "temporal_head_channels": 4,
}
#: First-frame (image-to-video) concat conditioner in pixel space.
FIRST_FRAME_TINY_CONFIG: dict[str, Any] = {"latent_channels": 3, "dropout": 0.1}
MOVING_SHAPES_TINY_CONFIG: dict[str, Any] = {"frames": 4, "size": 8, "length": 8, "shape_size": 2}


@hookimpl
def latentkit_register_autoencoders(registry: Registrar) -> None:
    """Register the video autoencoders."""
    registry.add(
        "framewise",
        "latentkit_video.framewise:framewise",
        summary="Any registered image autoencoder applied frame by frame (CTHW, temporal factor 1)",
        tiny_config=FRAMEWISE_TINY_CONFIG,
    )
    registry.add(
        "causal_video",
        "latentkit_video.causal:CausalVideoAutoencoder",
        summary="KL autoencoder with causal 3-D convolutions, temporal factor 1/2/4 with the "
        "first frame encoded alone (T = 1 + f k)",
        tiny_config=CAUSAL_TINY_CONFIG,
    )


@hookimpl
def latentkit_register_denoisers(registry: Registrar) -> None:
    """Register the video denoiser."""
    registry.add(
        "video_unet",
        "latentkit_video.denoiser:video_unet",
        summary="Image UNet per frame + temporal conv/attention after every block (Video LDM), "
        "identity-initialised, any number of frames",
        tiny_config=VIDEO_UNET_TINY_CONFIG,
    )


@hookimpl
def latentkit_register_conditioners(registry: Registrar) -> None:
    """Register the image-to-video conditioner."""
    registry.add(
        "first_frame",
        "latentkit_video.conditioners:FirstFrameConditioner",
        summary="Image-to-video: the first frame's latent (+ a mask channel) as concat conditioning",
        tiny_config=FIRST_FRAME_TINY_CONFIG,
    )


@hookimpl
def latentkit_register_datasets(registry: Registrar) -> None:
    """Register the video datasets."""
    registry.add(
        "moving_shapes",
        "latentkit_video.datasets:MovingShapesDataset",
        summary="Synthetic clips of a shape moving left/right/up/down, captioned "
        "'a red square moving left'",
        tiny_config=MOVING_SHAPES_TINY_CONFIG,
    )
    registry.add(
        "video_folder",
        "latentkit_video.datasets:VideoFolderDataset",
        summary="Clips as image files, one folder per clip, captions from captions.jsonl or caption.txt",
    )

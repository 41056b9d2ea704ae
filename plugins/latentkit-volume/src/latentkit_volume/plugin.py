"""The plugin module named by the ``latentkit`` entry point: registers this distribution's
components through latentkit's hooks (factories as lazy ``"module:attr"`` strings, so
registration imports no model code)."""

from __future__ import annotations

from typing import Any

import latentkit
from latentkit.plugins import Registrar

from latentkit_volume.cli_output import latentkit_write_samples  # `latentkit sample` writes meshes

__all__ = [
    "DIT_TINY_CONFIG",
    "KL_TINY_CONFIG",
    "UNET_TINY_CONFIG",
    "latentkit_register_autoencoders",
    "latentkit_register_datasets",
    "latentkit_register_denoisers",
    "latentkit_register_models",
    "latentkit_write_samples",
]

#: Tiny configurations for the conformance kit: build in milliseconds, run on 8^3 grids.
KL_TINY_CONFIG: dict[str, Any] = {"preset": "tiny"}
UNET_TINY_CONFIG: dict[str, Any] = {"preset": "tiny", "in_channels": 1, "out_channels": 1}
DIT_TINY_CONFIG: dict[str, Any] = {"preset": "tiny", "in_channels": 1, "out_channels": 1}


@latentkit.hookimpl
def latentkit_register_autoencoders(registry: Registrar) -> None:
    """Register ``volume_kl``."""
    registry.add(
        "volume_kl",
        "latentkit_volume.models:VolumeKLAutoencoder",
        summary="KL autoencoder for CDHW signed-distance/occupancy grids (presets tiny, f2, f4)",
        tiny_config=KL_TINY_CONFIG,
    )


@latentkit.hookimpl
def latentkit_register_denoisers(registry: Registrar) -> None:
    """Register ``volume_unet`` and ``volume_dit``."""
    registry.add(
        "volume_unet",
        "latentkit_volume.models:VolumeUNet",
        summary="3-D UNet for CDHW latents with CoordConv channels (presets tiny, small, base)",
        tiny_config=UNET_TINY_CONFIG,
    )
    registry.add(
        "volume_dit",
        "latentkit_volume.models:VolumeDiT",
        summary="DiT on 3-D patches for CDHW latents (presets tiny, small, base)",
        tiny_config=DIT_TINY_CONFIG,
    )


@latentkit.hookimpl
def latentkit_register_datasets(registry: Registrar) -> None:
    """Register ``volume_primitives`` and ``volume_npy``."""
    registry.add(
        "volume_primitives",
        "latentkit_volume.data:PrimitivesDataset",
        summary="Synthetic spheres, cubes, cylinders, tori at random size and pose (SDF or occupancy)",
        tiny_config={"resolution": 8, "length": 4},
    )
    registry.add(
        "volume_npy",
        "latentkit_volume.data:NpyVolumeDataset",
        summary="A folder of .npy volume grids, captions from captions.jsonl or sidecar .txt",
    )


@latentkit.hookimpl
def latentkit_register_models(registry: Registrar) -> None:
    """Register ``volume_sdf_autoencoder``: a config trains it with ``[model] kind =
    "volume_sdf_autoencoder"`` and an ``[autoencoder]`` table."""
    registry.add(
        "volume_sdf_autoencoder",
        "latentkit_volume.losses:VolumeAutoencoderLoss",
        summary="a volume autoencoder in the SDF-aware loss (near-surface L1 + eikonal + KL) or occupancy BCE",
    )

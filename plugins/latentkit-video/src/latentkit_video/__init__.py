"""latentkit-video: video latent diffusion as a latentkit plugin distribution.

Components (registered through the ``latentkit`` entry-point group, created by name with
:func:`latentkit.create`):

* autoencoders ``framewise`` (:class:`FrameWiseAutoencoder`) and ``causal_video``
  (:class:`CausalVideoAutoencoder`);
* denoiser ``video_unet`` (:class:`VideoUNet`);
* conditioner ``first_frame`` (:class:`FirstFrameConditioner`), next to any registered text
  conditioner such as ``openclip_text``;
* datasets ``moving_shapes`` (:class:`MovingShapesDataset`) and ``video_folder``
  (:class:`VideoFolderDataset`).

Output writers: :func:`save_gif`, :func:`save_filmstrip`. See docs/video.md.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CausalVideoAutoencoder": "latentkit_video.causal",
    "FirstFrameConditioner": "latentkit_video.conditioners",
    "FrameWiseAutoencoder": "latentkit_video.framewise",
    "MovingShapesDataset": "latentkit_video.datasets",
    "VideoFolderDataset": "latentkit_video.datasets",
    "VideoUNet": "latentkit_video.denoiser",
    "direction_adherence": "latentkit_video.datasets",
    "motion_coherence": "latentkit_video.datasets",
    "motion_direction": "latentkit_video.datasets",
    "save_filmstrip": "latentkit_video.output",
    "save_gif": "latentkit_video.output",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as the plugin loader does) pulls in no model code.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'latentkit_video' has no attribute {name!r}")

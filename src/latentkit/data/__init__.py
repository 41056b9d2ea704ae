"""Built-in datasets (kind ``dataset``), registered through ``latentkit_register_datasets``.

* ``image_folder``: images under a directory, with ``captions.jsonl`` or sidecar ``.txt``
  captions, resized, cropped and flipped;
* ``shapes``: synthetic coloured shapes with captions ("a red circle at the top left") and a
  deterministic checker, :func:`latentkit.data.shapes.describe_image`;
* ``digits``: scikit-learn's handwritten digits, upscaled, with labels (``latentkit[data]``);
* ``photo_crops``: random crops of scikit-image's sample photographs (autoencoder training;
  ``latentkit[data]``);
* ``latent_cache``: latents encoded once by :func:`latentkit.data.latent_cache.cache_latents`.
"""

from __future__ import annotations

from latentkit.hookspecs import hookimpl
from latentkit.plugins import Registrar

__all__ = ["DATA_EXTRA", "latentkit_register_datasets"]

#: How to install what ``digits`` (scikit-learn) and ``photo_crops`` (scikit-image) need.
DATA_EXTRA = "pip install 'latentkit[data]'"


@hookimpl
def latentkit_register_datasets(registry: Registrar) -> None:
    """Register the built-in datasets."""
    registry.add(
        "image_folder",
        "latentkit.data.image_folder:ImageFolderDataset",
        summary="Images from a folder, captions from captions.jsonl or sidecar .txt; resize, crop, flip",
    )
    registry.add(
        "shapes",
        "latentkit.data.shapes:ShapesDataset",
        summary="Synthetic coloured shapes with captions like 'a red circle at the top left'",
        tiny_config={"size": 16, "length": 8},
    )
    registry.add(
        "digits",
        "latentkit.data.digits:DigitsDataset",
        summary="scikit-learn's 8x8 handwritten digits, upscaled, with labels",
        tiny_config={"size": 8},
        requires=["sklearn"],
        install=DATA_EXTRA,
    )
    registry.add(
        "photo_crops",
        "latentkit.data.photo_crops:PhotoCropsDataset",
        summary="Random crops of scikit-image's sample photographs, for autoencoder training",
        tiny_config={"size": 16, "length": 4, "photos": ["astronaut"]},
        requires=["skimage"],
        install=DATA_EXTRA,
    )
    registry.add(
        "latent_cache",
        "latentkit.data.latent_cache:LatentCacheDataset",
        summary="Latents encoded once through a frozen autoencoder (with flip variants)",
    )

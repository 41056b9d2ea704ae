"""latentkit-volume: volumetric (3-D) latent diffusion as a latentkit plugin.

Registered through the ``latentkit`` entry-point group (see :mod:`latentkit_volume.plugin`):

* autoencoder ``volume_kl``; denoisers ``volume_unet`` and ``volume_dit``;
* datasets ``volume_primitives`` (synthetic 3-D primitives with captions) and ``volume_npy``.

Around them: signed-distance functions and a deterministic shape classifier
(:mod:`~latentkit_volume.primitives`), SDF-aware autoencoder losses
(:mod:`~latentkit_volume.losses`), marching-cubes meshes written as OBJ/PLY and PNG previews
(:mod:`~latentkit_volume.mesh`), and the primitives training demo
(:mod:`~latentkit_volume.demo`). Volumes are ``(1, D, H, W)`` signed fields, negative inside.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

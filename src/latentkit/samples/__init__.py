"""Samples: from prompts to files. :mod:`~latentkit.samples.pipeline` builds the conditioning
batch, finds the latent size and samples; :mod:`~latentkit.samples.writers` hands the result
to the plugin that owns the data layout, or writes a captioned PNG grid."""

from __future__ import annotations

from latentkit.samples.pipeline import (
    Samples,
    conditioning_batch,
    draw,
    latent_size,
    read_image,
    reconstructions,
)
from latentkit.samples.writers import (
    GRID_FORMATS,
    Written,
    make_image_grid,
    save_image_grid,
    write_samples,
)

__all__ = [
    "GRID_FORMATS",
    "Samples",
    "Written",
    "conditioning_batch",
    "draw",
    "latent_size",
    "make_image_grid",
    "read_image",
    "reconstructions",
    "save_image_grid",
    "write_samples",
]

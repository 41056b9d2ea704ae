"""What ``latentkit sample`` writes for a volume run (layout ``CDHW``), through latentkit's
``latentkit_write_samples`` hook: the suffix of ``--out`` picks the format.

* ``.ply`` / ``.obj``: one marching-cubes mesh per sample, ``NAME_00.ply``, ``NAME_01.ply``, ...
  next to the ``--out`` path;
* ``.png``: three depth-shaded projections per sample, one row each, captioned.

Samples are signed fields, negative inside (the plugin's datasets, both representations): the
surface is the level set at the middle of the value range (0 for the default ``(-1, 1)``), and
only the first channel is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import latentkit
from latentkit.errors import LatentkitError
from latentkit.hookspecs import output_suffix

if TYPE_CHECKING:
    import torch

__all__ = ["LAYOUT", "SUFFIXES", "latentkit_write_samples"]

LAYOUT = "CDHW"
#: ``--out`` suffixes this module writes, with what each gives.
SUFFIXES: dict[str, str] = {
    ".ply": "binary PLY mesh per sample",
    ".obj": "OBJ mesh per sample",
    ".png": "three-projection previews",
}


def _fields(samples: torch.Tensor, value_range: tuple[float, float]) -> list[torch.Tensor]:
    """Each sample's first channel (D, H, W), shifted so that the surface is at 0."""
    level = (value_range[0] + value_range[1]) / 2.0
    return [s[0].float() - level for s in samples]


def _write_meshes(fields: list[torch.Tensor], path: Path) -> list[Path]:
    from latentkit_volume.mesh import volume_to_mesh, write_mesh

    width = max(2, len(str(len(fields) - 1)))
    return [write_mesh(volume_to_mesh(f), path.with_name(f"{path.stem}_{i:0{width}d}{path.suffix}"))
            for i, f in enumerate(fields)]


@latentkit.hookimpl
def latentkit_write_samples(
    samples: torch.Tensor,
    path: str,
    layout: str,
    captions: Sequence[str] | None,
    value_range: tuple[float, float],
) -> list[Path] | None:
    """Write (N, C, D, H, W) volumes as one mesh per sample (``.ply``, ``.obj``) or a PNG of
    three projections per sample (``.png``); None for any layout but ``CDHW``."""
    if layout != LAYOUT:
        return None
    out = Path(path)
    suffix = output_suffix(out, SUFFIXES, writer="latentkit-volume", layout=LAYOUT)
    if samples.ndim != 5:
        raise LatentkitError(f"expected {LAYOUT} samples (N, C, D, H, W), got shape {tuple(samples.shape)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = _fields(samples, value_range)
    if suffix == ".png":
        from latentkit_volume.mesh import save_preview_grid

        return [save_preview_grid(fields, out, labels=list(captions) if captions else None)]
    return _write_meshes(fields, out)

"""Writing samples to files: the plugin that owns a data layout writes its formats (a GIF
for video, meshes for volumes: the ``latentkit_write_samples`` hook), latentkit writes a
captioned PNG grid for the rest.

:func:`write_samples` is what ``latentkit sample``, ``latentkit eval``, the trainer's
``sample_every`` and the quickstart call; :func:`make_image_grid` / :func:`save_image_grid`
are the built-in grid, usable on their own (plugins draw their previews with them too).
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from latentkit.errors import warn_once
from latentkit.fileio import atomic_write_bytes
from latentkit.hookspecs import output_suffix

if TYPE_CHECKING:
    from latentkit.plugins import PluginManager
    from latentkit.samples.pipeline import Samples

__all__ = ["GRID_FORMATS", "Written", "make_image_grid", "save_image_grid", "write_samples"]

#: What the built-in writer writes when no plugin owns the layout.
GRID_FORMATS = {".png": "a captioned grid"}


@attrs.frozen
class Written:
    """The files :func:`write_samples` wrote, and whether they are the built-in grid."""

    paths: list[Path]
    grid: bool  # True: latentkit's captioned PNG grid; False: the layout plugin's files


def _to_uint8_hwc(image: torch.Tensor, value_range: tuple[float, float]) -> Any:
    import numpy as np

    x = image.detach().to("cpu", torch.float32)
    if x.ndim == 4:  # (C, T, H, W) video or (C, D, H, W) volume: the middle frame / slice
        x = x[:, x.shape[1] // 2]
    if x.ndim != 3:
        raise ValueError(f"sample grids need (C, H, W) images, got shape {tuple(image.shape)}")
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 2:
        x = torch.cat([x, x[:1]], 0)
    elif x.shape[0] > 3:
        x = x[:3]
    return (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def make_image_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    captions: Sequence[str] | None = None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    min_tile: int = 64,
    padding: int = 2,
) -> Any:
    """A PIL image tiling ``images`` (each (C, H, W), values in ``value_range``), with each
    tile's caption (prompt or label) drawn under it. Small images are upscaled (nearest) to
    ``min_tile`` pixels so captions stay legible."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = [Image.fromarray(_to_uint8_hwc(im, value_range)) for im in images]
    if not tiles:
        raise ValueError("make_image_grid needs at least one image")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"got {len(captions)} captions for {len(tiles)} images")
    w, h = tiles[0].size
    scale = max(1, math.ceil(min_tile / max(1, min(w, h))))
    tw, th = w * scale, h * scale
    tiles = [t.resize((tw, th), getattr(Image, "Resampling", Image).NEAREST) for t in tiles]
    n = len(tiles)
    ncol = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / ncol)
    font = ImageFont.load_default()
    line_h = 11
    chars = max(6, tw // 6)
    wrapped = [textwrap.wrap(str(c), chars)[:6] or [""] for c in captions] if captions else None
    cap_h = (max(len(ws) for ws in wrapped) * line_h + 4) if wrapped else 0
    grid = Image.new("RGB", (ncol * (tw + padding) + padding, rows * (th + cap_h + padding) + padding), "white")
    draw = ImageDraw.Draw(grid)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncol)
        x0 = padding + c * (tw + padding)
        y0 = padding + r * (th + cap_h + padding)
        grid.paste(tile, (x0, y0))
        if wrapped:
            for j, line in enumerate(wrapped[i]):
                draw.text((x0 + 1, y0 + th + 2 + j * line_h), line, fill="black", font=font)
    return grid


def save_image_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    captions: Sequence[str] | None = None,
    nrow: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Write :func:`make_image_grid` as a PNG (atomically) and return its path."""
    grid = make_image_grid(images, captions=captions, nrow=nrow, value_range=value_range)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_samples(
    samples: Samples,
    path: str | os.PathLike[str],
    *,
    nrow: int | None = None,
    plugin_manager: PluginManager | None = None,
    grid_if_writer_fails: bool = False,
) -> Written:
    """Write ``samples`` to ``path`` and return the files written.

    The ``latentkit_write_samples`` hook goes first: the plugin that owns
    ``samples.layout`` writes the format the suffix of ``path`` asks for (and raises, naming
    its formats, for a suffix it does not write). When no plugin answers, a captioned PNG grid
    (``nrow`` tiles per row; a ``.png`` path). With ``grid_if_writer_fails`` a writer that
    raises costs a warning and the grid instead (for the trainer: samples must never end a
    training run)."""
    from latentkit.plugins import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    try:
        written = None if samples.layout is None else pm.call(
            "latentkit_write_samples", samples=samples.images, path=str(path), layout=samples.layout,
            captions=samples.captions, value_range=samples.value_range)
    except Exception as exc:
        if not grid_if_writer_fails:
            raise
        warn_once(f"the sample writer for layout {samples.layout} failed ({type(exc).__name__}: {exc}); "
                  "writing the built-in grid instead")
        written = None
    if written:
        return Written([Path(p) for p in written], grid=False)
    output_suffix(path, GRID_FORMATS, writer="latentkit (no installed plugin owns this layout)",
                  layout=samples.layout or "these")
    grid = save_image_grid(samples.images, path, captions=samples.captions, nrow=nrow,
                           value_range=samples.value_range)
    return Written([grid], grid=True)

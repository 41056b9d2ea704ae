"""What ``latentkit sample`` writes for a video run (layout ``CTHW``), through latentkit's
``latentkit_write_samples`` hook: the suffix of ``--out`` picks the format.

* ``.gif``: one animated GIF, the clips side by side (one row per prompt, as in the image grid);
* ``.png``: a filmstrip, one row per clip with its frames left to right, the caption under the
  first frame.

Heavy imports happen inside the hook, so registering the plugin stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from latentkit import hookimpl
from latentkit.errors import LatentkitError
from latentkit.hookspecs import output_suffix

if TYPE_CHECKING:
    import torch

__all__ = ["LAYOUT", "MIN_FRAME_PIXELS", "SUFFIXES", "latentkit_write_samples"]

LAYOUT = "CTHW"
#: ``--out`` suffixes this module writes, with what each gives.
SUFFIXES: dict[str, str] = {".gif": "animated GIF", ".png": "PNG filmstrip"}
#: Small frames are upscaled (nearest) to at least this many pixels so they stay visible.
MIN_FRAME_PIXELS = 64


def _clips_per_row(n: int, captions: Sequence[str] | None) -> int:
    """One row per prompt (``latentkit sample`` repeats each prompt ``--num`` times in a row),
    else a square-ish grid."""
    if captions:
        run = 1
        while run < len(captions) and captions[run] == captions[0]:
            run += 1
        return run
    return math.ceil(math.sqrt(n))


def _write_gif(samples: torch.Tensor, path: Path, captions: Sequence[str] | None,
               value_range: tuple[float, float]) -> Path:
    from latentkit_video.output import save_gif

    height, width = samples.shape[-2:]
    scale = max(1, math.ceil(MIN_FRAME_PIXELS / max(1, min(height, width))))
    return save_gif(samples, path, scale=scale, ncols=_clips_per_row(len(samples), captions),
                    value_range=value_range)


def _write_filmstrip(samples: torch.Tensor, path: Path, captions: Sequence[str] | None,
                     value_range: tuple[float, float]) -> Path:
    from latentkit.samples import save_image_grid

    n, _, frames = samples.shape[:3]
    tiles = [samples[i, :, t] for i in range(n) for t in range(frames)]  # (C, H, W) each
    labels = None
    if captions is not None:  # the caption under frame 0, the frame index under the others
        labels = [captions[i] if t == 0 else f"t={t}" for i in range(n) for t in range(frames)]
    return save_image_grid(tiles, path, captions=labels, nrow=frames, value_range=value_range)


@hookimpl
def latentkit_write_samples(
    samples: torch.Tensor,
    path: str,
    layout: str,
    captions: Sequence[str] | None,
    value_range: tuple[float, float],
) -> list[Path] | None:
    """Write (N, C, T, H, W) clips as an animated GIF (``.gif``) or a PNG filmstrip
    (``.png``); None for any layout but ``CTHW``."""
    if layout != LAYOUT:
        return None
    out = Path(path)
    suffix = output_suffix(out, SUFFIXES, writer="latentkit-video", layout=LAYOUT)
    if samples.ndim != 5:
        raise LatentkitError(f"expected {LAYOUT} samples (N, C, T, H, W), got shape {tuple(samples.shape)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _write_gif if suffix == ".gif" else _write_filmstrip
    return [writer(samples, out, captions, value_range)]

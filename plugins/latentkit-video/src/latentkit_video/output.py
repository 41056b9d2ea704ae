"""Writing generated clips: animated GIF (Pillow) and PNG filmstrip.

Clips are tensors (C, T, H, W) or batches (B, C, T, H, W) with values in ``value_range``
(``(-1, 1)``, latentkit's data range, by default); C is 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["clip_to_frames", "load_gif", "save_filmstrip", "save_gif"]


def clip_to_frames(clip: torch.Tensor, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """One clip (C, T, H, W) -> uint8 frames (T, H, W, 3), values mapped from ``value_range``
    to [0, 255] and clipped."""
    if clip.ndim != 4 or clip.shape[0] not in (1, 3):
        raise ValueError(f"expected a clip (C, T, H, W) with C = 1 or 3, got shape {tuple(clip.shape)}")
    lo, hi = float(value_range[0]), float(value_range[1])
    x = ((clip.detach().float().cpu() - lo) / (hi - lo)).clamp(0.0, 1.0)
    x = (x * 255.0 + 0.5).to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, *x.shape[1:])
    return x.permute(1, 2, 3, 0).numpy()  # type: ignore[no-any-return]


def _batch(video: torch.Tensor) -> torch.Tensor:
    if video.ndim == 4:
        return video[None]
    if video.ndim != 5:
        raise ValueError(f"expected (C, T, H, W) or (B, C, T, H, W), got shape {tuple(video.shape)}")
    return video


def _tile(frames: list[np.ndarray], ncols: int, pad: int) -> np.ndarray:
    """Lay equally sized (H, W, 3) images out in a grid with ``pad`` white pixels between."""
    h, w = frames[0].shape[:2]
    nrows = -(-len(frames) // ncols)
    out = np.full((nrows * h + (nrows - 1) * pad, ncols * w + (ncols - 1) * pad, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, ncols)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = f
    return out


def save_gif(
    video: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    fps: float = 8.0,
    scale: int = 1,  # nearest-neighbour upscaling of every frame
    ncols: int | None = None,  # clips per row when a batch is given
    pad: int = 2,
    value_range: Sequence[float] = (-1.0, 1.0),
    loop: int = 0,  # 0 = loop forever
) -> Path:
    """Write a clip (C, T, H, W), or a batch of clips side by side in a grid, as an animated
    GIF. Returns the path."""
    from PIL import Image

    clips = _batch(video)
    per_clip = [clip_to_frames(c, value_range) for c in clips]
    ncols = ncols or len(per_clip)
    frames = []
    for t in range(per_clip[0].shape[0]):
        grid = _tile([c[t] for c in per_clip], ncols, pad if len(per_clip) > 1 else 0)
        if scale > 1:
            grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
        frames.append(Image.fromarray(grid))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=max(1, round(1000.0 / fps)),
                   loop=loop, optimize=False, disposal=1)
    return path


def save_filmstrip(
    video: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    scale: int = 1,
    pad: int = 2,
    value_range: Sequence[float] = (-1.0, 1.0),
) -> Path:
    """Write clips as a PNG filmstrip: one row per clip, frames left to right."""
    from PIL import Image

    clips = _batch(video)
    per_clip = [clip_to_frames(c, value_range) for c in clips]
    t = per_clip[0].shape[0]
    grid = _tile([f for c in per_clip for f in c], t, pad)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def load_gif(path: str | os.PathLike[str], value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """Read an animated GIF back as a clip (3, T, H, W) in ``value_range``."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames = [np.asarray(f.convert("RGB"), dtype=np.float32) / 255.0 for f in ImageSequence.Iterator(im)]
    lo, hi = float(value_range[0]), float(value_range[1])
    x = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)
    return x * (hi - lo) + lo

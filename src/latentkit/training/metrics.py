"""Progress and output: metrics to CSV and TensorBoard, a progress bar, sample-grid PNGs."""

from __future__ import annotations

import csv
import io
import math
import os
import textwrap
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from latentkit.fileio import atomic_write_bytes

__all__ = ["CSVLogger", "ProgressBar", "TensorBoardLogger", "make_image_grid", "save_image_grid"]


class CSVLogger:
    """Appends one row of metrics per logged step to ``path``.

    Columns are the union of every key seen (the file is rewritten when a new one appears).
    ``resume_step`` drops rows logged after that step by an interrupted run, so a resumed run
    leaves one row per step.
    """

    def __init__(self, path: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = []
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                rows = list(reader)
            if resume_step is not None:
                rows = [r for r in rows if _as_int(r.get("step")) <= resume_step]
            else:
                rows = []
                self.columns = []
        self._rewrite(rows)

    def _rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        if self.columns:
            writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append ``metrics`` for ``step``."""
        row = {"step": step, **{k: _fmt(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in self.columns]
        if new:
            with open(self.path, newline="") as f:
                old = list(csv.DictReader(f)) if self.columns else []
            self.columns += new
            self._rewrite(old)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        """Nothing to release (each row is flushed when written)."""


def _as_int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


class TensorBoardLogger:
    """Scalars to TensorBoard event files (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | os.PathLike[str], *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError when absent

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @staticmethod
    def available() -> bool:
        """Whether TensorBoard can be written here."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
        return True

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write every finite scalar of ``metrics`` at ``step``."""
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class ProgressBar:
    """A tqdm bar over optimizer steps showing loss, items/s and (tqdm's) time left."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc,
                        dynamic_ncols=True, unit="step", smoothing=0.1)
        self._items_per_s: float | None = None

    def update(self, metrics: Mapping[str, float]) -> None:
        """Advance one step and show the step's loss and smoothed throughput."""
        ips = metrics.get("items_per_s")
        if ips is not None and math.isfinite(ips):
            self._items_per_s = ips if self._items_per_s is None else 0.9 * self._items_per_s + 0.1 * ips
        postfix = {}
        if "loss" in metrics:
            postfix["loss"] = f"{metrics['loss']:.4g}"
        if self._items_per_s is not None:
            postfix["items/s"] = f"{self._items_per_s:.1f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        self.bar.write(message)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


# ----------------------------------------------------------------------- sample grids


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


class Timer:
    """Wall-clock seconds since the last :meth:`lap` (for throughput)."""

    def __init__(self) -> None:
        self._t = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap (or construction)."""
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        return dt


def warn_once(message: str, _seen: set[str] = set()) -> None:  # noqa: B006 - intentional cache
    """``warnings.warn`` a message only the first time."""
    if message not in _seen:
        _seen.add(message)
        warnings.warn(message, stacklevel=2)

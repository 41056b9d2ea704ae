"""Video datasets (kind ``dataset``, data key ``video``, layout ``CTHW``).

* :class:`MovingShapesDataset` (``moving_shapes``): a coloured shape gliding across a dark
  frame at constant speed, captioned "a red square moving left"; every item is a function of
  ``(seed, index)`` only. :func:`motion_direction` is its deterministic checker: it tracks the
  shape's centroid across frames and names the direction of the least-squares motion.
* :class:`VideoFolderDataset` (``video_folder``): clips stored as image files, one folder per
  clip (frames in file-name order), with optional captions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from latentkit.interfaces import Dataset
from latentkit.random import item_rng
from latentkit.specs import DataSpec

__all__ = [
    "COLORS",
    "DIRECTIONS",
    "SHAPES",
    "MotionEstimate",
    "MovingShapesDataset",
    "VideoFolderDataset",
    "direction_adherence",
    "motion_coherence",
    "motion_direction",
    "track_centroids",
]

#: Colour name -> RGB in [0, 1].
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.25),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
SHAPES: tuple[str, ...] = ("square", "circle")
#: Direction name -> unit step (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _check_names(given: Sequence[str], known: Sequence[str], what: str) -> tuple[str, ...]:
    given = tuple(given)
    unknown = [g for g in given if g not in known]
    if not given or unknown:
        raise ValueError(f"MovingShapesDataset: {what} must be a non-empty subset of {list(known)}, got {list(given)}")
    return given


class MovingShapesDataset(Dataset):
    """A shape of one colour moving in a straight line at ``speed`` pixels per frame on a
    black background, ``frames`` frames of ``size`` x ``size``, values in [-1, 1].

    Item ``i`` (a dict) holds ``video`` (3, T, H, W), ``caption`` ("a red square moving
    left"), ``label`` (index of the direction in ``directions``), ``direction``, ``color``
    and ``shape``. Colour, shape, direction and start position are drawn from
    ``numpy.random.default_rng([seed, i])``: the same for every process, worker and run.
    The start is chosen so the whole path stays inside the frame.
    """

    data_key: ClassVar[str] = "video"

    def __init__(
        self,
        frames: int = 8,  # frames per clip
        size: int = 16,  # frame height = width in pixels
        length: int = 1024,  # number of items
        colors: Sequence[str] = ("red",),  # subset of COLORS
        shapes: Sequence[str] = ("square",),  # subset of SHAPES
        directions: Sequence[str] = ("left", "right", "up", "down"),  # subset of DIRECTIONS
        speed: int = 1,  # pixels per frame
        shape_size: int = 4,  # side of the square / diameter of the circle, pixels
        seed: int = 0,
    ) -> None:
        super().__init__(DataSpec(channels=3, layout="CTHW"))
        self.colors = _check_names(colors, tuple(COLORS), "colors")
        self.shapes = _check_names(shapes, SHAPES, "shapes")
        self.directions = _check_names(directions, tuple(DIRECTIONS), "directions")
        if frames < 1 or length < 1 or speed < 0 or shape_size < 1:
            raise ValueError("MovingShapesDataset: frames, length, shape_size must be >= 1 and speed >= 0")
        travel = speed * (frames - 1)
        if shape_size + travel > size:
            raise ValueError(
                f"MovingShapesDataset: a shape of {shape_size} px moving {travel} px does not fit "
                f"in {size} px frames; lower frames, speed or shape_size, or raise size"
            )
        self.frames, self.size, self.length = int(frames), int(size), int(length)
        self.speed, self.shape_size, self.seed = int(speed), int(shape_size), int(seed)

    def __len__(self) -> int:
        """Number of items."""
        return self.length

    def caption(self, color: str, shape: str, direction: str) -> str:
        """``"a red square moving left"``."""
        return f"a {color} {shape} moving {direction}"

    def render(self, color: str, shape: str, direction: str, x0: int, y0: int) -> torch.Tensor:
        """The clip of a shape whose top-left corner starts at (x0, y0): (3, T, H, W)."""
        s, n = self.shape_size, self.size
        dx, dy = DIRECTIONS[direction]
        yy, xx = np.mgrid[0:n, 0:n]
        rgb = np.array(COLORS[color], dtype=np.float32) * 2.0 - 1.0
        video = np.full((3, self.frames, n, n), -1.0, dtype=np.float32)
        for f in range(self.frames):
            left, top = x0 + dx * self.speed * f, y0 + dy * self.speed * f
            if shape == "square":
                mask = (xx >= left) & (xx < left + s) & (yy >= top) & (yy < top + s)
            else:
                c = (s - 1) / 2.0
                mask = (xx - left - c) ** 2 + (yy - top - c) ** 2 <= (s / 2.0) ** 2
            video[:, f][:, mask] = rgb[:, None]
        return torch.from_numpy(video)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index`` (see the class docstring)."""
        if not -self.length <= index < self.length:
            raise IndexError(f"MovingShapesDataset index {index} out of range for {self.length} items")
        index %= self.length
        rng = item_rng(self.seed, index)
        color = self.colors[rng.integers(len(self.colors))]
        shape = self.shapes[rng.integers(len(self.shapes))]
        d = int(rng.integers(len(self.directions)))
        direction = self.directions[d]
        dx, dy = DIRECTIONS[direction]
        travel = self.speed * (self.frames - 1)
        room = self.size - self.shape_size
        # start positions keeping the whole path inside the frame
        x_lo, x_hi = max(0, -dx * travel), room - max(0, dx * travel)
        y_lo, y_hi = max(0, -dy * travel), room - max(0, dy * travel)
        x0, y0 = int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1))
        return {
            "video": self.render(color, shape, direction, x0, y0),
            "caption": self.caption(color, shape, direction),
            "label": d,
            "direction": direction,
            "color": color,
            "shape": shape,
        }

    def describe(self) -> dict[str, Any]:
        """Options that determine the items."""
        return {"class": type(self).__name__, "frames": self.frames, "size": self.size,
                "length": self.length, "colors": list(self.colors), "shapes": list(self.shapes),
                "directions": list(self.directions), "speed": self.speed,
                "shape_size": self.shape_size, "seed": self.seed}


# --------------------------------------------------------------------------- checker


def track_centroids(video: torch.Tensor, *, background: float = -1.0, threshold: float = 0.5) -> torch.Tensor:
    """Centroid (x, y) of the foreground in every frame of one clip (3, T, H, W).

    A pixel is foreground when some channel exceeds ``background + threshold`` (values in
    [-1, 1]); the centroid is the foreground-weighted mean position. Frames without
    foreground get NaN. Returns (T, 2).
    """
    if video.ndim != 4:
        raise ValueError(f"track_centroids: expected one clip (C, T, H, W), got shape {tuple(video.shape)}")
    v = video.detach().float().cpu()
    excess = (v.amax(dim=0) - background - threshold).clamp(min=0)  # (T, H, W)
    weight = (excess > 0).float() * (1.0 + excess)
    _, h, w = weight.shape
    ys = torch.arange(h, dtype=torch.float32)[None, :, None]
    xs = torch.arange(w, dtype=torch.float32)[None, None, :]
    total = weight.sum(dim=(1, 2))
    cx = (weight * xs).sum(dim=(1, 2)) / total
    cy = (weight * ys).sum(dim=(1, 2)) / total
    out = torch.stack([cx, cy], dim=1)
    out[total == 0] = float("nan")
    return out


class MotionEstimate(dict):  # type: ignore[type-arg]
    """Result of :func:`motion_direction`: ``direction`` (a key of DIRECTIONS or ``None``),
    ``displacement`` (dx, dy over the clip, pixels) and ``tracked`` (frames with a shape)."""


def motion_direction(
    video: torch.Tensor,
    *,
    min_displacement: float = 2.0,  # pixels over the clip, below which the shape "does not move"
    background: float = -1.0,
    threshold: float = 0.5,
) -> MotionEstimate:
    """Direction of motion of the shape in one clip (3, T, H, W), by centroid tracking.

    The centroids of :func:`track_centroids` are fitted by least squares, ``c(f) = a + v f``,
    over the frames where a shape is seen (at least half of them); the displacement is
    ``v (T - 1)``. The direction is the axis-aligned one with the largest component, or
    ``None`` when the shape is lost or moves less than ``min_displacement`` pixels.
    """
    cents = track_centroids(video, background=background, threshold=threshold)
    frames = cents.shape[0]
    ok = ~torch.isnan(cents[:, 0])
    n = int(ok.sum())
    result = MotionEstimate(direction=None, displacement=(0.0, 0.0), tracked=n)
    if frames < 2 or n < max(2, (frames + 1) // 2):
        return result
    f = torch.arange(frames, dtype=torch.float32)[ok]
    c = cents[ok]
    fc = f - f.mean()
    velocity = (fc[:, None] * (c - c.mean(dim=0))).sum(dim=0) / (fc**2).sum()  # (vx, vy)
    dx, dy = (float(v) * (frames - 1) for v in velocity)
    result["displacement"] = (dx, dy)
    if max(abs(dx), abs(dy)) < min_displacement:
        return result
    if abs(dx) >= abs(dy):
        result["direction"] = "right" if dx > 0 else "left"
    else:
        result["direction"] = "down" if dy > 0 else "up"
    return result


def direction_adherence(videos: torch.Tensor, directions: Sequence[str], **kwargs: Any) -> float:
    """Fraction of clips (B, 3, T, H, W) whose :func:`motion_direction` is the prompted one."""
    if len(videos) != len(directions):
        raise ValueError(f"direction_adherence: {len(videos)} clips but {len(directions)} directions")
    hits = sum(motion_direction(v, **kwargs)["direction"] == d for v, d in zip(videos, directions))
    return hits / max(1, len(directions))


def motion_coherence(
    videos: torch.Tensor,
    *,
    speed: float = 1.0,  # the data's pixels per frame
    tolerance: float = 0.5,  # pixels of deviation from a straight, even path still "coherent"
    background: float = -1.0,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Temporal coherence of clips (B, 3, T, H, W), separately from their direction.

    Every clip's centroids (:func:`track_centroids`) are compared with the data, where the
    shape moves ``speed`` pixels per frame in a straight line:

    * ``mean_step``: mean distance between the centroids of consecutive tracked frames
      (pixels; the data has ``speed``, frames drawn independently of each other have several);
    * ``step_error``: mean ``|step - speed|`` over those frame pairs (0 for the data);
    * ``line_rmse``: mean over clips of the RMS residual of the least-squares constant-velocity
      fit ``c(f) = a + v f`` (0 for the data);
    * ``coherent``: fraction of clips with the shape in every frame whose largest residual
      from that fit is at most ``tolerance`` pixels and whose every step lies within
      ``tolerance`` of ``speed`` (1 for the data);
    * ``tracked``: fraction of frames where a shape is found.

    Clips with fewer than two tracked frames count as incoherent and add nothing to the means.
    """
    if videos.ndim != 5:
        raise ValueError(f"motion_coherence: expected clips (B, C, T, H, W), got shape {tuple(videos.shape)}")
    steps: list[torch.Tensor] = []
    rmses: list[float] = []
    coherent = 0
    tracked = 0
    for video in videos:
        cents = track_centroids(video, background=background, threshold=threshold)
        ok = ~torch.isnan(cents[:, 0])
        tracked += int(ok.sum())
        if int(ok.sum()) < 2:
            continue
        f = torch.arange(cents.shape[0], dtype=torch.float32)[ok]
        c = cents[ok]
        pair = ok[1:] & ok[:-1]  # consecutive frames, both tracked
        step = (cents[1:] - cents[:-1]).norm(dim=1)[pair]
        steps.append(step)
        fc = f - f.mean()
        velocity = (fc[:, None] * (c - c.mean(dim=0))).sum(dim=0) / (fc**2).sum()
        residual = (c - c.mean(dim=0) - fc[:, None] * velocity).norm(dim=1)
        rmses.append(float(residual.pow(2).mean().sqrt()))
        if (bool(ok.all()) and float(residual.max()) <= tolerance
                and bool(((step - speed).abs() <= tolerance).all())):
            coherent += 1
    all_steps = torch.cat(steps) if steps else torch.zeros(0)
    nan = float("nan")
    return {
        "mean_step": float(all_steps.mean()) if len(all_steps) else nan,
        "step_error": float((all_steps - speed).abs().mean()) if len(all_steps) else nan,
        "line_rmse": sum(rmses) / len(rmses) if rmses else nan,
        "coherent": coherent / max(1, len(videos)),
        "tracked": tracked / max(1, videos.shape[0] * videos.shape[2]),
    }


# --------------------------------------------------------------------------- video folder

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class VideoFolderDataset(Dataset):
    """Clips stored as frames: ``root/<clip>/<frame>.png`` (any Pillow format), one folder per
    clip, frames in file-name order (natural order: ``2.png`` before ``10.png``).

    Captions come from ``root/captions.jsonl`` (lines ``{"clip": "<folder>", "caption":
    "..."}``) or a ``caption.txt`` inside the clip folder; clips without one get ``""``.
    Each clip is resized to ``size`` (an int for square frames, or (height, width)) and
    ``frames`` frames are taken, ``stride`` apart, starting at the first frame (or, with
    ``random_start``, at a start drawn from ``(seed, epoch, index)``). Clips with too few
    frames are skipped at construction. Items: ``video`` (C, T, H, W) in [-1, 1], ``caption``
    and ``clip`` (the folder name).
    """

    data_key: ClassVar[str] = "video"

    def __init__(
        self,
        root: str,  # directory with one sub-folder per clip
        frames: int = 8,  # frames per item
        size: int | Sequence[int] = 64,  # frame size: int or (height, width)
        stride: int = 1,  # take every stride-th frame
        channels: int = 3,  # 3 (RGB) or 1 (grey)
        random_start: bool = False,  # random temporal crop (seeded per item and epoch)
        seed: int = 0,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"VideoFolderDataset: channels must be 1 or 3, got {channels}")
        super().__init__(DataSpec(channels=channels, layout="CTHW"))
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"VideoFolderDataset: {str(self.root)!r} is not a directory")
        if frames < 1 or stride < 1:
            raise ValueError("VideoFolderDataset: frames and stride must be >= 1")
        self.frames, self.stride, self.seed = int(frames), int(stride), int(seed)
        self.random_start = bool(random_start)
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.epoch = 0
        captions = self._read_captions()
        span = (self.frames - 1) * self.stride + 1
        self.clips: list[tuple[str, list[Path], str]] = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            files = sorted((f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES),
                           key=lambda p: _natural_key(p.name))
            if len(files) < span:
                continue
            caption = captions.get(folder.name)
            if caption is None and (folder / "caption.txt").is_file():
                caption = (folder / "caption.txt").read_text(encoding="utf-8").strip()
            self.clips.append((folder.name, files, caption or ""))
        if not self.clips:
            raise ValueError(
                f"VideoFolderDataset: no clip folder under {str(self.root)!r} has the {span} frames "
                f"needed for frames={self.frames}, stride={self.stride}"
            )

    def _read_captions(self) -> dict[str, str]:
        path = self.root / "captions.jsonl"
        if not path.is_file():
            return {}
        out = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["clip"])] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: expected {{\"clip\": ..., \"caption\": ...}}, got {line!r}") from exc
        return out

    def set_epoch(self, epoch: int) -> None:
        """Select the random temporal crops of ``epoch`` (called by the trainer)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of clips."""
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Clip ``index``: ``video`` (C, T, H, W), ``caption``, ``clip``."""
        from PIL import Image

        name, files, caption = self.clips[index]
        span = (self.frames - 1) * self.stride + 1
        start = 0
        if self.random_start and len(files) > span:
            rng = item_rng(self.seed, self.epoch, index)
            start = int(rng.integers(0, len(files) - span + 1))
        mode = "RGB" if self.data_spec.channels == 3 else "L"
        frames = []
        for path in files[start : start + span : self.stride]:
            with Image.open(path) as im:
                im = im.convert(mode).resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
                a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
            frames.append(a if a.ndim == 3 else a[:, :, None])
        video = torch.from_numpy(np.stack(frames).transpose(3, 0, 1, 2).copy()).clamp_(-1.0, 1.0)
        return {"video": video, "caption": caption, "clip": name}

    def describe(self) -> dict[str, Any]:
        """Options that determine the items."""
        return {"class": type(self).__name__, "root": str(self.root), "frames": self.frames,
                "size": list(self.size), "stride": self.stride, "clips": len(self.clips)}


def _natural_key(name: str) -> list[Any]:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

"""``shapes``: coloured shapes on grey backgrounds, made in code, with captions such as
"a red circle at the top left".

The palette, shapes and positions are few and far apart so that a deterministic checker
(:func:`describe_image`) can tell them apart in a generated image: colours by the mean of the
saturated pixels, shapes by the best IoU against an ideal circle, square and triangle fitted
to their bounding box, positions by the centroid's quadrant. Backgrounds are unsaturated
(grey gradients with a little noise), so they never pass for a shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch

from latentkit.data.base import AugmentedDataset, image_to_tensor
from latentkit.random import item_rng
from latentkit.specs import DataSpec

__all__ = ["COLORS", "PARTIAL_FORMS", "POSITIONS", "SHAPES", "ShapeDescription", "ShapesDataset", "caption_of", "describe_image"]

#: Colour name -> RGB in [0, 1]: primaries and yellow, pairwise far apart.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.70, 0.24),
    "blue": (0.20, 0.32, 0.88),
    "yellow": (0.92, 0.82, 0.14),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Position name -> centre as a fraction of (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}


def caption_of(color: str | None, shape: str | None, position: str | None) -> str:
    """``"a red circle at the top left"``; an attribute given as ``None`` is left out
    (``"a red circle"``, ``"a circle at the top left"``, ``"a red shape at the top left"``)."""
    words = " ".join(w for w in (color, shape or "shape") if w)
    return f"a {words} at the {position}" if position else f"a {words}"


#: The partial captions of :class:`ShapesDataset` (``partial_captions``): which attribute each
#: leaves out.
PARTIAL_FORMS: tuple[str, ...] = ("position", "color", "shape")


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Pixels of ``shape`` centred at (cx, cy) with half-size ``r`` (coordinates in pixels)."""
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    if shape == "square":
        s = r * 0.886  # same area as the circle: side sqrt(pi) r
        return (np.abs(xx - cx) <= s) & (np.abs(yy - cy) <= s)
    if shape == "triangle":  # apex up, base down; height 2r, base 2.3r
        top, bottom = cy - r, cy + r
        half = 1.15 * r * (yy - top) / (2 * r)
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


class ShapesDataset(AugmentedDataset):
    """Synthetic captioned images: one shape of one colour at one of four positions.

    Item ``i`` is a function of ``(seed, i)`` only. The attribute combination cycles through
    every allowed (colour, shape, position) in a seeded order, so each appears equally often;
    ``exclude`` removes combinations (by caption), e.g. to hold prompts out of training. Items
    carry ``image`` (3, size, size) in [-1, 1], ``caption``, ``label`` (colour x shape class,
    ``color_index * len(shapes) + shape_index``), ``color``, ``shape`` and ``position``.

    ``partial_captions`` (a probability) gives that share of items a caption that leaves one
    attribute out, chosen per item: ``"a red circle"``, ``"a circle at the top left"`` or
    ``"a red shape at the top left"``. Seeing each word also without the others teaches a
    text-conditioned model what each word does on its own, which is what it needs to follow
    combinations it never saw (the quickstart's held-out prompts). Images are unchanged.
    """

    def __init__(
        self,
        size: int = 32,  # image side in pixels
        length: int = 1024,  # number of items
        seed: int = 0,
        colors: Sequence[str] | None = None,  # subset of COLORS (default: all)
        shapes: Sequence[str] | None = None,  # subset of SHAPES (default: all)
        positions: Sequence[str] | None = None,  # subset of POSITIONS (default: all)
        exclude: Sequence[str] = (),  # captions left out (held-out prompts)
        supersample: int = 4,  # anti-aliasing factor
        partial_captions: float = 0.0,  # share of items whose caption leaves one attribute out
    ) -> None:
        super().__init__(DataSpec(channels=3, layout="CHW"), seed=seed)
        if size < 8:
            raise ValueError(f"shapes: size must be >= 8, got {size}")
        if length < 1:
            raise ValueError(f"shapes: length must be >= 1, got {length}")
        if not 0.0 <= partial_captions <= 1.0:
            raise ValueError(f"shapes: partial_captions must be a probability in [0, 1], got {partial_captions}")
        self.partial_captions = float(partial_captions)
        self.size = int(size)
        self.length = int(length)
        self.supersample = int(supersample)
        self.colors = tuple(colors) if colors is not None else tuple(COLORS)
        self.shapes = tuple(shapes) if shapes is not None else SHAPES
        self.positions = tuple(positions) if positions is not None else tuple(POSITIONS)
        for name, chosen, known in (("colors", self.colors, COLORS), ("shapes", self.shapes, SHAPES),
                                    ("positions", self.positions, POSITIONS)):
            bad = [c for c in chosen if c not in known]
            if bad or not chosen:
                raise ValueError(f"shapes: {name} must be a non-empty subset of {list(known)}, got {list(chosen)}")
        excluded = set(exclude)
        combos = [c for c in itertools.product(self.colors, self.shapes, self.positions)
                  if caption_of(*c) not in excluded]
        unknown = excluded - {caption_of(*c) for c in itertools.product(self.colors, self.shapes, self.positions)}
        if unknown:
            raise ValueError(f"shapes: exclude names captions that never occur: {sorted(unknown)}")
        if not combos:
            raise ValueError("shapes: exclude removes every combination")
        order = np.random.default_rng([seed, 7]).permutation(len(combos))
        self.combinations: list[tuple[str, str, str]] = [combos[i] for i in order]
        self.exclude = tuple(sorted(excluded))

    def __len__(self) -> int:
        return self.length

    @property
    def captions(self) -> list[str]:
        """Every caption this dataset can produce."""
        return sorted(caption_of(*c) for c in self.combinations)

    def attributes(self, index: int) -> tuple[str, str, str]:
        """``(color, shape, position)`` of item ``index``."""
        index = self._check_index(index)
        return self.combinations[index % len(self.combinations)]

    def render(self, color: str, shape: str, position: str, rng: np.random.Generator) -> np.ndarray:
        """An (H, W, 3) float image in [0, 1] of one shape; ``rng`` picks the background,
        the size, a small offset and the shade."""
        s = self.size * self.supersample
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        # grey vertical/horizontal gradient background
        g0, g1 = rng.uniform(0.15, 0.85, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = ((xx / s - 0.5) * np.cos(angle) + (yy / s - 0.5) * np.sin(angle)) + 0.5
        background = g0 + (g1 - g0) * np.clip(ramp, 0, 1) * 0.5
        image = np.repeat(background[:, :, None], 3, axis=2)
        fx, fy = POSITIONS[position]
        jitter = rng.uniform(-0.02, 0.02, size=2)
        cx, cy = (fx + jitter[0]) * s, (fy + jitter[1]) * s
        r = rng.uniform(0.19, 0.22) * s
        mask = _shape_mask(shape, xx, yy, cx, cy, r)
        shade = np.clip(np.asarray(COLORS[color]) * rng.uniform(0.9, 1.08), 0, 1)
        image[mask] = shade
        # box-filter down-sampling = anti-aliased edges
        f = self.supersample
        image = image.reshape(self.size, f, self.size, f, 3).mean(axis=(1, 3))
        noise = rng.normal(0, 0.015, size=(self.size, self.size, 1))  # grey noise: no colour
        return np.clip(image + noise, 0, 1).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        color, shape, position = self.attributes(index)
        # Items do not change with the epoch: the rng depends on (seed, index) only.
        rng = item_rng(self.seed, 1, index)
        image = image_to_tensor(self.render(color, shape, position, rng))
        caption = caption_of(color, shape, position)
        if self.partial_captions > 0:  # a separate stream: images do not depend on this option
            pick = item_rng(self.seed, 2, index)
            if pick.random() < self.partial_captions:
                left_out = PARTIAL_FORMS[int(pick.integers(len(PARTIAL_FORMS)))]
                caption = caption_of(None if left_out == "color" else color, None if left_out == "shape" else shape,
                                     None if left_out == "position" else position)
        return {
            "image": image,
            "caption": caption,
            "label": self.colors.index(color) * len(self.shapes) + self.shapes.index(shape),
            "color": color,
            "shape": shape,
            "position": position,
        }

    def describe(self) -> dict[str, Any]:
        """Options that determine the items."""
        return {"class": "ShapesDataset", "size": self.size, "length": self.length, "seed": self.seed,
                "colors": self.colors, "shapes": self.shapes, "positions": self.positions,
                "exclude": self.exclude, "supersample": self.supersample,
                "partial_captions": self.partial_captions}


# ----------------------------------------------------------------------- checker


@attrs.frozen
class ShapeDescription:
    """What :func:`describe_image` sees: ``color``, ``shape`` and ``position`` (``None``
    when no shape is found) and the share of image pixels the shape covers."""

    color: str | None
    shape: str | None
    position: str | None
    coverage: float

    def matches(self, caption: str) -> bool:
        """Whether colour and shape both appear in ``caption`` (position is not required)."""
        words = caption.lower()
        return self.color is not None and self.shape is not None and f"{self.color} {self.shape}" in words


def describe_image(
    image: torch.Tensor | np.ndarray,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    saturation_threshold: float = 0.25,
) -> ShapeDescription:
    """Deterministic checker: the dominant colour, shape and position of a (3, H, W) image.

    Pixels whose saturation (max - min over RGB, in [0, 1]) exceeds ``saturation_threshold``
    belong to the shape. Colour: the :data:`COLORS` entry nearest to their median RGB. Shape:
    the ideal circle / square / triangle, fitted to the bounding box of the largest blob of
    those pixels, with the highest IoU. Position: the quadrant of their centroid.
    """
    x = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"describe_image needs a (3, H, W) image, got shape {x.shape}")
    lo, hi = value_range
    rgb = np.clip((x - lo) / (hi - lo), 0, 1).transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    mask = sat > saturation_threshold
    n = int(mask.sum())
    if n < max(4, h * w // 200):
        return ShapeDescription(None, None, None, n / (h * w))
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count > 1:  # keep the largest blob: stray saturated pixels do not move the box
        sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    pixels = rgb[mask]
    median = np.median(pixels, axis=0)
    names = list(COLORS)
    dists = [float(np.sum((median - np.asarray(COLORS[c])) ** 2)) for c in names]
    color = names[int(np.argmin(dists))]
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2
    rx, ry = max((x1 - x0 + 1) / 2, 1.0), max((y1 - y0 + 1) / 2, 1.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    u, v = (xx - cx) / rx, (yy - cy) / ry  # bounding box -> [-1, 1]^2
    templates = {
        "circle": u**2 + v**2 <= 1.0,
        "square": (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0),
        "triangle": (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0),
    }
    ious = {k: float((t & mask).sum() / max(1, (t | mask).sum())) for k, t in templates.items()}
    shape = max(ious, key=ious.__getitem__)
    mx, my = xs.mean() / w, ys.mean() / h
    position = f"{'top' if my < 0.5 else 'bottom'} {'left' if mx < 0.5 else 'right'}"
    return ShapeDescription(color, shape, position, n / (h * w))

"""Deterministic evaluation of generated and reconstructed images.

* **Prompt adherence** for the synthetic ``shapes`` data: each generated image is read by the
  deterministic checker :func:`latentkit.data.shapes.describe_image` (dominant colour of the
  saturated pixels, best-IoU shape template, centroid quadrant) and compared with the colour,
  shape and position named in its prompt. An image *adheres* when colour **and** shape are
  right (the quickstart's criterion); position is reported separately.
* **Reconstruction metrics** for autoencoders: L1, MSE, PSNR and SSIM (Wang et al. 2004,
  :func:`ssim`, in torch: the same numbers as scikit-image's ``structural_similarity``) of
  ``decode(encode(x))`` against ``x``.

Nothing here is learned, so a number measured twice on the same images is the same number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from latentkit.data.shapes import COLORS, POSITIONS, SHAPES, describe_image

__all__ = [
    "AdherenceReport",
    "ImageVerdict",
    "ReconstructionReport",
    "parse_prompt",
    "prompt_adherence",
    "reconstruction_metrics",
    "ssim",
]

_PROMPT = re.compile(
    r"\b(?P<color>" + "|".join(COLORS) + r")\s+(?P<shape>" + "|".join(SHAPES) + r")\b"
    r"(?:.*?\b(?P<position>" + "|".join(POSITIONS) + r")\b)?",
    re.IGNORECASE,
)


def parse_prompt(prompt: str) -> tuple[str, str, str | None]:
    """``"a red circle at the top left"`` -> ``("red", "circle", "top left")``.

    The prompt must name one of the ``shapes`` colours followed by one of its shapes; the
    position is optional (``None`` when absent). Raises ``ValueError`` otherwise.
    """
    m = _PROMPT.search(prompt)
    if m is None:
        raise ValueError(
            f"prompt {prompt!r} names no '<colour> <shape>' of the shapes data; colours: "
            f"{', '.join(COLORS)}; shapes: {', '.join(SHAPES)} (e.g. 'a red circle at the top left')"
        )
    position = m.group("position")
    return m.group("color").lower(), m.group("shape").lower(), position.lower() if position else None


@attrs.frozen
class ImageVerdict:
    """What the checker saw in one image, against what its prompt asked for."""

    prompt: str
    expected_color: str
    expected_shape: str
    expected_position: str | None
    color: str | None  # ``None``: no saturated shape found
    shape: str | None
    position: str | None
    coverage: float  # share of the pixels the shape covers

    @property
    def color_ok(self) -> bool:
        """The dominant colour is the prompt's."""
        return self.color == self.expected_color

    @property
    def shape_ok(self) -> bool:
        """The best-fitting shape template is the prompt's."""
        return self.shape == self.expected_shape

    @property
    def position_ok(self) -> bool | None:
        """The centroid's quadrant is the prompt's (``None`` if the prompt names none)."""
        return None if self.expected_position is None else self.position == self.expected_position

    @property
    def adheres(self) -> bool:
        """Colour and shape both right."""
        return self.color_ok and self.shape_ok


@attrs.frozen
class AdherenceReport:
    """Per-image verdicts and their rates (fractions in [0, 1])."""

    verdicts: tuple[ImageVerdict, ...]

    def _rate(self, values: Iterable[bool]) -> float:
        values = list(values)
        return float(np.mean(values)) if values else float("nan")

    @property
    def adherence(self) -> float:
        """Share of images with colour and shape right."""
        return self._rate(v.adheres for v in self.verdicts)

    @property
    def color_accuracy(self) -> float:
        """Share of images with the right colour."""
        return self._rate(v.color_ok for v in self.verdicts)

    @property
    def shape_accuracy(self) -> float:
        """Share of images with the right shape."""
        return self._rate(v.shape_ok for v in self.verdicts)

    @property
    def position_accuracy(self) -> float:
        """Share of images (whose prompt names a position) with the right quadrant."""
        return self._rate(bool(v.position_ok) for v in self.verdicts if v.position_ok is not None)

    def per_prompt(self) -> dict[str, float]:
        """Adherence of each distinct prompt, in first-seen order."""
        groups: dict[str, list[bool]] = {}
        for v in self.verdicts:
            groups.setdefault(v.prompt, []).append(v.adheres)
        return {p: float(np.mean(a)) for p, a in groups.items()}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary with every verdict."""
        return {
            "adherence": self.adherence,
            "color_accuracy": self.color_accuracy,
            "shape_accuracy": self.shape_accuracy,
            "position_accuracy": self.position_accuracy,
            "images": len(self.verdicts),
            "per_prompt": self.per_prompt(),
            "verdicts": [
                {**attrs.asdict(v), "adheres": v.adheres} for v in self.verdicts
            ],
        }

    def summary(self) -> str:
        """One line: ``adherence 87.5% (28/32): colour 93.8%, shape 90.6%, position 81.3%``."""
        n = len(self.verdicts)
        ok = sum(v.adheres for v in self.verdicts)
        return (
            f"adherence {100 * self.adherence:.1f}% ({ok}/{n}): colour {100 * self.color_accuracy:.1f}%, "
            f"shape {100 * self.shape_accuracy:.1f}%, position {100 * self.position_accuracy:.1f}%"
        )


def prompt_adherence(
    images: torch.Tensor | Sequence[torch.Tensor],
    prompts: Sequence[str],
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> AdherenceReport:
    """Check each (3, H, W) image against its prompt with the deterministic ``shapes`` checker.

    ``images[i]`` was generated for ``prompts[i]``; values lie in ``value_range``.
    """
    if len(images) != len(prompts):
        raise ValueError(f"prompt_adherence: got {len(images)} images for {len(prompts)} prompts")
    verdicts = []
    for image, prompt in zip(images, prompts):
        color, shape, position = parse_prompt(prompt)
        seen = describe_image(image, value_range=value_range)
        verdicts.append(ImageVerdict(prompt, color, shape, position, seen.color, seen.shape,
                                     seen.position, float(seen.coverage)))
    return AdherenceReport(tuple(verdicts))


@attrs.frozen
class ReconstructionReport:
    """Mean reconstruction errors over ``count`` images (values in the data's range)."""

    l1: float
    mse: float
    psnr: float  # dB, peak = the value range's width
    ssim: float  # mean structural similarity, channels averaged
    count: int

    def as_dict(self) -> dict[str, float]:
        """JSON-ready."""
        return attrs.asdict(self)

    def summary(self) -> str:
        """One line with every metric."""
        return (f"PSNR {self.psnr:.2f} dB, SSIM {self.ssim:.4f}, L1 {self.l1:.4f}, "
                f"MSE {self.mse:.5f} over {self.count} images")


def _ssim_window(spatial: Sequence[int]) -> int:
    w = min(7, *spatial)
    return w if w % 2 else w - 1


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float, win_size: int | None = None) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004, Eq. 13) of each pair of (N, C, H, W)
    images, channels averaged: (N,).

    Local means, variances and the covariance come from a ``win_size`` x ``win_size``
    uniform window (default 7, smaller for small images; sample covariance, ``N / (N - 1)``),
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with ``L = data_range``, and the mean is taken
    over the positions whose window lies inside the image: scikit-image's
    ``structural_similarity`` defaults, which the tests check it against."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    w = win_size or _ssim_window(a.shape[2:])
    x, y = a.double(), b.double()
    n, c = x.shape[:2]

    def mean(t: torch.Tensor) -> torch.Tensor:  # the window mean at every valid position
        return torch.nn.functional.avg_pool2d(t.reshape(n * c, 1, *t.shape[2:]), w, stride=1)

    cov_norm = w * w / (w * w - 1)
    mx, my = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - mx * mx)
    vy = cov_norm * (mean(y * y) - my * my)
    vxy = cov_norm * (mean(x * y) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(n, c, -1).mean(dim=(1, 2)).float()


@torch.no_grad()
def reconstruction_metrics(
    autoencoder: Any,
    images: torch.Tensor | Iterable[torch.Tensor],
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    batch_size: int = 32,
) -> ReconstructionReport:
    """L1, MSE, PSNR (``10 log10(range^2 / MSE)`` per image, averaged) and SSIM of
    ``autoencoder.decode(autoencoder.encode(x).mode())`` against ``x``.

    ``images`` is an (N, C, H, W) tensor or an iterable of (C, H, W) / (B, C, H, W) tensors.
    SSIM is :func:`ssim` with ``data_range`` = the value range's width, on 2-D images only
    (NaN otherwise).
    """
    if isinstance(images, torch.Tensor):
        chunks: Iterable[torch.Tensor] = images.split(batch_size)
    else:
        chunks = (x if x.dim() >= 4 else x.unsqueeze(0) for x in images)
    lo, hi = value_range
    width = hi - lo
    try:
        device = next(autoencoder.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    l1s, mses, psnrs, ssims = [], [], [], []
    for x in chunks:
        x = x.to(device, torch.float32)
        rec = autoencoder.decode(autoencoder.encode(x).mode()).clamp(lo, hi)
        diff = (rec - x).flatten(1)
        mse = diff.pow(2).mean(1)
        l1s += diff.abs().mean(1).tolist()
        mses += mse.tolist()
        psnrs += [10 * math.log10(width**2 / max(m, 1e-12)) for m in mse.tolist()]
        if x.dim() == 4:
            ssims += ssim(x, rec, data_range=width).tolist()
    if not mses:
        raise ValueError("reconstruction_metrics: no images given")
    return ReconstructionReport(
        l1=float(np.mean(l1s)), mse=float(np.mean(mses)), psnr=float(np.mean(psnrs)),
        ssim=float(np.mean(ssims)) if ssims else float("nan"), count=len(mses),
    )

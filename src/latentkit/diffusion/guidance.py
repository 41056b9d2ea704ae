"""Guidance, as wrappers around ``denoise(x, sigma, **extra_args) -> x0``.

A wrapper is itself a ``denoise`` function, so every sampler gets every kind of guidance
without knowing about it. The conditional and unconditional conditionings travel in the
sampler's ``extra_args`` as ``cond`` and ``uncond``.

* :class:`ClassifierFreeGuidance`: Ho & Salimans (2022), Eq. 6, with both passes batched into
  one forward call; optional guidance rescale (Lin et al. 2024, Sec. 3.4) and a
  guidance interval (Kynkaanniemi et al. 2024: guidance only for sigma in ``[lo, hi]``).
* :class:`DynamicThresholding`: Saharia et al. (2022, Imagen, Sec. 2.3), for pixel-space
  models.

Nothing here slices channels: the backbone already returns exactly the latent channels
(``out_channels`` of its spec), and concat conditioning is part of ``cond``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from latentkit.diffusion.parameterizations import (
    Parameterization,
    append_dims,
    broadcast_sigma,
    get_parameterization,
)
from latentkit.interfaces import DenoiseFn
from latentkit.specs import Conditioning

__all__ = [
    "ClassifierFreeGuidance",
    "DynamicThresholding",
    "classifier_free_guidance",
    "dynamic_threshold",
    "rescale_guidance",
]


def classifier_free_guidance(
    cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` (Ho & Salimans 2022, Eq. 6, whose ``w`` is
    ``scale - 1``). ``scale`` is a number or a (B,) tensor. The combination is affine in
    the prediction, so it is the same in x0, eps and v space for fixed ``x`` and ``sigma``."""
    if isinstance(scale, torch.Tensor) and scale.ndim == 1:
        scale = append_dims(scale.to(cond_out), cond_out.ndim)
    return uncond_out + scale * (cond_out - uncond_out)


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", Sec. 3.4): ``x_re = guided * std(cond) / std(guided)``, then
    ``phi * x_re + (1 - phi) * guided``. Standard deviations are per item over every
    non-batch axis."""
    if phi == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    std_cond = cond_out.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1.0 - phi) * guided


def dynamic_threshold(
    x0: torch.Tensor,
    percentile: float = 0.995,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per item, ``s`` is the
    ``percentile`` quantile of ``|x0|``, ``s = max(s, 1)``, and ``x0`` becomes
    ``clamp(x0, -s, s) / s``. ``value_range`` generalises ``[-1, 1]``: values are centred and
    scaled to it first and mapped back after."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_threshold: percentile must lie in (0, 1], got {percentile}")
    lo, hi = value_range
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    y = (x0 - centre) / half
    s = torch.quantile(y.abs().flatten(1).float(), percentile, dim=1).to(y.dtype)
    s = append_dims(s.clamp(min=1.0), y.ndim)
    y = torch.maximum(torch.minimum(y, s), -s) / s
    return centre + half * y


class ClassifierFreeGuidance:
    """Classifier-free guidance around ``denoise`` (Ho & Salimans 2022, Eq. 6).

    Called as ``guided(x, sigma, cond=..., uncond=..., **extra)``; the conditional and
    unconditional passes run as **one** call of the wrapped ``denoise`` on the batch
    ``[x; x]`` with ``Conditioning.cat([cond, uncond])``.

    * ``scale``: guidance weight (1 = the conditional prediction).
    * ``rescale``: Lin et al.'s phi (0 = off), applied in ``rescale_space`` (a
      parameterization name: ``"v"`` as in the paper's v-prediction model, or the model's
      own output space, as diffusers does, or ``"x0"``/``"eps"``).
    * ``interval``: ``(sigma_lo, sigma_hi)``; items whose sigma lies outside get the
      conditional prediction only (Kynkaanniemi et al. 2024). When no item of a call lies
      inside, the unconditional pass is skipped.
    """

    def __init__(
        self,
        denoise: DenoiseFn,
        scale: float,
        *,
        rescale: float = 0.0,  # guidance rescale phi in [0, 1]
        rescale_space: str | Parameterization = "v",  # prediction space the rescale acts in
        interval: Sequence[float] | None = None,  # (sigma_lo, sigma_hi), None = always
    ) -> None:
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must lie in [0, 1], got {rescale}")
        if interval is not None:
            if len(interval) != 2 or not float(interval[0]) <= float(interval[1]):
                raise ValueError(f"guidance interval must be (sigma_lo, sigma_hi), lo <= hi; got {interval}")
            interval = (float(interval[0]), float(interval[1]))
        self.denoise = denoise
        self.scale = float(scale)
        self.rescale = float(rescale)
        self.rescale_space = get_parameterization(rescale_space)
        self.interval = interval

    def __repr__(self) -> str:
        return (
            f"ClassifierFreeGuidance(scale={self.scale}, rescale={self.rescale}, "
            f"rescale_space={self.rescale_space.name!r}, interval={self.interval})"
        )

    def in_interval(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) bool: where guidance applies."""
        if self.interval is None:
            return torch.ones_like(sigma, dtype=torch.bool)
        lo, hi = self.interval
        return (sigma >= lo) & (sigma <= hi)

    def __call__(
        self,
        x: torch.Tensor,
        sigma: Any,
        cond: Conditioning | None = None,
        uncond: Conditioning | None = None,
        **extra: Any,
    ) -> torch.Tensor:
        """Guided x0 estimate."""
        sigma = broadcast_sigma(sigma, x)
        active = self.in_interval(sigma)
        if not bool(active.any()):
            return self.denoise(x, sigma, cond=cond, **extra)
        if (cond is None) != (uncond is None):
            raise ValueError(
                "classifier-free guidance needs both cond and uncond (or neither, for a model "
                f"without a conditioner); got cond={cond is not None}, uncond={uncond is not None}"
            )
        both = None if cond is None else Conditioning.cat([cond, uncond])  # type: ignore[list-item]
        out = self.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=both, **extra)
        d_cond, d_uncond = out.chunk(2)
        guided = classifier_free_guidance(d_cond, d_uncond, self.scale)
        if self.rescale:
            space = self.rescale_space
            g = space.from_x0(guided, x, sigma)
            c = space.from_x0(d_cond, x, sigma)
            guided = space.to_x0(rescale_guidance(g, c, self.rescale), x, sigma)
        if not bool(active.all()):
            guided = torch.where(append_dims(active, x.ndim), guided, d_cond)
        return guided


class DynamicThresholding:
    """Dynamic thresholding of the x0 estimate (Saharia et al. 2022, Sec. 2.3); meant for
    pixel-space models, whose x0 has a known ``value_range``."""

    def __init__(
        self,
        denoise: DenoiseFn,
        percentile: float = 0.995,  # quantile of |x0| per item
        value_range: tuple[float, float] = (-1.0, 1.0),  # the data's value range
    ) -> None:
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"dynamic thresholding percentile must lie in (0, 1], got {percentile}")
        self.denoise = denoise
        self.percentile = float(percentile)
        self.value_range = (float(value_range[0]), float(value_range[1]))

    def __repr__(self) -> str:
        return f"DynamicThresholding(percentile={self.percentile}, value_range={self.value_range})"

    def __call__(self, x: torch.Tensor, sigma: Any, **extra: Any) -> torch.Tensor:
        """Thresholded x0 estimate."""
        return dynamic_threshold(self.denoise(x, sigma, **extra), self.percentile, self.value_range)

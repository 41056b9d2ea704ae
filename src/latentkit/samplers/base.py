"""Shared machinery of the built-in samplers (all in sigma space, k-diffusion convention).

Every sampler integrates the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, Eq. 3 with ``s(t) = 1``, ``sigma(t) = t``) or one of its SDE
counterparts, seeing the model only through ``denoise(x, sigma, **extra_args) -> x0``.
Scalar coefficients are computed in float64 from the grid (``sigmas.tolist()`` once), so the
loop never synchronises with an accelerator.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch

from latentkit.errors import ShapeError
from latentkit.interfaces import DenoiseFn, Sampler, SamplerCallback
from latentkit.random import Generators

__all__ = ["SigmaSampler", "ancestral_step", "to_d"]


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The PF-ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, Eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step ``sigma_from -> sigma_to`` into a deterministic step to ``sigma_down`` and
    fresh noise of std ``sigma_up`` (k-diffusion ``get_ancestral_step``): with ``eta = 1``,
    ``sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2`` is DDPM's posterior
    variance (Ho et al. 2020, Eq. 7) and ``eta`` scales it as DDIM's eta (Song et al. 2021,
    Eq. 16); ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``."""
    if eta == 0.0 or sigma_to == 0.0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


class SigmaSampler(Sampler):
    """Base class of the built-in samplers: checks the inputs, then runs :meth:`run`.

    ``sigmas`` must be a 1-D, non-increasing, non-negative tensor of at least two levels in
    which only the last may be 0 (the contract asks for a final 0; a grid that stops above 0,
    as in partial img2img, is also integrated, and :meth:`model_calls` then counts one call
    more for the samplers that treat the final step to 0 specially).
    """

    #: One line naming the algorithm and its paper.
    algorithm: str = ""

    def sample(
        self,
        denoise: DenoiseFn,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        extra_args: Mapping[str, Any] | None = None,
        callback: SamplerCallback | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Integrate from ``sigmas[0]`` to ``sigmas[-1]``; see :class:`~latentkit.interfaces.Sampler`."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise ShapeError(f"{name}.sample: x must be a floating tensor (B, ...), got {x!r:.80}")
        sig = torch.as_tensor(sigmas)
        if sig.ndim != 1 or sig.numel() < 2:
            raise ShapeError(
                f"{name}.sample: sigmas must be a 1-D tensor of at least 2 noise levels "
                f"(steps + 1), got shape {tuple(sig.shape)}"
            )
        levels = [float(s) for s in sig.detach().cpu().double().tolist()]
        if any(not math.isfinite(s) or s < 0 for s in levels):
            raise ValueError(f"{name}.sample: sigmas must be finite and >= 0, got {levels}")
        if any(b > a for a, b in itertools.pairwise(levels)) or 0.0 in levels[:-1]:
            raise ValueError(
                f"{name}.sample: sigmas must decrease and only the last may be 0, got {levels}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = list(generator)
            if len(generator) != x.shape[0]:
                raise ShapeError(
                    f"{name}.sample: expected one generator per batch item ({x.shape[0]}), "
                    f"got {len(generator)}"
                )
        args = dict(extra_args or {})
        batch = x.shape[0]

        def model(x_in: torch.Tensor, sigma: float) -> torch.Tensor:
            s_in = x_in.new_full((batch,), sigma)
            return denoise(x_in, s_in, **args)

        return self.run(model, x, levels, callback=callback, generator=generator)

    @abc.abstractmethod
    def run(
        self,
        model: Any,
        x: torch.Tensor,
        sigmas: list[float],
        *,
        callback: SamplerCallback | None,
        generator: Generators,
    ) -> torch.Tensor:
        """The sampler loop on checked inputs: ``model(x, sigma: float) -> x0`` and ``sigmas``
        as Python floats."""

    @staticmethod
    def report(
        callback: SamplerCallback | None,
        i: int,
        x: torch.Tensor,
        sigma: float,
        sigma_next: float,
        denoised: torch.Tensor,
    ) -> None:
        """Call ``callback`` with ``i, x, sigma, sigma_next, denoised`` (sigmas as floats)."""
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    def options(self) -> dict[str, Any]:
        """The constructor options of this sampler (for ``repr`` and logging)."""
        return {}

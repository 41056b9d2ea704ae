"""The continuous EDM schedule (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models").

Sampling grid (Eq. 5): ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
sigma_max^(1/rho)))^rho`` with ``sigma_min = 0.002``, ``sigma_max = 80``, ``rho = 7``;
training noise levels are log-normal, ``ln sigma ~ N(P_mean, P_std^2)`` with ``P_mean = -1.2``,
``P_std = 1.2`` (Table 1); the backbone's noise input is ``c_noise = ln(sigma) / 4``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from latentkit.interfaces import Schedule
from latentkit.random import Generators, randn
from latentkit.schedules.spacing import sigmas_exponential, sigmas_karras, sigmas_polyexponential

__all__ = ["EDMSchedule"]


class EDMSchedule(Schedule):
    """Continuous noise levels of EDM (Karras et al. 2022, Table 1): Karras grid for sampling,
    log-normal sigma for training, ``t = ln(sigma) / 4``."""

    #: The spacings :meth:`sigmas` accepts (EDM has no training timesteps to space).
    spacings: ClassVar[tuple[str, ...]] = ("karras", "exponential", "polyexponential")

    def __init__(
        self,
        sigma_min: float = 0.002,   # smallest sampling noise level
        sigma_max: float = 80.0,    # largest sampling noise level
        sigma_data: float = 0.5,    # data standard deviation (EDM preconditioning)
        rho: float = 7.0,           # karras grid exponent
        p_mean: float = -1.2,       # mean of ln(sigma) during training
        p_std: float = 1.2,         # std of ln(sigma) during training
        *,
        spacing: str = "karras",    # default spacing of sigmas(steps)
    ) -> None:
        if not 0.0 < float(sigma_min) < float(sigma_max) < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        if float(sigma_data) <= 0 or float(p_std) <= 0 or float(rho) <= 0:
            raise ValueError("sigma_data, p_std and rho must be positive")
        if spacing not in self.spacings:
            raise ValueError(f"EDMSchedule: unknown spacing {spacing!r}; expected one of {list(self.spacings)}")
        self._sigma_min = float(sigma_min)
        self._sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self.rho = float(rho)
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)
        self.spacing = spacing

    def __repr__(self) -> str:
        return (
            f"EDMSchedule(sigma_min={self._sigma_min}, sigma_max={self._sigma_max}, "
            f"sigma_data={self.sigma_data}, rho={self.rho})"
        )

    @property
    def sigma_min(self) -> float:
        """Smallest sampling noise level."""
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        """Largest sampling noise level."""
        return self._sigma_max

    def sigmas(
        self,
        steps: int,
        spacing: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        rho: float | None = None,
    ) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels ending in 0: ``karras`` (Eq. 5, the default),
        ``exponential`` (uniform in log sigma) or ``polyexponential`` (k-diffusion)."""
        spacing = self.spacing if spacing is None else spacing
        if spacing not in self.spacings:
            raise ValueError(f"EDMSchedule: unknown spacing {spacing!r}; expected one of {list(self.spacings)}")
        if spacing == "karras":
            out = sigmas_karras(steps, self._sigma_min, self._sigma_max, self.rho if rho is None else rho)
        elif spacing == "exponential":
            out = sigmas_exponential(steps, self._sigma_min, self._sigma_max)
        else:
            out = sigmas_polyexponential(steps, self._sigma_min, self._sigma_max, 1.0 if rho is None else rho)
        return out.to(device=device, dtype=dtype)

    def sample_training_sigmas(
        self, batch_size: int, generator: Generators = None, *, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """``sigma = exp(P_mean + P_std * n)``, ``n ~ N(0, 1)`` (Karras et al. 2022, Table 1),
        float32 (B,), drawn per item when ``generator`` is a list."""
        n = randn((int(batch_size),), generator, device=device, dtype=torch.float32)
        return (self.p_mean + self.p_std * n).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """``c_noise = ln(sigma) / 4`` (Karras et al. 2022, Table 1)."""
        sigma = torch.as_tensor(sigma)
        if not sigma.is_floating_point():
            sigma = sigma.float()
        return 0.25 * sigma.log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma = exp(4 t)``, the inverse of :meth:`sigma_to_t`."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.float()
        return (4.0 * t).exp()

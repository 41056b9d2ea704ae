"""Closed-form reference: data drawn from a per-channel Gaussian ``N(mu, s^2)``.

For ``x_sigma = x0 + sigma * eps`` (the EDM / k-diffusion convention) everything is known in
closed form (Karras et al. 2022, Eq. 3 and App. B.3):

* the marginal at noise level sigma is ``N(mu, s^2 + sigma^2)``;
* the exact denoiser is ``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) * (x - mu)``;
* the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` has the solution
  ``x(sigma) = mu + (x(sigma_0) - mu) * sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2))``.

Samplers are checked against these: deterministic ones must converge to :meth:`ode_solution`,
stochastic ones must produce samples with mean ``mu`` and standard deviation ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["GaussianData"]


class GaussianData:
    """Per-channel Gaussian data ``N(mu_c, s_c^2)`` with its exact denoiser and ODE solution.

    ``mean`` and ``std`` are one value per channel (or scalars, for one channel). Counts the
    calls to :meth:`denoise` in ``calls``.
    """

    def __init__(self, mean: Sequence[float] | float = 0.5, std: Sequence[float] | float = 0.8) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean and std need one value per channel, got {self.mean.shape} and {self.std.shape}")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")
        self.calls = 0

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.mean.numel())

    def _bcast(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.to(device=x.device, dtype=x.dtype).view(1, -1, *([1] * (x.ndim - 2)))

    @staticmethod
    def _sigma(sigma: Any, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        return sigma.reshape(-1, *([1] * (x.ndim - 1)))

    def denoise(self, x: torch.Tensor, sigma: Any, **extra_args: Any) -> torch.Tensor:
        """The exact minimum-MSE denoiser ``E[x0 | x_sigma = x]``."""
        self.calls += 1
        mu, s2 = self._bcast(self.mean, x), self._bcast(self.std, x) ** 2
        sig = self._sigma(sigma, x)
        return mu + s2 / (s2 + sig**2) * (x - mu)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float = 0.0) -> torch.Tensor:
        """Exact probability-flow ODE solution from ``x`` at ``sigma_from`` to ``sigma_to``."""
        mu, s2 = self._bcast(self.mean, x), self._bcast(self.std, x) ** 2
        return mu + (x - mu) * torch.sqrt((s2 + sigma_to**2) / (s2 + sigma_from**2))

    def sample(self, shape: Sequence[int], sigma: float = 0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Draw from the marginal ``N(mu, s^2 + sigma^2)``; ``shape`` is (B, C, *spatial)."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype)
        mu, s2 = self._bcast(self.mean, z), self._bcast(self.std, z) ** 2
        return mu + torch.sqrt(s2 + sigma**2) * z

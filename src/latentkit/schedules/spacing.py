"""Sampling noise-level grids that depend only on ``sigma_min`` and ``sigma_max``.

These are the k-diffusion grids (``k_diffusion.sampling.get_sigmas_*``), written from their
formulas; every function returns ``n + 1`` decreasing noise levels, the last one 0:

* ``karras``: ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
  (Karras et al. 2022, Eq. 5; ``rho = 7``).
* ``exponential``: uniform in ``log sigma`` from ``sigma_max`` to ``sigma_min``
  (the "log-linear" grid, equal steps in DPM-Solver's ``lambda``; Lu et al. 2022).
* ``polyexponential``: ``sigma_i = exp(r_i^rho (log sigma_max - log sigma_min) + log sigma_min)``
  with ``r_i = 1 - i/(n-1)``; ``rho = 1`` is ``exponential``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "append_zero",
    "sigmas_exponential",
    "sigmas_karras",
    "sigmas_polyexponential",
]


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` with a final 0 appended (the sampler's last step goes to the data)."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) < 1:
        raise ValueError(f"the number of steps must be >= 1, got {n}")
    if not 0.0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def _ramp(n: int, device: str | torch.device) -> torch.Tensor:
    # linspace(0, 1, 1) is [0.]: a one-step grid starts at sigma_max.
    return torch.linspace(0.0, 1.0, int(n), dtype=torch.float64, device=device)


def sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, *, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Karras et al. (2022) noise levels, Eq. 5: ``n`` levels interpolated in ``sigma^(1/rho)``,
    then 0. Float64, shape (n + 1,)."""
    _check(n, sigma_min, sigma_max)
    ramp = _ramp(n, device)
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, *, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``n`` noise levels uniform in ``log sigma`` (k-diffusion's ``get_sigmas_exponential``),
    then 0. Float64, shape (n + 1,)."""
    _check(n, sigma_min, sigma_max)
    ramp = _ramp(n, device)
    log_sigmas = math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))
    return append_zero(log_sigmas.exp())


def sigmas_polyexponential(
    n: int, sigma_min: float, sigma_max: float, rho: float = 1.0, *, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_polyexponential``:
    ``sigma_i = exp((1 - i/(n-1))^rho (log sigma_max - log sigma_min) + log sigma_min)``, then 0.
    Float64, shape (n + 1,)."""
    _check(n, sigma_min, sigma_max)
    ramp = (1.0 - _ramp(n, device)) ** rho
    log_sigmas = ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)
    return append_zero(log_sigmas.exp())

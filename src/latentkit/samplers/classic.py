"""The discrete-time samplers of the DDPM line, written in sigma space: ``ddpm``, ``ddim``,
``plms``, and latent consistency models' ``lcm``.

Each step reads the VP view of its two noise levels, ``alpha_bar = 1 / (1 + sigma^2)``, and the
VP variable ``z = sqrt(alpha_bar) x`` (so ``z = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``
exactly when ``x = x0 + sigma eps``), applies the paper's update to ``z`` with ``x0 = D(x,
sigma)`` and ``eps = (x - x0) / sigma``, and maps back with ``x = z / sqrt(alpha_bar)``. They
therefore run on any sigma grid, discrete schedule or not.

Equivalences (exact, checked by the tests):

* DDIM with ``eta = 0`` is Euler's method on the PF ODE in ``(sigma, x = z / sqrt(alpha_bar))``
  (Karras et al. 2022, Sec. 3 and App. B.2; Song et al. 2021, Eq. 14): the update
  ``z' = sqrt(a') x0 + sqrt(1 - a') eps`` divided by ``sqrt(a')`` is ``x' = x0 + sigma' eps =
  x + (sigma' - sigma) (x - x0) / sigma``.
* DDIM with ``eta`` equals ``euler_ancestral`` with the same ``eta``: DDIM's ``sigma_t(eta)``
  (Song et al. 2021, Eq. 16) divided by ``sqrt(a')`` is k-diffusion's ``sigma_up``.
* DDPM with the posterior variance ``beta_tilde`` (Ho et al. 2020, Eq. 7) equals DDIM with
  ``eta = 1`` and hence ``euler_ancestral``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from latentkit.interfaces import SamplerCallback
from latentkit.random import Generators, randn_like
from latentkit.samplers.base import SigmaSampler

__all__ = ["DDIMSampler", "DDPMSampler", "LCMSampler", "PLMSSampler"]


def _alpha_bar(sigma: float) -> float:
    return 1.0 / (1.0 + sigma * sigma)


class DDPMSampler(SigmaSampler):
    """DDPM ancestral sampling from the posterior q(x_{t-1} | x_t, x0) (Ho et al. 2020, Eq. 6-7), in sigma space."""

    algorithm = "DDPM ancestral sampling (Ho et al. 2020, Eq. 6-7)"
    stochastic = True

    def __init__(self, variance_type: str = "fixed_small") -> None:
        if variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(
                f"DDPMSampler: variance_type must be 'fixed_small' (beta_tilde) or 'fixed_large' "
                f"(beta), got {variance_type!r}"
            )
        self.variance_type = variance_type

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"variance_type": self.variance_type}

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """``z' = mu_tilde(z, x0) + sqrt(var) n`` with ``alpha = a / a'`` the step's alpha."""
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            self.report(callback, i, x, sigma, sigma_next, denoised)
            a, a_next = _alpha_bar(sigma), _alpha_bar(sigma_next)
            alpha = a / a_next
            beta = 1.0 - alpha
            z = math.sqrt(a) * x
            # Posterior mean, Ho et al. (2020) Eq. 7.
            z = (math.sqrt(a_next) * beta / (1 - a)) * denoised + (math.sqrt(alpha) * (1 - a_next) / (1 - a)) * z
            if sigma_next > 0:
                var = (1 - a_next) / (1 - a) * beta if self.variance_type == "fixed_small" else beta
                z = z + math.sqrt(var) * randn_like(x, generator)
            x = z / math.sqrt(a_next)
        return x


class DDIMSampler(SigmaSampler):
    """DDIM (Song et al. 2021, Eq. 12 with sigma_t(eta) of Eq. 16), in sigma space."""

    algorithm = "DDIM (Song et al. 2021, Eq. 12/16)"
    order = 1  # at eta = 0, where it is Euler's method

    def __init__(self, eta: float = 0.0) -> None:
        if float(eta) < 0:
            raise ValueError(f"DDIMSampler: eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0  # type: ignore[misc]

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"eta": self.eta}

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """``z' = sqrt(a') x0 + sqrt(1 - a' - c^2) eps + c n``, ``c = eta sqrt((1-a')/(1-a)) sqrt(1 - a/a')``."""
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            self.report(callback, i, x, sigma, sigma_next, denoised)
            a, a_next = _alpha_bar(sigma), _alpha_bar(sigma_next)
            eps = (x - denoised) / sigma
            c = self.eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
            z = math.sqrt(a_next) * denoised + math.sqrt(max(1 - a_next - c * c, 0.0)) * eps
            if c > 0 and sigma_next > 0:
                z = z + c * randn_like(x, generator)
            x = z / math.sqrt(a_next)
        return x


class PLMSSampler(SigmaSampler):
    """Pseudo linear multistep (PLMS, Liu et al. 2022 "Pseudo Numerical Methods", Eq. 12), as in the LDM repository."""

    algorithm = "PLMS / PNDM pseudo linear multistep (Liu et al. 2022)"
    order = 2  # measured: fixed Adams-Bashforth weights on a non-uniform grid

    def model_calls(self, steps: int) -> int:
        """One call per step plus one for the first (pseudo improved Euler) step."""
        return int(steps) + 1 if int(steps) > 1 else int(steps)

    @staticmethod
    def _transfer(x: torch.Tensor, sigma: float, sigma_next: float, eps: torch.Tensor) -> torch.Tensor:
        # DDIM's transfer with noise estimate eps (Liu et al. 2022, Eq. 11), divided by
        # sqrt(a'): z' = sqrt(a') (z - sqrt(1-a) eps) / sqrt(a) + sqrt(1-a') eps  <=>
        # x' = x + (sigma' - sigma) eps.
        return x + (sigma_next - sigma) * eps

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """Adams-Bashforth weights on eps (orders 1..4 as history grows), first step by
        pseudo improved Euler (LDM's ``PLMSSampler``)."""
        old_eps: list[torch.Tensor] = []
        for i in range(len(sigmas) - 1):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            self.report(callback, i, x, sigma, sigma_next, denoised)
            e_t = (x - denoised) / sigma
            if not old_eps:
                if sigma_next > 0:
                    x_pred = self._transfer(x, sigma, sigma_next, e_t)
                    e_next = (x_pred - model(x_pred, sigma_next)) / sigma_next
                    e_prime = (e_t + e_next) / 2
                else:
                    e_prime = e_t
            elif len(old_eps) == 1:
                e_prime = (3 * e_t - old_eps[-1]) / 2
            elif len(old_eps) == 2:
                e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
            else:
                e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
            x = self._transfer(x, sigma, sigma_next, e_prime)
            old_eps.append(e_t)
            if len(old_eps) > 3:
                old_eps.pop(0)
        return x


class LCMSampler(SigmaSampler):
    """Multistep latent-consistency sampling (Luo et al. 2023, Alg. 1; Song et al. 2023, Alg. 1): denoise, re-noise to the next sigma."""

    algorithm = "Multistep consistency sampling (Song et al. 2023; Luo et al. 2023 LCM)"
    stochastic = True
    #: ``denoise`` must be a consistency function (the PF-ODE end point of ``x``), as an LCM
    #: gives. With a plain minimum-MSE denoiser (``E[x0 | x]``) every step shrinks the sample
    #: towards the mean and the output variance is too small.
    requires_consistency_model: ClassVar[bool] = True

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """``x = D(x, sigma)``, then ``x += sigma_next n`` unless ``sigma_next = 0``."""
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            x = denoised
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * randn_like(x, generator)
        return x

"""Karras et al. (2022) samplers and their ancestral / multistep relatives (k-diffusion's
``sample_euler``, ``sample_euler_ancestral``, ``sample_heun``, ``sample_dpm_2``,
``sample_dpm_2_ancestral``, ``sample_lms``), written from the papers' update rules.

The deterministic ones (``euler``, ``heun``, ``dpm2``) accept Karras et al.'s stochastic
"churn" (Alg. 2): with ``s_churn > 0`` each step first raises the noise level from ``sigma``
to ``sigma_hat = sigma (1 + gamma)``, ``gamma = min(s_churn / steps, sqrt(2) - 1)`` for
``s_tmin <= sigma <= s_tmax``, adding noise of std ``s_noise sqrt(sigma_hat^2 - sigma^2)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from latentkit.interfaces import SamplerCallback
from latentkit.random import Generators, randn_like
from latentkit.samplers.base import SigmaSampler, ancestral_step, to_d

__all__ = [
    "DPM2AncestralSampler",
    "DPM2Sampler",
    "EulerAncestralRFSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "LMSSampler",
    "flow_ancestral_step",
    "linear_multistep_coeff",
]


class _ChurnMixin(SigmaSampler):
    """Karras et al. (2022), Alg. 2 lines 4-6: optional noise increase before each step."""

    def __init__(
        self,
        s_churn: float = 0.0,        # total churn; 0 = deterministic
        s_tmin: float = 0.0,         # churn only for sigma >= s_tmin
        s_tmax: float = math.inf,    # ... and sigma <= s_tmax
        s_noise: float = 1.0,        # std multiplier of the added noise
    ) -> None:
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = float(s_churn), float(s_tmin), float(s_tmax), float(s_noise)
        self.stochastic = self.s_churn > 0  # type: ignore[misc]

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"s_churn": self.s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax, "s_noise": self.s_noise}

    def churn(self, x: torch.Tensor, sigma: float, steps: int, generator: Generators) -> tuple[torch.Tensor, float]:
        """Return ``(x_hat, sigma_hat)`` after Alg. 2's noise increase (no-op without churn)."""
        gamma = min(self.s_churn / steps, 2**0.5 - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0
        if gamma <= 0.0:
            return x, sigma
        sigma_hat = sigma * (gamma + 1.0)
        x = x + randn_like(x, generator) * self.s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        return x, sigma_hat


class EulerSampler(_ChurnMixin):
    """Euler's method on the PF ODE (Karras et al. 2022, Alg. 2 without the 2nd-order correction)."""

    algorithm = "Euler method on the probability-flow ODE (Karras et al. 2022, Alg. 2)"
    order = 1

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """Euler steps ``x += (sigma_next - sigma) (x - D) / sigma``."""
        steps = len(sigmas) - 1
        for i in range(steps):
            x, sigma_hat = self.churn(x, sigmas[i], steps, generator)
            denoised = model(x, sigma_hat)
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        return x


class HeunSampler(_ChurnMixin):
    """Heun's 2nd-order method on the PF ODE (Karras et al. 2022, Alg. 1/2); Euler for the last step to 0."""

    algorithm = "Heun's 2nd-order method (Karras et al. 2022, Alg. 2)"
    order = 2

    def model_calls(self, steps: int) -> int:
        """Two calls per step, one for the final Euler step to sigma = 0."""
        return max(2 * int(steps) - 1, 1)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """Euler predictor, trapezoidal corrector (Alg. 2 lines 7-11)."""
        steps = len(sigmas) - 1
        for i in range(steps):
            x, sigma_hat = self.churn(x, sigmas[i], steps, generator)
            denoised = model(x, sigma_hat)
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            d = to_d(x, sigma_hat, denoised)
            dt = sigmas[i + 1] - sigma_hat
            if sigmas[i + 1] == 0.0:
                x = x + d * dt
                continue
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) * (0.5 * dt)
        return x


class DPM2Sampler(_ChurnMixin):
    """DPM-Solver-2 midpoint step in log sigma (Lu et al. 2022, Alg. 1; Karras et al. 2022, App. D.2 form)."""

    algorithm = "DPM-Solver-2 (Lu et al. 2022), midpoint in log sigma, as in k-diffusion"
    order = 2

    def model_calls(self, steps: int) -> int:
        """Two calls per step, one for the final Euler step to sigma = 0."""
        return max(2 * int(steps) - 1, 1)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """Euler to the geometric midpoint, then the full step with the midpoint's slope."""
        steps = len(sigmas) - 1
        for i in range(steps):
            x, sigma_hat = self.churn(x, sigmas[i], steps, generator)
            denoised = model(x, sigma_hat)
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            d = to_d(x, sigma_hat, denoised)
            if sigmas[i + 1] == 0.0:
                x = x + d * (sigmas[i + 1] - sigma_hat)
                continue
            sigma_mid = math.sqrt(sigma_hat * sigmas[i + 1])
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
        return x


class _AncestralMixin(SigmaSampler):
    """``eta`` and ``s_noise`` of the ancestral samplers (k-diffusion defaults 1, 1)."""

    stochastic = True

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0) -> None:
        self.eta, self.s_noise = float(eta), float(s_noise)
        self.stochastic = self.eta > 0  # type: ignore[misc]

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"eta": self.eta, "s_noise": self.s_noise}

    def split(self, sigma_from: float, sigma_to: float) -> tuple[float, float]:
        """``(sigma_down, sigma_up)`` of a step: the DDPM posterior split (:func:`ancestral_step`)."""
        return ancestral_step(sigma_from, sigma_to, self.eta)

    def infinity_split(self, sigma_next: float) -> tuple[float, float]:
        """:meth:`split` from ``sigma = inf``."""
        return self.split(math.inf, sigma_next)


def flow_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """The rectified-flow ancestral split: the deterministic part of the step ends at the
    flow time ``t_down = t_to (1 + (t_to / t_from - 1) eta)`` (linear in ``t`` rather than
    DDPM's posterior; ComfyUI's ``euler_ancestral_RF``), and fresh noise of std ``sigma_up =
    sqrt(sigma_to^2 - sigma_down^2)`` restores the marginal at ``sigma_to``; with ``t = sigma /
    (1 + sigma)``. ``eta = 0`` is the deterministic step."""
    if eta == 0.0 or sigma_to == 0.0:
        return sigma_to, 0.0
    t_from = 1.0 if math.isinf(sigma_from) else sigma_from / (1.0 + sigma_from)
    t_to = sigma_to / (1.0 + sigma_to)
    t_down = max(t_to * (1.0 + (t_to / t_from - 1.0) * eta), 0.0)
    sigma_down = t_down / (1.0 - t_down)
    return sigma_down, math.sqrt(max(sigma_to**2 - sigma_down**2, 0.0))


class EulerAncestralSampler(_AncestralMixin):
    """Ancestral Euler: Euler to sigma_down, then fresh noise of std sigma_up (k-diffusion; Ho et al. 2020 posterior)."""

    algorithm = "Euler ancestral (k-diffusion; DDPM posterior noise, Ho et al. 2020)"
    order = 1  # at eta = 0

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """Euler step to ``sigma_down`` plus ``sigma_up`` noise (:func:`ancestral_step`)."""
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            sigma_down, sigma_up = self.split(sigmas[i], sigmas[i + 1])
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            if sigmas[i + 1] > 0 and sigma_up > 0:
                x = x + randn_like(x, generator) * (self.s_noise * sigma_up)
        return x


class EulerAncestralRFSampler(EulerAncestralSampler):
    """Ancestral Euler for rectified flow (Liu et al. 2023; Esser et al. 2024): the down-step
    linear in the flow time ``t`` (:func:`flow_ancestral_step`), otherwise ``euler_ancestral``. Works on any
    model (``t = sigma / (1 + sigma)`` is defined for every sigma) and keeps the marginal
    variance at every level, like every ancestral split."""

    algorithm = "Euler ancestral for rectified flow (down-step linear in t; ComfyUI euler_ancestral_RF)"

    def split(self, sigma_from: float, sigma_to: float) -> tuple[float, float]:
        """:func:`flow_ancestral_step`."""
        return flow_ancestral_step(sigma_from, sigma_to, self.eta)


class DPM2AncestralSampler(_AncestralMixin):
    """Ancestral DPM-Solver-2 (Lu et al. 2022 step to sigma_down, then sigma_up noise; k-diffusion)."""

    algorithm = "DPM-Solver-2 ancestral (Lu et al. 2022; k-diffusion)"
    order = 2  # at eta = 0

    def model_calls(self, steps: int) -> int:
        """Two calls per step, one for the final Euler step to sigma = 0."""
        return max(2 * int(steps) - 1, 1)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """DPM-Solver-2 step to ``sigma_down``, then ``sigma_up`` noise."""
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], self.eta)
            d = to_d(x, sigmas[i], denoised)
            if sigma_down == 0.0:
                x = x + d * (sigma_down - sigmas[i])
                continue
            sigma_mid = math.sqrt(sigmas[i] * sigma_down)
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            if sigma_up > 0:
                x = x + randn_like(x, generator) * (self.s_noise * sigma_up)
        return x


def linear_multistep_coeff(order: int, sigmas: list[float], i: int, j: int) -> float:
    """Adams-Bashforth weight of the slope at ``sigmas[i - j]`` for the step ``sigmas[i] ->
    sigmas[i + 1]``: the integral over that step of the Lagrange basis polynomial through
    ``sigmas[i], ..., sigmas[i - order + 1]``, by Gauss-Legendre quadrature with ``order``
    nodes (exact for the polynomial's degree ``order - 1``)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    nodes = [sigmas[i - k] for k in range(order)]
    lo, hi = sigmas[i], sigmas[i + 1]
    gl_x, gl_w = np.polynomial.legendre.leggauss(order)
    total = 0.0
    for u, w in zip(gl_x.tolist(), gl_w.tolist()):
        tau = lo + (hi - lo) * (u + 1.0) / 2.0
        basis = 1.0
        for k in range(order):
            if k != j:
                basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
        total += w * basis
    return total * (hi - lo) / 2.0


class LMSSampler(SigmaSampler):
    """Variable-step Adams-Bashforth (Bashforth & Adams 1883) on the PF ODE of Karras et al. 2022, as k-diffusion's ``sample_lms``."""

    algorithm = "Linear multistep / Adams-Bashforth in sigma (k-diffusion sample_lms)"

    def __init__(self, order: int = 4) -> None:
        if int(order) < 1:
            raise ValueError(f"LMSSampler: order must be >= 1, got {order}")
        self.multistep_order = int(order)  # Adams-Bashforth order once the history is full
        # Convergence order (Sampler.order): the first step is Euler's (local error O(h^2)),
        # which caps the global order at 2; orders 3-4 measure ~2.9-3.8 up to 256 steps and
        # fall to 2 asymptotically (2.04 from 2048 to 4096 steps for order 4).
        self.order = min(self.multistep_order, 2)

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"order": self.multistep_order}

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """``x += sum_j c_j d_{i-j}`` with the order rising from 1 as slopes accumulate."""
        ds: list[torch.Tensor] = []
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            ds.append(to_d(x, sigmas[i], denoised))
            if len(ds) > self.multistep_order:
                ds.pop(0)
            cur_order = min(i + 1, self.multistep_order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))  # type: ignore[misc]
        return x

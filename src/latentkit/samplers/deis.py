"""DEIS and iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
Integrator", ICLR 2023), in sigma space.

DEIS freezes the linear part of the probability-flow ODE exactly (an exponential integrator)
and fits the model output with a Lagrange polynomial through the last ``order`` evaluations,
integrated exactly over the step: the time-based Adams-Bashforth multistep (tAB-DEIS). Here
the ODE is written in one of two variables (``prediction``):

* ``"data"`` (default): with ``lambda = -log sigma``, ``dx/dlambda = D - x``, whose exact
  solution over a step of size ``h`` is ``x_next = e^{-h} x + int_0^h e^{u - h} D(lambda +
  u) du``; the polynomial is that of ``D`` in ``lambda``, and the weights are
  ``int_0^h e^{u - h} u^m du = m! h^{m+1} phi_{m+1}(-h)``.
* ``"eps"``: ``dx/dsigma = eps = (x - D) / sigma`` with no linear part; the polynomial is that
  of ``eps`` in ``log sigma``, integrated exactly in sigma: the "log-rho" DEIS of diffusers'
  ``DEISMultistepScheduler``.

Both are first order on the first step (DDIM), then orders 2, 3 as the history fills.

iPNDM (Zhang & Chen 2023, Sec. 4 / App.) is PNDM's linear multistep without its Runge-Kutta
warm-up: Adams-Bashforth with the fixed weights of a uniform step on ``dx/dsigma = (x - D) /
sigma`` (k-diffusion's ``sample_ipndm``); ``ipndm_v`` is the variable-step Adams-Bashforth
(the weights integrate the Lagrange basis over each actual step).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from latentkit.interfaces import SamplerCallback
from latentkit.random import Generators
from latentkit.samplers.base import SigmaSampler, lowered_order, to_d
from latentkit.samplers.euler import linear_multistep_coeff

__all__ = ["DEISSampler", "IPNDMSampler", "IPNDMVSampler", "deis_weights", "phi"]


def phi(k: int, z: float) -> float:
    """The exponential-integrator function ``phi_k(z) = sum_n z^n / (n + k)!`` (``phi_0 =
    e^z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``): the series for ``|z| < 1``, where the
    recurrence cancels, the recurrence elsewhere."""
    if abs(z) < 1.0:
        term, total, n = 1.0 / math.factorial(k), 0.0, 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300) or n < 2:
            total += term
            n += 1
            term *= z / (n + k)
        return total
    value = math.exp(z)
    for j in range(k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def deis_weights(nodes: list[float], h: float, prediction: str) -> list[float]:
    """Weights of the Lagrange polynomial through ``nodes`` (offsets of the past evaluations
    from the current one in the polynomial's variable, ``nodes[0] = 0``) integrated over one
    step of size ``h = lambda_next - lambda``.

    ``"data"``: ``int_0^h e^{u - h} l_j(u) du`` for ``u = lambda - lambda_i`` (the nodes are
    ``lambda_{i-k} - lambda_i <= 0``). ``"eps"``: ``int_0^{-h} e^u l_j(u) du`` for ``u = log
    sigma - log sigma_i`` (nodes ``log sigma_{i-k} - log sigma_i >= 0``), to be multiplied by
    ``sigma_i``; as ``int_0^w e^u u^m du = w^{m+1} e^w m! phi_{m+1}(-w)``, ``w = -h``.
    """
    if prediction == "data":
        moments = [math.factorial(m) * h ** (m + 1) * phi(m + 1, -h) for m in range(len(nodes))]
    else:
        moments = [math.factorial(m) * (-h) ** (m + 1) * math.exp(-h) * phi(m + 1, h) for m in range(len(nodes))]
    weights = []
    for j, node in enumerate(nodes):
        others = [n for k, n in enumerate(nodes) if k != j]
        scale = math.prod(node - n for n in others)
        coeffs = np.polynomial.polynomial.polyfromroots(others) if others else np.ones(1)  # l_j * scale, by power
        weights.append(sum(float(c) * mom for c, mom in zip(coeffs, moments)) / scale)
    return weights


class DEISSampler(SigmaSampler):
    """DEIS, time-based Adams-Bashforth multistep exponential integrator (Zhang & Chen 2023, tAB-DEIS).

    ``prediction="data"``: ``x_next = e^{-h} x + sum_j w_j D_{i-j}`` with ``w_j = int_0^h e^{u-h}
    l_j(u) du``, ``l_j`` the Lagrange basis in ``lambda = -log sigma`` through the last ``order``
    evaluations (the exponential-integrator form; order 2 is DPM-Solver++(2M) with diffusers'
    ``solver_type="heun"``, order 3 integrates the quadratic interpolant of ``D`` exactly).
    ``prediction="eps"``: ``x_next = x + sum_j c_j eps_{i-j}`` with ``c_j = int_sigma^sigma_next
    l_j(log rho) drho``, diffusers' ``DEISMultistepScheduler``. The step to 0 is ``x = D``.
    """

    algorithm = "DEIS tAB multistep exponential integrator (Zhang & Chen 2023)"

    def __init__(
        self,
        order: int = 3,                  # Adams-Bashforth order (polynomial degree + 1)
        prediction: str = "data",        # "data": D in lambda; "eps": eps in log sigma (diffusers)
        lower_order_final: bool = True,  # diffusers: below 15 steps the last steps drop to orders 1, 2
        euler_at_final: bool = False,    # the last step is first order
    ) -> None:
        if not 1 <= int(order) <= 3:
            raise ValueError(f"DEISSampler: order must be 1, 2 or 3, got {order}")
        if prediction not in ("data", "eps"):
            raise ValueError(f"DEISSampler: prediction must be 'data' or 'eps', got {prediction!r}")
        self.solver_order, self.prediction = int(order), prediction
        self.lower_order_final, self.euler_at_final = bool(lower_order_final), bool(euler_at_final)
        # Convergence order (Sampler.order): the first-order first step caps the global order
        # at 2; order 3 measures ~3 up to 256 Karras steps.
        self.order = min(self.solver_order, 2)

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"order": self.solver_order, "prediction": self.prediction,
                "lower_order_final": self.lower_order_final, "euler_at_final": self.euler_at_final}

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """Orders 1..order as the history fills, lowered at the end by :func:`lowered_order`."""
        steps = len(sigmas) - 1
        lams: list[float] = []
        outs: list[torch.Tensor] = []  # D or eps, newest last
        for i in range(steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            denoised = model(x, sigma)
            self.report(callback, i, x, sigma, sigma_next, denoised)
            if sigma_next == 0.0:
                x = denoised
                continue
            out = denoised if self.prediction == "data" else to_d(x, sigma, denoised)
            lams, outs = [*lams, -math.log(sigma)][-self.solver_order:], [*outs, out][-self.solver_order:]
            order = lowered_order(len(outs), i, steps, lower_order_final=self.lower_order_final,
                                  euler_at_final=self.euler_at_final)
            h = -math.log(sigma_next) - lams[-1]
            if self.prediction == "data":
                nodes = [lams[-1 - k] - lams[-1] for k in range(order)]
                weights = deis_weights(nodes, h, "data")
                x = math.exp(-h) * x + sum(w * outs[-1 - k] for k, w in enumerate(weights))  # type: ignore[misc]
            else:
                nodes = [lams[-1] - lams[-1 - k] for k in range(order)]  # log sigma offsets
                weights = deis_weights(nodes, h, "eps")
                x = x + sigma * sum(w * outs[-1 - k] for k, w in enumerate(weights))  # type: ignore[misc]
        return x


# Adams-Bashforth weights of a uniform step, newest slope first (Bashforth & Adams 1883).
_AB_WEIGHTS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


class IPNDMSampler(SigmaSampler):
    """Improved PNDM, fixed-weight Adams-Bashforth on the PF ODE (Zhang & Chen 2023, iPNDM; k-diffusion ``sample_ipndm``).

    ``x_next = x + (sigma_next - sigma) sum_j b_j d_{i-j}`` with ``d = (x - D) / sigma`` and the
    uniform-step weights 1, (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24 as the history
    fills (an Euler first step instead of PNDM's Runge-Kutta warm-up); the step to 0 is ``x =
    D``. On a non-uniform grid the fixed weights are exact only to second order.
    """

    algorithm = "iPNDM: fixed-weight Adams-Bashforth on the PF ODE (Zhang & Chen 2023)"

    def __init__(self, order: int = 4) -> None:  # the highest Adams-Bashforth order, 1-4
        if not 1 <= int(order) <= 4:
            raise ValueError(f"{type(self).__name__}: order must be 1, 2, 3 or 4, got {order}")
        self.max_order = int(order)
        # Convergence order (Sampler.order): the Euler first step caps the global order at 2
        # (and fixed weights on a non-uniform grid are second order anyway).
        self.order = min(self.max_order, 2)

    def options(self) -> dict[str, Any]:
        """Constructor options."""
        return {"order": self.max_order}

    def model_calls(self, steps: int) -> int:
        """One call per step."""
        return int(steps)

    def weights(self, sigmas: list[float], i: int, order: int) -> list[float]:
        """Weights of ``d_i, d_{i-1}, ...`` for the step ``i``, already multiplied by its size."""
        return [(sigmas[i + 1] - sigmas[i]) * b for b in _AB_WEIGHTS[order - 1]]

    def run(self, model: Any, x: torch.Tensor, sigmas: list[float], *,
            callback: SamplerCallback | None, generator: Generators) -> torch.Tensor:
        """``x += sum_j c_j d_{i-j}``, orders 1..order as slopes accumulate."""
        slopes: list[torch.Tensor] = []
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            self.report(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
            if sigmas[i + 1] == 0.0:
                x = denoised
                continue
            slopes = [*slopes, to_d(x, sigmas[i], denoised)][-self.max_order:]
            weights = self.weights(sigmas, i, len(slopes))
            x = x + sum(w * d for w, d in zip(weights, reversed(slopes)))  # type: ignore[misc]
        return x


class IPNDMVSampler(IPNDMSampler):
    """Variable-step iPNDM: Adams-Bashforth with the weights of the actual steps (Zhang & Chen 2023, iPNDM; variable-step AB).

    The weight of ``d_{i-j}`` integrates the Lagrange basis in sigma through the last
    ``order`` levels over the step (:func:`~latentkit.samplers.euler.linear_multistep_coeff`),
    so the Adams-Bashforth order holds on any grid. This is ``lms`` with the step to 0 taken
    as ``x = D`` (``lms(final_step="denoise")``); ComfyUI's ``ipndm_v`` uses approximate
    variable-step weights for orders 3-4 instead, which agree with these on uniform grids only.
    """

    algorithm = "Variable-step iPNDM / Adams-Bashforth on the PF ODE (Zhang & Chen 2023)"

    def weights(self, sigmas: list[float], i: int, order: int) -> list[float]:
        """The variable-step Adams-Bashforth weights of step ``i``."""
        return [linear_multistep_coeff(order, sigmas, i, j) for j in range(order)]

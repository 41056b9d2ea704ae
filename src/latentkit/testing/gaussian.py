"""Closed-form reference: data drawn from a per-channel Gaussian ``N(mu, s^2)``.

For ``x_sigma = x0 + sigma * eps`` (the EDM / k-diffusion convention) everything is known in
closed form (Karras et al. 2022, Eq. 3 and App. B.3):

* the marginal at noise level sigma is ``N(mu, s^2 + sigma^2)``;
* the exact denoiser is ``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) * (x - mu)``;
* the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` has the solution
  ``x(sigma) = mu + (x(sigma_0) - mu) * sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2))``.

Samplers are checked against these: deterministic ones must converge to :meth:`ode_solution`,
stochastic ones must produce samples with mean ``mu`` and standard deviation ``s``.

:class:`GaussianMixtureData` is the multimodal counterpart: a mixture of Gaussians with diagonal
covariances over a whole latent (C, *spatial), whose exact denoiser is still closed form (the
responsibility-weighted per-component posterior means) while its PF-ODE is nonlinear and has no
closed-form solution (a fine numerical solve gives the reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["GaussianData", "GaussianMixtureData"]


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


class GaussianMixtureData:
    """Data from a Gaussian mixture ``p(x0) = sum_k w_k N(mu_k, diag(s_k^2))`` over one latent.

    ``means`` is (K, *event) (the event shape is that of one latent, e.g. (C, H, W)), ``stds``
    (K, *event) or (K,) (isotropic components), ``weights`` (K,) positive (normalised here). For
    ``x = x0 + sigma * eps`` the marginal is ``sum_k w_k N(mu_k, diag(s_k^2 + sigma^2))`` and the
    exact denoiser (the posterior mean, Bishop 2006, Sec. 9.2; Karras et al. 2022, Eq. 3) is

        D(x, sigma) = sum_k r_k(x, sigma) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)),
        r_k = softmax_k(log w_k + log N(x; mu_k, diag(s_k^2 + sigma^2))),

    computed in float64 with a log-sum-exp. ``sigma = inf`` gives the prior mean. Counts the calls
    to :meth:`denoise` in ``calls``.
    """

    def __init__(self, weights: Sequence[float] | torch.Tensor, means: torch.Tensor | Sequence[Any],
                 stds: torch.Tensor | Sequence[Any]) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        mu = torch.as_tensor(means, dtype=torch.float64)
        std = torch.as_tensor(stds, dtype=torch.float64)
        if mu.ndim < 2 or mu.shape[0] != w.numel():
            raise ValueError(
                f"means must be (K, *event) with K = len(weights) = {w.numel()}, got shape {tuple(mu.shape)}"
            )
        if std.ndim == 1:
            std = std.reshape(-1, *([1] * (mu.ndim - 1))).expand_as(mu)
        if std.shape != mu.shape:
            raise ValueError(f"stds must be (K,) or shaped like means {tuple(mu.shape)}, got {tuple(std.shape)}")
        if bool((w <= 0).any()) or bool((std <= 0).any()):
            raise ValueError("weights and stds must be positive")
        #: Mixture weights (K,), summing to 1, float64.
        self.weights = w / w.sum()
        #: Component means (K, *event), float64.
        self.means = mu
        #: Component standard deviations (K, *event), float64.
        self.stds = std.contiguous()
        self.calls = 0

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one sample, (C, *spatial)."""
        return tuple(self.means.shape[1:])

    @property
    def components(self) -> int:
        """Number of mixture components K."""
        return int(self.weights.numel())

    @property
    def mean(self) -> torch.Tensor:
        """Exact mean of the data, (*event)."""
        return torch.einsum("k,k...->...", self.weights, self.means)

    @property
    def variance(self) -> torch.Tensor:
        """Exact per-element variance of the data, (*event)."""
        second = torch.einsum("k,k...->...", self.weights, self.stds**2 + self.means**2)
        return second - self.mean**2

    @property
    def data_std(self) -> float:
        """``sqrt(mean variance)``: one scale for errors "in data-std units"."""
        return float(self.variance.mean().sqrt())

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return x.to(torch.float64).reshape(x.shape[0], 1, -1)  # (B, 1, D)

    def _sigma2(self, sigma: Any, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        return s.reshape(-1, 1, 1) ** 2  # (B, 1, 1)

    def _log_joint(self, xf: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log w_k + log N(x; mu_k, s_k^2 + sigma^2), s_k^2 + sigma^2)``: (B, K) and (B, K, D)."""
        mu = self.means.to(xf.device).reshape(1, self.components, -1)
        var = self.stds.to(xf.device).reshape(1, self.components, -1) ** 2
        total = var + s2  # (B, K, D)
        log_n = -0.5 * (((xf - mu) ** 2) / total + torch.log(2 * math.pi * total)).sum(-1)
        return self.weights.to(xf.device).log() + log_n, total

    def log_prob(self, x: torch.Tensor, sigma: Any = 0.0) -> torch.Tensor:
        """``log p_sigma(x)`` of the noisy marginal, (B,) float64 (finite sigma only)."""
        xf = self._flat(x)
        log_joint, _ = self._log_joint(xf, self._sigma2(sigma, xf))
        return torch.logsumexp(log_joint, dim=-1)

    def denoise(self, x: torch.Tensor, sigma: Any, **extra_args: Any) -> torch.Tensor:
        """The exact minimum-MSE denoiser ``E[x0 | x0 + sigma eps = x]``, in ``x``'s dtype."""
        self.calls += 1
        xf = self._flat(x)
        s2 = self._sigma2(sigma, xf)
        infinite = torch.isinf(s2)
        s2_finite = torch.where(infinite, torch.ones_like(s2), s2)
        log_joint, total = self._log_joint(xf, s2_finite)
        resp = torch.softmax(log_joint, dim=-1).unsqueeze(-1)  # (B, K, 1)
        mu = self.means.to(xf.device).reshape(1, self.components, -1)
        var = self.stds.to(xf.device).reshape(1, self.components, -1) ** 2
        post = mu + var / total * (xf - mu)  # per-component posterior means (B, K, D)
        out = (resp * post).sum(1)  # (B, D)
        if bool(infinite.any()):  # sigma = inf: nothing is known, the prior mean
            out = torch.where(infinite.reshape(-1, 1), self.mean.to(xf.device).reshape(1, -1), out)
        return out.reshape(x.shape).to(x.dtype)

    def sample(self, batch: int, sigma: float = 0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``batch`` draws from the noisy marginal at ``sigma``, (batch, *event): a component
        index from ``weights``, then ``mu_k + sqrt(s_k^2 + sigma^2) z``."""
        k = torch.multinomial(self.weights, int(batch), replacement=True, generator=generator)
        z = torch.randn((int(batch), *self.event_shape), generator=generator, dtype=torch.float64)
        out = self.means[k] + torch.sqrt(self.stds[k] ** 2 + float(sigma) ** 2) * z
        return out.to(dtype)

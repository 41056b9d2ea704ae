"""GaussianMixtureData's closed-form denoiser against brute force: grid quadrature of the
posterior mean in two dimensions, Tweedie's formula (``D = x + sigma^2 grad log p_sigma``) in a
latent-shaped event, and the moments of its samples."""

from __future__ import annotations

import math

import pytest
import torch

from latentkit.testing.gaussian import GaussianMixtureData

# Three components in 2-D with unequal weights and anisotropic stds; means a few stds apart
# so that the posterior is multimodal at moderate sigma.
MIX2 = GaussianMixtureData(
    weights=[0.5, 0.3, 0.2],
    means=[[-1.0, 0.5], [1.2, -0.4], [0.3, 1.6]],
    stds=[[0.4, 0.3], [0.3, 0.5], [0.6, 0.35]],
)


def _quadrature_posterior_mean(data: GaussianMixtureData, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``E[x0 | x]`` by a Riemann sum over a fine 2-D grid of x0 (spectrally accurate for these
    smooth, fast-decaying integrands), in log space."""
    axis = torch.linspace(-5.0, 5.0, 1001, dtype=torch.float64)
    g0, g1 = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], dim=-1)  # (M, 2)
    log_prior = data.log_prob(grid, 0.0)  # (M,)
    out = []
    for xi in x:
        log_w = log_prior - 0.5 * ((xi - grid) ** 2).sum(-1) / sigma**2
        w = torch.softmax(log_w, dim=0)
        out.append((w.unsqueeze(-1) * grid).sum(0))
    return torch.stack(out)


@pytest.mark.parametrize("sigma", [0.15, 0.6, 2.0])
def test_denoiser_equals_quadrature_posterior_mean(sigma: float) -> None:
    x = torch.tensor([[0.0, 0.0], [-1.3, 0.9], [1.0, -1.0], [0.4, 2.2]], dtype=torch.float64)
    expected = _quadrature_posterior_mean(MIX2, x, sigma)
    torch.testing.assert_close(MIX2.denoise(x, sigma), expected, rtol=0, atol=1e-8)
    # per-item sigmas give the same as one sigma for all
    torch.testing.assert_close(MIX2.denoise(x, torch.full((4,), sigma, dtype=torch.float64)), expected, rtol=0, atol=1e-8)


def test_denoiser_is_tweedie_score_in_a_latent_shaped_event() -> None:
    gen = torch.Generator().manual_seed(3)
    k, event = 4, (4, 2, 2)
    data = GaussianMixtureData(
        weights=[0.4, 0.3, 0.2, 0.1],
        means=torch.randn((k, *event), generator=gen, dtype=torch.float64),
        stds=0.15 + 0.45 * torch.rand((k, *event), generator=gen, dtype=torch.float64),
    )
    for sigma in (0.05, 0.5, 3.0, 14.6):
        x = data.sample(8, sigma=sigma, generator=gen).requires_grad_(True)
        (score,) = torch.autograd.grad(data.log_prob(x, sigma).sum(), x)
        tweedie = x.detach() + sigma**2 * score
        torch.testing.assert_close(data.denoise(x.detach(), sigma), tweedie, rtol=1e-10, atol=1e-10)


def test_limits_dtype_and_errors() -> None:
    x = torch.tensor([[0.7, -0.2], [3.0, 3.0]], dtype=torch.float32)
    assert MIX2.denoise(x, 0.0).dtype == torch.float32
    torch.testing.assert_close(MIX2.denoise(x, 0.0), x)  # no noise: x0 = x
    prior_mean = MIX2.mean.to(torch.float32).expand(2, 2)
    torch.testing.assert_close(MIX2.denoise(x, math.inf), prior_mean)  # pure noise: the prior mean
    torch.testing.assert_close(MIX2.denoise(x, 1e8), prior_mean)
    with pytest.raises(ValueError, match="expected x of shape"):
        MIX2.denoise(torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="means must be"):
        GaussianMixtureData([0.5, 0.5], [[0.0, 1.0]], [1.0, 1.0])


def test_samples_have_the_exact_moments() -> None:
    gen = torch.Generator().manual_seed(0)
    n, sigma = 200_000, 0.5
    x = MIX2.sample(n, sigma=sigma, generator=gen)
    assert x.shape == (n, 2)
    # standard errors: std / sqrt(n) ~ 0.002 for the mean
    torch.testing.assert_close(x.mean(0), MIX2.mean, rtol=0, atol=0.01)
    torch.testing.assert_close(x.var(0), MIX2.variance + sigma**2, rtol=0.02, atol=0)
    assert MIX2.data_std == pytest.approx(float(MIX2.variance.mean().sqrt()))

"""Training objective: weightings against the published formulas, parameterization
invariance, determinism, offset noise."""

from __future__ import annotations

import pytest
import torch

from conftest import LogLinearSchedule, TinyDenoiser
from latentkit.diffusion import (
    PARAMETERIZATIONS,
    DiffusionObjective,
    ParameterizedDenoiser,
    get_loss_weighting,
    get_parameterization,
    offset_noise,
)
from latentkit.interfaces import Denoiser
from latentkit.specs import Conditioning

SNRS = torch.tensor([0.01, 0.5, 1.0, 5.0, 25.0, 1000.0], dtype=torch.float64)
SIGMAS = SNRS.rsqrt()  # SNR = 1 / sigma^2

pytestmark = pytest.mark.usefixtures("single_thread")


def test_min_snr_matches_hang_et_al() -> None:
    """Hang et al. 2023: eps min(SNR, g)/SNR, v min(SNR, g)/(SNR + 1), x0 min(SNR, g)."""
    w = get_loss_weighting("min_snr", gamma=5.0)
    clipped = SNRS.clamp(max=5.0)
    expected = {"eps": clipped / SNRS, "v": clipped / (SNRS + 1), "x0": clipped}
    for name, want in expected.items():
        got = w.target_weight(SIGMAS, get_parameterization(name))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def test_edm_weighting_is_one_for_edm_and_karras_lambda_in_x0_space() -> None:
    sd = 0.5
    p = get_parameterization("edm", sigma_data=sd)
    w = get_loss_weighting("edm")
    torch.testing.assert_close(w.target_weight(SIGMAS, p), torch.ones_like(SIGMAS))
    torch.testing.assert_close(w.x0_weight(SIGMAS, p), (SIGMAS**2 + sd**2) / (SIGMAS * sd) ** 2)
    # eps target: lambda * sigma^2 = (sigma^2 + sd^2) / sd^2 (here with sd = 1 of eps)
    torch.testing.assert_close(w.target_weight(SIGMAS, get_parameterization("eps")), SIGMAS**2 + 1)


def test_soft_min_snr_matches_k_diffusion() -> None:
    """k-diffusion's soft-min-snr for the Karras preconditioner: (sigma sd)^2/(sigma^2+sd^2)^2."""
    sd = 0.5
    p = get_parameterization("edm", sigma_data=sd)
    got = get_loss_weighting("soft_min_snr").target_weight(SIGMAS, p)
    torch.testing.assert_close(got, (SIGMAS * sd) ** 2 / (SIGMAS**2 + sd**2) ** 2)
    # a soft minimum: below both SNR and gamma, approaching each at the extremes
    lam = get_loss_weighting("soft_min_snr", gamma=5.0).x0_weight(SIGMAS, p)
    assert bool((lam <= torch.minimum(SNRS, torch.tensor(5.0, dtype=torch.float64))).all())
    assert lam[0] == pytest.approx(SNRS[0].item(), rel=0.01)
    assert lam[-1] == pytest.approx(5.0, rel=0.01)


def test_uniform_is_plain_target_mse() -> None:
    for name in PARAMETERIZATIONS:
        p = get_parameterization(name)
        torch.testing.assert_close(get_loss_weighting("uniform").target_weight(SIGMAS, p), torch.ones_like(SIGMAS))


def test_unknown_weighting_lists_names() -> None:
    with pytest.raises(KeyError, match="cosmap, edm, min_snr, sigma_sqrt, soft_min_snr, uniform"):
        get_loss_weighting("snr")


class FromX0(Denoiser):
    """A backbone whose denoised output is the same function D(x) under every
    parameterization: it returns ``param.from_x0(D(x), x, sigma)``."""

    def __init__(self, param_name: str, sigma: torch.Tensor, x: torch.Tensor) -> None:
        super().__init__(in_channels=2, out_channels=2, layouts=["CHW"])
        self.p = get_parameterization(param_name, sigma_data=0.5 if param_name == "edm" else None)
        self.sigma, self.x = sigma, x

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        d = 0.3 * torch.tanh(self.x) + 0.1  # some fixed x0 estimate
        return self.p.from_x0(d, self.x, self.sigma)


@pytest.mark.parametrize("weighting", ["min_snr", "soft_min_snr", "edm"])
def test_weightings_give_the_same_x0_space_loss_for_every_parameterization(weighting: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    sigma = SIGMAS
    x = x0 + sigma.view(-1, 1, 1, 1) * noise
    kwargs = {"gamma": 2.0} if weighting != "edm" else {}
    losses = {}
    for name in PARAMETERIZATIONS:
        schedule = LogLinearSchedule(sigma_data=0.5)
        model = ParameterizedDenoiser(FromX0(name, sigma, x), schedule, name)
        objective = DiffusionObjective(weighting, **kwargs)
        if weighting == "edm":  # one lambda for all: EDM's, with sigma_data 0.5
            objective.weighting = get_loss_weighting("edm", sigma_data=0.5)
        losses[name] = objective(model, x0, sigma=sigma, noise=noise)["loss_per_sample"]
    for name in PARAMETERIZATIONS:
        torch.testing.assert_close(losses[name], losses["x0"], rtol=1e-8, atol=1e-12)


def test_loss_is_deterministic_under_a_seeded_generator() -> None:
    torch.manual_seed(0)
    model = ParameterizedDenoiser(TinyDenoiser(2, 2), LogLinearSchedule(), "v")
    x0 = torch.randn(4, 2, 8, 8)
    objective = DiffusionObjective("min_snr", offset_noise=0.1)
    a = objective(model, x0, generator=torch.Generator().manual_seed(3))
    b = objective(model, x0, generator=torch.Generator().manual_seed(3))
    c = objective(model, x0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["sigma"], b["sigma"])
    assert not torch.equal(a["loss"], c["loss"])
    # the noise levels are the schedule's draw from the same generator
    torch.testing.assert_close(
        a["sigma"], LogLinearSchedule().sample_training_sigmas(4, torch.Generator().manual_seed(3))
    )


def test_offset_noise_adds_a_per_channel_constant() -> None:
    x0 = torch.zeros(256, 3, 8, 8)
    plain = offset_noise(x0, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))
    noisy = offset_noise(x0, 0.5, torch.Generator().manual_seed(0))
    # plain first, then one offset per (item, channel): spatial mean variance 1/64 + 0.25
    offset = noisy - plain
    torch.testing.assert_close(offset, offset[..., :1, :1].expand_as(offset), atol=1e-6, rtol=0)
    var = noisy.mean(dim=(2, 3)).var().item()
    assert var == pytest.approx(1 / 64 + 0.25, rel=0.15)

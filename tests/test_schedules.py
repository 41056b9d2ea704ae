"""Noise schedules: published formulas at known points, peer-library values (diffusers), the
sigma <-> timestep round trip, training noise levels and the conformance kit."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

import latentkit
from latentkit.random import generators_from_seed
from latentkit.schedules.discrete import CosineSchedule, ScaledLinearSchedule
from latentkit.schedules.edm import EDMSchedule
from latentkit.schedules.spacing import sigmas_exponential, sigmas_karras, sigmas_polyexponential
from latentkit.testing.checks import check_schedule

# diffusers' schedulers trip numpy 2 "copy keyword" deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DIFFUSERS_BETAS = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}


def euler(name: str, **kwargs: object) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**DIFFUSERS_BETAS[name], **kwargs)


# --------------------------------------------------------------------------- registry


def test_builtin_schedules_are_registered_with_their_spacings() -> None:
    names = {info.name for info in latentkit.list_components("schedule")}
    assert {"linear", "scaled_linear", "cosine", "edm", "flow"} <= names
    assert latentkit.create("schedule", "scaled_linear").spacings == (
        "leading", "trailing", "linspace", "karras", "exponential", "polyexponential", "ays_sd15", "ays_sdxl",
    )
    assert latentkit.create("schedule", "flow").spacings == (
        "linspace", "flux", "karras", "exponential", "polyexponential",
    )
    assert latentkit.create("schedule", "edm").spacings == ("karras", "exponential", "polyexponential")


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "edm", "flow"])
def test_conformance_kit(name: str) -> None:
    info = latentkit.get_plugin_manager().get("schedule", name)
    check_schedule(latentkit.create("schedule", name, **info.tiny_config))
    check_schedule(latentkit.create("schedule", name))


def test_conformance_kit_zero_terminal_snr() -> None:
    check_schedule(latentkit.create("schedule", "scaled_linear", rescale_zero_terminal_snr=True))


# --------------------------------------------------------------------------- against diffusers


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_alphas_cumprod_and_sigmas_match_diffusers(name: str) -> None:
    ours = latentkit.create("schedule", name)
    ref = euler(name)
    # diffusers computes betas in float32.
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=2e-5, atol=1e-7)
    ref_sigmas = ((1 - ref.alphas_cumprod.double()) / ref.alphas_cumprod.double()).sqrt()
    # 1 - alpha_bar near t = 0 loses digits in float32 (cosine's first betas are ~4e-5).
    torch.testing.assert_close(ours.train_sigmas, ref_sigmas, rtol=1e-3, atol=0)


def test_scaled_linear_closed_form_points() -> None:
    s = ScaledLinearSchedule()
    betas = s.betas
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    mid = ((0.00085**0.5 + 0.012**0.5) / 2) ** 2  # linear in sqrt(beta): t = 499.5 is the middle
    assert (0.5 * (betas[499] + betas[500])).item() == pytest.approx(mid, rel=1e-6)
    assert s.sigma_min == pytest.approx(math.sqrt(0.00085 / (1 - 0.00085)), rel=1e-12)
    assert s.sigma_max == pytest.approx(14.6146, rel=1e-5)  # the familiar SD sigma_max


def test_cosine_closed_form_alpha_bar() -> None:
    s = CosineSchedule()
    n = 1000

    def f(t: float) -> float:
        return math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 250, 500, 900):  # alpha_bar_t = f(t+1) / f(0) while no beta hits the cap
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [4, 10, 50])
@pytest.mark.parametrize("name", ["scaled_linear", "linear"])
def test_timestep_spacings_match_diffusers_euler(name: str, steps: int, spacing: str) -> None:
    ours = latentkit.create("schedule", name)
    ref = euler(name, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    torch.testing.assert_close(ours.timesteps(steps, spacing), ref.timesteps.double(), rtol=0, atol=1e-3)
    # diffusers interpolates sigma linearly between integer timesteps, latentkit in log sigma:
    # identical at integer timesteps (always for leading/trailing; 999/(steps-1) is an integer
    # for 4 and 10 linspace steps).
    sig = ours.sigmas(steps, spacing, dtype=torch.float64)
    assert sig[-1].item() == 0.0 and sig.shape == (steps + 1,)
    if spacing != "linspace" or steps in (4, 10):
        torch.testing.assert_close(sig, ref.sigmas.double(), rtol=1e-4, atol=1e-6)
    else:  # fractional timesteps: the two interpolations agree closely
        torch.testing.assert_close(sig, ref.sigmas.double(), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_timestep_spacings_match_diffusers_ddim(spacing: str, steps_offset: int) -> None:
    ours = latentkit.create("schedule", "scaled_linear", steps_offset=steps_offset)
    ref = DDIMScheduler(**DIFFUSERS_BETAS["scaled_linear"], timestep_spacing=spacing, steps_offset=steps_offset)
    for steps in (7, 20, 50):
        ref.set_timesteps(steps)
        assert ours.timesteps(steps, spacing).long().tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("spacing,flag", [("karras", "use_karras_sigmas"), ("exponential", "use_exponential_sigmas")])
def test_sigma_spacings_match_diffusers_euler(spacing: str, flag: str) -> None:
    ours = latentkit.create("schedule", "scaled_linear")
    ref = euler("scaled_linear", **{flag: True})
    ref.set_timesteps(12)
    torch.testing.assert_close(ours.sigmas(12, spacing, dtype=torch.float64), ref.sigmas.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["scaled_linear", "linear", "cosine"])
def test_zero_terminal_snr_matches_diffusers(name: str) -> None:
    ours = latentkit.create("schedule", name, rescale_zero_terminal_snr=True)
    assert ours.alphas_cumprod[-1].item() == 0.0
    ref_betas = diffusers_rescale(euler(name).betas.double())
    ref_acp = torch.cumprod(1 - ref_betas, 0)
    torch.testing.assert_close(ours.alphas_cumprod, ref_acp, rtol=1e-4, atol=1e-9)
    # SNR_0 is unchanged by the rescale (Lin et al. 2024, Alg. 1 keeps alpha_bar_0).
    plain = latentkit.create("schedule", name)
    assert ours.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)
    # Terminal sigma: diffusers' Euler clamps alpha_bar_{N-1} to 2^-24 (sigma ~ 4096), as we do
    # unless alpha_bar_{N-2} is smaller still (linear), where we keep sigma increasing.
    assert bool((ours.train_sigmas.diff() > 0).all())
    terminal = min(2**-24, 0.5 * ours.alphas_cumprod[-2].item())
    assert ours.sigma_max == pytest.approx(math.sqrt((1 - terminal) / terminal), rel=1e-12)
    if name == "scaled_linear":
        assert ours.sigma_max == pytest.approx(4096.0, rel=1e-6)
        ref = euler(name, rescale_betas_zero_snr=True, timestep_spacing="trailing")
        ref.set_timesteps(10)
        torch.testing.assert_close(ours.sigmas(10, "trailing", dtype=torch.float64), ref.sigmas.double(),
                                   rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- k-diffusion formulas


def test_karras_formula_at_known_points() -> None:
    # Karras et al. (2022), Eq. 5 at i = 0, (n-1)/2, n-1 for n = 5, sigma in [0.002, 80], rho = 7.
    s = sigmas_karras(5, 0.002, 80.0)
    mid = ((80.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert s.tolist()[0] == pytest.approx(80.0, rel=1e-12)
    assert s[2].item() == pytest.approx(mid, rel=1e-12)
    assert s[4].item() == pytest.approx(0.002, rel=1e-12)
    assert s[5].item() == 0.0
    # rho = 1 is the linear grid.
    torch.testing.assert_close(sigmas_karras(3, 0.1, 10.0, rho=1.0), torch.tensor([10.0, 5.05, 0.1, 0.0], dtype=torch.float64))
    # The EDM schedule uses exactly these.
    torch.testing.assert_close(EDMSchedule().sigmas(5, dtype=torch.float64), s)


def test_exponential_and_polyexponential_formulas() -> None:
    torch.testing.assert_close(sigmas_exponential(3, 0.1, 10.0), torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64))
    # polyexponential with rho = 1 is exponential.
    torch.testing.assert_close(sigmas_polyexponential(7, 0.03, 14.6, rho=1.0), sigmas_exponential(7, 0.03, 14.6))
    # rho = 2, n = 3: the middle level is exp(0.5^2 ln(sigma_max / sigma_min) + ln sigma_min).
    s = sigmas_polyexponential(3, 0.1, 10.0, rho=2.0)
    assert s[1].item() == pytest.approx(math.exp(0.25 * math.log(100.0)) * 0.1, rel=1e-12)
    edm = EDMSchedule()
    torch.testing.assert_close(edm.sigmas(6, "polyexponential", rho=2.0, dtype=torch.float64),
                               sigmas_polyexponential(6, 0.002, 80.0, rho=2.0))


@pytest.mark.parametrize("steps", [1, 2])
def test_tiny_step_counts(steps: int) -> None:
    for spacing in ScaledLinearSchedule.spacings:
        s = ScaledLinearSchedule().sigmas(steps, spacing)
        assert s.shape == (steps + 1,) and s[-1] == 0 and bool((s[:-1] > 0).all())


# --------------------------------------------------------------------------- sigma <-> t


@pytest.mark.parametrize("zsnr", [False, True])
@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_sigma_t_round_trips(name: str, zsnr: bool) -> None:
    s = latentkit.create("schedule", name, rescale_zero_terminal_snr=zsnr)
    # Integer timesteps hit the table exactly.
    t_int = torch.arange(0, 1000, 37, dtype=torch.float64)
    torch.testing.assert_close(s.t_to_sigma(t_int), s.train_sigmas[t_int.long()], rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sigma_to_t(s.train_sigmas), torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-9)
    # Any sigma in range: sigma -> t -> sigma and t -> sigma -> t.
    sigma = torch.logspace(math.log10(s.sigma_min), math.log10(s.sigma_max), 301, dtype=torch.float64)
    torch.testing.assert_close(s.t_to_sigma(s.sigma_to_t(sigma)), sigma, rtol=1e-10, atol=0)
    t = torch.linspace(0, 999, 577, dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)), t, rtol=0, atol=1e-8)
    # Between integers the interpolation is linear in log sigma.
    half = s.t_to_sigma(torch.tensor([10.5], dtype=torch.float64))
    assert half.item() == pytest.approx(math.sqrt(s.train_sigmas[10].item() * s.train_sigmas[11].item()), rel=1e-12)
    # Out of range clamps; sigma = 0 maps to t = 0; shapes and dtypes are kept.
    out = s.sigma_to_t(torch.tensor([[0.0, 1e-9], [1e9, s.sigma_max]]))
    assert out.shape == (2, 2) and out.dtype == torch.float32
    assert out.tolist() == [[0.0, 0.0], [999.0, 999.0]]


def test_edm_noise_input() -> None:
    s = EDMSchedule()
    sigma = torch.tensor([0.002, 0.5, 80.0])
    torch.testing.assert_close(s.sigma_to_t(sigma), 0.25 * sigma.log())
    torch.testing.assert_close(s.t_to_sigma(s.sigma_to_t(sigma)), sigma)


# --------------------------------------------------------------------------- training noise levels


def test_discrete_training_timesteps_are_uniform() -> None:
    s = latentkit.create("schedule", "linear", num_train_timesteps=10)
    sig = s.sample_training_sigmas(20000, torch.Generator().manual_seed(0))
    t = s.sigma_to_t(sig.double()).round().long()
    torch.testing.assert_close(s.train_sigmas[t].float(), sig)  # every sigma is a table entry
    counts = torch.bincount(t, minlength=10).double()
    # Each timestep has probability 1/10: 2000 +- 5 sd (sd = sqrt(20000 * 0.1 * 0.9) ~ 42).
    assert bool(((counts - 2000).abs() < 5 * 42.5).all()), counts.tolist()


def test_edm_training_sigmas_are_log_normal() -> None:
    s = EDMSchedule()
    log_sigma = s.sample_training_sigmas(40000, torch.Generator().manual_seed(0)).double().log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=5 * 1.2 / 200)
    assert log_sigma.std().item() == pytest.approx(1.2, rel=0.02)


@pytest.mark.parametrize("name", ["scaled_linear", "edm"])
def test_training_sigmas_per_item_generators(name: str) -> None:
    s = latentkit.create("schedule", name)
    batch = s.sample_training_sigmas(5, generators_from_seed(7, 5))
    for i in range(5):
        assert torch.equal(batch[i : i + 1], s.sample_training_sigmas(1, [generators_from_seed(7, 5)[i]]))


# --------------------------------------------------------------------------- errors


def test_errors_name_the_options() -> None:
    with pytest.raises(ValueError, match=r"unknown spacing 'karas'.*karras"):
        ScaledLinearSchedule().sigmas(10, "karas")
    with pytest.raises(ValueError, match="unknown spacing 'leading'"):
        EDMSchedule().sigmas(10, "leading")
    with pytest.raises(ValueError, match="at most num_train_timesteps"):
        latentkit.create("schedule", "linear", num_train_timesteps=10).sigmas(11, "trailing")
    with pytest.raises(TypeError, match="unknown config key"):
        latentkit.create("schedule", "edm", sigma_mx=10.0)
    # More steps than timesteps is fine on a sigma grid.
    assert latentkit.create("schedule", "linear", num_train_timesteps=10).sigmas(11, "karras").shape == (12,)

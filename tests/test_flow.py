"""Flow matching: the flow schedule and shifts against diffusers, the flow parameterizations
and the step from pure noise, SD3's training t densities, the flow loss weightings, closed-form
sampler orders on Gaussian data, and the stochastic rectified-flow sampler's moments."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import latentkit
from conftest import LabelConditioner, TinyDenoiser
from latentkit import CompositionError, LatentDiffusion
from latentkit.autoencoders.identity import IdentityAutoencoder
from latentkit.diffusion import ParameterizedDenoiser, get_loss_weighting, get_parameterization
from latentkit.interfaces import Denoiser
from latentkit.schedules.flow import FlowSchedule, flow_sigma_to_t
from latentkit.specs import Conditioning

pytestmark = pytest.mark.usefixtures("single_thread")

MU, S = 0.5, 0.8  # Gaussian data N(MU, S^2)


class ExactVelocity(Denoiser):
    """The exact flow velocity ``v = (z - E[x0 | z_t]) / t`` of N(MU, S^2) data, written in
    the flow time: ``E[x0 | z_t] = MU + S^2 (1 - t) / (S^2 (1 - t)^2 + t^2) (z - (1 - t) MU)``;
    the timestep input is ``1000 t``."""

    def __init__(self) -> None:
        super().__init__(in_channels=2, out_channels=2, layouts=["CHW"])

    def forward(self, z: torch.Tensor, timestep: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        t = (timestep.double() / 1000).view(-1, 1, 1, 1)
        z = z.double()
        x0 = MU + S**2 * (1 - t) / (S**2 * (1 - t) ** 2 + t**2) * (z - (1 - t) * MU)
        return (z - x0) / t


def smooth_velocity(z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """An arbitrary smooth "model" of (z, timestep in [0, 1000]) for the loop parity tests."""
    w = torch.linspace(-0.4, 0.4, 16).reshape(4, 4)
    t = timestep.reshape(-1, 1, 1, 1) / 1000
    return torch.tanh(torch.einsum("ij,bjhw->bihw", w, z)) + 0.5 * t * z + torch.sin(3 * t)


class SmoothBackbone(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return smooth_velocity(x, t)


# --------------------------------------------------------------------------- parity with diffusers


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_flow_sigmas_and_timesteps_equal_diffusers_with_a_constant_shift(shift: float, steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    ours = FlowSchedule(shift=shift)
    torch.testing.assert_close(ours.flow_sigmas(steps).float(), ref.sigmas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.timesteps(steps).float(), ref.timesteps, atol=0, rtol=1e-6)
    # and the sigma-space grid is the same times: t = sigma / (1 + sigma), the first inf (t = 1)
    sigmas = ours.sigmas(steps)
    assert math.isinf(float(sigmas[0])) and float(sigmas[-1]) == 0.0
    torch.testing.assert_close(flow_sigma_to_t(sigmas.double()).float(), ref.sigmas, atol=1e-6, rtol=0)


@pytest.mark.parametrize("latent_shape", [(64, 64), (128, 96)])
def test_dynamic_shift_equals_diffusers_at_two_resolutions(latent_shape: tuple[int, int]) -> None:
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    ref = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mu = calculate_shift(latent_shape[0] * latent_shape[1] // 4)
    ours = FlowSchedule(dynamic_shift=True)
    assert ours.mu(latent_shape) == pytest.approx(mu, abs=1e-12)
    ref.set_timesteps(20, mu=mu)  # the SD3 pipeline's grid
    torch.testing.assert_close(ours.flow_sigmas(20, latent_shape=latent_shape).float(), ref.sigmas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.timesteps(20, latent_shape=latent_shape).float(), ref.timesteps,
                               atol=0, rtol=1e-6)
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / 20, 20), mu=mu)  # the Flux pipeline's grid
    torch.testing.assert_close(ours.flow_sigmas(20, "flux", latent_shape=latent_shape).float(), ref.sigmas,
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="latent_shape"):
        ours.sigmas(20)


@pytest.mark.parametrize(("spacing", "flag"), [("karras", "use_karras_sigmas"),
                                               ("exponential", "use_exponential_sigmas")])
def test_sigma_spacings_on_the_flow_schedule_equal_diffusers(spacing: str, flag: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, **{flag: True})
    ref.set_timesteps(10)
    torch.testing.assert_close(FlowSchedule(shift=3.0).flow_sigmas(10, spacing).float(), ref.sigmas,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_a_flow_model_equals_the_diffusers_flow_match_euler_loop(shift: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(12)
    noise = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    z = noise.clone()
    for t in ref.timesteps:
        z = ref.step(smooth_velocity(z, t.expand(2)), t, z).prev_sample
    schedule = FlowSchedule(shift=shift)
    model = ParameterizedDenoiser(SmoothBackbone(), schedule, "flow")
    ours = latentkit.create("sampler", "euler").sample(model.denoise, noise, schedule.sigmas(12))
    torch.testing.assert_close(ours, z, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- the parameterizations


def test_flow_parameterization_scalings_are_the_straight_path() -> None:
    p = get_parameterization("flow")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.5, 1.0, 9.0, 1e4], dtype=torch.float64)
    t = (sigma / (1 + sigma)).view(-1, 1, 1, 1)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(p.scale_input(x, sigma), (1 - t) * x0 + t * eps)  # z_t
    torch.testing.assert_close(p.target(x0, x, sigma), eps - x0)  # the velocity
    torch.testing.assert_close(p.to_x0(eps - x0, x, sigma), x0)
    q = get_parameterization("flow_x0")
    torch.testing.assert_close(q.target(x0, x, sigma), x0)
    torch.testing.assert_close(q.scale_input(x, sigma), (1 - t) * x0 + t * eps)


def test_at_pure_noise_the_model_sees_the_noise_and_the_limits_are_used() -> None:
    schedule = FlowSchedule()
    model = ParameterizedDenoiser(SmoothBackbone(), schedule, "flow")
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    inf = torch.full((2,), math.inf)
    v = smooth_velocity(noise, torch.full((2,), 1000.0))
    torch.testing.assert_close(model.model_output(noise, inf), v)  # z_1 = eps, timestep 1000
    torch.testing.assert_close(model.denoise(noise, inf), noise - v)  # x0 = eps - v
    # the v and x0 parameterizations have limits there too; eps and edm refuse to compose
    for name in ("v", "x0", "flow_x0"):
        out = ParameterizedDenoiser(SmoothBackbone(), schedule, name).denoise(noise, inf)
        assert torch.isfinite(out).all()
    for name in ("eps", "edm"):
        with pytest.raises(CompositionError, match="pure noise"):
            ParameterizedDenoiser(SmoothBackbone(), schedule, name)
    # ... unless the grid starts at a finite noise level
    finite = FlowSchedule(t_max=0.99)
    assert math.isfinite(finite.sigma_max) and float(finite.sigmas(4)[0]) == pytest.approx(99.0)
    ParameterizedDenoiser(SmoothBackbone(), finite, "eps")


def test_every_sampler_starts_from_pure_noise_with_the_ddim_limit() -> None:
    """From sigma = inf the first step is D + sigma_1 noise (deterministic samplers), exactly
    the flow Euler step; the callback reports inf and then the finite levels, in order."""
    schedule = FlowSchedule(shift=3.0)
    model = ParameterizedDenoiser(SmoothBackbone(), schedule, "flow")
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    sigmas = schedule.sigmas(1)
    for name in ("euler", "heun", "dpmpp_2m", "unipc", "lms", "dpm2", "ddim", "plms"):
        one_step = latentkit.create("sampler", name).sample(model.denoise, noise, sigmas)
        torch.testing.assert_close(one_step, model.denoise(noise, math.inf), msg=name)
        seen: list[dict[str, Any]] = []
        latentkit.create("sampler", name).sample(model.denoise, noise, schedule.sigmas(3), callback=seen.append)
        assert [d["i"] for d in seen][:1] == [0] and math.isinf(seen[0]["sigma"]), name
        assert [d["i"] for d in seen] == sorted(d["i"] for d in seen), name
        assert max(d["i"] for d in seen) == 2, name
    with pytest.raises(ValueError, match="only the first may be inf"):
        latentkit.create("sampler", "euler").sample(model.denoise, noise, torch.tensor([5.0, math.inf, 0.0]))


# --------------------------------------------------------------------------- closed-form orders


def _error_at_sigma_min(name: str, config: dict[str, Any], schedule: FlowSchedule, steps: int,
                        noise: torch.Tensor) -> float:
    model = ParameterizedDenoiser(ExactVelocity(), schedule, "flow")
    sigmas = schedule.sigmas(steps, dtype=torch.float64)
    last: list[torch.Tensor] = []
    latentkit.create("sampler", name, **config).sample(
        model.denoise, noise.clone(), sigmas, callback=lambda info: last.__setitem__(slice(None), [info["x"]])
    )
    # the exact probability-flow solution from pure noise: x(sigma) = MU + sqrt(S^2 + sigma^2) eps
    exact = MU + math.sqrt(S**2 + float(sigmas[-2]) ** 2) * noise
    return float(((last[0] - exact) / S).pow(2).mean().sqrt())


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize(("name", "config"), [
    ("euler", {}), ("heun", {}), ("dpm2", {}), ("dpmpp_2m", {}), ("unipc", {}), ("unipc", {"order": 3}),
    ("lms", {}), ("euler_ancestral_rf", {"eta": 0.0}),
])
def test_deterministic_samplers_on_a_flow_model_converge_at_their_order(
    name: str, config: dict[str, Any], shift: float
) -> None:
    """Exact velocity of Gaussian data: the error at sigma_min falls by 2^order as the steps
    double (the first step from pure noise is first order, so at most 2 is asserted)."""
    sampler = latentkit.create("sampler", name, **config)
    noise = torch.randn(32, 2, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    schedule = FlowSchedule(shift=shift)
    errors = [_error_at_sigma_min(name, config, schedule, n, noise) for n in (16, 32, 64, 128)]
    observed = math.log2(errors[-2] / errors[-1])
    assert observed > min(sampler.order, 2) - 0.25, (errors, observed)
    assert errors[-1] < errors[0]


@pytest.mark.parametrize(("name", "config"), [("euler_ancestral_rf", {}), ("euler_ancestral_rf", {"eta": 0.5}),
                                              ("euler_ancestral", {})])
def test_stochastic_flow_samplers_give_the_data_mean_and_variance(name: str, config: dict[str, Any]) -> None:
    schedule = FlowSchedule(shift=3.0)
    model = ParameterizedDenoiser(ExactVelocity(), schedule, "flow")
    noise = torch.randn(8192, 2, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = latentkit.create("sampler", name, **config).sample(
        model.denoise, noise, schedule.sigmas(400, dtype=torch.float64), generator=torch.Generator().manual_seed(5)
    )
    assert float(out.mean()) == pytest.approx(MU, abs=0.01)
    assert float(out.std()) == pytest.approx(S, abs=0.02)
    deterministic = latentkit.create("sampler", "euler").sample(model.denoise, noise, schedule.sigmas(400))
    assert not torch.allclose(out, deterministic.double(), atol=1e-2)  # noise was re-injected


def test_flow_ancestral_split_keeps_the_marginal_and_is_linear_in_t() -> None:
    from latentkit.samplers.euler import flow_ancestral_step

    for s_from, s_to in ((math.inf, 3.0), (20.0, 3.0), (1.0, 0.2)):
        down, up = flow_ancestral_step(s_from, s_to, 1.0)
        assert down**2 + up**2 == pytest.approx(s_to**2)
        t_from = 1.0 if math.isinf(s_from) else s_from / (1 + s_from)
        t_to = s_to / (1 + s_to)
        assert down / (1 + down) == pytest.approx(t_to * t_to / t_from)  # t_down = t'^2 / t at eta = 1
    assert flow_ancestral_step(5.0, 1.0, 0.0) == (1.0, 0.0)


# --------------------------------------------------------------------------- training densities


def _cdf(schedule: FlowSchedule, a: np.ndarray) -> np.ndarray:
    """The closed-form CDF of each training t density (Esser et al. 2024, Sec. 3.1)."""
    from scipy.special import logit, ndtr

    if schedule.t_distribution == "uniform":
        return a
    if schedule.t_distribution == "logit_normal":
        return ndtr((logit(a) - schedule.t_mean) / schedule.t_std)
    if schedule.t_distribution == "cosmap":  # t = 1 - 1 / (tan(pi u / 2) + 1)
        return 2 / np.pi * np.arctan(a / (1 - a))
    s = schedule.mode_scale  # t = f(u) decreasing: P(t <= a) = 1 - f^-1(a), by bisection
    lo, hi = np.zeros_like(a), np.ones_like(a)
    for _ in range(60):
        mid = (lo + hi) / 2
        f = 1 - mid - s * (np.cos(np.pi / 2 * mid) ** 2 - 1 + mid)
        lo, hi = np.where(f > a, mid, lo), np.where(f > a, hi, mid)
    return 1 - (lo + hi) / 2


@pytest.mark.parametrize(("distribution", "options"), [
    ("uniform", {}), ("logit_normal", {}), ("logit_normal", {"t_mean": 0.5, "t_std": 0.6}),
    ("mode", {"mode_scale": 1.29}), ("mode", {"mode_scale": 0.5}), ("cosmap", {}),
])
def test_training_t_follows_the_sd3_densities(distribution: str, options: dict[str, float]) -> None:
    """Kolmogorov-Smirnov distance of 20000 draws to each closed-form CDF."""
    schedule = FlowSchedule(t_distribution=distribution, shift_training=False, **options)
    t = schedule.sample_training_t(20000, torch.Generator().manual_seed(6)).double().sort().values.numpy()
    empirical = np.arange(1, len(t) + 1) / len(t)
    distance = np.abs(empirical - _cdf(schedule, t)).max()
    assert distance < 1.63 / math.sqrt(len(t)), distance  # KS at the 1% level
    sigmas = schedule.sample_training_sigmas(64, torch.Generator().manual_seed(6))
    assert torch.isfinite(sigmas).all() and (sigmas > 0).all()


def test_training_t_takes_the_constant_shift_when_asked() -> None:
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    plain = FlowSchedule(t_distribution="uniform", shift=3.0, shift_training=False).sample_training_t(256, gen())
    shifted = FlowSchedule(t_distribution="uniform", shift=3.0).sample_training_t(256, gen())
    torch.testing.assert_close(shifted, (3 * plain / (1 + 2 * plain)).clamp(1e-5, 1 - 1e-5))


def test_flow_loss_weightings() -> None:
    """x0-space weights as in diffusers' SD3 scripts: sigma_sqrt is the plain velocity MSE of a
    flow model; cosmap weights it by 2 t^2 / (pi (1 - 2t + 2t^2))."""
    flow = get_parameterization("flow")
    sigma = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64)
    t = sigma / (1 + sigma)
    torch.testing.assert_close(get_loss_weighting("sigma_sqrt").target_weight(sigma, flow), torch.ones_like(sigma))
    torch.testing.assert_close(get_loss_weighting("cosmap").target_weight(sigma, flow),
                               2 * t**2 / (math.pi * (1 - 2 * t + 2 * t**2)))
    torch.testing.assert_close(get_loss_weighting("sigma_sqrt").x0_weight(sigma, flow), t**-2)


# --------------------------------------------------------------------------- the model


def _flow_model(**schedule: Any) -> LatentDiffusion:
    torch.manual_seed(0)
    cond = LabelConditioner(dim=8)
    den = TinyDenoiser(3, 3, vector_dim=cond.output_spec.vector_dim, crossattn_dim=cond.output_spec.crossattn_dim)
    return LatentDiffusion(IdentityAutoencoder(3), den, cond, schedule=FlowSchedule(**schedule),
                           parameterization="flow")


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral_rf", "dpmpp_2m_sde"])
def test_latent_diffusion_samples_a_flow_model_with_guidance_and_any_sampler(sampler: str) -> None:
    model = _flow_model(shift=3.0).eval()
    labels = {"label": torch.tensor([1, 2])}
    out = model.sample(labels, sampler=sampler, steps=4, guidance_scale=3.0, guidance_rescale=0.5,
                       seed=1, latent_size=(8, 8), clamp=False)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    again = model.sample(labels, sampler=sampler, steps=4, guidance_scale=3.0, guidance_rescale=0.5,
                         seed=1, latent_size=(8, 8), clamp=False)
    torch.testing.assert_close(out, again)


def test_dynamic_shift_grid_follows_the_latent_size_in_sampling() -> None:
    model = _flow_model(dynamic_shift=True, base_seq_len=16, max_seq_len=64).eval()
    seen: dict[tuple[int, int], list[float]] = {}
    for size in ((8, 8), (16, 16)):
        levels: list[float] = []
        model.sample({"label": torch.tensor([0])}, sampler="euler", steps=3, seed=0, latent_size=size,
                     callback=lambda info, levels=levels: levels.append(info["sigma"]))
        seen[size] = levels
        expected = model.schedule.sigmas(3, latent_shape=size)[:-1].tolist()
        assert levels[1:] == pytest.approx(expected[1:]) and math.isinf(levels[0])
    assert seen[(16, 16)][1] > seen[(8, 8)][1]  # more tokens: more shift towards noise


@pytest.mark.parametrize("distribution", ["uniform", "logit_normal", "mode", "cosmap"])
def test_training_with_each_t_density_reduces_the_flow_loss_on_shapes(distribution: str) -> None:
    """A tiny pixel-space flow model on 16x16 ``shapes`` images: the held-out loss (fixed
    images, t and noise) falls with training, whatever the training t density."""
    from latentkit.data.shapes import ShapesDataset

    torch.manual_seed(0)
    model = LatentDiffusion(IdentityAutoencoder(3), TinyDenoiser(3, 3), schedule=FlowSchedule(
        t_distribution=distribution), parameterization="flow")
    train = ShapesDataset(size=16, length=64, seed=0)
    held = ShapesDataset(size=16, length=16, seed=1)
    images = torch.stack([train[i]["image"] for i in range(len(train))])
    probe_images = torch.stack([held[i]["image"] for i in range(len(held))])
    probe = torch.Generator().manual_seed(0)
    sigma = FlowSchedule(t_distribution="uniform").sample_training_sigmas(16, probe)
    noise = torch.randn(probe_images.shape, generator=probe)

    def held_out() -> float:
        with torch.no_grad():
            return float(model.objective(model.parameterized, probe_images, sigma=sigma, noise=noise)["loss"])

    before = held_out()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for step in range(60):
        opt.zero_grad()
        batch = images[(step * 16) % 64:(step * 16) % 64 + 16]
        model.loss({"image": batch}, generator=gen).backward()
        opt.step()
    assert held_out() < 0.8 * before

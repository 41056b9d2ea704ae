"""Samplers against closed-form answers (Gaussian data: exact denoiser and exact PF-ODE
solution): convergence order of every deterministic sampler, mean and std of every
stochastic one, exact equivalences between the DDPM-line and the k-diffusion samplers, the
Brownian-tree noise, call counts, input checks and the conformance kit."""

from __future__ import annotations

import inspect
import itertools
import math
from typing import Any

import pytest
import torch

import latentkit
from latentkit.errors import ShapeError
from latentkit.random import generators_from_seed
from latentkit.samplers import BUILTIN_SAMPLERS
from latentkit.samplers.noise import BrownianTreeNoise
from latentkit.schedules.spacing import sigmas_exponential, sigmas_karras
from latentkit.testing.checks import check_sampler
from latentkit.testing.gaussian import GaussianData

# diffusers' schedulers trip numpy 2 "copy keyword" deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DATA = GaussianData(mean=[0.5, -0.3], std=[0.8, 1.3])


def make(name: str, **kwargs: Any) -> Any:
    return latentkit.create("sampler", name, **kwargs)


# --------------------------------------------------------------------------- registry and kit


def test_all_samplers_registered_with_a_docstring_citing_the_algorithm() -> None:
    names = {info.name for info in latentkit.list_components("sampler")}
    expected = {
        "ddpm", "ddim", "plms", "euler", "euler_ancestral", "euler_ancestral_rf", "heun", "dpm2",
        "dpm2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_2m", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "lcm",
        "dpmpp_3m", "deis", "ipndm", "ipndm_v",
    }
    assert expected <= names and set(BUILTIN_SAMPLERS) == expected
    for name in expected:
        sampler = make(name)
        assert isinstance(sampler, latentkit.Sampler)
        doc = (type(sampler).__doc__ or "").strip().splitlines()[0]
        assert any(ch.isdigit() for ch in doc), f"{name}: docstring should cite a paper: {doc!r}"


@pytest.mark.parametrize("name", sorted(BUILTIN_SAMPLERS))
def test_conformance_kit(name: str) -> None:
    # lcm declares requires_consistency_model: the kit's moment check hands it the exact
    # consistency function instead of E[x0 | x].
    check_sampler(make(name))


# --------------------------------------------------------------------------- ODE convergence order

SIGMA_HI, SIGMA_LO = 10.0, 0.05


def ode_error(sampler: Any, steps: int) -> float:
    """Max error against the exact PF-ODE solution from SIGMA_HI to SIGMA_LO on a log-linear
    grid (no final step to 0, whose x = D(x, sigma_min) shortcut would add a fixed floor)."""
    sigmas = sigmas_exponential(steps, SIGMA_LO, SIGMA_HI)[:-1]
    x = DATA.sample((8, 2, 3), sigma=SIGMA_HI, generator=torch.Generator().manual_seed(0))
    out = sampler.sample(DATA.denoise, x.clone(), sigmas)
    return (out - DATA.ode_solution(x, SIGMA_HI, SIGMA_LO)).abs().max().item()


# (name, kwargs, lower bound, upper bound) on the observed order log2(err(n) / err(2n)).
# lms (order 4) and unipc (UniP-2 + UniC = 3) start with lower orders, which caps their
# asymptotic global order at 2-3; on this grid they measure ~3.1.
ORDERS = [
    ("euler", {}, 0.9, 1.15),
    ("ddim", {}, 0.9, 1.15),
    ("euler_ancestral", {"eta": 0.0}, 0.9, 1.15),
    ("heun", {}, 1.9, 2.3),
    ("dpm2", {}, 1.9, 2.3),
    ("dpm2_ancestral", {"eta": 0.0}, 1.9, 2.3),
    ("dpmpp_2m", {}, 1.9, 2.3),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 1.9, 2.3),
    ("dpmpp_sde", {"eta": 0.0}, 1.9, 2.3),
    ("dpmpp_2m_sde", {"eta": 0.0}, 1.9, 2.3),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 1.9, 2.3),
    ("dpmpp_3m_sde", {"eta": 0.0}, 1.9, 2.6),
    ("plms", {}, 1.9, 2.3),
    ("lms", {}, 2.8, 3.6),
    ("unipc", {}, 2.8, 3.6),
    ("unipc", {"variant": "bh1"}, 2.8, 3.6),
    ("unipc", {"use_corrector": False}, 1.9, 2.3),
]


@pytest.mark.parametrize("name,kwargs,lo,hi", ORDERS, ids=[f"{n}{k or ''}" for n, k, *_ in ORDERS])
def test_deterministic_sampler_converges_at_its_order(name: str, kwargs: dict[str, Any], lo: float, hi: float) -> None:
    sampler = make(name, **kwargs)
    assert not sampler.stochastic
    errs = [ode_error(sampler, n) for n in (16, 32, 64)]
    assert errs[0] > errs[1] > errs[2], errs
    order = math.log2(errs[1] / errs[2])
    assert lo <= order <= hi, f"{name}{kwargs}: observed order {order:.2f}, errors {errs}"


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2), ("dpm2", 2), ("dpmpp_2m", 2),
                                        ("plms", 2), ("lms", 3), ("unipc", 3)])
def test_deterministic_samplers_converge_to_the_exact_solution_at_zero(name: str, order: int) -> None:
    # The full EDM grid (Karras et al. 2022: 80 -> 0.002, rho = 7, then 0), including the final
    # step to 0; the error in data-std units falls by ~2^order per doubling of the steps
    # (down to the 1e-5 floor of that final step, below the errors here).
    x = DATA.sample((16, 2, 2), sigma=80.0, generator=torch.Generator().manual_seed(1))
    exact = DATA.ode_solution(x, 80.0, 0.0)
    errs = []
    for steps in (50, 100):
        out = make(name).sample(DATA.denoise, x.clone(), sigmas_karras(steps, 0.002, 80.0))
        errs.append(((out - exact) / DATA.std.view(1, 2, 1)).abs().max().item())
    assert errs[1] < errs[0] / 2 ** (order - 0.15), errs
    assert errs[1] < {1: 0.1, 2: 5e-3, 3: 1e-3}[order], errs


# --------------------------------------------------------------------------- exact equivalences


def run(name: str, sigmas: torch.Tensor, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    x = DATA.sample((4, 2, 3), sigma=float(sigmas[0]), generator=torch.Generator().manual_seed(5))
    return make(name, **kwargs).sample(DATA.denoise, x, sigmas, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("grid", ["karras", "scaled_linear_leading"])
def test_ddpm_line_equals_k_diffusion_line(grid: str) -> None:
    sigmas = (sigmas_karras(12, 0.03, 14.6) if grid == "karras"
              else latentkit.create("schedule", "scaled_linear").sigmas(12, "leading", dtype=torch.float64))
    # DDIM(eta=0) is Euler on the PF ODE in x = z / sqrt(alpha_bar) (Karras et al. 2022, App. B.2).
    torch.testing.assert_close(run("ddim", sigmas), run("euler", sigmas), rtol=1e-10, atol=1e-10)
    # DDIM's sigma_t(eta) / sqrt(alpha_bar') is the ancestral sigma_up.
    torch.testing.assert_close(run("ddim", sigmas, eta=0.6), run("euler_ancestral", sigmas, eta=0.6), rtol=1e-10, atol=1e-10)
    # DDPM with the posterior variance beta_tilde is DDIM with eta = 1.
    torch.testing.assert_close(run("ddpm", sigmas), run("euler_ancestral", sigmas), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(run("ddpm", sigmas, variance_type="fixed_large"), run("ddpm", sigmas))
    # DPM-Solver++(2M) SDE at eta = 0 is DPM-Solver++(2M); the SDE singlestep is 2S.
    torch.testing.assert_close(run("dpmpp_2m_sde", sigmas, eta=0.0), run("dpmpp_2m", sigmas), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(run("dpmpp_sde", sigmas, eta=0.0), run("dpmpp_2s_ancestral", sigmas, eta=0.0),
                               rtol=1e-10, atol=1e-10)


def test_last_step_to_zero_returns_the_denoised_sample() -> None:
    # k-diffusion convention: the step to sigma = 0 is an Euler step, i.e. x = D(x, sigma).
    sigmas = torch.tensor([2.0, 0.0], dtype=torch.float64)
    x = DATA.sample((3, 2, 2), sigma=2.0, generator=torch.Generator().manual_seed(2))
    for name in BUILTIN_SAMPLERS:
        DATA.calls = 0
        out = make(name).sample(DATA.denoise, x.clone(), sigmas, generator=torch.Generator().manual_seed(0))
        assert DATA.calls == 1, name
        torch.testing.assert_close(out, DATA.denoise(x, 2.0), msg=name)


def test_model_calls_and_callback() -> None:
    x = DATA.sample((2, 2, 2), sigma=10.0, generator=torch.Generator().manual_seed(3))
    for name in BUILTIN_SAMPLERS:
        sampler = make(name)
        for steps in (1, 2, 3, 9):
            sigmas = sigmas_karras(steps, 0.05, 10.0)
            DATA.calls = 0
            records: list[dict[str, Any]] = []
            sampler.sample(DATA.denoise, x.clone(), sigmas, callback=records.append,
                           generator=torch.Generator().manual_seed(1))
            assert DATA.calls == sampler.model_calls(steps), (name, steps)
            assert [r["i"] for r in records] == list(range(steps))
            assert [r["sigma"] for r in records] == pytest.approx(sigmas[:-1].tolist())
            assert [r["sigma_next"] for r in records] == pytest.approx(sigmas[1:].tolist())
    per_step = {"heun": 2, "dpm2": 2, "dpm2_ancestral": 2, "dpmpp_2s_ancestral": 2, "dpmpp_sde": 2}
    for name in BUILTIN_SAMPLERS:
        expected = 10 * per_step.get(name, 1) - (per_step.get(name, 1) - 1) + (name == "plms")
        assert make(name).model_calls(10) == expected, name


# --------------------------------------------------------------------------- against diffusers

_SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def _step(scheduler: Any, eps: torch.Tensor, t: Any, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Only the stochastic diffusers schedulers accept a generator.
    kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    return scheduler.step(eps, t, x, **kwargs).prev_sample


def _diffusers_sigma_space(scheduler: Any, steps: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Run a diffusers k-diffusion-style scheduler (sigma space, eps prediction) on DATA."""
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        second = not getattr(scheduler, "state_in_first_order", True) and hasattr(scheduler, "sigmas_interpol")
        sigma = float((scheduler.sigmas_interpol if second else scheduler.sigmas)[scheduler.step_index])
        x_sigma = x_in * math.sqrt(sigma**2 + 1)
        eps = (x_sigma - DATA.denoise(x_sigma, torch.tensor(sigma, dtype=x.dtype))) / sigma
        x = _step(scheduler, eps, t, x, generator)
    return x


def _diffusers_vp(scheduler: Any, steps: int, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a diffusers VP scheduler on z = sqrt(alpha_bar) x; returns (z_0, the sigma grid)."""
    schedule = latentkit.create("schedule", "scaled_linear")
    scheduler.set_timesteps(steps)
    sigmas = torch.cat([schedule.t_to_sigma(scheduler.timesteps.double()), torch.zeros(1, dtype=torch.float64)])
    z = x / math.sqrt(1 + float(sigmas[0]) ** 2)
    for t in scheduler.timesteps:
        a = float(schedule.alphas_cumprod[int(t)])
        sigma = math.sqrt((1 - a) / a)
        x_sigma = z / math.sqrt(a)
        eps = (x_sigma - DATA.denoise(x_sigma, torch.tensor(sigma, dtype=x.dtype))) / sigma
        z = _step(scheduler, eps, t, z, generator)
    return z, sigmas


@pytest.mark.parametrize("name,cls", [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler"),
                                      ("dpm2", "KDPM2DiscreteScheduler"), ("lms", "LMSDiscreteScheduler"),
                                      ("euler_ancestral", "EulerAncestralDiscreteScheduler")])
@pytest.mark.parametrize("steps", [8, 20])
def test_sigma_space_samplers_match_diffusers(name: str, cls: str, steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    x = DATA.sample((4, 2, 3, 3), sigma=14.6146, generator=torch.Generator().manual_seed(0))
    grid = diffusers.EulerDiscreteScheduler(**_SD_BETAS)
    grid.set_timesteps(steps)
    sigmas = grid.sigmas.double()
    # Same generator, same draw order: the ancestral noise matches too.
    ref = _diffusers_sigma_space(getattr(diffusers, cls)(**_SD_BETAS), steps, x.clone(), torch.Generator().manual_seed(3))
    out = make(name).sample(DATA.denoise, x.clone(), sigmas, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # diffusers keeps sigmas in float32


@pytest.mark.parametrize("name,cls,kwargs", [
    ("ddim", "DDIMScheduler", {"clip_sample": False}),
    ("ddpm", "DDPMScheduler", {"clip_sample": False}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {}),
    ("unipc", "UniPCMultistepScheduler", {}),
])
@pytest.mark.parametrize("steps", [8, 20])
def test_vp_samplers_match_diffusers(name: str, cls: str, kwargs: dict[str, Any], steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    x = DATA.sample((4, 2, 3, 3), sigma=14.6146, generator=torch.Generator().manual_seed(0))
    ref, sigmas = _diffusers_vp(getattr(diffusers, cls)(**_SD_BETAS, **kwargs), steps, x.clone(), torch.Generator().manual_seed(4))
    out = make(name).sample(DATA.denoise, x.clone(), sigmas, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- stochastic moments

# (name, kwargs, tolerance on |std / s - 1|) after 100 log-linear steps from sigma 20 to 0.002;
# the first-order ancestral step leaves a bias of ~5% there, the others ~1%.
STOCHASTIC = [
    ("ddpm", {}, 0.07),
    ("ddim", {"eta": 1.0}, 0.07),
    ("euler_ancestral", {}, 0.07),
    ("dpm2_ancestral", {}, 0.025),
    ("dpmpp_2s_ancestral", {}, 0.025),
    ("dpmpp_sde", {}, 0.025),
    ("dpmpp_2m_sde", {}, 0.025),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, 0.025),
    ("dpmpp_3m_sde", {}, 0.025),
    ("euler", {"s_churn": 10.0}, 0.07),
    ("heun", {"s_churn": 10.0}, 0.025),
    ("dpm2", {"s_churn": 10.0}, 0.025),
]


def moments(sampler: Any, steps: int, denoise: Any = None, sigma_max: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    sigmas = sigmas_exponential(steps, 0.002, sigma_max)
    gen = torch.Generator().manual_seed(11)
    x = DATA.sample((1, 2, 128, 128), sigma=sigma_max, generator=gen, dtype=torch.float32)
    out = sampler.sample(denoise or DATA.denoise, x, sigmas, generator=gen).double()
    return out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))


@pytest.mark.parametrize("name,kwargs,tol", STOCHASTIC, ids=[f"{n}{k or ''}" for n, k, _ in STOCHASTIC])
def test_stochastic_sampler_has_the_data_mean_and_std(name: str, kwargs: dict[str, Any], tol: float) -> None:
    sampler = make(name, **kwargs)
    assert sampler.stochastic
    mean, std = moments(sampler, 100)
    n = 128 * 128
    assert bool(((mean - DATA.mean).abs() < 5 * DATA.std / math.sqrt(n)).all()), (mean, DATA.mean)
    assert bool(((std / DATA.std - 1).abs() < tol).all()), (std, DATA.std)


def test_first_order_ancestral_bias_halves_with_twice_the_steps() -> None:
    _, std_100 = moments(make("euler_ancestral"), 100)
    _, std_200 = moments(make("euler_ancestral"), 200)
    ratio = (std_100 / DATA.std - 1).abs() / (std_200 / DATA.std - 1).abs()
    assert bool(((ratio > 1.5) & (ratio < 3.0)).all()), ratio


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lcm_with_exact_consistency_function_samples_the_data(steps: int) -> None:
    # The consistency function of Gaussian data is the PF-ODE map to sigma = 0; with it,
    # multistep consistency sampling is exact at any number of steps (Song et al. 2023).
    def consistency(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return DATA.ode_solution(x, float(sigma.reshape(-1)[0]), 0.0)

    mean, std = moments(make("lcm"), steps, denoise=consistency)
    n = 128 * 128
    assert bool(((mean - DATA.mean).abs() < 5 * DATA.std / math.sqrt(n)).all())
    assert bool(((std / DATA.std - 1).abs() < 5 / math.sqrt(2 * n)).all()), std


# --------------------------------------------------------------------------- noise and generators

STOCHASTIC_NAMES = ["ddpm", "euler_ancestral", "dpm2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                    "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm"]


@pytest.mark.parametrize("name", STOCHASTIC_NAMES)
def test_noise_depends_only_on_the_item_generator(name: str) -> None:
    sigmas = sigmas_karras(6, 0.02, 10.0).float()
    x = DATA.sample((3, 2, 4), sigma=10.0, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    sampler = make(name)
    batch = sampler.sample(DATA.denoise, x.clone(), sigmas, generator=generators_from_seed(100, 3))
    again = sampler.sample(DATA.denoise, x.clone(), sigmas, generator=generators_from_seed(100, 3))
    assert torch.equal(batch, again)
    for i in range(3):
        alone = sampler.sample(DATA.denoise, x[i : i + 1].clone(), sigmas, generator=[torch.Generator().manual_seed(100 + i)])
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=1e-6, atol=1e-6)
    other = sampler.sample(DATA.denoise, x.clone(), sigmas, generator=generators_from_seed(200, 3))
    assert not torch.allclose(other, batch)


def test_brownian_tree_increments() -> None:
    sigmas = sigmas_exponential(40, 0.002, 20.0).tolist()
    x = torch.zeros(1, 1, 64, 64)
    noise = BrownianTreeNoise(x, sigmas, torch.Generator().manual_seed(0))
    z = torch.stack([noise(a, b).flatten() for a, b in itertools.pairwise(sigmas[:-1])])  # (39, 4096)
    # Standard normal, and independent over disjoint intervals.
    assert bool(((z.std(dim=1) - 1).abs() < 0.07).all())
    corr = torch.corrcoef(z) - torch.eye(z.shape[0])
    assert corr.abs().max().item() < 0.08
    # Overlapping intervals [a, m] and [a, b] correlate as sqrt((a - m) / (a - b)).
    a, b = sigmas[10], sigmas[11]
    m = math.sqrt(a * b)
    c = torch.corrcoef(torch.stack([noise(a, m).flatten(), noise(a, b).flatten()]))[0, 1].item()
    assert c == pytest.approx(math.sqrt((a - m) / (a - b)), abs=0.03)


def test_brownian_tree_is_a_function_of_the_seed_not_the_grid() -> None:
    x = torch.zeros(2, 1, 8, 8)
    coarse = BrownianTreeNoise(x, sigmas_karras(10, 0.01, 10.0).tolist(), generators_from_seed(3, 2))
    fine = BrownianTreeNoise(x, sigmas_karras(40, 0.01, 10.0).tolist(), generators_from_seed(3, 2))
    w_coarse, w_fine = coarse.w(1.0), fine.w(1.0)
    assert (w_coarse - w_fine).abs().max().item() < 0.05 * w_coarse.abs().max().item()
    other = BrownianTreeNoise(x, sigmas_karras(10, 0.01, 10.0).tolist(), generators_from_seed(9, 2))
    assert (other.w(1.0) - w_coarse).abs().max().item() > 0.3


def test_dpmpp_sde_same_seed_converges_with_steps() -> None:
    # Shared Brownian path: same seed at 40 and 80 steps gives nearly the same sample (strong
    # convergence), unlike a different seed.
    x = DATA.sample((2, 2, 16), sigma=10.0, generator=torch.Generator().manual_seed(6))
    sampler = make("dpmpp_sde")

    def at(steps: int, seed: int) -> torch.Tensor:
        return sampler.sample(DATA.denoise, x.clone(), sigmas_karras(steps, 0.01, 10.0), generator=generators_from_seed(seed, 2))

    same = (at(40, 1) - at(80, 1)).abs().mean().item()
    different = (at(40, 1) - at(80, 2)).abs().mean().item()
    assert same < 0.1 * different, (same, different)


# --------------------------------------------------------------------------- input checks


def test_bad_inputs_raise_clear_errors() -> None:
    x = torch.zeros(2, 2, 3)
    sampler = make("euler")
    with pytest.raises(ShapeError, match="1-D tensor"):
        sampler.sample(DATA.denoise, x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="must decrease"):
        sampler.sample(DATA.denoise, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="only the last may be 0"):
        sampler.sample(DATA.denoise, x, torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ShapeError, match="one generator per batch item"):
        make("euler_ancestral").sample(DATA.denoise, x, torch.tensor([1.0, 0.0]), generator=generators_from_seed(0, 3))
    with pytest.raises(ValueError, match="solver_type"):
        make("dpmpp_2m_sde", solver_type="euler")
    with pytest.raises(TypeError, match="unknown config key"):
        make("ddim", etaa=1.0)


def test_options_and_stochastic_flags() -> None:
    assert make("ddim").stochastic is False and make("ddim", eta=0.5).stochastic is True
    assert make("euler").stochastic is False and make("euler", s_churn=1.0).stochastic is True
    assert make("dpmpp_3m_sde").stochastic is True and make("dpmpp_3m_sde", eta=0.0).stochastic is False
    assert make("euler_ancestral").options() == {"eta": 1.0, "s_noise": 1.0}
    assert "order=2" in repr(make("unipc"))
    # Float32 sampling with a float64 grid keeps the input dtype.
    x = torch.zeros(1, 2, 2)
    assert make("dpmpp_2m").sample(DATA.denoise, x, sigmas_karras(3, 0.1, 1.0)).dtype == torch.float32

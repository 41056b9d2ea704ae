"""The few-step solvers and options: dpmpp_3m, deis, ipndm, ipndm_v, UniPC's and DPM-Solver++'s
lower_order_final / euler_at_final, and every sampler's final_step.

Closed-form Gaussian data (exact denoiser, exact PF-ODE solution) for the orders, diffusers'
schedulers on the same exact denoiser (wrapped as the eps model of a discrete VP schedule, on
the very same sigma grid) for parity, and the exact velocity of Gaussian data on a flow-matching
grid that starts at sigma = inf.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import latentkit
from latentkit.diffusion import ParameterizedDenoiser
from latentkit.samplers import BUILTIN_SAMPLERS
from latentkit.samplers.base import lowered_order
from latentkit.samplers.deis import deis_weights, phi
from latentkit.schedules.flow import FlowSchedule
from latentkit.schedules.spacing import sigmas_karras
from latentkit.testing.checks import karras_sigmas
from latentkit.testing.gaussian import GaussianData
from test_flow import MU, ExactVelocity, S

# diffusers' schedulers trip numpy 2 "copy keyword" deprecation warnings.
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DATA = GaussianData(mean=[0.5, -0.3], std=[0.8, 1.3])
KIT_DATA = GaussianData(mean=[0.5, -0.3], std=[0.8, 0.4])  # the conformance kit's order problem
NEW = ["dpmpp_3m", "deis", "ipndm", "ipndm_v"]


def make(name: str, **config: Any) -> Any:
    return latentkit.create("sampler", name, **config)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trace(sampler: Any, denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
          seed: int = 0) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The sample and the callback records (x and denoised cloned)."""
    seen: list[dict[str, Any]] = []

    def record(info: dict[str, Any]) -> None:
        seen.append({**info, "x": info["x"].clone(), "denoised": info["denoised"].clone()})

    out = sampler.sample(denoise, x.clone(), sigmas, callback=record, generator=gen(seed))
    return out, seen


# --------------------------------------------------------------------------- declarations


def test_new_samplers_declare_order_calls_and_options() -> None:
    expected = {
        "dpmpp_3m": ({"lower_order_final": True, "euler_at_final": False, "full_third_order": False}, 2),
        "deis": ({"order": 3, "prediction": "data", "lower_order_final": True, "euler_at_final": False}, 2),
        "ipndm": ({"order": 4}, 2),
        "ipndm_v": ({"order": 4}, 2),
    }
    for name, (options, order) in expected.items():
        sampler = make(name)
        assert sampler.options() == options and sampler.order == order and not sampler.stochastic, name
        assert [sampler.model_calls(n) for n in (1, 2, 7)] == [1, 2, 7], name
        assert name in BUILTIN_SAMPLERS and repr(sampler).startswith(type(sampler).__name__), name
    assert make("deis", order=1).order == 1 and make("ipndm", order=1).order == 1
    assert make("dpmpp_3m", full_third_order=True).order == 3
    assert make("unipc").options() == {"order": 2, "variant": "bh2", "use_corrector": True,
                                       "lower_order_final": True, "euler_at_final": False}
    assert make("dpmpp_2m").options() == {"lower_order_final": False, "euler_at_final": False}
    for bad in ({"order": 4}, {"prediction": "v"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make("deis", **bad)
    with pytest.raises(ValueError, match="order"):
        make("ipndm", order=5)


def test_every_registered_sampler_takes_final_step_as_a_keyword() -> None:
    for info in latentkit.list_components("sampler"):
        sampler = make(info.name, final_step="denoise")
        assert sampler.final_step == "denoise" and make(info.name).final_step == "zero", info.name
        assert "final_step='denoise'" in repr(sampler) and "final_step" not in repr(make(info.name)), info.name
        parameter = inspect.signature(type(sampler)).parameters["final_step"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default == "zero", info.name
        with pytest.raises(ValueError, match=r"final_step must be one of \['zero', 'denoise'\]"):
            make(info.name, final_step="sigma_min")


def test_lower_order_final_is_the_diffusers_rule() -> None:
    def orders(steps: int, **flags: bool) -> list[int]:
        return [lowered_order(min(3, i + 1), i, steps, **flags) for i in range(steps)]

    assert orders(6, lower_order_final=True, euler_at_final=False) == [1, 2, 3, 3, 2, 1]
    assert orders(14, lower_order_final=True, euler_at_final=False)[-3:] == [3, 2, 1]
    assert orders(15, lower_order_final=True, euler_at_final=False)[-3:] == [3, 3, 3]  # 15 steps or more: none
    assert orders(15, lower_order_final=True, euler_at_final=True)[-3:] == [3, 3, 1]
    assert orders(6, lower_order_final=False, euler_at_final=False) == [1, 2, 3, 3, 3, 3]


def test_deis_weights_integrate_polynomials_exactly() -> None:
    """The weights against closed-form integrals: data form ``int_0^h e^{u-h} p(u) du`` and eps form
    ``int_0^{-h} e^u p(u) du`` for p = 1, u, u^2 (so the Lagrange weights reproduce any quadratic)."""
    assert phi(0, 0.3) == pytest.approx(math.exp(0.3), rel=1e-15)
    assert phi(2, -1e-3) == pytest.approx((math.expm1(-1e-3) + 1e-3) / 1e-6, rel=1e-9)
    assert phi(3, -2.5) == pytest.approx((math.exp(-2.5) - 1 + 2.5 - 2.5**2 / 2) / (-2.5) ** 3, rel=1e-13)
    for h in (1e-3, 0.3, 2.0):
        nodes = [0.0, -0.4 * h, -1.1 * h]
        w = deis_weights(nodes, h, "data")
        exact = [1 - math.exp(-h), h - 1 + math.exp(-h), h * h - 2 * (h - 1 + math.exp(-h))]
        for m, value in enumerate(exact):
            assert sum(wj * n**m for wj, n in zip(w, nodes)) == pytest.approx(value, rel=1e-9, abs=1e-14)
        nodes = [0.0, 0.4 * h, 1.1 * h]
        w = deis_weights(nodes, h, "eps")
        e = math.exp(-h)  # int_0^{-h} e^u u^m du = [e^u (u^m - m u^{m-1} + ...)]
        exact = [e - 1, e * (-h - 1) + 1, e * (h * h + 2 * h + 2) - 2]
        for m, value in enumerate(exact):
            assert sum(wj * n**m for wj, n in zip(w, nodes)) == pytest.approx(value, rel=1e-9, abs=1e-14)


# --------------------------------------------------------------------------- orders on Gaussian data


def observed_orders(name: str, config: dict[str, Any], steps: tuple[int, ...] = (32, 64, 128, 256),
                    grid: Callable[[int], torch.Tensor] = karras_sigmas) -> tuple[list[float], list[float]]:
    """rms errors at sigma_min (the callback's last x; the step to 0 is a fixed-size step) against
    the exact ODE solution, and log2 of their ratios, as ``check_sampler_order`` measures."""
    sampler = make(name, **config)
    x = KIT_DATA.sample((32, 2, 2, 2), sigma=float(grid(steps[0])[0]), generator=gen(361))
    errors = []
    for n in steps:
        sigmas = grid(n)
        _, seen = trace(sampler, KIT_DATA.denoise, x, sigmas)
        exact = KIT_DATA.ode_solution(x, float(sigmas[0]), float(sigmas[-2]))
        errors.append(((seen[-1]["x"] - exact) / KIT_DATA._bcast(KIT_DATA.std, exact)).pow(2).mean().sqrt().item())
    return errors, [math.log2(a / b) for a, b in itertools.pairwise(errors)]


# (name, config, lowest and highest observed order from 32 to 256 Karras steps, 20 -> 0.02).
ORDERS = [
    ("deis", {"order": 1}, 0.95, 1.1),
    ("deis", {"order": 2}, 1.95, 2.35),
    ("deis", {"order": 3}, 2.85, 3.25),                          # measured 3.08, 3.02, 2.98
    ("deis", {"order": 2, "prediction": "eps"}, 1.95, 2.2),
    ("deis", {"order": 3, "prediction": "eps"}, 2.75, 3.2),      # 2.86, 2.98, 3.07
    ("dpmpp_3m", {}, 1.6, 2.1),                                  # 1.70, 1.87, 1.94: second order
    ("dpmpp_3m", {"lower_order_final": False}, 1.6, 2.1),
    ("dpmpp_3m", {"full_third_order": True}, 2.85, 3.25),        # the Taylor weight: third order
    ("ipndm", {}, 1.95, 2.2),                                    # fixed weights: 2 on a non-uniform grid
    ("ipndm_v", {}, 3.5, 3.95),                                  # variable-step AB4: 3.68, 3.80, 3.74
    ("ipndm_v", {"order": 3}, 2.75, 3.1),
]


@pytest.mark.parametrize(("name", "config", "lo", "hi"), ORDERS, ids=[f"{n}{c}" for n, c, *_ in ORDERS])
def test_solver_reaches_its_order_on_a_karras_grid(name: str, config: dict[str, Any], lo: float, hi: float) -> None:
    errors, orders = observed_orders(name, config)
    assert all(lo <= o <= hi for o in orders), (errors, orders)


def test_dpmpp_3m_is_second_order_because_of_its_second_difference_weight() -> None:
    """DPM-Solver++(3M) as diffusers runs it weights D2 by -phi_3 where the Taylor expansion asks
    for -2 phi_3, so its third-order step is not exact for a D quadratic in lambda (a local error
    h^3 D'' / 12); deis(order=3) is the full-weight rule and is exact for it."""
    lams = [0.0, 0.4, 0.9, 1.5]  # the third step, 0.9 -> 1.5, has the history at 0, 0.4, 0.9
    sigmas = torch.tensor([math.exp(-v) for v in lams], dtype=torch.float64)

    def quadratic(v: float) -> float:
        return 0.3 - 0.7 * v + 0.9 * v * v

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # D independent of x
        return torch.full_like(x, quadratic(-math.log(float(sigma[0]))))

    def exact_step(x: float, a: float, b: float) -> float:
        """x(b) for dx/dlambda = D - x from x(a): int_0^h e^{u-h} (c0 + c1 u + c2 u^2) du."""
        h, e = b - a, math.exp(-(b - a))
        c0, c1, c2 = quadratic(a), -0.7 + 1.8 * a, 0.9
        return e * x + c0 * (1 - e) + c1 * (h - 1 + e) + c2 * (h * h - 2 * (h - 1 + e))

    for name, config, exact in (("deis", {}, True), ("dpmpp_3m", {}, False),
                                ("dpmpp_3m", {"full_third_order": True}, True)):
        sampler = make(name, lower_order_final=False, **config)
        out, seen = trace(sampler, denoise, torch.ones(1, 1, dtype=torch.float64), sigmas)
        reference = exact_step(float(seen[-1]["x"]), lams[2], lams[3])
        if exact:
            assert float(out) == pytest.approx(reference, rel=1e-12, abs=1e-13)
        else:
            assert abs(float(out) - reference) > 1e-3


def test_ipndm_equals_its_variable_step_version_on_a_uniform_grid() -> None:
    """On equal steps the fixed weights are the variable-step Adams-Bashforth weights, so the two
    agree to rounding, and there ipndm converges faster than its second order on Karras grids
    (measured 2.79, 2.75 from 64 to 256 steps: AB4 held back by the AB2 warm-up step's h^3)."""
    x = KIT_DATA.sample((8, 2, 3), sigma=10.0, generator=gen(2))

    def uniform(n: int) -> torch.Tensor:
        return torch.cat([torch.linspace(10.0, 0.05, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])

    for n in (5, 12):
        a = make("ipndm").sample(KIT_DATA.denoise, x.clone(), uniform(n))
        b = make("ipndm_v").sample(KIT_DATA.denoise, x.clone(), uniform(n))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    karras = sigmas_karras(12, 0.05, 10.0).double()
    a = make("ipndm").sample(KIT_DATA.denoise, x.clone(), karras)
    b = make("ipndm_v").sample(KIT_DATA.denoise, x.clone(), karras)
    assert (a - b).abs().max() > 1e-4  # different weights on a non-uniform grid
    _, orders = observed_orders("ipndm", {}, steps=(64, 128, 256), grid=uniform)
    assert all(o > 2.6 for o in orders), orders


# --------------------------------------------------------------------------- against diffusers

_SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def diffusers_scheduler(cls: str, steps: int, **kwargs: Any) -> Any:
    """A diffusers VP scheduler set to ``steps``, its sigmas made float64 so that both sides
    compute their coefficients from the same float64 levels."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, cls)(**_SD_BETAS, **kwargs)
    scheduler.set_timesteps(steps)
    scheduler.sigmas = scheduler.sigmas.double()
    return scheduler


def diffusers_vp(scheduler: Any, x: torch.Tensor) -> torch.Tensor:
    """Run ``scheduler`` on ``z = x / sqrt(1 + sigma_0^2)`` with the exact eps of DATA, evaluated
    at the scheduler's own sigma of each step (not at its rounded integer timestep); return the
    sample in sigma space, ``x = z sqrt(1 + sigma_last^2)``."""
    sigmas = scheduler.sigmas
    z = x / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i, t in enumerate(scheduler.timesteps):
        assert scheduler.step_index in (None, i)
        sigma = float(sigmas[i])
        x_sigma = z * math.sqrt(1 + sigma**2)
        eps = (x_sigma - DATA.denoise(x_sigma, sigma)) / sigma
        z = scheduler.step(eps, t, z).prev_sample
    return z * math.sqrt(1 + float(sigmas[-1]) ** 2)


# DPMSolverMultistepScheduler casts the sample to float32 in every step, hence 1e-5 there (observed
# at most 2.2e-6); DEIS and UniPC stay in float64 (observed at most 8e-14).
_F32, _F64 = 1e-5, 1e-11
_KARRAS_ZERO = {"use_karras_sigmas": True}              # karras levels, then 0 (final_sigmas_type="zero")
_SIGMA_MIN = {"final_sigmas_type": "sigma_min"}         # timestep levels ending at sigma(t=0), no step to 0
PARITY = [
    ("dpmpp_3m", {}, "DPMSolverMultistepScheduler", {"solver_order": 3, **_KARRAS_ZERO}, _F32),
    ("dpmpp_3m", {"lower_order_final": False}, "DPMSolverMultistepScheduler",
     {"solver_order": 3, "lower_order_final": False, **_KARRAS_ZERO}, _F32),
    ("dpmpp_3m", {"euler_at_final": True}, "DPMSolverMultistepScheduler",
     {"solver_order": 3, "euler_at_final": True, **_SIGMA_MIN}, _F32),
    ("dpmpp_3m", {"lower_order_final": False}, "DPMSolverMultistepScheduler",
     {"solver_order": 3, "lower_order_final": False, **_SIGMA_MIN}, _F32),
    ("dpmpp_2m", {"lower_order_final": True}, "DPMSolverMultistepScheduler", {"solver_order": 2, **_SIGMA_MIN}, _F32),
    ("dpmpp_2m", {"euler_at_final": True}, "DPMSolverMultistepScheduler",
     {"solver_order": 2, "lower_order_final": False, "euler_at_final": True, **_SIGMA_MIN}, _F32),
    ("deis", {"order": 2}, "DPMSolverMultistepScheduler", {"solver_order": 2, "solver_type": "heun", **_KARRAS_ZERO}, _F32),
    ("deis", {"prediction": "eps"}, "DEISMultistepScheduler", {"solver_order": 3}, _F64),
    ("deis", {"prediction": "eps", "order": 2}, "DEISMultistepScheduler", {"solver_order": 2}, _F64),
    ("deis", {"prediction": "eps", "lower_order_final": False}, "DEISMultistepScheduler",
     {"solver_order": 3, "lower_order_final": False}, _F64),
    *[("unipc", {"variant": v, "order": p, "use_corrector": c}, "UniPCMultistepScheduler",
       {"solver_type": v, "solver_order": p, **({} if c else {"disable_corrector": list(range(64))}),
        **(_KARRAS_ZERO if v == "bh2" else _SIGMA_MIN)}, _F64)
      for v in ("bh1", "bh2") for p in (1, 2, 3) for c in (True, False)],
    ("unipc", {"variant": "bh2", "order": 3, "lower_order_final": False}, "UniPCMultistepScheduler",
     {"solver_order": 3, "lower_order_final": False, **_SIGMA_MIN}, _F64),
]


@pytest.mark.parametrize(("name", "config", "cls", "kwargs", "tol"), PARITY,
                         ids=[f"{n}{c}-{k}" for n, c, _, k, _ in PARITY])
@pytest.mark.parametrize("steps", [5, 8, 20])
def test_multistep_solvers_match_diffusers(name: str, config: dict[str, Any], cls: str, kwargs: dict[str, Any],
                                           tol: float, steps: int) -> None:
    """Same exact denoiser, same float64 sigma grid (the scheduler's, given to latentkit as it is:
    Karras levels then 0, or timestep levels down to sigma(t = 0) = 0.0292 for final_sigmas_type
    "sigma_min" and DEIS). UniPC bh1 runs on the latter: diffusers' bh1 step to sigma = 0 divides
    by B(h) = -inf and returns NaN."""
    scheduler = diffusers_scheduler(cls, steps, **kwargs)
    sigmas = scheduler.sigmas
    assert float(sigmas[-1]) == (0.0 if kwargs.get("use_karras_sigmas") else pytest.approx(0.0292, abs=1e-4))
    x = DATA.sample((4, 2, 3, 3), sigma=float(sigmas[0]), generator=gen(0))
    ref = diffusers_vp(scheduler, x.clone())
    out = make(name, **config).sample(DATA.denoise, x.clone(), sigmas)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- final_step, euler_at_final


@pytest.mark.parametrize("name", sorted(BUILTIN_SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 6])
def test_denoise_final_step_integrates_to_sigma_last_then_denoises(name: str, steps: int) -> None:
    """final_step="denoise" on a grid ending in 0 = the same sampler on the grid without its 0,
    then D(x, sigma_last): same noise draws, model_calls calls, one callback per step."""
    sigmas = karras_sigmas(steps)
    x = DATA.sample((3, 2, 4), sigma=float(sigmas[0]), generator=gen(11))
    counted = GaussianData(DATA.mean, DATA.std)
    out, seen = trace(make(name, final_step="denoise"), counted.denoise, x, sigmas, seed=5)
    assert counted.calls == make(name, final_step="denoise").model_calls(steps) == make(name).model_calls(steps)
    to_last = make(name).sample(DATA.denoise, x.clone(), sigmas[:-1], generator=gen(5)) if steps > 1 else x
    torch.testing.assert_close(out, DATA.denoise(to_last, float(sigmas[-2])), rtol=0, atol=0)
    assert [r["i"] for r in seen] == list(range(steps))
    assert seen[-1]["sigma"] == float(sigmas[-2]) and seen[-1]["sigma_next"] == 0.0
    torch.testing.assert_close(seen[-1]["x"], to_last, rtol=0, atol=0)


# Samplers whose own step to 0 is not x = D(x, sigma_last) (lms, plms: Adams-Bashforth on the
# slope) or whose last steps drop order where the grid ends (below 15 steps for dpmpp_3m and
# deis, at any step count for unipc): final_step="denoise" gives them a different sample.
DIFFERENT_BOTH_WAYS = {6: {"lms", "plms", "unipc", "dpmpp_3m", "deis"}, 20: {"lms", "plms", "unipc"}}


@pytest.mark.parametrize("steps", sorted(DIFFERENT_BOTH_WAYS))
def test_samplers_whose_step_to_zero_is_the_denoiser_give_the_same_sample_both_ways(steps: int) -> None:
    sigmas = karras_sigmas(steps)
    x = DATA.sample((3, 2, 4), sigma=float(sigmas[0]), generator=gen(12))
    different = set()
    for name in BUILTIN_SAMPLERS:
        zero = make(name).sample(DATA.denoise, x.clone(), sigmas, generator=gen(6))
        denoise = make(name, final_step="denoise").sample(DATA.denoise, x.clone(), sigmas, generator=gen(6))
        gap = (zero - denoise).abs().max().item()
        if gap > 1e-12:
            different.add(name)
            assert gap > 1e-6, (name, gap)  # a real difference, not rounding
    assert different == DIFFERENT_BOTH_WAYS[steps]


@pytest.mark.parametrize(("name", "config"), [
    ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("deis", {}), ("deis", {"prediction": "eps"}), ("deis", {"order": 2}),
    ("unipc", {}), ("unipc", {"use_corrector": False}), ("unipc", {"variant": "bh1", "order": 3}),
])
@pytest.mark.parametrize("final_step", ["zero", "denoise"])
def test_euler_at_final_changes_only_the_last_step(name: str, config: dict[str, Any], final_step: str) -> None:
    """On a grid that ends at sigma_last > 0, and with final_step="denoise", every step before the
    one into sigma_last is unchanged and that one becomes first order, x' = (s'/s) x + (1 - s'/s) D
    (for UniPC from the corrected x). On a grid ending in 0 with final_step="zero" the last step
    is x = D at any order: euler_at_final changes nothing, as in diffusers with zero final sigma."""
    sigmas = karras_sigmas(8)
    x = DATA.sample((3, 2, 4), sigma=float(sigmas[0]), generator=gen(13))
    base = {**config, "lower_order_final": False, "final_step": final_step}
    for grid in (sigmas[:-1], sigmas):
        plain, seen = trace(make(name, **base), DATA.denoise, x, grid)
        euler, seen_euler = trace(make(name, **base, euler_at_final=True), DATA.denoise, x, grid)
        ends_in_zero = float(grid[-1]) == 0.0
        if ends_in_zero and final_step == "zero":
            assert torch.equal(plain, euler)
            continue
        unchanged = len(seen) - 1 if ends_in_zero else len(seen)  # records before the new last state
        for a, b in zip(seen[:unchanged], seen_euler[:unchanged], strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["denoised"], b["denoised"])
        into_last = seen[unchanged - 1]
        ratio = into_last["sigma_next"] / into_last["sigma"]
        reached = seen_euler[-1]["x"] if ends_in_zero else euler  # the state at sigma_last
        torch.testing.assert_close(reached, ratio * into_last["x"] + (1 - ratio) * into_last["denoised"],
                                   rtol=1e-12, atol=1e-12)
        assert (plain - euler).abs().max() > 1e-6


# --------------------------------------------------------------------------- flow matching: sigma = inf


def flow_errors(name: str, config: dict[str, Any], steps: tuple[int, ...]) -> tuple[list[float], list[float]]:
    """rms errors (data-std units) at sigma_min and of the final sample, from pure noise on
    FlowSchedule(shift=3) grids, against the exact solution x(sigma) = MU + sqrt(S^2 + sigma^2) noise."""
    schedule = FlowSchedule(shift=3.0)
    model = ParameterizedDenoiser(ExactVelocity(), schedule, "flow")
    noise = torch.randn(32, 2, 2, 2, generator=gen(3), dtype=torch.float64)
    at_min, final = [], []
    for n in steps:
        sigmas = schedule.sigmas(n, dtype=torch.float64)
        assert math.isinf(float(sigmas[0]))
        out, seen = trace(make(name, **config), model.denoise, noise, sigmas)
        assert math.isinf(seen[0]["sigma"]) and [r["i"] for r in seen] == list(range(n))
        exact_min = MU + math.sqrt(S**2 + float(sigmas[-2]) ** 2) * noise
        at_min.append(float(((seen[-1]["x"] - exact_min) / S).pow(2).mean().sqrt()))
        final.append(float(((out - (MU + S * noise)) / S).pow(2).mean().sqrt()))
    return at_min, final


@pytest.mark.parametrize(("name", "config"), [
    ("dpmpp_3m", {}), ("deis", {}), ("deis", {"order": 2}), ("deis", {"prediction": "eps"}), ("ipndm", {}),
    ("ipndm_v", {}), ("unipc", {"variant": "bh1"}), ("unipc", {"euler_at_final": True}),
    ("dpmpp_3m", {"final_step": "denoise"}), ("deis", {"final_step": "denoise"}), ("heun", {"final_step": "denoise"}),
])
def test_solvers_converge_from_pure_noise_on_a_flow_grid(name: str, config: dict[str, Any]) -> None:
    """The first step from sigma = inf is first order, so at most order 2 is asserted at sigma_min
    (from 128 to 256 steps). Below 32 steps the errors need not fall monotonically: the data-form
    solvers' first lambda steps from sigma_1 ~ steps are long on this grid."""
    at_min, final = flow_errors(name, config, (32, 64, 128, 256))
    # The sample itself (after the step to 0, x = D(x, sigma_min), whose bias ~ sigma_min^2
    # falls more slowly) improves by at least 4x over the eightfold steps.
    assert at_min == sorted(at_min, reverse=True) and final[-1] < final[0] / 4, (at_min, final)
    observed = math.log2(at_min[-2] / at_min[-1])
    assert observed > min(make(name, **config).order, 2) - 0.25, (at_min, observed)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("final_step", ["zero", "denoise"])
def test_one_step_from_pure_noise_is_the_denoiser(name: str, final_step: str) -> None:
    schedule = FlowSchedule(shift=3.0)
    model = ParameterizedDenoiser(ExactVelocity(), schedule, "flow")
    noise = torch.randn(2, 2, 3, 3, generator=gen(4), dtype=torch.float64)
    out = make(name, final_step=final_step).sample(model.denoise, noise, schedule.sigmas(1, dtype=torch.float64))
    torch.testing.assert_close(out, model.denoise(noise, math.inf))

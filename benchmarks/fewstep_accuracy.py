"""Few-step accuracy on one exact denoiser: latentkit's samplers against diffusers' schedulers.

Problem: a mixture of four diagonal Gaussians over a (4, 2, 2) latent (weights 0.4 / 0.3 / 0.2 /
0.1, means ~N(0, 0.5^2), stds in [0.3, 0.7], fixed seed: ``make_problem``), whose exact denoiser
``D(x, sigma)`` is closed form (``latentkit.testing.gaussian.GaussianMixtureData``) but whose
probability-flow ODE is nonlinear. Both libraries see the same discrete VP model: Stable
Diffusion's ``scaled_linear`` schedule (1000 steps, sigma 0.0292 .. 14.61) and the exact
denoiser at every noise level a sampler or scheduler asks for.

Reference: the exact PF-ODE solution at sigma = 0 from the same starting noise ``n`` at the
terminal level sigma_max (Heun, ``REF_STEPS`` and twice as many steps on a Karras grid down to
1e-5; the difference of the two is printed). Error: RMS distance to it over ``--draws`` starting
draws (fixed seed), in units of the data standard deviation. Budgets: for B model calls a
solver runs the most steps whose (counted) calls fit in B.

* latentkit: every deterministic registered sampler (``latentkit.list_components("sampler")``;
  stochastic ones and ``requires_consistency_model`` skipped, a few options added, e.g. unipc
  order 2/3 and bh1/bh2, eta = 0 of the SDE ones) x every spacing of the schedule
  (``schedule.spacings``), each ending in 0 or stopping at sigma_min (``+smin``), plus the
  named explicit grids of :func:`extra_schedules` (schedules optimised with
  ``latentkit.diffusion.schedule_optimization`` on held-out draws, where it exists);
  ``x = n * sigmas[0]``.
* diffusers: the exact denoiser as an epsilon-prediction model (:class:`EpsModel`) at the noise
  level each scheduler's ``step`` assumes for that call (:func:`implied_sigma`); every
  deterministic scheduler that applies (:data:`DIFFUSERS_FAMILIES`) x ``timestep_spacing`` x
  sigma flags (karras / exponential / beta / lu lambdas where supported) x
  ``final_sigmas_type`` (zero, ``sigma_min``: ``+smin``), and diffusers' AYS timesteps where
  ``set_timesteps`` takes ``timesteps``; SD's scheduler config (``steps_offset=1``,
  ``set_alpha_to_one=False``, ``skip_prk_steps=True``) unless a variant changes it; latents
  start at ``n * init_noise_sigma``. Runs that raise or return non-finite values (diffusers:
  UniPC bh1 with a final 0, beta sigmas at 50 steps, ...) are listed as failed, not counted.

Best errors are compared twice: over every grid, and over the standard grids both libraries
have (timestep spacings, karras, exponential / log-linear, +smin; no AYS, no optimised grid).

Starting-noise convention: the k-diffusion one (latentkit; diffusers' Euler-type schedulers with
linspace / trailing spacing) starts from ``x = sigma_max n``, diffusers' VP schedulers (and the
Euler-type ones with leading spacing) from ``x_t = n``, i.e. ``x = sqrt(1 + sigma_max^2) n`` in
sigma space. These are two equally valid priors, not solver errors, so each run is scored
against the exact solution from its own convention (both references are computed; their
distance is printed, 2.6e-3, more than the best errors at 50 calls). A late start (leading
spacing) or a last step that stops at sigma_min counts as error. Also printed: the error of an
exact solve to sigma_min followed by one denoising step ``x = D(x, sigma_min)``, which solvers
whose last step is such a jump approach at many steps (multistep ones in sigma, LMS and PLMS,
go below it).

Validation of the diffusers wrapper: (1) on the same grid a diffusers scheduler and the
latentkit sampler of the same algorithm agree to float32 precision (``PAIR_TOL``; a 1% error
in the wrapper's sigma shows as 5e-3); (2) at 1000 steps every scheduler family is within
``SANITY_TOL`` of the reference.

    python benchmarks/fewstep_accuracy.py [--quick] [--draws N] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import inspect
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

import latentkit
from latentkit.schedules.spacing import sigmas_karras
from latentkit.testing.gaussian import GaussianMixtureData

BUDGETS = (3, 5, 8, 10, 20, 50)
QUICK_BUDGETS = (5, 10)
REF_STEPS = 1024           # Heun steps of the reference (and twice as many for its check)
REF_SIGMA_MIN = 1e-5       # the reference's last level before 0 (its final Euler step ~1e-9)
SANITY_STEPS = 1000        # every diffusers family must be within SANITY_TOL here
SANITY_TOL = 5e-3          # data-std units; first-order schedulers reach ~4e-3 at 1000 steps
PAIR_STEPS = 10            # diffusers vs latentkit on one grid
PAIR_TOL = 1e-5            # float32 arithmetic inside diffusers

# --------------------------------------------------------------------------- problem


def make_problem() -> GaussianMixtureData:
    """The mixture: 4 components over a (4, 2, 2) latent, fixed seed."""
    gen = torch.Generator().manual_seed(20240)
    k, event = 4, (4, 2, 2)
    # Modes ~5 component stds apart: clearly multimodal, yet few trajectories start so close to
    # a boundary between modes that the RMS error hinges on one draw (with means ~N(0, 1) a
    # 0.2% change of the starting noise moved one solver's RMS error by 3x).
    means = 0.5 * torch.randn((k, *event), generator=gen, dtype=torch.float64)
    stds = 0.3 + 0.4 * torch.rand((k, *event), generator=gen, dtype=torch.float64)
    return GaussianMixtureData(weights=[0.4, 0.3, 0.2, 0.1], means=means, stds=stds)


def make_schedule() -> Any:
    """latentkit's Stable Diffusion schedule (``scaled_linear``, 1000 steps)."""
    return latentkit.create("schedule", "scaled_linear")


@dataclass(frozen=True)
class Reference:
    """Exact PF-ODE end points (sigma = 0) of the starting noise, per convention."""

    noise: torch.Tensor            # (R, *event) unit Gaussian draws
    sigma_max: float               # terminal level of the model
    solutions: dict[str, torch.Tensor]  # "sigma": from sigma_max n; "vp": from sqrt(1 + sigma_max^2) n
    convergence: float             # RMS |steps - 2 steps| / data std
    convention_gap: float          # RMS |vp - sigma| / data std
    floor: float                   # error of the exact solve to sigma_min, then x = D(x, sigma_min)


def solve_ode(data: GaussianMixtureData, x: torch.Tensor, sigma_from: float, steps: int) -> torch.Tensor:
    """Heun on a Karras grid ``sigma_from -> REF_SIGMA_MIN -> 0``."""
    heun = latentkit.create("sampler", "heun")
    return heun.sample(data.denoise, x, sigmas_karras(steps, REF_SIGMA_MIN, sigma_from))


def make_reference(data: GaussianMixtureData, sigma_max: float, sigma_min: float, draws: int,
                   steps: int) -> Reference:
    """The two references from one set of draws (seed 0), checked against twice the steps, and
    the floor of every grid that ends ``sigma_min -> 0`` (one last denoising step)."""
    noise = torch.randn((draws, *data.event_shape), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    x = torch.cat([noise * sigma_max, noise * math.sqrt(1.0 + sigma_max**2)])  # (2R, ...)
    fine = solve_ode(data, x, sigma_max, steps)
    finer = solve_ode(data, x, sigma_max, 2 * steps)
    sig, vp = finer[:draws], finer[draws:]
    heun = latentkit.create("sampler", "heun")
    at_min = heun.sample(data.denoise, x[:draws], sigmas_karras(2 * steps, sigma_min, sigma_max)[:-1])
    floor = rms(data.denoise(at_min, sigma_min) - sig, data)
    return Reference(noise=noise, sigma_max=sigma_max, solutions={"sigma": sig, "vp": vp},
                     convergence=rms(fine - finer, data), convention_gap=rms(vp - sig, data), floor=floor)


def rms(diff: torch.Tensor, data: GaussianMixtureData) -> float:
    """RMS of ``diff`` in data-std units (inf when not finite)."""
    value = float(diff.double().pow(2).mean().sqrt()) / data.data_std
    return value if math.isfinite(value) else math.inf


@dataclass
class Result:
    """One run: a solver with one configuration on one grid at one budget."""

    library: str     # "latentkit" | "diffusers"
    solver: str      # sampler (with options) / scheduler family
    config: str      # options beyond the solver's defaults ("" for none)
    grid: str        # latentkit spacing or extra schedule / diffusers spacing[+sigma flag]
    budget: int
    steps: int
    calls: int       # model calls actually made
    error: float     # RMS distance to the reference, data-std units (inf: failed)
    standard: bool = True  # a standard grid (no AYS, no optimised schedule): like for like
    note: str = ""   # the error message of a failed run


# --------------------------------------------------------------------------- latentkit

#: The spacings both libraries have (diffusers: timestep_spacing and the sigma flags); the others
#: (AYS, optimised schedules) count for "best overall" but not for "like for like".
STANDARD_SPACINGS = ("leading", "trailing", "linspace", "karras", "exponential", "polyexponential")
#: Samplers :func:`extra_schedules` optimises a schedule for, per budget, when it can.
OPTIMIZED_SAMPLERS = ("dpmpp_2m", "unipc", "ipndm", "deis", "dpmpp_3m")
OPTIMIZE_FINE_STEPS = 64        # fine grid (Karras) of the optimiser's reference and DP
OPTIMIZE_EVALUATIONS = 400      # sampler runs of its refinement stage

#: Options tried on top of each sampler's defaults (dropped where the constructor rejects them
#: or the result is stochastic). eta = 0 turns the SDE / ancestral ones into ODE solvers.
LATENTKIT_OPTIONS: dict[str, list[dict[str, Any]]] = {
    "unipc": [{"variant": "bh1"}, {"order": 3}, {"order": 3, "variant": "bh1"}, {"order": 1}],
    "lms": [{"order": 2}, {"order": 3}],
    "dpmpp_2s_ancestral": [{"eta": 0.0}],
    "dpmpp_2m_sde": [{"eta": 0.0, "solver_type": "heun"}],
    "dpmpp_3m_sde": [{"eta": 0.0}],
    "deis": [{"order": 2}, {"order": 3}, {"order": 4}],
    "ipndm": [{"order": 2}, {"order": 3}, {"order": 4}],
}


@dataclass(frozen=True)
class Solver:
    """A registered sampler created with ``options``."""

    name: str
    options: dict[str, Any]
    sampler: Any

    @property
    def label(self) -> str:
        """``name`` or ``name(option=value, ...)``."""
        return self.name + (f"({_fmt_options(self.options)})" if self.options else "")


def _fmt_options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={getattr(v, '__name__', v)}" for k, v in options.items())


def latentkit_solvers(with_options: bool = True) -> tuple[list[Solver], list[str]]:
    """Every deterministic registered sampler (plus its listed options), and why others were skipped."""
    solvers, skipped, seen = [], [], set()
    for info in latentkit.list_components("sampler"):
        variants = [{}, *(LATENTKIT_OPTIONS.get(info.name, []) if with_options else [])]
        for options in variants:
            try:
                sampler = latentkit.create("sampler", info.name, **options)
            except Exception as exc:  # an option this sampler does not take, or a broken plugin
                if not options:
                    skipped.append(f"{info.name}: cannot be created ({type(exc).__name__}: {exc})")
                continue
            if getattr(sampler, "requires_consistency_model", False):
                skipped.append(f"{info.name}: needs a consistency model")
                break
            if sampler.stochastic:
                if not options:
                    skipped.append(f"{info.name}: stochastic")
                continue
            if repr(sampler) in seen:  # an option equal to the default
                continue
            seen.add(repr(sampler))
            solvers.append(Solver(info.name, options, sampler))
    return solvers, skipped


def steps_for(sampler: Any, budget: int) -> int | None:
    """The most steps whose ``model_calls(steps)`` fits in ``budget``."""
    fits = [s for s in range(1, budget + 1) if sampler.model_calls(s) <= budget]
    return max(fits) if fits else None


@dataclass(frozen=True)
class Problem:
    """What a schedule optimiser needs: the data, the schedule and held-out starting noise
    (another seed than the scored draws, so that optimised schedules are scored out of sample)."""

    data: GaussianMixtureData
    schedule: Any
    noise: torch.Tensor


EXTRA_NOTES: list[str] = []  # why extra schedules are missing (printed with the report)


def extra_schedules(budget: int, problem: Problem | None = None) -> dict[str, torch.Tensor]:
    """Named explicit sigma grids (decreasing, ending in 0) for ``budget`` model calls.

    The extension point for optimised schedules: every latentkit solver whose
    ``model_calls(len(sigmas) - 1)`` fits in ``budget`` runs each grid (its error then counted
    only if the calls it makes fit), and the results take part in "latentkit's best" exactly
    like the spacings. A name ``"label@solver"`` restricts a grid to the solver of that label
    (e.g. ``"optimized@dpmpp_2m"``); the grid is reported as ``label``.

    Filled from ``latentkit.diffusion.schedule_optimization`` when it exists: its
    ``optimize_schedule`` for each of :data:`OPTIMIZED_SAMPLERS` at the most steps the budget
    allows, on ``problem``'s held-out draws (skipped without a problem, e.g. with ``--quick``).
    """
    if problem is None:
        return {}
    try:
        from latentkit.diffusion import schedule_optimization
    except Exception as exc:  # not written yet, or mid-edit
        _note_once(f"extra schedules: schedule_optimization unavailable ({type(exc).__name__})")
        return {}
    optimize = getattr(schedule_optimization, "optimize_schedule", None)
    if optimize is None:
        _note_once("extra schedules: schedule_optimization has no optimize_schedule")
        return {}
    fine = problem.schedule.sigmas(OPTIMIZE_FINE_STEPS, "karras", dtype=torch.float64)
    out: dict[str, torch.Tensor] = {}
    for name in OPTIMIZED_SAMPLERS:
        try:
            steps = steps_for(latentkit.create("sampler", name), budget)
            if steps is None or steps >= OPTIMIZE_FINE_STEPS:
                continue
            result = optimize(problem.data.denoise, name, steps, problem.noise * float(fine[0]), fine,
                              refine_evaluations=OPTIMIZE_EVALUATIONS)
            out[f"optimized@{name}"] = torch.tensor(result.sigmas, dtype=torch.float64)
        except Exception as exc:  # an API still in flux must not stop the benchmark
            _note_once(f"extra schedules: optimize_schedule({name}) failed ({type(exc).__name__}: {exc})")
    return out


def _note_once(note: str) -> None:
    if note not in EXTRA_NOTES:
        EXTRA_NOTES.append(note)


def stop_at_sigma_min(sigmas: Callable[[int], torch.Tensor], steps: int, sigma_min: float) -> torch.Tensor:
    """``steps`` steps of a grid that ends at ``sigma_min`` instead of jumping to 0 (diffusers'
    ``final_sigmas_type="sigma_min"``): the grid's final 0 replaced by ``sigma_min``, or, where
    its last level already is ``sigma_min``, the grid of one step more without its 0."""
    grid = sigmas(steps)
    if float(grid[-2]) > sigma_min * (1 + 1e-9):
        return torch.cat([grid[:-1], grid.new_full((1,), sigma_min)])
    return sigmas(steps + 1)[:-1]


def run_latentkit(solver: Solver, data: GaussianMixtureData, ref: Reference, sigmas: torch.Tensor,
                  grid: str, budget: int, standard: bool = True) -> Result:
    """One latentkit run from ``x = n * sigmas[0]``, scored against the "sigma" reference
    (the output as it is, also where the grid stops above 0)."""
    steps = len(sigmas) - 1
    calls = 0

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return data.denoise(x, sigma)

    sigmas = sigmas.to(torch.float64)
    try:
        out = solver.sampler.sample(denoise, ref.noise * float(sigmas[0]), sigmas)
        error = rms(out - ref.solutions["sigma"], data)
        note = "" if math.isfinite(error) else "non-finite output"
    except Exception as exc:  # a sampler still being written must not stop the benchmark
        error, note = math.inf, f"{type(exc).__name__}: {exc}"
    if calls > budget:
        error, note = math.inf, f"made {calls} calls, model_calls({steps}) says at most {budget}"
    return Result("latentkit", solver.name, _fmt_options(solver.options), grid, budget, steps, calls,
                  error, standard, note)


def latentkit_results(solvers: Sequence[Solver], data: GaussianMixtureData, ref: Reference,
                      schedule: Any, budgets: Sequence[int], spacings: Sequence[str],
                      smin: bool = True, extras: dict[int, dict[str, torch.Tensor]] | None = None) -> list[Result]:
    """Every solver x spacing (ending in 0, and stopping at sigma_min: ``+smin``) x budget, and
    the extra schedules of each budget (``extras[budget]``, from :func:`extra_schedules`)."""
    results = []
    for budget in budgets:
        budget_extras = (extras or {}).get(budget, {})
        for solver in solvers:
            try:
                steps = steps_for(solver.sampler, budget)
            except Exception:  # a model_calls still being written
                steps = None
            if steps is None:
                continue
            for spacing in spacings:
                def grid(n: int, spacing: str = spacing) -> torch.Tensor:
                    return schedule.sigmas(n, spacing, dtype=torch.float64)

                standard = spacing in STANDARD_SPACINGS
                results.append(run_latentkit(solver, data, ref, grid(steps), spacing, budget, standard))
                if not smin:
                    continue
                # Without the final jump to 0 a 2-call sampler's last step costs 2 calls:
                # fewer steps until the counted calls fit.
                for n in range(steps, 0, -1):
                    result = run_latentkit(solver, data, ref, stop_at_sigma_min(grid, n, schedule.sigma_min),
                                           f"{spacing}+smin", budget, standard)
                    if result.calls <= budget:
                        results.append(result)
                        break
            for name, sigmas in budget_extras.items():
                label, _, only = name.partition("@")
                if (only and only != solver.label) or solver.sampler.model_calls(len(sigmas) - 1) > budget:
                    continue
                result = run_latentkit(solver, data, ref, torch.as_tensor(sigmas), label, budget, False)
                if result.calls <= budget:  # a grid tuned for a one-call sampler may not fit a two-call one
                    results.append(result)
    return results


# --------------------------------------------------------------------------- diffusers

#: Stable Diffusion's scheduler config (v1.x ``scheduler_config.json``); keys a class does not
#: take are left out.
SD_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
    "set_alpha_to_one": False, "skip_prk_steps": True,
}
SPACINGS = ("trailing", "linspace", "leading")  # ties (a sigma flag that ignores the spacing) go to trailing
#: diffusers' Align-Your-Steps timesteps (``diffusers.schedulers.AysSchedules``, 10 steps), run
#: through ``set_timesteps(timesteps=...)`` where a scheduler takes custom timesteps.
AYS_TIMESTEPS = {"ays_sd15": "StableDiffusionTimesteps", "ays_sdxl": "StableDiffusionXLTimesteps"}
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
FLAG_NAMES = {None: "", "use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential",
              "use_beta_sigmas": "beta", "use_lu_lambdas": "lu"}


def zero_tau(t: Any) -> float:
    """SA-Solver's ``tau_func`` for the ODE (no noise)."""
    return 0.0


def _dpm_variants(orders: Sequence[int], lower_order_final: Sequence[bool]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"solver_order": 1}]
    for order in orders:
        for algorithm in ("dpmsolver++", "dpmsolver"):
            for lof in lower_order_final:
                out.append({"solver_order": order, "algorithm_type": algorithm, "lower_order_final": lof})
    return out


#: Deterministic diffusers schedulers for an epsilon model of a discrete VP schedule, each with
#: the option variants run (on top of SD_CONFIG). Left out: DDPM, EulerAncestral, KDPM2Ancestral,
#: DPMSolverSDE (stochastic: DPMSolverSDE always adds Brownian-tree noise), LCM / TCD
#: (consistency models), IPNDM (its own schedule, no betas), EDM* / CosineDPMSolverMultistep
#: (continuous EDM preconditioning) and the flow-matching schedulers.
DIFFUSERS_FAMILIES: dict[str, list[dict[str, Any]]] = {
    "DDIMScheduler": [{}, {"set_alpha_to_one": True}],
    "PNDMScheduler": [{}, {"set_alpha_to_one": True}, {"skip_prk_steps": False},
                      {"skip_prk_steps": False, "set_alpha_to_one": True}],
    "EulerDiscreteScheduler": [{}],
    "HeunDiscreteScheduler": [{}],
    "LMSDiscreteScheduler": [{}],
    "KDPM2DiscreteScheduler": [{}],
    "DPMSolverMultistepScheduler": [*_dpm_variants((2, 3), (True, False)),
                                    {"solver_order": 2, "solver_type": "heun"},
                                    {"solver_order": 3, "solver_type": "heun"}],
    "DPMSolverSinglestepScheduler": _dpm_variants((2, 3), (True,)),
    "UniPCMultistepScheduler": [{"solver_order": o, "solver_type": v} for o in (1, 2, 3) for v in ("bh1", "bh2")],
    "DEISMultistepScheduler": [{"solver_order": o} for o in (1, 2, 3)],
    "SASolverScheduler": [{"tau_func": zero_tau, "predictor_order": p, "corrector_order": c}
                          for p, c in ((2, 2), (3, 3))],
}
QUICK_FAMILIES: dict[str, list[dict[str, Any]]] = {
    "DDIMScheduler": [{"set_alpha_to_one": True}],
    "EulerDiscreteScheduler": [{}],
    "HeunDiscreteScheduler": [{}],
    "DPMSolverMultistepScheduler": [{"solver_order": 2}],
    "UniPCMultistepScheduler": [{"solver_order": 2, "solver_type": "bh2"}],
}
#: The 1000-step sanity configuration of each family: from t = 999 to sigma = 0.
SANITY_CONFIG: dict[str, dict[str, Any]] = {
    "DDIMScheduler": {"set_alpha_to_one": True, "timestep_spacing": "trailing"},
    "PNDMScheduler": {"set_alpha_to_one": True, "timestep_spacing": "trailing"},
    "DPMSolverMultistepScheduler": {"solver_order": 2, "timestep_spacing": "trailing"},
    "DPMSolverSinglestepScheduler": {"solver_order": 2},
    "UniPCMultistepScheduler": {"solver_order": 2, "timestep_spacing": "trailing"},
    "DEISMultistepScheduler": {"solver_order": 2, "timestep_spacing": "trailing"},
    "SASolverScheduler": {"tau_func": zero_tau, "timestep_spacing": "trailing"},
}
#: diffusers scheduler (config) -> the latentkit sampler of the same algorithm, for the same-grid check.
PAIRS: list[tuple[str, dict[str, Any], str]] = [
    ("DDIMScheduler", {"set_alpha_to_one": True, "timestep_spacing": "trailing"}, "ddim"),
    ("PNDMScheduler", {"set_alpha_to_one": True, "timestep_spacing": "trailing"}, "plms"),
    ("EulerDiscreteScheduler", {}, "euler"),
    ("HeunDiscreteScheduler", {}, "heun"),
    ("LMSDiscreteScheduler", {}, "lms"),
    ("KDPM2DiscreteScheduler", {}, "dpm2"),
    ("DPMSolverMultistepScheduler", {"solver_order": 2}, "dpmpp_2m"),
    ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}, "unipc"),
]


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """diffusers' deprecation notes and numpy warnings off, for the benchmark's duration."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            dlogging.set_verbosity(level)


class EpsModel:
    """The exact denoiser as the epsilon-prediction model of the discrete VP schedule.

    A VP model sees ``z = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``; with ``x = z /
    sqrt(alpha_bar)`` (sigma space, ``alpha_bar = 1 / (1 + sigma^2)``) the exact prediction is
    ``eps = (z - sqrt(alpha_bar) D(x, sigma)) / sqrt(1 - alpha_bar) = (x - D(x, sigma)) / sigma``.
    The Euler-type schedulers hand the model ``x / sqrt(sigma^2 + 1)``, which is the same ``z``.
    """

    def __init__(self, data: GaussianMixtureData) -> None:
        self.data = data
        self.calls = 0

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        x = z.to(torch.float64) * math.sqrt(1.0 + sigma * sigma)
        return (x - self.data.denoise(x, sigma)) / sigma


def implied_sigma(scheduler: Any, timestep: Any) -> float:
    """The noise level the scheduler's ``step`` assumes for the model output of this call.

    * Sigma-table schedulers (Euler, Heun, LMS, KDPM2, and the DPM-Solver / UniPC / DEIS /
      SA-Solver family, which convert with ``sigmas[step_index]`` whatever integer timestep the
      model is given): ``sigmas[step_index]``, or ``sigmas_interpol[step_index]`` in KDPM2's
      second stage. ``step_index`` is set by ``scale_model_input`` for the Euler type and on the
      first ``step`` otherwise (then it is ``index_for_timestep(t)``, as diffusers computes it).
    * DDIM, PNDM: ``alphas_cumprod[t]`` of the integer timestep.
    """
    if hasattr(scheduler, "sigmas") and hasattr(scheduler, "step_index"):
        index = scheduler.step_index
        if index is None:
            index = scheduler.index_for_timestep(timestep)
        if hasattr(scheduler, "sigmas_interpol") and not scheduler.state_in_first_order:
            return float(scheduler.sigmas_interpol[index])
        return float(scheduler.sigmas[index])
    alpha_bar = float(scheduler.alphas_cumprod[int(timestep)])
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def make_scheduler(family: str, options: dict[str, Any]) -> Any:
    """``family`` with SD_CONFIG and ``options``; None when it does not take one of ``options``."""
    import diffusers

    cls = getattr(diffusers, family)
    params = inspect.signature(cls.__init__).parameters
    if any(key not in params for key in options):
        return None
    config = {k: v for k, v in SD_CONFIG.items() if k in params}
    return cls(**{**config, **options})


def diffusers_sample(scheduler: Any, noise: torch.Tensor, model: EpsModel) -> tuple[torch.Tensor, str]:
    """The standard pipeline loop from ``latents = n * init_noise_sigma``; returns the final
    latents and the starting convention ("vp": the first model input is ``n``; "sigma": it is
    ``sigma_first n / sqrt(1 + sigma_first^2)``, i.e. ``x = sigma_first n``)."""
    latents = noise * float(scheduler.init_noise_sigma)
    convention = "sigma"
    for i, t in enumerate(scheduler.timesteps):
        z = scheduler.scale_model_input(latents, t)
        if i == 0 and torch.allclose(z.to(noise.dtype), noise, rtol=1e-5, atol=0):
            convention = "vp"
        eps = model(z, implied_sigma(scheduler, t))
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents, convention


def fit_scheduler(family: str, options: dict[str, Any], budget: int,
                  timesteps: Sequence[int] | None = None) -> tuple[Any, int] | None:
    """A scheduler set to the most inference steps whose timesteps (one model call each) fit in
    ``budget``, and that number of steps; None when none fits or the config is rejected. With
    ``timesteps``, set to those (custom timesteps) if their calls fit."""
    try:
        if make_scheduler(family, options) is None:
            return None
    except Exception:  # a rejected combination, e.g. algorithm_type="dpmsolver" with a final 0
        return None
    if timesteps is not None:
        scheduler = make_scheduler(family, options)
        try:
            scheduler.set_timesteps(timesteps=list(timesteps))
        except Exception:
            return None
        return (scheduler, len(timesteps)) if len(scheduler.timesteps) <= budget else None
    steps = budget
    while steps >= 1:
        scheduler = make_scheduler(family, options)  # fresh: set_timesteps may rewrite the config
        try:
            scheduler.set_timesteps(steps)
        except Exception:  # e.g. too few steps for PNDM's Runge-Kutta warm-up
            steps -= 1
            continue
        calls = len(scheduler.timesteps)
        if calls <= budget:
            return scheduler, steps
        steps = min(steps - 1, max(1, steps * budget // calls))  # Heun-type: 2 calls per step
    return None


def run_diffusers(family: str, options: dict[str, Any], grid: str, budget: int,
                  data: GaussianMixtureData, ref: Reference, timesteps: Sequence[int] | None = None) -> Result | None:
    """One diffusers run at ``budget`` (None when the configuration does not apply)."""
    fitted = fit_scheduler(family, options, budget, timesteps)
    if fitted is None:
        return None
    scheduler, steps = fitted
    model = EpsModel(data)
    grid_keys = ("timestep_spacing", "final_sigmas_type", *SIGMA_FLAGS)
    config = _fmt_options({k: v for k, v in options.items() if k not in grid_keys})
    try:
        out, convention = diffusers_sample(scheduler, ref.noise, model)
        error = rms(out - ref.solutions[convention], data)
        note = "" if math.isfinite(error) else "non-finite output"
    except Exception as exc:
        error, note = math.inf, f"{type(exc).__name__}: {exc}"
    if model.calls > budget:
        error, note = math.inf, f"made {model.calls} calls for budget {budget}"
    return Result("diffusers", family.removesuffix("Scheduler"), config, grid, budget, steps, model.calls,
                  error, timesteps is None, note)


def diffusers_configs(families: dict[str, list[dict[str, Any]]], quick: bool
                      ) -> Iterator[tuple[str, dict[str, Any], str, list[int] | None]]:
    """(family, options, grid label, custom timesteps) for every variant x spacing x sigma flag x
    final sigma (0, or ``final_sigmas_type="sigma_min"``: ``+smin``) the class takes, and every
    variant x final sigma with the AYS timesteps where ``set_timesteps`` takes ``timesteps``."""
    import diffusers
    from diffusers.schedulers import AysSchedules

    spacings = ("trailing", "linspace") if quick else SPACINGS
    flags: tuple[str | None, ...] = (None, "use_karras_sigmas") if quick else (None, *SIGMA_FLAGS)
    for family, variants in families.items():
        params = inspect.signature(getattr(diffusers, family).__init__).parameters
        finals = ("zero", "sigma_min") if "final_sigmas_type" in params and not quick else (None,)
        for variant, spacing, flag, final in itertools.product(
            variants, spacings if "timestep_spacing" in params else (None,), flags, finals
        ):
            if flag is not None and flag not in params:
                continue
            options = dict(variant)
            if spacing is not None:
                options["timestep_spacing"] = spacing
            if flag is not None:
                options[flag] = True
            if final is not None:
                options["final_sigmas_type"] = final
            parts = (spacing or "linspace", FLAG_NAMES[flag], "smin" if final == "sigma_min" else "")
            yield family, options, "+".join(p for p in parts if p), None
        if quick or "timesteps" not in inspect.signature(getattr(diffusers, family).set_timesteps).parameters:
            continue
        for variant, final, (grid, key) in itertools.product(variants, finals, AYS_TIMESTEPS.items()):
            options = dict(variant) if final is None else {**variant, "final_sigmas_type": final}
            yield family, options, grid + ("+smin" if final == "sigma_min" else ""), list(AysSchedules[key])


def diffusers_results(families: dict[str, list[dict[str, Any]]], data: GaussianMixtureData, ref: Reference,
                      budgets: Sequence[int], quick: bool) -> list[Result]:
    results = []
    for family, options, grid, timesteps in diffusers_configs(families, quick):
        for budget in budgets:
            result = run_diffusers(family, options, grid, budget, data, ref, timesteps)
            if result is not None:
                results.append(result)
    return results


def pair_checks(data: GaussianMixtureData, ref: Reference, families: Sequence[str]) -> list[dict[str, Any]]:
    """Each diffusers scheduler of PAIRS against its latentkit sampler on the scheduler's own grid
    (``PAIR_STEPS`` steps, sigma-space x from the same starting state): RMS difference."""
    out = []
    for family, options, name in PAIRS:
        if family not in families:
            continue
        scheduler = make_scheduler(family, options)
        scheduler.set_timesteps(PAIR_STEPS)
        if hasattr(scheduler, "sigmas"):
            sigmas = torch.unique_consecutive(scheduler.sigmas.to(torch.float64))  # Heun, KDPM2 repeat levels
        else:  # DDIM / PNDM: their integer timesteps, then alpha_bar = 1
            t = torch.unique_consecutive(scheduler.timesteps).long()
            ab = scheduler.alphas_cumprod[t].to(torch.float64)
            sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])
        model = EpsModel(data)
        latents, convention = diffusers_sample(scheduler, ref.noise, model)
        x0 = ref.noise * (float(sigmas[0]) if convention == "sigma" else math.sqrt(1 + float(sigmas[0]) ** 2))
        lk_calls = 0

        def denoise(x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
            nonlocal lk_calls
            lk_calls += 1
            return data.denoise(x, sigma)

        ours = latentkit.create("sampler", name).sample(denoise, x0, sigmas)
        out.append({"diffusers": family, "latentkit": name, "steps": PAIR_STEPS,
                    "calls": [model.calls, lk_calls], "difference": rms(latents - ours, data)})
    return out


def sanity_rows(data: GaussianMixtureData, ref: Reference, families: Sequence[str]) -> list[dict[str, Any]]:
    """Every family at SANITY_STEPS steps (from t = 999 to sigma = 0) against the reference."""
    rows = []
    for family in families:
        options = SANITY_CONFIG.get(family, {})
        scheduler = make_scheduler(family, options)
        scheduler.set_timesteps(SANITY_STEPS)
        model = EpsModel(data)
        out, convention = diffusers_sample(scheduler, ref.noise, model)
        rows.append({"scheduler": family, "config": _fmt_options(options), "steps": SANITY_STEPS,
                     "calls": model.calls, "convention": convention,
                     "error": rms(out - ref.solutions[convention], data)})
    return rows


# --------------------------------------------------------------------------- report


def best(results: Sequence[Result], budget: int, **match: Any) -> Result | None:
    """The smallest finite error at ``budget`` among results whose fields equal ``match``."""
    pool = [r for r in results if r.budget == budget and math.isfinite(r.error)
            and all(getattr(r, k) == v for k, v in match.items())]
    return min(pool, key=lambda r: r.error) if pool else None


def describe(r: Result | None) -> str:
    if r is None:
        return "-"
    return f"{r.solver}" + (f"({r.config})" if r.config else "") + f" / {r.grid}, {r.steps} steps"


GRID_ABBREV = {"leading": "lead", "trailing": "trail", "linspace": "lin", "exponential": "exp",
               "polyexponential": "polyexp"}


def short_grid(grid: str) -> str:
    """``trailing+karras`` -> ``trail+karras``, at most 8 characters."""
    return "+".join(GRID_ABBREV.get(part, part) for part in grid.split("+"))[:8]


def cell(r: Result | None) -> str:
    """Error and grid of a table cell."""
    return f"{fmt(r and r.error)} {short_grid(r.grid) if r else '':<8}"


def fmt(value: float | None) -> str:
    return "       -" if value is None or not math.isfinite(value) else f"{value:8.2e}"


def print_report(summary: dict[str, Any], results: list[Result]) -> None:
    budgets = summary["budgets"]
    ref = summary["reference"]
    print(f"Gaussian mixture ({ref['components']} components, event {tuple(ref['event_shape'])}, data std "
          f"{ref['data_std']:.3f}), SD scaled_linear (sigma {ref['sigma_min']:.4f} .. {ref['sigma_max']:.2f}); "
          f"{ref['draws']} draws; errors: RMS to the exact PF-ODE solution at sigma = 0, data-std units")
    print(f"reference: Heun, Karras grid to {REF_SIGMA_MIN:g}, {ref['steps']} vs {2 * ref['steps']} steps differ by "
          f"{ref['convergence']:.1e}; 'vp' vs 'sigma' starting convention: {ref['convention_gap']:.1e}")
    print(f"floor of a single final denoising step: exact solve to sigma_min, then x = D(x, sigma_min): "
          f"{ref['floor']:.1e} (what one-step final updates approach at many steps)\n")

    print("diffusers wrapper check 1: same grid, same algorithm (RMS difference of the outputs)")
    for row in summary["pairs"]:
        ok = "ok" if row["difference"] < PAIR_TOL else "MISMATCH"
        print(f"  {row['diffusers']:<30} vs {row['latentkit']:<10} {row['steps']} steps, calls "
              f"{row['calls'][0]}/{row['calls'][1]}: {row['difference']:.1e}  {ok}")
    print(f"diffusers wrapper check 2 (sanity row): {SANITY_STEPS} steps, t = 999 -> sigma 0 (tolerance {SANITY_TOL:g})")
    for row in summary["sanity"]:
        ok = "ok" if row["error"] < SANITY_TOL else "FAIL"
        print(f"  {row['scheduler']:<30} {row['calls']:>5} calls  start '{row['convention']}'  "
              f"error {row['error']:.1e}  {ok}")

    print("\nBest error per budget (ratio = diffusers / latentkit: above 1, latentkit is more accurate)")
    print(f"{'':5}  {'every grid (incl. AYS, optimised)':^32}  {'standard grids only':^32}")
    print(f"{'calls':>5}  {'latentkit':>10}{'diffusers':>11}{'ratio':>9}    {'latentkit':>10}{'diffusers':>11}{'ratio':>9}")
    for row in summary["best"]:
        cells = []
        for scope in ("all", "standard"):
            lk, df = row[scope]["latentkit"], row[scope]["diffusers"]
            ratio = row[scope]["ratio"]
            cells.append(f"{fmt(lk and lk['error']):>10} {fmt(df and df['error']):>10}"
                         f"{(f'{ratio:9.2f}' if ratio is not None else '        -')}")
        print(f"{row['budget']:>5}  " + "    ".join(cells))
    for scope, title in (("all", "every grid"), ("standard", "standard grids")):
        print(f"winners, {title}:")
        for row in summary["best"]:
            print(f"  {row['budget']:>3} calls: latentkit {row[scope]['latentkit_desc']}  |  "
                  f"diffusers {row[scope]['diffusers_desc']}")

    head = "".join(f"{b:>17}" for b in budgets)
    print(f"\nlatentkit per solver: best grid, karras, exponential (log-linear); error per budget\n{'solver':<30}{head}")
    for label in summary["latentkit_solvers"]:
        name, _, config = label.partition("(")
        config = config.removesuffix(")")
        cells = [best(results, b, library="latentkit", solver=name, config=config) for b in budgets]
        print(f"{label[:29]:<30}" + "".join(f" {cell(r):>16}" for r in cells))
        for grid in ("karras", "exponential"):
            errs = [best(results, b, library="latentkit", solver=name, config=config, grid=grid) for b in budgets]
            print(f"{'  ' + grid:<30}" + "".join(f"{fmt(r and r.error):>17}" for r in errs))

    print(f"\ndiffusers per scheduler: best config and grid; error per budget\n{'scheduler':<30}{head}")
    for family in summary["diffusers_families"]:
        short = family.removesuffix("Scheduler")
        cells = [best(results, b, library="diffusers", solver=short) for b in budgets]
        print(f"{short[:29]:<30}" + "".join(f" {cell(r):>16}" for r in cells))
    if summary["skipped"]:
        print("\nskipped: " + "; ".join(summary["skipped"]))
    for note in summary["extra_notes"]:
        print(note)
    failed = [r for r in results if r.note]
    if failed:
        kinds = collections.Counter((r.library, r.solver, r.note.split(":")[0]) for r in failed)
        print(f"{len(failed)} runs failed (not counted): " + "; ".join(
            f"{lib} {solver}: {n} x {what}" for (lib, solver, what), n in kinds.most_common()))
    t = summary["timing"]
    print(f"\n(reference {t['reference']:.1f} s, extra schedules {t['extra_schedules']:.1f} s, "
          f"checks {t['checks']:.1f} s, latentkit {t['latentkit']:.1f} s "
          f"({summary['runs']['latentkit']} runs), diffusers {t['diffusers']:.1f} s "
          f"({summary['runs']['diffusers']} runs), total {t['total']:.1f} s)")


# --------------------------------------------------------------------------- main


def _jsonable(value: Any) -> Any:
    """``value`` with inf / nan as null (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables, and return (and with ``--json``, write) the summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="budgets 5 and 10, few draws, a subset of configs")
    parser.add_argument("--draws", type=int, default=None, help="starting draws (default 256, quick 32)")
    parser.add_argument("--json", type=str, default=None, help="write the summary and every run to FILE")
    args = parser.parse_args(argv)
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    draws = args.draws or (32 if args.quick else 256)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is several times faster than two
    try:
        return _run(args, budgets, draws)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, budgets: Sequence[int], draws: int) -> dict[str, Any]:
    start = time.perf_counter()
    data, schedule = make_problem(), make_schedule()
    ref_steps = REF_STEPS // 2 if args.quick else REF_STEPS
    ref = make_reference(data, schedule.sigma_max, schedule.sigma_min, draws, ref_steps)
    t_ref = time.perf_counter()

    solvers, skipped = latentkit_solvers(with_options=not args.quick)
    held_out = torch.randn(ref.noise.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    problem = None if args.quick else Problem(data, schedule, held_out)
    EXTRA_NOTES.clear()
    extras = {budget: extra_schedules(budget, problem) for budget in budgets}
    t_extras = time.perf_counter()
    lk = latentkit_results(solvers, data, ref, schedule, budgets, schedule.spacings, smin=not args.quick,
                           extras=extras)
    t_lk = time.perf_counter()

    try:
        import diffusers  # noqa: F401
        have_diffusers = True
    except ImportError:
        have_diffusers, skipped = False, [*skipped, "diffusers: not installed"]
    families = QUICK_FAMILIES if args.quick else DIFFUSERS_FAMILIES
    pairs: list[dict[str, Any]] = []
    sanity: list[dict[str, Any]] = []
    df: list[Result] = []
    t_checks = 0.0
    if have_diffusers:
        with quiet_diffusers():
            t0 = time.perf_counter()
            pairs = pair_checks(data, ref, list(families))
            sanity = sanity_rows(data, ref, list(families))
            t_checks = time.perf_counter() - t0
            df = diffusers_results(families, data, ref, budgets, args.quick)
    t_df = time.perf_counter()
    results = lk + df

    rows = []
    for budget in budgets:
        row: dict[str, Any] = {"budget": budget}
        for scope, extra in (("all", {}), ("standard", {"standard": True})):
            a, b = best(results, budget, library="latentkit", **extra), best(results, budget, library="diffusers", **extra)
            row[scope] = {"latentkit": a and asdict(a), "diffusers": b and asdict(b),
                          "ratio": (b.error / a.error) if a and b and a.error > 0 else None,
                          "latentkit_desc": describe(a), "diffusers_desc": describe(b)}
        rows.append(row)
    summary: dict[str, Any] = {
        "budgets": list(budgets),
        "reference": {"components": data.components, "event_shape": list(data.event_shape),
                      "data_std": data.data_std, "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max,
                      "draws": draws, "steps": ref_steps, "convergence": ref.convergence,
                      "convention_gap": ref.convention_gap, "floor": ref.floor},
        "pairs": pairs,
        "sanity": sanity,
        "best": rows,
        "latentkit_solvers": [s.label for s in solvers],
        "diffusers_families": list(families) if have_diffusers else [],
        "skipped": skipped,
        "extra_notes": list(EXTRA_NOTES),
        "runs": {"latentkit": len(lk), "diffusers": len(df)},
        "extra_schedules": {str(b): {k: v.tolist() for k, v in e.items()} for b, e in extras.items()},
        "timing": {"reference": t_ref - start, "extra_schedules": t_extras - t_ref, "checks": t_checks,
                   "latentkit": t_lk - t_extras,
                   "diffusers": t_df - t_lk - t_checks, "total": time.perf_counter() - start},
    }
    print_report(summary, results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_jsonable({**summary, "results": [asdict(r) for r in results]}), fh, indent=1)
    summary["results"] = results
    return summary


if __name__ == "__main__":
    main()

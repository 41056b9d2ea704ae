"""Step schedules optimised for one model and one sampler (few-step sampling).

Given a ``denoise`` function (a trained model with its guidance), a sampler and a step count
``n``, find the ``n + 1`` noise levels (``sigma_max``, ``n - 1`` free levels, 0) whose
integration of the probability-flow ODE lands closest to a fine-step reference, on a few
hundred draws from the model's own prior. Two stages:

1. **Dynamic programming over a fine grid** (GITS; Chen et al. 2024, "On the Trajectory
   Regularity of ODE-based Diffusion Sampling", Sec. 4). A reference solve on ``G`` fine levels
   (the model's own schedule, ``heun`` by default) records the state ``X_i`` and the denoised
   ``D_i`` at every level. The cost of jumping from level ``i`` straight to level ``j`` is the
   error of one DDIM step, ``D_i + sigma_j (X_i - D_i) / sigma_i`` (no model call: ``D_i`` is
   known) against ``X_j``, weighted by ``s^2 / (s^2 + sigma_j^2)`` (how much an error at
   ``sigma_j`` still matters at 0: the PF-ODE of data with std ``s`` contracts it by
   ``s / sqrt(s^2 + sigma_j^2)``); the cheapest path of ``n`` jumps from the first level to 0
   is found exactly in ``O(n G^2)``.
2. **Refinement with the sampler itself.** The DP's cost is that of a first-order step; the
   sampler's own error (higher order, multistep history) is then minimised directly, from the
   best of the DP path and the schedule's own spacings: Powell's derivative-free search
   (scipy) over the log gaps between neighbouring levels (so every candidate is decreasing),
   the objective being the RMS distance of the sampler's output to the reference output on
   the same draws.

Why this rather than AYS (Sabour et al. 2024, which minimises a KL upper bound of the
discretisation error by stochastic optimisation): both stages need only forward passes, no
gradients through the model, and stage 2 measures exactly what the user cares about, the
sampler's error at the chosen budget; with the draws fixed by the seed the whole search is
deterministic. AYS's published schedules for Stable Diffusion 1.5 and SDXL are available
as named spacings of the discrete schedules (``ays_sd15``, ``ays_sdxl``).

The result, :class:`OptimizedSchedule`, is saved as JSON with the identity of the model it was
optimised for (:func:`model_fingerprint`, a SHA-256 over the denoiser's weights) and
:func:`load_schedule` refuses it for another model unless ``force=True``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from latentkit.errors import ConfigError
from latentkit.fileio import atomic_write_text
from latentkit.interfaces import DenoiseFn, Sampler

__all__ = [
    "FORMAT",
    "OptimizedSchedule",
    "ScheduleMismatchError",
    "dp_schedule",
    "load_schedule",
    "model_fingerprint",
    "optimize_model_schedule",
    "optimize_schedule",
    "parse_sigmas",
]

#: ``format`` field of the JSON files.
FORMAT = "latentkit-schedule-1"


class ScheduleMismatchError(ConfigError):
    """A saved schedule was optimised for another model (or sampler)."""


def model_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex, 16 characters) over the names, shapes, dtypes and bytes of ``module``'s
    state dict: the identity of the exact weights a schedule was optimised for."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


@attrs.frozen(kw_only=True)
class OptimizedSchedule:
    """An optimised step schedule and how it was found."""

    sigmas: tuple[float, ...]  # steps + 1 decreasing levels ending in 0 (the first may be inf)
    sampler: str  # the sampler it was optimised for
    sampler_options: Mapping[str, Any] = attrs.field(factory=dict)
    model: str | None = None  # model_fingerprint of the weights, None for a bare denoise function
    description: str = ""  # what the model was (run directory, checkpoint step, EMA)
    error: float = math.nan  # RMS distance to the reference output (latent units)
    dp_error: float = math.nan  # the same for the stage-1 (DP) schedule
    baselines: Mapping[str, float] = attrs.field(factory=dict)  # spacing -> error, same sampler and steps
    seed: int = 0
    num_samples: int = 0
    fine_steps: int = 0
    method: str = "gits-dp+coordinate-refinement"

    @property
    def steps(self) -> int:
        """Number of steps (``len(sigmas) - 1``)."""
        return len(self.sigmas) - 1

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The sigmas as a float32 tensor, ready for ``SamplingOptions(sigmas=...)``."""
        return torch.tensor(self.sigmas, dtype=torch.float32, device=device)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (inf written as the string ``"inf"``)."""
        data = attrs.asdict(self)
        data["sigmas"] = ["inf" if math.isinf(s) else s for s in self.sigmas]
        data["sampler_options"] = dict(self.sampler_options)
        data["baselines"] = dict(self.baselines)
        return {"format": FORMAT, "steps": self.steps, **data}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the schedule as JSON (atomically); returns the path."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.as_dict(), indent=2, allow_nan=True) + "\n")
        return path


def parse_sigmas(text: str) -> tuple[float, ...]:
    """``"14.6,3.1,0.9,0.03,0"`` -> floats (``inf`` allowed first), checked: at least two,
    decreasing, >= 0, only the last may be 0."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"a schedule must be a comma-separated list of noise levels, got {text!r}") from None
    _check_levels(values, repr(text))
    return values


def _check_levels(values: Sequence[float], where: str) -> None:
    ok = (
        len(values) >= 2
        and all(b < a for a, b in itertools.pairwise(values))
        and values[-1] >= 0
        and not any(math.isnan(v) or (math.isinf(v) and i > 0) for i, v in enumerate(values))
        and 0.0 not in values[:-1]
    )
    if not ok:
        raise ConfigError(
            f"{where}: expected at least two strictly decreasing noise levels >= 0 (only the "
            f"first may be inf, only the last 0), got {list(values)}"
        )


def load_schedule(
    source: str | os.PathLike[str],
    *,
    model: nn.Module | str | None = None,
    sampler: str | None = None,
    force: bool = False,
) -> OptimizedSchedule:
    """Read a schedule file written by :meth:`OptimizedSchedule.save`, or parse a
    comma-separated list of sigmas (:func:`parse_sigmas`).

    With ``model`` (a module or its :func:`model_fingerprint`), a file optimised for other
    weights raises :class:`ScheduleMismatchError` naming both, unless ``force``; likewise a
    file optimised for another ``sampler``. A list of sigmas has no identity to check.
    """
    text = os.fspath(source)
    path = Path(text)
    if not path.is_file():
        if "," in text:
            return OptimizedSchedule(sigmas=parse_sigmas(text), sampler=sampler or "", method="given")
        raise ConfigError(f"schedule {text!r}: no such file (nor a comma-separated list of sigmas)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a schedule file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: not a latentkit schedule file (format {found!r}, expected {FORMAT!r})")
    try:
        sigmas = tuple(math.inf if s == "inf" else float(s) for s in data["sigmas"])
        fields = {f.name for f in attrs.fields(OptimizedSchedule)}
        schedule = OptimizedSchedule(**{**{k: v for k, v in data.items() if k in fields}, "sigmas": sigmas})
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed schedule file ({type(exc).__name__}: {exc})") from None
    _check_levels(schedule.sigmas, str(path))
    if not force:
        if model is not None and schedule.model is not None:
            wanted = model if isinstance(model, str) else model_fingerprint(model)
            if wanted != schedule.model:
                raise ScheduleMismatchError(
                    f"{path} was optimised for model {schedule.model} ({schedule.description or 'no description'}), "
                    f"not for this one ({wanted}); optimise one for it, or force it (--force-schedule / force=True)"
                )
        if sampler is not None and schedule.sampler and sampler != schedule.sampler:
            raise ScheduleMismatchError(
                f"{path} was optimised for the sampler {schedule.sampler!r}, not {sampler!r}; "
                "use that sampler, or force it (--force-schedule / force=True)"
            )
    return schedule


# --------------------------------------------------------------------------- stage 1: DP


def _ddim(x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One DDIM step (the limit at sigma = inf: x holds the unit noise)."""
    if sigma_next == 0.0:
        return denoised
    eps = x if math.isinf(sigma) else (x - denoised) / sigma
    return denoised + sigma_next * eps


def dp_schedule(
    states: Sequence[torch.Tensor],
    denoised: Sequence[torch.Tensor],
    levels: Sequence[float],
    steps: int,
    data_std: float,
) -> tuple[list[int], float]:
    """GITS's dynamic programming: the indices into ``levels`` (the fine grid, the last one 0)
    of the cheapest path of ``steps`` DDIM jumps from ``levels[0]`` to ``levels[-1]``, and its
    cost. ``states[i]`` is the reference state at ``levels[i]`` (``states[-1]`` the reference
    output) and ``denoised[i]`` the denoised estimate there (for ``i < len(levels) - 1``)."""
    g = len(levels) - 1
    if not 1 <= steps <= g:
        raise ValueError(f"need 1 <= steps <= {g} (the fine grid's steps), got {steps}")
    s2 = float(data_std) ** 2
    cost = torch.full((g + 1, g + 1), math.inf, dtype=torch.float64)
    for i in range(g):
        for j in range(i + 1, g + 1):
            pred = _ddim(states[i], denoised[i], levels[i], levels[j])
            weight = s2 / (s2 + levels[j] ** 2)
            cost[i, j] = float((pred.double() - states[j].double()).pow(2).mean()) * weight
    best = torch.full((steps + 1, g + 1), math.inf, dtype=torch.float64)
    back = torch.zeros((steps + 1, g + 1), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        for j in range(1, g + 1):
            total = best[k - 1, :j] + cost[:j, j]
            i = int(torch.argmin(total))
            best[k, j], back[k, j] = total[i], i
    path = [g]
    for k in range(steps, 0, -1):
        path.append(int(back[k, path[-1]]))
    return path[::-1], float(best[steps, g])


# --------------------------------------------------------------------------- stage 2 and driver


def _refine(levels: Sequence[float], factor: int) -> tuple[list[float], list[int]]:
    """``levels`` with ``factor - 1`` levels inserted between neighbours (geometric; none
    between inf and the next level, nor between the last level and 0), and the positions of
    the original levels in the result."""
    factor = max(1, int(factor))
    out: list[float] = []
    positions: list[int] = []
    for a, b in itertools.pairwise(levels):
        positions.append(len(out))
        out.append(a)
        if math.isfinite(a) and b > 0:
            out.extend(a * (b / a) ** (k / factor) for k in range(1, factor))
    positions.append(len(out))
    out.append(levels[-1])
    return out, positions


def _encode(levels: Sequence[float]) -> list[float]:
    """Free levels ``levels[1:-1]`` -> unconstrained parameters: log gaps between neighbours
    (``log(log s_(k-1) - log s_k)``), the first free level itself when ``levels[0]`` is inf."""
    logs = [math.log(s) for s in levels[1:-1]]
    params = []
    for k, value in enumerate(logs):
        above = math.log(levels[0]) if k == 0 and math.isfinite(levels[0]) else (logs[k - 1] if k else None)
        params.append(value if above is None else math.log(max(above - value, 1e-12)))
    return params


def _decode(params: Sequence[float], first: float) -> list[float]:
    """The inverse of :func:`_encode`: always strictly decreasing levels, ending in 0."""
    levels, current = [first], math.log(first) if math.isfinite(first) else None
    for k, p in enumerate(params):
        current = float(p) if current is None and k == 0 else current - math.exp(min(float(p), 50.0))  # type: ignore[operator]
        levels.append(math.exp(current))
    return [*levels, 0.0]


def _search(error: Callable[[Sequence[float]], float], start: list[float], start_error: float,
            evaluations: int) -> tuple[list[float], float]:
    """Powell's derivative-free search (scipy) over :func:`_encode`'s parameters, deterministic,
    at most ``evaluations`` runs of the sampler; returns the best levels seen and their error."""
    if len(start) <= 2 or evaluations <= 0:
        return start, start_error
    from scipy.optimize import minimize

    best = [start_error, start]

    def objective(params: Any) -> float:
        levels = _decode(params, start[0])
        if not all(math.isfinite(v) and v > 0 for v in levels[1:-1]):
            return 1e30
        e = error(levels)
        if e < best[0]:
            best[:] = [e, levels]
        return e

    minimize(objective, _encode(start), method="Powell",
             options={"maxfev": int(evaluations), "xtol": 1e-3, "ftol": 1e-4})
    return best[1], best[0]


def _run(sampler: Sampler, denoise: DenoiseFn, x: torch.Tensor, sigmas: Sequence[float],
         extra_args: Mapping[str, Any], generator: Any) -> torch.Tensor:
    grid = torch.tensor(list(sigmas), dtype=torch.float32, device=x.device)
    return sampler.sample(denoise, x.clone(), grid, extra_args=extra_args, generator=generator)


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def optimize_schedule(
    denoise: DenoiseFn,
    sampler: Sampler | str,
    steps: int,
    x: torch.Tensor,
    fine_sigmas: torch.Tensor | Sequence[float],
    *,
    extra_args: Mapping[str, Any] | None = None,
    reference_sampler: Sampler | str = "heun",
    baselines: Mapping[str, torch.Tensor | Sequence[float]] | None = None,
    reference_refine: int = 2,
    refine_evaluations: int = 200,
    sampler_name: str | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    model: str | None = None,
    description: str = "",
    seed: int = 0,
    create: Callable[..., Any] | None = None,
) -> OptimizedSchedule:
    """Optimise ``steps`` levels for ``sampler`` on ``denoise`` (see the module docstring).

    ``x`` is the starting state of the draws (noise times ``fine_sigmas[0]``, or the noise
    itself when that is inf), ``fine_sigmas`` the fine grid (decreasing, ending in 0; the
    optimised schedule keeps its first level and picks the others from it before refining
    them), ``extra_args`` what ``denoise`` takes besides ``x`` and ``sigma``. ``baselines``
    (name -> sigmas of ``steps`` steps) are evaluated with the same sampler for comparison.
    ``create(kind, name, **options)`` builds samplers from names (default: the process-wide
    plugin manager's). The reference solve runs on the fine grid with ``reference_refine - 1``
    extra levels (geometric) between neighbours; stage 2 stops after ``refine_evaluations``
    runs of the sampler (or when Powell's search converges).
    """
    if create is None:
        from latentkit.plugins import get_plugin_manager

        create = get_plugin_manager().create
    name = sampler_name or (sampler if isinstance(sampler, str) else type(sampler).__name__)
    options = dict(sampler_options or {})
    solver: Sampler = create("sampler", sampler, **options) if isinstance(sampler, str) else sampler
    teacher: Sampler = create("sampler", reference_sampler) if isinstance(reference_sampler, str) else reference_sampler
    if solver.stochastic:
        raise ConfigError(f"schedule optimisation needs a deterministic sampler; {name!r} is stochastic")
    args = dict(extra_args or {})
    fine = [float(s) for s in torch.as_tensor(fine_sigmas, dtype=torch.float64).tolist()]
    _check_levels(fine, "fine_sigmas")
    if fine[-1] != 0.0:
        raise ConfigError(f"fine_sigmas must end in 0, got {fine[-1]}")
    if not 1 <= int(steps) < len(fine) - 1:
        raise ConfigError(f"steps must lie in [1, {len(fine) - 2}] for a fine grid of {len(fine) - 1} steps, got {steps}")
    steps = int(steps)

    # stage 1: the reference trajectory (on the fine grid refined `reference_refine` times,
    # reported at the fine levels), then the DP
    refined, positions = _refine(fine, reference_refine)
    at_fine = set(positions[:-1])
    states: list[torch.Tensor] = []
    denoised: list[torch.Tensor] = []

    def record(info: Mapping[str, Any]) -> None:
        if int(info["i"]) in at_fine:
            states.append(torch.as_tensor(info["x"]).detach().clone())
            denoised.append(torch.as_tensor(info["denoised"]).detach().clone())

    with torch.no_grad():
        grid = torch.tensor(refined, dtype=torch.float32, device=x.device)
        reference = teacher.sample(denoise, x.clone(), grid, extra_args=args, callback=record)
    if len(states) != len(fine) - 1:
        raise ConfigError(
            f"the reference sampler reported {len(states)} of the fine grid's {len(fine) - 1} levels; "
            "use one that calls back once per step (heun, dpmpp_2m, euler)"
        )
    data_std = float(reference.double().std())
    path, _ = dp_schedule([*states, reference], denoised, fine, steps, data_std)
    dp_levels = [fine[i] for i in path]

    # stage 2: pattern search over log sigma of the free levels, with the sampler itself,
    # from the best of the DP path and the baseline spacings that start at the same level
    with torch.no_grad():
        def error(levels: Sequence[float]) -> float:
            return _rms(_run(solver, denoise, x, levels, args, None), reference)

        scored = {key: error([float(s) for s in torch.as_tensor(v, dtype=torch.float64).tolist()])
                  for key, v in (baselines or {}).items()}
        dp_error = error(dp_levels)
        starts = [(dp_error, dp_levels)]
        for key, v in (baselines or {}).items():
            levels = [float(s) for s in torch.as_tensor(v, dtype=torch.float64).tolist()]
            if len(levels) == steps + 1 and levels[0] == fine[0] and levels[-1] == 0.0:
                starts.append((scored[key], levels))
        best, current = min(starts, key=lambda item: item[0])
        current, best = _search(error, list(current), best, refine_evaluations)
    return OptimizedSchedule(
        sigmas=tuple(current), sampler=name, sampler_options=options, model=model, description=description,
        error=best, dp_error=dp_error, baselines=scored, seed=int(seed), num_samples=int(x.shape[0]),
        fine_steps=len(fine) - 1,
    )


def optimize_model_schedule(
    model: Any,
    batch: Mapping[str, Any] | int,
    steps: int,
    sampler: str = "dpmpp_2m",
    *,
    sampler_options: Mapping[str, Any] | None = None,
    fine_steps: int = 64,
    guidance_scale: float = 1.0,
    latent_size: Sequence[int] | None = None,
    seed: int = 0,
    description: str = "",
    refine_evaluations: int = 200,
    **sampling: Any,
) -> OptimizedSchedule:
    """:func:`optimize_schedule` for a :class:`~latentkit.diffusion.LatentDiffusion`: the
    draws are ``batch`` (conditioning inputs, one draw per item, or a number of draws for an
    unconditional model) with seeded noise, guided as :meth:`LatentDiffusion.sample` would
    with ``guidance_scale``; the fine grid is the model's own schedule at ``fine_steps``
    steps, and the baselines its spacings at ``steps`` steps. The result carries the model's
    :func:`model_fingerprint` (of its denoiser)."""
    from latentkit.diffusion.sampling import schedule_sigmas

    problem = model.sampling_problem(
        batch, steps=fine_steps, guidance_scale=guidance_scale, latent_size=latent_size, seed=seed, **sampling
    )
    shape = tuple(problem.x.shape[2:])
    baselines = {}
    for spacing in getattr(model.schedule, "spacings", ()):
        try:
            baselines[spacing] = schedule_sigmas(model.schedule, steps, spacing, latent_shape=shape)
        except ValueError:
            continue
    return optimize_schedule(
        problem.denoise, sampler, steps, problem.x, problem.sigmas, extra_args=problem.extra_args,
        baselines=baselines, sampler_options=sampler_options, model=model_fingerprint(model.denoiser),
        description=description, seed=seed, refine_evaluations=refine_evaluations,
        create=model.plugin_manager.create,
    )

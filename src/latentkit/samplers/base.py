"""Shared machinery of the built-in samplers (all in sigma space, k-diffusion convention).

Every sampler integrates the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``
(Karras et al. 2022, Eq. 3 with ``s(t) = 1``, ``sigma(t) = t``) or one of its SDE
counterparts, seeing the model only through ``denoise(x, sigma, **extra_args) -> x0``.
Scalar coefficients are computed in float64 from the grid (``sigmas.tolist()`` once), so the
loop never synchronises with an accelerator.

A grid may start at ``sigma = inf``: pure noise, ``t = 1`` of a flow-matching model (or a
zero-terminal-SNR schedule). ``x`` then holds the unit-variance noise itself (the limit of
``x / sigma``), and every sampler takes the same first step, the limit of its step as
``sigma -> inf``: ``x_1 = D(noise, inf) + sigma_down noise + sigma_up xi``, with ``sigma_down =
sigma_1, sigma_up = 0`` for the deterministic samplers (the DDIM / Euler limit, which is the
flow Euler step ``z_1 = z_0 + (t_1 - 1) v`` exactly) and the sampler's own ancestral split
for the ancestral ones (:meth:`SigmaSampler.infinity_split`). The remaining grid, all finite,
is then integrated by the sampler's own rule. That first step is first order, so on such grids
a sampler's observed order is at most 2.

The last step is an option of every sampler, ``final_step`` (a keyword-only constructor
argument that :class:`SigmaSampler` adds to every subclass, so no sampler's ``__init__``
mentions it): ``"zero"`` (the default) takes the sampler's own step to the final 0 of the
grid; ``"denoise"`` integrates the grid without its final 0 (to the last non-zero level,
``sigma_last``, by the sampler's own rule, for which that level is then the end of the grid)
and returns ``D(x, sigma_last)``. A grid that stops above 0 is integrated the same way in both
modes.
"""

from __future__ import annotations

import abc
import functools
import inspect
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from latentkit.errors import ShapeError
from latentkit.interfaces import DenoiseFn, Sampler, SamplerCallback
from latentkit.random import Generators, randn_like

__all__ = ["FINAL_STEPS", "SigmaSampler", "ancestral_step", "initial_state", "lowered_order", "to_d"]

#: The values of ``final_step`` (see the module docstring).
FINAL_STEPS: tuple[str, ...] = ("zero", "denoise")


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The PF-ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, Eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step ``sigma_from -> sigma_to`` into a deterministic step to ``sigma_down`` and
    fresh noise of std ``sigma_up`` (k-diffusion ``get_ancestral_step``): with ``eta = 1``,
    ``sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2`` is DDPM's posterior
    variance (Ho et al. 2020, Eq. 7) and ``eta`` scales it as DDIM's eta (Song et al. 2021,
    Eq. 16); ``sigma_down = sqrt(sigma_to^2 - sigma_up^2)``."""
    if eta == 0.0 or sigma_to == 0.0:
        return sigma_to, 0.0
    # (sigma_from^2 - sigma_to^2) / sigma_from^2, whose limit is 1 as sigma_from -> inf
    share = 1.0 if math.isinf(sigma_from) else (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * share))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def initial_state(noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """The sampler's starting ``x`` for unit noise at ``sigma_max``: ``sigma_max * noise``, or
    the noise itself when ``sigma_max`` is inf (pure noise; see the module docstring)."""
    return noise if math.isinf(float(sigma_max)) else noise * float(sigma_max)


def lowered_order(order: int, i: int, steps: int, *, lower_order_final: bool, euler_at_final: bool) -> int:
    """The order of step ``i`` of ``steps`` for a multistep solver configured for ``order``
    (the caller caps it by the history while that fills), by the rule of diffusers'
    ``DPMSolverMultistepScheduler`` and ``DEISMultistepScheduler``: with
    ``lower_order_final`` and fewer than 15 steps, the last step is first order and the one
    before it at most second order; with ``euler_at_final`` the last step is first order.

    "Last" is the step to the grid's last level. On a grid that ends in 0 that step is
    ``x = D(x, sigma_last)`` in every data-prediction solver whatever its order, so there the
    rule only changes the step before it (``lower_order_final``, 3rd-order solvers).
    """
    if i == steps - 1 and (euler_at_final or (lower_order_final and steps < 15)):
        return 1
    if i == steps - 2 and lower_order_final and steps < 15:
        return min(order, 2)
    return order


def _checked_final_step(final_step: Any, owner: str) -> str:
    if final_step not in FINAL_STEPS:
        raise ValueError(f"{owner}: final_step must be one of {list(FINAL_STEPS)}, got {final_step!r}")
    return str(final_step)


def _accepting_final_step(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` with a keyword-only ``final_step="zero"`` that is set on the instance after
    ``init`` ran (the signature, which ``latentkit.create`` checks config keys against,
    shows it)."""
    signature = inspect.signature(init)
    params = list(signature.parameters.values())
    extra = inspect.Parameter("final_step", inspect.Parameter.KEYWORD_ONLY, default="zero", annotation="str")
    at = next((k for k, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))

    @functools.wraps(init)
    def __init__(self: SigmaSampler, *args: Any, final_step: str = "zero", **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.final_step = _checked_final_step(final_step, type(self).__name__)

    __init__.__signature__ = signature.replace(parameters=[*params[:at], extra, *params[at:]])  # type: ignore[attr-defined]
    return __init__


class SigmaSampler(Sampler):
    """Base class of the built-in samplers: checks the inputs, then runs :meth:`run`.

    ``sigmas`` must be a 1-D, non-increasing, non-negative tensor of at least two levels in
    which only the last may be 0 (the contract asks for a final 0; a grid that stops above 0,
    as in partial img2img, is also integrated, and :meth:`model_calls` then counts one call
    more for the samplers that treat the final step to 0 specially). The first level may be
    inf (pure noise; see the module docstring), and ``x`` is then the unit noise.

    Every subclass accepts ``final_step="zero" | "denoise"`` (module docstring) as a
    keyword-only constructor argument without declaring it: :meth:`__init_subclass__` wraps a
    subclass's own ``__init__`` to take it, and :meth:`sample` applies it, so a sampler only
    writes its loop (:meth:`run`). :meth:`model_calls` needs no change for it when the
    sampler's step to 0 costs one call (every built-in): ``"denoise"`` replaces that call.
    """

    #: One line naming the algorithm and its paper.
    algorithm: str = ""
    #: What the last step does: ``"zero"`` (the sampler's own step to 0) or ``"denoise"``.
    final_step: str = "zero"

    def __init__(self, *, final_step: str = "zero") -> None:
        self.final_step = _checked_final_step(final_step, type(self).__name__)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and "final_step" not in inspect.signature(init).parameters:
            cls.__init__ = _accepting_final_step(init)  # type: ignore[method-assign]

    def sample(
        self,
        denoise: DenoiseFn,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        extra_args: Mapping[str, Any] | None = None,
        callback: SamplerCallback | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Integrate from ``sigmas[0]`` to ``sigmas[-1]``; see :class:`~latentkit.interfaces.Sampler`."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise ShapeError(f"{name}.sample: x must be a floating tensor (B, ...), got {x!r:.80}")
        sig = torch.as_tensor(sigmas)
        if sig.ndim != 1 or sig.numel() < 2:
            raise ShapeError(
                f"{name}.sample: sigmas must be a 1-D tensor of at least 2 noise levels "
                f"(steps + 1), got shape {tuple(sig.shape)}"
            )
        levels = [float(s) for s in sig.detach().cpu().double().tolist()]
        if any(not (math.isfinite(s) or (i == 0 and s == math.inf)) or s < 0 for i, s in enumerate(levels)):
            raise ValueError(
                f"{name}.sample: sigmas must be finite and >= 0 (only the first may be inf, "
                f"pure noise), got {levels}"
            )
        if any(b > a for a, b in itertools.pairwise(levels)) or 0.0 in levels[:-1]:
            raise ValueError(
                f"{name}.sample: sigmas must decrease and only the last may be 0, got {levels}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = list(generator)
            if len(generator) != x.shape[0]:
                raise ShapeError(
                    f"{name}.sample: expected one generator per batch item ({x.shape[0]}), "
                    f"got {len(generator)}"
                )
        args = dict(extra_args or {})
        batch = x.shape[0]

        def model(x_in: torch.Tensor, sigma: float) -> torch.Tensor:
            s_in = x_in.new_full((batch,), sigma)
            return denoise(x_in, s_in, **args)

        # final_step="denoise": integrate the grid without its final 0, then x = D(x, sigma_last).
        denoise_last = self.final_step == "denoise" and levels[-1] == 0.0
        if denoise_last:
            levels = levels[:-1]
        last = len(levels) - 1  # index of the step that starts at levels[-1]
        step_callback = callback
        if levels[0] == math.inf and len(levels) > 1:
            x = self.step_from_infinity(model, x, levels[1], callback=step_callback, generator=generator)
            levels = levels[1:]
            step_callback = _shifted(step_callback)
        if len(levels) > 1:
            x = self.run(model, x, levels, callback=step_callback, generator=generator)
        if denoise_last:
            denoised = model(x, levels[-1])
            self.report(callback, last, x, levels[-1], 0.0, denoised)
            x = denoised
        return x

    def infinity_split(self, sigma_next: float) -> tuple[float, float]:
        """``(sigma_down, sigma_up)`` of the first step from ``sigma = inf`` to ``sigma_next``:
        ``(sigma_next, 0)`` for a deterministic sampler, and for a stochastic one the limit
        of the ancestral split with its ``eta`` (1 when it has none, e.g. DDPM):
        ``sigma_up = min(1, eta) sigma_next``."""
        eta = float(getattr(self, "eta", 1.0)) if self.stochastic else 0.0
        return ancestral_step(math.inf, sigma_next, eta)

    def step_from_infinity(
        self,
        model: Any,
        noise: torch.Tensor,
        sigma_next: float,
        *,
        callback: SamplerCallback | None,
        generator: Generators,
    ) -> torch.Tensor:
        """The first step from pure noise: ``D(noise, inf) + sigma_down noise + sigma_up xi``
        (see the module docstring)."""
        denoised = model(noise, math.inf)
        self.report(callback, 0, noise, math.inf, sigma_next, denoised)
        sigma_down, sigma_up = self.infinity_split(sigma_next)
        x = denoised + noise * sigma_down if sigma_down > 0 else denoised
        if sigma_up > 0:
            x = x + randn_like(x, generator) * (float(getattr(self, "s_noise", 1.0)) * sigma_up)
        return x

    @abc.abstractmethod
    def run(
        self,
        model: Any,
        x: torch.Tensor,
        sigmas: list[float],
        *,
        callback: SamplerCallback | None,
        generator: Generators,
    ) -> torch.Tensor:
        """The sampler loop on checked inputs: ``model(x, sigma: float) -> x0`` and ``sigmas``
        as Python floats."""

    @staticmethod
    def report(
        callback: SamplerCallback | None,
        i: int,
        x: torch.Tensor,
        sigma: float,
        sigma_next: float,
        denoised: torch.Tensor,
    ) -> None:
        """Call ``callback`` with ``i, x, sigma, sigma_next, denoised`` (sigmas as floats)."""
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})

    def __repr__(self) -> str:
        options = dict(self.options())
        if self.final_step != "zero":
            options["final_step"] = self.final_step
        opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
        return f"{type(self).__name__}({opts})"

    def options(self) -> dict[str, Any]:
        """The constructor options of this sampler (for ``repr`` and logging)."""
        return {}


def _shifted(callback: SamplerCallback | None) -> SamplerCallback | None:
    """``callback`` with step indices one higher (after the first step from infinity)."""
    if callback is None:
        return None

    def shifted(info: dict[str, Any]) -> None:
        callback({**info, "i": info["i"] + 1})

    return shifted

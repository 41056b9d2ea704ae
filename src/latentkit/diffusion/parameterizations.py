"""Parameterizations: what the backbone predicts, kept apart from the backbone (EDM style).

Every parameterization writes the denoiser as (Karras et al. 2022, Eq. 7 and Table 1)::

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma))

with ``x = x0 + sigma * eps`` (the k-diffusion / EDM sigma-space convention) and ``F`` the
backbone. The training target of ``F`` follows from the same scalings,
``F_target = (x0 - c_skip * x) / c_out`` (Karras et al. 2022, Eq. 8), which gives back the
noise for ``eps``, ``v`` for ``v`` and ``x0`` for ``x0``.

=========  ======================  ============================  =====================  ===========================
name       c_skip                  c_out                         c_in                   c_noise
=========  ======================  ============================  =====================  ===========================
``eps``    1                       -sigma                        1/sqrt(sigma^2+sd^2)   ``schedule.sigma_to_t``
``v``      sd^2/(sigma^2+sd^2)     -sigma*sd/sqrt(sigma^2+sd^2)  1/sqrt(sigma^2+sd^2)   ``schedule.sigma_to_t``
``x0``     0                       1                             1/sqrt(sigma^2+sd^2)   ``schedule.sigma_to_t``
``edm``    sd^2/(sigma^2+sd^2)     sigma*sd/sqrt(sigma^2+sd^2)   1/sqrt(sigma^2+sd^2)   ln(sigma)/4
``flow``   1/(1+sigma)             -sigma/(1+sigma)              1/(1+sigma)            ``schedule.sigma_to_t``
``flow_x0`` 0                      1                             1/(1+sigma)            ``schedule.sigma_to_t``
=========  ======================  ============================  =====================  ===========================

``sd`` is ``sigma_data``. For ``eps``, ``v`` and ``x0`` it defaults to 1, which makes
``c_in * x`` exactly the variance-preserving ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
eps`` of DDPM (Ho et al. 2020) and ``v`` exactly Salimans & Ho (2022)'s
``v = alpha eps - sigma_vp x0``; checkpoints trained with diffusers' schedulers therefore
load unchanged. For ``edm`` it defaults to the schedule's ``sigma_data`` (0.5 if the schedule
has none), as in EDM.

Flow matching (rectified flow; Liu et al. 2023, Lipman et al. 2023, Esser et al. 2024) trains
on the straight path ``z_t = (1 - t) x0 + t eps``. With ``t = sigma / (1 + sigma)`` this is the
sigma-space state divided by ``1 + sigma`` (``z_t = x / (1 + sigma)``), so ``c_in = 1 / (1 +
sigma)``, and the velocity ``v = eps - x0`` gives ``x0 = z_t - t v``, i.e. ``c_skip = 1 / (1 +
sigma)`` and ``c_out = -sigma / (1 + sigma) = -t``. ``flow_x0`` feeds the same ``z_t`` to a
backbone that predicts x0 directly.

Pure noise, ``sigma = inf`` (``t = 1`` of a flow, zero terminal SNR), is a valid noise level
for the parameterizations whose scalings have finite limits there (:meth:`Parameterization.
limits_at_infinity`: ``flow``, ``flow_x0``, ``v``, ``x0``). At ``sigma = inf`` the state ``x``
holds ``x / sigma``, the unit-variance noise itself, and ``c_skip x``, ``c_out`` and ``c_in x``
are replaced by their limits; ``eps`` and ``edm`` have none (``c_skip sigma`` and ``c_noise``
diverge) and raise ``ValueError``.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import nn

from latentkit.errors import CompositionError, ShapeError
from latentkit.interfaces import Denoiser, Schedule
from latentkit.specs import Conditioning

__all__ = [
    "PARAMETERIZATIONS",
    "EDMParameterization",
    "EpsParameterization",
    "FlowParameterization",
    "FlowX0Parameterization",
    "Parameterization",
    "ParameterizedDenoiser",
    "VParameterization",
    "X0Parameterization",
    "append_dims",
    "broadcast_sigma",
    "get_parameterization",
    "parameterizations_for",
]


def broadcast_sigma(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a number, a scalar tensor or a (B,) tensor) as a (B,) tensor on ``x``'s
    device and dtype; raises :class:`ShapeError` for any other shape."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ShapeError(
            f"sigma must be a scalar or have shape ({x.shape[0]},) for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(sigma.shape)}"
        )
    return sigma


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ``ndim`` dimensions in all, for broadcasting against x."""
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


class Parameterization(abc.ABC):
    """Scalings of one parameterization (Karras et al. 2022, Table 1).

    Subclasses define :meth:`c_skip`, :meth:`c_out`, :meth:`c_in` and :meth:`c_noise`; the
    target and the x0 conversion follow from them. All take sigma as a tensor and return a
    tensor of the same shape.
    """

    #: Registry name.
    name: ClassVar[str]
    #: ``sigma_data`` used when neither the caller nor the schedule gives one.
    default_sigma_data: ClassVar[float] = 1.0
    #: Whether ``sigma_data`` is taken from the schedule (``schedule.sigma_data``) by default.
    sigma_data_from_schedule: ClassVar[bool] = False

    def __init__(self, sigma_data: float | None = None) -> None:
        sd = self.default_sigma_data if sigma_data is None else float(sigma_data)
        if not (math.isfinite(sd) and sd > 0):
            raise ValueError(f"{type(self).__name__}: sigma_data must be positive, got {sigma_data}")
        self.sigma_data = sd

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_data={self.sigma_data})"

    @abc.abstractmethod
    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """Skip scaling of the noisy input."""

    @abc.abstractmethod
    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """Scaling of the backbone output."""

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """Input scaling ``1 / sqrt(sigma^2 + sigma_data^2)``: unit-variance backbone input."""
        return (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """The backbone's noise input: the schedule's ``sigma_to_t`` (a fractional timestep
        for discrete schedules)."""
        return schedule.sigma_to_t(sigma)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in)`` at ``sigma``."""
        return self.c_skip(sigma), self.c_out(sigma), self.c_in(sigma)

    def limits_at_infinity(self) -> tuple[float, float, float] | None:
        """``(lim c_skip sigma, lim c_out, lim c_in sigma)`` as ``sigma -> inf``, or None where
        one of them (or ``c_noise``) diverges. The default is None; parameterizations that can
        start from pure noise override it."""
        return None

    def effective_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in)`` per item (B,), in the form that multiplies the state
        ``x``: at ``sigma = inf``, where ``x`` holds the unit noise ``x / sigma``, they are the
        limits of ``c_skip sigma``, ``c_out`` and ``c_in sigma``. Chosen with ``torch.where`` on
        the (B,) scalings, so no item is inspected on the host (no device sync per call).

        A parameterization without limits cannot be evaluated there: on the CPU that is a
        ``ValueError``; on an accelerator it is not checked here (composition already refuses
        a schedule that starts at inf for it, see :class:`ParameterizedDenoiser`)."""
        c_skip, c_out, c_in = self.scalings(sigma)
        limits = self.limits_at_infinity()
        if limits is None:
            if sigma.device.type == "cpu" and bool(torch.isinf(sigma).any()):
                raise ValueError(
                    f"the {self.name!r} parameterization cannot be evaluated at sigma = inf (pure "
                    "noise): its scalings diverge there; start the grid at a finite sigma, or use "
                    "a parameterization with limits there (flow, flow_x0, v, x0)"
                )
            return c_skip, c_out, c_in
        inf = torch.isinf(sigma)
        skip_lim, out_lim, in_lim = (torch.full_like(c_skip, v) for v in limits)
        return torch.where(inf, skip_lim, c_skip), torch.where(inf, out_lim, c_out), torch.where(inf, in_lim, c_in)

    def skip_and_out(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_skip x, c_out)`` broadcast against ``x``, with the limits where sigma is inf
        (``x`` then holds the unit noise ``x / sigma``)."""
        c_skip, c_out, _ = self.effective_scalings(sigma)
        return append_dims(c_skip, x.ndim) * x, append_dims(c_out, x.ndim)

    def scale_input(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The backbone input ``c_in x`` (its limit where sigma is inf)."""
        return x * append_dims(self.effective_scalings(sigma)[2], x.ndim)

    def target(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Training target of the backbone, ``(x0 - c_skip x) / c_out`` (Karras et al. 2022,
        Eq. 8); ``sigma`` has shape (B,)."""
        skip_x, c_out = self.skip_and_out(x, sigma)
        return (x0 - skip_x) / c_out

    def to_x0(self, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Backbone output -> denoised x0, ``c_skip x + c_out F`` (Karras et al. 2022, Eq. 7)."""
        skip_x, c_out = self.skip_and_out(x, sigma)
        return skip_x + c_out * output

    def from_x0(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoised x0 -> this parameterization's prediction (the inverse of :meth:`to_x0`)."""
        return self.target(x0, x, sigma)


class EpsParameterization(Parameterization):
    """Noise prediction (Ho et al. 2020): ``D = x - sigma * eps_hat``."""

    name = "eps"

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """1."""
        return torch.ones_like(sigma)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """-sigma."""
        return -sigma


class VParameterization(Parameterization):
    """v prediction (Salimans & Ho 2022, Sec. 4; ``v = (eps - sigma x0) / sqrt(1 + sigma^2)``
    for ``sigma_data = 1``)."""

    name = "v"

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """``sd^2 / (sigma^2 + sd^2)``."""
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """``-sigma sd / sqrt(sigma^2 + sd^2)``."""
        return -sigma * self.sigma_data * (sigma**2 + self.sigma_data**2).rsqrt()

    def limits_at_infinity(self) -> tuple[float, float, float]:
        """``c_skip sigma -> 0``, ``c_out -> -sd``, ``c_in sigma -> 1``."""
        return 0.0, -self.sigma_data, 1.0


class X0Parameterization(Parameterization):
    """Direct x0 prediction: ``D = F``."""

    name = "x0"

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """0."""
        return torch.zeros_like(sigma)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """1."""
        return torch.ones_like(sigma)

    def limits_at_infinity(self) -> tuple[float, float, float]:
        """``c_skip sigma = 0``, ``c_out = 1``, ``c_in sigma -> 1``."""
        return 0.0, 1.0, 1.0


class EDMParameterization(Parameterization):
    """EDM preconditioning (Karras et al. 2022, Table 1, "Ours"), with
    ``c_noise = ln(sigma) / 4``."""

    name = "edm"
    default_sigma_data = 0.5
    sigma_data_from_schedule = True

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """``sd^2 / (sigma^2 + sd^2)``."""
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """``sigma sd / sqrt(sigma^2 + sd^2)``."""
        return sigma * self.sigma_data * (sigma**2 + self.sigma_data**2).rsqrt()

    def c_noise(self, sigma: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """``ln(sigma) / 4`` whatever the schedule (Karras et al. 2022, Table 1)."""
        return 0.25 * sigma.log()


class FlowParameterization(Parameterization):
    """Flow matching / rectified flow with velocity prediction (Liu et al. 2023; Lipman et al.
    2023; Esser et al. 2024, Sec. 2): the backbone sees ``z_t = (1 - t) x0 + t eps = x / (1 +
    sigma)`` at ``t = sigma / (1 + sigma)`` and predicts ``v = eps - x0``; ``x0 = z_t - t v``.
    ``sigma_data`` plays no part."""

    name = "flow"

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """``1 / (1 + sigma)``."""
        return 1.0 / (1.0 + sigma)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """``-sigma / (1 + sigma)``, i.e. ``-t``."""
        return -sigma / (1.0 + sigma)

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """``1 / (1 + sigma)``: the flow state ``z_t``."""
        return 1.0 / (1.0 + sigma)

    def limits_at_infinity(self) -> tuple[float, float, float]:
        """At ``t = 1``: ``c_skip sigma -> 1``, ``c_out -> -1``, ``c_in sigma -> 1``
        (``x0 = eps - v``)."""
        return 1.0, -1.0, 1.0


class FlowX0Parameterization(Parameterization):
    """Flow matching with x0 prediction: the backbone sees the flow state ``z_t = x / (1 +
    sigma)`` and predicts x0 directly (``D = F``)."""

    name = "flow_x0"

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """0."""
        return torch.zeros_like(sigma)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """1."""
        return torch.ones_like(sigma)

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """``1 / (1 + sigma)``: the flow state ``z_t``."""
        return 1.0 / (1.0 + sigma)

    def limits_at_infinity(self) -> tuple[float, float, float]:
        """``c_skip sigma = 0``, ``c_out = 1``, ``c_in sigma -> 1``."""
        return 0.0, 1.0, 1.0


#: Parameterizations by name.
PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    cls.name: cls
    for cls in (
        EpsParameterization, VParameterization, X0Parameterization, EDMParameterization,
        FlowParameterization, FlowX0Parameterization,
    )
}


def get_parameterization(
    name: str | Parameterization,
    *,
    sigma_data: float | None = None,
    schedule: Schedule | None = None,
) -> Parameterization:
    """The parameterization called ``name`` (an instance passes through unchanged).

    ``sigma_data`` defaults to the schedule's ``sigma_data`` for ``edm`` and to 1 for the
    others. An unknown name raises ``KeyError`` listing the known ones.
    """
    if isinstance(name, Parameterization):
        return name
    try:
        cls = PARAMETERIZATIONS[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown parameterization {name!r}; available: {', '.join(sorted(PARAMETERIZATIONS))}"
        ) from None
    if sigma_data is None and cls.sigma_data_from_schedule and schedule is not None:
        sigma_data = getattr(schedule, "sigma_data", None)
    return cls(sigma_data=sigma_data)


def parameterizations_for(schedule: Schedule) -> list[str]:
    """The names of the parameterizations that can integrate ``schedule``'s grids: all of them
    when ``sigma_max`` is finite, those with limits at infinity (:meth:`Parameterization.
    limits_at_infinity`) when it is inf (pure noise, e.g. the flow schedule)."""
    names = sorted(PARAMETERIZATIONS)
    if math.isfinite(float(schedule.sigma_max)):
        return names
    return [n for n in names if PARAMETERIZATIONS[n]().limits_at_infinity() is not None]


class ParameterizedDenoiser(nn.Module):
    """``(backbone, schedule, parameterization)`` -> ``denoise(x, sigma, cond=None) -> x0``,
    the one function every sampler integrates (Karras et al. 2022, Eq. 7).

    The backbone is registered as the submodule ``backbone``; the schedule only maps sigma to
    the backbone's noise input.
    """

    def __init__(
        self,
        backbone: Denoiser,
        schedule: Schedule,
        parameterization: str | Parameterization = "eps",
        *,
        sigma_data: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.parameterization = get_parameterization(
            parameterization, sigma_data=sigma_data, schedule=schedule
        )
        if not math.isfinite(float(schedule.sigma_max)) and self.parameterization.limits_at_infinity() is None:
            raise CompositionError(
                f"the {self.parameterization.name!r} parameterization cannot start from pure noise, "
                f"but {type(schedule).__name__}'s grids start at sigma = inf; expected one of "
                f"{parameterizations_for(schedule)}, or a schedule with a finite sigma_max "
                "(e.g. FlowSchedule(t_max=0.999))"
            )

    def model_output(
        self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """The raw backbone output ``F(c_in x, c_noise, cond)`` (in target space)."""
        sigma = broadcast_sigma(sigma, x)
        t = self.parameterization.c_noise(sigma, self.schedule)
        return self.backbone(self.parameterization.scale_input(x, sigma), t.to(torch.float32), cond)

    def denoise(self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None,
                **extra: Any) -> torch.Tensor:
        """Denoised estimate of x0 from ``x = x0 + sigma * eps``; extra keyword arguments
        (what samplers pass through ``extra_args``) other than ``cond`` are ignored. At
        ``sigma = inf`` ``x`` is the unit noise (see the module docstring)."""
        sigma_b = broadcast_sigma(sigma, x)
        out = self.model_output(x, sigma_b, cond)
        return self.parameterization.to_x0(out.to(x.dtype), x, sigma_b)

    def forward(self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None,
                **extra: Any) -> torch.Tensor:
        """Same as :meth:`denoise`."""
        return self.denoise(x, sigma, cond, **extra)

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
=========  ======================  ============================  =====================  ===========================

``sd`` is ``sigma_data``. For ``eps``, ``v`` and ``x0`` it defaults to 1, which makes
``c_in * x`` exactly the variance-preserving ``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
eps`` of DDPM (Ho et al. 2020) and ``v`` exactly Salimans & Ho (2022)'s
``v = alpha eps - sigma_vp x0``; checkpoints trained with diffusers' schedulers therefore
load unchanged. For ``edm`` it defaults to the schedule's ``sigma_data`` (0.5 if the schedule
has none), as in EDM.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar

import torch
from torch import nn

from latentkit.errors import ShapeError
from latentkit.interfaces import Denoiser, Schedule
from latentkit.specs import Conditioning

__all__ = [
    "PARAMETERIZATIONS",
    "EDMParameterization",
    "EpsParameterization",
    "Parameterization",
    "ParameterizedDenoiser",
    "VParameterization",
    "X0Parameterization",
    "append_dims",
    "broadcast_sigma",
    "get_parameterization",
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

    def target(self, x0: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Training target of the backbone, ``(x0 - c_skip x) / c_out`` (Karras et al. 2022,
        Eq. 8); ``sigma`` has shape (B,)."""
        c_skip, c_out = (append_dims(c, x.ndim) for c in (self.c_skip(sigma), self.c_out(sigma)))
        return (x0 - c_skip * x) / c_out

    def to_x0(self, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Backbone output -> denoised x0, ``c_skip x + c_out F`` (Karras et al. 2022, Eq. 7)."""
        c_skip, c_out = (append_dims(c, x.ndim) for c in (self.c_skip(sigma), self.c_out(sigma)))
        return c_skip * x + c_out * output

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


class X0Parameterization(Parameterization):
    """Direct x0 prediction: ``D = F``."""

    name = "x0"

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """0."""
        return torch.zeros_like(sigma)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        """1."""
        return torch.ones_like(sigma)


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


#: Parameterizations by name.
PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    cls.name: cls
    for cls in (EpsParameterization, VParameterization, X0Parameterization, EDMParameterization)
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

    def model_output(
        self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """The raw backbone output ``F(c_in x, c_noise, cond)`` (in target space)."""
        sigma = broadcast_sigma(sigma, x)
        c_in = append_dims(self.parameterization.c_in(sigma), x.ndim)
        t = self.parameterization.c_noise(sigma, self.schedule)
        return self.backbone(x * c_in, t.to(torch.float32), cond)

    def denoise(self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None,
                **extra: Any) -> torch.Tensor:
        """Denoised estimate of x0 from ``x = x0 + sigma * eps``; extra keyword arguments
        (what samplers pass through ``extra_args``) other than ``cond`` are ignored."""
        sigma_b = broadcast_sigma(sigma, x)
        out = self.model_output(x, sigma_b, cond)
        return self.parameterization.to_x0(out.to(x.dtype), x, sigma_b)

    def forward(self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None,
                **extra: Any) -> torch.Tensor:
        """Same as :meth:`denoise`."""
        return self.denoise(x, sigma, cond, **extra)

"""The denoising training objective: per-sample loss, loss weightings, offset noise.

The loss of one item is a weighted mean squared error in the parameterization's target space,

    L = w(sigma) * mean((F(c_in x, c_noise) - F_target)^2),   x = x0 + sigma * n,

with ``sigma`` drawn by the schedule's ``sample_training_sigmas`` (uniform timesteps for
discrete schedules, log-normal for EDM). Since ``D - x0 = c_out (F - F_target)``, an x0-space
weighting ``lambda(sigma)`` (Karras et al. 2022, Eq. 2 and 8) is the target-space weight
``w = lambda * c_out^2``. Every weighting below is defined once, in x0 space, and converted
with the parameterization's own ``c_out``, so it is the same objective for ``eps``, ``v``,
``x0`` and ``edm``:

================ ================================ ==========================================
name             lambda(sigma), x0 space          published form it reproduces
================ ================================ ==========================================
``uniform``      1 / c_out^2                      plain MSE on the target (DDPM's L_simple)
``min_snr``      min(SNR, gamma)                  Hang et al. 2023: eps
                                                  min(SNR, g)/SNR, v min(SNR, g)/(SNR+1),
                                                  x0 min(SNR, g)
``soft_min_snr`` (1/SNR + 1/gamma)^-1             Crowson et al. 2024 (HDiT); with
                                                  gamma = 1/sigma_data^2, k-diffusion's
                                                  (sigma sd)^2 / (sigma^2 + sd^2)^2 for edm
``edm``          (sigma^2 + sd^2) / (sigma sd)^2  Karras et al. 2022, Table 1
``sigma_sqrt``   1 / t^2                          diffusers' SD3 scripts, ``sigma_sqrt``
``cosmap``       2 / (pi (1 - 2t + 2t^2))         diffusers' SD3 scripts, ``cosmap`` (Esser
                                                  et al. 2024, Eq. 21's density as a weight)
================ ================================ ==========================================

``SNR = 1 / sigma^2`` (= alpha^2 / sigma_vp^2 of a variance-preserving process) and ``t =
sigma / (1 + sigma)`` is the flow time. The two flow weightings are x0-space weights, as in
diffusers' SD3 training scripts with their default ``precondition_outputs`` (which compare
``x0 = z_t - t v`` with the data): for a ``flow`` model (``c_out = -t``) ``sigma_sqrt`` is
therefore the plain velocity MSE, and ``uniform`` is too; ``cosmap`` weights the velocity
error by ``2 t^2 / (pi (1 - 2t + 2t^2))``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from latentkit.diffusion.parameterizations import (
    Parameterization,
    ParameterizedDenoiser,
    append_dims,
)
from latentkit.random import Generators, randn, randn_like
from latentkit.specs import Conditioning

__all__ = [
    "LOSS_WEIGHTINGS",
    "CosmapWeighting",
    "DiffusionObjective",
    "EDMWeighting",
    "LossWeighting",
    "MinSNRWeighting",
    "SigmaSqrtWeighting",
    "SoftMinSNRWeighting",
    "UniformWeighting",
    "get_loss_weighting",
    "offset_noise",
    "snr",
]


def snr(sigma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``1 / sigma^2`` of ``x = x0 + sigma * eps``."""
    return sigma.pow(-2)


class LossWeighting(abc.ABC):
    """A loss weighting, defined in x0 space and converted to any parameterization's target
    space by :meth:`target_weight`."""

    name: ClassVar[str]

    @abc.abstractmethod
    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``lambda(sigma)``: the weight of ``|D(x, sigma) - x0|^2``."""

    def target_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``lambda(sigma) * c_out(sigma)^2``: the weight of ``|F - F_target|^2``."""
        return self.x0_weight(sigma, parameterization) * parameterization.c_out(sigma) ** 2

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class UniformWeighting(LossWeighting):
    """Unweighted MSE on the parameterization's target (Ho et al. 2020, L_simple)."""

    name = "uniform"

    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``1 / c_out^2``."""
        return parameterization.c_out(sigma) ** -2

    def target_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """1 (computed directly, without dividing by c_out^2)."""
        return torch.ones_like(sigma)


class MinSNRWeighting(LossWeighting):
    """Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy"): ``lambda = min(SNR, gamma)`` in x0 space."""

    name = "min_snr"

    def __init__(self, gamma: float = 5.0) -> None:
        if not gamma > 0:
            raise ValueError(f"min_snr: gamma must be positive, got {gamma}")
        self.gamma = float(gamma)

    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``min(1 / sigma^2, gamma)``."""
        return snr(sigma).clamp(max=self.gamma)


class SoftMinSNRWeighting(LossWeighting):
    """Soft-min-SNR (Crowson et al. 2024, "Scalable High-Resolution Pixel-Space Image
    Synthesis with Hourglass Diffusion Transformers", Sec. 4): the harmonic soft minimum
    ``lambda = (1/SNR + 1/gamma)^-1 = 1 / (sigma^2 + 1/gamma)``. ``gamma=None`` uses
    ``1 / sigma_data^2``, which is k-diffusion's ``soft-min-snr``."""

    name = "soft_min_snr"

    def __init__(self, gamma: float | None = None) -> None:
        if gamma is not None and not gamma > 0:
            raise ValueError(f"soft_min_snr: gamma must be positive, got {gamma}")
        self.gamma = None if gamma is None else float(gamma)

    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``1 / (sigma^2 + 1/gamma)``."""
        gamma = self.gamma if self.gamma is not None else parameterization.sigma_data**-2
        return 1.0 / (sigma**2 + 1.0 / gamma)


class EDMWeighting(LossWeighting):
    """EDM's ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (Karras et
    al. 2022, Table 1), which makes the edm target-space weight 1. ``sigma_data=None`` uses
    the parameterization's."""

    name = "edm"

    def __init__(self, sigma_data: float | None = None) -> None:
        self.sigma_data = None if sigma_data is None else float(sigma_data)

    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``(sigma^2 + sd^2) / (sigma sd)^2``."""
        sd = self.sigma_data if self.sigma_data is not None else parameterization.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2


def flow_time(sigma: torch.Tensor) -> torch.Tensor:
    """The flow time ``t = sigma / (1 + sigma)``."""
    return sigma / (1.0 + sigma)


class SigmaSqrtWeighting(LossWeighting):
    """diffusers' ``sigma_sqrt`` SD3 weighting: ``lambda = t^-2`` on the x0 error, which is the
    plain velocity MSE of a ``flow`` model."""

    name = "sigma_sqrt"

    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``1 / t^2``."""
        return flow_time(sigma) ** -2


class CosmapWeighting(LossWeighting):
    """diffusers' ``cosmap`` SD3 weighting, ``lambda = 2 / (pi (1 - 2t + 2t^2))`` on the x0
    error: the density of SD3's CosMap time sampling (Esser et al. 2024, Eq. 21) used as a
    weight."""

    name = "cosmap"

    def x0_weight(self, sigma: torch.Tensor, parameterization: Parameterization) -> torch.Tensor:
        """``2 / (pi (1 - 2t + 2t^2))``."""
        t = flow_time(sigma)
        return 2.0 / (math.pi * (1.0 - 2.0 * t + 2.0 * t**2))


#: Loss weightings by name.
LOSS_WEIGHTINGS: dict[str, Callable[..., LossWeighting]] = {
    cls.name: cls
    for cls in (
        UniformWeighting, MinSNRWeighting, SoftMinSNRWeighting, EDMWeighting,
        SigmaSqrtWeighting, CosmapWeighting,
    )
}


def get_loss_weighting(name: str | LossWeighting, **kwargs: Any) -> LossWeighting:
    """The loss weighting called ``name``, built with ``kwargs`` (``gamma=`` for the SNR
    weightings, ``sigma_data=`` for ``edm``); an instance passes through unchanged.
    An unknown name raises ``KeyError`` listing the known ones."""
    if isinstance(name, LossWeighting):
        return name
    try:
        cls = LOSS_WEIGHTINGS[name]
    except (KeyError, TypeError):
        raise KeyError(
            f"unknown loss weighting {name!r}; available: {', '.join(sorted(LOSS_WEIGHTINGS))}"
        ) from None
    return cls(**kwargs)


def offset_noise(x0: torch.Tensor, strength: float, generator: Generators = None) -> torch.Tensor:
    """Training noise ``n = eps + strength * eps_c`` with ``eps_c`` one normal draw per item
    and channel, constant over the spatial axes (Guttenberg 2023, "Diffusion with Offset
    Noise"). ``strength = 0`` is plain Gaussian noise."""
    noise = randn_like(x0, generator)
    if strength:
        per_channel = randn(
            (x0.shape[0], x0.shape[1], *([1] * (x0.ndim - 2))), generator,
            device=x0.device, dtype=x0.dtype,
        )
        noise = noise + strength * per_channel
    return noise


class DiffusionObjective:
    """Per-sample denoising loss for one parameterized model.

    ``weighting`` is a name from :data:`LOSS_WEIGHTINGS` or a :class:`LossWeighting`;
    ``gamma`` configures ``min_snr`` / ``soft_min_snr``; ``offset_noise`` is the strength of
    :func:`offset_noise`. Every random draw (noise levels, noise) comes from ``generator``,
    so a seeded generator gives the same loss twice.
    """

    def __init__(
        self,
        weighting: str | LossWeighting = "uniform",
        *,
        gamma: float | None = None,  # min_snr / soft_min_snr gamma
        offset_noise: float = 0.0,  # offset-noise strength (0 = off)
    ) -> None:
        kwargs: dict[str, Any] = {}
        if gamma is not None:
            if weighting not in ("min_snr", "soft_min_snr"):
                raise ValueError(f"gamma applies to min_snr and soft_min_snr, not {weighting!r}")
            kwargs["gamma"] = gamma
        self.weighting = get_loss_weighting(weighting, **kwargs)
        self.offset_noise = float(offset_noise)

    def __repr__(self) -> str:
        return f"DiffusionObjective(weighting={self.weighting!r}, offset_noise={self.offset_noise})"

    def __call__(
        self,
        model: ParameterizedDenoiser,
        x0: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        generator: Generators = None,
        sigma: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms for clean (normalised) latents ``x0``.

        ``sigma`` (B,) and ``noise`` (shaped like x0) are drawn when not given. Returns a dict
        of tensors: ``loss`` (scalar, the weighted mean), ``loss_per_sample`` (B,),
        ``mse_target`` (B,, unweighted target-space MSE), ``mse_x0`` (B,, unweighted
        x0-space MSE of the denoised estimate), ``sigma`` (B,) and ``weight`` (B,).
        """
        batch = x0.shape[0]
        if sigma is None:
            sigma = model.schedule.sample_training_sigmas(batch, generator, device=x0.device)
        sigma = sigma.to(device=x0.device, dtype=x0.dtype)
        if noise is None:
            noise = offset_noise(x0, self.offset_noise, generator)
        param = model.parameterization
        x = x0 + append_dims(sigma, x0.ndim) * noise
        output = model.model_output(x, sigma, cond)
        target = param.target(x0, x, sigma)
        dims = tuple(range(1, x0.ndim))
        dtype = torch.promote_types(x0.dtype, torch.float32)  # bf16/fp16 losses in fp32
        mse_target = (output.to(dtype) - target.to(dtype)).pow(2).mean(dim=dims)
        weight = self.weighting.target_weight(sigma.to(dtype), param)
        per_sample = weight * mse_target
        with torch.no_grad():
            c_out = param.c_out(sigma.to(dtype))
            mse_x0 = c_out**2 * mse_target
        return {
            "loss": per_sample.mean(),
            "loss_per_sample": per_sample,
            "mse_target": mse_target.detach(),
            "mse_x0": mse_x0,
            "sigma": sigma.detach(),
            "weight": weight.detach(),
        }

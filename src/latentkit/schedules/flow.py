"""The flow-matching schedule (rectified flow; Esser et al. 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis", SD3).

A flow model is trained on the straight path ``z_t = (1 - t) x0 + t eps``, ``t`` in [0, 1]. In
latentkit's sigma space (``x = x0 + sigma eps``) the same state is ``z_t = x / (1 + sigma)`` at

    t = sigma / (1 + sigma),        sigma = t / (1 - t),

so ``t = 1`` (pure noise) is ``sigma = inf``. The backbone's noise input is ``t *
num_train_timesteps`` (diffusers' ``timestep = sigma * 1000``, what SD3 and Flux were trained
with). In the SD3 paper's notation (Sec. 2-3) ``a_t = 1 - t``, ``b_t = t`` and the
log-SNR is ``lambda_t = 2 log((1 - t) / t) = -2 log sigma``.

Sampling grids (in ``t``, then mapped to sigma):

* ``linspace`` (default): ``t`` linear from ``t_max`` to ``t_min``, then shifted; this is
  diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (as the SD3 pipeline calls it),
  including its ``t_min`` = the shifted ``1 / num_train_timesteps`` for a constant shift;
* ``flux``: ``t`` linear from 1 to ``1 / steps``, then shifted (the Flux pipeline's grid);
* ``karras``, ``exponential``, ``polyexponential``: the k-diffusion formulas applied to the
  shifted ``linspace`` grid's end points in ``t`` (diffusers' ``use_karras_sigmas`` /
  ``use_exponential_sigmas`` on this scheduler).

Shifts (SD3 Sec. 5.3.2, Eq. 23): a constant shift ``s`` maps ``t -> s t / (1 + (s - 1) t)``
(SD3 uses ``s = 3``); the resolution-dependent "dynamic" shift (Flux) maps ``t -> e^mu / (e^mu
+ (1 / t - 1))`` with ``mu`` linear in the latent's token count, from ``base_shift`` at
``base_seq_len`` tokens to ``max_shift`` at ``max_seq_len`` tokens (``shift_type="linear"``
uses ``mu / (mu + (1 / t - 1))``). The dynamic shift needs the latent size: pass
``latent_shape=`` to :meth:`FlowSchedule.sigmas` (the sampling pipeline does).

Training ``t`` densities (SD3 Sec. 3.1), drawn through :mod:`latentkit.random`:

* ``uniform``: ``t ~ U(0, 1)`` (rectified flow, Liu et al. 2023);
* ``logit_normal``: ``t = sigmoid(n)``, ``n ~ N(t_mean, t_std^2)`` (SD3's best, ``rf/lognorm(0.00,
  1.00)``);
* ``mode``: ``t = 1 - u - s (cos^2(pi u / 2) - 1 + u)``, ``u ~ U(0, 1)``, ``s = mode_scale``
  (Eq. 20);
* ``cosmap``: ``t = 1 - 1 / (tan(pi u / 2) + 1)`` (Eq. 21).

With ``shift_training`` (the default) the constant shift is applied to the drawn ``t`` as well,
as diffusers' SD3 training scripts do through the scheduler's shifted sigmas; ``t`` is then
clipped to ``[t_eps, 1 - t_eps]`` so that every training sigma is finite and positive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from latentkit.interfaces import Schedule
from latentkit.random import Generators, rand, randn
from latentkit.schedules.spacing import sigmas_exponential, sigmas_karras, sigmas_polyexponential

__all__ = [
    "T_DISTRIBUTIONS",
    "FlowSchedule",
    "flow_sigma_to_t",
    "flow_t_to_sigma",
    "shift_constant",
    "shift_dynamic",
    "shift_mu",
]

#: Training ``t`` densities of :class:`FlowSchedule`.
T_DISTRIBUTIONS: tuple[str, ...] = ("uniform", "logit_normal", "mode", "cosmap")


def flow_sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    """``t = sigma / (1 + sigma)`` in [0, 1], written ``1 / (1 + 1 / sigma)`` so that
    ``sigma = inf`` gives 1 and ``sigma = 0`` gives 0."""
    sigma = torch.as_tensor(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.float()
    return 1.0 / (1.0 + sigma.reciprocal())


def flow_t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """``sigma = t / (1 - t)``; ``t = 1`` gives inf."""
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.float()
    return t / (1.0 - t)


def shift_constant(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's constant timestep shift ``s t / (1 + (s - 1) t)`` (Esser et al. 2024, Eq. 23):
    in sigma space it is ``sigma -> s sigma``."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def shift_mu(seq_len: float, base_shift: float = 0.5, max_shift: float = 1.15,
             base_seq_len: float = 256, max_seq_len: float = 4096) -> float:
    """Flux's ``mu`` for ``seq_len`` latent tokens: linear from ``base_shift`` at
    ``base_seq_len`` tokens to ``max_shift`` at ``max_seq_len`` tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(seq_len) * m + (base_shift - m * base_seq_len)


def shift_dynamic(t: torch.Tensor, mu: float, shift_type: str = "exponential") -> torch.Tensor:
    """The resolution-dependent shift: ``e^mu / (e^mu + (1/t - 1))`` ("exponential", Flux) or
    ``mu / (mu + (1/t - 1))`` ("linear"). ``t = 0`` maps to 0 and ``t = 1`` to 1."""
    scale = math.exp(mu) if shift_type == "exponential" else float(mu)
    return scale / (scale + (t.reciprocal() - 1.0))


class FlowSchedule(Schedule):
    """Noise levels of a flow-matching model: ``t = sigma / (1 + sigma)`` grids with SD3's
    constant or Flux's dynamic shift, SD3's training ``t`` densities, and the backbone's
    timestep ``t * num_train_timesteps``. See the module docstring for the formulas."""

    #: The spacings :meth:`sigmas` accepts.
    spacings: ClassVar[tuple[str, ...]] = ("linspace", "flux", "karras", "exponential", "polyexponential")

    def __init__(
        self,
        num_train_timesteps: int = 1000,  # backbone timestep = t * num_train_timesteps
        *,
        shift: float = 1.0,  # constant shift s (SD3: 3.0); 1 = none
        dynamic_shift: bool = False,  # Flux's resolution-dependent shift instead of `shift`
        base_shift: float = 0.5,  # mu at base_seq_len tokens
        max_shift: float = 1.15,  # mu at max_seq_len tokens
        base_seq_len: int = 256,
        max_seq_len: int = 4096,
        shift_type: str = "exponential",  # dynamic shift form: "exponential" or "linear"
        patch_size: int = 2,  # latent pixels per token edge, for the token count
        spacing: str = "linspace",  # default spacing of sigmas(steps)
        t_max: float = 1.0,  # first t of a grid (1 = pure noise, sigma = inf)
        rho: float = 7.0,  # karras rho (polyexponential uses 1.0)
        t_distribution: str = "logit_normal",  # training t density (see T_DISTRIBUTIONS)
        t_mean: float = 0.0,  # logit_normal mean
        t_std: float = 1.0,  # logit_normal std
        mode_scale: float = 1.29,  # scale s of the "mode" density (SD3: 1.29)
        shift_training: bool = True,  # apply the constant shift to training t too
        t_eps: float = 1e-5,  # training t clipped to [t_eps, 1 - t_eps]
    ) -> None:
        problems = []
        if int(num_train_timesteps) < 2:
            problems.append(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        for name, value in (("shift", shift), ("t_std", t_std), ("rho", rho)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                problems.append(f"{name} must be a finite number > 0, got {value}")
        if not 0.0 < float(t_max) <= 1.0:
            problems.append(f"t_max must lie in (0, 1], got {t_max}")
        if not 0.0 < float(t_eps) < 0.5:
            problems.append(f"t_eps must lie in (0, 0.5), got {t_eps}")
        if shift_type not in ("exponential", "linear"):
            problems.append(f"shift_type must be 'exponential' or 'linear', got {shift_type!r}")
        if t_distribution not in T_DISTRIBUTIONS:
            problems.append(f"t_distribution must be one of {list(T_DISTRIBUTIONS)}, got {t_distribution!r}")
        if int(patch_size) < 1 or int(max_seq_len) <= int(base_seq_len):
            problems.append("need patch_size >= 1 and max_seq_len > base_seq_len")
        if spacing not in self.spacings:
            problems.append(f"unknown spacing {spacing!r}; expected one of {list(self.spacings)}")
        if problems:
            raise ValueError("FlowSchedule: " + "; ".join(problems))
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.dynamic_shift = bool(dynamic_shift)
        self.base_shift, self.max_shift = float(base_shift), float(max_shift)
        self.base_seq_len, self.max_seq_len = int(base_seq_len), int(max_seq_len)
        self.shift_type = shift_type
        self.patch_size = int(patch_size)
        self.spacing = spacing
        self.t_max = float(t_max)
        self.rho = float(rho)
        self.t_distribution = t_distribution
        self.t_mean, self.t_std, self.mode_scale = float(t_mean), float(t_std), float(mode_scale)
        self.shift_training = bool(shift_training)
        self.t_eps = float(t_eps)

    def __repr__(self) -> str:
        shift = "dynamic" if self.dynamic_shift else self.shift
        return (
            f"FlowSchedule(shift={shift}, spacing={self.spacing!r}, "
            f"t_distribution={self.t_distribution!r})"
        )

    @property
    def resolution_dependent(self) -> bool:
        """True with the dynamic shift: the sampling grid depends on the latent size, so the
        pipeline passes ``latent_shape=`` to :meth:`sigmas`."""
        return self.dynamic_shift

    # ------------------------------------------------------------------ t grids

    def _t_min_unshifted(self) -> float:
        """diffusers' ``sigma_min`` before ``set_timesteps`` shifts again: ``1 / N``, shifted
        once by a constant shift (the scheduler's constructor does that)."""
        base = 1.0 / self.num_train_timesteps
        if self.dynamic_shift:
            return base
        return float(shift_constant(torch.tensor(base, dtype=torch.float64), self.shift))

    def mu(self, latent_shape: Sequence[int]) -> float:
        """The dynamic shift's ``mu`` for a latent of spatial shape ``latent_shape``."""
        seq_len = math.prod(int(s) for s in latent_shape) / self.patch_size ** len(latent_shape)
        return shift_mu(seq_len, self.base_shift, self.max_shift, self.base_seq_len, self.max_seq_len)

    def apply_shift(self, t: torch.Tensor, latent_shape: Sequence[int] | None = None) -> torch.Tensor:
        """The schedule's shift of ``t`` (constant, or dynamic for ``latent_shape``)."""
        if self.dynamic_shift:
            if latent_shape is None:
                raise ValueError(
                    "FlowSchedule(dynamic_shift=True): the grid depends on the latent size; "
                    "pass latent_shape=(H, W) (the latent's spatial shape) to sigmas()"
                )
            return shift_dynamic(t, self.mu(latent_shape), self.shift_type)
        return shift_constant(t, self.shift)

    def flow_sigmas(
        self,
        steps: int,
        spacing: str | None = None,
        *,
        latent_shape: Sequence[int] | None = None,
        rho: float | None = None,
    ) -> torch.Tensor:
        """``steps + 1`` decreasing flow times ``t`` (diffusers' ``scheduler.sigmas``),
        float64, the last one 0."""
        spacing = self.spacing if spacing is None else spacing
        if spacing not in self.spacings:
            raise ValueError(f"FlowSchedule: unknown spacing {spacing!r}; expected one of {list(self.spacings)}")
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if spacing == "flux":
            t = torch.linspace(self.t_max, 1.0 / steps, steps, dtype=torch.float64)
        else:
            t = torch.linspace(self.t_max, self._t_min_unshifted(), steps, dtype=torch.float64)
        t = self.apply_shift(t, latent_shape)
        if spacing in ("karras", "exponential", "polyexponential"):
            lo, hi = float(t[-1]), float(t[0])
            if spacing == "karras":
                t = sigmas_karras(steps, lo, hi, self.rho if rho is None else rho)[:-1]
            elif spacing == "exponential":
                t = sigmas_exponential(steps, lo, hi)[:-1]
            else:
                t = sigmas_polyexponential(steps, lo, hi, 1.0 if rho is None else rho)[:-1]
        return torch.cat([t, t.new_zeros(1)])

    def timesteps(
        self, steps: int, spacing: str | None = None, *, latent_shape: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The backbone timesteps ``t * num_train_timesteps`` of a grid (diffusers'
        ``scheduler.timesteps``), float64, length ``steps``."""
        return self.flow_sigmas(steps, spacing, latent_shape=latent_shape)[:-1] * self.num_train_timesteps

    # ------------------------------------------------------------------ Schedule interface

    @property
    def sigma_min(self) -> float:
        """sigma of the smallest ``t`` of the default grid (the shifted ``1 /
        num_train_timesteps``; unshifted with the dynamic shift)."""
        t = torch.tensor(self._t_min_unshifted(), dtype=torch.float64)
        if not self.dynamic_shift:
            t = shift_constant(t, self.shift)
        return float(flow_t_to_sigma(t))

    @property
    def sigma_max(self) -> float:
        """sigma of ``t_max``: inf for the default ``t_max = 1`` (pure noise)."""
        if self.t_max >= 1.0:
            return math.inf
        return float(flow_t_to_sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def sigmas(
        self,
        steps: int,
        spacing: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        rho: float | None = None,
        latent_shape: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels ending in 0: :meth:`flow_sigmas` mapped to
        ``sigma = t / (1 - t)``; the first is inf when ``t_max = 1``."""
        t = self.flow_sigmas(steps, spacing, latent_shape=latent_shape, rho=rho)
        return flow_t_to_sigma(t).to(device=device, dtype=dtype)

    def sample_training_t(
        self, batch_size: int, generator: Generators = None, *, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Training flow times ``t`` (float32, (B,)) from ``t_distribution``, shifted when
        ``shift_training``, clipped to ``[t_eps, 1 - t_eps]``."""
        shape = (int(batch_size),)
        if self.t_distribution == "logit_normal":
            n = randn(shape, generator, device=device, dtype=torch.float64)
            t = torch.sigmoid(self.t_mean + self.t_std * n)
        else:
            u = rand(shape, generator, device=device, dtype=torch.float64)
            if self.t_distribution == "mode":
                t = 1.0 - u - self.mode_scale * (torch.cos(math.pi / 2 * u) ** 2 - 1.0 + u)
            elif self.t_distribution == "cosmap":
                t = 1.0 - 1.0 / (torch.tan(math.pi / 2 * u) + 1.0)
            else:
                t = u
        if self.shift_training and not self.dynamic_shift:
            t = shift_constant(t, self.shift)
        return t.clamp(self.t_eps, 1.0 - self.t_eps).float()

    def sample_training_sigmas(
        self, batch_size: int, generator: Generators = None, *, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """``sigma = t / (1 - t)`` of :meth:`sample_training_t`, float32 (B,)."""
        t = self.sample_training_t(batch_size, generator, device=device).double()
        return flow_t_to_sigma(t).float()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Backbone timestep ``num_train_timesteps * sigma / (1 + sigma)`` (``sigma = inf``
        gives ``num_train_timesteps``)."""
        return flow_sigma_to_t(sigma) * self.num_train_timesteps

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`sigma_to_t`."""
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.float()
        return flow_t_to_sigma(t / self.num_train_timesteps)

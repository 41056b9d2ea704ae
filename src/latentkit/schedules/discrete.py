"""Discrete variance-preserving schedules over ``N`` training timesteps (DDPM family).

A VP schedule is given by its betas (Ho et al. 2020): ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``
and ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``. In latentkit's sigma space
(``x = x0 + sigma * eps``, Karras et al. 2022, Sec. 2) the same process is ``x = x_t /
sqrt(alpha_bar_t)`` at

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t),    alpha_bar = 1 / (1 + sigma^2).

Built-ins:

* ``linear``: betas linear in ``[1e-4, 0.02]`` (Ho et al. 2020).
* ``scaled_linear``: ``sqrt(beta)`` linear in ``[sqrt(0.00085), sqrt(0.012)]`` (Stable
  Diffusion; Rombach et al. 2022).
* ``cosine``: ``alpha_bar(t) = cos^2(((t/N + s) / (1 + s)) pi/2)``, ``s = 0.008``, betas capped
  at 0.999 (Nichol & Dhariwal 2021, Eq. 17).

``rescale_zero_terminal_snr=True`` applies Lin et al. (2024), Alg. 1: ``sqrt(alpha_bar)`` is
shifted and scaled so that ``alpha_bar_0`` is unchanged and ``alpha_bar_{N-1} = 0`` (zero SNR,
pure noise). ``alphas_cumprod`` then ends in exactly 0, but the terminal sigma would be
infinite; like diffusers' ``EulerDiscreteScheduler`` (``rescale_betas_zero_snr=True``) the
sigma table uses ``alpha_bar_{N-1} = 2^-24`` instead, i.e. a terminal sigma of about 4096
(``scaled_linear``, ``cosine``), or ``alpha_bar_{N-2} / 2`` where that is smaller, so that sigma
keeps increasing with t (``linear``: terminal sigma about 22000; diffusers' table is not
monotonic there). A
model trained on such a schedule should predict ``v`` (Lin et al. 2024, Sec. 3.2), for which
``sigma = 4096`` and ``sigma = inf`` give practically the same input and target.

Sigma <-> timestep: ``sigma_to_t`` interpolates linearly in ``log sigma`` between the two
neighbouring integer timesteps and ``t_to_sigma`` is its inverse (k-diffusion's
``DiscreteSchedule``), so a sampler may hand any sigma in ``[sigma_min, sigma_max]`` to a
model trained on integer timesteps.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch

from latentkit.interfaces import Schedule
from latentkit.random import Generators, rand
from latentkit.schedules.spacing import (
    append_zero,
    sigmas_exponential,
    sigmas_karras,
    sigmas_polyexponential,
)

__all__ = [
    "AYS_NOISE_LEVELS",
    "CosineSchedule",
    "DiscreteVPSchedule",
    "LinearSchedule",
    "ScaledLinearSchedule",
    "alpha_cumprod_to_sigma",
    "ays_sigmas",
    "cosine_betas",
    "rescale_zero_terminal_snr",
    "sigma_to_alpha_cumprod",
]


#: The published 10-step "Align Your Steps" noise levels (Sabour, Fidler & Kreis 2024, "Align
#: Your Steps: Optimizing Sampling Schedules in Diffusion Models"; the values NVIDIA released
#: with the paper), in the sigma units of Stable Diffusion's ``scaled_linear`` schedule
#: (14.6146 .. 0.0292). Spacings ``ays_sd15`` and ``ays_sdxl``.
AYS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "ays_sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "ays_sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
                 0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
}


def ays_sigmas(name: str, steps: int) -> torch.Tensor:
    """``steps + 1`` levels of the AYS schedule ``name`` (float64, ending in 0): the published
    levels at 10 steps, and for other step counts their log-linear interpolation (``log
    sigma`` linear between the published levels at equally spaced positions), as AYS
    prescribes for other step counts."""
    published = torch.tensor(AYS_NOISE_LEVELS[name], dtype=torch.float64)
    steps = int(steps)
    if steps == len(published) - 1:
        levels = published
    else:
        where = torch.linspace(0, len(published) - 1, steps + 1, dtype=torch.float64)
        low = where.floor().long().clamp(max=len(published) - 2)
        w = where - low
        logs = published.log()
        levels = ((1 - w) * logs[low] + w * logs[low + 1]).exp()
    # the last level (sigma_min) becomes the final 0, as in the published 10-step schedules
    return torch.cat([levels[:steps], levels.new_zeros(1)])


def sigma_to_alpha_cumprod(sigma: torch.Tensor) -> torch.Tensor:
    """``alpha_bar = 1 / (1 + sigma^2)``: sigma space -> variance-preserving ``alpha_bar``."""
    return 1.0 / (1.0 + sigma**2)


def alpha_cumprod_to_sigma(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sigma = sqrt((1 - alpha_bar) / alpha_bar)``: VP ``alpha_bar`` -> sigma space."""
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule, Nichol & Dhariwal (2021), Eq. 17:
    ``beta_t = min(1 - alpha_bar((t+1)/N) / alpha_bar(t/N), max_beta)`` with
    ``alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2)``. Float64, shape (N,)."""
    n = int(num_train_timesteps)
    u = torch.arange(n + 1, dtype=torch.float64) / n
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Alg. 1: shift and scale ``sqrt(alpha_bar)`` so that its first value is kept and its last
    is 0 (zero terminal SNR). Returns the new ``alphas_cumprod``."""
    sqrt_ab = alphas_cumprod.sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    return sqrt_ab**2


# The constructor argument of the same name shadows the function inside __init__.
_rescale_zero_terminal_snr = rescale_zero_terminal_snr


class DiscreteVPSchedule(Schedule):
    """A discrete variance-preserving schedule given by its betas (Ho et al. 2020), seen in
    sigma space (``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``).

    Subclasses define :meth:`make_betas`; this class provides the sampling grids (the
    diffusers timestep spacings ``leading``, ``trailing``, ``linspace`` and the k-diffusion
    grids ``karras``, ``exponential``, ``polyexponential``), the log-sigma interpolated
    ``sigma <-> t`` maps and uniform integer-timestep training noise levels.
    """

    #: The spacings :meth:`sigmas` accepts.
    spacings: ClassVar[tuple[str, ...]] = (
        "leading", "trailing", "linspace", "karras", "exponential", "polyexponential",
    )

    def __init__(
        self,
        num_train_timesteps: int = 1000,            # N: training timesteps 0 .. N-1
        *,
        rescale_zero_terminal_snr: bool = False,    # Lin et al. 2024: alpha_bar_{N-1} = 0
        zero_snr_alpha_cumprod: float = 2.0**-24,   # alpha_bar used for the terminal sigma then
        spacing: str = "linspace",                  # default spacing of sigmas(steps)
        steps_offset: int = 0,                      # diffusers' steps_offset (SD 1.x uses 1)
        rho: float = 7.0,                           # karras rho (polyexponential uses 1.0)
    ) -> None:
        if int(num_train_timesteps) < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        self.zero_snr_alpha_cumprod = float(zero_snr_alpha_cumprod)
        self.steps_offset = int(steps_offset)
        self.rho = float(rho)
        betas = self.make_betas().to(torch.float64)
        if betas.shape != (self.num_train_timesteps,) or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"{type(self).__name__}: betas must be N values in (0, 1)")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if self.rescale_zero_terminal_snr:
            alphas_cumprod = _rescale_zero_terminal_snr(alphas_cumprod)
            alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
            betas = 1.0 - alphas
        #: beta_t, float64 (N,).
        self.betas = betas
        #: alpha_bar_t, float64 (N,); ends in exactly 0 with ``rescale_zero_terminal_snr``.
        self.alphas_cumprod = alphas_cumprod
        table = alphas_cumprod.clone()
        if self.rescale_zero_terminal_snr:
            # Finite stand-in for alpha_bar_{N-1} = 0, kept below alpha_bar_{N-2} so that sigma
            # still increases with t (the linear schedule's alpha_bar_{N-2} is ~4e-9 < 2^-24).
            table[-1] = min(self.zero_snr_alpha_cumprod, 0.5 * float(table[-2]))
        #: sigma_t for each training timestep, float64 (N,), increasing.
        self.train_sigmas = alpha_cumprod_to_sigma(table)
        self.log_sigmas = self.train_sigmas.log()
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if not bool((self.log_sigmas.diff() > 0).all()):
            raise ValueError(f"{type(self).__name__}: sigmas must increase strictly with t")
        # the AYS spacings where their published levels lie within this schedule's range
        # (Stable Diffusion's scaled_linear with 1000 steps, or a wider one)
        lo, hi = min(min(v) for v in AYS_NOISE_LEVELS.values()), max(max(v) for v in AYS_NOISE_LEVELS.values())
        if self.sigma_min <= lo * (1 + 1e-4) and self.sigma_max >= hi * (1 - 1e-4):
            self.spacings = (*type(self).spacings, *AYS_NOISE_LEVELS)
        self._check_spacing(spacing)
        self.spacing = spacing

    @abc.abstractmethod
    def make_betas(self) -> torch.Tensor:
        """The N betas of this schedule (before any zero-terminal-SNR rescale)."""

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train_sigmas, log_sigmas)`` on ``device``, cached (float32 where float64 is
        unsupported, i.e. on MPS)."""
        table = self._tables.get(device)
        if table is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            table = (self.train_sigmas.to(device, dtype), self.log_sigmas.to(device, dtype))
            self._tables[device] = table
        return table

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_train_timesteps={self.num_train_timesteps}, "
            f"rescale_zero_terminal_snr={self.rescale_zero_terminal_snr}, spacing={self.spacing!r})"
        )

    # ------------------------------------------------------------------ noise levels

    @property
    def sigma_min(self) -> float:
        """sigma at t = 0."""
        return float(self.train_sigmas[0])

    @property
    def sigma_max(self) -> float:
        """sigma at t = N-1 (about 4096 with ``rescale_zero_terminal_snr``)."""
        return float(self.train_sigmas[-1])

    def _check_spacing(self, spacing: str) -> None:
        if spacing not in self.spacings:
            raise ValueError(
                f"{type(self).__name__}: unknown spacing {spacing!r}; expected one of {list(self.spacings)}"
            )

    def timesteps(self, steps: int, spacing: str | None = None) -> torch.Tensor:
        """The diffusers timesteps (float64, decreasing, length ``steps``) of a
        timestep spacing (Lin et al. 2024, Table 2; diffusers' ``timestep_spacing``):

        * ``linspace``: ``linspace(0, N-1, steps)`` reversed (fractional, as in
          ``EulerDiscreteScheduler``; ``DDIMScheduler`` rounds them);
        * ``leading``: ``arange(steps) * (N // steps) + steps_offset`` reversed;
        * ``trailing``: ``round(N - i * N / steps) - 1`` for ``i = 0 .. steps-1``.

        For the sigma grids (``karras``, ``exponential``, ``polyexponential``) the timesteps
        are :meth:`sigma_to_t` of the grid.
        """
        spacing = self.spacing if spacing is None else spacing
        self._check_spacing(spacing)
        steps = self._check_steps(steps, spacing)
        n = self.num_train_timesteps
        if spacing == "linspace":
            return torch.linspace(0, n - 1, steps, dtype=torch.float64).flip(0)
        if spacing == "leading":
            t = (torch.arange(steps, dtype=torch.float64) * (n // steps)).round() + self.steps_offset
            return t.flip(0).clamp(max=n - 1)
        if spacing == "trailing":
            ratio = n / steps
            return torch.tensor([round(n - i * ratio) - 1 for i in range(steps)], dtype=torch.float64)
        return self.sigma_to_t(self.sigmas(steps, spacing, dtype=torch.float64)[:-1])

    def _check_steps(self, steps: int, spacing: str) -> int:
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if spacing in ("leading", "trailing", "linspace") and steps > self.num_train_timesteps:
            raise ValueError(
                f"spacing {spacing!r} gives at most num_train_timesteps={self.num_train_timesteps} "
                f"steps, got {steps}; use a sigma spacing (karras, exponential) for more"
            )
        return steps

    def sigmas(
        self,
        steps: int,
        spacing: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        rho: float | None = None,
    ) -> torch.Tensor:
        """``steps + 1`` decreasing noise levels ending in 0.

        Timestep spacings (``leading``, ``trailing``, ``linspace``) map their timesteps to
        sigmas with :meth:`t_to_sigma` (log-sigma interpolation; exact at integer timesteps,
        where it equals diffusers' ``EulerDiscreteScheduler``). Sigma spacings use the
        k-diffusion formulas between this schedule's ``sigma_min`` and ``sigma_max``; ``rho``
        defaults to the constructor's (karras) or 1 (polyexponential).
        """
        spacing = self.spacing if spacing is None else spacing
        self._check_spacing(spacing)
        steps = self._check_steps(steps, spacing)
        if spacing == "karras":
            out = sigmas_karras(steps, self.sigma_min, self.sigma_max, self.rho if rho is None else rho)
        elif spacing == "exponential":
            out = sigmas_exponential(steps, self.sigma_min, self.sigma_max)
        elif spacing == "polyexponential":
            out = sigmas_polyexponential(steps, self.sigma_min, self.sigma_max, 1.0 if rho is None else rho)
        elif spacing in AYS_NOISE_LEVELS:
            out = ays_sigmas(spacing, steps)
        else:
            out = append_zero(self.t_to_sigma(self.timesteps(steps, spacing)))
        return out.to(device=device, dtype=dtype)

    def sample_training_timesteps(
        self, batch_size: int, generator: Generators = None, *, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Uniform integer timesteps in ``[0, N)`` (Ho et al. 2020, Alg. 1), LongTensor (B,),
        drawn per item when ``generator`` is a list."""
        u = rand((int(batch_size),), generator, device=device, dtype=torch.float64)
        return (u * self.num_train_timesteps).floor().long().clamp(max=self.num_train_timesteps - 1)

    def sample_training_sigmas(
        self, batch_size: int, generator: Generators = None, *, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """sigma of uniform integer timesteps (:meth:`sample_training_timesteps`), float32 (B,)."""
        t = self.sample_training_timesteps(batch_size, generator, device=device)
        return self._table(t.device)[0][t].float()

    # ------------------------------------------------------------------ sigma <-> t

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of ``sigma``: linear interpolation in ``log sigma`` between the
        neighbouring integer timesteps (k-diffusion ``DiscreteSchedule.sigma_to_t``). Values
        outside ``[sigma_min, sigma_max]`` clamp to 0 and N-1 (sigma = 0 gives t = 0).
        Returns ``sigma``'s shape and floating dtype."""
        sigma = torch.as_tensor(sigma)
        out_dtype = sigma.dtype if sigma.is_floating_point() else torch.float32
        log_sigmas = self._table(sigma.device)[1]
        log_sigma = sigma.to(log_sigmas.dtype).clamp(min=torch.finfo(log_sigmas.dtype).tiny).log()
        idx = torch.searchsorted(log_sigmas, log_sigma.reshape(-1).contiguous()).reshape(log_sigma.shape)
        low = (idx - 1).clamp(0, self.num_train_timesteps - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (low.to(log_sigmas.dtype) + w).to(out_dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma of a (fractional) timestep: ``exp`` of the linear interpolation of ``log
        sigma`` between ``floor(t)`` and ``ceil(t)`` (k-diffusion ``DiscreteSchedule.t_to_sigma``),
        ``t`` clamped to ``[0, N-1]``. Returns ``t``'s shape and floating dtype."""
        t = torch.as_tensor(t)
        out_dtype = t.dtype if t.is_floating_point() else torch.float32
        log_sigmas = self._table(t.device)[1]
        t64 = t.to(log_sigmas.dtype).clamp(0, self.num_train_timesteps - 1)
        low = t64.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = t64 - low
        log_sigma = (1.0 - w) * log_sigmas[low] + w * log_sigmas[low + 1]
        return log_sigma.exp().to(out_dtype)

    def timesteps_to_sigmas(self, t: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`t_to_sigma`, for code ported from diffusers (``timesteps`` -> sigmas)."""
        return self.t_to_sigma(t)

    def alphas_cumprod_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """``alpha_bar = 1 / (1 + sigma^2)`` of any noise level (the VP view of ``sigma``)."""
        return sigma_to_alpha_cumprod(torch.as_tensor(sigma))


class LinearSchedule(DiscreteVPSchedule):
    """DDPM's linear betas (Ho et al. 2020, Sec. 4: ``beta`` from 1e-4 to 0.02 over 1000 steps)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        *,
        beta_start: float = 1e-4,  # beta_0
        beta_end: float = 0.02,  # beta_{N-1}
        rescale_zero_terminal_snr: bool = False,
        zero_snr_alpha_cumprod: float = 2.0**-24,
        spacing: str = "linspace",
        steps_offset: int = 0,
        rho: float = 7.0,
    ) -> None:
        """See :class:`DiscreteVPSchedule` for the shared arguments."""
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        super().__init__(
            num_train_timesteps,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
            zero_snr_alpha_cumprod=zero_snr_alpha_cumprod,
            spacing=spacing,
            steps_offset=steps_offset,
            rho=rho,
        )

    def make_betas(self) -> torch.Tensor:
        """``linspace(beta_start, beta_end, N)``."""
        return torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)


class ScaledLinearSchedule(DiscreteVPSchedule):
    """Stable Diffusion's betas, linear in ``sqrt(beta)`` from 0.00085 to 0.012 (Rombach et al.
    2022; diffusers' ``scaled_linear``)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        *,
        beta_start: float = 0.00085,  # beta_0
        beta_end: float = 0.012,  # beta_{N-1}
        rescale_zero_terminal_snr: bool = False,
        zero_snr_alpha_cumprod: float = 2.0**-24,
        spacing: str = "linspace",
        steps_offset: int = 0,
        rho: float = 7.0,
    ) -> None:
        """See :class:`DiscreteVPSchedule` for the shared arguments."""
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        super().__init__(
            num_train_timesteps,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
            zero_snr_alpha_cumprod=zero_snr_alpha_cumprod,
            spacing=spacing,
            steps_offset=steps_offset,
            rho=rho,
        )

    def make_betas(self) -> torch.Tensor:
        """``linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2``."""
        return torch.linspace(
            self.beta_start**0.5, self.beta_end**0.5, self.num_train_timesteps, dtype=torch.float64
        ) ** 2


class CosineSchedule(DiscreteVPSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17; diffusers' ``squaredcos_cap_v2``)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        *,
        s: float = 0.008,  # offset that keeps beta_0 from being too small
        max_beta: float = 0.999,  # cap on beta near t = N
        rescale_zero_terminal_snr: bool = False,
        zero_snr_alpha_cumprod: float = 2.0**-24,
        spacing: str = "linspace",
        steps_offset: int = 0,
        rho: float = 7.0,
    ) -> None:
        """See :class:`DiscreteVPSchedule` for the shared arguments."""
        self.s = float(s)
        self.max_beta = float(max_beta)
        super().__init__(
            num_train_timesteps,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
            zero_snr_alpha_cumprod=zero_snr_alpha_cumprod,
            spacing=spacing,
            steps_offset=steps_offset,
            rho=rho,
        )

    def make_betas(self) -> torch.Tensor:
        """:func:`cosine_betas`."""
        return cosine_betas(self.num_train_timesteps, self.s, self.max_beta)

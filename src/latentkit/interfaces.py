"""The component interfaces: what every autoencoder, denoiser, conditioner, sampler, schedule
and dataset promises, whether built in or published by a plugin.

All tensors are batch-first. Shapes in docstrings use the layout letters of
:mod:`latentkit.specs`: ``(B, C, *spatial)`` is a batch in any layout.
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from latentkit.errors import ShapeError
from latentkit.random import Generators, rand, randn_like
from latentkit.specs import (
    DATA_KEYS,
    Conditioning,
    ConditioningSpec,
    DataSpec,
    LatentSpec,
    spatial_ndim,
)

if TYPE_CHECKING:
    from latentkit.latent_statistics import LatentStatistics

__all__ = [
    "KINDS",
    "Autoencoder",
    "Conditioner",
    "Dataset",
    "DenoiseFn",
    "Denoiser",
    "DiagonalGaussianDistribution",
    "DiracDistribution",
    "LatentDistribution",
    "Sampler",
    "SamplerCallback",
    "Schedule",
    "check_tensor",
]

#: The component kinds, in the order they are listed.
KINDS: tuple[str, ...] = ("autoencoder", "denoiser", "conditioner", "sampler", "schedule", "dataset", "model")

#: ``denoise(x, sigma, **extra_args) -> x0``: what every sampler integrates. ``sigma`` is a
#: tensor of shape (B,) (or a scalar tensor broadcast to the batch).
DenoiseFn = Callable[..., torch.Tensor]

#: Called once per sampler step with a dict holding ``i`` (step index), ``x`` (current
#: sample), ``sigma`` (noise level of ``x``), ``sigma_next`` (the level the step goes to) and
#: ``denoised`` (the model's x0 estimate at ``sigma``).
SamplerCallback = Callable[[dict[str, Any]], None]


def check_tensor(
    x: Any,
    *,
    name: str,
    owner: str,
    channels: int | None = None,
    layouts: Sequence[str] | None = None,
    size_multiple: Sequence[int] | int | None = None,
) -> torch.Tensor:
    """Validate a (B, C, *spatial) input and raise :class:`ShapeError` that names the owner,
    the expected and the found shapes (and, for sizes, the nearest valid ones).

    ``layouts`` lists the accepted layouts (their spatial rank decides the tensor rank);
    ``size_multiple`` is one factor per spatial axis (or one int for all).
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{owner}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise ShapeError(f"{owner}: {name} must be a floating-point tensor, got dtype {x.dtype}")
    if layouts is not None:
        ranks = sorted({spatial_ndim(layout) + 2 for layout in layouts})
        if x.ndim not in ranks:
            expected = " or ".join(f"(B, {' '.join(layout)})" for layout in layouts)
            raise ShapeError(
                f"{owner}: {name} must have shape {expected} ({' or '.join(map(str, ranks))} "
                f"dims), got shape {tuple(x.shape)}"
            )
    if channels is not None and (x.ndim < 2 or x.shape[1] != channels):
        raise ShapeError(
            f"{owner}: {name} must have {channels} channels on axis 1, "
            f"got shape {tuple(x.shape)}"
        )
    if size_multiple is not None:
        spatial = tuple(x.shape[2:])
        mult = (size_multiple,) * len(spatial) if isinstance(size_multiple, int) else tuple(size_multiple)
        if len(mult) != len(spatial):
            raise ShapeError(
                f"{owner}: {name} must have {len(mult)} spatial axes, got shape {tuple(x.shape)}"
            )
        if any(s % m for s, m in zip(spatial, mult)):
            nearest = tuple(
                sorted({max(m, (s // m) * m), (s // m + 1) * m}) for s, m in zip(spatial, mult)
            )
            raise ShapeError(
                f"{owner}: {name} spatial size {spatial} must be divisible by {mult}; "
                f"nearest valid sizes per axis: {nearest}"
            )
    return x


def _positive_int(value: Any, owner: str, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {what} must be a positive int, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(
            f"{owner}: {what} must be a positive int, got {type(value).__name__} {value!r}"
        ) from None
    if number < 1:
        raise ValueError(f"{owner}: {what} must be a positive int, got {number}")
    return number


def _per_axis_multiples(size_multiple: Any, ndim: int, *, owner: str) -> tuple[int, ...]:
    """``size_multiple`` (one int, or one int per axis) as ``ndim`` positive factors."""
    if isinstance(size_multiple, Sequence) and not isinstance(size_multiple, str):
        factors = tuple(
            _positive_int(m, owner, f"size_multiple[{i}]") for i, m in enumerate(size_multiple)
        )
        if len(factors) != ndim:
            raise ShapeError(
                f"{owner}: size_multiple needs one factor per spatial axis ({ndim}), got "
                f"{len(factors)}: {tuple(size_multiple)}"
            )
        return factors
    return (_positive_int(size_multiple, owner, "size_multiple"),) * ndim


def _size_multiple(
    size_multiple: Any, layouts: Sequence[str], *, owner: str
) -> int | tuple[int, ...]:
    """Validate a denoiser's ``size_multiple`` against its layouts; an int stays an int and a
    sequence becomes a tuple with one factor per spatial axis of the layouts' shared rank."""
    if not (isinstance(size_multiple, Sequence) and not isinstance(size_multiple, str)):
        return _positive_int(size_multiple, owner, "size_multiple")
    ranks = sorted({spatial_ndim(layout) for layout in layouts})
    if len(ranks) != 1:
        raise ShapeError(
            f"{owner}: a per-axis size_multiple {tuple(size_multiple)} needs layouts of one "
            f"spatial rank, got layouts {tuple(layouts)} (ranks {ranks}); give one int instead"
        )
    return _per_axis_multiples(size_multiple, ranks[0], owner=owner)


# --------------------------------------------------------------------------- distributions


class LatentDistribution(abc.ABC):
    """What :meth:`Autoencoder.encode` returns: a distribution over raw (un-normalised)
    latents of shape (B, C, *latent_spatial)."""

    @abc.abstractmethod
    def sample(self, generator: Generators = None) -> torch.Tensor:
        """A sample, drawn from ``generator`` (one per item for batch-independent noise)."""

    @abc.abstractmethod
    def mode(self) -> torch.Tensor:
        """The most likely latent (the mean for a Gaussian)."""

    def kl(self) -> torch.Tensor:
        """Per-item KL divergence to the prior, shape (B,). Zero unless overridden."""
        m = self.mode()
        return m.new_zeros(m.shape[0])


class DiracDistribution(LatentDistribution):
    """A point mass: deterministic encoders (identity, VQ) return this."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def sample(self, generator: Generators = None) -> torch.Tensor:
        """The value itself (no noise)."""
        return self.value

    def mode(self) -> torch.Tensor:
        """The value itself."""
        return self.value


class DiagonalGaussianDistribution(LatentDistribution):
    """Diagonal Gaussian posterior of the KL-regularised autoencoder (Rombach et al. 2022,
    Sec. 3.1; Kingma & Welling 2014). ``parameters`` holds mean and log-variance stacked
    along the channel axis, as in LDM."""

    def __init__(self, parameters: torch.Tensor, logvar_clamp: tuple[float, float] = (-30.0, 20.0)) -> None:
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, *logvar_clamp)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Generators = None) -> torch.Tensor:
        """``mean + std * eps`` with ``eps`` drawn from ``generator``."""
        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> torch.Tensor:
        """The mean."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) summed over all latent elements, shape (B,)."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)


# --------------------------------------------------------------------------- components


class Autoencoder(nn.Module, abc.ABC):
    """First stage: pixels <-> latents.

    Contract:

    * ``data_spec`` and ``latent_spec`` describe the two sides; ``latent_spec`` carries the
      per-axis downsampling factors and the latent normalisation.
    * ``encode(x)`` takes data (B, data_spec.channels, *spatial) with each spatial size
      divisible by its downsampling factor, and returns a :class:`LatentDistribution` over
      **raw** latents (B, latent_spec.channels, *spatial // factors).
    * ``decode(z)`` maps raw latents back to data.
    * The autoencoder owns latent normalisation: :meth:`normalize` computes
      ``(z - shift_factor) * scaling_factor`` and :meth:`denormalize` inverts it. The factors
      are buffers, so they travel with ``state_dict``; callers never multiply by a constant.
    * Wrong input shapes raise :class:`~latentkit.errors.ShapeError`.
    """

    kind: ClassVar[str] = "autoencoder"
    scaling_factor: torch.Tensor  # buffers (see __init__), typed for readers and checkers
    shift_factor: torch.Tensor
    #: Layouts this autoencoder can be built for (the instance uses ``data_spec.layout``).
    supported_layouts: ClassVar[tuple[str, ...]] = ("CHW",)

    def __init__(self, data_spec: DataSpec, latent_spec: LatentSpec) -> None:
        super().__init__()
        if data_spec.layout != latent_spec.layout:
            raise ShapeError(
                f"{type(self).__name__}: data layout {data_spec.layout!r} and latent layout "
                f"{latent_spec.layout!r} differ"
            )
        self.data_spec = data_spec
        self._latent_spec = latent_spec
        self.register_buffer("scaling_factor", torch.tensor(float(latent_spec.scaling_factor)))
        self.register_buffer("shift_factor", torch.tensor(float(latent_spec.shift_factor)))

    @property
    def latent_spec(self) -> LatentSpec:
        """The latent spec, with the current normalisation factors."""
        import attrs

        return attrs.evolve(
            self._latent_spec,
            scaling_factor=float(self.scaling_factor),
            shift_factor=float(self.shift_factor),
        )

    @property
    def is_pixel_space(self) -> bool:
        """True when the latents are the data itself, so pixel-space-only operations such as
        dynamic thresholding apply. False by default; the ``identity`` autoencoder says True,
        and a wrapper (e.g. the video plugin's ``framewise``) answers for what it wraps."""
        return False

    def fit_latent_statistics(
        self,
        data: torch.Tensor | Iterable[Any],
        *,
        batch_size: int = 16,
        shift: bool = False,
        sample: bool = True,
        generator: Generators = None,
        max_batches: int | None = None,
        data_key: str | None = None,
        apply: bool = True,
    ) -> LatentStatistics:
        """Estimate ``scaling_factor = 1 / std(z)`` (and ``shift_factor = mean(z)`` with
        ``shift``) over the raw latents of ``data`` (an (N, C, *spatial) tensor or batches:
        tensors or dicts), so that normalised latents have unit variance (Rombach et al.
        2022, Sec. 4.3.2), and store them unless ``apply=False``; see
        :func:`latentkit.latent_statistics.fit_latent_statistics`. Any autoencoder has it:
        it needs only ``encode`` and :meth:`set_latent_statistics`."""
        from latentkit.latent_statistics import fit_latent_statistics

        return fit_latent_statistics(self, data, batch_size=batch_size, shift=shift, sample=sample,
                                     generator=generator, max_batches=max_batches, data_key=data_key,
                                     apply=apply)

    def set_latent_statistics(self, scaling_factor: float, shift_factor: float = 0.0) -> None:
        """Set the latent normalisation (stored in ``state_dict``)."""
        if not (scaling_factor == scaling_factor) or scaling_factor == 0:
            raise ValueError(f"scaling_factor must be a finite non-zero number, got {scaling_factor}")
        self.scaling_factor.fill_(float(scaling_factor))
        self.shift_factor.fill_(float(shift_factor))

    def check_data(self, x: Any) -> torch.Tensor:
        """Validate a data batch against ``data_spec`` and the downsampling factors."""
        return check_tensor(
            x,
            name="data",
            owner=f"{type(self).__name__}.encode",
            channels=self.data_spec.channels,
            layouts=(self.data_spec.layout,),
            size_multiple=self._latent_spec.downsampling,
        )

    def check_latent(self, z: Any) -> torch.Tensor:
        """Validate a raw latent batch against ``latent_spec``."""
        return check_tensor(
            z,
            name="latent",
            owner=f"{type(self).__name__}.decode",
            channels=self._latent_spec.channels,
            layouts=(self._latent_spec.layout,),
        )

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> LatentDistribution:
        """Data (B, C_data, *spatial) -> distribution over raw latents."""

    @abc.abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C_latent, *latent_spatial) -> data (B, C_data, *spatial)."""

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> normalised latent (unit variance once statistics are fitted)."""
        return (z - self.shift_factor.to(z.dtype)) * self.scaling_factor.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> raw latent (inverse of :meth:`normalize`)."""
        return z / self.scaling_factor.to(z.dtype) + self.shift_factor.to(z.dtype)

    def encode_normalized(
        self, x: torch.Tensor, *, generator: Generators = None, sample: bool = True
    ) -> torch.Tensor:
        """Data -> normalised latent, sampled from the posterior (or its mode)."""
        dist = self.encode(x)
        return self.normalize(dist.sample(generator) if sample else dist.mode())

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> data."""
        return self.decode(self.denormalize(z))


class Denoiser(nn.Module, abc.ABC):
    """Backbone that predicts noise, v or x0 (which one is the parameterization's business).

    Contract:

    * ``forward(x, t, cond)`` takes the latent ``x`` (B, out_channels, *spatial), the noise
      level input ``t`` (B,) as a float tensor (a possibly fractional timestep, or EDM's
      c_noise), and a :class:`Conditioning`; it returns a tensor shaped like ``x``.
    * ``cond.concat`` is concatenated to ``x`` along channels by the denoiser, so
      ``in_channels = out_channels + conditioning_spec.concat_channels``.
    * ``conditioning_spec`` declares what it accepts: ``crossattn_dim`` (context width, or
      ``None`` for no cross-attention), ``concat_channels`` and ``vector_dim``.
    * ``layouts`` lists the layouts it runs on (all of one spatial rank); every spatial size
      must be a multiple of ``size_multiple``: one int for every axis, or a tuple with one
      factor per spatial axis (``(1, 2, 2)`` on CTHW: any T, even H and W).
      :meth:`spatial_multiples` gives the per-axis tuple for either form.
    """

    kind: ClassVar[str] = "denoiser"
    #: Layouts this denoiser class can be built for; classes listing several accept a
    #: ``layout=`` config key, and an instance runs on every layout of that spatial rank.
    supported_layouts: ClassVar[tuple[str, ...]] = ("CHW",)

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        layouts: Sequence[str],
        crossattn_dim: int | None = None,
        vector_dim: int | None = None,
        size_multiple: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        for layout in layouts:
            spatial_ndim(layout)  # validates
        if in_channels < out_channels:
            raise ShapeError(
                f"{type(self).__name__}: in_channels ({in_channels}) must be >= out_channels "
                f"({out_channels}); the difference is the concat conditioning"
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.layouts = tuple(layouts)
        #: Kept in the declared form: an int stays an int, a sequence becomes a tuple.
        self.size_multiple: int | tuple[int, ...] = _size_multiple(
            size_multiple, self.layouts, owner=type(self).__name__
        )
        self.conditioning_spec = ConditioningSpec(
            crossattn_dim=crossattn_dim,
            concat_channels=self.in_channels - self.out_channels,
            vector_dim=vector_dim,
        )

    def spatial_multiples(self, layout: str | None = None) -> tuple[int, ...]:
        """``size_multiple`` as one factor per spatial axis: a spatial size is valid when
        axis ``i`` is a multiple of entry ``i``. An int declaration is repeated over the
        axes of ``layout`` (default: of ``layouts``, which then must share one rank).

        Raises :class:`ShapeError` when ``layout``'s rank differs from the number of
        declared factors, and ``ValueError`` when a factor is not a positive int."""
        owner = type(self).__name__
        if layout is not None:
            ranks = {spatial_ndim(layout)}
        else:
            ranks = {spatial_ndim(name) for name in self.layouts}
            if len(ranks) != 1:
                raise ShapeError(
                    f"{owner}.spatial_multiples: layouts {self.layouts} must share one spatial "
                    f"rank, found ranks {sorted(ranks)}; pass layout= to pick one"
                )
        return _per_axis_multiples(self.size_multiple, ranks.pop(), owner=owner)

    @torch.compiler.disable
    def prepare_input(
        self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None
    ) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
        """Validate ``x``, ``t`` and ``cond`` against the declared spec, broadcast ``t`` to
        (B,), and concatenate ``cond.concat`` to ``x``. Returns ``(x_in, t, cond)``.

        It runs eagerly under ``torch.compile`` (Python checks that build spec objects are no
        work for the compiler); the network after it compiles."""
        owner = f"{type(self).__name__}.forward"
        check_tensor(x, name="x", owner=owner, channels=self.out_channels, layouts=self.layouts,
                     size_multiple=self.size_multiple)
        cond = cond if cond is not None else Conditioning()
        if not isinstance(cond, Conditioning):
            raise ShapeError(f"{owner}: cond must be a latentkit.Conditioning, got {type(cond).__name__}")
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ShapeError(f"{owner}: t must have shape ({batch},) or be a scalar, got {tuple(t.shape)}")
        if cond.batch_size is not None and cond.batch_size != batch:
            raise ShapeError(f"{owner}: conditioning batch size {cond.batch_size} != x batch size {batch}")
        spec = self.conditioning_spec
        found = cond.spec
        if found.concat_channels != spec.concat_channels:
            raise ShapeError(
                f"{owner}: expected {spec.concat_channels} concat channels, got {found.concat_channels}"
            )
        if found.crossattn_dim != spec.crossattn_dim:
            raise ShapeError(
                f"{owner}: expected crossattn of width {spec.crossattn_dim}, got {found.crossattn_dim}"
            )
        if found.vector_dim != spec.vector_dim:
            raise ShapeError(f"{owner}: expected vector of width {spec.vector_dim}, got {found.vector_dim}")
        if cond.concat is not None:
            if cond.concat.shape[2:] != x.shape[2:]:
                raise ShapeError(
                    f"{owner}: concat spatial size {tuple(cond.concat.shape[2:])} != x spatial "
                    f"size {tuple(x.shape[2:])}"
                )
            x = torch.cat([x, cond.concat.to(x.dtype)], dim=1)
        return x, t.to(torch.float32), cond

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """(B, out_channels, *spatial), (B,), Conditioning -> (B, out_channels, *spatial)."""


class Conditioner(nn.Module, abc.ABC):
    """Turns a batch's conditioning data (a dict) into a :class:`Conditioning`.

    Contract:

    * ``input_keys`` names the batch keys it reads; ``output_spec`` what it produces.
    * ``forward(batch)`` returns the conditioning; ``null(batch)`` the conditioning of the
      "null" input (empty prompt, null class, ...) for the same batch, used by
      classifier-free guidance.
    * ``dropout`` is the probability of replacing an item's conditioning by the null one in
      training (:meth:`forward_with_dropout`); ``trainable`` says whether its parameters are
      trained with the denoiser.
    * ``example_batch`` returns valid inputs, so tests and the conformance kit can drive any
      conditioner without knowing it.
    """

    kind: ClassVar[str] = "conditioner"

    def __init__(
        self,
        *,
        output_spec: ConditioningSpec,
        input_keys: Sequence[str],
        dropout: float = 0.0,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must lie in [0, 1], got {dropout}")
        self.output_spec = output_spec
        self.input_keys = tuple(input_keys)
        self.dropout = float(dropout)
        self.trainable = bool(trainable)

    def check_batch(self, batch: Mapping[str, Any]) -> int:
        """Raise a clear ``KeyError`` for missing keys; return the batch size."""
        missing = [k for k in self.input_keys if k not in batch]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs batch keys {list(self.input_keys)}; missing "
                f"{missing} (found {sorted(batch)})"
            )
        first = batch[self.input_keys[0]] if self.input_keys else None
        return len(first) if first is not None else 0

    @abc.abstractmethod
    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        """Batch dict -> Conditioning matching ``output_spec``."""

    @abc.abstractmethod
    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        """The null ("unconditional") Conditioning for a batch of the same size."""

    @abc.abstractmethod
    def example_batch(
        self,
        batch_size: int,
        *,
        latent_size: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Valid inputs for ``batch_size`` items. ``latent_size`` is the latent spatial size
        that ``concat`` outputs must match (ignored by conditioners without ``concat``)."""

    def bind(self, autoencoder: Autoencoder) -> None:
        """Called by :class:`~latentkit.LatentDiffusion` at construction with its first stage.

        Conditioners that encode images through the autoencoder (concat conditioning for
        inpainting, say) keep a reference here; the default does nothing. The autoencoder is
        not registered as a submodule, so it is neither trained nor saved twice.
        """

    def forward_with_dropout(
        self, batch: Mapping[str, Any], generator: Generators = None
    ) -> Conditioning:
        """``forward`` with each item replaced by the null conditioning with probability
        ``dropout`` (classifier-free guidance training, Ho & Salimans 2022)."""
        cond = self.forward(batch)
        if self.dropout <= 0.0 or cond.batch_size is None:
            return cond
        b = cond.batch_size
        device = next((t.device for _, t in cond.items()), torch.device("cpu"))
        drop = rand((b,), generator, device=device) < self.dropout
        if not bool(drop.any()):
            return cond
        return cond.where(drop, self.null(batch))


class Sampler(abc.ABC):
    """Integrates the reverse process in sigma space (k-diffusion / EDM convention).

    Every sampler has one signature::

        sample(denoise, x, sigmas, *, extra_args=None, callback=None, generator=None) -> x

    ``denoise(x, sigma, **extra_args) -> x0`` is the parameterized model (guidance already
    wrapped in), ``x`` the initial noise scaled to ``sigmas[0]``, and ``sigmas`` a decreasing
    1-D tensor of noise levels ending in 0. Stochastic samplers draw all noise from
    ``generator`` (one generator per item keeps item noise independent of the batch).
    ``callback`` receives the dict described by :data:`SamplerCallback` once per step.
    """

    kind: ClassVar[str] = "sampler"
    #: Whether the sampler injects noise (its output depends on ``generator``).
    stochastic: ClassVar[bool] = False
    #: The convergence order of the deterministic ODE solver: the global error falls as
    #: ``steps^-order`` (1 for Euler, 2 for Heun), or ``None`` when not declared. For a sampler
    #: with optional noise (``eta``, ``s_churn``) it is the order with the noise switched off.
    #: The conformance kit's ``check_sampler_order`` measures it on closed-form Gaussian data.
    order: int | None = None

    @abc.abstractmethod
    def model_calls(self, steps: int) -> int:
        """Number of ``denoise`` calls for ``steps`` steps (``len(sigmas) - 1``)."""

    @abc.abstractmethod
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
        """Integrate from ``sigmas[0]`` to ``sigmas[-1]`` (= 0) and return the sample."""


class Schedule(abc.ABC):
    """A noise schedule in sigma space (``x_sigma = x0 + sigma * eps``).

    Contract:

    * ``sigmas(steps, spacing=...)`` returns ``steps + 1`` decreasing noise levels ending in 0.
    * ``sample_training_sigmas(batch_size, generator)`` draws training noise levels (B,).
    * ``sigma_to_t`` / ``t_to_sigma`` map a noise level to the backbone's noise input and back
      (a fractional timestep for discrete schedules; ``0.25 * ln(sigma)`` for continuous ones,
      EDM's c_noise).
    """

    kind: ClassVar[str] = "schedule"

    @property
    @abc.abstractmethod
    def sigma_min(self) -> float:
        """Smallest non-zero noise level."""

    @property
    @abc.abstractmethod
    def sigma_max(self) -> float:
        """Largest noise level."""

    @abc.abstractmethod
    def sigmas(self, steps: int, spacing: str | None = None, *, device: str | torch.device = "cpu") -> torch.Tensor:
        """``steps + 1`` decreasing sampling noise levels, the last one 0."""

    @abc.abstractmethod
    def sample_training_sigmas(
        self, batch_size: int, generator: Generators = None, *, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Training noise levels, shape (batch_size,)."""

    @abc.abstractmethod
    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Noise level -> backbone noise input ``t``."""

    @abc.abstractmethod
    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Backbone noise input ``t`` -> noise level."""


class Dataset(torch.utils.data.Dataset, abc.ABC):  # type: ignore[type-arg]
    """A data source yielding dicts: ``{"image" | "video" | "volume" | "signal": Tensor,
    "caption": str, "label": int, ...}``, tensors in ``data_spec`` layout without the batch
    axis and values in ``data_spec.value_range``."""

    kind: ClassVar[str] = "dataset"

    def __init__(self, data_spec: DataSpec) -> None:
        self.data_spec = data_spec

    @property
    def data_key(self) -> str:
        """The key of the main tensor in each item: by default the one of the layout
        (``data_spec.data_key``: ``"image"``, ``"video"``, ``"volume"`` or ``"signal"``).
        A dataset whose items use another key sets ``data_key`` (as a class attribute, or on
        the instance)."""
        if "_data_key" in self.__dict__:
            return str(self.__dict__["_data_key"])
        spec = getattr(self, "data_spec", None)
        return spec.data_key if isinstance(spec, DataSpec) else DATA_KEYS["CHW"]

    @data_key.setter
    def data_key(self, value: str) -> None:
        self.__dict__["_data_key"] = value

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of items."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index`` as a dict."""

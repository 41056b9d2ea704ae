"""The composed model: :class:`LatentDiffusion` (Rombach et al. 2022, Sec. 3.2-3.3).

A frozen first stage (autoencoder), a denoiser backbone, an optional conditioner, a noise
schedule and a parameterization make one ``nn.Module`` that trains with :meth:`loss` and
generates with :meth:`sample`, :meth:`img2img`, :meth:`inpaint` and :meth:`super_resolve`,
all four taking one :class:`~latentkit.diffusion.SamplingOptions` and/or its fields as keywords.
With the ``identity`` autoencoder it is a pixel-space diffusion model through the same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs
import torch
from torch import nn

from latentkit.composition import validate_composition
from latentkit.diffusion.guidance import ClassifierFreeGuidance, DynamicThresholding
from latentkit.diffusion.objective import DiffusionObjective, LossWeighting
from latentkit.diffusion.parameterizations import Parameterization, ParameterizedDenoiser
from latentkit.diffusion.sampling import (
    SamplingOptions,
    lists_sampling_options,
    resolve_sampling_options,
    schedule_sigmas,
)
from latentkit.errors import ShapeError
from latentkit.interfaces import Autoencoder, Conditioner, DenoiseFn, Denoiser, Sampler, Schedule
from latentkit.random import Generators, generators_from_seed, randn
from latentkit.samplers.base import initial_state
from latentkit.specs import Conditioning

if TYPE_CHECKING:
    from latentkit.plugins import PluginManager

__all__ = ["LATENT_STD_TOLERANCE", "LatentDiffusion", "downsample_mask", "latent_diffusion"]

#: How far (a factor, either way) the std of the normalised training latents may be from the
#: parameterization's ``sigma_data`` before the first training step warns.
LATENT_STD_TOLERANCE = 3.0


def downsample_mask(mask: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Data-resolution mask (B, 1, *spatial) -> latent-resolution mask (B, 1, *spatial // f).

    A latent cell is "to generate" (1) when any data pixel it covers is; only cells whose
    pixels are all known stay known. Works for any number of spatial axes.
    """
    b, c, *spatial = mask.shape
    if len(spatial) != len(factors) or any(s % f for s, f in zip(spatial, factors)):
        raise ShapeError(
            f"mask spatial size {tuple(spatial)} must be divisible by the latent downsampling "
            f"factors {tuple(factors)}"
        )
    shape = [b, c]
    for s, f in zip(spatial, factors):
        shape += [s // f, f]
    cells = mask.reshape(shape)  # (B, 1, S1, f1, S2, f2, ...)
    return cells.amax(dim=tuple(3 + 2 * i for i in range(len(spatial))))


class _SharedReference:
    """Holds an object that copies of the model share rather than copy: a plugin manager is a
    process-level registry (with locks, which cannot be deep-copied)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedReference:
        return self


@attrs.frozen
class SamplingProblem:
    """One sampling run before the sampler: see :meth:`LatentDiffusion.sampling_problem`."""

    denoise: DenoiseFn  # denoise(x, sigma, **extra_args) -> x0, guidance included
    extra_args: dict[str, Any]  # cond / uncond for denoise
    x: torch.Tensor  # the starting state: noise * sigmas[0] (the noise itself at sigma = inf)
    sigmas: torch.Tensor  # steps + 1 levels (float32, on the model's device)
    generator: Generators  # for the stochastic samplers


class _KeepKnown:
    """Inpainting by blending (Avrahami et al. 2023, "Blended Latent Diffusion"; the
    known-region replacement of Lugmayr et al. 2022, RePaint): the x0 estimate is the known latent ``z0`` wherever ``mask`` is 0.

    For the probability-flow ODE this keeps the known region of ``x`` at exactly
    ``z0 + sigma * n``, so every sampler ends on ``z0`` there.
    """

    def __init__(self, denoise: DenoiseFn, known: torch.Tensor, mask: torch.Tensor) -> None:
        self.denoise = denoise
        self.known = known
        self.mask = mask  # 1 = generate, 0 = keep; broadcasts over channels

    def __call__(self, x: torch.Tensor, sigma: Any, **extra: Any) -> torch.Tensor:
        """x0 estimate with the known region replaced by the known latents."""
        denoised = self.denoise(x, sigma, **extra)
        return torch.lerp(self.known, denoised, self.mask.to(denoised.dtype))


class LatentDiffusion(nn.Module):
    """Latent diffusion model: autoencoder + denoiser + conditioner + schedule +
    parameterization (Rombach et al. 2022).

    Construction runs :func:`latentkit.validate_composition` first, so parts that do not fit
    raise :class:`~latentkit.errors.CompositionError` before any forward pass; then the
    conditioner is bound to the autoencoder (:meth:`Conditioner.bind`) and the autoencoder
    (and any non-trainable conditioner) is frozen.

    Parameters:
        autoencoder: first stage; frozen.
        denoiser: backbone; trained.
        conditioner: turns batch data into conditioning; ``None`` for unconditional models.
        schedule: a :class:`Schedule` or the name of a registered one.
        parameterization: ``"eps"``, ``"v"``, ``"x0"``, ``"edm"`` or a
            :class:`~latentkit.diffusion.Parameterization`.
        loss_weighting: ``"uniform"``, ``"min_snr"``, ``"soft_min_snr"``, ``"edm"`` or a
            :class:`~latentkit.diffusion.LossWeighting`.
        gamma: gamma of ``min_snr`` / ``soft_min_snr``.
        offset_noise: offset-noise strength (Guttenberg 2023); 0 = off.
        sigma_data: data standard deviation for the parameterization (defaults: 1 for
            eps/v/x0, the schedule's for edm).
        sample_posterior: encode training data with a posterior sample (True) or its mode.
        latent_size: default latent spatial size for :meth:`sample` when nothing else
            determines it.
        data_key: batch key of the data tensor (default from the layout,
            ``autoencoder.data_spec.data_key``: ``image``, ``video``, ``volume`` or ``signal``).
        plugin_manager: the :class:`~latentkit.plugins.PluginManager` that creates samplers
            and schedules given by name and receives the ``latentkit_sampling_step`` hook;
            ``None`` = the process-wide one, looked up at each use. Shared by copies, not
            part of the module tree or ``state_dict``.

    The loss terms for logging (batch means of the unweighted target- and x0-space errors
    and of sigma) come from :meth:`loss_terms`, or ``loss(batch, return_terms=True)``.
    """

    def __init__(
        self,
        autoencoder: Autoencoder,
        denoiser: Denoiser,
        conditioner: Conditioner | None = None,
        schedule: Schedule | str = "scaled_linear",
        parameterization: str | Parameterization = "eps",
        loss_weighting: str | LossWeighting = "uniform",
        *,
        gamma: float | None = None,  # min_snr / soft_min_snr gamma
        offset_noise: float = 0.0,  # offset-noise strength
        sigma_data: float | None = None,  # parameterization's sigma_data override
        sample_posterior: bool = True,  # training latents: posterior sample or mode
        latent_size: Sequence[int] | None = None,  # default latent spatial size for sample()
        data_key: str | None = None,  # batch key of the data tensor
        plugin_manager: PluginManager | None = None,  # None: the process-wide one
    ) -> None:
        super().__init__()
        validate_composition(autoencoder, denoiser, conditioner)
        self.plugin_manager = plugin_manager  # None: the process-wide one, looked up at each use
        if isinstance(schedule, str):
            schedule = self.plugin_manager.create("schedule", schedule)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a latentkit Schedule or a name, got {type(schedule).__name__}")
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.conditioner = conditioner
        self.schedule = schedule
        # Not a registered submodule: the backbone is registered once, as ``denoiser``, so
        # state_dict keys are ``denoiser.*`` and nothing is saved twice.
        self.__dict__["parameterized"] = ParameterizedDenoiser(
            denoiser, schedule, parameterization, sigma_data=sigma_data
        )
        self._latent_scale_checked = False  # the first training batch is checked once (loss_terms)
        self.objective = DiffusionObjective(loss_weighting, gamma=gamma, offset_noise=offset_noise)
        self.sample_posterior = bool(sample_posterior)
        self.latent_size = None if latent_size is None else tuple(int(s) for s in latent_size)
        self.data_key = data_key or autoencoder.data_spec.data_key
        if conditioner is not None:
            conditioner.bind(autoencoder)
            if not conditioner.trainable:
                conditioner.requires_grad_(False)
        autoencoder.requires_grad_(False)
        self.train(True)

    def extra_repr(self) -> str:
        """Schedule, parameterization and objective, shown by ``print(model)``."""
        return f"schedule={self.schedule!r}, parameterization={self.parameterization!r}, objective={self.objective!r}"

    # ------------------------------------------------------------------ properties

    parameterized: ParameterizedDenoiser  # set in __init__, kept out of the module tree

    @property
    def parameterization(self) -> Parameterization:
        """The parameterization (scalings, target, x0 conversion)."""
        return self.parameterized.parameterization

    @property
    def device(self) -> torch.device:
        """Device of the denoiser's parameters."""
        for p in self.denoiser.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def is_pixel_space(self) -> bool:
        """True when diffusion runs on the data itself (``autoencoder.is_pixel_space``: the
        ``identity`` first stage, or a wrapper of it)."""
        return self.autoencoder.is_pixel_space

    @property
    def plugin_manager(self) -> PluginManager:
        """The plugin manager that samplers and schedules given by name come from and whose
        ``latentkit_sampling_step`` hook each sampling step calls: the one given at
        construction, else the process-wide one (looked up now, so
        :func:`latentkit.plugins.reset_plugin_manager` takes effect)."""
        manager: PluginManager | None = self._plugin_manager.value
        if manager is None:
            from latentkit.plugins import get_plugin_manager

            manager = get_plugin_manager()
        return manager

    @plugin_manager.setter
    def plugin_manager(self, manager: PluginManager | None) -> None:
        from latentkit.plugins import PluginManager

        if manager is not None and not isinstance(manager, PluginManager):
            raise TypeError(
                f"plugin_manager must be a latentkit.plugins.PluginManager or None, got {type(manager).__name__}"
            )
        self._plugin_manager = _SharedReference(manager)

    def train(self, mode: bool = True) -> LatentDiffusion:
        """``nn.Module.train``, keeping the frozen parts in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        if self.conditioner is not None and not self.conditioner.trainable:
            self.conditioner.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive gradients: the denoiser's and a trainable conditioner's."""
        return [p for p in self.parameters() if p.requires_grad]

    def denoise(self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None,
                **extra: Any) -> torch.Tensor:
        """The parameterized model ``D(x, sigma, cond) -> x0`` that samplers integrate."""
        return self.parameterized.denoise(x, sigma, cond, **extra)

    # ------------------------------------------------------------------ first stage

    def _move(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        device = self.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, generator: Generators = None, sample: bool = False) -> torch.Tensor:
        """Data -> normalised latents (posterior mode unless ``sample``)."""
        return self.autoencoder.encode_normalized(
            x.to(self.device, torch.float32), generator=generator, sample=sample
        )

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> data."""
        return self.autoencoder.decode_normalized(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))`` through the posterior mode: what img2img at strength 0
        returns."""
        return self.decode(self.encode(x))

    def _latents(self, batch: Mapping[str, Any], generator: Generators) -> torch.Tensor:
        if "latents" in batch:
            z = self.autoencoder.check_latent(batch["latents"]).to(self.device, torch.float32)
            return self.autoencoder.normalize(z)
        if self.data_key not in batch:
            raise KeyError(
                f"LatentDiffusion.loss needs the data under batch key {self.data_key!r} (or raw "
                f"cached latents under 'latents'); found keys {sorted(batch)}"
            )
        return self.encode(batch[self.data_key], generator=generator, sample=self.sample_posterior)

    # ------------------------------------------------------------------ training

    def compile_targets(self) -> list[nn.Module]:
        """What ``Trainer(compile=True)`` hands to ``torch.compile``: the denoiser, the network
        that dominates the cost. Tokenizers, conditioning containers and random draws stay
        eager, so compiled training draws the same noise as eager training."""
        return [self.denoiser]

    def loss_terms(self, batch: Mapping[str, Any], *, generator: Generators = None) -> dict[str, torch.Tensor]:
        """Training loss terms for one batch.

        Encodes ``batch[data_key]`` with the frozen autoencoder (or normalises the raw cached
        latents in ``batch["latents"]``), applies the conditioner with its dropout (in
        training mode), draws noise levels and noise from ``generator``, and returns
        ``loss`` (the scalar to minimise) plus detached batch means ``mse_target``
        (unweighted, target space), ``mse_x0`` (unweighted, x0 space) and ``sigma``.
        """
        batch = self._move(batch)
        x0 = self._latents(batch, generator)
        if self.training and not self._latent_scale_checked and not self.is_pixel_space:
            self._latent_scale_checked = True
            self._warn_if_latents_off_scale(x0)
        cond = None
        if self.conditioner is not None:
            if self.training:
                cond = self.conditioner.forward_with_dropout(batch, generator)
            else:
                cond = self.conditioner(batch)
            cond = cond.to(self.device)
        terms = self.objective(self.parameterized, x0, cond, generator=generator)
        return {
            "loss": terms["loss"],
            "mse_target": terms["mse_target"].mean(),
            "mse_x0": terms["mse_x0"].mean(),
            "sigma": terms["sigma"].mean(),
        }

    def _warn_if_latents_off_scale(self, x0: torch.Tensor) -> None:
        """Once, on the first training batch: warn with the figures when the normalised latents'
        spread is far (a factor :data:`LATENT_STD_TOLERANCE`) from the ``sigma_data`` the
        parameterization's noise levels assume, the mark of an autoencoder whose latent
        statistics were never fitted (its samples come out as noise). Pixel-space models are
        not checked: the data's own scale is the data's business."""
        std, mean = float(x0.detach().float().std()), float(x0.detach().float().mean())
        expected = self.parameterization.sigma_data
        if expected / LATENT_STD_TOLERANCE <= std <= expected * LATENT_STD_TOLERANCE:
            return
        warnings.warn(
            f"the normalised training latents of {type(self.autoencoder).__name__} have std {std:.3g} "
            f"(mean {mean:.3g}) on the first batch, far from the {expected:g} that the {self.parameterization.name} "
            f"parameterization's noise levels assume (its sigma_data), so sampling will start from the wrong "
            f"scale; fit the latent statistics first: autoencoder.fit_latent_statistics(data), or "
            f"[autoencoder] fit_statistics = \"scale\" in a config (scaling_factor is "
            f"{float(self.autoencoder.scaling_factor):.4g} now)", stacklevel=3)

    @overload
    def loss(
        self, batch: Mapping[str, Any], *, generator: Generators = ..., return_terms: Literal[False] = ...
    ) -> torch.Tensor: ...

    @overload
    def loss(
        self, batch: Mapping[str, Any], *, generator: Generators = ..., return_terms: Literal[True]
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def loss(
        self, batch: Mapping[str, Any], *, generator: Generators = None, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """The scalar training loss of ``batch`` (see :meth:`loss_terms`).

        With ``return_terms=True`` returns ``(loss, terms)`` where ``terms`` maps each term's
        name to a float, for logging.
        """
        terms = self.loss_terms(batch, generator=generator)
        if return_terms:
            return terms["loss"], {k: float(v.detach()) for k, v in terms.items()}
        return terms["loss"]

    def forward(self, batch: Mapping[str, Any], **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """Same as :meth:`loss` (so DDP and ``torch.compile`` see the training step)."""
        return self.loss(batch, **kwargs)

    # ------------------------------------------------------------------ sampling

    def _batch_size(self, batch: Mapping[str, Any] | int | None) -> tuple[dict[str, Any], int]:
        if isinstance(batch, int) and not isinstance(batch, bool):
            if batch < 1:
                raise ValueError(f"sample: the number of samples must be >= 1, got {batch}")
            if self.conditioner is not None and self.conditioner.input_keys:
                self.conditioner.check_batch({})  # raises, naming the keys it needs
            return {}, batch
        if not isinstance(batch, Mapping):
            raise TypeError(f"sample: expected a batch dict or a number of samples, got {type(batch).__name__}")
        batch = dict(batch)
        if self.conditioner is not None and self.conditioner.input_keys:
            n = self.conditioner.check_batch(batch)
            if n:
                return batch, n
        for value in batch.values():
            if isinstance(value, (torch.Tensor, list, tuple)) and len(value):
                return batch, len(value)
        raise ValueError(f"sample: cannot tell the batch size from a batch with keys {sorted(batch)}")

    def _conditioning(
        self,
        batch: Mapping[str, Any],
        need_uncond: bool,
        negative: Mapping[str, Any] | None,
        uncond: Conditioning | None,
    ) -> tuple[Conditioning | None, Conditioning | None]:
        if self.conditioner is None:
            return None, None
        cond = self.conditioner(batch).to(self.device)
        if not need_uncond:
            return cond, None
        if uncond is None:
            if negative is not None:
                uncond = self.conditioner({**batch, **self._move(negative)})
            else:
                uncond = self.conditioner.null(batch)
        return cond, uncond.to(self.device)

    def _resolve_latent_size(
        self, cond: Conditioning | None, latent_size: Sequence[int] | None, init: torch.Tensor | None
    ) -> tuple[int, ...]:
        if init is not None:
            return tuple(init.shape[2:])
        if cond is not None and cond.concat is not None:
            found = tuple(cond.concat.shape[2:])
            if latent_size is not None and tuple(latent_size) != found:
                raise ShapeError(
                    f"sample: latent_size {tuple(latent_size)} differs from the spatial size "
                    f"{found} of the conditioner's concat output"
                )
            return found
        size = latent_size if latent_size is not None else self.latent_size
        if size is None:
            raise ValueError(
                "sample: pass latent_size=(...) (the latent spatial size) or set it at "
                "construction; it cannot be inferred from this batch"
            )
        return tuple(int(s) for s in size)

    def _compiled_denoiser(self) -> ParameterizedDenoiser:
        """The parameterized denoiser around a :class:`~latentkit.compilation.CompiledModule`
        of the backbone, made once and kept (so the compiled graphs are reused)."""
        cached = self.__dict__.get("_compiled_parameterized")
        if cached is None or cached.backbone.module is not self.denoiser:
            from latentkit.compilation import CompiledModule

            backbone = CompiledModule(self.denoiser, what=f"the denoiser ({type(self.denoiser).__name__})")
            cached = ParameterizedDenoiser(backbone, self.schedule, self.parameterization)  # type: ignore[arg-type]
            self.__dict__["_compiled_parameterized"] = cached
        return cached  # type: ignore[no-any-return]

    @torch.no_grad()
    def sampling_problem(
        self,
        batch: Mapping[str, Any] | int | None,
        options: SamplingOptions | None = None,
        *,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        keep_mask: torch.Tensor | None = None,
        **overrides: Any,
    ) -> SamplingProblem:
        """What :meth:`sample` hands the sampler, without running it: the guided
        ``denoise`` function with its ``extra_args``, the starting ``x``, the ``sigmas`` and the
        generator(s). Tools that run samplers themselves (the schedule optimiser,
        :func:`latentkit.diffusion.schedule_optimization.optimize_model_schedule`) start here.
        ``options`` and ``overrides`` are the :class:`SamplingOptions`."""
        options = resolve_sampling_options(options, overrides, caller="LatentDiffusion.sampling_problem()")
        batch, n = self._batch_size(batch)
        batch = self._move(batch)
        device = self.device
        guided = self.conditioner is not None and (
            options.guidance_scale != 1.0 or options.guidance_rescale != 0.0
        )
        cond, unc = self._conditioning(batch, guided, options.negative, options.uncond)
        size = self._resolve_latent_size(cond, options.latent_size, init)
        shape = self.autoencoder.latent_spec.shape(n, size)
        if init is not None and tuple(init.shape) != shape:
            raise ShapeError(f"sample: initial latents have shape {tuple(init.shape)}, expected {shape}")

        sigmas = options.sigmas
        if sigmas is None:
            sigmas = schedule_sigmas(self.schedule, options.steps, options.spacing, device=device,
                                     latent_shape=size)
        sigmas = torch.as_tensor(sigmas, device=device, dtype=torch.float32)
        if init is not None and strength < 1.0:
            if not 0.0 <= strength <= 1.0:
                raise ValueError(f"strength must lie in [0, 1], got {strength}")
            total = len(sigmas) - 1
            start = total - min(int(total * strength), total)  # as diffusers' img2img
            sigmas = sigmas[start:]

        gens: Generators = (
            generators_from_seed(options.seed, n, device) if options.seed is not None else options.generator
        )
        noise = options.noise
        if noise is None:
            noise = randn(shape, gens, device=device)
        elif tuple(noise.shape) != shape:
            raise ShapeError(f"sample: noise has shape {tuple(noise.shape)}, expected {shape}")
        noise = noise.to(device, torch.float32)
        if init is not None and strength < 1.0:
            x = init + sigmas[0] * noise
        else:
            x = initial_state(noise, float(sigmas[0]))

        denoise: DenoiseFn = (self._compiled_denoiser() if options.compile else self.parameterized).denoise
        extra_args: dict[str, Any] = {"cond": cond}
        if guided:
            denoise = ClassifierFreeGuidance(
                denoise, options.guidance_scale, rescale=options.guidance_rescale,
                rescale_space=options.rescale_space or self.parameterization.name,
                interval=options.guidance_interval,
            )
            extra_args["uncond"] = unc
        if options.dynamic_threshold is not None:
            if not self.is_pixel_space:
                raise ValueError(
                    "dynamic thresholding clips the x0 estimate to the data's value range, so it "
                    "applies to pixel-space models only (an autoencoder whose is_pixel_space is "
                    f"True, such as identity); {type(self.autoencoder).__name__} is not"
                )
            lo, hi = self.autoencoder.data_spec.value_range
            value_range = (
                float(self.autoencoder.normalize(torch.tensor(lo))),
                float(self.autoencoder.normalize(torch.tensor(hi))),
            )
            denoise = DynamicThresholding(denoise, options.dynamic_threshold, tuple(sorted(value_range)))  # type: ignore[arg-type]
        if keep_mask is not None and init is not None:
            denoise = _KeepKnown(denoise, init, keep_mask)
        return SamplingProblem(denoise=denoise, extra_args=extra_args, x=x, sigmas=sigmas, generator=gens)

    @torch.no_grad()
    def _generate(
        self,
        batch: Mapping[str, Any] | int | None,
        options: SamplingOptions,
        *,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        keep_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        problem = self.sampling_problem(batch, options, init=init, strength=strength, keep_mask=keep_mask)
        denoise, extra_args, x, sigmas, gens = (
            problem.denoise, problem.extra_args, problem.x, problem.sigmas, problem.generator,
        )
        if len(sigmas) > 1:
            sampler = options.sampler
            solver: Sampler = self.plugin_manager.create("sampler", sampler) if isinstance(sampler, str) else sampler
            z = solver.sample(
                denoise, x, sigmas, extra_args=extra_args,
                callback=self._step_callback(options.callback, len(sigmas) - 1), generator=gens,
            )
        else:
            z = x
        if keep_mask is not None and init is not None:
            z = torch.lerp(init, z, keep_mask.to(z.dtype))
        if options.return_latents:
            return z
        data = self.decode(z)
        if options.clamp:
            lo, hi = self.autoencoder.data_spec.value_range
            data = data.clamp(float(lo), float(hi))
        return data

    def _step_callback(
        self, callback: Callable[[dict[str, Any]], None] | None, total: int
    ) -> Callable[[dict[str, Any]], None]:
        hook = self.plugin_manager.hook

        def step(info: dict[str, Any]) -> None:
            if callback is not None:
                callback(info)
            hook.latentkit_sampling_step(info={**info, "total": total})

        return step

    @lists_sampling_options
    def sample(
        self, batch: Mapping[str, Any] | int, options: SamplingOptions | None = None, **overrides: Any
    ) -> torch.Tensor:
        """Generate from noise and decode (txt2img, class-conditional or unconditional).

        Parameters:
            batch: conditioning inputs (a dict read by the conditioner), or the number of
                samples for a model without conditioner.
            options: a :class:`~latentkit.diffusion.SamplingOptions`, whose docstring
                documents every option (sampler, steps, guidance, seed, latent size, ...).
            overrides: the same options as keywords (``sampler=``, ``steps=``,
                ``guidance_scale=``, ``seed=``, ``latent_size=``, ...), applied on top of
                ``options``; an unknown name is a ``TypeError``.
        """
        options = resolve_sampling_options(options, overrides, caller="LatentDiffusion.sample()")
        return self._generate(batch, options)

    @lists_sampling_options
    def img2img(
        self,
        image: torch.Tensor,
        strength: float = 0.8,
        *,
        batch: Mapping[str, Any] | None = None,
        options: SamplingOptions | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """SDEdit-style image-to-image (Meng et al. 2022): encode ``image``, noise it to the
        level reached after ``(1 - strength) * steps`` of the schedule and denoise the
        remaining ``strength * steps`` steps. ``strength = 0`` returns the reconstruction
        ``decode(encode(image))``; ``batch`` holds conditioning inputs; ``options`` and
        keyword ``overrides`` are the :class:`~latentkit.diffusion.SamplingOptions`, as in
        :meth:`sample`."""
        options = resolve_sampling_options(options, overrides, caller="LatentDiffusion.img2img()")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"img2img: strength must lie in [0, 1], got {strength}")
        z0 = self.encode(image)
        cond_batch = dict(batch) if batch is not None else z0.shape[0]
        return self._generate(cond_batch, options, init=z0, strength=strength)

    @lists_sampling_options
    def inpaint(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        *,
        batch: Mapping[str, Any] | None = None,
        strength: float = 1.0,
        blend: bool = True,
        options: SamplingOptions | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Fill the region where ``mask`` (B, 1, *spatial, 1 = generate, 0 = keep) is 1.

        Two mechanisms, used together when both apply: with ``blend`` the known region's x0
        estimate is replaced by the encoded image at every step and the final latents are
        pasted (Avrahami et al. 2023; Lugmayr et al. 2022); and the batch gets ``mask`` and
        ``masked_image`` (the image with the region to generate set to 0), which a
        conditioner of an inpainting model (Rombach et al. 2022, Sec. 4.5) turns into concat
        channels. ``strength < 1`` starts from the noised image as in :meth:`img2img`.
        ``options`` and keyword ``overrides`` are the
        :class:`~latentkit.diffusion.SamplingOptions`, as in :meth:`sample`.
        """
        options = resolve_sampling_options(options, overrides, caller="LatentDiffusion.inpaint()")
        image = image.to(self.device, torch.float32)
        expected = (image.shape[0], 1, *image.shape[2:])
        if tuple(mask.shape) != expected:
            raise ShapeError(f"inpaint: mask must have shape {expected} (B, 1, *spatial), got {tuple(mask.shape)}")
        mask = mask.to(self.device, torch.float32)
        z0 = self.encode(image)
        cond_batch = dict(batch or {})
        cond_batch.update(mask=mask, masked_image=image * (1.0 - mask))
        if self.conditioner is None or not self.conditioner.input_keys:
            cond_batch = {"mask": mask}  # only sizes the batch
        keep_mask = downsample_mask(mask, self.autoencoder.latent_spec.downsampling) if blend else None
        return self._generate(cond_batch, options, init=z0, strength=strength, keep_mask=keep_mask)

    @lists_sampling_options
    def super_resolve(
        self,
        low_res: torch.Tensor,
        *,
        batch: Mapping[str, Any] | None = None,
        options: SamplingOptions | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Super-resolution (Rombach et al. 2022, Sec. 4.4): ``low_res`` goes to the
        conditioner under the batch key ``low_res``, which turns it into concat channels at
        the latent size. ``options`` and keyword ``overrides`` are the
        :class:`~latentkit.diffusion.SamplingOptions`, as in :meth:`sample`."""
        options = resolve_sampling_options(options, overrides, caller="LatentDiffusion.super_resolve()")
        if self.conditioner is None or "low_res" not in self.conditioner.input_keys:
            raise ValueError(
                "super_resolve needs a conditioner that reads the batch key 'low_res' (e.g. a "
                "concat conditioner built for super-resolution); this model's conditioner reads "
                f"{None if self.conditioner is None else list(self.conditioner.input_keys)}"
            )
        cond_batch = dict(batch or {})
        cond_batch["low_res"] = low_res
        return self._generate(cond_batch, options)


def latent_diffusion(
    autoencoder: Autoencoder,
    denoiser: Denoiser,
    schedule: Schedule,
    conditioner: Conditioner | None = None,
    **options: Any,
) -> LatentDiffusion:
    """The ``diffusion`` model of a config (:mod:`latentkit.models`): a
    :class:`LatentDiffusion` of the built parts, the ``[model]`` keys as its options. The
    schedule is required here (a config names it), where the constructor defaults to
    ``scaled_linear``."""
    return LatentDiffusion(autoencoder, denoiser, conditioner, schedule, **options)

"""How :class:`~latentkit.diffusion.LatentDiffusion` generates: one frozen
:class:`SamplingOptions`, shared by ``sample``, ``img2img``, ``inpaint`` and ``super_resolve``.

Every value is checked when the options are built, so a bad one fails before any model call
with an error that names the option, what was expected and what was found.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import torch

from latentkit.diffusion.parameterizations import PARAMETERIZATIONS, Parameterization
from latentkit.interfaces import Sampler, Schedule
from latentkit.random import Generators
from latentkit.specs import Conditioning

__all__ = ["SamplingOptions", "lists_sampling_options", "resolve_sampling_options", "schedule_sigmas"]

_Method = TypeVar("_Method", bound=Callable[..., Any])


def schedule_sigmas(
    schedule: Schedule,
    steps: int,
    spacing: str | None = None,
    *,
    device: str | torch.device = "cpu",
    latent_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """``schedule.sigmas(steps, spacing)``, passing ``latent_shape=`` (the latent's spatial
    shape) to schedules whose grid depends on it (``resolution_dependent``, e.g. the flow
    schedule's dynamic shift)."""
    if getattr(schedule, "resolution_dependent", False):
        if latent_shape is None:
            raise ValueError(
                f"{type(schedule).__name__}: its sampling grid depends on the latent size; "
                "pass latent_shape=(...) (the latent's spatial shape)"
            )
        return schedule.sigmas(steps, spacing, device=device, latent_shape=tuple(latent_shape))  # type: ignore[call-arg]
    return schedule.sigmas(steps, spacing, device=device)


def _fail(
    name: str, expected: str, value: Any, error: type[Exception] = ValueError, *, found: str | None = None
) -> Exception:
    if found is None:
        simple = isinstance(value, (numbers.Number, str, tuple, list, type(None)))
        found = repr(value) if simple else f"a value of type {type(value).__name__}"
    return error(f"SamplingOptions.{name}: expected {expected}, got {found}")


def _integer(name: str, value: Any, expected: str) -> int:
    if isinstance(value, bool):
        raise _fail(name, expected, value, TypeError)
    try:
        return operator.index(value)
    except TypeError:
        raise _fail(name, expected, value, TypeError) from None


def _real(name: str, value: Any, expected: str = "a finite number", *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, expected, value, TypeError)
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise _fail(name, expected, value)
    return number


# One converter per field (named functions, so that type checkers see the field types); each
# validates, normalises (tuples, floats) and lets None through where None is the default.


def _to_sampler(value: Any) -> str | Sampler:
    expected = "a registered sampler's name or a Sampler"
    if isinstance(value, str):
        if not value:
            raise _fail("sampler", expected, value)
        return value
    if not callable(getattr(value, "sample", None)):
        raise _fail("sampler", expected, value, TypeError)
    return value  # type: ignore[no-any-return]


def _to_steps(value: Any) -> int:
    steps = _integer("steps", value, "a positive int")
    if steps < 1:
        raise _fail("steps", "a positive int", value)
    return steps


def _to_spacing(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail("spacing", "a spacing name (str) or None", value, TypeError)
    return value


def _to_sigmas(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    expected = "a 1-D sequence of finite noise levels >= 0 (at least one; the first may be inf)"
    try:
        sigmas = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise _fail("sigmas", expected, value, TypeError) from None
    if not sigmas.is_floating_point():
        sigmas = sigmas.float()
    if sigmas.ndim != 1 or len(sigmas) == 0:
        raise _fail("sigmas", expected, value, found=f"shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas[1:]).all()) or bool(torch.isnan(sigmas[:1]).any()) or bool((sigmas < 0).any()):
        raise _fail("sigmas", expected, value, found=str(sigmas.tolist()))
    return sigmas


def _to_guidance_scale(value: Any) -> float:
    return _real("guidance_scale", value)


def _to_guidance_rescale(value: Any) -> float:
    phi = _real("guidance_rescale", value, "a number in [0, 1]")
    if not 0.0 <= phi <= 1.0:
        raise _fail("guidance_rescale", "a number in [0, 1]", value)
    return phi


def _to_guidance_interval(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    expected = "(sigma_lo, sigma_hi) with 0 <= sigma_lo <= sigma_hi"
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise _fail("guidance_interval", expected, value, TypeError) from None
    lo = _real("guidance_interval", lo, expected, allow_inf=True)
    hi = _real("guidance_interval", hi, expected, allow_inf=True)
    if not 0.0 <= lo <= hi:
        raise _fail("guidance_interval", expected, value)
    return lo, hi


def _to_rescale_space(value: Any) -> str | Parameterization | None:
    if value is None or isinstance(value, Parameterization):
        return value
    if not isinstance(value, str) or value not in PARAMETERIZATIONS:
        close = difflib.get_close_matches(str(value), list(PARAMETERIZATIONS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        expected = f"a parameterization name, one of {sorted(PARAMETERIZATIONS)}{hint}"
        raise _fail("rescale_space", expected, value, ValueError if isinstance(value, str) else TypeError)
    return value


def _to_negative(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail("negative", "a mapping of batch entries (e.g. {'caption': [...]})", value, TypeError)
    return dict(value)


def _to_uncond(value: Any) -> Conditioning | None:
    if value is not None and not isinstance(value, Conditioning):
        raise _fail("uncond", "a Conditioning or None", value, TypeError)
    return value


def _to_dynamic_threshold(value: Any) -> float | None:
    if value is None:
        return None
    percentile = _real("dynamic_threshold", value, "a percentile in (0, 1]")
    if not 0.0 < percentile <= 1.0:
        raise _fail("dynamic_threshold", "a percentile in (0, 1]", value)
    return percentile


def _to_seed(value: Any) -> int | None:
    return None if value is None else _integer("seed", value, "an int")


def _to_generator(value: Any) -> Generators:
    if value is None or isinstance(value, torch.Generator):
        return value
    if (
        isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
        and all(isinstance(g, torch.Generator) for g in value)
    ):
        return value
    raise _fail("generator", "a torch.Generator, one per item, or None", value, TypeError)


def _to_latent_size(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    expected = "a sequence of positive ints (the latent spatial size)"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail("latent_size", expected, value, TypeError)
    sizes = tuple(_integer("latent_size", s, expected) for s in value)
    if not sizes or any(s < 1 for s in sizes):
        raise _fail("latent_size", expected, value)
    return sizes


def _to_noise(value: Any) -> torch.Tensor | None:
    if value is not None and not isinstance(value, torch.Tensor):
        raise _fail("noise", "a Tensor of the latent shape or None", value, TypeError)
    return value


def _to_callback(value: Any) -> Callable[[dict[str, Any]], None] | None:
    if value is not None and not callable(value):
        raise _fail("callback", "a callable taking the step's dict, or None", value, TypeError)
    return value  # type: ignore[no-any-return]


def _to_return_latents(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("return_latents", "a bool", value, TypeError)
    return value


def _to_clamp(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("clamp", "a bool", value, TypeError)
    return value


def _to_compile(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("compile", "a bool", value, TypeError)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that compares tensors (and mappings and sequences of them) by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b.to(a.device)))
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


_BY_VALUE = attrs.cmp_using(eq=_same)


@attrs.frozen(kw_only=True)
class SamplingOptions:
    """How :meth:`LatentDiffusion.sample <latentkit.diffusion.LatentDiffusion.sample>` (and
    ``img2img``, ``inpaint``, ``super_resolve``) generate.

    Build one and reuse it, or pass the same names as keywords to those methods; keywords
    given next to an options object override its fields (``model.sample(batch, options,
    seed=3)``); :meth:`replace` does the same on the object. Each value is checked here, so a
    bad one raises (``ValueError``, or ``TypeError`` for a wrong type) naming the option.

    Parameters:
        sampler: a registered sampler's name (created through the model's plugin manager)
            or a :class:`~latentkit.interfaces.Sampler`.
        steps, spacing: ``schedule.sigmas(steps, spacing)``; ``sigmas`` overrides both.
        guidance_scale: classifier-free guidance weight (1 = off).
        guidance_rescale: Lin et al.'s phi in [0, 1], in ``rescale_space`` (default: the
            model's parameterization, as diffusers does).
        guidance_interval: ``(sigma_lo, sigma_hi)`` where guidance applies.
        negative: batch entries for the negative prompt (e.g. ``{"caption": [...]}``),
            used instead of the conditioner's null input; ``uncond`` gives the
            unconditional :class:`~latentkit.specs.Conditioning` directly.
        dynamic_threshold: percentile for dynamic thresholding (pixel-space models only,
            see ``Autoencoder.is_pixel_space``).
        seed: per-item generators ``seed + i`` (item ``i`` is the same at any batch size);
            ``generator``: one generator or one per item (used when ``seed`` is None).
        latent_size: latent spatial size (inferred from concat conditioning if any).
        noise: the initial standard-normal noise (scaled by ``sigmas[0]``, or as it is when
            ``sigmas[0]`` is inf, pure noise).
        callback: called once per step with the sampler's dict.
        return_latents: return normalised latents instead of decoded data.
        clamp: clamp the decoded data to the autoencoder's ``data_spec.value_range`` (the
            default, as the command line, the writers and diffusers' image output do); False
            returns the decoder's raw output, which may overshoot the range.
        compile: run the denoiser through ``torch.compile`` (compiled on the first call and
            kept with the model for later ones; eager, with one warning, where it cannot
            compile: :class:`latentkit.compilation.CompiledModule`).
    """

    sampler: str | Sampler = attrs.field(default="euler", converter=_to_sampler)  # the solver, by name or object
    steps: int = attrs.field(default=20, converter=_to_steps)  # number of sampler steps
    spacing: str | None = attrs.field(default=None, converter=_to_spacing)  # schedule spacing, None: its own
    sigmas: torch.Tensor | None = attrs.field(  # explicit noise levels, override steps and spacing
        default=None, converter=_to_sigmas, eq=_BY_VALUE, hash=False
    )
    guidance_scale: float = attrs.field(default=1.0, converter=_to_guidance_scale)  # CFG weight, 1 = off
    guidance_rescale: float = attrs.field(default=0.0, converter=_to_guidance_rescale)  # phi, 0 = off
    guidance_interval: tuple[float, float] | None = attrs.field(  # sigmas where guidance applies
        default=None, converter=_to_guidance_interval
    )
    rescale_space: str | Parameterization | None = attrs.field(  # space of the rescale, None: model's
        default=None, converter=_to_rescale_space
    )
    negative: dict[str, Any] | None = attrs.field(  # batch entries of the negative prompt
        default=None, converter=_to_negative, eq=_BY_VALUE, hash=False
    )
    uncond: Conditioning | None = attrs.field(default=None, converter=_to_uncond)  # explicit uncond
    dynamic_threshold: float | None = attrs.field(  # percentile; pixel space only
        default=None, converter=_to_dynamic_threshold
    )
    seed: int | None = attrs.field(default=None, converter=_to_seed)  # item i drawn with seed + i
    generator: Generators = attrs.field(default=None, converter=_to_generator, hash=False)  # or per item
    latent_size: tuple[int, ...] | None = attrs.field(  # latent spatial size
        default=None, converter=_to_latent_size
    )
    noise: torch.Tensor | None = attrs.field(  # initial N(0, I) noise, scaled by sigmas[0]
        default=None, converter=_to_noise, eq=_BY_VALUE, hash=False
    )
    callback: Callable[[dict[str, Any]], None] | None = attrs.field(  # called with each step's dict
        default=None, converter=_to_callback
    )
    return_latents: bool = attrs.field(default=False, converter=_to_return_latents)  # skip decoding
    clamp: bool = attrs.field(default=True, converter=_to_clamp)  # decoded data clamped to the data range
    compile: bool = attrs.field(default=False, converter=_to_compile)  # torch.compile the denoiser

    def replace(self, **overrides: Any) -> SamplingOptions:
        """A copy with ``overrides`` applied (validated like the constructor); an unknown name
        is a ``TypeError`` naming it and the accepted options."""
        return resolve_sampling_options(self, overrides, caller="SamplingOptions.replace()")


#: The option names, in declaration order.
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in attrs.fields(SamplingOptions))


def resolve_sampling_options(
    options: SamplingOptions | None, overrides: Mapping[str, Any], *, caller: str = "sample()"
) -> SamplingOptions:
    """``options`` (default: ``SamplingOptions()``) with the keyword ``overrides`` applied.

    ``caller`` names the method in errors: an ``options`` that is not a
    :class:`SamplingOptions`, or an unknown keyword (with the closest option name and the
    accepted ones), is a ``TypeError``.
    """
    if options is not None and not isinstance(options, SamplingOptions):
        raise TypeError(
            f"{caller}: options must be a SamplingOptions, got {type(options).__name__}; pass "
            "a dict of options as keywords (**options) instead"
        )
    unknown = [name for name in overrides if name not in OPTION_NAMES]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"{caller} got unknown sampling option(s) {', '.join(hints)}; accepted: "
            f"{', '.join(sorted(OPTION_NAMES))}"
        )
    if options is None:
        return SamplingOptions(**overrides)
    return attrs.evolve(options, **overrides) if overrides else options


def lists_sampling_options(method: _Method) -> _Method:
    """Decorator: show the :class:`SamplingOptions` fields, with their defaults, as
    keyword-only parameters of ``method`` in place of its ``**overrides``, so ``help()`` and
    IDEs list them and callers that pass only the keywords a signature names
    (``inspect.signature``) reach every option."""
    signature = inspect.signature(method)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for name, f in attrs.fields_dict(SamplingOptions).items()
    ]
    method.__signature__ = signature.replace(parameters=[*kept, *options])  # type: ignore[attr-defined]
    return method

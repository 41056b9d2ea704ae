"""Named conformance checks, one set per component kind.

What scikit-learn's ``check_estimator`` is for estimators, this is for latentkit components:
every contract of :mod:`latentkit.interfaces` is one named function (for instance
:func:`check_denoiser_batch_independence`) that takes a component and either returns
(optionally a short note about how it ran, e.g. "checked in eval mode only"), raises
:class:`~latentkit.testing.results.NotApplicable` with the reason when the contract does not
apply to the component (not applicable is not a pass: it is reported as skipped), or raises
:class:`~latentkit.testing.results.ConformanceError` whose message names the check, the
contract and what was found.

Entry points:

* :func:`check_autoencoder`, :func:`check_denoiser`, :func:`check_conditioner`,
  :func:`check_sampler`, :func:`check_schedule`: run every check of a kind, raise on failure;
* :func:`iter_checks`: the ``(name, check)`` pairs that apply to a component;
* :func:`run_checks`: build registered components from their ``tiny_config`` and return one
  :class:`~latentkit.testing.results.CheckResult` per (component, layout, check), as printed
  by ``latentkit check``;
* :func:`parametrize_with_checks`: the same as a ``pytest.mark.parametrize`` decorator.

Checks never modify the component they are given: anything that changes state (train mode,
perturbed weights, new latent statistics, forced dropout) works on a ``copy.deepcopy``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import random
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentkit.composition import component_label
from latentkit.errors import LatentkitError, ShapeError
from latentkit.interfaces import Autoencoder, Conditioner, Denoiser, Sampler, Schedule
from latentkit.plugins import ComponentInfo, get_plugin_manager, list_components, stamp_identity
from latentkit.random import generators_from_seed
from latentkit.specs import LAYOUTS, Conditioning, ConditioningSpec, DataSpec, LatentSpec
from latentkit.testing.gaussian import GaussianData
from latentkit.testing.results import CheckResult, ConformanceError, NotApplicable

__all__ = [
    "CHECKED_KINDS",
    "Check",
    "check_autoencoder",
    "check_autoencoder_batch_independence",
    "check_autoencoder_declarations",
    "check_autoencoder_determinism",
    "check_autoencoder_gradients",
    "check_autoencoder_indivisible_size",
    "check_autoencoder_normalization",
    "check_autoencoder_output_shapes",
    "check_autoencoder_state_dict_round_trip",
    "check_autoencoder_wrong_channels",
    "check_autoencoder_wrong_rank",
    "check_conditioner",
    "check_conditioner_batch_independence",
    "check_conditioner_declarations",
    "check_conditioner_determinism",
    "check_conditioner_dropout",
    "check_conditioner_gradients",
    "check_conditioner_missing_key",
    "check_conditioner_null",
    "check_conditioner_output_spec",
    "check_conditioner_state_dict_round_trip",
    "check_conditioner_wrong_input_shape",
    "check_denoiser",
    "check_denoiser_batch_independence",
    "check_denoiser_conditioning_widths",
    "check_denoiser_declarations",
    "check_denoiser_determinism",
    "check_denoiser_gradients",
    "check_denoiser_inputs_used",
    "check_denoiser_output_shapes",
    "check_denoiser_state_dict_round_trip",
    "check_denoiser_wrong_channels",
    "check_denoiser_wrong_rank",
    "check_sampler",
    "check_sampler_callback",
    "check_sampler_declarations",
    "check_sampler_denoise_arguments",
    "check_sampler_determinism",
    "check_sampler_final_step",
    "check_sampler_gaussian_moments",
    "check_sampler_model_calls",
    "check_sampler_ode_solution",
    "check_sampler_order",
    "check_sampler_output_shapes",
    "check_sampler_per_item_generators",
    "check_schedule",
    "check_schedule_declarations",
    "check_schedule_sigmas",
    "check_schedule_t_round_trip",
    "check_schedule_training_sigmas",
    "check_schedule_training_sigmas_per_item",
    "component_kind",
    "declared_xfail",
    "iter_checks",
    "karras_sigmas",
    "parametrize_with_checks",
    "random_conditioning",
    "run_checks",
]

#: The kinds the kit checks (datasets have no conformance checks).
CHECKED_KINDS: tuple[str, ...] = ("autoencoder", "denoiser", "conditioner", "sampler", "schedule")

_ABCS: tuple[tuple[str, type], ...] = (
    ("autoencoder", Autoencoder),
    ("denoiser", Denoiser),
    ("conditioner", Conditioner),
    ("sampler", Sampler),
    ("schedule", Schedule),
)

#: ``check(component) -> note or None``; raises ConformanceError on a broken contract and
#: NotApplicable (with the reason) when the contract does not apply to the component.
Check = Callable[[Any], "str | None"]

_CHECKS: dict[str, list[tuple[str, Check]]] = {kind: [] for kind in CHECKED_KINDS}

# Tolerances. Batch independence and state_dict round trips compare float32 outputs that may
# come from different kernels (batch 1 against batch 3), so they get a little slack.
_ATOL, _RTOL = 1e-5, 1e-4


# =========================================================================== plumbing


def component_kind(component: Any) -> str:
    """The kind of ``component``, decided by which latentkit ABC it subclasses."""
    for kind, abc_type in _ABCS:
        if isinstance(component, abc_type):
            return kind
    raise TypeError(
        f"{type(component).__name__} is not a latentkit component: expected an instance of "
        f"{', '.join(t.__name__ for _, t in _ABCS)}"
    )


def _register(kind: str, contract: str) -> Callable[[Callable[[Any], str | None]], Check]:
    """Register a check for ``kind``; failures are re-raised as ConformanceError naming the
    check and ``contract``, NotApplicable passes through as it is."""

    def decorate(fn: Callable[[Any], str | None]) -> Check:
        name = fn.__name__

        def failure(component: Any, detail: str) -> ConformanceError:
            return ConformanceError(f"{name} failed for {component_label(component)}\n"
                                    f"  contract: {contract}\n  found: {detail}")

        @functools.wraps(fn)
        def check(component: Any) -> str | None:
            try:
                return fn(component)
            except NotApplicable:
                raise
            except ConformanceError as exc:
                raise failure(component, str(exc)) from None
            except Exception as exc:  # anything else is also a broken contract
                # Chained, so that pytest shows where in the component it was raised.
                raise failure(component, f"raised {type(exc).__name__}: {exc}") from exc

        check.contract = contract  # type: ignore[attr-defined]
        check.kind = kind  # type: ignore[attr-defined]
        _CHECKS[kind].append((name, check))
        return check

    return decorate


def _fail(message: str) -> ConformanceError:
    return ConformanceError(message)


def _gen(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def _randn(shape: Sequence[int], seed: int, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=dtype).to(device)


def _device_of(component: Any) -> torch.device:
    if isinstance(component, nn.Module):
        for p in component.parameters():
            return p.device
        for b in component.buffers():
            return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def _mode(component: Any, training: bool) -> Iterator[None]:
    """Put a module in train/eval mode for the block, restoring every submodule's flag."""
    if not isinstance(component, nn.Module):
        yield
        return
    previous = [(m, m.training) for m in component.modules()]
    component.train(training)
    try:
        yield
    finally:
        for m, flag in previous:
            m.training = flag


def _shape_strings(shape: Sequence[int]) -> list[str]:
    dims = [int(s) for s in shape]
    return [str(tuple(dims)), str(dims), str(torch.Size(dims)), "x".join(map(str, dims)),
            ", ".join(map(str, dims))]


def _expect_shape_error(call: Callable[[], Any], found_shape: Sequence[int], what: str,
                        also: Sequence[Sequence[int]] = ()) -> None:
    """``call`` must raise a ValueError (ShapeError is one) whose message names the shape
    (or one of the shapes in ``also``, e.g. the offending spatial size)."""
    try:
        call()
    except ValueError as exc:
        message = str(exc)
        names = [s for shape in (found_shape, *also) for s in _shape_strings(shape)]
        if not any(s in message for s in names):
            raise _fail(
                f"{what}: raised {type(exc).__name__} but its message does not name the found "
                f"shape {tuple(found_shape)}: {message!r}"
            ) from None
        return
    except Exception as exc:
        raise _fail(
            f"{what}: raised {type(exc).__name__} instead of a ShapeError/ValueError naming the "
            f"shape {tuple(found_shape)}: {exc}"
        ) from None
    raise _fail(f"{what}: accepted an input of shape {tuple(found_shape)} without an error")


def _close(a: Any, b: Any, what: str, atol: float = _ATOL, rtol: float = _RTOL) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise _fail(f"{what}: expected tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise _fail(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.allclose(a64, b64, atol=atol, rtol=rtol, equal_nan=True):
        diff = (a64 - b64).abs().nan_to_num(float("inf")).max().item()
        raise _fail(f"{what}: max abs difference {diff:.3g} (atol {atol:g}, rtol {rtol:g})")


def _close_cond(a: Conditioning, b: Conditioning, what: str, atol: float = _ATOL) -> None:
    if not isinstance(a, Conditioning) or not isinstance(b, Conditioning):
        raise _fail(f"{what}: expected Conditioning objects, got {type(a).__name__} and {type(b).__name__}")
    names_a, names_b = [n for n, _ in a.items()], [n for n, _ in b.items()]
    if names_a != names_b:
        raise _fail(f"{what}: entries differ, {names_a} vs {names_b}")
    for name, t in a.items():
        _close(t, getattr(b, name), f"{what} ({name})", atol=atol)


def _finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise _fail(f"{what}: contains NaN or inf")


# Factories of instances the kit built, so a state_dict round trip can build a genuinely
# fresh second instance (a deepcopy would also copy state kept outside the state_dict).
_FACTORIES: weakref.WeakKeyDictionary[Any, tuple[Callable[..., Any], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _remember_factory(component: Any, factory: Callable[..., Any], config: Mapping[str, Any]) -> None:
    with contextlib.suppress(TypeError):
        _FACTORIES[component] = (factory, dict(config))


def _second_instance(component: Any) -> tuple[Any, str]:
    """A second instance of the same configuration, and how it was made."""
    entry = None
    with contextlib.suppress(TypeError):
        entry = _FACTORIES.get(component)
    if entry is not None:
        factory, config = entry
        other = factory(**config)
        if type(other) is type(component):
            return other, "re-created from its factory"
    kind_name = getattr(component, "latentkit_name", None)
    stored = getattr(component, "latentkit_config", None)
    if kind_name is not None and isinstance(stored, Mapping):
        with contextlib.suppress(LatentkitError):
            other = get_plugin_manager().create(kind_name[0], kind_name[1], **stored)
            if type(other) is type(component):
                return other, "re-created with latentkit.create"
    return copy.deepcopy(component), "deep copy"


def _perturb(module: nn.Module, seed: int, scale: float = 0.05, buffers: bool = False) -> None:
    """Add small noise to every floating parameter (and persistent buffer) in place.

    Zero-initialised output layers (UNet's last conv, DiT's adaLN-Zero) block gradients and
    make outputs independent of inputs at initialisation; a slight perturbation lifts that.
    """
    g = _gen(seed)
    with torch.no_grad():
        tensors: list[torch.Tensor] = list(module.parameters())
        if buffers:
            keys = set(module.state_dict().keys())
            tensors += [b for n, b in module.named_buffers() if n in keys]
        for t in tensors:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.device, t.dtype) * scale)


def _state_dicts_equal(a: nn.Module, b: nn.Module, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if sorted(sa) != sorted(sb):
        raise _fail(f"{what}: state_dict keys differ: {sorted(set(sa) ^ set(sb))[:10]}")
    for key, value in sa.items():
        if isinstance(value, torch.Tensor):
            if not torch.equal(value.cpu(), sb[key].cpu()):
                raise _fail(f"{what}: state_dict entry {key!r} differs after load_state_dict")


def _round_trip(component: nn.Module, outputs: Callable[[Any], list[torch.Tensor]],
                prepare: Callable[[Any], None] | None = None) -> str:
    """Shared state_dict check: load the component's state into a perturbed second instance
    and require identical state and outputs. Returns a note saying how the second was made."""
    source = component
    if prepare is not None:
        source = copy.deepcopy(component)
        prepare(source)
    other, how = _second_instance(component)
    if not isinstance(other, nn.Module):
        raise _fail(f"second instance ({how}) is a {type(other).__name__}, not an nn.Module")
    other.to(_device_of(component))
    _perturb(other, seed=11, buffers=True)
    try:
        other.load_state_dict(source.state_dict(), strict=True)
    except Exception as exc:
        raise _fail(f"load_state_dict(strict=True) into a second instance ({how}) raised "
                    f"{type(exc).__name__}: {exc}") from None
    _state_dicts_equal(source, other, f"second instance ({how})")
    with _mode(source, False), _mode(other, False), torch.no_grad():
        for i, (a, b) in enumerate(zip(outputs(source), outputs(other))):
            _close(a, b, f"output {i} of the original vs the reloaded second instance ({how})",
                   atol=1e-6, rtol=1e-5)
    return f"second instance: {how}"


def _live(component: Any, seed: int = 2) -> Any:
    """A perturbed deep copy of a module (the component itself otherwise).

    With a zero-initialised output layer every output is 0, and a check comparing outputs
    (batch independence, determinism) would pass whatever the network does."""
    if not isinstance(component, nn.Module) or not any(True for _ in component.parameters()):
        return component
    live = copy.deepcopy(component)
    _perturb(live, seed=seed)
    return live


def _gradient_report(module: nn.Module, loss: torch.Tensor) -> None:
    """Back-propagate ``loss`` and fail naming the trainable parameters that got no gradient."""
    if not loss.requires_grad:
        raise _fail("the output does not require grad although the component has trainable parameters")
    loss.backward()
    none, zero, bad = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            none.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            bad.append(name)
        elif not bool((p.grad != 0).any()):
            zero.append(name)
    problems = []
    if none:
        problems.append(f"no gradient reached {len(none)} parameter(s): {none[:8]}")
    if zero:
        problems.append(f"an all-zero gradient for {len(zero)} parameter(s): {zero[:8]}")
    if bad:
        problems.append(f"non-finite gradients for {bad[:8]}")
    if problems:
        raise _fail("; ".join(problems))


def _trainable(module: Any) -> bool:
    return isinstance(module, nn.Module) and any(p.requires_grad for p in module.parameters())


def _train_mode_deterministic(run: Callable[[], list[torch.Tensor]]) -> bool:
    torch.manual_seed(0)
    first = run()
    torch.manual_seed(0)
    second = run()
    return all(torch.equal(a, b) for a, b in zip(first, second))


# =========================================================================== sizes & inputs


def _sizes(seed: int, ndim: int, multiples: Sequence[int], count: int = 2, min_size: int = 1) -> list[tuple[int, ...]]:
    """``count`` seeded random spatial sizes, each axis a multiple of its factor, kept tiny
    (at most 16 per axis in 1-D/2-D and 8 in 3-D, or the factor itself when larger), with
    different sizes per axis where possible so that swapped axes are caught."""
    rng = random.Random(seed)
    cap = 16 if ndim <= 2 else 8
    out: list[tuple[int, ...]] = []
    for _ in range(count):
        size = []
        for m in multiples:
            k_min = max(1, math.ceil(min_size / m))
            k_max = max(k_min, cap // m)
            size.append(m * rng.randint(k_min, k_max))
        out.append(tuple(size))
    return out


def karras_sigmas(steps: int, sigma_min: float = 0.02, sigma_max: float = 20.0, rho: float = 7.0,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Karras et al. 2022 noise levels (Eq. 5): ``steps`` levels from ``sigma_max`` down to
    ``sigma_min`` spaced uniformly in ``sigma^(1/rho)``, followed by 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)


def random_conditioning(spec: ConditioningSpec, batch_size: int, spatial: Sequence[int], seed: int,
                        tokens: int | None = None, device: torch.device | str = "cpu") -> Conditioning:
    """A Conditioning matching ``spec`` with standard normal entries (``tokens`` crossattn
    tokens, drawn from 1..8 when not given)."""
    rng = random.Random(seed)
    entries: dict[str, torch.Tensor] = {}
    if spec.crossattn_dim is not None:
        length = tokens if tokens is not None else rng.randint(1, 8)
        entries["crossattn"] = _randn((batch_size, length, spec.crossattn_dim), seed + 1, device)
    if spec.concat_channels:
        entries["concat"] = _randn((batch_size, spec.concat_channels, *spatial), seed + 2, device)
    if spec.vector_dim is not None:
        entries["vector"] = _randn((batch_size, spec.vector_dim), seed + 3, device)
    return Conditioning(**entries)


def _denoiser_layouts(den: Denoiser) -> tuple[str, ...]:
    layouts = tuple(getattr(den, "layouts", ()) or type(den).supported_layouts)
    return layouts


def _denoiser_case(den: Denoiser, layout: str, spatial: Sequence[int], batch: int, seed: int,
                   tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    device = _device_of(den)
    x = _randn((batch, den.out_channels, *spatial), seed, device)
    t = (torch.rand(batch, generator=_gen(seed + 7)) * 1000.0).to(device)
    cond = random_conditioning(den.conditioning_spec, batch, spatial, seed + 13, tokens, device)
    return x, t, cond


def _denoiser_multiples(den: Denoiser, layout: str) -> tuple[int, ...]:
    """``den.spatial_multiples(layout)``, or all 1 when the declaration is unusable (which
    check_denoiser_declarations reports, so that the other checks still run)."""
    try:
        return tuple(den.spatial_multiples(layout))
    except (TypeError, ValueError):
        return (1,) * LAYOUTS[layout]


# =========================================================================== denoisers


@_register("denoiser", "a denoiser declares layouts it can be built for, in_channels = "
           "out_channels + concat channels, a ConditioningSpec and a size_multiple that is one "
           "positive int or one positive int per spatial axis")
def check_denoiser_declarations(den: Denoiser) -> str | None:
    """Declared attributes are consistent with each other and with ``supported_layouts``."""
    layouts = _denoiser_layouts(den)
    if not layouts or any(layout not in LAYOUTS for layout in layouts):
        raise _fail(f"layouts {layouts!r} must be a non-empty subset of {sorted(LAYOUTS)}")
    if len({LAYOUTS[layout] for layout in layouts}) != 1:
        raise _fail(f"layouts {layouts!r} mix spatial ranks; an instance runs on one rank")
    supported = tuple(type(den).supported_layouts)
    if not set(layouts) & set(supported):
        raise _fail(f"instance layouts {layouts} share nothing with the class's supported_layouts {supported}")
    spec = den.conditioning_spec
    if not isinstance(spec, ConditioningSpec):
        raise _fail(f"conditioning_spec is a {type(spec).__name__}, not a ConditioningSpec")
    if den.in_channels != den.out_channels + spec.concat_channels:
        raise _fail(f"in_channels {den.in_channels} != out_channels {den.out_channels} + concat "
                    f"channels {spec.concat_channels}")
    m = getattr(den, "size_multiple", 1)
    for layout in layouts:
        try:
            den.spatial_multiples(layout)
        except (TypeError, ValueError) as exc:
            raise _fail(f"size_multiple {m!r} is not one positive int or {LAYOUTS[layout]} positive "
                        f"ints (one per axis of {layout}): {exc}") from None
    return None


@_register("denoiser", "forward(x, t, cond) returns a finite tensor shaped and typed like x for "
           "any batch size, any valid spatial size (multiple of size_multiple) and any "
           "cross-attention token count, in every declared layout")
def check_denoiser_output_shapes(den: Denoiser) -> str | None:
    """Output shape and dtype for seeded random valid sizes in every layout."""
    with _mode(den, False), torch.no_grad():
        for li, layout in enumerate(_denoiser_layouts(den)):
            ndim = LAYOUTS[layout]
            for si, spatial in enumerate(_sizes(100 + li, ndim, _denoiser_multiples(den, layout))):
                batch = 1 + (li + si) % 3
                x, t, cond = _denoiser_case(den, layout, spatial, batch, seed=li * 10 + si)
                out = den(x, t, cond)
                what = f"layout {layout}, x {tuple(x.shape)}, cond {cond.spec}"
                if not isinstance(out, torch.Tensor):
                    raise _fail(f"{what}: returned a {type(out).__name__}, not a Tensor")
                if out.shape != x.shape or out.dtype != x.dtype:
                    raise _fail(f"{what}: output {tuple(out.shape)} {out.dtype}, expected "
                                f"{tuple(x.shape)} {x.dtype}")
                _finite(out, what)
    return None


@_register("denoiser", "item i of a batch gives the same output as item i alone (no batch "
           "statistics such as BatchNorm's, no mixing across the batch), in eval and in train mode")
def check_denoiser_batch_independence(den: Denoiser) -> str | None:
    """Batch of 3 with different x, t and conditioning per item against each item alone."""
    layout = _denoiser_layouts(den)[0]
    spatial = _sizes(200, LAYOUTS[layout], _denoiser_multiples(den, layout), count=1, min_size=2)[0]
    x, t, cond = _denoiser_case(den, layout, spatial, 3, seed=21)
    den = _live(den)

    def run(model: nn.Module) -> list[torch.Tensor]:
        return [model(x, t, cond)] + [model(x[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(3)]

    def compare(outs: list[torch.Tensor], mode: str) -> None:
        for i in range(3):
            _close(outs[0][i : i + 1], outs[1 + i], f"{mode} mode, item {i} in a batch of 3 vs alone")

    with _mode(den, False), torch.no_grad():
        compare(run(den), "eval")
    trained = copy.deepcopy(den)
    with _mode(trained, True), torch.no_grad():
        if not _train_mode_deterministic(lambda: [trained(x, t, cond)]):
            return "train mode is not deterministic (dropout); checked in eval mode only"
        compare(run(trained), "train")
    return None


@_register("denoiser", "the same input gives the same output (no hidden randomness in eval mode)")
def check_denoiser_determinism(den: Denoiser) -> str | None:
    """Two eval-mode calls on the same input agree."""
    layout = _denoiser_layouts(den)[0]
    spatial = _sizes(300, LAYOUTS[layout], _denoiser_multiples(den, layout), count=1)[0]
    x, t, cond = _denoiser_case(den, layout, spatial, 2, seed=31)
    den = _live(den)
    with _mode(den, False), torch.no_grad():
        torch.manual_seed(1)
        a = den(x, t, cond)
        torch.manual_seed(2)
        b = den(x, t, cond)
    _close(a, b, "two calls on the same input", atol=1e-6, rtol=1e-6)
    return None


@_register("denoiser", "load_state_dict(state_dict()) into a second instance of the same "
           "configuration reproduces every entry and the outputs")
def check_denoiser_state_dict_round_trip(den: Denoiser) -> str | None:
    """state_dict round trip into a perturbed second instance."""
    layout = _denoiser_layouts(den)[0]
    spatial = _sizes(400, LAYOUTS[layout], _denoiser_multiples(den, layout), count=1)[0]
    x, t, cond = _denoiser_case(den, layout, spatial, 2, seed=41)
    # Perturb the source too, so zero-initialised layers do not hide a missing entry.
    return _round_trip(den, lambda model: [model(x, t, cond)], prepare=lambda s: _perturb(s, seed=5))


@_register("denoiser", "a gradient reaches every trainable parameter (after a slight "
           "perturbation that lifts zero initialisation)")
def check_denoiser_gradients(den: Denoiser) -> str | None:
    """Backward from a randomly weighted sum of the output reaches every parameter."""
    if not _trainable(den):
        raise NotApplicable("no trainable parameters")
    model = copy.deepcopy(den)
    _perturb(model, seed=3)
    model.zero_grad(set_to_none=True)
    layout = _denoiser_layouts(den)[0]
    spatial = _sizes(500, LAYOUTS[layout], _denoiser_multiples(den, layout), count=1, min_size=2)[0]
    x, t, cond = _denoiser_case(model, layout, spatial, 2, seed=51)
    with _mode(model, True):
        out = model(x, t, cond)
        weights = _randn(out.shape, 52, out.device, out.dtype)
        _gradient_report(model, (out * weights).sum())
    return None


def _wrong_rank_shape(layouts: Sequence[str], channels: int, m: int | Sequence[int]) -> tuple[int, ...]:
    """A (B, C, *spatial) shape of a rank no layout has, each size a multiple of ``m`` (of
    every factor when ``m`` has one per axis), so that only the rank is wrong."""
    ranks = {LAYOUTS[layout] + 2 for layout in layouts}
    rank = max(ranks) + 1 if max(ranks) + 1 <= 6 else min(ranks) - 1
    side = m if isinstance(m, int) else math.lcm(*m)
    return (2, channels, *([max(side, 2)] * (rank - 2)))


@_register("denoiser", "x with the wrong channel count raises ShapeError (a ValueError) "
           "naming the found shape")
def check_denoiser_wrong_channels(den: Denoiser) -> str | None:
    """out_channels + 1 channels are refused with a clear message."""
    layout = _denoiser_layouts(den)[0]
    spatial = tuple(max(m, 2) for m in _denoiser_multiples(den, layout))
    x, t, cond = _denoiser_case(den, layout, spatial, 2, seed=61)
    bad = _randn((2, den.out_channels + 1, *spatial), 62, x.device)
    with _mode(den, False), torch.no_grad():
        _expect_shape_error(lambda: den(bad, t, cond), bad.shape, "x with out_channels + 1 channels")
    return None


@_register("denoiser", "x of a rank that no declared layout has raises ShapeError (a ValueError) "
           "naming the found shape")
def check_denoiser_wrong_rank(den: Denoiser) -> str | None:
    """A tensor with one spatial axis too many (or too few) is refused."""
    layouts = _denoiser_layouts(den)
    shape = _wrong_rank_shape(layouts, den.out_channels, _denoiser_multiples(den, layouts[0]))
    x = _randn(shape, 71, _device_of(den))
    t = torch.full((2,), 10.0, device=x.device)
    # Spatial-free entries only: a concat entry would have to guess the wrong spatial rank.
    spec = den.conditioning_spec
    cond = random_conditioning(ConditioningSpec(crossattn_dim=spec.crossattn_dim, vector_dim=spec.vector_dim),
                               2, (), 72, device=x.device)
    if spec.concat_channels:
        cond = Conditioning(crossattn=cond.crossattn, vector=cond.vector,
                            concat=_randn((2, spec.concat_channels, *shape[2:]), 73, x.device))
    with _mode(den, False), torch.no_grad():
        _expect_shape_error(lambda: den(x, t, cond), x.shape, "x of the wrong rank")
    return None


@_register("denoiser", "conditioning whose widths differ from conditioning_spec (or an entry "
           "the denoiser does not take) raises ShapeError (a ValueError)")
def check_denoiser_conditioning_widths(den: Denoiser) -> str | None:
    """Each conditioning entry with a wrong width (or present where none is accepted)."""
    layout = _denoiser_layouts(den)[0]
    spatial = tuple(max(m, 2) for m in _denoiser_multiples(den, layout))
    x, t, good = _denoiser_case(den, layout, spatial, 2, seed=81, tokens=3)
    spec = den.conditioning_spec
    device = x.device
    cases = {
        "crossattn": _randn((2, 3, (spec.crossattn_dim or 7) + 1), 82, device),
        "concat": _randn((2, spec.concat_channels + 1, *spatial), 83, device),
        "vector": _randn((2, (spec.vector_dim or 7) + 1), 84, device),
    }
    with _mode(den, False), torch.no_grad():
        for name, wrong in cases.items():
            entries = {n: v for n, v in good.items()}
            entries[name] = wrong
            cond = Conditioning(**entries)
            what = f"{name} of shape {tuple(wrong.shape)} for {spec}"
            try:
                den(x, t, cond)
            except ValueError:
                continue
            except Exception as exc:
                raise _fail(f"{what}: raised {type(exc).__name__} instead of ShapeError: {exc}") from None
            raise _fail(f"{what}: accepted without an error")
    return None


@_register("denoiser", "the output depends on x, on t and on every conditioning entry the "
           "denoiser declares (after a slight perturbation that lifts zero initialisation)")
def check_denoiser_inputs_used(den: Denoiser) -> str | None:
    """Changing t, or any one conditioning entry, changes the output."""
    model = copy.deepcopy(den)
    _perturb(model, seed=4)
    layout = _denoiser_layouts(den)[0]
    spatial = _sizes(600, LAYOUTS[layout], _denoiser_multiples(den, layout), count=1, min_size=2)[0]
    x, t, cond = _denoiser_case(model, layout, spatial, 2, seed=91, tokens=4)
    other = random_conditioning(den.conditioning_spec, 2, spatial, 92, tokens=4, device=x.device)
    with _mode(model, False), torch.no_grad():
        base = model(x, t, cond)
        variants = {"x": model(x + 1.0, t, cond), "t": model(x, t * 0.5 + 3.0, cond)}
        for name, _ in cond.items():
            entries = {n: v for n, v in cond.items()}
            entries[name] = getattr(other, name)
            variants[f"cond.{name}"] = model(x, t, Conditioning(**entries))
    unused = [n for n, out in variants.items() if torch.allclose(out, base, atol=1e-7, rtol=0)]
    if unused:
        raise _fail(f"the output does not change when {unused} change")
    return None


# =========================================================================== autoencoders


def _ae_spec(ae: Autoencoder) -> LatentSpec:
    return ae._latent_spec if hasattr(ae, "_latent_spec") else ae.latent_spec


def _ae_sizes(ae: Autoencoder, seed: int, count: int = 2, min_size: int = 1) -> list[tuple[int, ...]]:
    """``count`` seeded valid data sizes, each at least ``min_size`` per axis.

    Latent sizes are drawn (as tiny as :func:`_sizes` keeps data of plain factors) and mapped
    through ``latent_spec.data_size``, so a spec subclass with its own size rule (a causal
    video time axis with ``T = 1 + f k`` frames, say) decides which data sizes are valid.
    A latent axis whose data size falls below ``min_size`` grows by one until it does not.
    """
    spec = _ae_spec(ae)
    factors = spec.downsampling
    out: list[tuple[int, ...]] = []
    for drawn in _sizes(seed, spec.spatial_ndim, factors, count=count, min_size=min_size):
        latent = [s // f for s, f in zip(drawn, factors)]  # the draws of _sizes, in latent units
        data = _data_size(spec, latent)
        grown = 0
        while any(d < min_size for d in data):
            if grown == 64:
                raise _fail(f"{type(spec).__name__}.data_size({tuple(latent)}) = {data}: data "
                            f"sizes do not grow to {min_size} per axis with the latent size")
            latent = [k + (d < min_size) for k, d in zip(latent, data)]
            data = _data_size(spec, latent)
            grown += 1
        out.append(data)
    return out


def _data_size(spec: LatentSpec, latent: Sequence[int]) -> tuple[int, ...]:
    """``spec.data_size(latent)``, checked to be a valid size that encodes back to ``latent``."""
    latent = tuple(latent)
    data = tuple(int(s) for s in spec.data_size(latent))
    what = f"{type(spec).__name__}.data_size({latent}) = {data}"
    if len(data) != len(latent) or any(s < 1 for s in data):
        raise _fail(f"{what}, expected {len(latent)} positive sizes")
    try:
        back = tuple(spec.latent_size(data))
    except ValueError as exc:
        raise _fail(f"{what}, which latent_size refuses: {exc}") from None
    if back != latent:
        raise _fail(f"{what}, but latent_size({data}) = {back}: data_size must invert latent_size")
    return data


def _ae_data(ae: Autoencoder, batch: int, spatial: Sequence[int], seed: int) -> torch.Tensor:
    lo, hi = ae.data_spec.value_range
    u = torch.rand((batch, ae.data_spec.channels, *spatial), generator=_gen(seed))
    return (lo + (hi - lo) * u).to(_device_of(ae))


def _ae_latent(ae: Autoencoder, batch: int, data_spatial: Sequence[int], seed: int) -> torch.Tensor:
    spec = ae.latent_spec
    return _randn(spec.shape(batch, spec.latent_size(data_spatial)), seed, _device_of(ae))


@_register("autoencoder", "data_spec and latent_spec are specs of the same layout, the layout "
           "is in supported_layouts, the latent factors are buffers, and latent_spec.data_size "
           "gives valid data sizes that latent_spec.latent_size maps back")
def check_autoencoder_declarations(ae: Autoencoder) -> str | None:
    """Specs, layout, the normalisation buffers and the spec's size rule."""
    if not isinstance(ae.data_spec, DataSpec) or not isinstance(ae.latent_spec, LatentSpec):
        raise _fail(f"data_spec/latent_spec are {type(ae.data_spec).__name__}/"
                    f"{type(ae.latent_spec).__name__}, expected DataSpec/LatentSpec")
    if ae.data_spec.layout != ae.latent_spec.layout:
        raise _fail(f"data layout {ae.data_spec.layout!r} != latent layout {ae.latent_spec.layout!r}")
    if ae.data_spec.layout not in type(ae).supported_layouts:
        raise _fail(f"layout {ae.data_spec.layout!r} not in supported_layouts {type(ae).supported_layouts}")
    keys = set(ae.state_dict())
    missing = [k for k in ("scaling_factor", "shift_factor") if k not in keys]
    if missing:
        raise _fail(f"{missing} missing from state_dict (they must be buffers)")
    _ae_sizes(ae, 100, count=3)  # raises naming data_size and latent_size when they disagree
    return None


@_register("autoencoder", "encode(x) returns a LatentDistribution whose mode() and sample() "
           "are latent_spec-shaped (spatial size latent_spec.latent_size(data size)), and "
           "decode(encode(x).mode()) is shaped and typed like x, for random valid sizes")
def check_autoencoder_output_shapes(ae: Autoencoder) -> str | None:
    """Encode/decode shapes and dtypes."""
    spec = ae.latent_spec
    with _mode(ae, False), torch.no_grad():
        for i, spatial in enumerate(_ae_sizes(ae, 110)):
            batch = 1 + i
            x = _ae_data(ae, batch, spatial, seed=i)
            dist = ae.encode(x)
            if not (hasattr(dist, "mode") and hasattr(dist, "sample")):
                raise _fail(f"encode returned a {type(dist).__name__}, not a LatentDistribution")
            expected = spec.shape(batch, spec.latent_size(spatial))
            for name, z in (("mode()", dist.mode()), ("sample()", dist.sample(_gen(i)))):
                if tuple(z.shape) != expected or z.dtype != x.dtype:
                    raise _fail(f"encode(x {tuple(x.shape)}).{name}: {tuple(z.shape)} {z.dtype}, "
                                f"expected {expected} {x.dtype}")
                _finite(z, f"encode(x {tuple(x.shape)}).{name}")
            y = ae.decode(dist.mode())
            if y.shape != x.shape or y.dtype != x.dtype:
                raise _fail(f"decode(encode(x).mode()) for x {tuple(x.shape)}: {tuple(y.shape)} "
                            f"{y.dtype}, expected {tuple(x.shape)} {x.dtype}")
            _finite(y, "decode output")
    return None


@_register("autoencoder", "encode and decode treat batch items independently (eval and train mode)")
def check_autoencoder_batch_independence(ae: Autoencoder) -> str | None:
    """Batch of 3 against each item alone, for encode(x).mode() and decode(z)."""
    spatial = _ae_sizes(ae, 120, count=1, min_size=2)[0]
    x = _ae_data(ae, 3, spatial, seed=121)
    z = _ae_latent(ae, 3, spatial, seed=122)
    ae = _live(ae)

    def run(model: Autoencoder) -> list[torch.Tensor]:
        outs = [model.encode(x).mode(), model.decode(z)]
        for i in range(3):
            outs += [model.encode(x[i : i + 1]).mode(), model.decode(z[i : i + 1])]
        return outs

    def compare(outs: list[torch.Tensor], mode: str) -> None:
        for i in range(3):
            _close(outs[0][i : i + 1], outs[2 + 2 * i], f"{mode} mode, encode: item {i} in a batch vs alone")
            _close(outs[1][i : i + 1], outs[3 + 2 * i], f"{mode} mode, decode: item {i} in a batch vs alone")

    with _mode(ae, False), torch.no_grad():
        compare(run(ae), "eval")
    trained = copy.deepcopy(ae)
    with _mode(trained, True), torch.no_grad():
        if not _train_mode_deterministic(lambda: [trained.encode(x).mode(), trained.decode(z)]):
            return "train mode is not deterministic (dropout); checked in eval mode only"
        compare(run(trained), "train")
    return None


@_register("autoencoder", "encode/decode are deterministic, encode(x).sample(generator) depends "
           "only on the generator, and with one generator per item item i's sample does not "
           "depend on the batch")
def check_autoencoder_determinism(ae: Autoencoder) -> str | None:
    """Seeded posterior samples and per-item generators."""
    spatial = _ae_sizes(ae, 130, count=1)[0]
    x = _ae_data(ae, 3, spatial, seed=131)
    z = _ae_latent(ae, 3, spatial, seed=132)
    ae = _live(ae)
    with _mode(ae, False), torch.no_grad():
        _close(ae.decode(z), ae.decode(z), "decode twice", atol=1e-6, rtol=1e-6)
        _close(ae.encode(x).mode(), ae.encode(x).mode(), "encode(x).mode() twice", atol=1e-6, rtol=1e-6)
        _close(ae.encode(x).sample(_gen(5)), ae.encode(x).sample(_gen(5)),
               "encode(x).sample(generator) with equally seeded generators", atol=1e-6, rtol=1e-6)
        batch = ae.encode(x).sample(generators_from_seed(7, 3))
        for i in range(3):
            alone = ae.encode(x[i : i + 1]).sample([generators_from_seed(7, 3)[i]])
            _close(batch[i : i + 1], alone, f"sample with per-item generators: item {i} in a batch vs alone")
    return None


@_register("autoencoder", "normalize(z) = (z - shift_factor) * scaling_factor, denormalize "
           "inverts it, latent_spec reports the factors, and the *_normalized helpers use them")
def check_autoencoder_normalization(ae: Autoencoder) -> str | None:
    """Latent normalisation with the current and with new statistics."""
    spatial = _ae_sizes(ae, 140, count=1)[0]
    z = _ae_latent(ae, 2, spatial, seed=141)
    x = _ae_data(ae, 2, spatial, seed=142)
    with _mode(ae, False), torch.no_grad():
        _close(ae.denormalize(ae.normalize(z)), z, "denormalize(normalize(z)) with the current factors")
    other = copy.deepcopy(ae)
    other.set_latent_statistics(0.37, -0.21)
    spec = other.latent_spec
    if not (math.isclose(spec.scaling_factor, 0.37, rel_tol=1e-6) and math.isclose(spec.shift_factor, -0.21, rel_tol=1e-6)):
        raise _fail(f"after set_latent_statistics(0.37, -0.21) latent_spec has scaling_factor "
                    f"{spec.scaling_factor}, shift_factor {spec.shift_factor}")
    with _mode(other, False), torch.no_grad():
        _close(other.normalize(z), (z + 0.21) * 0.37, "normalize(z) against (z - shift) * scale")
        _close(other.denormalize(other.normalize(z)), z, "denormalize(normalize(z))")
        _close(other.encode_normalized(x, sample=False), other.normalize(other.encode(x).mode()),
               "encode_normalized(x, sample=False) against normalize(encode(x).mode())")
        _close(other.decode_normalized(z), other.decode(other.denormalize(z)),
               "decode_normalized(z) against decode(denormalize(z))")
    return None


@_register("autoencoder", "load_state_dict(state_dict()) into a second instance reproduces "
           "every entry, the outputs, and the latent scaling/shift factors")
def check_autoencoder_state_dict_round_trip(ae: Autoencoder) -> str | None:
    """Round trip including fitted latent statistics."""
    spatial = _ae_sizes(ae, 150, count=1)[0]
    x = _ae_data(ae, 2, spatial, seed=151)
    z = _ae_latent(ae, 2, spatial, seed=152)

    def prepare(source: Any) -> None:
        _perturb(source, seed=6)
        source.set_latent_statistics(0.37, -0.21)

    def outputs(model: Any) -> list[torch.Tensor]:
        spec = model.latent_spec
        factors = torch.tensor([spec.scaling_factor, spec.shift_factor], dtype=torch.float64)
        return [model.encode(x).mode(), model.decode(z), model.normalize(z), factors]

    return _round_trip(ae, outputs, prepare=prepare)


@_register("autoencoder", "a gradient reaches every trainable parameter from the training "
           "forward: reconstruct(x) (reconstruction + regularization) where the autoencoder has "
           "one, else decode(encode(x).sample()) and the posterior's kl()")
def check_autoencoder_gradients(ae: Autoencoder) -> str | None:
    """Backward through the training forward (or encode, sample and decode)."""
    if not _trainable(ae):
        raise NotApplicable("no trainable parameters")
    model = copy.deepcopy(ae)
    _perturb(model, seed=7)
    model.zero_grad(set_to_none=True)
    spatial = _ae_sizes(ae, 160, count=1, min_size=2)[0]
    x = _ae_data(model, 2, spatial, seed=161)
    with _mode(model, True):
        reconstruct = getattr(model, "reconstruct", None)
        if callable(reconstruct):
            # The autoencoder's own training forward: codebooks and the like are trained
            # through its regularisation term, not through decode(encode(x)).
            out = reconstruct(x, generator=_gen(162))
            y = out.reconstruction
            reg = getattr(out, "regularization", None)
            loss = (y * _randn(y.shape, 163, y.device, y.dtype)).sum()
            if isinstance(reg, torch.Tensor):
                loss = loss + reg.sum()
        else:
            dist = model.encode(x)
            y = model.decode(dist.sample(_gen(162)))
            loss = (y * _randn(y.shape, 163, y.device, y.dtype)).sum() + dist.kl().sum()
        _gradient_report(model, loss)
    return None


@_register("autoencoder", "encode/decode refuse a wrong channel count with ShapeError "
           "(a ValueError) naming the found shape")
def check_autoencoder_wrong_channels(ae: Autoencoder) -> str | None:
    """data channels + 1 into encode, latent channels + 1 into decode."""
    spatial = _ae_sizes(ae, 170, count=1)[0]
    lat = ae.latent_spec.latent_size(spatial)
    device = _device_of(ae)
    x = _randn((2, ae.data_spec.channels + 1, *spatial), 171, device)
    z = _randn((2, ae.latent_spec.channels + 1, *lat), 172, device)
    with _mode(ae, False), torch.no_grad():
        _expect_shape_error(lambda: ae.encode(x), x.shape, "encode with data channels + 1")
        _expect_shape_error(lambda: ae.decode(z), z.shape, "decode with latent channels + 1")
    return None


@_register("autoencoder", "encode/decode refuse a tensor of the wrong rank with ShapeError "
           "(a ValueError) naming the found shape")
def check_autoencoder_wrong_rank(ae: Autoencoder) -> str | None:
    """One spatial axis too many (a valid data size plus one axis, so only the rank is wrong)."""
    spec = ae.latent_spec
    spatial = _ae_sizes(ae, 180, count=1)[0]
    x = _randn((2, ae.data_spec.channels, *spatial, spatial[-1]), 181, _device_of(ae))
    z = _randn(_wrong_rank_shape((spec.layout,), spec.channels, 2), 182, _device_of(ae))
    with _mode(ae, False), torch.no_grad():
        _expect_shape_error(lambda: ae.encode(x), x.shape, "encode with the wrong rank")
        _expect_shape_error(lambda: ae.decode(z), z.shape, "decode with the wrong rank")
    return None


@_register("autoencoder", "encode refuses a spatial size that latent_spec.latent_size refuses "
           "(for plain specs: not divisible by the downsampling factors) with ShapeError "
           "(a ValueError) naming the found shape")
def check_autoencoder_indivisible_size(ae: Autoencoder) -> str | None:
    """A valid data size, off by a few pixels on one axis, that the spec refuses."""
    spec = _ae_spec(ae)
    valid = _ae_sizes(ae, 190, count=1)[0]
    spatial = _invalid_data_size(spec, valid)
    if spatial is None:
        if all(f == 1 for f in spec.downsampling):
            raise NotApplicable("no downsampling: every size is valid")
        raise NotApplicable(f"{type(spec).__name__}.latent_size accepts every size tried ({valid} "
                            "plus less than one factor on one axis): no invalid size to refuse")
    x = _randn((2, ae.data_spec.channels, *spatial), 191, _device_of(ae))
    with _mode(ae, False), torch.no_grad():
        _expect_shape_error(lambda: ae.encode(x), x.shape,
                            f"encode with spatial size {spatial}, which {type(spec).__name__}"
                            f".latent_size refuses (factors {spec.downsampling})", also=[spatial])
    return None


def _invalid_data_size(spec: LatentSpec, valid: Sequence[int]) -> tuple[int, ...] | None:
    """The first size ``spec.latent_size`` refuses with ShapeError among ``valid`` plus
    ``1 .. f - 1`` (at least 1) on one axis of factor ``f``, axes in order; ``None`` when it
    accepts them all."""
    for axis, f in enumerate(spec.downsampling):
        for offset in range(1, max(f, 2)):
            size = tuple(s + offset * (i == axis) for i, s in enumerate(valid))
            try:
                spec.latent_size(size)
            except ShapeError:
                return size
    return None


# =========================================================================== conditioners


def _cond_latent_sizes(cond: Conditioner, seed: int, count: int = 2) -> list[tuple[int, ...]]:
    """Latent sizes for ``example_batch``: the rank of the conditioner's ``layout`` attribute
    (2-D when it has none) and multiples of its ``size_multiple`` attribute, if declared."""
    layout = getattr(cond, "layout", None) or "CHW"
    ndim = LAYOUTS.get(layout, 2)
    m = getattr(cond, "size_multiple", 1) or 1
    multiples = (int(m),) * ndim if isinstance(m, int) else tuple(int(v) for v in m)
    return _sizes(seed, ndim, multiples, count=count, min_size=2)


def _example(cond: Conditioner, batch: int, latent_size: Sequence[int], seed: int) -> dict[str, Any]:
    """``cond.example_batch`` with its tensors moved to the conditioner's device."""
    device = _device_of(cond)
    example = cond.example_batch(batch, latent_size=tuple(latent_size), generator=_gen(seed))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in example.items()}


def _slice_batch(batch: Mapping[str, Any], i: int, size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == size:
            out[key] = value[i : i + 1]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            out[key] = type(value)(value[i : i + 1])
        else:
            out[key] = value
    return out


def _check_conditioning(out: Any, cond: Conditioner, batch: int, latent_size: Sequence[int], what: str) -> Conditioning:
    if not isinstance(out, Conditioning):
        raise _fail(f"{what}: returned a {type(out).__name__}, not a Conditioning")
    if out.spec != cond.output_spec:
        raise _fail(f"{what}: produced {out.spec}, but output_spec is {cond.output_spec}")
    if not cond.output_spec.is_empty and out.batch_size != batch:
        raise _fail(f"{what}: batch size {out.batch_size}, expected {batch}")
    if out.concat is not None and tuple(out.concat.shape[2:]) != tuple(latent_size):
        raise _fail(f"{what}: concat spatial size {tuple(out.concat.shape[2:])}, but "
                    f"example_batch was asked for latent_size {tuple(latent_size)}")
    for name, t in out.items():
        if not t.is_floating_point():
            raise _fail(f"{what}: entry {name} has dtype {t.dtype}, expected floating point")
        _finite(t, f"{what}: entry {name}")
    return out


@_register("conditioner", "output_spec is a ConditioningSpec, input_keys a tuple of str, "
           "dropout in [0, 1], example_batch provides every input key")
def check_conditioner_declarations(cond: Conditioner) -> str | None:
    """Declared attributes and the example batch's keys."""
    if not isinstance(cond.output_spec, ConditioningSpec):
        raise _fail(f"output_spec is a {type(cond.output_spec).__name__}, not a ConditioningSpec")
    if not all(isinstance(k, str) for k in cond.input_keys):
        raise _fail(f"input_keys must be strings, got {cond.input_keys!r}")
    if not 0.0 <= float(cond.dropout) <= 1.0:
        raise _fail(f"dropout {cond.dropout} outside [0, 1]")
    batch = _example(cond, 2, _cond_latent_sizes(cond, 1, 1)[0], seed=1)
    missing = [k for k in cond.input_keys if k not in batch]
    if missing:
        raise _fail(f"example_batch(2) lacks input keys {missing} (has {sorted(batch)})")
    return None


@_register("conditioner", "forward(example_batch(B, latent_size=S)) returns a Conditioning that "
           "matches output_spec, with batch size B, concat entries of spatial size S, finite "
           "floating-point tensors")
def check_conditioner_output_spec(cond: Conditioner) -> str | None:
    """Output against output_spec for several batch and latent sizes."""
    with _mode(cond, False), torch.no_grad():
        for i, size in enumerate(_cond_latent_sizes(cond, 210)):
            batch = 1 + 2 * i
            out = cond(_example(cond, batch, size, seed=i))
            _check_conditioning(out, cond, batch, size, f"forward(example_batch({batch}, latent_size={size}))")
    return None


@_register("conditioner", "null(batch) returns a Conditioning with the same entries, shapes "
           "and dtypes as forward(batch)")
def check_conditioner_null(cond: Conditioner) -> str | None:
    """The null conditioning used by classifier-free guidance."""
    size = _cond_latent_sizes(cond, 220, 1)[0]
    batch = _example(cond, 3, size, seed=221)
    with _mode(cond, False), torch.no_grad():
        out = cond(batch)
        null = cond.null(batch)
        _check_conditioning(null, cond, 3, size, "null(batch)")
        for name, t in out.items():
            n = getattr(null, name)
            if n.shape != t.shape or n.dtype != t.dtype:
                raise _fail(f"null entry {name}: {tuple(n.shape)} {n.dtype}, forward gives "
                            f"{tuple(t.shape)} {t.dtype}")
    return None


@_register("conditioner", "forward_with_dropout equals null(batch) when dropout is 1 and "
           "forward(batch) when dropout is 0")
def check_conditioner_dropout(cond: Conditioner) -> str | None:
    """Classifier-free guidance dropout at both extremes."""
    size = _cond_latent_sizes(cond, 230, 1)[0]
    batch = _example(cond, 4, size, seed=231)
    model = copy.deepcopy(cond)
    with _mode(model, False), torch.no_grad():
        model.dropout = 1.0
        _close_cond(model.forward_with_dropout(batch, _gen(1)), model.null(batch),
                    "forward_with_dropout with dropout 1.0 against null(batch)")
        model.dropout = 0.0
        _close_cond(model.forward_with_dropout(batch, _gen(1)), model(batch),
                    "forward_with_dropout with dropout 0.0 against forward(batch)")
    return None


@_register("conditioner", "a batch without one of input_keys raises KeyError naming the key")
def check_conditioner_missing_key(cond: Conditioner) -> str | None:
    """Each input key removed in turn."""
    if not cond.input_keys:
        raise NotApplicable("no input keys")
    size = _cond_latent_sizes(cond, 240, 1)[0]
    batch = _example(cond, 2, size, seed=241)
    with _mode(cond, False), torch.no_grad():
        for key in cond.input_keys:
            partial = {k: v for k, v in batch.items() if k != key}
            try:
                cond(partial)
            except KeyError as exc:
                if key not in str(exc):
                    raise _fail(f"KeyError for missing {key!r} does not name it: {exc}") from None
                continue
            except Exception as exc:
                raise _fail(f"missing key {key!r}: raised {type(exc).__name__} instead of KeyError: {exc}") from None
            raise _fail(f"a batch without {key!r} was accepted")
    return None


@_register("conditioner", "item i's conditioning (and null conditioning) does not depend on the "
           "rest of the batch")
def check_conditioner_batch_independence(cond: Conditioner) -> str | None:
    """forward and null on a batch of 3 against each item alone."""
    size = _cond_latent_sizes(cond, 250, 1)[0]
    batch = _example(cond, 3, size, seed=251)
    cond = _live(cond)
    with _mode(cond, False), torch.no_grad():
        full, null = cond(batch), cond.null(batch)
        for i in range(3):
            item = _slice_batch(batch, i, 3)
            _close_cond(full[i : i + 1], cond(item), f"forward: item {i} in a batch vs alone")
            _close_cond(null[i : i + 1], cond.null(item), f"null: item {i} in a batch vs alone")
    return None


@_register("conditioner", "forward is deterministic, example_batch and forward_with_dropout "
           "depend only on their generator")
def check_conditioner_determinism(cond: Conditioner) -> str | None:
    """Seeded example batches and seeded dropout."""
    size = _cond_latent_sizes(cond, 260, 1)[0]
    a, b = _example(cond, 4, size, seed=261), _example(cond, 4, size, seed=261)
    for key in a:
        va, vb = a[key], b.get(key)
        same = torch.equal(va, vb) if isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) else va == vb
        if not same:
            raise _fail(f"example_batch with equally seeded generators differs in {key!r}")
    model = _live(cond)
    if model is cond:
        model = copy.deepcopy(cond)
    model.dropout = 0.5
    with _mode(model, False), torch.no_grad():
        _close_cond(model(a), model(a), "forward twice", atol=1e-6)
        _close_cond(model.forward_with_dropout(a, _gen(3)), model.forward_with_dropout(a, _gen(3)),
                    "forward_with_dropout with equally seeded generators", atol=1e-6)
    return None


@_register("conditioner", "load_state_dict(state_dict()) into a second instance reproduces "
           "every entry and the outputs")
def check_conditioner_state_dict_round_trip(cond: Conditioner) -> str | None:
    """Round trip through a perturbed second instance."""
    size = _cond_latent_sizes(cond, 270, 1)[0]
    batch = _example(cond, 2, size, seed=271)

    def outputs(model: Any) -> list[torch.Tensor]:
        return [t for _, t in model(batch).items()] + [t for _, t in model.null(batch).items()]

    return _round_trip(cond, outputs, prepare=lambda s: _perturb(s, seed=8))


@_register("conditioner", "when trainable, a gradient reaches every trainable parameter from "
           "forward(batch) and null(batch)")
def check_conditioner_gradients(cond: Conditioner) -> str | None:
    """Backward through forward and null."""
    if not cond.trainable:
        raise NotApplicable("not trainable")
    if not _trainable(cond):
        raise NotApplicable("no trainable parameters")
    model = copy.deepcopy(cond)
    _perturb(model, seed=9)
    model.zero_grad(set_to_none=True)
    size = _cond_latent_sizes(cond, 280, 1)[0]
    batch = _example(model, 3, size, seed=281)
    with _mode(model, True):
        loss = torch.zeros((), device=_device_of(model))
        for i, (_, t) in enumerate(list(model(batch).items()) + list(model.null(batch).items())):
            loss = loss + (t * _randn(t.shape, 282 + i, t.device, t.dtype)).sum()
        _gradient_report(model, loss)
    return None


def _wrong_rank(t: torch.Tensor) -> torch.Tensor:
    """``t`` with trailing axes added: one for (B,) / (B, D) inputs, up to rank 6 for spatial
    inputs (beyond every layout, so that rank-generic conditioners must refuse it too)."""
    target = t.ndim + 1 if t.ndim <= 2 else max(6, t.ndim + 1)
    while t.ndim < target:
        t = t.unsqueeze(-1).expand(*t.shape, 2)
    return t.contiguous()


@_register("conditioner", "a tensor input of the wrong rank raises ShapeError (a ValueError) "
           "naming the found shape")
def check_conditioner_wrong_input_shape(cond: Conditioner) -> str | None:
    """Each tensor input key given trailing axes too many."""
    size = _cond_latent_sizes(cond, 290, 1)[0]
    batch = _example(cond, 2, size, seed=291)
    keys = [k for k in cond.input_keys if isinstance(batch.get(k), torch.Tensor)]
    if not keys:
        raise NotApplicable("no tensor inputs")
    with _mode(cond, False), torch.no_grad():
        for key in keys:
            wrong = dict(batch)
            wrong[key] = _wrong_rank(batch[key])

            def call(w: dict[str, Any] = wrong) -> Any:
                return cond(w)

            _expect_shape_error(call, wrong[key].shape, f"batch[{key!r}] of the wrong rank")
    return None


# =========================================================================== samplers


class _CountingDenoiser:
    """Wraps GaussianData.denoise, counting calls and recording the arguments."""

    def __init__(self, data: GaussianData) -> None:
        self.data = data
        self.calls = 0
        self.problems: list[str] = []
        self.expect_extra: dict[str, Any] | None = None

    def __call__(self, x: torch.Tensor, sigma: Any, **extra_args: Any) -> torch.Tensor:
        self.calls += 1
        if self.expect_extra is not None:
            for key, value in self.expect_extra.items():
                if extra_args.get(key) is not value:
                    self.problems.append(f"call {self.calls}: extra_args[{key!r}] not passed through "
                                         f"(got keys {sorted(extra_args)})")
            s = torch.as_tensor(sigma)
            if s.ndim not in (0, 1) or (s.ndim == 1 and s.shape[0] not in (1, x.shape[0])):
                self.problems.append(f"call {self.calls}: sigma of shape {tuple(s.shape)} for x {tuple(x.shape)}")
            elif not bool((s >= 0).all()) or not bool(torch.isfinite(s).all()):
                self.problems.append(f"call {self.calls}: sigma {s.tolist()} is not finite and >= 0")
        return self.data.denoise(x, sigma)


_GAUSS = {"mean": (0.5, -0.3), "std": (0.8, 0.4)}


def _gauss_x(data: GaussianData, shape: Sequence[int], sigma_max: float, seed: int,
             dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return data.sample(shape, sigma=sigma_max, generator=_gen(seed)).to(dtype)


@_register("sampler", "model_calls(steps) is a positive int, stochastic is a bool and order is "
           "None or a positive int")
def check_sampler_declarations(sampler: Sampler) -> str | None:
    """Declared call counts, the stochastic flag and the order of accuracy."""
    if not isinstance(sampler.stochastic, bool):
        raise _fail(f"stochastic must be a bool, got {sampler.stochastic!r}")
    order = getattr(sampler, "order", None)
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 1):
        raise _fail(f"order must be None (undeclared) or a positive int, got {order!r}")
    for steps in (1, 2, 10):
        n = sampler.model_calls(steps)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _fail(f"model_calls({steps}) = {n!r}, expected a positive int")
    return None


@_register("sampler", "sample returns a finite tensor shaped and typed like x, in every layout")
def check_sampler_output_shapes(sampler: Sampler) -> str | None:
    """float32 inputs of ranks 3, 4 and 5."""
    data = GaussianData(*_GAUSS.values())
    sigmas = karras_sigmas(5, dtype=torch.float32)
    for i, shape in enumerate([(2, 2, 6), (2, 2, 4, 6), (1, 2, 3, 4, 2)]):
        x = _gauss_x(data, shape, float(sigmas[0]), seed=i, dtype=torch.float32)
        out = sampler.sample(data.denoise, x, sigmas, generator=_gen(i))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != x.dtype:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise _fail(f"x {tuple(x.shape)} float32: returned {got}")
        _finite(out, f"sample of x {tuple(x.shape)}")
    return None


@_register("sampler", "a deterministic sampler integrates the probability-flow ODE: on Gaussian "
           "data (closed-form denoiser) 100 Karras steps land within tolerance of the exact "
           "solution")
def check_sampler_ode_solution(sampler: Sampler) -> str | None:
    """Against GaussianData.ode_solution (Karras et al. 2022, Eq. 3)."""
    if sampler.stochastic:
        raise NotApplicable("stochastic sampler: no ODE solution to land on (check_sampler_gaussian_moments "
                            "checks its samples)")
    data = GaussianData(*_GAUSS.values())
    sigmas = karras_sigmas(100)
    x = _gauss_x(data, (64, 2, 4, 4), float(sigmas[0]), seed=301)
    out = sampler.sample(data.denoise, x, sigmas)
    exact = data.ode_solution(x, float(sigmas[0]), 0.0)
    err = ((out.double() - exact) / data._bcast(data.std, exact)).abs()
    rms, worst = err.pow(2).mean().sqrt().item(), err.max().item()
    # First-order Euler gives rms ~0.02, max ~0.08 (in units of the data std) here.
    if not (rms < 0.05 and worst < 0.25):
        raise _fail(f"error against the exact ODE solution, in data std units: rms {rms:.3g} "
                    f"(tolerance 0.05), max {worst:.3g} (tolerance 0.25)")
    return None


# Order of accuracy: Karras steps at which the built-in deterministic samplers are in their
# asymptotic regime (from 64 steps on, observed orders at most 0.13 below the declared ones,
# see docs/testing.md), and how far below the declared order the observed one may fall.
_ORDER_STEPS = (64, 128, 256)
_ORDER_TOLERANCE = 0.25


def _declared_order(sampler: Sampler) -> int | None:
    order = getattr(sampler, "order", None)
    if order is None:
        return None
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise _fail(f"order must be None (undeclared) or a positive int, got {order!r}")
    return order


@_register("sampler", "a deterministic sampler that declares its order converges at that order: "
           "on Gaussian data in float64, each doubling of the Karras steps (64, 128, 256) divides "
           "the error against the exact ODE solution at sigma_min by at least 2^(order - 0.25)")
def check_sampler_order(sampler: Sampler) -> str | None:
    """Observed order of accuracy, ``log2(err(n) / err(2n))``, against ``Sampler.order``.

    The error is measured on the callback's ``x`` at the last step (at sigma_min, the last
    level before 0) against :meth:`GaussianData.ode_solution`: the final step to 0 is a
    single step of fixed size in most samplers (``x = D(x, sigma_min)``, whose error does not
    shrink with the step count) and is checked by :func:`check_sampler_final_step`.

    Only falling short of the declared order fails. Converging faster passes with a note:
    the Gaussian problem's ODE is linear in ``x`` and some methods superconverge on it (the
    explicit midpoint rule is third order here: its leading error term
    ``a''/24 + a^3/6 + a a'/4`` vanishes for ``a(sigma) = sigma / (s^2 + sigma^2)``).
    """
    if sampler.stochastic:
        raise NotApplicable("stochastic sampler: the order is that of the deterministic ODE solver "
                            "(check it with the noise switched off, e.g. eta=0 or s_churn=0)")
    if getattr(sampler, "requires_consistency_model", False):
        raise NotApplicable("consistency sampling (requires_consistency_model): not an ODE solver")
    order = _declared_order(sampler)
    if order is None:
        raise NotApplicable("no order declared (Sampler.order is None)")
    data = GaussianData(*_GAUSS.values())
    sigma_max = float(karras_sigmas(2)[0])
    x = _gauss_x(data, (32, 2, 2, 2), sigma_max, seed=361)
    errors = []
    for steps in _ORDER_STEPS:
        sigmas = karras_sigmas(steps)
        last: list[torch.Tensor] = []

        def record(info: Mapping[str, Any], last: list[torch.Tensor] = last) -> None:
            last[:] = [torch.as_tensor(info["x"]).detach().clone()]

        sampler.sample(data.denoise, x.clone(), sigmas, callback=record)
        if not last or last[0].shape != x.shape:
            raise _fail(f"{steps} steps: the callback gave no x of shape {tuple(x.shape)} to measure the "
                        f"error at sigma_min on")
        exact = data.ode_solution(x, sigma_max, float(sigmas[-2]))
        err = ((last[0].double() - exact) / data._bcast(data.std, exact)).pow(2).mean().sqrt().item()
        if not math.isfinite(err):
            raise _fail(f"{steps} steps: the error at sigma_min is {err}")
        errors.append(err)
    shown = ", ".join(f"{n}: {e:.3g}" for n, e in zip(_ORDER_STEPS, errors))
    if max(errors) < 1e-11:
        return f"exact to float64 precision on Gaussian data (rms errors {shown}): no order to measure"
    observed = [math.log2(a / b) if b > 0 else math.inf for a, b in itertools.pairwise(errors)]
    orders = ", ".join(f"{o:.2f}" for o in observed)
    if any(o < order - _ORDER_TOLERANCE for o in observed):
        raise _fail(f"declared order {order}, observed {orders} from doubling the steps (rms errors at "
                    f"sigma_min in data std units, by step count: {shown}); expected at least "
                    f"{order - _ORDER_TOLERANCE:g}: a lower-order update (e.g. wrong weights in a "
                    f"higher-order correction) or a wrong declaration")
    if all(o > order + _ORDER_TOLERANCE for o in observed):
        return (f"observed order {orders} above the declared {order} (superconvergence on Gaussian "
                f"data, or a conservative declaration)")
    return None


# The final step: data much narrower than sigma_min, so that what is left of sigma_min's
# noise stands out against the data's own spread (a tenth and a twentieth of sigma_min).
_FINAL_STEPS = 10
_NARROW = {"mean": (0.5, -0.3), "std": (0.002, 0.001)}
_FINAL_TOLERANCE = 0.5  # residual, in units of sigma_min


@_register("sampler", "a sampler takes the final step from sigma_min to 0: on Gaussian data "
           "much narrower than sigma_min (std sigma_min / 10 and / 20), 10 Karras steps leave a "
           "residual of less than half of sigma_min (rms against the exact ODE solution for "
           "deterministic samplers, against the data mean for stochastic ones)")
def check_sampler_final_step(sampler: Sampler) -> str | None:
    """Residual noise after the last step, in units of sigma_min.

    A sampler that stops at sigma_min returns ``x0 + sigma_min * eps``-like samples: a
    residual of about 1 (0.9 against the ODE solution, 1.0 against the mean). Taking the
    step to 0 removes it: every built-in leaves at most 0.11 (the data's own spread, or its
    posterior mean, which is narrower still). With data as wide as sigma_min allows
    elsewhere in the kit (std 0.4 against sigma_min 0.02) the two would differ by 0.1 %
    of the std, far inside any tolerance of the moment and ODE checks.
    """
    data = GaussianData(**_NARROW)
    sigmas = karras_sigmas(_FINAL_STEPS)
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-2])
    x = _gauss_x(data, (64, 2, 4, 4), sigma_max, seed=371)
    consistency = bool(getattr(sampler, "requires_consistency_model", False))
    model = _consistency_function(data) if consistency else data.denoise
    out = sampler.sample(model, x.clone(), sigmas, generator=_gen(372))
    _finite(out, "sample")
    if sampler.stochastic:
        reference, against = data._bcast(data.mean, x).expand_as(x), "the data mean"
    else:
        reference, against = data.ode_solution(x, sigma_max, 0.0), "the exact ODE solution at sigma 0"
    residual = (out.double() - reference).transpose(0, 1).reshape(2, -1).pow(2).mean(1).sqrt() / sigma_min
    if bool((residual >= _FINAL_TOLERANCE).any()):
        shown = ", ".join(f"channel {c} {float(r):.2f}" for c, r in enumerate(residual))
        raise _fail(f"rms residual against {against}, in units of sigma_min = {sigma_min:g}: {shown} "
                    f"(tolerance {_FINAL_TOLERANCE:g}; stopping at sigma_min leaves about 1, the "
                    f"built-ins' step to 0 at most 0.11): the sampler does not take the final step from sigma_min to 0")
    return None


def _consistency_function(data: GaussianData) -> Callable[..., torch.Tensor]:
    """The exact consistency function of Gaussian data (Song et al. 2023): the end point of
    the probability-flow ODE from ``(x, sigma)``, what a consistency model (LCM) learns."""

    def consistency(x: torch.Tensor, sigma: Any, **extra_args: Any) -> torch.Tensor:
        mu, s2 = data._bcast(data.mean, x), data._bcast(data.std, x) ** 2
        sig = data._sigma(sigma, x)
        return mu + (x - mu) * torch.sqrt(s2 / (s2 + sig**2))

    return consistency


@_register("sampler", "samples of Gaussian data N(mu, s^2) have per-channel mean mu and "
           "standard deviation s within statistical tolerance (4096 values per channel); "
           "samplers declaring requires_consistency_model get the exact consistency function "
           "instead of the posterior-mean denoiser")
def check_sampler_gaussian_moments(sampler: Sampler) -> str | None:
    """Mean and variance of 8192 samples at 100 Karras steps."""
    data = GaussianData(*_GAUSS.values())
    sigmas = karras_sigmas(100)
    x = _gauss_x(data, (256, 2, 4, 4), float(sigmas[0]), seed=311)
    consistency = bool(getattr(sampler, "requires_consistency_model", False))
    model = _consistency_function(data) if consistency else data.denoise
    out = sampler.sample(model, x, sigmas, generator=_gen(312)).double()
    n = out.numel() // 2
    mean, std = out.transpose(0, 1).reshape(2, -1).mean(1), out.transpose(0, 1).reshape(2, -1).std(1)
    problems = []
    for c in range(2):
        mu, s = float(data.mean[c]), float(data.std[c])
        mean_tol = 0.03 * s + 5 * s / math.sqrt(n)
        if abs(float(mean[c]) - mu) > mean_tol:
            problems.append(f"channel {c}: mean {float(mean[c]):.4f}, expected {mu} +- {mean_tol:.3f}")
        if abs(float(std[c]) / s - 1) > 0.08:
            problems.append(f"channel {c}: std {float(std[c]):.4f}, expected {s} +- 8%")
    if problems:
        raise _fail("; ".join(problems))
    return "driven by the exact consistency function" if consistency else None


@_register("sampler", "callback is called once per step with keys i, x, sigma, sigma_next, "
           "denoised: i = 0, 1, ..., sigma = sigmas[i], sigma_next = sigmas[i + 1] (Python floats), "
           "x and denoised shaped like x")
def check_sampler_callback(sampler: Sampler) -> str | None:
    """The documented callback fields, once per step."""
    data = GaussianData(*_GAUSS.values())
    steps = 6
    sigmas = karras_sigmas(steps, dtype=torch.float32)
    x = _gauss_x(data, (2, 2, 4, 4), float(sigmas[0]), seed=321, dtype=torch.float32)
    records: list[dict[str, Any]] = []
    sampler.sample(data.denoise, x, sigmas, callback=lambda info: records.append(dict(info)), generator=_gen(1))
    if len(records) != steps:
        raise _fail(f"callback called {len(records)} times for {steps} steps")
    required = {"i", "x", "sigma", "sigma_next", "denoised"}
    for k, rec in enumerate(records):
        missing = required - set(rec)
        if missing:
            raise _fail(f"call {k}: missing keys {sorted(missing)} (got {sorted(rec)})")
        if int(rec["i"]) != k:
            raise _fail(f"call {k}: i = {rec['i']}, expected {k}")
        for key in ("sigma", "sigma_next"):
            if not isinstance(rec[key], float):
                raise _fail(f"call {k}: {key} is a {type(rec[key]).__name__}, expected a Python float "
                            f"(pass float(sigmas[i]); Sampler.report does)")
        sigma, sigma_next = rec["sigma"], rec["sigma_next"]
        if not (math.isclose(sigma, float(sigmas[k]), rel_tol=1e-4) and
                math.isclose(sigma_next, float(sigmas[k + 1]), rel_tol=1e-4, abs_tol=1e-7)):
            raise _fail(f"call {k}: sigma {sigma:.5g}, sigma_next {sigma_next:.5g}, expected "
                        f"{float(sigmas[k]):.5g}, {float(sigmas[k + 1]):.5g}")
        for key in ("x", "denoised"):
            if not isinstance(rec[key], torch.Tensor) or rec[key].shape != x.shape:
                got = tuple(rec[key].shape) if isinstance(rec[key], torch.Tensor) else type(rec[key]).__name__
                raise _fail(f"call {k}: {key} is {got}, expected shape {tuple(x.shape)}")
    return None


@_register("sampler", "the number of denoise calls equals model_calls(steps)")
def check_sampler_model_calls(sampler: Sampler) -> str | None:
    """Counted against the declaration for 1, 2, 5 and 12 steps."""
    data = GaussianData(*_GAUSS.values())
    wrong = []
    for steps in (1, 2, 5, 12):
        sigmas = karras_sigmas(steps, dtype=torch.float32)
        counter = _CountingDenoiser(data)
        x = _gauss_x(data, (2, 2, 3, 3), float(sigmas[0]), seed=steps, dtype=torch.float32)
        sampler.sample(counter, x, sigmas, generator=_gen(steps))
        if counter.calls != sampler.model_calls(steps):
            wrong.append(f"{steps} steps: {counter.calls} calls, model_calls says {sampler.model_calls(steps)}")
    if wrong:
        raise _fail("; ".join(wrong))
    return None


@_register("sampler", "denoise receives extra_args as keyword arguments on every call and a "
           "sigma that is a scalar or (B,) tensor, finite and >= 0")
def check_sampler_denoise_arguments(sampler: Sampler) -> str | None:
    """What the model sees."""
    data = GaussianData(*_GAUSS.values())
    sigmas = karras_sigmas(4, dtype=torch.float32)
    counter = _CountingDenoiser(data)
    marker = object()
    counter.expect_extra = {"cond": marker}
    x = _gauss_x(data, (3, 2, 2, 2), float(sigmas[0]), seed=331, dtype=torch.float32)
    sampler.sample(counter, x, sigmas, extra_args={"cond": marker}, generator=_gen(2))
    if counter.problems:
        raise _fail("; ".join(counter.problems[:4]))
    return None


@_register("sampler", "the same generator seed gives the same sample; a stochastic sampler "
           "gives different samples for different seeds, a deterministic one ignores the seed")
def check_sampler_determinism(sampler: Sampler) -> str | None:
    """Seeded runs and the honesty of the ``stochastic`` flag."""
    data = GaussianData(*_GAUSS.values())
    sigmas = karras_sigmas(8, dtype=torch.float32)
    x = _gauss_x(data, (4, 2, 3, 3), float(sigmas[0]), seed=341, dtype=torch.float32)
    a = sampler.sample(data.denoise, x.clone(), sigmas, generator=_gen(10))
    b = sampler.sample(data.denoise, x.clone(), sigmas, generator=_gen(10))
    if not torch.equal(a, b):
        raise _fail(f"two runs with generators seeded 10 differ by {(a - b).abs().max().item():.3g}")
    c = sampler.sample(data.denoise, x.clone(), sigmas, generator=_gen(11))
    if sampler.stochastic and torch.equal(a, c):
        raise _fail("stochastic = True, but seeds 10 and 11 give identical samples")
    if not sampler.stochastic and not torch.allclose(a, c, atol=1e-6, rtol=1e-6):
        raise _fail("stochastic = False, but seeds 10 and 11 give different samples")
    return None


@_register("sampler", "with one generator per item (latentkit.random.generators_from_seed), "
           "item i's sample does not depend on the rest of the batch")
def check_sampler_per_item_generators(sampler: Sampler) -> str | None:
    """Batch of 4 against each item alone with its own generator."""
    data = GaussianData(*_GAUSS.values())
    sigmas = karras_sigmas(6, dtype=torch.float32)
    x = _gauss_x(data, (4, 2, 3, 3), float(sigmas[0]), seed=351, dtype=torch.float32)
    batch = sampler.sample(data.denoise, x.clone(), sigmas, generator=generators_from_seed(20, 4))
    for i in range(4):
        alone = sampler.sample(data.denoise, x[i : i + 1].clone(), sigmas,
                               generator=[generators_from_seed(20, 4)[i]])
        _close(batch[i : i + 1], alone, f"item {i} in a batch of 4 vs alone")
    return None


# =========================================================================== schedules


def _spacings(schedule: Schedule) -> list[str | None]:
    spacings = getattr(schedule, "spacings", None)
    if not spacings:
        return [None]
    return list(spacings)


@_register("schedule", "0 < sigma_min <= sigma_max, sigma_min finite, sigma_max finite or "
           "inf (pure noise)")
def check_schedule_declarations(schedule: Schedule) -> str | None:
    """The declared noise range."""
    lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)
    if not (math.isfinite(lo) and not math.isnan(hi) and 0 < lo <= hi):
        raise _fail(f"sigma_min {lo}, sigma_max {hi}")
    return None


@_register("schedule", "sigmas(n, spacing) has n + 1 finite entries >= 0 (the first may be inf "
           "when sigma_max is), non-increasing, the last 0 and the others within [sigma_min, "
           "sigma_max], for every spacing listed in `spacings`")
def check_schedule_sigmas(schedule: Schedule) -> str | None:
    """Sampling noise levels for every spacing and several step counts."""
    lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)
    for spacing in _spacings(schedule):
        for n in (1, 2, 7, 25):
            s = schedule.sigmas(n) if spacing is None else schedule.sigmas(n, spacing)
            what = f"sigmas({n}{'' if spacing is None else f', {spacing!r}'})"
            if not isinstance(s, torch.Tensor) or s.ndim != 1 or s.shape[0] != n + 1:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise _fail(f"{what}: got {got}, expected a 1-D tensor of {n + 1} entries")
            finite = s[1:] if math.isinf(hi) else s
            if not s.is_floating_point() or not bool(torch.isfinite(finite).all()) or bool((s < 0).any()) \
                    or bool(torch.isnan(s).any()):
                raise _fail(f"{what}: entries must be finite floats >= 0 (the first may be inf only "
                            f"when sigma_max is), got {s.tolist()}")
            if float(s[-1]) != 0.0:
                raise _fail(f"{what}: last entry is {float(s[-1])}, expected 0")
            if bool((s[1:] > s[:-1]).any()):
                raise _fail(f"{what}: not non-increasing: {s.tolist()}")
            inner = s[:-1].double()
            if bool((inner < lo * (1 - 1e-3)).any()) or bool((inner > hi * (1 + 1e-3)).any()):
                raise _fail(f"{what}: entries {inner.tolist()} outside [sigma_min, sigma_max] = [{lo}, {hi}]")
    return None


@_register("schedule", "sample_training_sigmas(B, generator) returns (B,) finite positive "
           "sigmas that depend only on the generator")
def check_schedule_training_sigmas(schedule: Schedule) -> str | None:
    """Shape, range and seeding of training noise levels."""
    a = schedule.sample_training_sigmas(64, _gen(1))
    b = schedule.sample_training_sigmas(64, _gen(1))
    c = schedule.sample_training_sigmas(64, _gen(2))
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != (64,):
        got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise _fail(f"sample_training_sigmas(64) returned {got}, expected shape (64,)")
    if not a.is_floating_point() or not bool(torch.isfinite(a).all()) or not bool((a > 0).all()):
        raise _fail(f"training sigmas must be finite and > 0, got min {float(a.min())}")
    if not torch.equal(a, b):
        raise _fail("equally seeded generators give different training sigmas")
    if torch.equal(a, c):
        raise _fail("generators seeded 1 and 2 give identical training sigmas")
    return None


@_register("schedule", "with one generator per item, item i's training sigma does not depend "
           "on the batch (noise drawn through latentkit.random)")
def check_schedule_training_sigmas_per_item(schedule: Schedule) -> str | None:
    """Per-item generators for training noise levels."""
    batch = schedule.sample_training_sigmas(4, generators_from_seed(30, 4))
    for i in range(4):
        alone = schedule.sample_training_sigmas(1, [generators_from_seed(30, 4)[i]])
        _close(batch[i : i + 1], alone, f"item {i} in a batch of 4 vs alone")
    return None


@_register("schedule", "t_to_sigma(sigma_to_t(sigma)) = sigma for sigma in [sigma_min, sigma_max]")
def check_schedule_t_round_trip(schedule: Schedule) -> str | None:
    """Round trip through the backbone's noise input."""
    lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)
    grid = schedule.sigmas(10)[:-1].float()
    grid = grid[torch.isfinite(grid)]
    if math.isinf(hi):  # pure noise: check the round trip up to the largest finite grid level
        hi = max(float(grid.max()), lo)
    sigma = torch.cat([
        torch.logspace(math.log10(lo), math.log10(hi), 17, dtype=torch.float64).float(),
        grid,
    ])
    t = schedule.sigma_to_t(sigma)
    if not isinstance(t, torch.Tensor) or t.shape != sigma.shape or not bool(torch.isfinite(t).all()):
        raise _fail(f"sigma_to_t on shape {tuple(sigma.shape)} gave {t!r}")
    back = schedule.t_to_sigma(t)
    _close(back.double(), sigma.double(), "t_to_sigma(sigma_to_t(sigma)) against sigma", atol=1e-6, rtol=1e-3)
    return None


# =========================================================================== running


def iter_checks(component: Any) -> list[tuple[str, Check]]:
    """The ``(check_name, check)`` pairs for ``component``, chosen by its ABC kind."""
    return list(_CHECKS[component_kind(component)])


def declared_xfail(component: Any, check_name: str) -> str | None:
    """The reason ``component`` gives for failing ``check_name`` by design, if any.

    A component lists such checks in a ``conformance_xfail`` mapping (check name -> reason),
    as scikit-learn estimators do with ``_xfail_checks``: for instance a consistency-model
    sampler, which by design does not reproduce the data variance from the closed-form
    (posterior-mean) denoiser. Those checks still run; their failure is reported, not raised.
    """
    declared = getattr(component, "conformance_xfail", None) or {}
    reason = declared.get(check_name) if isinstance(declared, Mapping) else None
    return None if reason is None else str(reason)


def _run_kind(component: Any, kind: str) -> None:
    actual = component_kind(component)
    if actual != kind:
        raise ConformanceError(f"check_{kind}: {component_label(component)} is a {actual}, not a {kind}")
    failures = []
    for name, check in _CHECKS[kind]:
        try:
            check(component)
        except NotApplicable:
            continue  # did not apply: not a pass, but not a failure either
        except ConformanceError as exc:
            if declared_xfail(component, name) is None:
                failures.append(str(exc))
    if failures:
        raise ConformanceError(f"{len(failures)} of {len(_CHECKS[kind])} {kind} checks failed:\n"
                               + "\n".join(failures))


def check_autoencoder(ae: Autoencoder) -> None:
    """Run every autoencoder check; raise ConformanceError listing each failed one (checks that do
    not apply, :class:`~latentkit.testing.results.NotApplicable`, are left out)."""
    _run_kind(ae, "autoencoder")


def check_denoiser(den: Denoiser) -> None:
    """Run every denoiser check; raise ConformanceError listing each failed one (checks that do
    not apply, :class:`~latentkit.testing.results.NotApplicable`, are left out)."""
    _run_kind(den, "denoiser")


def check_conditioner(cond: Conditioner) -> None:
    """Run every conditioner check; raise ConformanceError listing each failed one (checks that do
    not apply, :class:`~latentkit.testing.results.NotApplicable`, are left out)."""
    _run_kind(cond, "conditioner")


def check_sampler(sampler: Sampler) -> None:
    """Run every sampler check; raise ConformanceError listing each failed one (checks that do
    not apply, :class:`~latentkit.testing.results.NotApplicable`, are left out)."""
    _run_kind(sampler, "sampler")


def check_schedule(schedule: Schedule) -> None:
    """Run every schedule check; raise ConformanceError listing each failed one (checks that do
    not apply, :class:`~latentkit.testing.results.NotApplicable`, are left out)."""
    _run_kind(schedule, "schedule")


class _CreationFailure:
    """Stands in for a component that could not be built (shows up as a failed 'create')."""

    def __init__(self, kind: str, name: str, config: Mapping[str, Any], error: BaseException) -> None:
        self.kind, self.name, self.config, self.error = kind, name, dict(config), error

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r} failed to build>"


def _check_create(failure: _CreationFailure) -> None:
    """The 'create' check: building the component from its tiny_config must work."""
    raise ConformanceError(
        f"create failed for {failure.kind} {failure.name!r}\n  contract: the component builds "
        f"from its tiny_config {failure.config}\n  found: raised {type(failure.error).__name__}: "
        f"{failure.error}"
    )


_check_create.__name__ = "create"  # what results and test ids show


def _layout_of(component: Any, kind: str) -> str | None:
    if kind == "autoencoder":
        return str(component.data_spec.layout)
    if kind == "denoiser":
        return "/".join(_denoiser_layouts(component))
    return None


def _build(info: ComponentInfo) -> list[tuple[str | None, Any]]:
    """Instances of a registered component from its tiny_config, one per supported layout for
    autoencoders and denoisers; a build error becomes a _CreationFailure."""
    config = dict(info.tiny_config)

    def make(cfg: Mapping[str, Any]) -> Any:
        factory = info.resolve()
        obj = stamp_identity(factory(**cfg), info.kind, info.name, cfg, keep_existing=True)
        _remember_factory(obj, factory, cfg)
        return obj

    try:
        first = make(config)
    except Exception as exc:
        return [(config.get("layout"), _CreationFailure(info.kind, info.name, config, exc))]
    if info.kind not in ("autoencoder", "denoiser"):
        return [(None, first)]
    layouts = tuple(getattr(type(first), "supported_layouts", ()) or ())
    if len(layouts) <= 1:
        return [(_layout_of(first, info.kind) if not layouts else layouts[0], first)]
    given = config.get("layout") or (first.data_spec.layout if info.kind == "autoencoder" else None)
    out: list[tuple[str | None, Any]] = []
    for layout in layouts:
        if layout == given:
            out.append((layout, first))
            continue
        cfg = {**config, "layout": layout}
        try:
            out.append((layout, make(cfg)))
        except Exception as exc:
            out.append((layout, _CreationFailure(info.kind, info.name, cfg, exc)))
    return out


def _default_infos() -> list[ComponentInfo]:
    return [info for info in list_components() if info.kind in CHECKED_KINDS]


def _as_infos_or_instances(components: Iterable[Any]) -> list[Any]:
    out = []
    for c in components:
        if isinstance(c, tuple) and len(c) == 2 and all(isinstance(p, str) for p in c):
            out.append(get_plugin_manager().get(c[0], c[1]))
        else:
            out.append(c)
    return out


def _targets(components: Iterable[Any]) -> list[tuple[str, str, str | None, Any]]:
    """(kind, name, layout label, instance or _CreationFailure) for every component."""
    targets: list[tuple[str, str, str | None, Any]] = []
    for c in _as_infos_or_instances(components):
        if isinstance(c, ComponentInfo):
            if c.kind not in CHECKED_KINDS:
                continue
            for layout, obj in _build(c):
                targets.append((c.kind, c.name, layout, obj))
        else:
            kind = component_kind(c)
            name = getattr(c, "latentkit_name", (kind, type(c).__name__))[1]
            targets.append((kind, name, _layout_of(c, kind), c))
    return targets


def _checks_for(obj: Any) -> list[tuple[str, Check]]:
    if isinstance(obj, _CreationFailure):
        return [("create", _check_create)]
    return iter_checks(obj)


def run_checks(infos: Iterable[ComponentInfo] | None = None) -> list[CheckResult]:
    """Build each component from its ``tiny_config`` (one instance per supported layout for
    autoencoders and denoisers) and run its checks.

    ``infos`` defaults to every registered autoencoder, denoiser, conditioner, sampler and
    schedule. A component that cannot be built gives one failed ``"create"`` result; a check
    that does not apply (:class:`~latentkit.testing.results.NotApplicable`) gives a skipped
    result (``passed=False, skipped=True``) whose message is the reason. This is what
    ``latentkit check`` prints.
    """
    infos = _default_infos() if infos is None else list(infos)
    results: list[CheckResult] = []
    for kind, name, layout, obj in _targets(infos):
        for check_name, check in _checks_for(obj):
            reason = declared_xfail(obj, check_name)
            try:
                note = check(obj)
            except NotApplicable as exc:
                results.append(CheckResult(kind, name, check_name, False, str(exc), layout, skipped=True))
            except ConformanceError as exc:
                if reason is None:
                    results.append(CheckResult(kind, name, check_name, False, str(exc), layout))
                else:
                    results.append(CheckResult(kind, name, check_name, True,
                                               f"expected failure ({reason}): {exc}", layout))
            else:
                if reason is not None:
                    note = f"declared as an expected failure ({reason}) but passed"
                results.append(CheckResult(kind, name, check_name, True, note or "", layout))
    return results


def parametrize_with_checks(components: Iterable[Any]) -> Any:
    """A ``pytest.mark.parametrize`` over ``(component, check)`` for every check of every
    component, with ids like ``denoiser:unet[CHW]:check_denoiser_batch_independence``.

    ``components`` holds instances, :class:`~latentkit.plugins.ComponentInfo` objects or
    ``(kind, name)`` tuples (registered components, built from their ``tiny_config`` once
    per supported layout)::

        @parametrize_with_checks([MyDenoiser(in_channels=4, out_channels=4)])
        def test_conformance(component, check):
            check(component)

    A check that does not apply to its component
    (:class:`~latentkit.testing.results.NotApplicable`) calls ``pytest.skip(reason)``.
    """
    import pytest

    params = []
    for kind, name, layout, obj in _targets(components):
        label = f"{kind}:{name}" + (f"[{layout}]" if layout else "")
        for check_name, check in _checks_for(obj):
            reason = declared_xfail(obj, check_name)
            marks = () if reason is None else (pytest.mark.xfail(reason=reason, raises=ConformanceError, strict=False),)
            params.append(pytest.param(obj, _skipping(check), marks=marks, id=f"{label}:{check_name}"))
    return pytest.mark.parametrize(("component", "check"), params)


def _skipping(check: Check) -> Check:
    """``check`` with NotApplicable turned into ``pytest.skip(reason)``."""

    @functools.wraps(check)
    def run(component: Any) -> str | None:
        import pytest

        try:
            return check(component)
        except NotApplicable as exc:
            pytest.skip(f"{getattr(check, '__name__', 'check')} does not apply: {exc}")

    return run

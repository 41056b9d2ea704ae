"""Property tests across combinations of components.

:func:`compositions` is a hypothesis strategy drawing (autoencoder, denoiser, conditioner,
schedule, parameterization, sampler) from **whatever is registered**, built in or installed,
each created from its ``tiny_config``. Compatible draws override the denoiser's
``in_channels`` / ``out_channels`` / ``crossattn_dim`` / ``vector_dim`` / ``layout`` to fit
the autoencoder and conditioner; incompatible draws perturb one of them (or pair a layout
the denoiser does not run on). :func:`check_composition` then asserts the contract:

* a compatible combination builds a :class:`~latentkit.LatentDiffusion`, trains one step
  (finite loss; gradients reach every trainable part and no frozen one) and samples with
  classifier-free guidance at two steps to the declared output shape;
* an incompatible one raises :class:`~latentkit.errors.CompositionError` at construction,
  before any forward pass of any component.

A plugin author tests a new component against everything else with::

    from hypothesis import given, settings
    from latentkit.testing import check_composition, compositions

    @settings(max_examples=15, deadline=None)
    @given(compositions())
    def test_my_component_composes(composition):
        check_composition(composition)

:func:`run_combinations` runs the same over the installed components for
``latentkit check --combinations``.
"""

from __future__ import annotations

import inspect
import math
import traceback
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from hypothesis import strategies as st

from latentkit.diffusion.parameterizations import PARAMETERIZATIONS
from latentkit.errors import CompositionError
from latentkit.interfaces import Autoencoder, Conditioner, Denoiser, Sampler, Schedule
from latentkit.plugins import ComponentInfo, PluginManager, get_plugin_manager
from latentkit.specs import ConditioningSpec, spatial_ndim
from latentkit.testing.results import CheckResult, ConformanceError

__all__ = [
    "MISMATCHES",
    "BuiltComposition",
    "Composition",
    "check_composition",
    "compositions",
    "run_combinations",
]

#: The ways an incompatible draw breaks the fit (each a CompositionError at construction).
MISMATCHES: tuple[str, ...] = ("in_channels", "out_channels", "crossattn_dim", "vector_dim", "layout")

_BATCH = 2  # items per check: small, but > 1 so batch handling is exercised


def _accepts(factory: Callable[..., Any], key: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == key or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _supported_layouts(info: ComponentInfo) -> tuple[str, ...]:
    factory = info.resolve()
    layouts = getattr(factory, "supported_layouts", None)
    if layouts is None:
        # A factory function: the class it is annotated to return declares the layouts.
        try:
            returned = typing.get_type_hints(factory).get("return")
        except Exception:  # unresolvable annotations: fall back to the default below
            returned = None
        layouts = getattr(returned, "supported_layouts", None)
    return tuple(layouts) if layouts else ("CHW",)


@attrs.frozen
class Composition:
    """One drawn combination, as names and configs (cheap to draw, printed by hypothesis).

    ``mismatch`` is ``None`` for a draw meant to fit, else the entry of :data:`MISMATCHES`
    to break. :meth:`build` creates the components; whether the result is expected to fit is
    :attr:`BuiltComposition.compatible` (a conditioner can also refuse an autoencoder at
    ``bind``, which is a CompositionError too).
    """

    autoencoder: str
    autoencoder_config: Mapping[str, Any]
    denoiser: str
    denoiser_config: Mapping[str, Any]  # the tiny config, before the overrides
    conditioner: str | None
    conditioner_config: Mapping[str, Any]
    schedule: str
    schedule_config: Mapping[str, Any]
    parameterization: str
    sampler: str
    sampler_config: Mapping[str, Any]
    mismatch: str | None = None
    manager: PluginManager | None = attrs.field(default=None, repr=False, eq=False)

    def describe(self) -> str:
        """``"identity + unet + class_label | linear, eps, euler"`` (+ the mismatch)."""
        text = (
            f"{self.autoencoder} + {self.denoiser} + {self.conditioner or 'no conditioner'} | "
            f"{self.schedule}, {self.parameterization}, {self.sampler}"
        )
        if self.autoencoder_config.get("layout"):
            text += f" [{self.autoencoder_config['layout']}]"
        return text + (f" (mismatched {self.mismatch})" if self.mismatch else "")

    def build(self) -> BuiltComposition:
        """Create every component; derive the denoiser's config from the specs."""
        pm = self.manager or get_plugin_manager()
        autoencoder = pm.create("autoencoder", self.autoencoder, **self.autoencoder_config)
        conditioner = None
        if self.conditioner is not None:
            conditioner = pm.create("conditioner", self.conditioner, **self.conditioner_config)
        bind_error = None
        if conditioner is not None:
            try:
                conditioner.bind(autoencoder)
            except CompositionError as exc:
                bind_error = str(exc)
        latent = autoencoder.latent_spec
        produced = conditioner.output_spec if conditioner is not None else ConditioningSpec()
        info = pm.get("denoiser", self.denoiser)
        factory = info.resolve()
        config = dict(self.denoiser_config)
        config.update(
            in_channels=latent.channels + produced.concat_channels,
            out_channels=latent.channels,
            crossattn_dim=produced.crossattn_dim,
            vector_dim=produced.vector_dim,
        )
        supported = _supported_layouts(info)
        layout = latent.layout
        mismatch = self.mismatch
        if mismatch == "layout" or layout not in supported:
            # A denoiser built for a layout of another spatial rank cannot run these latents.
            other = [lay for lay in supported if spatial_ndim(lay) != spatial_ndim(latent.layout)]
            if other:
                layout, mismatch = other[0], "layout"
            else:  # nothing of another rank to pair with: break the channel count instead
                layout = layout if layout in supported else supported[0]
                mismatch = "in_channels"
        if _accepts(factory, "layout"):
            config["layout"] = layout
        if mismatch == "in_channels":
            config["in_channels"] += 1
        elif mismatch == "out_channels":
            config["in_channels"] += 1
            config["out_channels"] += 1
        elif mismatch in ("crossattn_dim", "vector_dim"):
            config[mismatch] = (config[mismatch] or 0) + 8
        denoiser = pm.create("denoiser", self.denoiser, **config)
        schedule = pm.create("schedule", self.schedule, **self.schedule_config)
        sampler = pm.create("sampler", self.sampler, **self.sampler_config)
        return BuiltComposition(
            composition=self,
            autoencoder=autoencoder,
            denoiser=denoiser,
            conditioner=conditioner,
            schedule=schedule,
            sampler=sampler,
            denoiser_config=config,
            mismatch=mismatch,
            bind_error=bind_error,
        )


@attrs.define
class BuiltComposition:
    """The components of a :class:`Composition`, ready to compose."""

    composition: Composition
    autoencoder: Autoencoder
    denoiser: Denoiser
    conditioner: Conditioner | None
    schedule: Schedule
    sampler: Sampler
    denoiser_config: dict[str, Any]
    mismatch: str | None
    bind_error: str | None

    @property
    def compatible(self) -> bool:
        """Whether the parts are meant to fit."""
        return self.mismatch is None and self.bind_error is None

    def latent_size(self) -> tuple[int, ...]:
        """A small latent spatial size every part accepts: per axis the smallest multiple of
        that axis's factor in the denoiser's ``size_multiple`` that is at least 4."""
        multiples = self.denoiser.spatial_multiples(self.autoencoder.latent_spec.layout)
        return tuple(m * math.ceil(4 / m) for m in multiples)


def _registered(pm: PluginManager, kind: str) -> list[ComponentInfo]:
    found = pm.list(kind)
    if not found:
        raise LookupError(f"compositions(): no {kind} is registered, so no combination can be drawn")
    return found


def compositions(
    *,
    compatible: bool | None = None,
    manager: PluginManager | None = None,
) -> st.SearchStrategy[Composition]:
    """Hypothesis strategy of :class:`Composition` draws from the registered components.

    ``compatible=True`` draws only combinations meant to fit, ``False`` only broken ones,
    ``None`` (default) both (three in four meant to fit). ``manager`` defaults to the
    process-wide plugin manager (built-ins plus installed plugins).
    """
    pm = manager or get_plugin_manager()
    autoencoders = _registered(pm, "autoencoder")
    denoisers = _registered(pm, "denoiser")
    schedules = _registered(pm, "schedule")
    samplers = _registered(pm, "sampler")
    conditioners = pm.list("conditioner")
    den_layouts = {d.name: _supported_layouts(d) for d in denoisers}

    # (autoencoder, layout) pairs with the denoisers that run on that layout.
    pairs: list[tuple[ComponentInfo, str | None, list[str]]] = []
    for ae in autoencoders:
        fixed = ae.tiny_config.get("layout")
        supported = _supported_layouts(ae)
        options: list[str | None] = [fixed] if fixed else (list(supported) if len(supported) > 1 else [None])
        for layout in options:
            lay = layout or supported[0]
            fits = [d for d, lays in den_layouts.items() if lay in lays]
            pairs.append((ae, layout, fits))
    fitting = [p for p in pairs if p[2]]
    if compatible is not False and not fitting:
        raise LookupError("compositions(): no registered denoiser runs on any autoencoder's layout")

    @st.composite
    def draw(draw_: Callable[[st.SearchStrategy[Any]], Any]) -> Composition:
        want_fit = compatible if compatible is not None else draw_(st.sampled_from([True, True, True, False]))
        if want_fit:
            ae, layout, fits = draw_(st.sampled_from(fitting))
            den_name = draw_(st.sampled_from(sorted(fits)))
            mismatch = None
        else:
            ae, layout, fits = draw_(st.sampled_from(pairs))
            den_name = draw_(st.sampled_from(sorted(den_layouts)))
            lay = layout or _supported_layouts(ae)[0]
            options = [m for m in MISMATCHES if m != "layout"]
            if lay not in den_layouts[den_name]:
                options = ["layout"]  # already a layout mismatch
            elif any(spatial_ndim(x) != spatial_ndim(lay) for x in den_layouts[den_name]):
                options.append("layout")
            mismatch = draw_(st.sampled_from(options))
        den = pm.get("denoiser", den_name)
        ae_config = dict(ae.tiny_config)
        if layout is not None:
            ae_config["layout"] = layout
        cond = draw_(st.sampled_from([None, *conditioners]))
        cond_config = dict(cond.tiny_config) if cond is not None else {}
        latent_channels = _latent_channels_hint(ae, ae_config, pm)
        if cond is not None and latent_channels is not None and "latent_channels" in cond_config:
            cond_config["latent_channels"] = latent_channels
        sched = draw_(st.sampled_from(schedules))
        samp = draw_(st.sampled_from(samplers))
        return Composition(
            autoencoder=ae.name,
            autoencoder_config=ae_config,
            denoiser=den.name,
            denoiser_config=dict(den.tiny_config),
            conditioner=None if cond is None else cond.name,
            conditioner_config=cond_config,
            schedule=sched.name,
            schedule_config=dict(sched.tiny_config),
            parameterization=draw_(st.sampled_from(sorted(PARAMETERIZATIONS))),
            sampler=samp.name,
            sampler_config=dict(samp.tiny_config),
            mismatch=mismatch,
            manager=manager,
        )

    return draw()


_LATENT_CHANNELS: dict[tuple[str, str, str], int] = {}


def _latent_channels_hint(ae: ComponentInfo, config: Mapping[str, Any], pm: PluginManager) -> int | None:
    """Latent channels of ``ae`` built from ``config`` (cached per plugin, name and config);
    concat conditioners that encode an input need them as ``latent_channels``."""
    key = (ae.plugin, ae.name, repr(sorted(config.items())))
    if key not in _LATENT_CHANNELS:
        try:
            _LATENT_CHANNELS[key] = pm.create("autoencoder", ae.name, **config).latent_spec.channels
        except Exception:
            return None
    return _LATENT_CHANNELS[key]


@contextmanager
def _count_forward_calls(*parts: Any) -> Iterator[list[str]]:
    """Record every forward pass of every submodule of ``parts`` (and the autoencoder's
    encode/decode), to show that a failed composition ran none."""
    calls: list[str] = []
    handles = []
    patched: list[tuple[Any, str]] = []
    for part in parts:
        if part is None:
            continue
        for name, module in part.named_modules():
            label = f"{type(part).__name__}.{name or 'forward'}"
            handles.append(module.register_forward_pre_hook(lambda *_, _l=label: calls.append(_l)))
        for method in ("encode", "decode"):
            fn = getattr(part, method, None)
            if isinstance(part, Autoencoder) and fn is not None:
                def wrapped(*a: Any, _fn: Callable[..., Any] = fn, _l: str = f"{type(part).__name__}.{method}",
                            **k: Any) -> Any:
                    calls.append(_l)
                    return _fn(*a, **k)

                setattr(part, method, wrapped)
                patched.append((part, method))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()
        for part, method in patched:
            delattr(part, method)


def _fail(composition: Composition, message: str) -> ConformanceError:
    return ConformanceError(f"check_composition [{composition.describe()}]: {message}")


def _example_data(built: BuiltComposition, latent_size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    spec = built.autoencoder.data_spec
    shape = spec.shape(_BATCH, built.autoencoder.latent_spec.data_size(latent_size))
    lo, hi = spec.value_range
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


def check_composition(composition: Composition | BuiltComposition) -> None:
    """Assert the composition contract (see the module docstring); raise
    :class:`~latentkit.testing.results.ConformanceError` naming the combination otherwise."""
    from latentkit.diffusion.model import LatentDiffusion

    built = composition.build() if isinstance(composition, Composition) else composition
    comp = built.composition
    if not built.compatible:
        with _count_forward_calls(built.autoencoder, built.denoiser, built.conditioner) as calls:
            try:
                LatentDiffusion(
                    built.autoencoder, built.denoiser, built.conditioner, schedule=built.schedule,
                    parameterization=comp.parameterization,
                )
            except CompositionError as exc:
                if calls:
                    raise _fail(comp, f"CompositionError came only after forward passes: {calls[:5]}") from exc
                return
        why = built.bind_error or f"the denoiser's {built.mismatch} was set to a wrong value"
        raise _fail(comp, f"expected CompositionError ({why}), but the model was built")

    try:
        model = LatentDiffusion(
            built.autoencoder, built.denoiser, built.conditioner, schedule=built.schedule,
            parameterization=comp.parameterization,
        )
    except CompositionError as exc:
        raise _fail(comp, f"a compatible combination raised CompositionError: {exc}") from exc
    latent_size = built.latent_size()
    gen = torch.Generator().manual_seed(0)
    batch: dict[str, Any] = {}
    if built.conditioner is not None:
        batch = dict(built.conditioner.example_batch(_BATCH, latent_size=latent_size, generator=gen))
    data = _example_data(built, latent_size, gen)
    existing = batch.get(model.data_key)
    if isinstance(existing, torch.Tensor) and existing.shape == data.shape:
        pass  # the conditioner reads the data itself (e.g. an image embedding of it)
    elif model.data_key in batch:
        batch["latents"] = built.autoencoder.encode(data).mode()  # keep the conditioner's input
    else:
        batch[model.data_key] = data

    # --- one training step
    model.train()
    loss = model.loss(batch, generator=torch.Generator().manual_seed(1))
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
        raise _fail(comp, f"loss must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    if not bool(torch.isfinite(loss)):
        raise _fail(comp, f"loss is not finite: {loss.item()}")
    loss.backward()
    frozen: list[tuple[str, torch.nn.Module]] = [("autoencoder", built.autoencoder)]
    if built.conditioner is not None and not built.conditioner.trainable:
        frozen.append(("conditioner", built.conditioner))
    for label, part in frozen:
        leaked = [n for n, p in part.named_parameters() if p.grad is not None]
        if leaked:
            raise _fail(comp, f"gradients reached the frozen {label}: {leaked[:5]}")
    for n, p in built.denoiser.named_parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            raise _fail(comp, f"non-finite gradient in denoiser parameter {n}")
    before = {n: p.detach().clone() for n, p in built.denoiser.named_parameters()}
    reached = [n for n, p in built.denoiser.named_parameters() if p.grad is not None]
    if not reached:
        raise _fail(comp, "no gradient reached the denoiser")
    torch.optim.SGD(model.trainable_parameters(), lr=1e-2).step()
    if all(torch.equal(before[n], p.detach()) for n, p in built.denoiser.named_parameters()):
        raise _fail(comp, "an optimizer step left every denoiser parameter unchanged")
    cond = built.conditioner
    if cond is not None and cond.trainable and any(True for _ in cond.parameters()):
        # Without dropout, so the conditioning path is certainly taken.
        model.zero_grad(set_to_none=True)
        model.eval()
        model.loss(batch, generator=torch.Generator().manual_seed(1)).backward()
        if not any(p.grad is not None for p in cond.parameters()):
            raise _fail(comp, "no gradient reached the trainable conditioner")
    model.zero_grad(set_to_none=True)

    # --- sampling with guidance at two steps
    model.eval()
    sample_batch: dict[str, Any] | int = {k: v for k, v in batch.items() if k != "latents"} or _BATCH
    if cond is not None and not cond.input_keys:
        sample_batch = _BATCH
    out = model.sample(
        sample_batch, sampler=built.sampler, steps=2, guidance_scale=3.0, guidance_rescale=0.5,
        seed=0, latent_size=latent_size,
    )
    expected = built.autoencoder.data_spec.shape(
        _BATCH, built.autoencoder.latent_spec.data_size(latent_size)
    )
    if tuple(out.shape) != tuple(expected):
        raise _fail(comp, f"sample has shape {tuple(out.shape)}, expected {tuple(expected)}")
    if not bool(torch.isfinite(out).all()):
        raise _fail(comp, "sample contains non-finite values")


def run_combinations(max_examples: int = 20) -> list[CheckResult]:
    """Draw ``max_examples`` combinations from the installed components and check each; one
    :class:`CheckResult` per combination (what ``latentkit check --combinations`` prints)."""
    from hypothesis import HealthCheck, Phase, given, settings

    results: list[CheckResult] = []
    try:
        strategy = compositions()
    except LookupError as exc:
        return [CheckResult(kind="combination", component="(none)", check="check_composition",
                            passed=False, message=str(exc))]

    @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(composition: Composition) -> None:
        try:
            check_composition(composition)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ConformanceError) else (
                f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
            )
            results.append(CheckResult(kind="combination", component=composition.describe(),
                                       check="check_composition", passed=False, message=message))
        else:
            results.append(CheckResult(kind="combination", component=composition.describe(),
                                       check="check_composition", passed=True))

    run()
    return results


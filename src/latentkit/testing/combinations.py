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

To focus on one's own parts, ``compositions(include=["my_sampler", "denoiser:my_net"])``
draws only combinations that contain at least one of the named components (so that each of
them is tried with everything else; two parts of the same kind can be named together).

:func:`run_combinations` runs the same over the installed components for
``latentkit check --combinations [NAME ...]``.
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

from latentkit.diffusion.parameterizations import PARAMETERIZATIONS, parameterizations_for
from latentkit.errors import CompositionError, UnknownComponentError
from latentkit.interfaces import Autoencoder, Conditioner, Denoiser, Sampler, Schedule
from latentkit.plugins import ComponentInfo, PluginManager, get_plugin_manager
from latentkit.specs import ConditioningSpec, spatial_ndim
from latentkit.testing.results import CheckResult, ConformanceError

__all__ = [
    "COMBINED_KINDS",
    "MISMATCHES",
    "BuiltComposition",
    "Composition",
    "check_composition",
    "compositions",
    "run_combinations",
]

#: The ways an incompatible draw breaks the fit (each a CompositionError at construction).
MISMATCHES: tuple[str, ...] = ("in_channels", "out_channels", "crossattn_dim", "vector_dim", "layout")

#: The component kinds a combination is made of (what ``include`` may name).
COMBINED_KINDS: tuple[str, ...] = ("autoencoder", "denoiser", "conditioner", "schedule", "sampler")

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


Include = str | tuple[str, str] | ComponentInfo


def _resolve_include(pm: PluginManager, include: Sequence[Include]) -> list[tuple[str, str]]:
    """``(kind, name)`` for each entry of ``include`` (``"NAME"``, ``"KIND:NAME"``, a
    ``(kind, name)`` tuple or a ComponentInfo), in order, without repeats. A bare name
    stands for every combined kind that has a component of that name."""
    if isinstance(include, (str, ComponentInfo)):
        include = [include]
    out: list[tuple[str, str]] = []
    for item in include:
        if isinstance(item, ComponentInfo):
            keys = [(item.kind, item.name)]
        elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, str) for v in item):
            keys = [(item[0], item[1])]
        elif isinstance(item, str):
            kind, _, name = item.rpartition(":")
            keys = [(kind, name)] if kind else [(k, name) for k in COMBINED_KINDS
                                                 if any(i.name == name for i in pm.list(k))]
            if not keys:
                known = sorted({i.name for k in COMBINED_KINDS for i in pm.list(k)})
                raise UnknownComponentError(f"compositions(include=...): no {', '.join(COMBINED_KINDS)} "
                                            f"named {name!r}; registered: {', '.join(known)}")
        else:
            raise TypeError(f"compositions(include=...): expected NAME, KIND:NAME, (kind, name) or a "
                            f"ComponentInfo, got {item!r}")
        for kind, name in keys:
            if kind not in COMBINED_KINDS:
                raise ValueError(f"compositions(include=...): {kind}:{name} is not part of a combination "
                                 f"(the kinds are {', '.join(COMBINED_KINDS)})")
            pm.get(kind, name)  # UnknownComponentError naming the close matches
            if (kind, name) not in out:
                out.append((kind, name))
    if not out:
        raise ValueError("compositions(include=...): name at least one component (or pass include=None)")
    return out


@attrs.frozen
class _Options:
    """What may be drawn for one anchor: the candidates of every slot."""

    fitting: list[tuple[ComponentInfo, str | None, list[str]]]  # (autoencoder, layout, fitting denoisers)
    pairs: list[tuple[ComponentInfo, str | None, list[str]]]  # every (autoencoder, layout) allowed
    denoisers: list[str]  # every denoiser allowed (for broken draws)
    conditioners: list[ComponentInfo | None]
    schedules: list[ComponentInfo]
    samplers: list[ComponentInfo]

    @property
    def can_fit(self) -> bool:
        return bool(self.fitting and self.schedules and self.samplers)

    @property
    def can_break(self) -> bool:
        return bool(self.pairs and self.denoisers and self.schedules and self.samplers)


def compositions(
    *,
    compatible: bool | None = None,
    manager: PluginManager | None = None,
    include: Sequence[Include] | None = None,
) -> st.SearchStrategy[Composition]:
    """Hypothesis strategy of :class:`Composition` draws from the registered components.

    ``compatible=True`` draws only combinations meant to fit, ``False`` only broken ones,
    ``None`` (default) both (half of each). ``manager`` defaults to the process-wide plugin
    manager (built-ins plus installed plugins).

    ``include`` (names as ``latentkit check`` takes them, ``"NAME"`` or ``"KIND:NAME"``, or
    ``(kind, name)`` tuples or ComponentInfo objects) keeps only the combinations that contain
    at least one of the named components: each of them is then tried with everything else,
    and two of one kind (two denoisers, say) can be named together. ``LookupError`` when no
    such combination can be drawn.

    Different draws are different combinations (hypothesis does not repeat a draw, and every
    draw maps to its own combination: a combination is drawn through the first included
    component it contains), so ``max_examples`` draws check that many distinct combinations
    until there are no more.
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
            fits = sorted(d for d, lays in den_layouts.items() if lay in lays)
            pairs.append((ae, layout, fits))

    def options_for(anchor: tuple[str, str] | None, before: Sequence[tuple[str, str]]) -> _Options:
        # The anchor's slot holds the anchor; the included components before it are left out
        # of their slots, so that a combination is drawn through one anchor only.
        def allowed(kind: str, name: str) -> bool:
            if anchor is not None and kind == anchor[0]:
                return name == anchor[1]
            return (kind, name) not in before

        allowed_pairs = [(ae, lay, [d for d in fits if allowed("denoiser", d)])
                         for ae, lay, fits in pairs if allowed("autoencoder", ae.name)]
        conds: list[ComponentInfo | None] = [c for c in conditioners if allowed("conditioner", c.name)]
        if anchor is None or anchor[0] != "conditioner":
            conds.insert(0, None)
        return _Options(
            fitting=[p for p in allowed_pairs if p[2]],
            pairs=allowed_pairs,
            denoisers=[d for d in sorted(den_layouts) if allowed("denoiser", d)],
            conditioners=conds,
            schedules=[s for s in schedules if allowed("schedule", s.name)],
            samplers=[s for s in samplers if allowed("sampler", s.name)],
        )

    if include is None:
        anchored = [options_for(None, ())]
        if compatible is not False and not anchored[0].can_fit:
            raise LookupError("compositions(): no registered denoiser runs on any autoencoder's layout")
    else:
        keys = _resolve_include(pm, include)
        anchored = [options_for(key, keys[:i]) for i, key in enumerate(keys)]
        wanted = {True: "can_fit", False: "can_break", None: None}[compatible]
        anchored = [o for o in anchored if (getattr(o, wanted) if wanted else o.can_fit or o.can_break)]
        if not anchored:
            what = {True: "meant to fit ", False: "broken ", None: ""}[compatible]
            raise LookupError(f"compositions(include={include!r}): no {what}combination of the registered "
                              f"components contains any of {[f'{k}:{n}' for k, n in keys]}")

    @st.composite
    def draw(draw_: Callable[[st.SearchStrategy[Any]], Any]) -> Composition:
        opts = anchored[0] if len(anchored) == 1 else draw_(st.sampled_from(anchored))
        if compatible is not None:
            want_fit = compatible
        elif opts.can_fit and opts.can_break:
            want_fit = draw_(st.sampled_from([True, False]))
        else:
            want_fit = opts.can_fit
        if want_fit:
            ae, layout, fits = draw_(st.sampled_from(opts.fitting))
            den_name = draw_(st.sampled_from(fits))
            mismatch = None
        else:
            ae, layout, fits = draw_(st.sampled_from(opts.pairs))
            den_name = draw_(st.sampled_from(opts.denoisers))
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
        cond = draw_(st.sampled_from(opts.conditioners))
        cond_config = dict(cond.tiny_config) if cond is not None else {}
        latent_channels = _latent_channels_hint(ae, ae_config, pm)
        if cond is not None and latent_channels is not None and "latent_channels" in cond_config:
            cond_config["latent_channels"] = latent_channels
        sched = draw_(st.sampled_from(opts.schedules))
        fitting = _parameterizations(pm, sched)
        samp = draw_(st.sampled_from(opts.samplers))
        return Composition(
            autoencoder=ae.name,
            autoencoder_config=ae_config,
            denoiser=den.name,
            denoiser_config=dict(den.tiny_config),
            conditioner=None if cond is None else cond.name,
            conditioner_config=cond_config,
            schedule=sched.name,
            schedule_config=dict(sched.tiny_config),
            parameterization=draw_(st.sampled_from(fitting)),
            sampler=samp.name,
            sampler_config=dict(samp.tiny_config),
            mismatch=mismatch,
            manager=manager,
        )

    return draw()


_PARAMETERIZATIONS: dict[tuple[str, str, str], list[str]] = {}


def _parameterizations(pm: PluginManager, sched: ComponentInfo) -> list[str]:
    """The parameterizations that fit ``sched`` built from its tiny config (all of them,
    or those that can start from pure noise when its sigma_max is inf), cached."""
    key = (sched.plugin, sched.name, repr(sorted(sched.tiny_config.items())))
    if key not in _PARAMETERIZATIONS:
        try:
            schedule = pm.create("schedule", sched.name, **sched.tiny_config)
            _PARAMETERIZATIONS[key] = parameterizations_for(schedule)
        except Exception:
            _PARAMETERIZATIONS[key] = sorted(PARAMETERIZATIONS)
    return _PARAMETERIZATIONS[key]


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


def run_combinations(max_examples: int = 20, include: Sequence[Include] | None = None) -> list[CheckResult]:
    """Draw up to ``max_examples`` distinct combinations from the installed components and
    check each; one :class:`CheckResult` per combination (what ``latentkit check
    --combinations [NAME ...]`` prints). ``include`` keeps only combinations that contain at
    least one of the named components (see :func:`compositions`); fewer results come back
    when fewer such combinations exist."""
    from hypothesis import HealthCheck, Phase, given, settings

    results: list[CheckResult] = []
    try:
        strategy = compositions(include=include)
    except (LookupError, ValueError) as exc:
        return [CheckResult(kind="combination", component="(none)", check="check_composition",
                            passed=False, message=str(exc))]
    seen: set[str] = set()

    @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(composition: Composition) -> None:
        key = repr(composition)  # names, configs and mismatch (the manager is left out)
        if key in seen:
            return
        seen.add(key)
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


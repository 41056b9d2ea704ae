"""Hypothesis strategies for latentkit: specs in every layout, latents, sigma schedules and
conditioning.

Tensor values are drawn from a ``torch.Generator`` seeded by hypothesis, so hypothesis shrinks
shapes and seeds rather than millions of floats::

    from hypothesis import given
    from latentkit.testing import strategies as lks

    @given(spec=lks.latent_specs(), data=st.data())
    def test_round_trip(spec, data):
        z = data.draw(lks.latents(spec, batch_size=2))
        ...

``compositions`` (autoencoder + denoiser + conditioner that fit) comes from
:mod:`latentkit.testing.combinations` and is re-exported here on first use.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from latentkit.specs import LAYOUTS, Conditioning, ConditioningSpec, DataSpec, LatentSpec

__all__ = [  # noqa: F822 (compositions is resolved lazily by __getattr__)
    "compositions",
    "conditioning_specs",
    "conditionings",
    "data_specs",
    "latent_specs",
    "latents",
    "layouts",
    "seeds",
    "sigma_schedules",
    "spatial_sizes",
]

SearchStrategy = st.SearchStrategy
_BATCH_SIZES = st.integers(1, 3)


def _maybe(value: Any) -> SearchStrategy[Any]:
    """A strategy as is, anything else as ``st.just``."""
    return value if isinstance(value, SearchStrategy) else st.just(value)


def seeds() -> SearchStrategy[int]:
    """Seeds for ``torch.Generator`` (hypothesis shrinks them towards 0)."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def layouts(allowed: Sequence[str] | None = None) -> SearchStrategy[str]:
    """One of latentkit's layouts (``"CL"``, ``"CHW"``, ``"CTHW"``, ``"CDHW"``), or of
    ``allowed``."""
    choices = list(LAYOUTS) if allowed is None else list(allowed)
    for layout in choices:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return st.sampled_from(choices)


def spatial_sizes(layout: str | int, *, multiple: int | Sequence[int] = 1, max_size: int = 16,
                  min_size: int = 1) -> SearchStrategy[tuple[int, ...]]:
    """Spatial sizes for ``layout`` (or a number of axes), each axis a multiple of its factor,
    between ``min_size`` and ``max_size`` (at least one factor)."""
    ndim = layout if isinstance(layout, int) else LAYOUTS[layout]
    mult = (multiple,) * ndim if isinstance(multiple, int) else tuple(multiple)
    if len(mult) != ndim:
        raise ValueError(f"need one multiple per spatial axis ({ndim}), got {mult}")
    axes = []
    for m in mult:
        lo = max(1, math.ceil(min_size / m))
        hi = max(lo, max_size // m)
        axes.append(st.integers(lo, hi).map(functools.partial(operator.mul, m)))
    return st.tuples(*axes)


@st.composite
def latent_specs(
    draw: Any,
    layouts: Sequence[str] | None = None,
    *,
    max_channels: int = 8,
    max_downsampling: int = 8,
    normalization: bool = True,
) -> LatentSpec:
    """Valid :class:`LatentSpec` objects: any layout (or one of ``layouts``), 1 to
    ``max_channels`` channels, per-axis downsampling factors that are powers of two up to
    ``max_downsampling``, and (with ``normalization``) non-trivial scaling/shift factors."""
    layout = draw(_layouts_strategy(layouts))
    factors = [f for f in (1, 2, 4, 8, 16, 32) if f <= max_downsampling]
    downsampling = draw(st.tuples(*([st.sampled_from(factors)] * LAYOUTS[layout])))
    scaling, shift = 1.0, 0.0
    if normalization:
        magnitude = draw(st.floats(min_value=1e-3, max_value=10.0, allow_nan=False))
        scaling = magnitude * draw(st.sampled_from([1.0, -1.0]))
        shift = draw(st.floats(min_value=-3.0, max_value=3.0, allow_nan=False))
    return LatentSpec(
        channels=draw(st.integers(1, max_channels)),
        layout=layout,
        downsampling=downsampling,
        scaling_factor=scaling,
        shift_factor=shift,
    )


def _layouts_strategy(allowed: Sequence[str] | SearchStrategy[str] | None) -> SearchStrategy[str]:
    if isinstance(allowed, SearchStrategy):
        return allowed
    return layouts(allowed)


@st.composite
def data_specs(draw: Any, layouts: Sequence[str] | None = None, *, max_channels: int = 4) -> DataSpec:
    """Valid :class:`DataSpec` objects: any layout, 1 to ``max_channels`` channels and a
    value range ``low < high`` (the usual ``(-1, 1)`` and ``(0, 1)`` among them)."""
    layout = draw(_layouts_strategy(layouts))
    value_range = draw(
        st.sampled_from([(-1.0, 1.0), (0.0, 1.0)])
        | st.tuples(st.floats(-100, 100), st.floats(1e-3, 100)).map(lambda p: (p[0], p[0] + p[1]))
    )
    return DataSpec(channels=draw(st.integers(1, max_channels)), layout=layout, value_range=value_range)


@st.composite
def conditioning_specs(
    draw: Any,
    *,
    crossattn: bool | None = None,
    concat: bool | None = None,
    vector: bool | None = None,
    max_dim: int = 16,
    max_concat: int = 4,
) -> ConditioningSpec:
    """Valid :class:`ConditioningSpec` objects. For each entry ``True`` forces it present,
    ``False`` absent and ``None`` (default) lets hypothesis choose."""

    def present(flag: bool | None) -> bool:
        return bool(draw(st.booleans())) if flag is None else flag

    return ConditioningSpec(
        crossattn_dim=draw(st.integers(1, max_dim)) if present(crossattn) else None,
        concat_channels=draw(st.integers(1, max_concat)) if present(concat) else 0,
        vector_dim=draw(st.integers(1, max_dim)) if present(vector) else None,
    )


@st.composite
def latents(
    draw: Any,
    spec: LatentSpec | DataSpec | SearchStrategy[Any],
    *,
    batch_size: int | SearchStrategy[int] = _BATCH_SIZES,
    max_size: int = 8,
    min_size: int = 1,
    size_multiple: int | Sequence[int] = 1,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A batch shaped by ``spec``: ``(B, channels, *spatial)`` with each spatial size between
    ``min_size`` and ``max_size`` and a multiple of ``size_multiple`` (one int for every axis,
    or one per axis such as a denoiser's ``spatial_multiples()``). Latents are standard
    normal; data (a :class:`DataSpec`) is uniform over its value range."""
    spec_: LatentSpec | DataSpec = draw(_maybe(spec))
    b = draw(_maybe(batch_size))
    spatial = draw(spatial_sizes(spec_.layout, multiple=size_multiple, max_size=max_size, min_size=min_size))
    g = torch.Generator().manual_seed(draw(seeds()))
    shape = (b, spec_.channels, *spatial)
    if isinstance(spec_, DataSpec):
        lo, hi = spec_.value_range
        return (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)
    return torch.randn(shape, generator=g, dtype=dtype)


@st.composite
def sigma_schedules(
    draw: Any,
    *,
    min_steps: int = 1,
    max_steps: int = 50,
    sigma_min: tuple[float, float] = (0.002, 0.1),
    sigma_max: tuple[float, float] = (1.0, 160.0),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sampling schedules as samplers receive them: a 1-D tensor of ``steps + 1`` strictly
    decreasing noise levels from ``sigma_max`` down to ``sigma_min``, followed by 0.

    The gaps between consecutive levels are drawn freely in log-sigma (not only Karras or
    uniform spacings), so a sampler cannot rely on one spacing."""
    steps = draw(st.integers(min_steps, max_steps))
    hi = draw(st.floats(*sigma_max, allow_nan=False, allow_infinity=False))
    lo = draw(st.floats(sigma_min[0], max(sigma_min[0], min(sigma_min[1], hi / 2)), allow_nan=False))
    if steps == 1:
        levels = [hi]
    else:
        gaps = draw(st.lists(st.floats(0.1, 1.0), min_size=steps - 1, max_size=steps - 1))
        total = sum(gaps)
        log_hi, log_lo = math.log(hi), math.log(lo)
        levels, acc = [hi], 0.0
        for gap in gaps:
            acc += gap
            levels.append(math.exp(log_hi + (log_lo - log_hi) * acc / total))
    return torch.tensor([*levels, 0.0], dtype=torch.float64).to(dtype)


@st.composite
def conditionings(
    draw: Any,
    spec: ConditioningSpec | SearchStrategy[ConditioningSpec],
    batch_size: int | SearchStrategy[int] = 2,
    latent_size: Sequence[int] | SearchStrategy[Sequence[int]] = (8, 8),
    *,
    max_tokens: int = 8,
    dtype: torch.dtype = torch.float32,
) -> Conditioning:
    """A :class:`Conditioning` matching ``spec``: ``crossattn`` (B, L, D) with a random token
    count L in 1..``max_tokens``, ``concat`` (B, C, *latent_size) and ``vector`` (B, D), all
    standard normal."""
    cspec: ConditioningSpec = draw(_maybe(spec))
    b = draw(_maybe(batch_size))
    size = tuple(draw(_maybe(latent_size)))
    g = torch.Generator().manual_seed(draw(seeds()))
    entries: dict[str, torch.Tensor] = {}
    if cspec.crossattn_dim is not None:
        tokens = draw(st.integers(1, max_tokens))
        entries["crossattn"] = torch.randn((b, tokens, cspec.crossattn_dim), generator=g, dtype=dtype)
    if cspec.concat_channels:
        entries["concat"] = torch.randn((b, cspec.concat_channels, *size), generator=g, dtype=dtype)
    if cspec.vector_dim is not None:
        entries["vector"] = torch.randn((b, cspec.vector_dim), generator=g, dtype=dtype)
    return Conditioning(**entries)


def __getattr__(name: str) -> Any:
    # ``compositions`` lives with the combination checks; import it on first use only.
    if name == "compositions":
        from latentkit.testing.combinations import compositions

        return compositions
    raise AttributeError(f"module 'latentkit.testing.strategies' has no attribute {name!r}")

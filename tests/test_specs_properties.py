"""Hypothesis property tests: specs, Conditioning algebra, validate_composition, and the
strategies of :mod:`latentkit.testing.strategies` themselves."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import latentkit
from latentkit.autoencoders.identity import IdentityAutoencoder
from latentkit.errors import CompositionError, ShapeError, SpecError
from latentkit.interfaces import Conditioner, Denoiser
from latentkit.specs import LAYOUTS, Conditioning, ConditioningSpec, DataSpec, LatentSpec
from latentkit.testing import strategies as lks

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# =========================================================================== strategies


@SETTINGS
@given(spec=lks.latent_specs(), data=st.data())
def test_latents_are_shaped_by_their_spec(spec: LatentSpec, data: st.DataObject) -> None:
    z = data.draw(lks.latents(spec, batch_size=2, max_size=6))
    assert z.shape[:2] == (2, spec.channels) and z.ndim == 2 + LAYOUTS[spec.layout]
    assert all(1 <= s <= 6 for s in z.shape[2:]) and z.dtype == torch.float32


@SETTINGS
@given(spec=lks.data_specs(), data=st.data())
def test_data_lies_in_its_value_range_and_respects_the_multiple(spec: DataSpec, data: st.DataObject) -> None:
    x = data.draw(lks.latents(spec, batch_size=1, max_size=8, size_multiple=2))
    lo, hi = spec.value_range
    assert bool((x >= lo - 1e-5 * abs(lo)).all()) and bool((x <= hi + 1e-5 * abs(hi)).all())
    assert all(s % 2 == 0 for s in x.shape[2:])


@SETTINGS
@given(sigmas=lks.sigma_schedules(max_steps=30))
def test_sigma_schedules_decrease_strictly_to_zero(sigmas: torch.Tensor) -> None:
    assert sigmas.ndim == 1 and len(sigmas) >= 2 and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert 0.002 * (1 - 1e-6) <= float(sigmas[-2]) and float(sigmas[0]) <= 160.0 * (1 + 1e-6)


@SETTINGS
@given(spec=lks.conditioning_specs(), batch=st.integers(1, 3), data=st.data())
def test_conditionings_match_their_spec(spec: ConditioningSpec, batch: int, data: st.DataObject) -> None:
    cond = data.draw(lks.conditionings(spec, batch, (3, 5)))
    assert cond.spec == spec
    assert cond.batch_size == (None if spec.is_empty else batch)
    if cond.concat is not None:
        assert tuple(cond.concat.shape[2:]) == (3, 5)


# =========================================================================== specs


@SETTINGS
@given(spec=lks.latent_specs(normalization=False), data=st.data())
def test_latent_and_data_sizes_round_trip(spec: LatentSpec, data: st.DataObject) -> None:
    latent = data.draw(lks.spatial_sizes(spec.layout, max_size=6))
    size = spec.data_size(latent)
    assert all(s == z * f for s, z, f in zip(size, latent, spec.downsampling))
    assert spec.latent_size(size) == latent
    assert spec.shape(3, latent) == (3, spec.channels, *latent)


@SETTINGS
@given(spec=lks.latent_specs(normalization=False, max_downsampling=8).filter(
    lambda s: max(s.downsampling) > 1), data=st.data())
def test_indivisible_data_size_raises_naming_the_size(spec: LatentSpec, data: st.DataObject) -> None:
    latent = data.draw(lks.spatial_sizes(spec.layout, max_size=4))
    size = list(spec.data_size(latent))
    axis = next(i for i, f in enumerate(spec.downsampling) if f > 1)
    size[axis] += data.draw(st.integers(1, spec.downsampling[axis] - 1))
    with pytest.raises(ShapeError, match=re.escape(str(tuple(size)))):
        spec.latent_size(size)


@SETTINGS
@given(spec=lks.latent_specs())
def test_valid_latent_specs_keep_their_fields(spec: LatentSpec) -> None:
    again = LatentSpec(channels=spec.channels, layout=spec.layout, downsampling=spec.downsampling,
                       scaling_factor=spec.scaling_factor, shift_factor=spec.shift_factor)
    assert again == spec and len(spec.downsampling) == spec.spatial_ndim


_NOT_POSITIVE_INT = (st.integers(max_value=0) | st.booleans()
                     | st.floats(allow_nan=True) | st.text(max_size=3) | st.none())


@SETTINGS
@given(bad=_NOT_POSITIVE_INT)
def test_invalid_channels_raise_spec_error_naming_the_field(bad: Any) -> None:
    for cls in (LatentSpec, DataSpec):
        with pytest.raises(SpecError, match=rf"{cls.__name__}\.channels"):
            cls(channels=bad)


@SETTINGS
@given(bad=st.text(max_size=6).filter(lambda s: s not in LAYOUTS))
def test_invalid_layout_raises_spec_error_naming_the_field(bad: str) -> None:
    for cls in (LatentSpec, DataSpec):
        with pytest.raises(SpecError, match=rf"{cls.__name__}\.layout"):
            cls(channels=1, layout=bad)


@SETTINGS
@given(layout=lks.layouts(), data=st.data())
def test_invalid_downsampling_raises_spec_error_naming_the_field(layout: str, data: st.DataObject) -> None:
    n = LAYOUTS[layout]
    bad = data.draw(
        st.lists(st.integers(1, 8), min_size=1, max_size=5).filter(lambda v: len(v) != n).map(tuple)
        | st.lists(st.integers(-3, 0), min_size=n, max_size=n).map(tuple)
        | st.integers(max_value=0)
    )
    with pytest.raises(SpecError, match=r"LatentSpec\.downsampling"):
        LatentSpec(channels=1, layout=layout, downsampling=bad)


@SETTINGS
@given(bad=st.sampled_from([0.0, math.nan, math.inf, -math.inf]), field=st.sampled_from(
    ["scaling_factor", "shift_factor"]))
def test_invalid_normalisation_raises_spec_error_naming_the_field(bad: float, field: str) -> None:
    if field == "shift_factor" and bad == 0.0:
        LatentSpec(channels=1, shift_factor=0.0)  # a zero shift is valid
        return
    with pytest.raises(SpecError, match=rf"LatentSpec\.{field}"):
        LatentSpec(channels=1, **{field: bad})


@SETTINGS
@given(lo=st.floats(-10, 10), gap=st.floats(0, 10) | st.just(math.nan))
def test_invalid_value_range_raises_spec_error_naming_the_field(lo: float, gap: float) -> None:
    with pytest.raises(SpecError, match=r"DataSpec\.value_range"):
        DataSpec(channels=1, value_range=(lo, lo - gap))


@SETTINGS
@given(bad=_NOT_POSITIVE_INT, field=st.sampled_from(["crossattn_dim", "vector_dim", "concat_channels"]))
def test_invalid_conditioning_spec_raises_spec_error_naming_the_field(bad: Any, field: str) -> None:
    if (bad is None and field != "concat_channels") or (
        field == "concat_channels" and isinstance(bad, int) and not isinstance(bad, bool) and bad >= 0
    ):
        return  # None means "absent" for the dims; 0 concat channels is valid
    if field == "concat_channels" and isinstance(bad, int) and not isinstance(bad, bool):
        bad = -1 - abs(bad)
    with pytest.raises(SpecError, match=rf"ConditioningSpec\.{field}"):
        ConditioningSpec(**{field: bad})


# =========================================================================== Conditioning


def _equal(a: Conditioning, b: Conditioning) -> bool:
    names_a, names_b = [n for n, _ in a.items()], [n for n, _ in b.items()]
    return names_a == names_b and all(torch.equal(t, getattr(b, n)) for n, t in a.items())


_NON_EMPTY = lks.conditioning_specs().filter(lambda s: not s.is_empty)


@SETTINGS
@given(spec=_NON_EMPTY, batch=st.integers(2, 5), data=st.data())
def test_cat_of_slices_is_the_whole_and_indexing_slices_every_entry(
    spec: ConditioningSpec, batch: int, data: st.DataObject
) -> None:
    cond = data.draw(lks.conditionings(spec, batch, (2, 3)))
    k = data.draw(st.integers(1, batch - 1))
    assert _equal(Conditioning.cat([cond[:k], cond[k:]]), cond)
    assert cond[:k].batch_size == k and cond[k:].batch_size == batch - k
    for i in range(batch):
        item = cond[i : i + 1]
        assert all(torch.equal(t[0], getattr(cond, n)[i]) for n, t in item.items())
    n = data.draw(st.integers(1, 3))
    rep = cond.repeat_batch(n)
    assert rep.batch_size == batch * n and _equal(rep[n * (batch - 1) : n * (batch - 1) + 1], cond[batch - 1 :])


@SETTINGS
@given(spec=_NON_EMPTY, batch=st.integers(1, 5), data=st.data())
def test_where_picks_per_item(spec: ConditioningSpec, batch: int, data: st.DataObject) -> None:
    a = data.draw(lks.conditionings(spec, batch, (2, 2), max_tokens=1))
    b = data.draw(lks.conditionings(spec, batch, (2, 2), max_tokens=1))
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
    out = a.where(mask, b)
    for i in range(batch):
        expected = b if bool(mask[i]) else a
        assert _equal(out[i : i + 1], expected[i : i + 1])
    assert _equal(a.where(torch.zeros(batch, dtype=torch.bool), b), a)
    assert _equal(a.where(torch.ones(batch, dtype=torch.bool), b), b)


@SETTINGS
@given(dim=st.integers(1, 8), s1=lks.conditioning_specs(), s2=lks.conditioning_specs(), data=st.data())
def test_join_spec_is_the_merged_spec(dim: int, s1: ConditioningSpec, s2: ConditioningSpec,
                                      data: st.DataObject) -> None:
    # Same cross-attention width on both sides (tokens are joined along L).
    s1 = ConditioningSpec(crossattn_dim=dim if s1.crossattn_dim else None,
                          concat_channels=s1.concat_channels, vector_dim=s1.vector_dim)
    s2 = ConditioningSpec(crossattn_dim=dim if s2.crossattn_dim else None,
                          concat_channels=s2.concat_channels, vector_dim=s2.vector_dim)
    a = data.draw(lks.conditionings(s1, 2, (3,)))
    b = data.draw(lks.conditionings(s2, 2, (3,)))
    joined = a.join(b)
    assert joined.spec == s1.merge(s2)
    if a.crossattn is not None and b.crossattn is not None:
        assert joined.crossattn.shape[1] == a.crossattn.shape[1] + b.crossattn.shape[1]
        assert torch.equal(joined.crossattn[:, : a.crossattn.shape[1]], a.crossattn)


@SETTINGS
@given(d1=st.integers(1, 8), d2=st.integers(1, 8))
def test_join_refuses_different_crossattn_widths(d1: int, d2: int) -> None:
    a = Conditioning(crossattn=torch.zeros(1, 2, d1))
    b = Conditioning(crossattn=torch.zeros(1, 3, d2))
    if d1 == d2:
        assert a.join(b).crossattn.shape == (1, 5, d1)
    else:
        with pytest.raises(SpecError, match=rf"\b{d1}\b.*\b{d2}\b"):
            a.join(b)


def test_cat_refuses_different_entries() -> None:
    with pytest.raises(ShapeError):
        Conditioning.cat([Conditioning(vector=torch.zeros(1, 2)), Conditioning(crossattn=torch.zeros(1, 1, 2))])


# =========================================================================== composition


class SpecDenoiser(Denoiser):
    """Declares what it accepts; never runs (composition is checked before any forward)."""

    supported_layouts = tuple(LAYOUTS)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        raise AssertionError("validate_composition must not run a forward pass")


class SpecConditioner(Conditioner):
    """Declares what it produces; never runs."""

    def forward(self, batch: Mapping[str, Any]) -> Conditioning:
        raise AssertionError("validate_composition must not run a forward pass")

    def null(self, batch: Mapping[str, Any]) -> Conditioning:
        raise AssertionError("validate_composition must not run a forward pass")

    def example_batch(self, batch_size: int, *, latent_size: Sequence[int] | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        return {}


def _parts(latent_channels: int, layout: str, produced: ConditioningSpec, *, in_channels: int,
           out_channels: int, layouts: Sequence[str], crossattn_dim: int | None,
           vector_dim: int | None) -> tuple[Any, Any, Any]:
    ae = IdentityAutoencoder(channels=latent_channels, layout=layout)
    ae.latentkit_name = ("autoencoder", "ae_under_test")
    den = SpecDenoiser(in_channels=in_channels, out_channels=out_channels, layouts=layouts,
                       crossattn_dim=crossattn_dim, vector_dim=vector_dim)
    den.latentkit_name = ("denoiser", "den_under_test")
    cond = SpecConditioner(output_spec=produced, input_keys=())
    cond.latentkit_name = ("conditioner", "cond_under_test")
    return ae, den, cond


def _same_rank_layouts(layout: str) -> tuple[str, ...]:
    return tuple(lay for lay in LAYOUTS if LAYOUTS[lay] == LAYOUTS[layout])


@SETTINGS
@given(channels=st.integers(1, 8), layout=lks.layouts(), produced=lks.conditioning_specs())
def test_matching_parts_never_raise(channels: int, layout: str, produced: ConditioningSpec) -> None:
    ae, den, cond = _parts(channels, layout, produced, in_channels=channels + produced.concat_channels,
                           out_channels=channels, layouts=_same_rank_layouts(layout),
                           crossattn_dim=produced.crossattn_dim, vector_dim=produced.vector_dim)
    latentkit.validate_composition(ae, den, cond)


def _names_both(message: str, first: str, second: str, a: int, b: int) -> None:
    assert first in message and second in message, message
    assert re.search(rf"\b{a}\b", message) and re.search(rf"\b{b}\b", message), message


@SETTINGS
@given(
    channels=st.integers(1, 8),
    layout=lks.layouts(),
    produced=lks.conditioning_specs(crossattn=True, vector=True),
    kind=st.sampled_from(["in_channels", "out_channels", "crossattn_dim", "vector_dim"]),
    delta=st.integers(1, 5) | st.integers(-5, -1),
)
def test_any_channel_or_width_mismatch_raises_naming_both_parts_and_numbers(
    channels: int, layout: str, produced: ConditioningSpec, kind: str, delta: int
) -> None:
    fit = {
        "in_channels": channels + produced.concat_channels,
        "out_channels": channels,
        "crossattn_dim": produced.crossattn_dim,
        "vector_dim": produced.vector_dim,
    }
    wrong = dict(fit)
    wrong[kind] = fit[kind] + delta
    if kind == "out_channels":
        wrong["in_channels"] = wrong["out_channels"] + produced.concat_channels  # a valid denoiser
    if wrong[kind] < 1 or wrong["in_channels"] < wrong["out_channels"]:
        return  # not a constructible denoiser
    ae, den, cond = _parts(channels, layout, produced, layouts=_same_rank_layouts(layout), **wrong)
    with pytest.raises(CompositionError) as info:
        latentkit.validate_composition(ae, den, cond)
    message = str(info.value)
    if kind == "in_channels":
        _names_both(message, "ae_under_test", "den_under_test", channels + produced.concat_channels,
                    wrong["in_channels"])
        assert "cond_under_test" in message
    elif kind == "out_channels":
        _names_both(message, "den_under_test", "ae_under_test", wrong["out_channels"], channels)
    else:
        _names_both(message, "cond_under_test", "den_under_test", fit[kind], wrong[kind])


@SETTINGS
@given(channels=st.integers(1, 4), produced=lks.conditioning_specs(),
       entry=st.sampled_from(["crossattn_dim", "vector_dim"]), width=st.integers(1, 8))
def test_entry_produced_but_not_accepted_or_missing_raises(channels: int, produced: ConditioningSpec,
                                                         entry: str, width: int) -> None:
    accepted = {"crossattn_dim": produced.crossattn_dim, "vector_dim": produced.vector_dim}
    accepted[entry] = None if accepted[entry] is not None else width
    ae, den, cond = _parts(channels, "CHW", produced, in_channels=channels + produced.concat_channels,
                           out_channels=channels, layouts=("CHW",), **accepted)
    with pytest.raises(CompositionError) as info:
        latentkit.validate_composition(ae, den, cond)
    message = str(info.value)
    assert "den_under_test" in message and "cond_under_test" in message
    number = getattr(produced, entry) if accepted[entry] is None else width
    assert re.search(rf"\b{number}\b", message), message


@SETTINGS
@given(channels=st.integers(1, 4), layout=lks.layouts(), other=lks.layouts())
def test_layout_mismatch_raises_naming_both_layouts(channels: int, layout: str, other: str) -> None:
    den_layouts = _same_rank_layouts(other)
    ae, den, cond = _parts(channels, layout, ConditioningSpec(), in_channels=channels,
                           out_channels=channels, layouts=den_layouts, crossattn_dim=None, vector_dim=None)
    if layout in den_layouts:
        latentkit.validate_composition(ae, den, cond)
        return
    with pytest.raises(CompositionError) as info:
        latentkit.validate_composition(ae, den, cond)
    message = str(info.value)
    assert "ae_under_test" in message and "den_under_test" in message
    assert repr(layout) in message and all(lay in message for lay in den_layouts)


# =========================================================================== batch keys


@pytest.mark.parametrize(("layout", "key"), [("CHW", "image"), ("CTHW", "video"), ("CDHW", "volume"),
                                             ("CL", "signal")])
def test_the_data_key_of_a_layout_comes_from_one_table(layout: str, key: str) -> None:
    from conftest import LogLinearSchedule, TinyDenoiser
    from latentkit.interfaces import Dataset
    from latentkit.specs import DATA_KEYS

    assert set(DATA_KEYS) == set(LAYOUTS) and DATA_KEYS[layout] == key
    assert DataSpec(channels=2, layout=layout).data_key == key
    model = latentkit.LatentDiffusion(IdentityAutoencoder(2, layout), TinyDenoiser(2, 2, layout=layout),
                                      schedule=LogLinearSchedule())
    assert model.data_key == key

    class Items(Dataset):
        def __len__(self) -> int:
            return 0

        def __getitem__(self, index: int) -> dict[str, Any]:
            raise IndexError(index)

    assert Items(DataSpec(channels=2, layout=layout)).data_key == key

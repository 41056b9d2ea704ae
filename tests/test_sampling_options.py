"""SamplingOptions: one frozen, validated object for LatentDiffusion's sampling options, equal
to the keyword calls it replaces."""

from __future__ import annotations

import inspect
import math
from typing import Any

import attrs
import pytest
import torch

from conftest import (
    EulerStandIn,
    LabelConditioner,
    LogLinearSchedule,
    PoolAutoencoder,
    TinyDenoiser,
)
from latentkit import LatentDiffusion
from latentkit.diffusion import SamplingOptions

EULER = EulerStandIn()
LABELS = {"label": torch.tensor([1, 2, 3])}

pytestmark = pytest.mark.usefixtures("single_thread")


def _model(conditioner: Any = None) -> LatentDiffusion:
    torch.manual_seed(0)
    ae = PoolAutoencoder()
    spec = conditioner.output_spec if conditioner is not None else None
    den = TinyDenoiser(3, 3, crossattn_dim=spec.crossattn_dim if spec else None,
                       vector_dim=spec.vector_dim if spec else None)
    return LatentDiffusion(ae, den, conditioner, schedule=LogLinearSchedule())


def test_defaults_are_those_of_the_keyword_api() -> None:
    assert attrs.asdict(SamplingOptions(), recurse=False) == {
        "sampler": "euler", "steps": 20, "spacing": None, "sigmas": None, "guidance_scale": 1.0,
        "guidance_rescale": 0.0, "guidance_interval": None, "rescale_space": None, "negative": None,
        "uncond": None, "dynamic_threshold": None, "seed": None, "generator": None,
        "latent_size": None, "noise": None, "callback": None, "return_latents": False, "clamp": True,
        "compile": False,
    }


def test_samples_are_clamped_to_the_data_range_unless_asked_not_to() -> None:
    """One contract for Python and the command line: decoded samples lie in the autoencoder's
    value range; clamp=False gives the decoder's raw output."""
    model = _model(LabelConditioner(dim=8))
    noise = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 50  # overshoots
    raw = model.sample(LABELS, sampler=EULER, steps=1, noise=noise, latent_size=(4, 4), clamp=False)
    lo, hi = model.autoencoder.data_spec.value_range
    assert float(raw.min()) < lo and float(raw.max()) > hi  # the comparison below is not vacuous
    clamped = model.sample(LABELS, sampler=EULER, steps=1, noise=noise, latent_size=(4, 4))
    torch.testing.assert_close(clamped, raw.clamp(lo, hi), rtol=0, atol=0)


def test_keyword_calls_and_options_give_bit_identical_samples() -> None:
    model = _model(LabelConditioner(dim=8))
    kw: dict[str, Any] = dict(sampler=EULER, steps=3, guidance_scale=2.0, guidance_rescale=0.5,
                              guidance_interval=(0.1, 30.0), seed=7, latent_size=(4, 4))
    by_keyword = model.sample(LABELS, **kw)
    options = SamplingOptions(**kw)
    torch.testing.assert_close(model.sample(LABELS, options), by_keyword, rtol=0, atol=0)
    torch.testing.assert_close(model.sample(LABELS, options=options), by_keyword, rtol=0, atol=0)
    # the registered default sampler, by name, and every other default
    defaults = model.sample(LABELS, seed=1, latent_size=(4, 4), steps=2)
    torch.testing.assert_close(
        model.sample(LABELS, SamplingOptions(seed=1, latent_size=(4, 4), steps=2)), defaults, rtol=0, atol=0
    )


def test_keyword_overrides_win_over_the_options_object() -> None:
    model = _model(LabelConditioner(dim=8))
    options = SamplingOptions(sampler=EULER, steps=3, guidance_scale=2.0, seed=1, latent_size=(4, 4))
    overridden = model.sample(LABELS, options, seed=2, guidance_scale=3.0)
    expected = model.sample(LABELS, sampler=EULER, steps=3, guidance_scale=3.0, seed=2, latent_size=(4, 4))
    torch.testing.assert_close(overridden, expected, rtol=0, atol=0)
    assert not torch.allclose(overridden, model.sample(LABELS, options))
    assert (options.seed, options.guidance_scale) == (1, 2.0)  # frozen: the object is unchanged
    assert options.replace(seed=2) == SamplingOptions(sampler=EULER, steps=3, guidance_scale=2.0,
                                                      seed=2, latent_size=(4, 4))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        options.steps = 4  # type: ignore[misc]


def test_an_unknown_keyword_is_a_type_error_naming_it_and_the_options() -> None:
    model = _model(LabelConditioner(dim=8))
    with pytest.raises(TypeError, match=r"sample\(\).*'stpes'.*did you mean 'steps'\?") as info:
        model.sample(LABELS, stpes=3, latent_size=(4, 4))
    assert all(name in str(info.value) for name in ("guidance_scale", "return_latents", "seed"))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with pytest.raises(TypeError, match=r"img2img\(\).*'guidance'.*did you mean 'guidance_scale'"):
        model.img2img(x, 0.5, batch={"label": torch.tensor([0, 1])}, guidance=2.0)
    with pytest.raises(TypeError, match=r"inpaint\(\).*'colour'"):
        model.inpaint(x, torch.ones(2, 1, 8, 8), colour=1)
    with pytest.raises(TypeError, match=r"options must be a SamplingOptions, got dict"):
        model.sample(LABELS, {"steps": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("steps", 0, "a positive int"),
        ("steps", 2.5, "a positive int"),
        ("steps", True, "a positive int"),
        ("guidance_scale", math.nan, "a finite number"),
        ("guidance_scale", "7", "a finite number"),
        ("guidance_rescale", 1.5, r"a number in \[0, 1\]"),
        ("guidance_interval", (5.0, 1.0), r"\(sigma_lo, sigma_hi\)"),
        ("dynamic_threshold", 0.0, r"a percentile in \(0, 1\]"),
        ("rescale_space", "vv", "a parameterization name"),
        ("latent_size", (4, 0), "a sequence of positive ints"),
        ("sigmas", [1.0, math.inf, 0.0], "a 1-D sequence of finite noise levels"),
        ("seed", "0", "an int"),
        ("sampler", 3, "a registered sampler's name or a Sampler"),
        ("callback", "print", "a callable"),
        ("return_latents", "yes", "a bool"),
    ],
)
def test_invalid_values_raise_at_construction_naming_the_option(option: str, value: Any, expected: str) -> None:
    with pytest.raises((ValueError, TypeError), match=rf"SamplingOptions\.{option}: expected {expected}"):
        SamplingOptions(**{option: value})
    model = _model()
    with pytest.raises((ValueError, TypeError), match=rf"SamplingOptions\.{option}: expected {expected}"):
        model.sample(2, **{"latent_size": (4, 4), option: value})


def test_found_value_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"SamplingOptions\.steps: expected a positive int, got 0"):
        SamplingOptions(steps=0)
    with pytest.raises(ValueError, match=r"SamplingOptions\.guidance_scale: expected a finite number, got nan"):
        SamplingOptions(guidance_scale=math.nan)


def test_img2img_inpaint_and_super_resolve_accept_options() -> None:
    model = _model()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    kw: dict[str, Any] = dict(sampler=EULER, steps=4, seed=3)
    options = SamplingOptions(**kw)
    torch.testing.assert_close(model.img2img(x, 0.6, options=options), model.img2img(x, 0.6, **kw),
                               rtol=0, atol=0)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 4:] = 1.0
    torch.testing.assert_close(model.inpaint(x, mask, options=options), model.inpaint(x, mask, **kw),
                               rtol=0, atol=0)
    torch.testing.assert_close(model.inpaint(x, mask, options=options, seed=4),
                               model.inpaint(x, mask, **{**kw, "seed": 4}), rtol=0, atol=0)
    latents = model.img2img(x, 0.6, options=options, return_latents=True)
    assert latents.shape == (2, 3, 4, 4)


def test_signatures_list_the_options_for_keyword_filtering_callers() -> None:
    names = [f.name for f in attrs.fields(SamplingOptions)]
    model = _model()
    for method in (model.sample, model.img2img, model.inpaint, model.super_resolve):
        params = inspect.signature(method).parameters
        assert "options" in params and all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names)
        assert params["steps"].default == 20 and params["sampler"].default == "euler"
    # what a caller that keeps only the keywords in the signature (as the trainer's sample grid
    # does) passes on still reaches the sampler
    wanted = {"sampler": EULER, "steps": 2, "seed": 0, "latent_size": (4, 4), "not_an_option": 1}
    accepted = set(inspect.signature(model.sample).parameters)
    out = model.sample(2, **{k: v for k, v in wanted.items() if k in accepted})
    torch.testing.assert_close(out, model.sample(2, sampler=EULER, steps=2, seed=0, latent_size=(4, 4)))

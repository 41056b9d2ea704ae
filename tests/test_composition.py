"""Each kind of composition mismatch raises CompositionError naming both components and both
numbers, before any forward pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import latentkit
from latentkit import CompositionError, Conditioning, ConditioningSpec, validate_composition
from latentkit.interfaces import Conditioner, Denoiser


class NoForwardDenoiser(Denoiser):
    """Declares a spec; calling it fails the test (the check must not run the model)."""

    supported_layouts = ("CL", "CHW", "CTHW", "CDHW")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        raise AssertionError("validate_composition ran a forward pass")


class NoForwardConditioner(Conditioner):
    def forward(self, batch: Any) -> Conditioning:
        raise AssertionError("validate_composition ran a forward pass")

    null = forward

    def example_batch(self, batch_size: int, **kwargs: Any) -> dict[str, Any]:
        return {}


def denoiser(**kw: Any) -> NoForwardDenoiser:
    kw.setdefault("layouts", ("CHW",))
    return NoForwardDenoiser(**kw)


def conditioner(**spec: Any) -> NoForwardConditioner:
    return NoForwardConditioner(output_spec=ConditioningSpec(**spec), input_keys=())


@pytest.fixture
def ae() -> latentkit.Autoencoder:
    return latentkit.create("autoencoder", "identity", channels=4)


def test_matching_parts_pass(ae: latentkit.Autoencoder) -> None:
    validate_composition(
        ae,
        denoiser(in_channels=5, out_channels=4, crossattn_dim=8, vector_dim=6),
        conditioner(crossattn_dim=8, concat_channels=1, vector_dim=6),
    )


@pytest.mark.parametrize(
    ("den", "cond", "fragments"),
    [
        # latent + concat != denoiser input channels
        (dict(in_channels=6, out_channels=4), dict(concat_channels=1),
         ["latent channels (4)", "concat channels (1)", "= 5", "takes 6 input channels"]),
        # output channels != latent channels
        (dict(in_channels=3, out_channels=3), dict(),
         ["outputs 3 channels", "latents have 4 channels"]),
        # context width mismatch
        (dict(in_channels=4, out_channels=4, crossattn_dim=16), dict(crossattn_dim=8),
         ["context width of 8", "expects 16"]),
        # context produced but not accepted
        (dict(in_channels=4, out_channels=4), dict(crossattn_dim=8),
         ["context width of 8", "takes no crossattn input"]),
        # context expected but not produced
        (dict(in_channels=4, out_channels=4, crossattn_dim=8), dict(),
         ["expects a cross-attention context width of 8", "produces none"]),
        # vector width mismatch
        (dict(in_channels=4, out_channels=4, vector_dim=12), dict(vector_dim=10),
         ["vector width of 10", "expects 12"]),
        # layout mismatch
        (dict(in_channels=4, out_channels=4, layouts=("CTHW", "CDHW")), dict(),
         ["'CHW' latents", "['CTHW', 'CDHW']"]),
    ],
)
def test_each_mismatch_names_both_parts_and_numbers(
    ae: latentkit.Autoencoder, den: dict[str, Any], cond: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(CompositionError) as err:
        validate_composition(ae, denoiser(**den), conditioner(**cond))
    message = str(err.value)
    assert "autoencoder 'identity' (IdentityAutoencoder)" in message or "NoForwardDenoiser" in message
    assert "NoForwardDenoiser" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_all_mismatches_are_reported_at_once(ae: latentkit.Autoencoder) -> None:
    with pytest.raises(CompositionError) as err:
        validate_composition(ae, denoiser(in_channels=9, out_channels=3, vector_dim=2), conditioner())
    assert str(err.value).count("\n  - ") == 3


def test_no_conditioner_is_an_empty_spec(ae: latentkit.Autoencoder) -> None:
    validate_composition(ae, denoiser(in_channels=4, out_channels=4))
    with pytest.raises(CompositionError, match="no conditioner produces none"):
        validate_composition(ae, denoiser(in_channels=4, out_channels=4, vector_dim=3))

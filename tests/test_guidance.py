"""Guidance wrappers against hand-computed values; CFG batching."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import CallCounter, LabelConditioner, LogLinearSchedule, TinyDenoiser
from latentkit.diffusion import (
    ClassifierFreeGuidance,
    DynamicThresholding,
    ParameterizedDenoiser,
    dynamic_threshold,
    rescale_guidance,
)
from latentkit.specs import Conditioning

pytestmark = pytest.mark.usefixtures("single_thread")


class VectorEcho:
    """denoise(x, sigma, cond) = cond.vector broadcast over space; counts calls."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, x: torch.Tensor, sigma: Any, cond: Conditioning | None = None, **_: Any) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        assert cond is not None and cond.vector is not None
        return torch.zeros_like(x) + cond.vector[:, :, None, None]


def _conds(b: int = 2) -> tuple[Conditioning, Conditioning]:
    return Conditioning(vector=torch.full((b, 3), 2.0)), Conditioning(vector=torch.full((b, 3), 0.5))


def test_cfg_hand_computed_in_one_batched_call() -> None:
    echo = VectorEcho()
    cond, uncond = _conds()
    out = ClassifierFreeGuidance(echo, 3.0)(torch.zeros(2, 3, 4, 4), torch.tensor(1.0), cond=cond, uncond=uncond)
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 0.5 + 3.0 * (2.0 - 0.5)))
    assert echo.batch_sizes == [4]


def test_guidance_interval() -> None:
    echo = VectorEcho()
    cond, uncond = _conds()
    cfg = ClassifierFreeGuidance(echo, 3.0, interval=(1.0, 5.0))
    x = torch.zeros(2, 3, 4, 4)
    # outside: the conditional prediction, from a conditional pass only
    torch.testing.assert_close(cfg(x, torch.tensor(10.0), cond=cond, uncond=uncond), torch.full_like(x, 2.0))
    assert echo.batch_sizes == [2]
    # inside (interval ends included)
    torch.testing.assert_close(cfg(x, torch.tensor(5.0), cond=cond, uncond=uncond), torch.full_like(x, 5.0))
    # per item: one outside, one inside
    out = cfg(x, torch.tensor([10.0, 2.0]), cond=cond, uncond=uncond)
    torch.testing.assert_close(out[0], torch.full_like(x[0], 2.0))
    torch.testing.assert_close(out[1], torch.full_like(x[1], 5.0))
    assert echo.batch_sizes == [2, 4, 4]


def test_rescale_hand_computed() -> None:
    cond = torch.tensor([[[1.0, 3.0]]])  # std sqrt(2)
    guided = torch.tensor([[[0.0, 4.0]]])  # std sqrt(8): ratio 1/2 -> [0, 2]
    torch.testing.assert_close(rescale_guidance(guided, cond, 1.0), torch.tensor([[[0.0, 2.0]]]))
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.5), torch.tensor([[[0.0, 3.0]]]))
    assert rescale_guidance(guided, cond, 0.0) is guided


def test_rescale_in_the_wrapper_acts_in_the_chosen_space() -> None:
    def denoise(x: torch.Tensor, sigma: Any, cond: Conditioning | None = None, **_: Any) -> torch.Tensor:
        assert cond is not None and cond.vector is not None
        return x * cond.vector[:, :1, None, None]  # predictions with a spread

    x = torch.linspace(-1, 1, 2 * 3 * 16).reshape(2, 3, 4, 4)
    cond, uncond = _conds()
    out = ClassifierFreeGuidance(denoise, 3.0, rescale=0.7, rescale_space="x0")(
        x, torch.tensor(1.0), cond=cond, uncond=uncond
    )
    d_c, d_u = 2.0 * x, 0.5 * x
    guided = d_u + 3.0 * (d_c - d_u)  # = 5 x, std 5 std(x); cond std 2 std(x)
    torch.testing.assert_close(out, 0.7 * guided * (2.0 / 5.0) + 0.3 * guided)


def test_dynamic_threshold_hand_computed() -> None:
    x = torch.tensor([[0.5, 2.0, -3.0, 0.1]])
    torch.testing.assert_close(dynamic_threshold(x, 1.0), torch.tensor([[0.5 / 3, 2.0 / 3, -1.0, 0.1 / 3]]))
    # 25th percentile of |x| is 0.4 < 1: s = 1, a plain clamp to [-1, 1]
    torch.testing.assert_close(dynamic_threshold(x, 0.25), torch.tensor([[0.5, 1.0, -1.0, 0.1]]))
    # a value range (0, 1): centred at 0.5 with half-width 0.5
    y = torch.tensor([[0.5, 2.0]])
    torch.testing.assert_close(dynamic_threshold(y, 1.0, (0.0, 1.0)), torch.tensor([[0.5, 1.0]]))
    wrapped = DynamicThresholding(lambda x, sigma, **_: x, 1.0)
    torch.testing.assert_close(wrapped(x, 1.0), dynamic_threshold(x, 1.0))


def test_cfg_at_scale_one_is_the_conditional_prediction_in_one_call() -> None:
    torch.manual_seed(0)
    conditioner = LabelConditioner(dim=8)
    backbone = CallCounter(TinyDenoiser(3, 3, crossattn_dim=8, vector_dim=8))
    model = ParameterizedDenoiser(backbone, LogLinearSchedule(), "eps")
    batch = {"label": torch.tensor([1, 3])}
    cond, uncond = conditioner(batch), conditioner.null(batch)
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([2.0, 0.5])
    with torch.no_grad():
        expected = model.denoise(x, sigma, cond=cond)
        backbone.batch_sizes.clear()
        out = ClassifierFreeGuidance(model.denoise, 1.0)(x, sigma, cond=cond, uncond=uncond)
        assert backbone.batch_sizes == [4]
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # and the unconditional half really is unconditional: scale 0 gives it
        uncond_pred = model.denoise(x, sigma, cond=uncond)
        torch.testing.assert_close(ClassifierFreeGuidance(model.denoise, 0.0)(x, sigma, cond=cond, uncond=uncond),
                                   uncond_pred, atol=1e-5, rtol=1e-5)


def test_cfg_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFreeGuidance(VectorEcho(), 2.0, rescale=1.5)
    with pytest.raises(ValueError, match="interval"):
        ClassifierFreeGuidance(VectorEcho(), 2.0, interval=(5.0, 1.0))
    cond, _ = _conds()
    with pytest.raises(ValueError, match="uncond"):
        ClassifierFreeGuidance(VectorEcho(), 2.0)(torch.zeros(2, 3, 4, 4), 1.0, cond=cond)

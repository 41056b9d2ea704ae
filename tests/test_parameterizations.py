"""Parameterizations: closed-form scalings, exact-target round trips, peer-library targets."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import LogLinearSchedule
from latentkit.diffusion import (
    PARAMETERIZATIONS,
    ParameterizedDenoiser,
    get_parameterization,
)
from latentkit.errors import ShapeError
from latentkit.interfaces import Denoiser
from latentkit.specs import Conditioning

SIGMAS = torch.tensor([0.01, 0.3, 1.0, 4.0, 80.0], dtype=torch.float64)

pytestmark = pytest.mark.usefixtures("single_thread")


def exact_target(name: str, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, sd: float) -> torch.Tensor:
    """The published target of each parameterization, written out independently."""
    s = sigma.view(-1, 1, 1, 1)
    if name == "eps":
        return eps
    if name in ("x0", "flow_x0"):
        return x0
    if name == "flow":  # rectified flow's velocity (Liu et al. 2023; Esser et al. 2024, Eq. 1)
        return eps - x0
    if name == "v":  # Salimans & Ho 2022: v = alpha eps - sigma_vp x0 (sigma_data = 1)
        alpha, sigma_vp = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)
        return alpha * eps - sigma_vp * x0
    # EDM, Karras et al. 2022 Eq. 8 with Table 1's c_skip and c_out
    x = x0 + s * eps
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / torch.sqrt(s**2 + sd**2)
    return (x0 - c_skip * x) / c_out


class OracleBackbone(Denoiser):
    """Returns the exact target for the stored (x0, eps, sigma); records its inputs."""

    def __init__(self, name: str, x0: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, sd: float) -> None:
        super().__init__(in_channels=x0.shape[1], out_channels=x0.shape[1], layouts=["CHW"])
        self.target = exact_target(name, x0, eps, sigma, sd)
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        self.inputs.append((x, t))
        return self.target


@pytest.mark.parametrize("name", sorted(PARAMETERIZATIONS))
def test_exact_target_gives_true_x0(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(SIGMAS), 2, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    schedule = LogLinearSchedule(sigma_data=0.5)
    sd = 0.5 if name == "edm" else 1.0
    backbone = OracleBackbone(name, x0, eps, SIGMAS, sd)
    model = ParameterizedDenoiser(backbone, schedule, name)
    assert model.parameterization.sigma_data == sd  # edm takes the schedule's sigma_data
    x = x0 + SIGMAS.view(-1, 1, 1, 1) * eps
    denoised = model.denoise(x, SIGMAS)
    torch.testing.assert_close(denoised, x0, rtol=1e-9, atol=1e-9)
    # The backbone saw c_in * x with c_in = 1 / sqrt(sigma^2 + sd^2) (the flow state
    # (1 - t) x0 + t eps, t = sigma / (1 + sigma), for the flow ones), and c_noise.
    seen_x, seen_t = backbone.inputs[-1]
    if name.startswith("flow"):
        t = (SIGMAS / (1 + SIGMAS)).view(-1, 1, 1, 1)
        torch.testing.assert_close(seen_x, (1 - t) * x0 + t * eps)
    else:
        torch.testing.assert_close(seen_x, x / torch.sqrt(SIGMAS**2 + sd**2).view(-1, 1, 1, 1))
    torch.testing.assert_close(seen_t.double(), 0.25 * SIGMAS.log(), rtol=1e-6, atol=1e-6)
    # target() is the published target and from_x0 inverts to_x0.
    p = model.parameterization
    torch.testing.assert_close(p.target(x0, x, SIGMAS), backbone.target, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.to_x0(p.from_x0(x0, x, SIGMAS), x, SIGMAS), x0)


@pytest.mark.parametrize("name", ["eps", "v"])
def test_vp_parameterizations_match_diffusers(name: str) -> None:
    """c_in * x is DDPM's x_t, and the targets equal diffusers' noise / get_velocity."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                    prediction_type="v_prediction" if name == "v" else "epsilon")
    timesteps = torch.tensor([0, 250, 500, 999])
    abar = sched.alphas_cumprod[timesteps].double()
    sigma = torch.sqrt((1 - abar) / abar)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    p = get_parameterization(name)
    x_t = sched.add_noise(x0, eps, timesteps)
    torch.testing.assert_close(x * p.c_in(sigma).view(-1, 1, 1, 1), x_t.double(), rtol=1e-6, atol=1e-6)
    expected = sched.get_velocity(x0, eps, timesteps) if name == "v" else eps
    torch.testing.assert_close(p.target(x0, x, sigma), expected.double(), rtol=1e-6, atol=1e-6)


def test_edm_scalings_at_known_points() -> None:
    """Table 1 of Karras et al. 2022 at sigma = sigma_data: c_skip = 1/2, c_out = sd/sqrt 2."""
    p = get_parameterization("edm", sigma_data=0.5)
    s = torch.tensor([0.5])
    assert p.c_skip(s).item() == pytest.approx(0.5)
    assert p.c_out(s).item() == pytest.approx(0.5 / math.sqrt(2))
    assert p.c_in(s).item() == pytest.approx(1 / math.sqrt(0.5))
    assert p.c_noise(torch.tensor([math.e**4]), LogLinearSchedule()).item() == pytest.approx(1.0)


def test_vp_noise_input_comes_from_schedule() -> None:
    class Schedule10(LogLinearSchedule):
        def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
            return 10 * sigma

    for name in ("eps", "v", "x0"):
        assert get_parameterization(name).c_noise(torch.tensor([2.0]), Schedule10()).item() == 20.0


def test_unknown_parameterization_lists_names() -> None:
    with pytest.raises(KeyError, match="eps, flow, flow_x0, v, x0") as info:
        get_parameterization("epsilon")
    assert "edm" in str(info.value)


def test_bad_sigma_shape_is_a_shape_error() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 2, 4, 4, generator=gen, dtype=torch.float64)
    model = ParameterizedDenoiser(OracleBackbone("eps", x0, x0, torch.ones(2), 1.0), LogLinearSchedule())
    with pytest.raises(ShapeError, match=r"shape \(2,\)"):
        model.denoise(x0, torch.ones(3))

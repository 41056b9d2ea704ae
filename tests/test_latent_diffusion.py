"""LatentDiffusion: composition at construction, training, sampling, img2img, inpainting,
super-resolution."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import latentkit
from conftest import (
    CallCounter,
    EulerStandIn,
    LabelConditioner,
    LogLinearSchedule,
    LowResConditioner,
    MaskConcatConditioner,
    PoolAutoencoder,
    TinyDenoiser,
)
from latentkit import CompositionError, LatentDiffusion
from latentkit.autoencoders.identity import IdentityAutoencoder
from latentkit.diffusion import downsample_mask, get_parameterization
from latentkit.errors import UnknownComponentError
from latentkit.interfaces import Denoiser
from latentkit.plugins import PluginManager, get_plugin_manager, reset_plugin_manager
from latentkit.testing.gaussian import GaussianData

EULER = EulerStandIn()

pytestmark = pytest.mark.usefixtures("single_thread")


def _model(ae: Any = None, conditioner: Any = None, parameterization: str = "eps", **kw: Any) -> LatentDiffusion:
    torch.manual_seed(0)
    ae = ae if ae is not None else PoolAutoencoder()
    spec = conditioner.output_spec if conditioner is not None else None
    den = TinyDenoiser(
        ae.latent_spec.channels + (spec.concat_channels if spec else 0), ae.latent_spec.channels,
        crossattn_dim=spec.crossattn_dim if spec else None, vector_dim=spec.vector_dim if spec else None,
        layout=ae.latent_spec.layout,
    )
    return LatentDiffusion(ae, den, conditioner, schedule=kw.pop("schedule", LogLinearSchedule()),
                           parameterization=parameterization, **kw)


def test_mismatch_is_a_composition_error_before_any_forward_pass() -> None:
    den = CallCounter(TinyDenoiser(4, 4))
    with pytest.raises(CompositionError, match=r"latent channels \(3\)"):
        LatentDiffusion(IdentityAutoencoder(3), den, schedule=LogLinearSchedule())
    cond = LabelConditioner(dim=8)
    with pytest.raises(CompositionError, match="cross-attention context width of 8"):
        LatentDiffusion(IdentityAutoencoder(3), TinyDenoiser(3, 3, crossattn_dim=16, vector_dim=8), cond,
                        schedule=LogLinearSchedule())
    assert den.batch_sizes == []


def test_construction_binds_freezes_and_keeps_one_copy_of_the_backbone() -> None:
    ae = PoolAutoencoder()
    cond = MaskConcatConditioner(latent_channels=3)
    model = _model(ae, cond)
    assert cond.autoencoder is ae
    assert not ae.weight.requires_grad and not ae.training
    model.train()
    assert not ae.training and model.denoiser.training
    keys = list(model.state_dict())
    assert any(k.startswith("denoiser.") for k in keys)
    assert len(keys) == len(set(keys)) and not any(k.startswith("parameterized") for k in keys)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.denoiser.parameters()}


def test_schedule_by_registered_name() -> None:
    model = _model(schedule="linear")
    assert type(model.schedule).__name__ == "LinearSchedule"
    assert torch.isfinite(model.loss({"image": torch.rand(2, 3, 8, 8)})).item()


def test_loss_trains_only_the_denoiser_and_cached_latents_agree() -> None:
    model = _model(conditioner=LabelConditioner(dim=8))
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 2])
    loss = model.loss({"image": x, "label": labels}, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.autoencoder.weight.grad is None
    assert all(p.grad is not None for p in model.denoiser.parameters())
    assert model.conditioner.embedding.weight.grad is not None  # trainable conditioner
    raw = model.autoencoder.encode(x).mode()
    cached = model.loss({"latents": raw, "label": labels}, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cached, loss)
    total, terms = model.loss({"image": x, "label": labels}, return_terms=True)
    assert set(terms) == {"loss", "mse_target", "mse_x0", "sigma"} and terms["loss"] == pytest.approx(total.item())
    with pytest.raises(KeyError, match="'image'"):
        model.loss({"label": labels})


class ExactGaussianBackbone(Denoiser):
    """The edm-parameterized backbone whose denoiser is GaussianData's exact one."""

    def __init__(self, data: GaussianData) -> None:
        super().__init__(in_channels=data.channels, out_channels=data.channels, layouts=["CL"])
        self.data = data
        self.p = get_parameterization("edm", sigma_data=0.5)

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        sigma = torch.exp(4 * t)  # c_noise = ln(sigma) / 4
        x = x_in * torch.sqrt(sigma**2 + 0.25).view(-1, 1, 1)  # undo c_in
        return self.p.from_x0(self.data.denoise(x, sigma).float(), x, sigma)


def test_tiny_model_learns_gaussian_data() -> None:
    """Pixel-space (identity) 1-D model on N(mu, s^2) data: training closes most of the gap
    between the initial held-out loss and the loss of the exact (Bayes-optimal) denoiser."""
    gauss = GaussianData(mean=[0.5, -0.3], std=[0.2, 0.4])
    model = _model(IdentityAutoencoder(2, layout="CL"), parameterization="edm", loss_weighting="edm")
    exact = LatentDiffusion(IdentityAutoencoder(2, layout="CL"), ExactGaussianBackbone(gauss),
                            schedule=LogLinearSchedule(), parameterization="edm", loss_weighting="edm")

    def data(n: int, seed: int) -> torch.Tensor:
        return gauss.sample((n, 2, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)

    def held_out(m: LatentDiffusion) -> float:
        m.eval()
        with torch.no_grad():
            return sum(float(m.loss({"signal": data(64, 100 + i)}, generator=torch.Generator().manual_seed(i)))
                       for i in range(4)) / 4

    before, optimum = held_out(model), held_out(exact)
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(200):
        opt.zero_grad()
        model.loss({"signal": data(32, step)}, generator=gen).backward()
        opt.step()
    after = held_out(model)
    assert optimum < before
    assert after - optimum < 0.35 * (before - optimum), (before, after, optimum)


def test_sample_shape_callback_and_seed_per_item() -> None:
    model = _model(conditioner=LabelConditioner(dim=8))
    seen: list[dict[str, Any]] = []
    out = model.sample({"label": torch.tensor([1, 2, 3])}, sampler=EULER, steps=3, guidance_scale=2.0,
                       guidance_rescale=0.5, seed=7, latent_size=(4, 4), callback=seen.append)
    assert out.shape == (3, 3, 8, 8) and torch.isfinite(out).all()
    assert [d["i"] for d in seen] == [0, 1, 2]
    assert set(seen[0]) >= {"i", "x", "sigma", "sigma_next", "denoised"}
    one = model.sample({"label": torch.tensor([1])}, sampler=EULER, steps=3, guidance_scale=2.0,
                       guidance_rescale=0.5, seed=7, latent_size=(4, 4))
    torch.testing.assert_close(one[0], out[0], atol=1e-5, rtol=1e-5)
    negative = model.sample({"label": torch.tensor([1])}, sampler=EULER, steps=3, guidance_scale=2.0,
                            negative={"label": torch.tensor([4])}, seed=7, latent_size=(4, 4))
    assert not torch.allclose(negative, one)


def test_sample_errors_are_clear() -> None:
    model = _model(conditioner=LabelConditioner(dim=8))
    with pytest.raises(KeyError, match="label"):
        model.sample(2, sampler=EULER, steps=2, latent_size=(4, 4))
    with pytest.raises(ValueError, match="latent_size"):
        model.sample({"label": torch.tensor([1])}, sampler=EULER, steps=2)
    with pytest.raises(ValueError, match="pixel-space"):
        model.sample({"label": torch.tensor([1])}, sampler=EULER, steps=2, latent_size=(4, 4),
                     dynamic_threshold=0.99)


def test_dynamic_thresholding_keeps_pixel_samples_in_range() -> None:
    model = _model(IdentityAutoencoder(3))
    out = model.sample(2, sampler=EULER, steps=4, latent_size=(8, 8), seed=0, dynamic_threshold=0.9)
    assert out.abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize("ae", [PoolAutoencoder(), IdentityAutoencoder(3)], ids=["pool", "identity"])
def test_img2img_strength_zero_is_the_reconstruction(ae: Any) -> None:
    model = _model(ae)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = model.img2img(x, 0.0, sampler=EULER, steps=5, seed=0)
    torch.testing.assert_close(out, model.reconstruct(x), atol=1e-6, rtol=1e-6)
    partial = model.img2img(x, 0.6, sampler=EULER, steps=5, seed=0)
    assert partial.shape == x.shape and not torch.allclose(partial, out, atol=1e-3)


@pytest.mark.parametrize("ae", [PoolAutoencoder(), IdentityAutoencoder(3)], ids=["pool", "identity"])
def test_inpainting_keeps_the_known_region(ae: Any) -> None:
    model = _model(ae)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :, 4:] = 1.0  # generate the right half; latent cells align with it
    out = model.inpaint(x, mask, sampler=EULER, steps=4, seed=0)
    recon = model.reconstruct(x)
    torch.testing.assert_close(out[..., :4], recon[..., :4], atol=1e-5, rtol=1e-5)
    assert (out[..., 4:] - recon[..., 4:]).abs().mean() > 0.05


def test_inpainting_with_concat_conditioning() -> None:
    cond = MaskConcatConditioner(latent_channels=3)
    model = _model(PoolAutoencoder(), cond)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    out = model.inpaint(x, mask, sampler=EULER, steps=2, seed=0, guidance_scale=2.0)
    assert out.shape == x.shape
    seen = cond.seen[-1]
    torch.testing.assert_close(seen["mask"], mask)
    torch.testing.assert_close(seen["masked_image"], x * (1 - mask))
    torch.testing.assert_close(out[..., :2], model.reconstruct(x)[..., :2], atol=1e-5, rtol=1e-5)


def test_downsample_mask_marks_cells_with_any_pixel_to_generate() -> None:
    mask = torch.zeros(1, 1, 4, 6)
    mask[0, 0, 1, 3] = 1.0
    small = downsample_mask(mask, (2, 3))
    assert small.shape == (1, 1, 2, 2)
    assert small.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


def test_super_resolution_through_low_res_concat() -> None:
    model = _model(PoolAutoencoder(), LowResConditioner(scale=2))
    out = model.super_resolve(torch.rand(2, 3, 4, 4), sampler=EULER, steps=2, seed=0)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="low_res"):
        _model().super_resolve(torch.rand(2, 3, 4, 4), sampler=EULER, steps=2)


def test_guided_sampling_makes_one_batched_call_per_step_and_honours_the_interval() -> None:
    cond = LabelConditioner(dim=8)
    model = _model(conditioner=cond)
    counter = CallCounter(model.denoiser)
    guided = LatentDiffusion(model.autoencoder, counter, cond, schedule=model.schedule)
    batch = {"label": torch.tensor([0, 1, 2])}
    guided.sample(batch, sampler=EULER, steps=4, guidance_scale=3.0, latent_size=(4, 4), seed=0)
    assert counter.batch_sizes == [6, 6, 6, 6]
    counter.batch_sizes.clear()
    sigmas = model.schedule.sigmas(4)  # 20, 2, 0.2, 0.02, 0: guided at 2 and 0.2 only
    guided.sample(batch, sampler=EULER, sigmas=sigmas, guidance_scale=3.0, latent_size=(4, 4),
                  guidance_interval=(0.1, 5.0), seed=0)
    assert counter.batch_sizes == [3, 6, 6, 3]
    counter.batch_sizes.clear()
    guided.sample(batch, sampler=EULER, steps=2, guidance_scale=1.0, latent_size=(4, 4), seed=0)
    assert counter.batch_sizes == [3, 3]  # scale 1: no unconditional pass at all


def test_deepcopy_keeps_one_backbone() -> None:
    import copy

    model = _model()
    clone = copy.deepcopy(model)
    assert clone.parameterized.backbone is clone.denoiser
    assert clone.denoiser is not model.denoiser


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m_sde"])
def test_registered_stochastic_samplers_are_per_item_seeded_and_keep_the_known_region(sampler: str) -> None:
    model = _model(IdentityAutoencoder(3), conditioner=LabelConditioner(dim=8))
    three = model.sample({"label": torch.tensor([1, 2, 3])}, sampler=sampler, steps=4, seed=5,
                         guidance_scale=2.0, latent_size=(8, 8))
    one = model.sample({"label": torch.tensor([1])}, sampler=sampler, steps=4, seed=5,
                       guidance_scale=2.0, latent_size=(8, 8))
    torch.testing.assert_close(one[0], three[0], atol=1e-5, rtol=1e-5)
    other = model.sample({"label": torch.tensor([1])}, sampler=sampler, steps=4, seed=6,
                         guidance_scale=2.0, latent_size=(8, 8))
    assert not torch.allclose(other, one)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 3:6, :] = 1.0
    out = model.inpaint(x, mask, batch={"label": torch.tensor([0, 4])}, sampler=sampler, steps=4, seed=0)
    keep = (mask == 0).expand_as(x)
    torch.testing.assert_close(out[keep], x[keep], atol=1e-5, rtol=1e-5)


def test_super_resolution_and_inpainting_with_the_registered_concat_conditioner() -> None:
    import latentkit

    sr = _model(PoolAutoencoder(), latentkit.create("conditioner", "concat", inputs="super_resolution"))
    out = sr.super_resolve(torch.rand(2, 3, 4, 4), sampler="euler", steps=2, seed=0)
    assert out.shape == (2, 3, 16, 16)  # low_res x4 = data size; latent 8x8 from the concat
    inpainting = latentkit.create("conditioner", "concat", inputs="inpainting", latent_channels=3)
    model = _model(PoolAutoencoder(), inpainting)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 4:, :] = 1.0
    out = model.inpaint(x, mask, sampler="euler", steps=2, seed=0, guidance_scale=2.0)
    torch.testing.assert_close(out[..., :4, :], model.reconstruct(x)[..., :4, :], atol=1e-5, rtol=1e-5)


class _StepRecorder:
    """An in-test plugin that records every ``latentkit_sampling_step`` it receives."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    @latentkit.hookimpl
    def latentkit_sampling_step(self, info: dict[str, Any]) -> None:
        self.steps.append((int(info["i"]), int(info["total"])))


class _LocalParts:
    """An in-test plugin with a sampler and a schedule that the process-wide manager lacks."""

    @latentkit.hookimpl
    def latentkit_register_samplers(self, registry: Any) -> None:
        registry.add("test_local_euler", EulerStandIn, summary="Euler stand-in of one manager only")

    @latentkit.hookimpl
    def latentkit_register_schedules(self, registry: Any) -> None:
        registry.add("test_local_loglinear", LogLinearSchedule, summary="log-linear stand-in")


def test_a_model_samples_through_its_own_plugin_manager() -> None:
    import copy

    local, process_wide_recorder = _StepRecorder(), _StepRecorder()
    manager = PluginManager(autoload=False)
    manager.register(_LocalParts(), "local_parts")
    manager.register(local, "local_recorder")
    plain = _model()  # no manager: the process-wide one, looked up when needed
    previous = get_plugin_manager()
    process_wide = reset_plugin_manager(PluginManager(autoload=False))
    try:
        process_wide.register(process_wide_recorder, "process_wide_recorder")
        with pytest.raises(UnknownComponentError):
            process_wide.get("sampler", "test_local_euler")
        model = _model(schedule="test_local_loglinear", plugin_manager=manager)
        assert model.plugin_manager is manager and type(model.schedule) is LogLinearSchedule
        out = model.sample(2, sampler="test_local_euler", steps=3, seed=0, latent_size=(4, 4))
        assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
        assert local.steps == [(0, 3), (1, 3), (2, 3)]
        assert process_wide_recorder.steps == []
        # kept out of the module tree and the state dict; copies share the manager
        assert list(model.state_dict()) == list(plain.state_dict())
        assert [name for name, _ in model.named_modules()] == [name for name, _ in plain.named_modules()]
        assert copy.deepcopy(model).plugin_manager is manager
        assert plain.plugin_manager is process_wide
        plain.sample(2, sampler=EULER, steps=2, seed=0, latent_size=(4, 4))
        assert process_wide_recorder.steps == [(0, 2), (1, 2)] and local.steps == [(0, 3), (1, 3), (2, 3)]
        with pytest.raises(UnknownComponentError, match="test_local_euler"):
            plain.sample(2, sampler="test_local_euler", steps=2, latent_size=(4, 4))
        with pytest.raises(TypeError, match=r"plugin_manager must be a latentkit\.plugins\.PluginManager"):
            _model(plugin_manager=object())
    finally:
        reset_plugin_manager(previous)

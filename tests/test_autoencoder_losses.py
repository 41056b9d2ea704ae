"""Training losses of the first stage: terms, adaptive GAN weight, discriminator schedule,
GAN loss closed forms, the N-d discriminator and the perceptual loss."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

import latentkit
from latentkit.autoencoders import KL_TINY_CONFIG, VQ_TINY_CONFIG
from latentkit.autoencoders.losses import (
    AutoencoderTrainingLoss,
    NLayerDiscriminator,
    PerceptualLoss,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # tiny convolutions run faster on one thread than on contended ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _kl(**kw: object) -> torch.nn.Module:
    return latentkit.create("autoencoder", "kl", **{**KL_TINY_CONFIG, **kw})


def _small_disc(model: torch.nn.Module, **kw: object) -> AutoencoderTrainingLoss:
    return AutoencoderTrainingLoss(model, disc_channels=8, disc_num_layers=2, **kw)  # type: ignore[arg-type]


def test_terms_before_disc_start() -> None:
    model = _kl()
    loss = _small_disc(model, kl_weight=1e-3, disc_start=10)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = loss.loss(x, 0, global_step=0, generator=torch.Generator().manual_seed(0))
    ref = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    rec = (x - ref.reconstruction).abs().mean().detach()
    assert out.logs["rec_loss"] == pytest.approx(float(rec), rel=1e-5)
    assert out.logs["kl_loss"] == pytest.approx(float(ref.regularization.detach()), rel=1e-5)
    assert out.logs["g_loss"] == 0.0 and out.logs["disc_factor"] == 0.0
    assert float(out.loss.detach()) == pytest.approx(float(rec) + 1e-3 * float(ref.regularization.detach()), rel=1e-5)
    d = loss.loss(x, 1, global_step=0, output=out.output)
    assert float(d.loss.detach()) == 0.0
    d.loss.backward()  # a zero loss the trainer can still call backward on
    assert all(p.grad is None for p in loss.parameters_for(1))


def test_l2_reconstruction() -> None:
    model = _kl()
    loss = _small_disc(model, reconstruction="l2", disc_start=10)
    x = torch.randn(2, 3, 8, 8)
    out = loss.loss(x, 0, 0, generator=torch.Generator().manual_seed(0))
    ref = model.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert out.logs["rec_loss"] == pytest.approx(float((x - ref.reconstruction).pow(2).mean().detach()), rel=1e-5)


def test_adaptive_weight_is_ratio_of_gradient_norms() -> None:
    w = torch.randn(4, 3, requires_grad=True)
    a = (w**2).sum()  # grad 2w
    b = (3 * w).sum()  # grad 3
    got = adaptive_weight(a, b, w)
    expected = torch.linalg.vector_norm(2 * w.detach()) / (torch.linalg.vector_norm(torch.full((4, 3), 3.0)) + 1e-4)
    torch.testing.assert_close(got, expected)
    assert not got.requires_grad


def test_gan_term_after_disc_start_uses_adaptive_weight() -> None:
    model = _kl()
    loss = _small_disc(model, disc_start=5, disc_weight=0.5, kl_weight=0.0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = loss.loss(x, 0, global_step=5)
    logs = out.logs
    assert logs["disc_factor"] == 1.0 and logs["d_weight"] > 0
    expected = logs["nll_loss"] + logs["d_weight"] * logs["g_loss"]
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    out.loss.backward()
    assert model.last_layer().grad is not None
    assert all(p.grad is None for p in loss.parameters_for(1)), "G step must not train D"
    d = loss.loss(x, 1, global_step=5, output=out.output)
    assert {"disc_loss", "logits_real", "logits_fake"} <= set(d.logs)
    d.loss.backward()
    assert all(p.grad is not None for p in loss.parameters_for(1))


def test_gan_loss_closed_forms() -> None:
    real, fake = torch.full((4,), 2.0), torch.full((4,), -3.0)
    assert float(discriminator_loss(real, fake, "hinge")) == 0.0  # both beyond the margins
    zeros = torch.zeros(5)
    assert float(discriminator_loss(zeros, zeros, "hinge")) == pytest.approx(1.0)
    assert float(discriminator_loss(zeros, zeros, "non_saturating")) == pytest.approx(math.log(2))
    assert float(generator_loss(fake, "hinge")) == pytest.approx(3.0)
    assert float(generator_loss(zeros, "non_saturating")) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="hinge"):
        discriminator_loss(zeros, zeros, "wgan")


@pytest.mark.parametrize(
    ("ndim", "shape", "time_axis"),
    [(1, (2, 3, 64), False), (2, (2, 3, 32, 32), False), (3, (2, 3, 2, 32, 32), True), (3, (2, 3, 16, 16, 16), False)],
)
def test_discriminator_every_rank(ndim: int, shape: tuple[int, ...], time_axis: bool) -> None:
    disc = NLayerDiscriminator(ndim, 3, base_channels=8, num_layers=2, time_axis=time_axis)
    logits = disc(torch.randn(shape))
    assert logits.shape[:2] == (2, 1) and logits.ndim == len(shape)
    if time_axis:
        assert logits.shape[2] == shape[2]  # time is not subsampled


def test_vq_loss_uses_codebook_weight_and_reports_usage() -> None:
    model = latentkit.create("autoencoder", "vq", **VQ_TINY_CONFIG)
    loss = _small_disc(model, codebook_weight=2.0, disc_start=10)
    x = torch.randn(2, 3, 8, 8)
    out = loss.loss(x, 0, 0)
    assert {"codebook_loss", "perplexity", "usage", "rec_loss"} <= set(out.logs)
    expected = out.logs["rec_loss"] + 2.0 * out.logs["codebook_loss"]
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_video_loss_runs_frame_wise_model() -> None:
    model = _kl(layout="CTHW")
    loss = _small_disc(model, disc_start=0)
    x = torch.randn(1, 3, 2, 16, 16)
    out = loss.loss({"video": x}, 0, 1)
    out.loss.backward()
    assert loss.loss({"video": x}, 1, 1, output=out.output).loss.requires_grad


# --------------------------------------------------------------------------- perceptual


@pytest.fixture()
def timm_weights(tmp_path: object) -> object:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    net = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.safetensors"  # type: ignore[operator]
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_perceptual_loss_with_local_weights(timm_weights: object) -> None:
    perceptual = PerceptualLoss("test_resnet", weights=timm_weights)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(perceptual(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    d = perceptual(x, y)
    assert float(d.detach()) > 0
    d.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in perceptual.net.parameters())
    # it is added to the autoencoder loss and reported
    loss = _small_disc(_kl(), perceptual=perceptual, perceptual_weight=0.5, disc_start=10)
    out = loss.loss(x, 0, 0)
    assert out.logs["nll_loss"] == pytest.approx(out.logs["rec_loss"] + 0.5 * out.logs["perceptual_loss"], rel=1e-5)
    # the config-file route: a timm name and a weights path
    by_name = _small_disc(_kl(), perceptual_backbone="test_resnet", perceptual_weights=str(timm_weights))
    assert by_name.perceptual is not None and "perceptual_loss" in by_name.loss(x, 0, 0).logs


def test_perceptual_loss_needs_weights() -> None:
    with pytest.raises(ValueError, match="weights"):
        PerceptualLoss("test_resnet")
    loss = _small_disc(_kl(), disc_start=10)
    assert loss.perceptual is None and "perceptual_loss" not in loss.loss(torch.randn(1, 3, 8, 8), 0, 0).logs


def test_perceptual_loss_rejects_non_image_layouts(timm_weights: object) -> None:
    perceptual = PerceptualLoss("test_resnet", weights=timm_weights)
    with pytest.raises(ValueError, match="layout"):
        _small_disc(_kl(layout="CL"), perceptual=perceptual)

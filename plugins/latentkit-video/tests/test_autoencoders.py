"""Video autoencoders: the frame-wise adapter and the causal spatio-temporal autoencoder."""

from __future__ import annotations

import latentkit
import pytest
import torch
from latentkit.errors import ShapeError

from latentkit_video.causal import CausalLatentSpec, CausalVideoAutoencoder
from latentkit_video.framewise import FrameWiseAutoencoder
from latentkit_video.plugin import CAUSAL_TINY_CONFIG, FRAMEWISE_TINY_CONFIG


def _causal(ft: int) -> CausalVideoAutoencoder:
    config = {**CAUSAL_TINY_CONFIG, "channel_multipliers": [1, 2, 2], "temporal_downsampling": ft}
    return latentkit.create("autoencoder", "causal_video", **config).eval()


# ----------------------------------------------------------------- frame-wise


def test_framewise_equals_the_image_autoencoder_on_every_frame() -> None:
    ae = latentkit.create("autoencoder", "framewise", **FRAMEWISE_TINY_CONFIG).eval()
    assert ae.latent_spec.layout == "CTHW" and ae.latent_spec.downsampling == (1, 2, 2)
    x = torch.rand(2, 3, 5, 8, 12) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x).mode()
        per_frame = torch.stack([ae.image.encode(x[:, :, t]).mode() for t in range(5)], dim=2)
        torch.testing.assert_close(z, per_frame)
        y = ae.decode(z)
        torch.testing.assert_close(y, torch.stack([ae.image.decode(z[:, :, t]) for t in range(5)], dim=2))
    assert y.shape == x.shape


def test_framewise_identity_is_lossless_and_sampling_is_per_item() -> None:
    ae = latentkit.create("autoencoder", "framewise", image_autoencoder="identity",
                          image_config={"channels": 3})
    x = torch.randn(3, 3, 4, 6, 6)
    torch.testing.assert_close(ae.decode(ae.encode(x).mode()), x)
    kl = latentkit.create("autoencoder", "framewise", **FRAMEWISE_TINY_CONFIG).eval()
    x = torch.rand(3, 3, 2, 4, 4)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    with torch.no_grad():
        batch = kl.encode(x).sample(gens())
        alone = kl.encode(x[1:2]).sample([torch.Generator().manual_seed(2)])
    torch.testing.assert_close(batch[1:2], alone)
    assert not torch.allclose(batch[0], kl.encode(x[:1]).mode())  # it did sample


def test_framewise_refuses_non_image_autoencoders() -> None:
    video = latentkit.create("autoencoder", "identity", channels=3, layout="CTHW")
    with pytest.raises(ValueError, match="CHW"):
        FrameWiseAutoencoder(video)


def test_framewise_statistics_override() -> None:
    ae = latentkit.create("autoencoder", "framewise", image_autoencoder="identity",
                          image_config={"channels": 1}, scaling_factor=2.0, shift_factor=0.5)
    assert (ae.latent_spec.scaling_factor, ae.latent_spec.shift_factor) == (2.0, 0.5)
    x = torch.randn(1, 1, 2, 3, 3)
    torch.testing.assert_close(ae.encode_normalized(x, sample=False), (x - 0.5) * 2.0)


# ----------------------------------------------------------------- causal


@pytest.mark.parametrize("ft", [1, 2, 4])
def test_causal_shapes_follow_one_plus_f_k(ft: int) -> None:
    ae = _causal(ft)
    spec = ae.latent_spec
    assert isinstance(spec, CausalLatentSpec) and spec.downsampling == (ft, 4, 4)
    frames = 1 + 2 * ft
    x = torch.rand(2, 3, frames, 8, 12) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x).mode()
        assert z.shape == (2, 4, 3, 2, 3) == spec.shape(2, spec.latent_size((frames, 8, 12)))
        assert ae.decode(z).shape == x.shape
    assert spec.data_size((3, 2, 3)) == (frames, 8, 12)
    with pytest.raises(ShapeError, match=r"\(T, H, W\)"):
        spec.latent_size((8, 12))
    with pytest.raises(ShapeError, match="positive size"):
        spec.data_size((0, 2, 3))


def test_causal_is_causal_and_a_single_frame_is_an_image() -> None:
    ae = _causal(4)
    x = torch.rand(1, 3, 9, 8, 8) * 2 - 1
    later = x.clone()
    later[:, :, 5:] = torch.rand_like(later[:, :, 5:])  # change frames 5..8 only
    with torch.no_grad():
        z, z_later = ae.encode(x).mode(), ae.encode(later).mode()
        image = ae.encode(x[:, :, :1]).mode()  # a one-frame clip
        # latent frame j covers data frames <= 4 j: frames 0 and 1 (data 0..4) are unchanged
        torch.testing.assert_close(z[:, :, :2], z_later[:, :, :2])
        assert not torch.allclose(z[:, :, 2], z_later[:, :, 2])
        assert image.shape == (1, 4, 1, 2, 2)
        torch.testing.assert_close(image, z[:, :, :1])  # the first frame is encoded alone
        rec = ae.decode(z)
        rec_later = ae.decode(torch.cat([z[:, :, :2], z_later[:, :, 2:]], dim=2))
        torch.testing.assert_close(rec[:, :, :5], rec_later[:, :, :5])  # decoder is causal too


def test_causal_refuses_wrong_frame_counts_with_valid_ones_named() -> None:
    ae = _causal(2)
    with pytest.raises(ShapeError, match=r"1 \+ 2 k.*\[3, 5\]"):
        ae.encode(torch.zeros(1, 3, 4, 8, 8))
    with pytest.raises(ShapeError, match="divisible"):
        ae.encode(torch.zeros(1, 3, 3, 6, 8))
    with pytest.raises(ValueError, match="temporal_downsampling"):
        CausalVideoAutoencoder(channel_multipliers=[1, 2], temporal_downsampling=4)


def test_causal_reconstruct_feeds_the_core_autoencoder_loss() -> None:
    ae = _causal(2).train()
    x = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    out = ae.reconstruct(x, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.reconstruction.shape == x.shape and out.regularization_name == "kl"
    loss = (out.reconstruction - x).abs().mean() + 1e-6 * out.regularization
    loss.backward()
    assert ae.last_layer().grad is not None and ae.encoder.conv_in.conv.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_causal_learns_to_reconstruct() -> None:
    """A few dozen Adam steps on one fixed clip bring the reconstruction error down."""
    torch.manual_seed(0)
    ae = _causal(2).train()
    x = torch.zeros(1, 3, 5, 8, 8) - 1
    x[:, 0, :, 2:6, 2:6] = 1.0
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = ae.reconstruct(x, sample_posterior=False)
        loss = (out.reconstruction - x).pow(2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.2 * first


# ----------------------------------------------------------------- pixel space


def test_framewise_is_pixel_space_exactly_when_the_image_autoencoder_is() -> None:
    from latentkit_video.plugin import VIDEO_UNET_TINY_CONFIG

    pixels = latentkit.create("autoencoder", "framewise", image_autoencoder="identity",
                              image_config={"channels": 3})
    latents = latentkit.create("autoencoder", "framewise", **FRAMEWISE_TINY_CONFIG)
    assert pixels.is_pixel_space and pixels.image.is_pixel_space
    assert not latents.is_pixel_space and not _causal(2).is_pixel_space
    den = latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "in_channels": 3,
                                                          "out_channels": 3})
    model = latentkit.LatentDiffusion(pixels, den)
    assert model.is_pixel_space
    with torch.no_grad():
        out = model.sample(2, sampler="euler", steps=2, seed=0, latent_size=(2, 4, 4), dynamic_threshold=0.9)
    assert out.shape == (2, 3, 2, 4, 4) and out.abs().max() <= 1.0 + 1e-5
    latent_den = latentkit.create("denoiser", "video_unet", **VIDEO_UNET_TINY_CONFIG)
    with pytest.raises(ValueError, match="pixel-space"):
        latentkit.LatentDiffusion(latents, latent_den).sample(1, steps=2, latent_size=(2, 4, 4),
                                                              dynamic_threshold=0.9)

"""Image-to-video (first frame) conditioning and text conditioning of the video UNet."""

from __future__ import annotations

import latentkit
import pytest
import torch
from latentkit.errors import CompositionError

from latentkit_video.conditioners import FirstFrameConditioner, first_frame_batch
from latentkit_video.plugin import CAUSAL_TINY_CONFIG, VIDEO_UNET_TINY_CONFIG


def test_pixel_space_concat_holds_the_first_frame_and_the_mask() -> None:
    cond = latentkit.create("conditioner", "first_frame", latent_channels=3)
    clips = torch.rand(2, 3, 4, 5, 6)
    out = cond({"video": clips}).concat
    assert out.shape == (2, 4, 4, 5, 6)
    torch.testing.assert_close(out[:, :3, 0], clips[:, :, 0])
    assert out[:, :3, 1:].abs().max() == 0
    assert (out[:, 3, 0] == 1).all() and (out[:, 3, 1:] == 0).all()
    assert cond.null({"video": clips}).concat.abs().max() == 0


def test_bound_causal_autoencoder_gives_the_first_latent_frame() -> None:
    ae = latentkit.create("autoencoder", "causal_video", **{**CAUSAL_TINY_CONFIG, "temporal_downsampling": 2}).eval()
    cond = FirstFrameConditioner(latent_channels=4)
    cond.bind(ae)
    clips = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    out = cond({"video": clips}).concat
    z = ae.encode_normalized(clips, sample=False)
    assert out.shape == (1, 5, *z.shape[2:])  # latent size, 3 latent frames
    torch.testing.assert_close(out[:, :4, 0], z[:, :, 0], atol=1e-5, rtol=1e-4)  # frame 0 alone
    batch = first_frame_batch(clips[:, :, 0], frames=5)
    torch.testing.assert_close(cond(batch).concat, out, atol=1e-5, rtol=1e-4)  # only frame 0 is read
    with pytest.raises(CompositionError, match="latent_channels=4"):
        FirstFrameConditioner(latent_channels=3).bind(ae)


def test_image_to_video_model_composes_trains_and_samples() -> None:
    ae = latentkit.create("autoencoder", "framewise", image_autoencoder="identity", image_config={"channels": 3})
    cond = latentkit.create("conditioner", "first_frame", latent_channels=3, dropout=0.2)
    den = latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "in_channels": 7,
                                                        "out_channels": 3})
    model = latentkit.LatentDiffusion(ae, den, cond, "edm", parameterization="edm")
    clips = torch.rand(2, 3, 3, 4, 4) * 2 - 1
    loss = model.loss({"video": clips}, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    loss.backward()
    out = model.sample(first_frame_batch(clips[:, :, 0], frames=3), steps=2, seed=0, guidance_scale=2.0)
    assert out.shape == clips.shape
    bad = latentkit.create("denoiser", "video_unet", **VIDEO_UNET_TINY_CONFIG)
    with pytest.raises(CompositionError, match="concat"):
        latentkit.LatentDiffusion(ae, bad, cond, "edm")


def test_text_and_first_frame_combine_with_any_text_conditioner() -> None:
    combined = latentkit.create("conditioner", "combined", conditioners=[
        {"name": "openclip_text", "config": {"model_name": "tiny", "outputs": ["crossattn"]}},
        {"name": "first_frame", "config": {"latent_channels": 3}},
    ])
    spec = combined.output_spec
    assert spec.crossattn_dim is not None and spec.concat_channels == 4
    ae = latentkit.create("autoencoder", "framewise", image_autoencoder="identity", image_config={"channels": 3})
    den = latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "in_channels": 7,
                                                        "out_channels": 3, "crossattn_dim": spec.crossattn_dim})
    model = latentkit.LatentDiffusion(ae, den, combined, "edm", parameterization="edm")
    clips = torch.rand(2, 3, 2, 4, 4) * 2 - 1
    batch = {"video": clips, "caption": ["a red square moving left", "a red square moving up"]}
    assert torch.isfinite(model.loss(batch))

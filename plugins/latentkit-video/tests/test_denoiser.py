"""The video UNet: identity initialisation from an image UNet, any frame count, temporal
mixing, conditioning."""

from __future__ import annotations

import latentkit
import pytest
import torch
import torch.nn.functional as F
from latentkit.errors import ShapeError
from latentkit.layers import sincos_pos_embed

from latentkit_video.denoiser import TemporalAttention, TemporalLayer, VideoUNet
from latentkit_video.plugin import VIDEO_UNET_TINY_CONFIG

IMAGE = dict(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
             num_heads=2, norm_groups=4)


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def trained_image_unet() -> torch.nn.Module:
    """An image UNet with non-trivial weights (standing in for a trained one), crossattn 6."""
    unet = latentkit.create("denoiser", "unet", in_channels=3, out_channels=3, crossattn_dim=6, **IMAGE)
    _perturb(unet, 1)
    return unet.eval()


def test_from_image_unet_equals_the_image_model_on_every_frame(trained_image_unet) -> None:
    video = VideoUNet.from_image_unet(trained_image_unet, temporal_head_channels=8, norm_groups=4).eval()
    x, t = torch.randn(2, 3, 5, 8, 8), torch.tensor([3.0, 700.0])
    cond = latentkit.Conditioning(crossattn=torch.randn(2, 4, 6))
    with torch.no_grad():
        out = video(x, t, cond)
        frames = [trained_image_unet(x[:, :, i], t, cond) for i in range(5)]
    torch.testing.assert_close(out, torch.stack(frames, dim=2))
    blocks = len(trained_image_unet.input_blocks) + 1 + len(trained_image_unet.output_blocks)
    assert sum(isinstance(m, TemporalLayer) for m in video.modules()) == blocks == 9  # every block
    assert video.image_unet is not trained_image_unet  # a copy: training it leaves the image model


def test_load_image_weights_from_a_latent_diffusion_state_dict(trained_image_unet) -> None:
    video = latentkit.create("denoiser", "video_unet", in_channels=3, out_channels=3, crossattn_dim=6,
                             temporal_head_channels=8, **IMAGE).eval()
    video.load_image_weights({f"denoiser.{k}": v for k, v in trained_image_unet.state_dict().items()})
    x, t = torch.randn(1, 3, 2, 8, 8), torch.tensor([50.0])
    cond = latentkit.Conditioning(crossattn=torch.randn(1, 3, 6))
    with torch.no_grad():
        torch.testing.assert_close(video(x, t, cond)[:, :, 1], trained_image_unet(x[:, :, 1], t, cond))


def test_temporal_layers_mix_frames_and_respect_the_frame_order(trained_image_unet) -> None:
    video = VideoUNet.from_image_unet(trained_image_unet, temporal_head_channels=8, norm_groups=4)
    _perturb(video, 2)  # lift the zero initialisation of the temporal outputs
    video.eval()
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([10.0])
    cond = latentkit.Conditioning(crossattn=torch.randn(1, 2, 6))
    with torch.no_grad():
        base = video(x, t, cond)
        changed = x.clone()
        changed[:, :, 3] += 1.0  # only the last frame changes ...
        out = video(changed, t, cond)
        assert (out[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4  # ... and frame 0 sees it
        # positional embedding: reversing time is not the same as reversing the output
        rev = video(x.flip(2), t, cond).flip(2)
        assert (rev - base).abs().max() > 1e-4


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_any_number_of_frames_and_unaligned_sizes(frames: int) -> None:
    video = latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "channel_mult": [1, 2]})
    assert video.image_unet.size_multiple == 2 and video.size_multiple == 1
    x = torch.randn(2, 4, frames, 5, 7)  # H, W padded to the multiple and cropped back
    with torch.no_grad():
        out = video(x, torch.tensor([1.0, 2.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_temporal_resolutions_selects_where_temporal_layers_go() -> None:
    video = latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "channel_mult": [1, 2],
                                                          "temporal_resolutions": [2]})
    layers = [m for m in video.modules() if isinstance(m, TemporalLayer)]
    assert len(layers) == 4  # the downsample block, the level-2 block, middle, first output block
    with pytest.raises(ValueError, match="match no block"):
        latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "temporal_resolutions": [8]})


def test_concat_and_vector_conditioning_pass_through() -> None:
    video = latentkit.create("denoiser", "video_unet", **{**VIDEO_UNET_TINY_CONFIG, "in_channels": 9,
                                                          "out_channels": 4, "vector_dim": 5})
    assert video.conditioning_spec.concat_channels == 5 and video.conditioning_spec.vector_dim == 5
    x = torch.randn(1, 4, 2, 4, 4)
    cond = latentkit.Conditioning(concat=torch.randn(1, 5, 2, 4, 4), vector=torch.randn(1, 5))
    assert video(x, torch.tensor([1.0]), cond).shape == x.shape
    with pytest.raises(ValueError, match="concat"):
        video(x, torch.tensor([1.0]), latentkit.Conditioning(concat=torch.randn(1, 5, 3, 4, 4),
                                                             vector=torch.randn(1, 5)))


def test_factory_rejects_unknown_and_duplicated_options() -> None:
    with pytest.raises(TypeError, match="bogus"):
        latentkit.create("denoiser", "video_unet", **VIDEO_UNET_TINY_CONFIG, bogus=1)
    with pytest.raises(ValueError, match="both"):
        latentkit.create("denoiser", "video_unet", **VIDEO_UNET_TINY_CONFIG,
                         image_config={"model_channels": 8})
    with pytest.raises(TypeError, match="LDM UNet layout"):
        VideoUNet(latentkit.create("denoiser", "dit", in_channels=4, out_channels=4, hidden_size=24,
                                   depth=1, num_heads=2, patch_size=2, input_size=8))


def test_temporal_conditioning_keeps_the_identity_init_and_reaches_the_temporal_layers(
        trained_image_unet) -> None:
    video = VideoUNet.from_image_unet(trained_image_unet, temporal_head_channels=8, norm_groups=4,
                                      temporal_context=True, temporal_embedding=True).eval()
    x, t = torch.randn(2, 3, 4, 8, 8), torch.tensor([3.0, 700.0])
    cond = latentkit.Conditioning(crossattn=torch.randn(2, 5, 6))
    with torch.no_grad():  # zero-initialised residuals: still the image model on every frame
        frames = [trained_image_unet(x[:, :, i], t, cond) for i in range(4)]
        torch.testing.assert_close(video(x, t, cond), torch.stack(frames, dim=2))
    layer = next(m for m in video.modules() if isinstance(m, TemporalLayer))
    attention = layer.attention
    assert attention is not None and attention.emb_proj is not None and "q_ctx" in attention.blocks[0]
    _perturb(video, 3)
    video.eval()
    h = torch.randn(2 * 4, attention.proj_in.in_features, 3, 3)  # folded (B T, C, H, W)
    context, other = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    emb = torch.randn(2, attention.emb_dim)
    with torch.no_grad():
        base = layer(h, 4, context, emb)
        assert (layer(h, 4, other, emb) - base).abs().max() > 1e-4  # the text changes the motion
        assert (layer(h, 4, context, emb + 1.0) - base).abs().max() > 1e-4  # and the embedding
        # each video attends to its own context only
        swapped = layer(h, 4, torch.cat([context[:1], other[1:]]), emb)
        torch.testing.assert_close(swapped[:4], base[:4])
    with pytest.raises(ShapeError, match="context"):
        layer(h, 4, None, emb)


def test_temporal_conditioning_options_through_the_factory() -> None:
    config = {**VIDEO_UNET_TINY_CONFIG, "channel_mult": [1, 2], "crossattn_dim": 6, "vector_dim": 5,
              "temporal_context": True, "temporal_embedding": True}
    video = latentkit.create("denoiser", "video_unet", **config)
    assert video.temporal_config["temporal_context"] and video.temporal_config["temporal_embedding"]
    x = torch.randn(2, 4, 3, 4, 4)
    t = torch.tensor([1.0, 2.0])
    cond = latentkit.Conditioning(crossattn=torch.randn(2, 7, 6), vector=torch.randn(2, 5))
    out = video(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()  # the new parameters are in the graph
    layer = next(m for m in video.modules() if isinstance(m, TemporalLayer))
    assert layer.attention.proj_out.weight.grad is not None
    off = latentkit.create("denoiser", "video_unet", **{**config, "temporal_context": False,
                                                        "temporal_embedding": False})
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in video.parameters())
    with pytest.raises(ValueError, match="crossattn_dim"):
        latentkit.create("denoiser", "video_unet", **{**config, "crossattn_dim": None})
    with pytest.raises(ValueError, match="need temporal_attention"):
        latentkit.create("denoiser", "video_unet", **{**config, "temporal_attention": False})


def _reference_temporal_attention(attn: TemporalAttention, x: torch.Tensor, context: torch.Tensor,
                                  emb: torch.Tensor) -> torch.Tensor:
    """TemporalAttention written out one pixel sequence at a time, without einops: the tokens
    of pixel (i, j) of video b are its T frames, in order."""
    b, c, t, h, w = x.shape
    heads = attn.heads
    normed = attn.norm(x)
    pos = sincos_pos_embed((t,), c)
    out = torch.empty_like(x)

    def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (Lq, C), (Lk, C)
        split = [z.reshape(z.shape[0], heads, c // heads).transpose(0, 1) for z in (q, k, v)]
        return F.scaled_dot_product_attention(*split).transpose(0, 1).reshape(q.shape[0], c)

    for n in range(b):
        for i in range(h):
            for j in range(w):
                seq = attn.proj_in(normed[n, :, :, i, j].T) + pos + attn.emb_proj(emb[n])  # (T, C)
                for blk in attn.blocks:
                    q, k, v = blk["qkv"](blk["norm1"](seq)).chunk(3, dim=-1)
                    seq = seq + blk["attn_out"](mha(q, k, v))
                    kc, vc = blk["kv_ctx"](context[n]).chunk(2, dim=-1)
                    seq = seq + blk["ctx_out"](mha(blk["q_ctx"](blk["norm_ctx"](seq)), kc, vc))
                    seq = seq + blk["mlp"](blk["norm2"](seq))
                out[n, :, :, i, j] = attn.proj_out(seq).T
    return x + out


def test_temporal_attention_attends_along_time_at_each_pixel() -> None:
    """The (B, C, T, H, W) -> (B H W, T, C) folding puts exactly one pixel's frames on the
    sequence axis: a wrong axis order would attend across pixels or across the batch."""
    attn = TemporalAttention(8, 2, depth=2, norm_groups=4, context_dim=6, emb_dim=5)
    _perturb(attn, 4)
    with torch.no_grad():
        attn.proj_out.weight.normal_(0.0, 0.3)  # lift the zero initialisation
        x, context, emb = torch.randn(2, 8, 5, 3, 4), torch.randn(2, 7, 6), torch.randn(2, 5)
        torch.testing.assert_close(attn(x, context, emb), _reference_temporal_attention(attn, x, context, emb),
                                   rtol=1e-4, atol=1e-5)


def test_the_denoiser_couples_frames_and_its_temporal_layers_learn(trained_image_unet) -> None:
    """Frame 0's output depends on frame 3's input (autograd), never on another video; and
    from the identity initialisation the zero output projections get gradients, so that the
    temporal layers can start to learn (zeroing the input projections too would block this)."""
    video = VideoUNet.from_image_unet(trained_image_unet, temporal_head_channels=8, norm_groups=4,
                                      temporal_context=True, temporal_embedding=True)
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    t, cond = torch.tensor([3.0, 40.0]), latentkit.Conditioning(crossattn=torch.randn(2, 5, 6))
    out = video(x, t, cond)
    out.square().mean().backward()
    temporal = {n: p for n, p in video.named_parameters() if n.startswith("temporal_")}
    zero_out = [n for n in temporal if n.endswith(("proj_out.weight", "out_layers.2.weight"))]
    assert zero_out and all(float(temporal[n].grad.abs().sum()) > 0 for n in zero_out)
    (grad,) = torch.autograd.grad(video(x, t, cond)[0, :, 0].sum(), x)
    assert float(grad[0, :, 1:].abs().sum()) == 0.0  # at initialisation: the image model per frame
    _perturb(video, 5)  # as after some training
    (grad,) = torch.autograd.grad(video(x, t, cond)[0, :, 0].sum(), x)
    assert float(grad[0, :, 3].abs().sum()) > 1e-3 * float(grad[0, :, 0].abs().sum())
    assert float(grad[1].abs().sum()) == 0.0  # the other video of the batch is not seen


def test_frame_and_position_embeddings_keep_the_identity_init(trained_image_unet) -> None:
    video = VideoUNet.from_image_unet(trained_image_unet, temporal_head_channels=8, norm_groups=4,
                                      frame_embedding=True, position_embedding=True).eval()
    assert video.frame_embed is not None and video.position_proj is not None
    x, t = torch.randn(2, 3, 4, 6, 7), torch.tensor([3.0, 700.0])  # 6x7: padded, cropped back
    cond = latentkit.Conditioning(crossattn=torch.randn(2, 5, 6))
    m = video.spatial_multiple
    pad = (0, -7 % m, 0, -6 % m)
    with torch.no_grad():
        frames = [trained_image_unet(F.pad(x[:, :, i], pad), t, cond)[..., :6, :7] for i in range(4)]
        torch.testing.assert_close(video(x, t, cond), torch.stack(frames, dim=2))


def test_frame_embedding_lets_each_frame_depend_on_its_index_and_the_prompt() -> None:
    """With the temporal layers left at identity, identical frames give identical outputs
    unless the frame embedding is on; with it, the difference between frames depends on the
    pooled prompt vector (frame x prompt, what "moving left" needs), and it learns from zero."""
    config = {**VIDEO_UNET_TINY_CONFIG, "channel_mult": [1, 2], "crossattn_dim": 6, "vector_dim": 5}
    torch.manual_seed(0)
    video = latentkit.create("denoiser", "video_unet", **config, frame_embedding=True)
    _perturb(video.image_unet, 8)  # a fresh UNet's zero-initialised ResBlock outputs ignore emb
    frame = torch.randn(1, 4, 1, 4, 4)
    x, t = frame.expand(2, -1, 5, -1, -1).contiguous(), torch.tensor([1.0, 1.0])
    cond = latentkit.Conditioning(crossattn=torch.randn(1, 7, 6).expand(2, -1, -1), vector=torch.randn(2, 5))
    out = video(x, t, cond)
    out.square().mean().backward()
    assert float(video.frame_embed[2].weight.grad.abs().sum()) > 0  # the zero layer gets a gradient
    with torch.no_grad():
        torch.testing.assert_close(out[:, :, 1:], out[:, :, :1].expand(-1, -1, 4, -1, -1))  # zero init
        _perturb(video.frame_embed, 6)
        out = video(x, t, cond)
    change = out[:, :, 1:] - out[:, :, :1]  # frame f minus frame 0
    assert float(change.abs().amax()) > 1e-3
    assert float((change[0] - change[1]).abs().amax()) > 1e-4  # depends on the prompt vector


def test_position_embedding_coordinates_and_gradient(trained_image_unet) -> None:
    coords = VideoUNet._coordinates(3, 5, (4, 8), torch.zeros(1))
    assert coords.shape == (1, 2, 4, 8)
    torch.testing.assert_close(coords[0, 0, 0, :5], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(coords[0, 1, :3, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert float(coords[0, 0, 0, 7]) == 2.5 and float(coords[0, 1, 3, 0]) == 2.0  # padding continues
    assert float(VideoUNet._coordinates(1, 1, (1, 1), torch.zeros(1)).abs().sum()) == 0.0  # one pixel
    video = VideoUNet.from_image_unet(trained_image_unet, temporal_head_channels=8, norm_groups=4,
                                      position_embedding=True)
    x = torch.zeros(1, 3, 2, 8, 8)
    cond = latentkit.Conditioning(crossattn=torch.randn(1, 5, 6))
    video(x, torch.tensor([5.0]), cond).square().mean().backward()
    assert float(video.position_proj.weight.grad.abs().sum()) > 0
    with torch.no_grad():
        before = video(x, torch.tensor([5.0]), cond)
        video.position_proj.weight[:, 0] = 0.5  # the x coordinate only
        after = video(x, torch.tensor([5.0]), cond)
    assert float((after - before).abs().amax()) > 1e-4

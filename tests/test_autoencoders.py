"""Built-in first-stage autoencoders: shapes in every layout, the KL closed form, vector
quantisation, latent statistics, tiling, checkpoints, errors and peer-library parity."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import latentkit
from latentkit.autoencoders import KL_TINY_CONFIG, VQ_TINY_CONFIG
from latentkit.autoencoders.io import (
    from_diffusers_state_dict,
    load_pretrained,
    save_pretrained,
    to_diffusers_state_dict,
)
from latentkit.autoencoders.kl import KL_CONFIGS, KLAutoencoder
from latentkit.autoencoders.tiling import seam_score, tile_grid, tiled_apply
from latentkit.autoencoders.vq import VectorQuantizer
from latentkit.errors import ShapeError
from latentkit.interfaces import DiagonalGaussianDistribution

TINY = {"kl": KL_TINY_CONFIG, "vq": VQ_TINY_CONFIG}
# (layout, data shape for a batch of 2) with every size a multiple of the tiny factor 2.
LAYOUT_SHAPES = {
    "CL": (2, 3, 16),
    "CHW": (2, 3, 12, 16),
    "CTHW": (2, 3, 3, 8, 8),
    "CDHW": (2, 3, 4, 8, 6),
}


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # tiny convolutions run faster on one thread than on contended ones
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, **overrides: object) -> torch.nn.Module:
    return latentkit.create("autoencoder", name, **{**TINY[name], **overrides})


# --------------------------------------------------------------------------- registry, shapes


def test_registered_with_tiny_configs() -> None:
    infos = {i.name: i for i in latentkit.list_components("autoencoder")}
    assert {"identity", "kl", "vq"} <= set(infos)
    for name in ("kl", "vq"):
        model = latentkit.create("autoencoder", name, **infos[name].tiny_config)
        assert set(type(model).supported_layouts) == {"CL", "CHW", "CTHW", "CDHW"}


@pytest.mark.parametrize("name", ["kl", "vq"])
@pytest.mark.parametrize("layout", list(LAYOUT_SHAPES))
def test_shapes_every_layout(name: str, layout: str) -> None:
    model = tiny(name, layout=layout)
    shape = LAYOUT_SHAPES[layout]
    x = torch.randn(shape)
    dist = model.encode(x)
    z = dist.sample(torch.Generator().manual_seed(0))
    spec = model.latent_spec
    assert spec.layout == layout and model.data_spec.layout == layout
    assert z.shape == spec.shape(2, spec.latent_size(shape[2:]))
    assert dist.mode().shape == z.shape
    y = model.decode(z)
    assert y.shape == x.shape
    # normalised round trip through the interface helpers
    zn = model.encode_normalized(x, sample=False)
    assert model.decode_normalized(zn).shape == x.shape
    out = model.reconstruct(x)
    assert out.reconstruction.shape == x.shape and out.regularization.ndim == 0


@pytest.mark.parametrize("temporal", [1, 2, 4])
def test_video_temporal_downsampling(temporal: int) -> None:
    model = tiny("kl", layout="CTHW", channel_multipliers=(1, 1, 2), downsampling=(temporal, 4, 4))
    x = torch.randn(1, 3, 8, 16, 16)
    z = model.encode(x).mode()
    assert z.shape == (1, 4, 8 // temporal, 4, 4)
    assert model.decode(z).shape == x.shape
    assert model.frame_wise is (temporal == 1)


def test_frame_wise_video_is_the_image_model_per_frame() -> None:
    """With temporal factor 1 the video model has the image model's weights and encodes every
    frame independently: its output equals the image model applied frame by frame."""
    image = tiny("kl", layout="CHW").eval()
    video = tiny("kl", layout="CTHW").eval()
    video.load_state_dict(image.state_dict())
    x = torch.randn(2, 3, 3, 8, 8)
    zv = video.encode(x).mode()
    zi = torch.stack([image.encode(x[:, :, t]).mode() for t in range(3)], dim=2)
    torch.testing.assert_close(zv, zi)
    torch.testing.assert_close(video.decode(zv), torch.stack([image.decode(zi[:, :, t]) for t in range(3)], 2))


def test_presets_choose_f() -> None:
    for name, preset in KL_CONFIGS.items():
        f = int(name[1:])
        assert 2 ** (len(preset["channel_multipliers"]) - 1) == f
        model = KLAutoencoder(name, base_channels=8, num_res_blocks=1, norm_num_groups=4)
        assert model.latent_spec.downsampling == (f, f)
        assert model.latent_spec.channels == preset["latent_channels"]


# --------------------------------------------------------------------------- KL


def test_diagonal_gaussian_kl_closed_form() -> None:
    params = torch.randn(3, 8, 4, 5)
    dist = DiagonalGaussianDistribution(params)
    ref = torch.distributions.Normal(dist.mean, dist.std)
    prior = torch.distributions.Normal(torch.zeros_like(dist.mean), torch.ones_like(dist.mean))
    expected = torch.distributions.kl_divergence(ref, prior).sum(dim=(1, 2, 3))
    torch.testing.assert_close(dist.kl(), expected)
    # the sample has the posterior's moments and follows the generator
    many = DiagonalGaussianDistribution(params[:1].expand(4000, -1, -1, -1))
    s = many.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(s.mean(0), dist.mean[0], atol=0.15 * float(dist.std.max()), rtol=0)
    torch.testing.assert_close(
        many.sample(torch.Generator().manual_seed(1)), s
    )


def test_kl_regularization_is_kl_per_data_element() -> None:
    model = tiny("kl")
    x = torch.randn(2, 3, 8, 8)
    out = model.reconstruct(x, sample_posterior=False)
    expected = model.encode(x).kl().mean() / (3 * 8 * 8)
    torch.testing.assert_close(out.regularization, expected)


# --------------------------------------------------------------------------- VQ


def test_vq_nearest_code_and_straight_through_gradient() -> None:
    vq = VectorQuantizer(16, 4).eval()
    z = torch.randn(2, 4, 3, 5, requires_grad=True)
    out = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat, vq.embedding.weight).argmin(1)
    assert torch.equal(out.indices.flatten(), brute)
    # forward value: the code vectors
    torch.testing.assert_close(out.quantized, vq.codes(out.indices))
    # straight-through: d(sum(w * q)) / dz = w
    w = torch.randn_like(out.quantized)
    (grad,) = torch.autograd.grad((out.quantized * w).sum(), z)
    torch.testing.assert_close(grad, w)
    # VQ-VAE Eq. 3: codebook term + beta * commitment term, both the same mse
    mse = (out.quantized.detach() - z.detach()).pow(2).mean()
    torch.testing.assert_close(out.loss, (1 + vq.beta) * mse)


def test_vq_loss_gradients_go_where_vqvae_says() -> None:
    vq = VectorQuantizer(8, 3, beta=0.25)
    z = torch.randn(4, 3, 6, requires_grad=True)
    out = vq(z)
    out.loss.backward()
    q = out.quantized.detach()
    # commitment gradient on z: 2 beta (z - e) / n ; codebook gradient only on used codes
    torch.testing.assert_close(z.grad, 2 * 0.25 * (z.detach() - q) / z.numel())
    used = torch.unique(out.indices)
    grad_rows = vq.embedding.weight.grad.abs().sum(1) > 0
    assert set(torch.nonzero(grad_rows).flatten().tolist()) <= set(used.tolist())


def test_vq_perplexity_and_usage() -> None:
    vq = VectorQuantizer(4, 2).eval()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]))
    uniform = vq.embedding.weight.t().reshape(1, 2, 4).repeat(3, 1, 1)  # each code 3 times
    out = vq(uniform)
    assert math.isclose(float(out.perplexity), 4.0, rel_tol=1e-5) and float(out.usage) == 1.0
    single = torch.zeros(1, 2, 7)
    out = vq(single)
    assert math.isclose(float(out.perplexity), 1.0, rel_tol=1e-5) and float(out.usage) == 0.25


def test_vq_ema_update_moves_codes_to_cluster_means() -> None:
    vq = VectorQuantizer(2, 2, ema=True, decay=0.0, eps=0.0)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
    pts = torch.tensor([[0.1, -0.2], [0.3, 0.0], [4.0, 6.0], [6.0, 5.0], [5.5, 5.5]])
    vq.train()(pts.t().unsqueeze(0))
    expected = torch.stack([pts[:2].mean(0), pts[2:].mean(0)])
    torch.testing.assert_close(vq.embedding.weight, expected)
    assert not vq.embedding.weight.requires_grad  # EMA codebooks are not trained by gradients


def test_vq_dead_codes_restart_at_batch_vectors() -> None:
    vq = VectorQuantizer(8, 2, dead_code_threshold=1.0, decay=0.5)
    with torch.no_grad():
        vq.embedding.weight.fill_(100.0)
        vq.embedding.weight[0] = 0.0
    z = torch.randn(1, 2, 64) * 0.1  # every vector maps to code 0: codes 1..7 are dead
    vq.train()(z, generator=torch.Generator().manual_seed(0))
    batch = z[0].t()
    restarted = vq.embedding.weight[1:].detach()
    for row in restarted:
        assert torch.isclose(batch, row).all(1).any(), "restarted code is not a batch vector"
    out = vq.eval()(z)
    assert float(out.usage) > 1 / 8


def test_vq_quantizer_in_decoder() -> None:
    model = tiny("vq").eval()
    x = torch.randn(2, 3, 8, 8)
    h = model.encode(x).mode()  # pre-quantisation latent
    codes = model.quantize(h)
    assert not torch.allclose(h, codes.quantized)
    torch.testing.assert_close(model.decode(h), model.decode_indices(codes.indices))
    post = tiny("vq", quantize_in_decoder=False).eval()
    post.load_state_dict(model.state_dict())
    zq = post.encode(x).mode()
    torch.testing.assert_close(zq, codes.quantized)
    out = model.reconstruct(x)
    assert {"perplexity", "usage", "codebook_loss"} <= set(out.logs)


# --------------------------------------------------------------------------- latent statistics


@pytest.mark.parametrize("name", ["kl", "vq"])
@pytest.mark.parametrize("shift", [False, True])
def test_latent_statistics_give_unit_std(name: str, shift: bool) -> None:
    model = tiny(name).eval()
    data = 0.5 * torch.randn(48, 3, 8, 8) + 0.3
    stats = model.fit_latent_statistics(data, batch_size=16, shift=shift, generator=torch.Generator().manual_seed(0))
    assert stats.scaling_factor == pytest.approx(1 / stats.std)
    with torch.no_grad():
        zn = model.encode_normalized(data, generator=torch.Generator().manual_seed(5))
    assert abs(float(zn.std()) - 1.0) < 0.05
    if shift:
        assert abs(float(zn.mean())) < 0.05
    sd = model.state_dict()
    assert float(sd["scaling_factor"]) == pytest.approx(stats.scaling_factor)
    assert float(sd["shift_factor"]) == pytest.approx(stats.shift_factor)
    assert model.latent_spec.scaling_factor == pytest.approx(stats.scaling_factor)


# --------------------------------------------------------------------------- tiling


def test_tile_grid_covers_with_overlap() -> None:
    grid = tile_grid(100, 32, 8, multiple=4)
    assert grid[0][0] == 0 and grid[-1][1] == 100
    for (s0, e0), (s1, _e1) in itertools.pairwise(grid):
        assert e0 - s0 == 32 and s1 % 4 == 0 and e0 - s1 >= 8
    assert tile_grid(20, 32, 8) == [(0, 20)]


def test_tiled_apply_is_exact_for_pointwise_maps() -> None:
    x = torch.randn(2, 3, 37, 50)
    y = tiled_apply(lambda t: 2 * t + 1, x, tile_size=(16, 16), overlap=(4, 6), multiple=(1, 1), scale=[(1, 1)] * 2)
    torch.testing.assert_close(y, 2 * x + 1)
    # a pooling "encoder" (factor 2) also matches exactly: tiles align with the factor
    pool = torch.nn.AvgPool2d(2)
    y = tiled_apply(pool, x[..., :36, :50], tile_size=(16, 16), overlap=(4, 4), multiple=(2, 2), scale=[(1, 2)] * 2)
    torch.testing.assert_close(y, pool(x[..., :36, :50]))


def _smooth_image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    low = torch.randn(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def test_seam_score_detects_hard_edges() -> None:
    y = _smooth_image(64)
    assert seam_score(y, [[32], [32]]) < 2.0
    stepped = y.clone()
    stepped[..., 32:] += 0.5  # a tile decoded with an offset: a visible seam at column 32
    assert seam_score(stepped, [[32], [32]]) > 5.0


def test_tiled_encode_decode_agree_away_from_borders_without_seams() -> None:
    """Tiles see their own GroupNorm / attention statistics, so agreement is approximate;
    thresholds are measured on this untrained tiny f4 model (z: 0.21, x: 0.28 relative error
    in the first tile's interior; seam score 1.13 against 1.49 for the untiled output at
    the same lines)."""
    model = tiny("kl", channel_multipliers=(1, 2, 2), attention=True).eval()  # f4
    x = _smooth_image(64).clamp(-1, 1)
    tile, overlap, f = 48, 16, 4
    with torch.no_grad():
        z_full = model.encode(x).mode()
        z_tiled = model.tiled_encode(x, tile_size=tile, overlap=overlap).mode()
        y_full = model.decode(z_full)
        y_tiled = model.tiled_decode(z_full, tile_size=tile, overlap=overlap)
    assert z_tiled.shape == z_full.shape and y_tiled.shape == x.shape

    def rel(a: torch.Tensor, b: torch.Tensor, inner: tuple[slice, ...]) -> float:
        return float((a - b)[inner].abs().mean() / (b[inner] - b[inner].mean()).abs().mean())

    everything = (slice(None), slice(None))
    assert rel(z_tiled, z_full, (*everything, slice(1, 6), slice(1, 6))) < 0.35
    assert rel(y_tiled, y_full, (*everything, slice(4, 24), slice(4, 24))) < 0.45
    bounds = [sorted({p for s, e in tile_grid(64, tile, overlap, f) for p in (s, e)})] * 2
    assert seam_score(y_tiled, bounds) < 1.1 * seam_score(y_full, bounds) + 0.1


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["kl", "vq"])
def test_save_load_restores_exactly(name: str, tmp_path: object) -> None:
    model = tiny(name, layout="CHW")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.set_latent_statistics(0.37, 0.12)
    path = save_pretrained(model, tmp_path / "ckpt")  # type: ignore[operator]
    meta = json.loads((path / "config.json").read_text())
    assert meta["name"] == name and meta["kind"] == "autoencoder"
    assert (path / "model.safetensors").is_file()
    loaded = load_pretrained(path)
    assert type(loaded) is type(model)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(1, 3, 8, 8)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x).mode()), model.decode(model.encode(x).mode()), rtol=0, atol=0)
    assert loaded.latent_spec == model.latent_spec
    again = type(model).from_pretrained(path)
    assert torch.equal(again.scaling_factor, model.scaling_factor)


def test_checkpoint_of_video_model_and_preset(tmp_path: object) -> None:
    model = KLAutoencoder("f4", layout="CTHW", downsampling=(2, 4, 4), base_channels=8, num_res_blocks=1, norm_num_groups=4)
    path = model.save_pretrained(tmp_path / "v")  # type: ignore[operator]
    loaded = KLAutoencoder.from_pretrained(path)
    assert loaded.latent_spec.downsampling == (2, 4, 4) and not loaded.frame_wise
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# --------------------------------------------------------------------------- errors


def test_wrong_channel_count_names_shapes() -> None:
    model = tiny("kl")
    with pytest.raises(ShapeError, match=r"3 channels.*\(2, 4, 8, 8\)"):
        model.encode(torch.randn(2, 4, 8, 8))
    with pytest.raises(ShapeError, match=r"4 channels.*\(2, 3, 4, 4\)"):
        model.decode(torch.randn(2, 3, 4, 4))


def test_indivisible_size_names_nearest_valid_sizes() -> None:
    model = tiny("kl", channel_multipliers=(1, 2, 2))  # f4
    with pytest.raises(ShapeError, match=r"\(10, 16\).*divisible by \(4, 4\).*\(\[8, 12\], \[16, 20\]\)|\(\(8, 12\)"):
        model.encode(torch.randn(1, 3, 10, 16))


def test_wrong_rank_and_bad_configs() -> None:
    model = tiny("kl")
    with pytest.raises(ShapeError, match=r"\(B, C H W\)"):
        model.encode(torch.randn(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        tiny("kl", downsampling=3)
    with pytest.raises(ValueError, match="unknown config"):
        KLAutoencoder("f5")
    with pytest.raises(ValueError, match="layout"):
        tiny("kl", layout="HW")


# --------------------------------------------------------------------------- peer parity


def _diffusers_vae(model: KLAutoencoder):  # type: ignore[no-untyped-def]
    diffusers = pytest.importorskip("diffusers")
    c = model.config
    widths = [c["base_channels"] * m for m in c["channel_multipliers"]]
    return diffusers.AutoencoderKL(
        in_channels=c["channels"],
        out_channels=c["channels"],
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=c["num_res_blocks"],
        latent_channels=c["latent_channels"],
        norm_num_groups=c["norm_num_groups"],
    )


@pytest.mark.parametrize("preset", ["f4", "f8"])
def test_parameter_count_matches_diffusers(preset: str) -> None:
    with torch.device("meta"):
        model = KLAutoencoder(preset, base_channels=16, num_res_blocks=2, norm_num_groups=8)
        ref = _diffusers_vae(model)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_full_size_f8_parameter_count_matches_diffusers() -> None:
    with torch.device("meta"):
        model = KLAutoencoder("f8")
        ref = _diffusers_vae(model)
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert 83_000_000 < n < 84_000_000  # LDM's kl-f8 / SD's VAE: 83.65M


def test_same_weights_same_outputs_as_diffusers() -> None:
    model = KLAutoencoder("f4", base_channels=8, num_res_blocks=1, norm_num_groups=4).eval()
    ref = _diffusers_vae(model).eval()
    ref.load_state_dict(to_diffusers_state_dict(model), strict=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ours = model.encode(x)
        theirs = ref.encode(x).latent_dist
        torch.testing.assert_close(ours.mean, theirs.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.logvar, theirs.logvar, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.decode(ours.mean), ref.decode(theirs.mean).sample, atol=1e-5, rtol=1e-4)
    # and back: diffusers weights load into a fresh model and give the same outputs
    fresh = KLAutoencoder("f4", base_channels=8, num_res_blocks=1, norm_num_groups=4).eval()
    from_diffusers_state_dict(fresh, ref.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(x).mean, ours.mean, rtol=0, atol=0)


# --------------------------------------------------------------------------- atomic saving



def _two_models_of_one_architecture() -> tuple[torch.nn.Module, torch.nn.Module]:
    old, new = tiny("kl", layout="CHW"), tiny("kl", layout="CHW")
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.5)  # so that the two saves are told apart
    return old, new


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_interrupted_while_writing_weights_keeps_previous_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import latentkit.autoencoders.io as ae_io

    old, new = _two_models_of_one_architecture()
    directory = save_pretrained(old, tmp_path / "ckpt")
    real_save_file = ae_io.save_file

    def torn_save_file(tensors: dict[str, torch.Tensor], filename: str, **kwargs: object) -> None:
        real_save_file(tensors, filename, **kwargs)  # type: ignore[arg-type]
        size = Path(filename).stat().st_size
        with open(filename, "r+b") as f:  # the disk fills up halfway through
            f.truncate(size // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ae_io, "save_file", torn_save_file)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(new, directory)
    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    assert _same_weights(load_pretrained(directory), old)


def test_save_interrupted_while_writing_config_leaves_whole_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from latentkit.autoencoders.io import CONFIG_NAME, WEIGHTS_NAME

    old, new = _two_models_of_one_architecture()
    existing = save_pretrained(old, tmp_path / "existing")
    real_write_bytes = Path.write_bytes

    def torn_write_bytes(self: Path, data: bytes) -> int:
        if CONFIG_NAME not in self.name:
            return real_write_bytes(self, data)
        real_write_bytes(self, data[: len(data) // 2])  # half of the JSON, then the crash
        raise OSError(28, "No space left on device")

    def torn_write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        return torn_write_bytes(self, data.encode())

    monkeypatch.setattr(Path, "write_bytes", torn_write_bytes)
    monkeypatch.setattr(Path, "write_text", torn_write_text)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(new, existing)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(new, tmp_path / "fresh")
    monkeypatch.undo()

    # the previous config is whole, next to whole weights: those of the new save, which
    # are written first
    assert sorted(p.name for p in existing.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert _same_weights(load_pretrained(existing), new)
    # a directory never has a config without its weights: the fresh one has no config yet
    fresh = tmp_path / "fresh"
    assert sorted(p.name for p in fresh.iterdir()) == [WEIGHTS_NAME]
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        load_pretrained(fresh)

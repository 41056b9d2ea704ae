"""concat: latent size from the bound autoencoder or the config, identity and encoding
autoencoders, every layout, null inputs, bind checks and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentkit.autoencoders.identity import IdentityAutoencoder
from latentkit.conditioners.concat import ConcatConditioner
from latentkit.errors import CompositionError, ShapeError
from latentkit.interfaces import Autoencoder, DiagonalGaussianDistribution
from latentkit.specs import DataSpec, LatentSpec

INPAINT = [{"key": "mask", "channels": 1}, {"key": "masked_image", "channels": 3, "encode": True}]

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded; on a shared CPU extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)



class PoolingAutoencoder(Autoencoder):
    """Encoding stand-in: 2x average pooling then a 1x1 conv to 4 channels (the mean of a
    Gaussian posterior with unit variance, so sampling instead of the mode would show)."""

    def __init__(self, layout: str = "CHW") -> None:
        super().__init__(
            DataSpec(channels=3, layout=layout),
            LatentSpec(channels=4, layout=layout, downsampling=2, scaling_factor=0.5, shift_factor=0.1),
        )
        self.proj = nn.Linear(3, 4)
        self.n = self.data_spec.spatial_ndim

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        pooled = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[self.n - 1](x, 2)
        return self.proj(pooled.movedim(1, -1)).movedim(-1, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        mean = self.latent(self.check_data(x))
        return DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("not needed by the conditioner")


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_inpainting_with_an_encoding_autoencoder() -> None:
    cond = ConcatConditioner("inpainting", latent_channels=4)
    assert cond.output_spec.concat_channels == 5  # known before bind: 1 + 4
    ae = PoolingAutoencoder()
    cond.bind(ae)
    mask = (rand(2, 1, 16, 16) > 0).float()
    image = rand(2, 3, 16, 16, seed=1)
    masked = image * (1 - mask)
    out = cond({"mask": mask, "masked_image": masked}).concat
    assert out.shape == (2, 5, 8, 8)
    torch.testing.assert_close(out[:, :1], F.interpolate(mask, size=(8, 8), mode="nearest"))
    with torch.no_grad():
        expected = (ae.latent(masked) - 0.1) * 0.5  # normalised posterior mode
    torch.testing.assert_close(out[:, 1:], expected)
    assert out.grad_fn is None  # the first stage is not trained through the conditioner
    # SD inpainting keeps mask + masked image in the unconditional branch
    torch.testing.assert_close(cond.null({"mask": mask, "masked_image": masked}).concat, out)


def test_identity_autoencoder_is_exact_concatenation() -> None:
    cond = ConcatConditioner(INPAINT, latent_channels=3)
    cond.bind(IdentityAutoencoder(3, scaling_factor=2.0))
    mask, masked = (rand(2, 1, 8, 8) > 0).float(), rand(2, 3, 8, 8, seed=1)
    out = cond({"mask": mask, "masked_image": masked}).concat
    torch.testing.assert_close(out, torch.cat([mask, 2.0 * masked], dim=1))


def test_each_input_changes_only_its_channels() -> None:
    cond = ConcatConditioner(INPAINT, latent_channels=4)
    cond.bind(PoolingAutoencoder())
    batch = cond.example_batch(2, latent_size=(4, 4), generator=torch.Generator().manual_seed(0))
    assert batch["mask"].shape == (2, 1, 8, 8) and set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    out = cond(batch).concat
    other_mask = {**batch, "mask": 1 - batch["mask"]}
    diff = (cond(other_mask).concat - out).abs().sum((0, 2, 3))
    assert diff[0] > 0 and diff[1:].sum() == 0
    other_image = {**batch, "masked_image": -batch["masked_image"]}
    diff = (cond(other_image).concat - out).abs().sum((0, 2, 3))
    assert diff[0] == 0 and (diff[1:] > 0).all()


@pytest.mark.parametrize(("layout", "latent"), [("CL", (8,)), ("CHW", (4, 8)), ("CTHW", (4, 4, 8)), ("CDHW", (8, 4, 4))])
def test_super_resolution_in_every_layout(layout: str, latent: tuple[int, ...]) -> None:
    cond = ConcatConditioner("super_resolution", layout=layout)  # low_res at 1/4 of the data
    cond.bind(IdentityAutoencoder(3, layout=layout))
    batch = cond.example_batch(2, latent_size=latent, generator=torch.Generator().manual_seed(0))
    assert batch["low_res"].shape == (2, 3, *(s // 4 for s in latent))
    out = cond(batch).concat
    assert out.shape == (2, 3, *latent)
    const = {"low_res": torch.full_like(batch["low_res"], 0.25)}
    torch.testing.assert_close(cond(const).concat, torch.full_like(out, 0.25))  # linear keeps constants
    # with the encoding autoencoder (f=2) the latent is half the data size
    enc = ConcatConditioner([{"key": "masked_image", "channels": 3, "encode": True}], latent_channels=4)
    enc.bind(PoolingAutoencoder(layout))
    data = rand(2, 3, *(2 * s for s in latent))
    assert enc({"masked_image": data}).concat.shape == (2, 4, *latent)


def test_unbound_uses_downsampling_config() -> None:
    cond = ConcatConditioner([{"key": "mask", "channels": 1}], downsampling=(2, 4))
    out = cond({"mask": torch.ones(1, 1, 8, 16)}).concat
    assert out.shape == (1, 1, 4, 4)
    pixel = ConcatConditioner([{"key": "mask", "channels": 1}])  # default 1: pixel space
    assert pixel({"mask": torch.ones(1, 1, 8, 16)}).concat.shape == (1, 1, 8, 16)
    with pytest.raises(RuntimeError, match="bind"):
        ConcatConditioner(INPAINT, latent_channels=4)(
            {"mask": torch.ones(1, 1, 8, 8), "masked_image": torch.ones(1, 3, 8, 8)}
        )


def test_null_zeros_per_input() -> None:
    cond = ConcatConditioner(
        [{"key": "mask", "channels": 1}, {"key": "low_res", "channels": 2, "null": "zeros"}]
    )
    batch = cond.example_batch(2, latent_size=(4, 4))
    out, null = cond(batch).concat, cond.null(batch).concat
    torch.testing.assert_close(null[:, :1], out[:, :1])
    assert null[:, 1:].abs().sum() == 0 and out[:, 1:].abs().sum() > 0


def test_bind_checks_consistency() -> None:
    with pytest.raises(ValueError, match="latent_channels"):
        ConcatConditioner(INPAINT)
    with pytest.raises(CompositionError, match=r"latent_channels=3.*4 channels"):
        ConcatConditioner(INPAINT, latent_channels=3).bind(PoolingAutoencoder())
    with pytest.raises(CompositionError, match=r"downsampling=\(4, 4\).*\(2, 2\)"):
        ConcatConditioner(INPAINT, latent_channels=4, downsampling=4).bind(PoolingAutoencoder())
    with pytest.raises(CompositionError, match=r"1 channels.*3-channel"):
        ConcatConditioner([{"key": "x", "channels": 1, "encode": True}], latent_channels=4).bind(PoolingAutoencoder())
    with pytest.raises(CompositionError, match="layout 'CL'"):
        ConcatConditioner(INPAINT, latent_channels=4, layout="CL").bind(PoolingAutoencoder())
    with pytest.raises(ValueError, match="unknown preset"):
        ConcatConditioner("outpainting")
    with pytest.raises(ValueError, match="'key' and 'channels'"):
        ConcatConditioner([{"key": "mask"}])


def test_wrong_inputs_are_shape_errors() -> None:
    cond = ConcatConditioner(INPAINT, latent_channels=4)
    cond.bind(PoolingAutoencoder())
    good = {"mask": torch.ones(2, 1, 8, 8), "masked_image": torch.ones(2, 3, 8, 8)}
    with pytest.raises(ShapeError, match="1 channels"):
        cond({**good, "mask": torch.ones(2, 3, 8, 8)})
    with pytest.raises(ShapeError, match="latent sizes"):
        cond({**good, "mask": torch.ones(2, 1, 16, 16)})
    with pytest.raises(ShapeError, match="batch sizes"):
        cond({**good, "mask": torch.ones(3, 1, 8, 8)})
    with pytest.raises(ShapeError, match="not divisible"):
        cond({"mask": torch.ones(2, 1, 7, 7), "masked_image": torch.ones(2, 3, 7, 7)})
    with pytest.raises(ShapeError, match="dims"):
        cond({**good, "mask": torch.ones(2, 1, 8, 8, 8)})
    with pytest.raises(KeyError, match="masked_image"):
        cond({"mask": good["mask"]})

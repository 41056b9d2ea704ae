"""The volume autoencoder and denoisers: presets, shapes, CoordConv, wrong inputs, and a
composed LatentDiffusion model."""

from __future__ import annotations

import latentkit
import pytest
import torch
from latentkit.errors import ShapeError
from latentkit.specs import Conditioning

from latentkit_volume.models import VolumeDiT, VolumeKLAutoencoder, VolumeUNet, coordinate_channels


def test_volume_kl_shapes_and_presets() -> None:
    ae = VolumeKLAutoencoder("tiny")
    assert ae.data_spec.layout == "CDHW" and ae.data_spec.channels == 1
    assert ae.latent_spec.downsampling == (2, 2, 2) and ae.latent_spec.channels == 2
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    z = ae.encode(x).mode()
    assert z.shape == (2, 2, 4, 4, 4)
    assert ae.decode(z).shape == x.shape
    assert ae.reconstruct(x).reconstruction.shape == x.shape
    with pytest.raises(ShapeError):
        ae.encode(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ShapeError):
        ae.encode(torch.zeros(2, 1, 8, 8, 7))
    with pytest.raises(ValueError, match="CDHW"):
        VolumeKLAutoencoder("tiny", layout="CHW")
    with pytest.raises(ValueError, match="preset"):
        VolumeKLAutoencoder("f99")
    f4 = latentkit.create("autoencoder", "volume_kl", preset="f4", base_channels=8, norm_num_groups=4)
    assert f4.latent_spec.downsampling == (4, 4, 4)


def test_coordinate_channels() -> None:
    c = coordinate_channels(2, (2, 4, 4))
    assert c.shape == (2, 3, 2, 4, 4)
    assert c[0, 0, :, 0, 0].tolist() == [-0.5, 0.5]  # D axis
    assert c[0, 2, 0, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]  # W axis


def test_volume_unet_uses_coordinates_and_concat() -> None:
    torch.manual_seed(0)
    net = VolumeUNet("tiny", in_channels=3, out_channels=1, vector_dim=4)
    assert net.net.in_channels == 3 + 3  # concat channels + CoordConv
    assert net.conditioning_spec.concat_channels == 2
    x = torch.randn(2, 1, 8, 8, 8)
    cond = Conditioning(concat=torch.randn(2, 2, 8, 8, 8), vector=torch.randn(2, 4))
    out = net(x, torch.rand(2), cond)
    assert out.shape == x.shape
    plain = VolumeUNet("tiny", coord_channels=False)
    assert plain.net.in_channels == 1
    with pytest.raises(ShapeError):
        net(x, torch.rand(2), Conditioning(vector=torch.randn(2, 4)))  # concat missing


def test_volume_dit_on_patches() -> None:
    net = VolumeDiT("tiny", vector_dim=8, crossattn_dim=16)
    assert net.size_multiple == 2
    out = net(torch.randn(1, 1, 8, 8, 8), torch.rand(1),
              Conditioning(vector=torch.randn(1, 8), crossattn=torch.randn(1, 3, 16)))
    assert out.shape == (1, 1, 8, 8, 8)
    with pytest.raises(ShapeError):
        net(torch.randn(1, 1, 8, 8, 7), torch.rand(1),
            Conditioning(vector=torch.randn(1, 8), crossattn=torch.randn(1, 3, 16)))


def test_composes_into_latent_diffusion_with_the_volume_first_stage() -> None:
    torch.manual_seed(0)
    ae = latentkit.create("autoencoder", "volume_kl", preset="tiny")
    cond = latentkit.create("conditioner", "class_label", num_classes=4, embed_dim=8, outputs="vector")
    den = latentkit.create("denoiser", "volume_unet", preset="tiny", in_channels=2, out_channels=2,
                           vector_dim=8, layout="CDHW")
    model = latentkit.LatentDiffusion(ae, den, cond, "edm", parameterization="edm")
    data = latentkit.create("dataset", "volume_primitives", resolution=8, length=4)
    batch = {"volume": torch.stack([data[i]["volume"] for i in range(4)]),
             "label": torch.tensor([data[i]["label"] for i in range(4)])}
    loss = model.loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    out = model.sample({"label": torch.tensor([0, 3])}, steps=2, latent_size=(4, 4, 4), seed=0)
    assert out.shape == (2, 1, 8, 8, 8)
    with pytest.raises(latentkit.CompositionError):
        bad = latentkit.create("denoiser", "volume_unet", preset="tiny", in_channels=1, out_channels=1,
                               vector_dim=8)
        latentkit.LatentDiffusion(ae, bad, cond, "edm")

"""SDF-aware and occupancy losses, and training a volume autoencoder with the shared trainer."""

from __future__ import annotations

from pathlib import Path

import latentkit
import numpy as np
import pytest
import torch
from latentkit.errors import ShapeError

from latentkit_volume.losses import (
    VolumeAutoencoderLoss,
    eikonal_loss,
    near_surface_weights,
    occupancy_bce_loss,
    sdf_l1_loss,
)
from latentkit_volume.primitives import grid_coordinates, sphere_sdf


def _sphere(n: int = 16, r: float = 5.0, truncation: float = 3.0) -> torch.Tensor:
    d = sphere_sdf(grid_coordinates(n), r)
    return torch.from_numpy(np.clip(d / truncation, -1, 1)).float()[None, None]


def test_near_surface_weights() -> None:
    t = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert near_surface_weights(t, 4.0).tolist() == [1.0, 3.0, 5.0, 3.0, 1.0]


def test_sdf_l1_is_the_weighted_mean_error() -> None:
    target = _sphere()
    assert sdf_l1_loss(target, target).tolist() == [0.0]
    # a constant offset is the same error everywhere, so any weighting gives the offset
    assert sdf_l1_loss(target + 0.1, target).item() == pytest.approx(0.1, rel=1e-5)
    # an error on the surface band costs more than the same error far away
    far = target.abs() >= 1
    near = ~far
    err_near = sdf_l1_loss(target + 0.2 * near, target).item() / near.float().mean().item()
    err_far = sdf_l1_loss(target + 0.2 * far, target).item() / far.float().mean().item()
    assert err_near > 2 * err_far
    with pytest.raises(ShapeError):
        sdf_l1_loss(target, target[:, :, :8])


def test_eikonal_is_zero_for_a_distance_and_grows_when_scaled() -> None:
    target = _sphere(truncation=3.0)
    assert eikonal_loss(target, target, truncation=3.0).item() < 0.01
    # twice the distance has |grad d| = 2: residual (2 - 1)^2 = 1
    assert eikonal_loss(2 * target, target, truncation=3.0).item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError):
        eikonal_loss(target, target, truncation=1.0)
    flat = torch.ones_like(target)
    assert eikonal_loss(flat, flat, truncation=3.0).item() == 0.0  # no band, no term


def test_occupancy_bce() -> None:
    target = torch.where(_sphere() < 0, -1.0, 1.0)
    good = occupancy_bce_loss(target, target).item()
    bad = occupancy_bce_loss(-target, target).item()
    assert good == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-4.0))), rel=1e-5)
    assert bad > 10 * good


def test_volume_autoencoder_trains_with_the_shared_trainer(tmp_path: Path) -> None:
    from latentkit.training import Trainer, TrainingConfig

    torch.manual_seed(0)
    ae = latentkit.create("autoencoder", "volume_kl", preset="tiny")
    model = VolumeAutoencoderLoss(ae, representation="sdf", truncation=2.0)
    # two items, one batch: the trainer sees the same batch every step, so its loss must fall
    data = latentkit.create("dataset", "volume_primitives", resolution=8, length=2, seed=0)
    batch = torch.stack([data[i]["volume"] for i in range(2)])
    with torch.no_grad():
        before, terms = model.loss({"volume": batch}, generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"sdf_l1", "eikonal", "kl"}
    trainer = Trainer(model, data, TrainingConfig(output_dir=str(tmp_path), max_steps=8, batch_size=2,
                                                  lr=1e-2, grad_clip=None, progress=False,
                                                  checkpoint_every=8, log_every=1, device="cpu", seed=0))
    trainer.fit()
    with torch.no_grad():
        after, _ = model.loss({"volume": batch}, generator=torch.Generator().manual_seed(0))
    assert after.item() < 0.8 * before.item()
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"sdf_l1", "eikonal", "kl"} <= set(header)
    occ = VolumeAutoencoderLoss(ae, representation="occupancy")
    _, terms = occ.loss(batch)
    assert set(terms) == {"bce", "kl"}

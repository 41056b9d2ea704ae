"""The first-stage example configs (examples/configs/volume_kl_autoencoder*.toml) load, build
and train one step through latentkit's config reader and shared Trainer; the SDF one names
this plugin's training loss with ``[model] loss = "module:attr"``."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from latentkit.experiment import build_dataset, build_model, load_config
from latentkit.training import Trainer

from latentkit_volume.losses import VolumeAutoencoderLoss
from latentkit_volume.models import VolumeKLAutoencoder

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
NAMES = ["volume_kl_autoencoder", "volume_kl_autoencoder_sdf"]
needs_examples = pytest.mark.skipif(not CONFIGS.is_dir(), reason="needs the latentkit source tree's examples/")


@needs_examples
@pytest.mark.parametrize("name", NAMES)
def test_config_trains_one_step(name: str, tmp_path: Path) -> None:
    config = load_config(CONFIGS / f"{name}.toml")
    model = build_model(config)
    dataset = build_dataset(config, model)
    assert dataset[0]["volume"].shape == (1, 32, 32, 32)
    training = attrs.evolve(config.training, output_dir=str(tmp_path), max_steps=1, batch_size=2,
                            progress=False, device="cpu", checkpoint_every=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = Trainer(model, dataset, training).fit()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list((tmp_path / "checkpoints").iterdir())
    if name == "volume_kl_autoencoder_sdf":  # the SDF-aware terms, not the core L1 + KL
        assert {"sdf_l1", "eikonal", "kl"} <= set(metrics) and "rec_loss" not in metrics


@needs_examples
def test_sdf_config_builds_the_plugin_loss_with_its_keys() -> None:
    config = load_config(CONFIGS / "volume_kl_autoencoder_sdf.toml")
    # the loss is a registered model of this plugin, named by kind (no import string)
    assert config.model.kind == "volume_sdf_autoencoder" and config.model.loss is None
    model = build_model(config)
    assert type(model) is VolumeAutoencoderLoss
    assert (model.representation, model.truncation, model.surface_weight, model.eikonal_weight,
            model.kl_weight) == ("sdf", 2.0, 4.0, 0.1, 1e-6)
    # the loss's truncation is the data's, so the near-surface band is the TSDF's band
    assert model.truncation == config.data.options["truncation"]
    assert isinstance(model.autoencoder, VolumeKLAutoencoder) and model.autoencoder.data_spec.layout == "CDHW"

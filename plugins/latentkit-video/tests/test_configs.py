"""The example TOML configs (examples/configs/video_*.toml) load, build and train one step
through latentkit's config reader and shared Trainer."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from latentkit.experiment import build_dataset, build_model, load_config
from latentkit.training import Trainer

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
NAMES = ["video_moving_shapes_text", "video_image_to_video", "video_causal_autoencoder"]


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="needs the latentkit source tree's examples/")
@pytest.mark.parametrize("name", NAMES)
def test_config_trains_one_step(name: str, tmp_path) -> None:
    config = load_config(CONFIGS / f"{name}.toml")
    model = build_model(config)
    dataset = build_dataset(config, model)
    assert dataset[0]["video"].ndim == 4
    training = attrs.evolve(config.training, output_dir=str(tmp_path), max_steps=1, batch_size=2,
                            progress=False, device="cpu", checkpoint_every=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = Trainer(model, dataset, training).fit()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list((tmp_path / "checkpoints").iterdir())


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="needs the latentkit source tree's examples/")
def test_text_to_video_config_is_the_measured_recipe() -> None:
    """examples/configs/video_moving_shapes_text.toml builds the model, data and training of
    latentkit_video.experiment.run (whose adherence docs/video.md reports): the same
    parameters at seed 0, the same schedule, conditioner and data."""
    from latentkit_video import experiment

    config = load_config(CONFIGS / "video_moving_shapes_text.toml")
    torch.manual_seed(0)
    from_config = build_model(config)
    recipe = experiment.build_model(0)
    assert {k: v.shape for k, v in from_config.state_dict().items()} == {
        k: v.shape for k, v in recipe.state_dict().items()}
    assert from_config.denoiser.temporal_config == recipe.denoiser.temporal_config
    assert repr(from_config.schedule) == repr(recipe.schedule)
    assert not from_config.conditioner.trainable and from_config.conditioner.dropout == recipe.conditioner.dropout
    dataset = build_dataset(config, from_config)
    assert dataset.describe() == experiment.MovingShapesDataset(**experiment.DATA_CONFIG).describe()
    t = config.training
    assert (t.max_steps, t.batch_size, t.lr, t.lr_decay, t.min_lr_ratio, t.ema_decay) == (
        experiment.DEFAULT_STEPS, 16, 1e-3, "cosine", 0.05, None)

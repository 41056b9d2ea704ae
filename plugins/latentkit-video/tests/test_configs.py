"""The example TOML configs (examples/configs/video_*.toml) load, build and train one step
through latentkit's config reader and shared Trainer."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from latentkit.training import Trainer, build_dataset, build_model, load_config

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

"""The demo's pieces at tiny size: model building, sampling, evaluation and export."""

from __future__ import annotations

from pathlib import Path

import torch

from latentkit_volume.data import PrimitivesDataset
from latentkit_volume.demo import (
    build_primitives_model,
    evaluate_volumes,
    export_volumes,
    sample_primitives,
)
from latentkit_volume.mesh import is_watertight, read_mesh


def test_evaluation_accepts_real_primitives_and_rejects_wrong_prompts(tmp_path: Path) -> None:
    ds = PrimitivesDataset(resolution=16, length=8, seed=2, size_range=(0.6, 0.8))
    volumes = torch.stack([ds[i]["volume"] for i in range(8)])
    prompts = [ds[i]["shape"] for i in range(8)]
    reports = evaluate_volumes(volumes, prompts)
    assert all(r.success and r.watertight and r.components == 1 for r in reports)
    shifted = prompts[1:] + prompts[:1]  # every prompt now names another primitive
    assert not any(r.success for r in evaluate_volumes(volumes, shifted))
    paths = export_volumes(volumes[:2], ["a", "b"], tmp_path)
    assert sorted(p.name for p in paths) == ["a.obj", "a.ply", "b.obj", "b.ply"]
    assert all(is_watertight(read_mesh(p)) for p in paths)
    assert (tmp_path / "previews.png").is_file() and (tmp_path / "a.npy").is_file()


def test_class_and_text_models_sample_volumes() -> None:
    torch.manual_seed(0)
    for conditioning in ("class", "text"):
        model = build_primitives_model(resolution=8, conditioning=conditioning,
                                       denoiser_config={"preset": "tiny"})
        assert model.autoencoder.data_spec.layout == "CDHW"
        volumes, prompts = sample_primitives(model, per_shape=1, steps=2, guidance_scale=2.0)
        assert volumes.shape == (4, 1, 8, 8, 8) and prompts == ["sphere", "cube", "cylinder", "torus"]
        # item i depends on its seed only, not on the batching
        again, _ = sample_primitives(model, per_shape=1, steps=2, guidance_scale=2.0, batch_size=3)
        torch.testing.assert_close(again, volumes, atol=1e-4, rtol=1e-4)

"""The moving-shapes experiment's plumbing and diagnostics (fast): the training batches hold
coherent motion all the way to the latents the denoiser is trained on, and the diagnostics
that separate temporal coherence, the temporal pathway and the caption's influence."""

from __future__ import annotations

import json

import torch
from torch.utils.data import DataLoader

from latentkit_video.datasets import MovingShapesDataset, motion_coherence, motion_direction
from latentkit_video.experiment import (
    DATA_CONFIG,
    VARIANTS,
    build_model,
    caption_influence,
    main,
    temporal_influence,
)


def _dataset(length: int = 16) -> MovingShapesDataset:
    return MovingShapesDataset(**{**DATA_CONFIG, "length": length})


def test_training_latents_hold_the_coherent_motion_of_the_data() -> None:
    """dataset -> collate -> LatentDiffusion.loss (framewise autoencoder, normalisation): the
    clean latents the objective sees decode to clips that move 1 px per frame in the
    captioned direction."""
    model = build_model(0)
    seen: list[torch.Tensor] = []
    objective = model.objective

    def recording(parameterized, x0, cond=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(x0.detach().clone())
        return objective(parameterized, x0, cond, **kwargs)

    model.objective = recording  # type: ignore[assignment]
    batch = next(iter(DataLoader(_dataset(), batch_size=8, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))))
    model.train()
    model.loss(batch).backward()
    (x0,) = seen
    assert x0.shape == (8, 3, 8, 12, 12)
    clips = model.decode(x0)
    assert motion_coherence(clips)["coherent"] == 1.0
    assert [motion_direction(c)["direction"] for c in clips] == [c.split()[-1] for c in batch["caption"]]


def test_temporal_influence_is_zero_for_an_image_model_and_positive_with_temporal_mixing() -> None:
    model, ds = build_model(0), _dataset()
    with torch.no_grad():  # a "trained" image model: non-zero output layer, temporal layers still identity
        for p in model.denoiser.image_unet.out.parameters():
            p.normal_(0.0, 0.1)
    image_only = temporal_influence(model, ds, items=2)
    assert set(image_only) == {"sigma=0.5", "sigma=2", "sigma=8"} and max(image_only.values()) == 0.0
    with torch.no_grad():  # lift the zero initialisation of the temporal output projections
        for name, p in model.denoiser.named_parameters():
            if name.startswith("temporal_") and not p.any():
                p.normal_(0.0, 0.1)
    mixed = temporal_influence(model, ds, items=2)
    assert all(0.0 < v < 1.0 for v in mixed.values())


def test_caption_influence_sees_distinct_prompts_and_the_denoiser() -> None:
    model, ds = build_model(0), _dataset()
    fresh = caption_influence(model, ds, items=2)
    assert fresh["context"] > 0.5  # a fresh tower tells the four directions apart
    assert fresh["sigma=2"] == 0.0 and fresh["sigma=8"] == 0.0  # zero-initialised output layer
    with torch.no_grad():
        for p in model.denoiser.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    assert caption_influence(model, ds, items=2)["sigma=8"] > 0.0


def test_the_recipe_freezes_only_the_text_tower_and_variants_build() -> None:
    model = build_model(0)
    assert model.conditioner is not None and not model.conditioner.trainable
    assert all(p.requires_grad for p in model.denoiser.parameters())
    assert model.denoiser.frame_embed is not None and model.denoiser.position_proj is not None
    assert model.schedule.p_mean == 1.0
    for name, variant in VARIANTS.items():  # every variant composes
        built = build_model(0, variant.get("denoiser"), variant.get("schedule"), variant.get("conditioner"),
                            variant.get("model"))
        assert built.denoiser.temporal_config["frame_embedding"] == (name not in (
            "no_frame_position", "video_ldm", "video_ldm_frozen_text", "video_ldm_temporal_text"))
    assert build_model(0, **{"conditioner_overrides": VARIANTS["video_ldm"]["conditioner"]}).conditioner.trainable


def test_the_command_line_writes_the_coherence_fields(tmp_path, capsys) -> None:
    out = tmp_path / "results.jsonl"
    assert main(["--steps", "2", "--per-direction", "1", "--json", str(out), "--output", str(tmp_path),
                 "--no-samples", "--time-budget", "60"]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["variant"] == "shipped" and record["steps"] == 2
    assert set(record["coherence"]) == {"mean_step", "step_error", "line_rmse", "coherent", "tracked"}
    assert set(record["temporal_influence"]) == {"sigma=0.5", "sigma=2", "sigma=8"}
    assert {"context", "sigma=2", "sigma=8"} <= set(record["caption_influence"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record

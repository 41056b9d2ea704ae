"""The demo's pieces at tiny size: model building, sampling, evaluation and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from latentkit_volume.data import PrimitivesDataset
from latentkit_volume.demo import (
    VARIANTS,
    build_primitives_model,
    evaluate_volumes,
    export_volumes,
    main,
    sample_primitives,
    train_primitives,
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


# class labels and guidance 1 (not the text tower and guidance 2 of the defaults): the cheapest setup
_TINY = dict(resolution=8, dataset_length=32, batch_size=4, per_shape=1, sample_steps=2,
             denoiser_config={"preset": "tiny"}, conditioning="class", guidance_scale=1.0,
             export=False, progress=False)


def test_cached_data_and_budget_loop_train_like_the_trainer(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ref = train_primitives(tmp_path / "a", steps=3, cache_data=False, **_TINY)
    cached = train_primitives(tmp_path / "b", steps=3, **_TINY)
    looped = train_primitives(tmp_path / "c", steps=3, time_budget=600.0, checkpoint=False, **_TINY)
    assert ref.steps == cached.steps == looped.steps == 3
    assert ref.final_loss == cached.final_loss == looped.final_loss
    for a, b in zip(ref.model.state_dict().values(), looped.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert (tmp_path / "a" / "checkpoints").is_dir() and not (tmp_path / "c" / "checkpoints").exists()


def test_time_budget_stops_training_and_still_evaluates(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = train_primitives(tmp_path, steps=100_000, time_budget=3.0, extra_guidance=(2.0,), **_TINY)
    assert 0 < result.steps < 100_000 and len(result.reports) == 4
    assert list(result.extra) == [2.0] and len(result.extra[2.0]) == 4
    assert (tmp_path / "checkpoints").is_dir()


def test_command_line_appends_one_json_line_per_run(tmp_path: Path, capsys: Any) -> None:
    assert main(["--list-variants"]) == 0
    assert "default:" in capsys.readouterr().out
    assert set(VARIANTS) >= {"default", "dit_b64", "dit_p2", "unet", "text_dit_b64"}
    out = tmp_path / "res.jsonl"
    args = ["--variant", "_tiny_test", "--steps", "2", "--per-shape", "1", "--time-budget", "600",
            "--json", str(out), "--output", str(tmp_path / "run"), "--no-export"]
    # a tiny text-conditioned variant, registered for this test only
    VARIANTS["_tiny_test"] = {**{k: v for k, v in _TINY.items() if k not in ("export", "progress")},
                              "conditioning": "text", "steps": 2}
    try:
        assert main(args) == 0
        assert main(args) == 0
    finally:
        del VARIANTS["_tiny_test"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    rec = lines[0]
    assert rec["variant"] == "_tiny_test" and rec["steps"] == 2 and rec["samples"] == 4
    assert set(rec["per_shape"]) == {"sphere", "cube", "cylinder", "torus"}
    for key in ("success_rate", "watertight_rate", "train_seconds", "stopped_by_budget", "device"):
        assert key in rec


def test_defaults_are_the_text_recipe_measured_as_text_dit_b64() -> None:
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(train_primitives).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert VARIANTS["default"] == {}
    measured = VARIANTS["text_dit_b64"]
    # the GPU run: a 20000-step cap stopped by time at 2036 steps, evaluated at guidance 1 and 2
    assert {k: v for k, v in measured.items() if k not in ("steps", "guidance_scale")} == {
        "batch_size": 64, "conditioning": "text"}
    assert {k: defaults[k] for k in ("batch_size", "conditioning", "steps", "guidance_scale")} == {
        "batch_size": 64, "conditioning": "text", "steps": 2000, "guidance_scale": 2.0}
    # every variant pins its conditioning and guidance, so a change of defaults cannot change it
    for name, overrides in VARIANTS.items():
        assert name == "default" or {"conditioning", "guidance_scale"} <= set(overrides), name

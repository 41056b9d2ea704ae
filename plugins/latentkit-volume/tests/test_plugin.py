"""The third-party path: entry-point registration, `latentkit plugins`, the conformance kit
over every registered component, and the example configs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import latentkit
import pytest
from latentkit.testing import parametrize_with_checks

COMPONENTS = [("autoencoder", "volume_kl"), ("denoiser", "volume_unet"), ("denoiser", "volume_dit")]
CONFIGS = sorted((Path(__file__).resolve().parents[3] / "examples" / "configs").glob("volume_*.toml"))


def test_registered_through_the_entry_point_under_the_distribution() -> None:
    mine = {(i.kind, i.name): i for i in latentkit.list_components()
            if i.distribution == "latentkit-volume"}
    assert set(mine) == {*COMPONENTS, ("dataset", "volume_primitives"), ("dataset", "volume_npy"),
                         ("model", "volume_sdf_autoencoder")}
    assert all(i.plugin == "volume" for i in mine.values())
    broken = latentkit.get_plugin_manager().broken
    assert not [b for b in broken if b.distribution == "latentkit-volume"]


@pytest.mark.skipif(shutil.which("latentkit") is None, reason="the latentkit command is not on PATH")
def test_cli_lists_the_components_under_the_distribution() -> None:
    run = subprocess.run(["latentkit", "plugins"], capture_output=True, text=True, timeout=120, check=True)
    rows = [line for line in run.stdout.splitlines() if "latentkit-volume" in line]
    assert {line.split()[0] for line in rows} == {"volume_kl", "volume_unet", "volume_dit",
                                                   "volume_primitives", "volume_npy", "volume_sdf_autoencoder"}


@parametrize_with_checks(COMPONENTS)
def test_conformance(component: object, check: object) -> None:
    check(component)  # type: ignore[operator]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load_and_build(path: Path, tmp_path: Path) -> None:
    from latentkit.experiment import build_dataset, build_model, load_config

    config = load_config(path)
    assert config.data.name in ("volume_primitives", "volume_npy")
    if config.autoencoder is not None and config.autoencoder.weights_from is not None:
        return  # needs the first stage trained by volume_kl_autoencoder.toml
    model = build_model(config)
    dataset = build_dataset(config, model)
    item = dataset[0]
    assert item["volume"].shape[0] == 1 and item["volume"].ndim == 4
    if config.model.kind == "diffusion":
        assert isinstance(model, latentkit.LatentDiffusion)
        assert model.autoencoder.data_spec.layout == "CDHW"

"""Fine-tuning a Stable Diffusion single-file checkpoint through ``latentkit train``: the run
starts from the file's weights, moves the UNet only, and saves back to the SD format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentkit.cli import main
from latentkit.experiment import ConfigError, build_model, load_config
from latentkit.interop.stable_diffusion import load_stable_diffusion, save_stable_diffusion
from latentkit.testing.stable_diffusion import tiny_config, write_random_checkpoint

CONFIG = """
[model]
kind = "stable_diffusion"
path = "{path}"

[data]
name = "shapes"
size = 32
length = 16

[training]
max_steps = 2
batch_size = 2
lr = 1e-3
checkpoint_every = 2
sample_every = 0
"""


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_sd1.safetensors"
    write_random_checkpoint(path, tiny_config("sd1"))
    return path


def test_train_config_fine_tunes_an_sd_file_and_saves_it_back(tmp_path: Path, checkpoint: Path) -> None:
    config = tmp_path / "ft.toml"
    config.write_text(CONFIG.format(path=checkpoint.as_posix()))
    assert main(["train", str(config), "--output", str(tmp_path / "run"), "--no-progress"]) == 0

    from latentkit.training import load_weights

    original = load_stable_diffusion(checkpoint)
    tuned = load_stable_diffusion(checkpoint)
    tuned.load_state_dict(load_weights(tmp_path / "run" / "checkpoints"))
    before, after = original.state_dict(), tuned.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".denoiser." in f".{k}" or k.startswith("denoiser") for k in moved), sorted(moved)[:5]

    out = tmp_path / "tuned.safetensors"
    save_stable_diffusion(tuned, out, include_extra=False)
    reloaded = load_stable_diffusion(out).state_dict()
    assert all(torch.equal(reloaded[k], after[k]) for k in moved)


def test_stable_diffusion_kind_needs_a_path(tmp_path: Path) -> None:
    config = tmp_path / "ft.toml"
    config.write_text(CONFIG.replace('path = "{path}"\n', ""))
    with pytest.raises(ConfigError, match="needs path"):
        build_model(load_config(config))


def test_sample_img2img_and_inpainting_from_an_sd_file(tmp_path: Path, checkpoint: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    from PIL import Image

    from latentkit.samples import read_image

    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[8:24, 8:24] = [255, 0, 0]
    Image.fromarray(pixels).save(tmp_path / "init.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    image = read_image(str(tmp_path / "init.png"), 3, None, (-1.0, 1.0))
    assert image.shape == (3, 32, 32) and float(image[0, 16, 16]) == 1.0 and float(image[1, 0, 0]) == -1.0

    base = ["sample", "--checkpoint", str(checkpoint), "--prompt", "a red square", "--steps", "3",
            "--num", "2", "--device", "cpu", "--init-image", str(tmp_path / "init.png")]
    assert main([*base, "--strength", "0.5", "--out", str(tmp_path / "i2i.png")]) == 0
    assert main([*base, "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "inp.png")]) == 0
    assert (tmp_path / "i2i.png").stat().st_size > 0 and (tmp_path / "inp.png").stat().st_size > 0
    assert main(["sample", "--checkpoint", str(checkpoint), "--prompt", "x", "--device", "cpu",
                 "--mask", str(tmp_path / "mask.png")]) == 2
    assert "--mask needs --init-image" in capsys.readouterr().err

"""``latentkit sample`` on a video run writes what this plugin's ``latentkit_write_samples``
hook makes of ``--out``: an animated GIF with every frame, or a PNG filmstrip, trained and
sampled end to end from examples/configs/video_moving_shapes_text.toml."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from latentkit.cli import main
from latentkit.experiment import load_config
from PIL import Image

from latentkit_video.cli_output import MIN_FRAME_PIXELS, latentkit_write_samples

CONFIG = Path(__file__).resolve().parents[3] / "examples" / "configs" / "video_moving_shapes_text.toml"
PROMPTS = ["a red square moving left", "a red square moving up"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example config trained for one step at batch size 2 by ``latentkit train``."""
    if not CONFIG.is_file():
        pytest.skip("needs the latentkit source tree's examples/")
    root = tmp_path_factory.mktemp("video_cli")
    text = re.sub(r"(?m)^batch_size = \d+", "batch_size = 2", CONFIG.read_text())
    text = re.sub(r"(?m)^length = \d+", "length = 8", text)
    # and the trainer's own samples at the step: through this plugin's writer too
    text = text.replace("[training]\n", '[training]\nsample_every = 1\nsample_steps = 2\n'
                        'sample_prompts = ["a red square moving left", "a red square moving up"]\n')
    (root / "tiny.toml").write_text(text)
    argv = ["train", str(root / "tiny.toml"), "--output", str(root / "run"), "--max-steps", "1", "--no-progress"]
    assert main(argv, out=io.StringIO()) == 0
    return root / "run"


def _data() -> dict[str, int]:
    return dict(load_config(CONFIG).data.options)


def _sample(run: Path, out_path: Path, num: int = 2) -> tuple[int, str]:
    args = ["sample", str(run)]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    out = io.StringIO()
    code = main([*args, "--num", str(num), "--steps", "2", "--out", str(out_path)], out=out)
    return code, out.getvalue()


def test_gif_holds_every_frame_of_every_clip(video_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "clips" / "s.gif"
    code, out = _sample(video_run, target)
    assert code == 0
    assert f"wrote 4 CTHW sample(s) to {target}" in out
    frames, size = _data()["frames"], _data()["size"]
    scale = -(-MIN_FRAME_PIXELS // size)
    with Image.open(target) as gif:
        assert gif.format == "GIF" and gif.n_frames == frames
        # one row per prompt, --num clips per row, 2 px padding between (all upscaled)
        assert gif.size == ((2 * size + 2) * scale, (2 * size + 2) * scale)


def test_png_is_a_filmstrip_with_a_row_per_clip(video_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "strip.png"
    code, _ = _sample(video_run, target, num=1)
    assert code == 0
    frames = _data()["frames"]
    with Image.open(target) as strip:
        assert strip.format == "PNG"
        assert strip.width >= frames * MIN_FRAME_PIXELS  # all frames of a clip in one row
        assert 2 * MIN_FRAME_PIXELS <= strip.height < 3 * MIN_FRAME_PIXELS + 100  # 2 clips, captioned


def test_training_samples_are_a_filmstrip(video_run: Path) -> None:
    """sample_every during `latentkit train` hands the clips to this plugin's writer: the
    step's PNG holds every frame of each prompt's clip in a row, not a grid of 5-D tensors."""
    frames = _data()["frames"]
    with Image.open(video_run / "samples" / "step_00000001.png") as strip:
        assert strip.format == "PNG"
        assert strip.width >= frames * MIN_FRAME_PIXELS
        assert 2 * MIN_FRAME_PIXELS <= strip.height < 3 * MIN_FRAME_PIXELS + 100  # 2 prompts, captioned


def test_other_suffix_is_an_error_listing_the_formats(video_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _sample(video_run, tmp_path / "s.mp4", num=1)
    err = capsys.readouterr().err
    assert code == 2
    assert "'.mp4'" in err and ".gif" in err and ".png" in err
    assert not (tmp_path / "s.mp4").exists()


def test_other_layouts_are_left_to_others(tmp_path: Path) -> None:
    images = torch.zeros(2, 3, 8, 8)
    assert latentkit_write_samples(samples=images, path=str(tmp_path / "g.gif"), layout="CHW",
                                   captions=None, value_range=(-1.0, 1.0)) is None
    assert not list(tmp_path.iterdir())

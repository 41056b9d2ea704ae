"""The ``latentkit`` command line: train / sample / eval round trip through a real run
directory, exact resume through ``--resume``, Stable Diffusion single files through
``--checkpoint``, ``--help`` everywhere and one-line errors (never a traceback)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentkit.cli import build_parser, main
from latentkit.experiment import load_run
from latentkit.training import load_weights

TINY_TEXT_CONFIG = """
[autoencoder]
name = "kl"
config = "f4"
base_channels = 8
channel_multipliers = [1, 2, 2]
num_res_blocks = 1
norm_num_groups = 4
latent_channels = 4
attention = false

[conditioner]
name = "openclip_text"
model_name = "tiny"
text_cfg = { context_length = 12 }
outputs = ["crossattn"]
trainable = true
dropout = 0.1

[denoiser]
name = "unet"
model_channels = 16
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [2]
num_heads = 2
norm_groups = 8

[schedule]
name = "linear"

[data]
name = "shapes"
size = 16
length = 32
exclude = ["a red circle at the top left"]

[training]
output_dir = "OUTPUT"
max_steps = 4
batch_size = 4
lr = 1e-3
checkpoint_every = 2
progress = false
"""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step text-to-image run written by ``latentkit train`` (checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text(TINY_TEXT_CONFIG.replace("OUTPUT", str(root / "run")))
    assert main(["train", str(config)], out=io.StringIO()) == 0
    return root


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    commands = ["plugins", "check", "train", "sample", "eval", "quickstart", "schedule"]
    choices = next(a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands) == set(choices)
    for command in commands:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert f"usage: latentkit {command}" in capsys.readouterr().out


def test_train_writes_checkpoints_config_and_metrics(trained: Path) -> None:
    run = trained / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert "[conditioner]" in (run / "config.toml").read_text()
    assert (run / "metrics.csv").is_file()
    # the run's own config rebuilds the model, and the checkpoint's EMA-less weights load into it
    model, config = load_run(run)
    assert config.data.name == "shapes"
    state = load_weights(run / "checkpoints")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_resume_continues_to_the_same_weights(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2 steps, then ``--resume --max-steps 4``: bit-identical to the uninterrupted 4-step run."""
    config = trained / "tiny.toml"
    code, out, _ = _run(["train", str(config), "--output", str(tmp_path), "--max-steps", "2"], capsys)
    assert code == 0
    code, out, _ = _run(["train", str(config), "--output", str(tmp_path), "--max-steps", "4", "--resume"], capsys)
    assert code == 0 and "resuming from" in out and "step 2" in out
    resumed = load_weights(tmp_path / "checkpoints", ema=False)
    reference = load_weights(trained / "run" / "checkpoints", ema=False)
    assert resumed.keys() == reference.keys()
    for k in reference:
        assert torch.equal(resumed[k], reference[k]), k


def test_sample_writes_a_seeded_grid(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(trained / "run")
    common = ["--prompt", "a red circle at the top left", "--prompt", "a blue square", "--num", "2",
              "--steps", "3", "--guidance", "2.5", "--sampler", "dpmpp_2m"]
    paths = [tmp_path / f"{name}.png" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (0, 0, 1)):
        code, out, err = _run(["sample", run, *common, "--seed", str(seed), "--out", str(path)], capsys)
        assert code == 0, err
        assert "wrote 4 image(s)" in out
    a, b, c = (np.asarray(Image.open(p)) for p in paths)
    assert a.shape[2] == 3 and a.shape[1] >= 2 * 64  # 2 tiles per row (upscaled to >= 64 px)
    assert np.array_equal(a, b)  # same seed, same grid
    assert not np.array_equal(a, c)
    code, out, err = _run(["sample", run, "--prompt", "x", "--negative-prompt", "blurry", "--guidance", "3",
                           "--steps", "2", "--num", "1", "--out", str(tmp_path / "neg.png")], capsys)
    assert code == 0, err


def test_eval_reports_adherence_on_held_out_prompts(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "eval.json"
    code, out, err = _run(["eval", str(trained / "run"), "--steps", "2", "--num", "3", "--items", "8",
                           "--json", str(report)], capsys)
    assert code == 0, err
    assert "prompts: the 1 captions held out of training" in out
    data = json.loads(report.read_text())
    adherence = data["prompt_adherence"]
    assert adherence["images"] == 3
    assert {v["prompt"] for v in adherence["verdicts"]} == {"a red circle at the top left"}
    assert data["reconstruction"]["count"] == 8
    assert 0.0 <= adherence["adherence"] <= 1.0


def test_eval_of_an_autoencoder_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ae.toml"
    body = TINY_TEXT_CONFIG.split("[conditioner]")[0] + TINY_TEXT_CONFIG[TINY_TEXT_CONFIG.index("[data]"):]
    config.write_text('[model]\nkind = "autoencoder"\ndisc_start = 100\ndisc_num_layers = 1\n' +
                      body.replace("OUTPUT", str(tmp_path / "run")).replace("max_steps = 4", "max_steps = 1"))
    assert _run(["train", str(config)], capsys)[0] == 0
    code, out, _ = _run(["eval", str(tmp_path / "run"), "--items", "4", "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0 and "PSNR" in out
    assert json.loads((tmp_path / "m.json").read_text())["reconstruction"]["count"] == 4
    code, _, err = _run(["sample", str(tmp_path / "run"), "--prompt", "x"], capsys)
    assert code == 2 and "autoencoder run" in err


def test_sample_a_stable_diffusion_single_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentkit.testing.stable_diffusion import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "tiny-sd.safetensors")
    out = tmp_path / "sd.png"
    code, _, err = _run(["sample", "--checkpoint", str(ckpt), "--prompt", "a cat", "--num", "1",
                            "--steps", "2", "--size", "16", "--out", str(out)], capsys)
    assert code == 0, err
    assert Image.open(out).size[0] >= 16


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "no/such.toml"], "no such config file"),
        (["sample", "no/such/run", "--prompt", "x"], "no such run or checkpoint"),
        (["sample", "--prompt", "x"], "give a run directory"),
        (["eval", "no/such/run"], "no such run or checkpoint"),
    ],
)
def test_errors_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_config_names_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(TINY_TEXT_CONFIG.replace("max_steps = 4", "max_stpes = 4"))
    code, _, err = _run(["train", str(config)], capsys)
    line = TINY_TEXT_CONFIG.splitlines().index("max_steps = 4") + 1
    assert code == 2
    assert f"bad.toml:{line}:" in err and "'max_stpes'" in err and "Did you mean 'max_steps'" in err


def test_run_without_config_and_wrong_conditioning(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "checkpoints").mkdir()
    code, _, err = _run(["sample", str(tmp_path), "--prompt", "x"], capsys)
    assert code == 2 and "config.toml" in err
    code, _, err = _run(["sample", str(trained / "run"), "--label", "3"], capsys)
    assert code == 2 and "--label needs a class-conditioned model" in err
    code, _, err = _run(["sample", str(trained / "run"), "--num", "1"], capsys)
    assert code == 2 and "pass --prompt" in err
    code, _, err = _run(["sample", str(trained / "run"), "--prompt", "x", "--sampler", "eulr"], capsys)
    assert code == 2 and "unknown sampler 'eulr'" in err
    code, _, err = _run(["eval", str(trained / "run"), "--prompt", "a purple hexagon"], capsys)
    assert code == 2 and "names no '<colour> <shape>'" in err


def test_console_script_wrong_argument_is_short(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: usage + one error line, exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "latentkit.cli", "sample", "--steps", "zero"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "argument --steps: expected a positive integer, got 'zero'" in proc.stderr


def test_a_size_that_does_not_fit_is_reported_in_pixels(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--size takes pixels, so its error names pixel sizes: 36 is latent 9 at f = 4, which the
    UNet (size multiple 2) refuses; 32 and 40 fit."""
    for size in ("36", "34"):
        code, _, err = _run(["sample", str(trained / "run"), "--prompt", "x", "--size", size, "--steps", "1"], capsys)
        assert code == 2 and "(pixels)" in err and "multiple of (8, 8)" in err and "[32, 40]" in err, err
        assert len(err.strip().splitlines()) == 1
    code, _, err = _run(["sample", str(trained / "run"), "--prompt", "x", "--size", "40", "--num", "1", "--steps", "1",
                           "--out", str(trained / "s40.png")], capsys)
    assert code == 0, err

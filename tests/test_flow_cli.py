"""A flow-matching model through the command line: ``latentkit train`` with ``[schedule] name =
"flow"`` and ``parameterization = "flow"``, exact resume (after a clean stop, and after a
SIGKILL), and ``latentkit sample`` with several samplers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentkit.cli import main
from latentkit.experiment import load_run
from latentkit.training import load_weights
from latentkit.training.checkpoint import checkpoint_dirs

FLOW_CONFIG = """
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
outputs = ["crossattn", "vector"]
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
name = "flow"
shift = 3.0
t_distribution = "logit_normal"

[model]
parameterization = "flow"
loss_weighting = "cosmap"

[data]
name = "shapes"
size = 16
length = 32

[training]
output_dir = "OUTPUT"
max_steps = MAX_STEPS
batch_size = 4
lr = 1e-3
ema_decay = 0.9
checkpoint_every = EVERY
progress = false
"""


def _config(root: Path, output: Path, max_steps: int = 4, every: int = 2) -> Path:
    path = root / f"flow_{max_steps}_{every}.toml"
    text = FLOW_CONFIG.replace("OUTPUT", str(output)).replace("MAX_STEPS", str(max_steps))
    path.write_text(text.replace("EVERY", str(every)))
    return path


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow_cli")
    assert main(["train", str(_config(root, root / "run"))], out=io.StringIO()) == 0
    return root


def test_train_builds_a_flow_model_from_toml(flow_run: Path) -> None:
    model, _ = load_run(flow_run / "run")
    assert model.parameterization.name == "flow"
    assert type(model.schedule).__name__ == "FlowSchedule" and model.schedule.shift == 3.0
    assert type(model.objective.weighting).__name__ == "CosmapWeighting"


def test_flow_run_resumes_to_the_same_weights(flow_run: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "run")
    out = io.StringIO()
    assert main(["train", str(config), "--max-steps", "2"], out=out) == 0
    assert main(["train", str(config), "--max-steps", "4", "--resume"], out=out) == 0
    assert "resuming from" in out.getvalue()
    for ema in (False, True):
        resumed = load_weights(tmp_path / "run" / "checkpoints", ema=ema)
        reference = load_weights(flow_run / "run" / "checkpoints", ema=ema)
        assert resumed.keys() == reference.keys()
        for k in reference:
            assert torch.equal(resumed[k], reference[k]), k


def test_latentkit_sample_draws_a_flow_model_with_any_sampler(flow_run: Path, tmp_path: Path) -> None:
    grids = {}
    for sampler in ("euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral_rf", "euler"):
        path = tmp_path / f"{sampler}_{len(grids)}.png"
        out = io.StringIO()
        code = main(["sample", str(flow_run / "run"), "--prompt", "a red circle", "--num", "2", "--steps", "3",
                     "--guidance", "2.0", "--sampler", sampler, "--seed", "3", "--out", str(path)], out=out)
        assert code == 0, out.getvalue()
        grids[path.name] = np.asarray(Image.open(path))
        assert grids[path.name].std() > 0, sampler  # not a blank image
    assert np.array_equal(grids["euler_0.png"], grids["euler_5.png"])  # seeded
    assert not np.array_equal(grids["euler_0.png"], grids["heun_1.png"])


def test_flow_training_killed_mid_run_resumes_bit_exactly(tmp_path: Path) -> None:
    """``latentkit train`` in a subprocess, SIGKILLed after its first checkpoint, then run
    again with ``--resume``: the final weights equal an uninterrupted run's."""
    reference = tmp_path / "reference"
    assert main(["train", str(_config(tmp_path, reference, max_steps=24, every=3))], out=io.StringIO()) == 0
    run = tmp_path / "killed"
    config = _config(tmp_path, run, max_steps=24, every=3)
    command = [sys.executable, "-m", "latentkit.cli", "train", str(config)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint_dirs(run / "checkpoints") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    last = checkpoint_dirs(run / "checkpoints")[-1][0]
    assert last < 24
    assert subprocess.run([*command, "--resume"], stdout=subprocess.DEVNULL, timeout=600).returncode == 0
    for ema in (False, True):
        resumed = load_weights(run / "checkpoints", ema=ema)
        expected = load_weights(reference / "checkpoints", ema=ema)
        for k in expected:
            assert torch.equal(resumed[k], expected[k]), k

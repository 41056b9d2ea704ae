"""CUDA checks of the real training path (a latent diffusion model built from a config, run
by the shared trainer and the CLI), run by ``benchmarks/gpu.py`` (``pytest -m cuda``); they
skip without CUDA. Their CPU counterparts run here too: DDP through the CLI under torchrun
(gloo, default suite) and torch.compile == eager (slow). The last test checks that
benchmarks/gpu.py itself exits cleanly on a machine without CUDA."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentkit.cli import main
from latentkit.experiment import build_dataset, build_model, loads_config
from latentkit.training import Trainer, load_weights

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIG = """
[autoencoder]
name = "kl"
config = "f4"
base_channels = 16
channel_multipliers = [1, 2, 2]
num_res_blocks = 1
norm_num_groups = 8
latent_channels = 4
attention = false

[conditioner]
name = "openclip_text"
model_name = "tiny"
text_cfg = { context_length = 16 }
outputs = ["crossattn"]
trainable = true
dropout = 0.1

[denoiser]
name = "unet"
model_channels = 32
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [1, 2]
num_heads = 4
norm_groups = 16

[schedule]
name = "linear"

[data]
name = "shapes"
size = 32
length = 64

[training]
output_dir = "OUTPUT"
max_steps = 6
batch_size = 8
lr = 1e-3
ema_decay = 0.9
checkpoint_every = 3
progress = false
"""


def _trainer(tmp_path: Path, **overrides: object) -> Trainer:
    import attrs

    cfg = loads_config(CONFIG.replace("OUTPUT", str(tmp_path)))
    torch.manual_seed(0)
    model = build_model(cfg)
    return Trainer(model, build_dataset(cfg, model), attrs.evolve(cfg.training, **overrides))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_steps_reduce_the_loss(tmp_path: Path, precision: str) -> None:
    trainer = _trainer(tmp_path, precision=precision, max_steps=30, checkpoint_every=30, lr=2e-3)
    assert trainer.device.type == "cuda"
    first = [trainer.train_step()["loss"] for _ in range(5)]
    metrics = trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in first)
    assert metrics["loss"] < max(first)
    if precision == "fp16":
        assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 0


@pytest.mark.cuda
@needs_cuda
def test_channels_last_matches_contiguous(tmp_path: Path) -> None:
    """channels-last is a memory layout, not a different model: same losses (fp32, no TF32)."""
    a = _trainer(tmp_path / "a", channels_last=True, tf32=False)
    b = _trainer(tmp_path / "b", channels_last=False, tf32=False)
    conv = next(p for p in a.model.denoiser.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        la, lb = a.train_step()["loss"], b.train_step()["loss"]
        assert la == pytest.approx(lb, rel=1e-3, abs=1e-4)


def _compiled_matches_eager(tmp_path: Path, device: str) -> None:
    eager = _trainer(tmp_path / "eager", tf32=False, device=device)
    compiled = _trainer(tmp_path / "compiled", tf32=False, compile=True, device=device)
    assert compiled.model.compile_targets() == [compiled.model.denoiser]
    for _ in range(3):
        le, lc = eager.train_step()["loss"], compiled.train_step()["loss"]
        assert lc == pytest.approx(le, rel=2e-3, abs=1e-4)
    # compiled in place: the checkpoint keys are the eager model's
    assert set(compiled.model.state_dict()) == set(eager.model.state_dict())


@pytest.mark.cuda
@needs_cuda
def test_torch_compile_matches_eager(tmp_path: Path) -> None:
    _compiled_matches_eager(tmp_path, "cuda")


@pytest.mark.slow
def test_torch_compile_matches_eager_on_cpu(tmp_path: Path) -> None:
    """The same on the CPU (inductor's C++ backend): tokenizer, conditioning objects and
    input checks stay eager, the denoiser compiles, the losses equal eager ones."""
    _compiled_matches_eager(tmp_path, "cpu")


def _plain_and_torchrun(tmp_path: Path, device: str) -> tuple[dict[str, list[float]], dict[str, dict[str, torch.Tensor]]]:
    """The CLI's train path twice on one config: in-process, and under torchrun with one
    process (a DDP-wrapped loss); per-step losses and final weights of both."""
    import csv

    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace("OUTPUT", str(tmp_path / "unused"))
                      .replace("progress = false", f'progress = false\nlog_every = 1\ndevice = "{device}"'))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun process below: the same CPU sums, bit for bit
    try:
        assert main(["train", str(config), "--output", str(tmp_path / "plain")], out=io.StringIO()) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "latentkit.cli", "train", str(config), "--output", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 1" in proc.stdout
    losses, weights = {}, {}
    for run in ("plain", "ddp"):
        with open(tmp_path / run / "metrics.csv") as f:
            losses[run] = [float(row["loss"]) for row in csv.DictReader(f)]
        weights[run] = load_weights(tmp_path / run / "checkpoints")
    return losses, weights


def test_ddp_trains_a_text_conditioned_model_through_the_cli_on_cpu(tmp_path: Path) -> None:
    """torchrun (gloo) around the CLI with a trainable text tower: DDP refuses trainable
    parameters that get no gradient, so this also checks that the conditioner freezes what its
    options never use; on the CPU the run is bit-identical to the plain one."""
    losses, weights = _plain_and_torchrun(tmp_path, "cpu")
    assert len(losses["plain"]) == 6 and losses["ddp"] == losses["plain"]
    for k in weights["plain"]:
        torch.testing.assert_close(weights["ddp"][k], weights["plain"][k], rtol=0, atol=0)


@pytest.mark.cuda
@needs_cuda
def test_ddp_on_one_gpu_through_the_cli(tmp_path: Path) -> None:
    """torchrun with one process: NCCL group, DDP wrapper, the CLI's train path, against a
    plain run of the same config. CUDA kernels such as nearest-upsampling and attention
    backward accumulate with atomics, so two CUDA runs (DDP or not) differ in the last bits
    (measured on an H200: up to 1e-4 after 6 steps between two plain runs), and Adam turns
    last-bit differences of near-zero gradients into +-lr steps. So: per-step losses within
    1e-3 and 99.9% of the weights within 1e-4, which a different data order, noise or
    gradient scaling fails by far."""
    losses, weights = _plain_and_torchrun(tmp_path, "cuda")
    assert len(losses["plain"]) == 6 and losses["ddp"] == pytest.approx(losses["plain"], rel=1e-3)
    close = torch.cat([torch.isclose(weights["ddp"][k].float(), weights["plain"][k].float(), rtol=1e-3,
                                     atol=1e-4).flatten() for k in weights["plain"]])
    assert close.float().mean() > 0.999


def test_gpu_benchmark_without_cuda_says_so_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device available" in proc.stdout

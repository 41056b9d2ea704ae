"""Data-parallel training through the command line: ``torchrun --nproc_per_node=2`` (gloo on
the CPU) running ``latentkit train`` with batch B per process reaches the weights of one
process with batch 2B, through the real trainer's DDP path (DistributedSampler shards,
gradient all-reduce, several optimizers with ``find_unused_parameters``, rank-0-only
checkpoints and logs).

The model is a VQ autoencoder with its patch discriminator (two optimizers): its loss has no
random draws, so the two runs see exactly the same data and differ only by how the batch is
split, which DDP's gradient averaging makes irrelevant up to float rounding.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import torch

from latentkit.cli import main
from latentkit.experiment import load_run
from latentkit.training import load_weights
from latentkit.training.checkpoint import checkpoint_dirs

CONFIG = """
[model]
kind = "autoencoder"
reconstruction = "l2"
disc_start = 100              # the discriminator exists (second optimizer) but does not start
disc_num_layers = 1
disc_channels = 8

[autoencoder]
name = "vq"
config = "f4"
base_channels = 8
channel_multipliers = [1, 2]
num_res_blocks = 1
norm_num_groups = 4
latent_channels = 4
codebook_size = 32
attention = false

[data]
name = "shapes"
size = 16
length = 48

[training]
max_steps = 4
batch_size = BATCH
lr = 2e-3
warmup_steps = 1
grad_clip = 1.0
ema_decay = 0.9
checkpoint_every = 2
log_every = 1
progress = false
"""


def test_torchrun_two_processes_match_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    (tmp_path / "b8.toml").write_text(CONFIG.replace("BATCH", "8"))
    (tmp_path / "b4.toml").write_text(CONFIG.replace("BATCH", "4"))
    assert main(["train", str(tmp_path / "b8.toml"), "--output", str(one)], out=io.StringIO()) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "latentkit.cli", "train", str(tmp_path / "b4.toml"), "--output", str(two)],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("training AutoencoderTrainingLoss") == 1  # rank 0 alone reports
    assert "world size 2" in proc.stdout

    # the trained weights; buffers such as the quantizer's code-usage counts are per-process
    # statistics (DDP broadcasts rank 0's), not something the batch split should preserve
    model, _ = load_run(one)
    weights = [name for name, _ in model.named_parameters()]
    assert len(weights) > 20
    for ema in (False, True):
        a = load_weights(one / "checkpoints", ema=ema)
        b = load_weights(two / "checkpoints", ema=ema)
        assert a.keys() == b.keys()
        # Gradients agree up to float reassociation (all-reduce sums in another order); Adam's
        # division by sqrt(v) magnifies that for near-zero gradients, so allow 5% of one
        # update (lr = 2e-3) per element.
        for k in weights:
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
        # the comparison is not vacuous: training moved the weights
        init = load_weights(one / "checkpoints" / "step_00000002", ema=False)
        moved = sum(not torch.equal(init[k], a[k]) for k in a if k.startswith("autoencoder.encoder"))
        assert moved > 0
    assert [s for s, _ in checkpoint_dirs(two / "checkpoints")] == [2, 4]
    with open(two / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one row per step: rank 0 only

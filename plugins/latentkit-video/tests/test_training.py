"""End to end (slow, about 13 minutes on one idle CPU thread): a text-to-video model trained
on moving shapes moves the shape in the prompted direction (centroid tracking) in at least 80%
of samples, the issue's target. The run is :func:`latentkit_video.experiment.run` with its
defaults, the recipe of docs/video.md "Results": 2000 steps of batch 16, which gave 100% of 32
samples (every clip also on a straight 1 px-per-frame path) on the development machine."""

from __future__ import annotations

import pytest
import torch

from latentkit_video.experiment import DEFAULT_STEPS, run


@pytest.mark.slow
def test_moving_shapes_direction_adherence(tmp_path) -> None:
    torch.set_num_threads(1)  # the measured setting; more threads change the float sums only
    result = run(DEFAULT_STEPS, output_dir=tmp_path, per_direction=8, progress=False)
    print(f"direction adherence {result.adherence:.1%} {result.per_direction}, "
          f"train {result.train_seconds:.0f} s, sample {result.sample_seconds:.0f} s")
    assert result.samples == 32 and result.steps == DEFAULT_STEPS
    assert result.adherence >= 0.8, result
    assert result.coherence["coherent"] >= 0.8, result.coherence  # straight 1 px-per-frame paths
    assert (tmp_path / "samples.gif").is_file() and (tmp_path / "samples_filmstrip.png").is_file()

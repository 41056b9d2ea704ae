"""End to end (slow, about 30 minutes on a loaded 2-core CPU): a text-to-video model trained on
moving shapes moves the shape in the prompted direction (centroid tracking), at least 80% of
the time. This is the issue's target; see docs/video.md "Results": the shipped setup reaches
34%, the frozen-text variants 31-47% at 1000-2000 CPU steps, so this test currently fails."""

from __future__ import annotations

import pytest
import torch

from latentkit_video.experiment import run


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="known gap (issue 7): the shipped setup reached 34.4% direction adherence; with the "
    "text tower frozen (no collapse) 46.9% / 37.5% at 1000 / 2000 steps and 31.2% for "
    "temporal_all_frozen_text: the denoiser ignores the caption at high noise; the target is 80%",
)
def test_moving_shapes_direction_adherence(tmp_path) -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    result = run(800, output_dir=tmp_path, per_direction=8, progress=False)
    print(f"direction adherence {result.adherence:.1%} {result.per_direction}, "
          f"train {result.train_seconds:.0f} s, sample {result.sample_seconds:.0f} s")
    assert result.samples == 32
    assert result.adherence >= 0.8, result
    assert (tmp_path / "samples.gif").is_file() and (tmp_path / "samples_filmstrip.png").is_file()

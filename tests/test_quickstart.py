"""The quickstart and its deterministic prompt-adherence checker.

Default suite: the checker's properties on real ``shapes`` images, reconstruction metrics in
closed form, the quickstart's configs (held-out prompts really held out, loadable by
``latentkit train``), and ``latentkit quickstart --fast`` end to end. ``-m slow``: the full
quickstart reaches >= 80% adherence on held-out prompts within 10 minutes of 2 cores.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

import latentkit
from latentkit.cli import main
from latentkit.data.shapes import COLORS, SHAPES, ShapesDataset
from latentkit.evaluation import parse_prompt, prompt_adherence, reconstruction_metrics
from latentkit.experiment import loads_config
from latentkit.quickstart import (
    FAST_SETTINGS,
    HELD_OUT_PROMPTS,
    QuickstartSettings,
    autoencoder_config,
    diffusion_config,
    run_quickstart,
)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle at the top left", ("red", "circle", "top left")),
        ("A Yellow Triangle, bottom right please", ("yellow", "triangle", "bottom right")),
        ("blue square", ("blue", "square", None)),
    ],
)
def test_parse_prompt(prompt: str, expected: tuple[str, str, str | None]) -> None:
    assert parse_prompt(prompt) == expected


def test_parse_prompt_rejects_other_prompts() -> None:
    with pytest.raises(ValueError, match="names no '<colour> <shape>'"):
        parse_prompt("a purple hexagon")


def test_checker_reads_the_datasets_own_images_and_catches_wrong_prompts() -> None:
    data = ShapesDataset(size=32, length=48, seed=3)  # every combination once
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    captions = [data[i]["caption"] for i in range(len(data))]
    report = prompt_adherence(images, captions)
    assert report.adherence == report.color_accuracy == report.shape_accuracy == report.position_accuracy == 1.0
    # the same images against prompts with the colour (or the shape) swapped never adhere
    colours, shapes = list(COLORS), list(SHAPES)
    wrong_colour = [c.replace(f" {data[i]['color']} ", f" {colours[(colours.index(data[i]['color']) + 1) % 4]} ")
                    for i, c in enumerate(captions)]
    wrong_shape = [c.replace(f" {data[i]['shape']} ", f" {shapes[(shapes.index(data[i]['shape']) + 1) % 3]} ")
                   for i, c in enumerate(captions)]
    assert prompt_adherence(images, wrong_colour).adherence == 0.0
    assert prompt_adherence(images, wrong_colour).shape_accuracy == 1.0
    assert prompt_adherence(images, wrong_shape).adherence == 0.0
    # a flat grey image has no shape at all
    grey = prompt_adherence(torch.zeros(1, 3, 32, 32), ["a red circle"])
    assert grey.verdicts[0].color is None and grey.adherence == 0.0
    d = report.as_dict()
    assert d["images"] == 48 and len(d["per_prompt"]) == 48


def test_reconstruction_metrics_closed_form() -> None:
    x = ShapesDataset(size=16, length=4)
    images = torch.stack([x[i]["image"] for i in range(4)])
    exact = reconstruction_metrics(latentkit.create("autoencoder", "identity", channels=3), images)
    assert exact.l1 == 0.0 and exact.mse == 0.0 and exact.ssim == pytest.approx(1.0)
    assert exact.psnr == pytest.approx(10 * math.log10(4 / 1e-12))

    class Halving(torch.nn.Module):  # decode(encode(x)) = x / 2
        def encode(self, x: torch.Tensor) -> object:
            return type("Posterior", (), {"mode": lambda self: x})()

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return z / 2

    half = reconstruction_metrics(Halving(), images)
    mse = (images / 2).pow(2).flatten(1).mean(1)
    assert half.mse == pytest.approx(float(mse.mean()), rel=1e-5)
    assert half.psnr == pytest.approx(float((10 * torch.log10(4 / mse)).mean()), rel=1e-5)


def test_quickstart_configs_hold_prompts_out_and_load(tmp_path: Path) -> None:
    s = QuickstartSettings()
    assert len(set(s.held_out)) == 8
    assert {parse_prompt(p)[0] for p in s.held_out} == set(COLORS)
    assert {parse_prompt(p)[1] for p in s.held_out} == set(SHAPES)
    for text in (autoencoder_config(s, tmp_path / "ae"), diffusion_config(s, tmp_path / "ldm", tmp_path / "ae")):
        cfg = loads_config(text)  # checked against the registry, as `latentkit train` does
        data = latentkit.create("dataset", cfg.data.name, **cfg.data.options)
        seen = set(data.captions)
        assert not seen & set(s.held_out)  # held out of both stages
        # ... but every held-out colour/shape pair is seen at another position
        pairs = {parse_prompt(c)[:2] for c in seen}
        assert {parse_prompt(p)[:2] for p in s.held_out} <= pairs
    cfg = loads_config(diffusion_config(s, tmp_path / "ldm", tmp_path / "ae"))
    assert cfg.data.cache_latents and not cfg.data.cache_flip  # a flip would contradict "left"


def test_quickstart_fast_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["quickstart", "--fast", "--output", str(tmp_path), "--no-progress"], out=out) == 0
    text = out.getvalue()
    assert "[1/3] autoencoder" in text and "[3/3] sampling" in text and "prompt adherence" in text
    report = json.loads((tmp_path / "report.json").read_text())
    n = len(HELD_OUT_PROMPTS) * FAST_SETTINGS.samples_per_prompt
    assert report["adherence"]["images"] == n
    assert {v["prompt"] for v in report["adherence"]["verdicts"]} == set(HELD_OUT_PROMPTS)
    assert set(report["timings"]) == {"autoencoder", "diffusion", "sampling"}
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert "prompt adherence on held-out prompts" in (tmp_path / "report.md").read_text().lower()
    # the runs are ordinary runs: the CLI samples the diffusion run
    code = main(["sample", str(tmp_path / "diffusion"), "--prompt", HELD_OUT_PROMPTS[0], "--num", "1",
                 "--steps", "2", "--out", str(tmp_path / "again.png")], out=io.StringIO())
    assert code == 0 and (tmp_path / "again.png").is_file()
    # the same directory with other settings is refused, not mixed
    with pytest.raises(latentkit.errors.LatentkitError, match="other settings"):
        run_quickstart(tmp_path, settings=QuickstartSettings(ldm_steps=3), progress=False, echo=lambda s: None)


@pytest.mark.slow
def test_full_quickstart_reaches_80_percent_within_10_minutes_of_2_cores(tmp_path: Path) -> None:
    """One torch thread, so the process CPU time is the single-core work of the run, whatever
    else the machine does: it must fit in ten minutes of two cores (1200 core-seconds). The
    wall-clock time of the README command on an idle 2-core machine is quoted in
    docs/quickstart.md (the quickstart measures and reports it itself)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_quickstart(tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.adherence.adherence >= 0.8, result.adherence.summary()
    assert result.total_cpu_s < 1200, result.total_cpu_s


@pytest.mark.parametrize("size", [(32, 32), (8, 12), (5, 6)])
def test_ssim_is_scikit_images(size: tuple[int, int]) -> None:
    """The torch SSIM of the reconstruction metrics gives scikit-image's numbers (its default
    uniform window, sample covariance, valid-region mean), so no scikit-image is needed at
    run time."""
    import numpy as np
    from skimage.metrics import structural_similarity

    from latentkit.evaluation import _ssim_window, ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 2, *size, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    ours = ssim(a, b, data_range=2.0)
    win = _ssim_window(size)
    ref = [np.mean([structural_similarity(x[c], y[c], data_range=2.0, win_size=win) for c in range(2)])
           for x, y in zip(a.numpy(), b.numpy())]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert 0.0 < float(ours.min()) < 0.99  # the noise lowered it: the comparison is not of two 1s

"""``latentkit sample`` hands its samples to the ``latentkit_write_samples`` hook: the first
plugin that answers for the run's layout writes the files; with no answer the captioned PNG
grid is written as before, and a suffix nobody writes is a one-line error naming the ones
available."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import latentkit
from latentkit.cli import main

TINY_UNCONDITIONAL = """
[autoencoder]
name = "identity"
channels = 3

[denoiser]
name = "unet"
model_channels = 8
channel_mult = [1]
num_res_blocks = 1
attention_resolutions = []
norm_groups = 4

[schedule]
name = "edm"

[model]
parameterization = "edm"

[data]
name = "shapes"
size = 8
length = 4

[training]
output_dir = "OUTPUT"
max_steps = 1
batch_size = 2
progress = false
"""


class FakeWriter:
    """Answers the hook for one layout, writing a text file that lists the sample shapes."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.calls: list[dict[str, Any]] = []

    @latentkit.hookimpl
    def latentkit_write_samples(self, samples: torch.Tensor, path: str, layout: str,
                                captions: Sequence[str] | None,
                                value_range: tuple[float, float]) -> list[Path] | None:
        self.calls.append({"samples": samples, "path": path, "layout": layout, "captions": captions,
                           "value_range": value_range})
        if layout != self.layout:
            return None
        out = Path(path)
        out.write_text(f"{tuple(samples.shape)}\n")
        return [out, out.with_suffix(".extra")]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-step unconditional pixel-space image run (layout CHW, 8x8) written by ``latentkit train``."""
    root = tmp_path_factory.mktemp("hook")
    config = root / "tiny.toml"
    config.write_text(TINY_UNCONDITIONAL.replace("OUTPUT", str(root / "run")))
    assert main(["train", str(config)], out=io.StringIO()) == 0
    return root / "run"


def _register(writer: FakeWriter, name: str) -> Iterator[FakeWriter]:
    manager = latentkit.get_plugin_manager()
    manager.register(writer, name)
    try:
        yield writer
    finally:
        manager.pm.unregister(name=name)


@pytest.fixture
def chw_writer() -> Iterator[FakeWriter]:
    yield from _register(FakeWriter("CHW"), "fake-chw-writer")


@pytest.fixture
def video_only_writer() -> Iterator[FakeWriter]:
    yield from _register(FakeWriter("CTHW"), "fake-cthw-writer")


def _sample(run: Path, out_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(["sample", str(run), "--num", "3", "--steps", "2", "--out", str(out_path)], out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_a_plugin_answering_for_the_layout_writes_the_samples(
        image_run: Path, chw_writer: FakeWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "samples.fake"
    code, out, err = _sample(image_run, target, capsys)
    assert code == 0, err
    (call,) = chw_writer.calls
    assert call["layout"] == "CHW" and call["path"] == str(target) and call["captions"] is None
    assert call["value_range"] == (-1.0, 1.0)
    samples = call["samples"]
    assert samples.shape == (3, 3, 8, 8) and samples.device.type == "cpu"
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert target.read_text() == "(3, 3, 8, 8)\n"
    # every written path is printed, one per line
    assert str(target) in out and str(target.with_suffix(".extra")) in out and "2 files" in out


def test_no_answer_falls_back_to_the_png_grid(
        image_run: Path, video_only_writer: FakeWriter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "grid.png"
    code, out, err = _sample(image_run, target, capsys)
    assert code == 0, err
    assert [c["layout"] for c in video_only_writer.calls] == ["CHW"]  # asked, declined
    assert f"wrote 3 image(s) to {target}" in out
    with Image.open(target) as grid:
        assert grid.format == "PNG" and grid.width >= 3 * 64  # 3 tiles upscaled to >= 64 px


def test_a_suffix_nobody_writes_is_a_one_line_error(
        image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "samples.gif"
    code, _, err = _sample(image_run, target, capsys)
    assert code == 2
    assert "'.gif'" in err and "CHW" in err and ".png" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not target.exists()

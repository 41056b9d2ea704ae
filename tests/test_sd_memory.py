"""Loading does not hold a Stable Diffusion checkpoint twice (issue 8): peak RSS while
loading a ~100 MiB SD 1.x-shaped file and reading every weight stays within 1.3x the file
size, measured in a fresh process by benchmarks/sd_loading.py (Linux: /proc/self/status)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sd_loading.py"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not BENCHMARK.is_file(),
    reason="peak RSS is read from /proc (Linux), with benchmarks/sd_loading.py",
)


def _benchmark():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("sd_loading", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a fresh interpreter and a ~190 MiB file: ~10 s on an idle machine
def test_peak_memory_while_loading_is_within_1_3x_of_the_file(tmp_path: Path) -> None:
    bench = _benchmark()
    config = bench.scaled_config("sd1", unet_width=64, vae_width=32, text_width=128)
    path = tmp_path / "model.safetensors"
    size = bench.write_checkpoint_file(path, config, torch.float32)
    assert size > 80 * 2**20
    result = bench.measure_in_subprocess(path, "latentkit")
    assert result["checksum_finite"]
    assert result["peak_ratio"] < 1.3, result
    # the weights are file-backed pages, not anonymous copies
    assert result["anon_ratio"] < 0.25, result

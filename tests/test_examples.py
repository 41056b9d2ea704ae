"""The runnable scripts in examples/ run end to end at tiny size (LATENTKIT_EXAMPLE_TINY=1).

(The third-party plugin package examples/latentkit-example-plugin has its own test,
tests/test_example_plugin.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "LATENTKIT_EXAMPLE_TINY": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_example_script_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {"compose_and_train.py", "sample_with_samplers.py"}


def test_compose_train_then_sample_with_other_samplers(tmp_path: Path) -> None:
    run = tmp_path / "digits"
    out = _run("compose_and_train.py", str(run))
    assert "trained to loss" in out
    assert (run / "checkpoints" / "step_00000005" / "state.json").is_file()
    digits = Image.open(run / "digits.png")
    assert digits.size[0] > digits.size[1]  # ten tiles in one row

    out = _run("sample_with_samplers.py", str(run))
    lines = [line for line in out.splitlines() if "guidance" in line]
    assert len(lines) == 4  # 2 samplers x 2 guidance scales
    assert {line.split()[0] for line in lines} == {"euler", "dpmpp_2m"}
    grid = Image.open(run / "samplers.png")
    assert grid.size[0] > 0 and grid.size[1] > 0

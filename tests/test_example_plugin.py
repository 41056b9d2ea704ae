"""The example plugin package builds with pip into a real distribution, and latentkit sees,
creates and checks its component like a built-in one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "latentkit-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    env.pop("LATENTKIT_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "latentkit.cli", *args], env=env, capture_output=True, text=True)


def test_listed_under_its_distribution(installed: dict[str, str]) -> None:
    out = run(installed, "plugins", "--kind", "sampler")
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("midpoint"))
    assert "latentkit-example-plugin 0.1.0" in line and "example" in line


def test_passes_the_conformance_kit(installed: dict[str, str]) -> None:
    out = run(installed, "check", "sampler:midpoint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 failed" in out.stdout


def test_created_by_name(installed: dict[str, str]) -> None:
    code = (
        "import latentkit, torch\n"
        "from latentkit.testing.gaussian import GaussianData\n"
        "s = latentkit.create('sampler', 'midpoint')\n"
        "g = GaussianData(0.3, 0.5)\n"
        "x = torch.full((1, 1, 1), 10.0, dtype=torch.float64)\n"
        "sig = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.05, 0.0], dtype=torch.float64)\n"
        "print(float((s.sample(g.denoise, x, sig) - g.ode_solution(x, 10.0)).abs().max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=installed, capture_output=True, text=True, check=True)
    assert float(out.stdout) < 5e-3

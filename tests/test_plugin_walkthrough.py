"""docs/plugins.md walks a plugin author from an empty folder to ``latentkit check`` passing
and a sample drawn with their own component; this runs that shell block as written, in a
fresh virtual environment (on the system's packages, with latentkit installed into it so that
its ``latentkit`` command is the venv's), so the walkthrough cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- walkthrough: tests/test_plugin_walkthrough.py runs the next block -->"


def _walkthrough() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```bash\n(.*?)\n```", after, re.S)
    assert match, "the walkthrough block follows its marker"
    return match.group(1)


def test_the_plugin_walkthrough_runs_as_written(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "-e", str(ROOT)], check=True, timeout=300, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("LATENTKIT_DISABLE_PLUGIN_AUTOLOAD", "PYTHONPATH")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", VIRTUAL_ENV=str(venv))
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", _walkthrough()], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "latentkit-midpoint 0.1.0" in run.stdout  # listed under its distribution
    assert re.search(r"\b\d+ passed, .*0 failed", run.stdout)  # the kit's summary line
    assert "wrote 4 image(s)" in run.stdout and (work / "latentkit-midpoint" / "midpoint.png").is_file()

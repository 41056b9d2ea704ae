"""End to end (slow): a volume model trained on primitives yields closed meshes of the
prompted primitive in at least 80% of samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentkit_volume.demo import train_primitives
from latentkit_volume.mesh import is_watertight, read_mesh


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="known gap (issue 7): best CPU run gave 71.9% (cube 100, cylinder 100, torus 88, "
    "sphere 0: lumpy spheres); the target is 80%",
)
def test_trained_model_makes_closed_meshes_of_the_prompted_primitive(tmp_path: Path) -> None:
    result = train_primitives(tmp_path, per_shape=8, progress=False, seed=0)
    print(result.summary())
    assert result.data_accuracy == 1.0  # the checker itself is right on real data
    assert len(result.reports) == 32
    assert result.success_rate >= 0.8
    # what was written is what was checked
    first = result.reports[0]
    mesh = read_mesh(tmp_path / "samples" / f"00_{first.prompt}.ply")
    assert is_watertight(mesh) == first.watertight and len(mesh.faces) == first.faces
    assert (tmp_path / "samples" / "previews.png").is_file()

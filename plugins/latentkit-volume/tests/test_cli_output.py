"""``latentkit sample`` on a volume run writes what this plugin's ``latentkit_write_samples``
hook makes of ``--out``: one marching-cubes mesh per sample (``.ply`` / ``.obj``) or the
three-projection previews (``.png``), trained and sampled end to end from
examples/configs/volume_primitives_text.toml."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from latentkit.cli import main
from latentkit.experiment import load_config
from PIL import Image

from latentkit_volume.cli_output import latentkit_write_samples
from latentkit_volume.mesh import is_watertight, read_mesh, read_ply, volume_to_mesh

CONFIG = Path(__file__).resolve().parents[3] / "examples" / "configs" / "volume_primitives_text.toml"
PROMPTS = ["a large torus", "a small cube"]


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example config trained for one step at batch size 2 by ``latentkit train``."""
    if not CONFIG.is_file():
        pytest.skip("needs the latentkit source tree's examples/")
    root = tmp_path_factory.mktemp("volume_cli")
    text = re.sub(r"(?m)^batch_size = \d+", "batch_size = 2", CONFIG.read_text())
    text = re.sub(r"(?m)^length = \d+", "length = 8", text)
    (root / "tiny.toml").write_text(text)
    argv = ["train", str(root / "tiny.toml"), "--output", str(root / "run"), "--max-steps", "1", "--no-progress"]
    assert main(argv, out=io.StringIO()) == 0
    return root / "run"


def _sample(run: Path, out_path: Path) -> tuple[int, str]:
    args = ["sample", str(run)]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    out = io.StringIO()
    code = main([*args, "--num", "1", "--steps", "2", "--out", str(out_path)], out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_one_mesh_file_per_sample(volume_run: Path, tmp_path: Path, suffix: str) -> None:
    target = tmp_path / "meshes" / f"s{suffix}"
    code, out = _sample(volume_run, target)
    assert code == 0
    written = [tmp_path / "meshes" / f"s_{i:02d}{suffix}" for i in range(len(PROMPTS))]
    assert sorted((tmp_path / "meshes").iterdir()) == written
    for path in written:
        assert str(path) in out
        mesh = read_mesh(path)
        assert len(mesh.faces) > 0  # noise of an untrained model crosses the surface somewhere
        extent = load_config(CONFIG).data.options["resolution"] - 1
        assert mesh.vertices.min() >= -0.5 and mesh.vertices.max() <= extent + 0.5  # voxel units
        if suffix == ".ply":
            assert path.read_bytes().startswith(b"ply\nformat binary_little_endian")


def test_png_previews_one_row_per_sample(volume_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "previews.png"
    code, out = _sample(volume_run, target)
    assert code == 0 and f"wrote 2 CDHW sample(s) to {target}" in out
    with Image.open(target) as image:
        assert image.format == "PNG"
        resolution = load_config(CONFIG).data.options["resolution"]
        assert image.width >= 3 * resolution  # three projections side by side
        assert image.height >= len(PROMPTS) * resolution  # one row per sample


def test_other_suffix_is_an_error_listing_the_formats(volume_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _sample(volume_run, tmp_path / "s.gif")
    err = capsys.readouterr().err
    assert code == 2
    assert "'.gif'" in err and ".ply" in err and ".obj" in err and ".png" in err
    assert not list(tmp_path.iterdir())


def test_the_surface_is_the_middle_of_the_value_range(tmp_path: Path) -> None:
    """A sphere stored in (0, 1) (inside below 0.5) meshes like the same sphere in (-1, 1)."""
    axis = torch.arange(12.0) - 5.5
    distance = (axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2).sqrt() - 4.0
    signed = (distance / 4.0).clamp(-1.0, 1.0)  # (D, H, W), negative inside
    (path,) = latentkit_write_samples(samples=((signed + 1) / 2)[None, None], path=str(tmp_path / "b.ply"),
                                      layout="CDHW", captions=None, value_range=(0.0, 1.0))
    assert path == tmp_path / "b_00.ply"
    mesh, reference = read_ply(path), volume_to_mesh(signed)
    assert is_watertight(mesh)
    np.testing.assert_allclose(mesh.vertices, reference.vertices, atol=1e-5)


def test_other_layouts_are_left_to_others(tmp_path: Path) -> None:
    assert latentkit_write_samples(samples=torch.zeros(1, 1, 4, 4, 4), path=str(tmp_path / "v.ply"),
                                   layout="CTHW", captions=None, value_range=(-1.0, 1.0)) is None
    assert not list(tmp_path.iterdir())

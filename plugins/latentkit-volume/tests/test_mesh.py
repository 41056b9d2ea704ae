"""Marching cubes, OBJ/PLY round trips, mesh checks and previews."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentkit_volume.data import PrimitivesDataset
from latentkit_volume.mesh import (
    Mesh,
    edge_face_counts,
    euler_characteristic,
    is_watertight,
    preview_image,
    read_mesh,
    read_obj,
    read_ply,
    save_preview,
    signed_volume,
    volume_to_mesh,
    write_obj,
    write_ply,
)
from latentkit_volume.primitives import grid_coordinates, sphere_sdf


def _sphere_field(n: int = 24, r: float = 8.0) -> np.ndarray:
    return np.clip(sphere_sdf(grid_coordinates(n), r) / 2.0, -1, 1)


def test_sphere_mesh_is_closed_outward_and_has_the_right_volume_and_area() -> None:
    mesh = volume_to_mesh(_sphere_field())
    assert is_watertight(mesh)
    assert euler_characteristic(mesh) == 2
    assert signed_volume(mesh) == pytest.approx(4 / 3 * math.pi * 8.0**3, rel=0.02)
    centre = mesh.vertices.mean(axis=0)
    radii = np.linalg.norm(mesh.vertices - centre, axis=1)
    assert np.abs(radii - 8.0).max() < 0.15
    np.testing.assert_allclose(centre, [11.5, 11.5, 11.5], atol=0.05)  # voxel-centre origin


def test_every_primitive_gives_a_watertight_mesh_of_its_genus() -> None:
    for representation in ("sdf", "occupancy"):
        ds = PrimitivesDataset(resolution=16, length=8, seed=5, representation=representation)
        for i in range(8):
            item = ds[i]
            mesh = volume_to_mesh(item["volume"])
            assert is_watertight(mesh), (representation, item["shape"])
            assert euler_characteristic(mesh) == (0 if item["shape"] == "torus" else 2)
            assert signed_volume(mesh) > 0


def test_object_touching_the_border_is_still_closed() -> None:
    field = np.full((8, 8, 8), -1.0)  # everything inside
    mesh = volume_to_mesh(field)
    assert is_watertight(mesh) and euler_characteristic(mesh) == 2
    # the surface lies half a voxel beyond the border voxel centres: an 8^3 box, corners cut
    assert signed_volume(mesh) == pytest.approx(8.0**3, rel=0.05)
    assert volume_to_mesh(np.ones((8, 8, 8))).is_empty


def test_open_and_non_manifold_meshes_are_not_watertight() -> None:
    mesh = volume_to_mesh(_sphere_field(12, 4.0))
    assert not is_watertight(Mesh(mesh.vertices, mesh.faces[1:]))  # a hole
    doubled = Mesh(mesh.vertices, np.concatenate([mesh.faces, mesh.faces[:1]]))
    assert not is_watertight(doubled)  # an edge in three faces
    assert set(edge_face_counts(mesh).tolist()) == {2}
    with pytest.raises(ValueError):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 3]]))


@pytest.mark.parametrize("suffix", [".obj", ".ply", "ascii.ply"])
def test_mesh_files_round_trip(tmp_path: Path, suffix: str) -> None:
    mesh = volume_to_mesh(_sphere_field(12, 4.0))
    path = tmp_path / f"m{suffix}"
    if suffix == ".obj":
        write_obj(mesh, path)
    else:
        write_ply(mesh, path, binary=suffix == ".ply")
    back = read_mesh(path)
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-5)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    assert is_watertight(back)


def test_ply_header_and_binary_layout_are_standard(tmp_path: Path) -> None:
    mesh = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float), np.array([[0, 1, 2]]))
    data = write_ply(mesh, tmp_path / "t.ply").read_bytes()
    header, body = data.split(b"end_header\n")
    assert b"format binary_little_endian 1.0" in header and b"element vertex 3" in header
    assert b"property list uchar int vertex_indices" in header
    assert struct.unpack("<9f", body[:36]) == (0, 0, 0, 1, 0, 0, 0, 1, 0)
    assert struct.unpack("<B3i", body[36:]) == (3, 0, 1, 2)
    # a big-endian file with an extra property and a quad, written by hand, reads back
    big = (b"ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty double x\n"
           b"property double y\nproperty double z\nproperty uchar red\nelement face 1\n"
           b"property list uchar uint vertex_indices\nend_header\n")
    for v in ([0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]):
        big += struct.pack(">3dB", *v, 200)
    big += struct.pack(">B4I", 4, 0, 1, 2, 3)
    (tmp_path / "b.ply").write_bytes(big)
    quad = read_ply(tmp_path / "b.ply")
    assert quad.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert quad.vertices[2].tolist() == [1, 1, 0]


def test_obj_reader_handles_slashes_and_relative_indices(tmp_path: Path) -> None:
    path = tmp_path / "q.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1 4//1\nf -4 -3 -2\n")
    mesh = read_obj(path)
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2]]


def test_preview_shows_the_three_projections(tmp_path: Path) -> None:
    field = np.ones((16, 16, 16))
    field[2:6, 4:12, 10:14] = -1  # a box: extents 4 (D) x 8 (H) x 4 (W)
    image = preview_image(field, scale=2)
    gray = np.asarray(image.convert("L"))
    assert image.size == (3 * 32 + 2 * 2, 32)
    # panel 1 looks along D: sees H x W = rows 4..12, columns 10..14
    panel = gray[:, :32] > 50
    assert panel[8:24, 20:28].all() and panel.sum() == 16 * 8
    # panel 3 looks along W: sees D x H, the box's 4 x 8 face, brightest (first voxel at W=10)
    panel3 = gray[:, 2 * 32 + 4:] > 50
    assert panel3.sum() == 8 * 16
    path = save_preview(field, tmp_path / "p.png", label="a box")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.height == 16 * 8 + 14

"""Signed-distance functions, the primitives dataset and the shape classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentkit_volume.data import PrimitivesDataset, signed_field
from latentkit_volume.primitives import (
    PRIMITIVES,
    box_sdf,
    classify_volume,
    cylinder_sdf,
    grid_coordinates,
    random_rotation,
    shape_features,
    sphere_sdf,
    torus_sdf,
)


def test_sdfs_match_closed_form_distances() -> None:
    p = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 3.0]])
    np.testing.assert_allclose(sphere_sdf(p, 2.0), [-2.0, 1.0, 3.0])
    # box of half size 1: the centre is 1 inside, (3, 0, 0) is 2 outside, (2, 2, 1) is at
    # distance |(1, 1, 0)| = sqrt(2) from the edge
    q = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [2.0, 2.0, 1.0], [0.5, 0.0, 0.0]])
    np.testing.assert_allclose(box_sdf(q, 1.0), [-1.0, 2.0, math.sqrt(2.0), -0.5])
    # cylinder r = 1, half height 2 along z: side, cap, rim corner
    c = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [4.0, 0.0, 6.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(cylinder_sdf(c, 1.0, 2.0), [2.0, 3.0, 5.0, -1.0])
    # torus R = 3, r = 1 around z: on the tube centre line -1, at the origin R - r = 2
    t = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 2.0]])
    np.testing.assert_allclose(torus_sdf(t, 3.0, 1.0), [-1.0, 2.0, 1.0])


def test_sdfs_are_distances_gradient_norm_one() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(-3, 3, size=(200, 3))
    h = 1e-5
    for fn in (lambda x: sphere_sdf(x, 1.5), lambda x: box_sdf(x, 1.0),
               lambda x: cylinder_sdf(x, 1.0, 1.5), lambda x: torus_sdf(x, 1.5, 0.5)):
        grad = np.stack([(fn(p + h * e) - fn(p - h * e)) / (2 * h) for e in np.eye(3)], axis=-1)
        norms = np.linalg.norm(grad, axis=-1)
        # exact SDFs are 1-Lipschitz everywhere and have |grad| = 1 almost everywhere
        assert np.all(norms < 1 + 1e-4)
        assert np.mean(np.abs(norms - 1) < 1e-3) > 0.9


def test_random_rotation_is_a_rotation() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        r = random_rotation(rng)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_dataset_items_are_deterministic_and_balanced() -> None:
    a = PrimitivesDataset(resolution=16, length=12, seed=3)
    b = PrimitivesDataset(resolution=16, length=40, seed=3)
    c = PrimitivesDataset(resolution=16, length=12, seed=4)
    for i in range(12):
        torch.testing.assert_close(a[i]["volume"], b[i]["volume"], rtol=0, atol=0)  # index, not length
        assert a[i]["caption"] == b[i]["caption"]
    assert not torch.equal(a[0]["volume"], c[0]["volume"])
    labels = [a[i]["label"] for i in range(12)]
    assert [labels.count(k) for k in range(4)] == [3, 3, 3, 3]
    item = a[3]
    assert item["volume"].shape == (1, 16, 16, 16) and item["volume"].dtype == torch.float32
    assert item["shape"] == PRIMITIVES[item["label"]]
    assert item["caption"] in (f"a small {item['shape']}", f"a large {item['shape']}")
    with pytest.raises(IndexError):
        a[12]


def test_dataset_fields_are_truncated_sdf_inside_the_grid() -> None:
    ds = PrimitivesDataset(resolution=16, length=8, seed=0, truncation=2.0)
    for i in range(8):
        v = ds[i]["volume"][0]
        assert float(v.min()) >= -1.0 and float(v.max()) <= 1.0
        assert float(v.min()) < 0  # an object is there
        border = torch.cat([v[0].flatten(), v[-1].flatten(), v[:, 0].flatten(), v[:, -1].flatten(),
                            v[:, :, 0].flatten(), v[:, :, -1].flatten()])
        assert float(border.min()) > 0  # and it never touches the border
        d, _, _ = ds.sdf(i)
        np.testing.assert_allclose(v.numpy(), np.clip(d / 2.0, -1, 1), atol=1e-6)
    occ = PrimitivesDataset(resolution=16, length=4, seed=0, representation="occupancy")
    for i in range(4):
        values = set(np.unique(occ[i]["volume"].numpy()).tolist())
        assert values == {-1.0, 1.0}
        np.testing.assert_array_equal(occ[i]["volume"] < 0, ds[i]["volume"] < 0)


def test_sphere_voxel_count_matches_its_volume() -> None:
    ds = PrimitivesDataset(resolution=32, length=1, seed=0, shapes=["sphere"], max_offset=0.0)
    d, _, size = ds.sdf(0)
    radius = size * 16
    assert (d < 0).sum() == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)


@pytest.mark.parametrize("rotate", [True, False])
def test_classifier_recognises_every_training_primitive(rotate: bool) -> None:
    ds = PrimitivesDataset(resolution=16, length=48, seed=11, rotate=rotate)
    for i in range(len(ds)):
        item = ds[i]
        assert classify_volume(item["volume"].numpy()) == item["shape"], (i, shape_features(item["volume"].numpy()))


def test_classifier_features_and_degenerate_inputs() -> None:
    assert classify_volume(np.ones((8, 8, 8))) == "none"
    torus = PrimitivesDataset(resolution=16, length=4, seed=0, shapes=["torus"])[0]["volume"].numpy()
    assert shape_features(torus).euler == 0  # one component, one tunnel
    two = np.ones((16, 16, 16))
    two[2:5, 2:5, 2:5] = -1
    two[9:14, 9:14, 9:14] = -1
    f = shape_features(two)
    assert f.components == 2 and f.voxels == 125 and f.euler == 1
    assert signed_field(np.array([-3.0, 0.5, 5.0]), "sdf", 2.0).tolist() == [-1.0, 0.25, 1.0]
    assert grid_coordinates(4)[0, 0, 0].tolist() == [-1.5, -1.5, -1.5]

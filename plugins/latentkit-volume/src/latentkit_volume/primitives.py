"""Signed-distance functions of 3-D primitives, voxelisation into grids, and a deterministic
shape classifier for generated grids.

Conventions used throughout the plugin:

* a volume is a ``(1, D, H, W)`` tensor (layout ``CDHW``) of a **signed field, negative
  inside** the object and positive outside, in ``[-1, 1]``;
* for signed distances the field is the truncated SDF divided by the truncation distance
  ``truncation`` (in voxels), i.e. ``clip(d / truncation, -1, 1)`` (the TSDF of Curless &
  Levoy 1996 and KinectFusion, Newcombe et al. 2011); for occupancy grids it is
  ``1 - 2 * occupied`` (-1 inside, +1 outside);
* either way the surface is the zero level set, which :mod:`latentkit_volume.mesh` turns into a
  triangle mesh by marching cubes.

The exact SDFs of the primitives are the standard closed forms (Hart 1996, "Sphere tracing";
Quilez's catalogue of distance functions): sphere ``|p| - r``, box
``|max(q, 0)| + min(max_i q_i, 0)`` with ``q = |p| - b``, capped cylinder and torus
``|(|p_xy| - R, p_z)| - r``.

:func:`classify_volume` tells the primitives apart without learning: topology first (the Euler
characteristic of the solid tells a torus, which has a tunnel, from genus-0 solids), then how
much of its circumscribed ball the solid fills (a ball fills all of it, a box or a cylinder
well under half) and finally its elongation (the ratio of the principal variances: a
cylinder of height 3 r is three times longer along its axis than across; a cube is
isotropic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

__all__ = [
    "PRIMITIVES",
    "ShapeFeatures",
    "box_sdf",
    "classify_volume",
    "cylinder_sdf",
    "grid_coordinates",
    "primitive_sdf",
    "random_rotation",
    "shape_features",
    "sphere_sdf",
    "torus_sdf",
]

#: The primitives, in label order.
PRIMITIVES: tuple[str, ...] = ("sphere", "cube", "cylinder", "torus")

# Proportions, relative to the radius ``s`` of the primitive's bounding ball (so that any
# rotation of a primitive of size s fits in a ball of radius s).
_CUBE_HALF = 1.0 / math.sqrt(3.0)  # half edge: the corners lie on the bounding sphere
_CYL_RADIUS = 1.0 / math.sqrt(1.0 + 1.5**2)  # radius r, half height 1.5 r
_CYL_HALF_HEIGHT = 1.5 * _CYL_RADIUS
_TORUS_TUBE = 0.33  # tube radius r; major radius R = s - r, hole radius R - r = 0.34 s
_TORUS_MAJOR = 1.0 - _TORUS_TUBE


def sphere_sdf(p: np.ndarray, radius: float) -> np.ndarray:
    """Exact SDF of a ball of ``radius`` centred at the origin; ``p`` is (..., 3)."""
    return np.linalg.norm(p, axis=-1) - radius


def box_sdf(p: np.ndarray, half_size: float | Sequence[float]) -> np.ndarray:
    """Exact SDF of an axis-aligned box with half edges ``half_size``:
    ``|max(q, 0)| + min(max_i q_i, 0)`` with ``q = |p| - b``."""
    q = np.abs(p) - np.asarray(half_size, dtype=p.dtype)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return outside + inside


def cylinder_sdf(p: np.ndarray, radius: float, half_height: float) -> np.ndarray:
    """Exact SDF of a capped cylinder along z: ``d = (|p_xy| - r, |p_z| - h)``,
    ``min(max(d), 0) + |max(d, 0)|``."""
    d = np.stack([np.linalg.norm(p[..., :2], axis=-1) - radius, np.abs(p[..., 2]) - half_height], axis=-1)
    return np.minimum(d.max(axis=-1), 0.0) + np.linalg.norm(np.maximum(d, 0.0), axis=-1)


def torus_sdf(p: np.ndarray, major: float, minor: float) -> np.ndarray:
    """Exact SDF of a torus around the z axis: ``|(|p_xy| - R, p_z)| - r``."""
    q = np.stack([np.linalg.norm(p[..., :2], axis=-1) - major, p[..., 2]], axis=-1)
    return np.linalg.norm(q, axis=-1) - minor


def primitive_sdf(shape: str, p: np.ndarray, size: float) -> np.ndarray:
    """SDF of primitive ``shape`` whose bounding ball has radius ``size``, in its own frame
    (axis along z for the cylinder and the torus)."""
    if shape == "sphere":
        return sphere_sdf(p, size)
    if shape == "cube":
        return box_sdf(p, _CUBE_HALF * size)
    if shape == "cylinder":
        return cylinder_sdf(p, _CYL_RADIUS * size, _CYL_HALF_HEIGHT * size)
    if shape == "torus":
        return torus_sdf(p, _TORUS_MAJOR * size, _TORUS_TUBE * size)
    raise ValueError(f"unknown primitive {shape!r}; known: {', '.join(PRIMITIVES)}")


def grid_coordinates(resolution: int) -> np.ndarray:
    """Voxel centres of a ``resolution``^3 grid, (D, H, W, 3) in voxel units, centred at 0
    (axis order z, y, x = D, H, W)."""
    c = np.arange(resolution, dtype=np.float64) - (resolution - 1) / 2.0
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (Shoemake 1992, uniform random
    quaternions)."""
    u1, u2, u3 = rng.random(3)
    a, b = math.sqrt(1 - u1), math.sqrt(u1)
    w, x, y, z = a * math.sin(2 * math.pi * u2), a * math.cos(2 * math.pi * u2), \
        b * math.sin(2 * math.pi * u3), b * math.cos(2 * math.pi * u3)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


# --------------------------------------------------------------------------- classifier


@attrs.frozen
class ShapeFeatures:
    """Rotation-invariant features of the solid ``field < 0`` (its largest 6-connected
    component), as used by :func:`classify_volume`."""

    voxels: int  # voxels in the largest component
    components: int  # 6-connected components of the solid
    euler: int  # Euler characteristic of the largest component (1 for a ball, 0 for a torus)
    fill: float  # voxels / volume of the ball circumscribing them about their centroid
    elongation: float  # largest / smallest principal variance


def shape_features(field: np.ndarray) -> ShapeFeatures:
    """Features of the solid where the (D, H, W) or (1, D, H, W) ``field`` is negative."""
    from scipy import ndimage
    from skimage.measure import euler_number

    solid = np.asarray(field).reshape(np.asarray(field).shape[-3:]) < 0
    labels, count = ndimage.label(solid)  # 6-connectivity
    if count == 0:
        return ShapeFeatures(voxels=0, components=0, euler=0, fill=0.0, elongation=1.0)
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    pts = np.argwhere(largest).astype(np.float64)
    centred = pts - pts.mean(axis=0)
    # +0.5: a voxel centre at distance r covers the ball up to r + half a voxel.
    r_max = float(np.sqrt((centred**2).sum(axis=1)).max()) + 0.5
    fill = len(pts) / (4.0 / 3.0 * math.pi * r_max**3)
    eig = np.linalg.eigvalsh(np.cov(centred.T) if len(pts) > 1 else np.eye(3))
    elongation = float(eig[-1] / max(eig[0], 1e-6))
    # Pad so that the component never touches the border (the background must be one set).
    euler = int(euler_number(np.pad(largest, 1), connectivity=1))
    return ShapeFeatures(voxels=len(pts), components=int(count), euler=euler, fill=float(fill),
                         elongation=elongation)


def classify_volume(field: np.ndarray, *, min_voxels: int = 8) -> str:
    """Which primitive the solid ``field < 0`` is: ``"sphere"``, ``"cube"``, ``"cylinder"``,
    ``"torus"``, or ``"none"`` when its largest component has fewer than ``min_voxels``.

    Deterministic rules on :func:`shape_features`: Euler characteristic <= 0 (a tunnel) ->
    torus; else filling more than 60% of the circumscribed ball -> sphere; else principal
    variance ratio above 1.8 -> cylinder; else cube.
    """
    f = shape_features(field)
    if f.voxels < min_voxels:
        return "none"
    if f.euler <= 0:
        return "torus"
    if f.fill > 0.6:
        return "sphere"
    if f.elongation > 1.8:
        return "cylinder"
    return "cube"

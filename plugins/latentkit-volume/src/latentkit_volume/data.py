"""Volumetric datasets (kind ``dataset``, layout ``CDHW``).

* :class:`PrimitivesDataset` (``volume_primitives``): spheres, cubes, cylinders and tori at
  random size and pose, as truncated signed-distance or occupancy grids, with captions such as
  "a large torus"; item ``i`` is a function of ``(seed, i)`` only.
* :class:`NpyVolumeDataset` (``volume_npy``): a folder of ``.npy`` grids, with optional
  captions from ``captions.jsonl`` or sidecar ``.txt`` files.

Every item is ``{"volume": (1, D, H, W) float32 in [-1, 1], ...}``, a signed field negative
inside (see :mod:`latentkit_volume.primitives`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from latentkit.interfaces import Dataset
from latentkit.random import item_rng
from latentkit.specs import DataSpec

from latentkit_volume.primitives import PRIMITIVES, grid_coordinates, primitive_sdf, random_rotation

__all__ = ["REPRESENTATIONS", "NpyVolumeDataset", "PrimitivesDataset", "signed_field"]

#: How a grid encodes the object: truncated signed distance, or occupancy.
REPRESENTATIONS: tuple[str, ...] = ("sdf", "occupancy")


def signed_field(sdf_voxels: np.ndarray, representation: str, truncation: float) -> np.ndarray:
    """Signed distance in voxels -> the plugin's signed field in [-1, 1], negative inside:
    ``clip(d / truncation, -1, 1)`` for ``"sdf"`` (a TSDF) or ``1 - 2 * (d < 0)`` for
    ``"occupancy"``."""
    if representation == "sdf":
        if not truncation > 0:
            raise ValueError(f"truncation must be > 0 voxels, got {truncation}")
        return np.clip(sdf_voxels / truncation, -1.0, 1.0)
    if representation == "occupancy":
        return np.where(sdf_voxels < 0, -1.0, 1.0)
    raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")


class PrimitivesDataset(Dataset):
    """Synthetic volumes: one primitive per grid at random size and pose, with a caption.

    The primitive of item ``i`` cycles through ``shapes`` (so classes are balanced) and its
    size, rotation and offset are drawn from ``np.random.default_rng([seed, i])``. ``size``
    is the radius of the primitive's bounding ball as a fraction of half the grid edge, drawn
    from ``size_range``; the ball always stays inside the grid, and the offset moves its centre
    by up to ``max_offset`` (same unit) where room is left. ``rotate`` draws a uniform random
    rotation (Shoemake 1992); otherwise cylinders and tori keep their axis along D.

    Items: ``volume`` (1, R, R, R) in [-1, 1] (negative inside), ``caption`` ("a small
    cube", "a large torus"), ``label`` (index into ``shapes``), ``shape`` and ``size``.
    """

    data_key = "volume"

    def __init__(
        self,
        resolution: int = 16,  # grid edge R in voxels
        length: int = 1024,  # number of items
        seed: int = 0,
        shapes: Sequence[str] | None = None,  # subset of PRIMITIVES (default: all), label order
        representation: str = "sdf",  # "sdf" (truncated SDF) or "occupancy"
        truncation: float = 2.0,  # TSDF truncation distance in voxels
        size_range: Sequence[float] = (0.65, 0.9),  # bounding-ball radius / half grid edge
        max_offset: float = 0.1,  # largest centre offset / half grid edge
        rotate: bool = True,  # uniform random rotation; False keeps axes aligned
    ) -> None:
        super().__init__(DataSpec(channels=1, layout="CDHW"))
        shapes = tuple(PRIMITIVES if shapes is None else shapes)
        unknown = [s for s in shapes if s not in PRIMITIVES]
        if unknown or not shapes:
            raise ValueError(f"shapes must be a non-empty subset of {PRIMITIVES}, got {list(shapes)}")
        if representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
        lo, hi = (float(v) for v in size_range)
        if not 0 < lo <= hi < 1:
            raise ValueError(f"size_range must satisfy 0 < low <= high < 1, got {tuple(size_range)}")
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8 voxels, got {resolution}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.resolution = int(resolution)
        self.length = int(length)
        self.seed = int(seed)
        self.shapes = shapes
        self.representation = representation
        self.truncation = float(truncation)
        self.size_range = (lo, hi)
        self.max_offset = float(max_offset)
        self.rotate = bool(rotate)
        self._coords = grid_coordinates(self.resolution)

    def __len__(self) -> int:
        """Number of items."""
        return self.length

    def caption(self, shape: str, size: float) -> str:
        """``"a small sphere"`` or ``"a large sphere"`` (size below or above the middle of
        ``size_range``)."""
        adjective = "small" if size < sum(self.size_range) / 2 else "large"
        return f"a {adjective} {shape}"

    def sdf(self, index: int) -> tuple[np.ndarray, str, float]:
        """``(signed distance in voxels (R, R, R), shape, size)`` of item ``index``."""
        n = self.length
        if not -n <= index < n:
            raise IndexError(f"PrimitivesDataset index {index} out of range for {n} items")
        index %= n
        rng = item_rng(self.seed, index)
        shape = self.shapes[index % len(self.shapes)]
        size = float(rng.uniform(*self.size_range))
        half = self.resolution / 2.0
        rotation = random_rotation(rng) if self.rotate else np.eye(3)
        room = max(0.0, min(self.max_offset, 1.0 - size - 0.5 / half))
        direction = rng.normal(size=3)
        direction /= max(float(np.linalg.norm(direction)), 1e-12)
        offset = direction * room * rng.random() ** (1 / 3) * half  # uniform in the ball
        local = (self._coords - offset) @ rotation  # world -> object frame (rows: R^T p)
        return primitive_sdf(shape, local, size * half), shape, size

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``: volume, caption, label, shape and size."""
        d, shape, size = self.sdf(index)
        field = signed_field(d, self.representation, self.truncation).astype(np.float32)
        return {
            "volume": torch.from_numpy(field)[None],  # (1, R, R, R)
            "caption": self.caption(shape, size),
            "label": self.shapes.index(shape),
            "shape": shape,
            "size": size,
        }


class NpyVolumeDataset(Dataset):
    """Volumes stored as ``.npy`` files under ``root`` (searched recursively, sorted).

    Each file holds a (D, H, W) or (1, D, H, W) grid. ``representation`` says how to read it:

    * ``"sdf"``: signed distances in voxels, negative inside, truncated to the plugin's field
      by ``truncation`` (``clip(d / truncation, -1, 1)``);
    * ``"occupancy"``: occupancy in [0, 1] (bool, 0/1 or a probability), mapped to
      ``1 - 2 * p`` (-1 inside, +1 outside);
    * ``"field"``: already the plugin's signed field (negative inside), clipped to [-1, 1].

    Captions (optional) come from ``captions.jsonl`` in ``root`` (lines
    ``{"file": "relative/path.npy", "caption": "...", "label": 0}``, label optional) or from a
    sidecar ``name.txt`` next to ``name.npy``; ``require_captions`` makes a missing one an
    error. Items: ``volume`` (1, D, H, W) float32, plus ``caption`` / ``label`` when known
    and ``path``.
    """

    data_key = "volume"

    def __init__(
        self,
        root: str,  # folder holding the .npy files
        representation: str = "sdf",  # "sdf", "occupancy" or "field"
        truncation: float = 2.0,  # TSDF truncation in voxels (representation "sdf")
        require_captions: bool = False,  # a volume without caption is an error
    ) -> None:
        super().__init__(DataSpec(channels=1, layout="CDHW"))
        if representation not in (*REPRESENTATIONS, "field"):
            raise ValueError(f"representation must be 'sdf', 'occupancy' or 'field', got {representation!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"volume_npy: root {str(root)!r} is not a directory")
        self.files = sorted(self.root.rglob("*.npy"))
        if not self.files:
            raise FileNotFoundError(f"volume_npy: no .npy files under {str(root)!r}")
        self.representation = representation
        self.truncation = float(truncation)
        self.meta = self._read_captions()
        if require_captions:
            missing = [str(f.relative_to(self.root)) for f in self.files if "caption" not in self.meta.get(f, {})]
            if missing:
                raise ValueError(f"volume_npy: no caption for {len(missing)} file(s), e.g. {missing[:3]}")
        self._shape: tuple[int, ...] | None = None

    def _read_captions(self) -> dict[Path, dict[str, Any]]:
        meta: dict[Path, dict[str, Any]] = {}
        jsonl = self.root / "captions.jsonl"
        if jsonl.is_file():
            for lineno, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    path = (self.root / entry["file"]).resolve()
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"{jsonl}:{lineno}: expected {{\"file\": ..., \"caption\": ...}}, got {line!r}"
                    ) from exc
                meta[path] = {k: entry[k] for k in ("caption", "label") if k in entry}
        out: dict[Path, dict[str, Any]] = {}
        for f in self.files:
            info = dict(meta.get(f.resolve(), {}))
            sidecar = f.with_suffix(".txt")
            if "caption" not in info and sidecar.is_file():
                info["caption"] = sidecar.read_text(encoding="utf-8").strip()
            out[f] = info
        return out

    def __len__(self) -> int:
        """Number of files."""
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """The grid of item ``index`` as the plugin's signed field, (1, D, H, W) float32."""
        path = self.files[index]
        array = np.load(path, allow_pickle=False)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 3:
            raise ValueError(f"volume_npy: {path} holds shape {array.shape}; expected (D, H, W) or (1, D, H, W)")
        if self.representation == "occupancy":
            field = 1.0 - 2.0 * np.clip(array.astype(np.float64), 0.0, 1.0)
        elif self.representation == "field":
            field = np.clip(array.astype(np.float64), -1.0, 1.0)
        else:
            field = signed_field(array.astype(np.float64), "sdf", self.truncation)
        if not np.isfinite(field).all():
            raise ValueError(f"volume_npy: {path} holds non-finite values")
        return field.astype(np.float32)[None]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index``: volume, path, and caption / label when known."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"NpyVolumeDataset index {index} out of range for {n} items")
        index %= n
        item: dict[str, Any] = {"volume": torch.from_numpy(self.load(index)),
                                "path": str(self.files[index])}
        item.update(self.meta.get(self.files[index], {}))
        return item

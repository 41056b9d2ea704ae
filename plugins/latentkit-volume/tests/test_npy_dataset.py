"""The ``volume_npy`` folder dataset."""

from __future__ import annotations

import json
from pathlib import Path

import latentkit
import numpy as np
import pytest
import torch

from latentkit_volume.data import NpyVolumeDataset


def _write(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    np.save(root / "a.npy", np.full((4, 4, 4), -3.0))  # SDF in voxels: deep inside
    np.save(root / "sub" / "b.npy", np.zeros((1, 4, 4, 4), dtype=bool))
    (root / "sub" / "b.txt").write_text("an empty box\n")
    (root / "captions.jsonl").write_text(json.dumps({"file": "a.npy", "caption": "all solid", "label": 2}) + "\n")


def test_reads_grids_captions_and_labels(tmp_path: Path) -> None:
    _write(tmp_path)
    ds = latentkit.create("dataset", "volume_npy", root=str(tmp_path), representation="sdf", truncation=2.0)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["volume"].shape == (1, 4, 4, 4) and a["volume"].dtype == torch.float32
    assert torch.all(a["volume"] == -1.0)  # clip(-3 / 2, -1, 1)
    assert a["caption"] == "all solid" and a["label"] == 2
    assert b["caption"] == "an empty box" and "label" not in b
    assert b["volume"].shape == (1, 4, 4, 4)


def test_representations(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([0.0, 0.25, 1.0] * 9).reshape(3, 3, 3))
    occ = NpyVolumeDataset(str(tmp_path), representation="occupancy")[0]["volume"]
    assert occ.flatten()[:3].tolist() == [1.0, 0.5, -1.0]  # 1 - 2 p: inside negative
    np.save(tmp_path / "o.npy", np.array([-2.0, 0.5, 3.0] * 9).reshape(3, 3, 3))
    field = NpyVolumeDataset(str(tmp_path), representation="field")[0]["volume"]
    assert field.flatten()[:3].tolist() == [-1.0, 0.5, 1.0]


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no \.npy"):
        NpyVolumeDataset(str(tmp_path))
    np.save(tmp_path / "x.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        NpyVolumeDataset(str(tmp_path))[0]
    with pytest.raises(ValueError, match="no caption"):
        NpyVolumeDataset(str(tmp_path), require_captions=True)
    with pytest.raises(ValueError, match="representation"):
        NpyVolumeDataset(str(tmp_path), representation="mesh")

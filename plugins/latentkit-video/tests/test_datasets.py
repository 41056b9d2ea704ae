"""Moving shapes (determinism, captions, geometry, the direction checker) and video folders."""

from __future__ import annotations

import json

import latentkit
import numpy as np
import pytest
import torch
from PIL import Image

from latentkit_video.datasets import (
    DIRECTIONS,
    MovingShapesDataset,
    VideoFolderDataset,
    direction_adherence,
    motion_coherence,
    motion_direction,
    track_centroids,
)


def test_items_are_deterministic_and_captioned() -> None:
    ds = latentkit.create("dataset", "moving_shapes", frames=8, size=16, length=50, seed=3,
                          colors=["red", "blue"], shapes=["square", "circle"])
    again = MovingShapesDataset(frames=8, size=16, length=50, seed=3, colors=["red", "blue"],
                                shapes=["square", "circle"])
    for i in (0, 7, 49):
        a, b = ds[i], again[i]
        torch.testing.assert_close(a["video"], b["video"])
        assert a["caption"] == b["caption"] == f"a {a['color']} {a['shape']} moving {a['direction']}"
        assert a["video"].shape == (3, 8, 16, 16) and a["video"].min() >= -1 and a["video"].max() <= 1
    other = MovingShapesDataset(frames=8, size=16, length=50, seed=4)
    assert any(not torch.equal(ds[i]["video"], other[i]["video"]) for i in range(5))
    captions = {ds[i]["caption"] for i in range(50)}
    assert len(captions) > 8  # colours x shapes x directions are all drawn


def test_every_clip_moves_as_captioned_and_stays_inside() -> None:
    ds = MovingShapesDataset(frames=8, size=16, length=64, colors=["red", "green"], shapes=["square", "circle"])
    for i in range(len(ds)):
        item = ds[i]
        video = item["video"]
        area = (video.amax(dim=0) > -1).float().sum(dim=(1, 2))
        assert (area == area[0]).all() and area[0] > 0  # never clipped by the border
        est = motion_direction(video)
        assert est["direction"] == item["direction"]
        dx, dy = DIRECTIONS[item["direction"]]
        np.testing.assert_allclose(est["displacement"], (7 * dx, 7 * dy), atol=1e-4)  # 1 px/frame


def test_checker_on_hand_made_clips() -> None:
    clip = -torch.ones(3, 5, 10, 10)
    for f in range(5):
        clip[0, f, 2:4, 6 - f : 8 - f] = 0.9  # red 2x2 moving left
    cents = track_centroids(clip)
    torch.testing.assert_close(cents[:, 0], torch.tensor([6.5, 5.5, 4.5, 3.5, 2.5]))
    torch.testing.assert_close(cents[:, 1], torch.full((5,), 2.5))
    assert motion_direction(clip)["direction"] == "left"
    static = clip[:, :1].expand(3, 5, 10, 10)
    assert motion_direction(static)["direction"] is None  # does not move
    assert motion_direction(-torch.ones(3, 5, 10, 10))["direction"] is None  # nothing to track
    assert direction_adherence(torch.stack([clip, static]), ["left", "left"]) == 0.5


def test_motion_coherence_separates_coherent_clips_from_independent_frames() -> None:
    ds = MovingShapesDataset(frames=8, size=12, length=32, shape_size=3)
    clips = torch.stack([ds[i]["video"] for i in range(32)])
    data = motion_coherence(clips)
    assert data["coherent"] == 1.0 and data["tracked"] == 1.0
    assert abs(data["mean_step"] - 1.0) < 1e-4 and data["step_error"] < 1e-4 and data["line_rmse"] < 1e-4
    # every frame from another clip: clean squares, positions jumping at random
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(0, 32, (32, 8), generator=g)
    jumbled = torch.stack([torch.stack([clips[pick[b, f], :, f] for f in range(8)], dim=1) for b in range(32)])
    mixed = motion_coherence(jumbled)
    assert mixed["tracked"] == 1.0  # every frame still shows a square ...
    assert mixed["coherent"] < 0.1 and mixed["mean_step"] > 2.5 and mixed["line_rmse"] > 1.5  # ... but no path
    # a coherent clip moving the other way is still coherent (coherence is direction-blind)
    assert motion_coherence(clips.flip(2))["coherent"] == 1.0
    still = clips[:, :, :1].expand_as(clips)  # no motion: steady, but not at the data's speed
    assert motion_coherence(still)["coherent"] == 0.0 and motion_coherence(still)["mean_step"] == 0.0
    empty = motion_coherence(-torch.ones(2, 3, 8, 12, 12))
    assert empty["coherent"] == 0.0 and empty["tracked"] == 0.0 and np.isnan(empty["mean_step"])
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        motion_coherence(clips[0])


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        MovingShapesDataset(frames=8, size=8, shape_size=4)
    with pytest.raises(ValueError, match="colors"):
        MovingShapesDataset(colors=["purple"])
    with pytest.raises(IndexError):
        MovingShapesDataset(length=3)[3]


def _write_clip(folder, frames: int, value: int) -> None:
    folder.mkdir()
    for f in range(frames):
        a = np.zeros((6, 8, 3), np.uint8)
        a[..., 0] = value
        a[:, f % 8, 1] = 255  # a green column moving right, frame by frame
        Image.fromarray(a).save(folder / f"{f}.png")


def test_video_folder_reads_clips_in_natural_order_with_captions(tmp_path) -> None:
    _write_clip(tmp_path / "a", 12, 255)
    _write_clip(tmp_path / "b", 3, 0)  # too short for 4 frames at stride 1: skipped
    _write_clip(tmp_path / "c", 5, 0)
    (tmp_path / "c" / "caption.txt").write_text("a column moving right\n")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"clip": "a", "caption": "red clip"}) + "\n")
    ds = latentkit.create("dataset", "video_folder", root=str(tmp_path), frames=4, size=(6, 8), stride=3)
    assert len(ds) == 1 and ds[0]["clip"] == "a"  # stride 3: 10 frames needed, c has 5
    ds = VideoFolderDataset(str(tmp_path), frames=4, size=(6, 8))
    assert [ds[i]["clip"] for i in range(len(ds))] == ["a", "c"]
    a, c = ds[0], ds[1]
    assert a["caption"] == "red clip" and c["caption"] == "a column moving right"
    assert a["video"].shape == (3, 4, 6, 8)
    torch.testing.assert_close(a["video"][0], torch.ones(4, 6, 8))  # red = 255 -> 1
    # frames 0..3 in order (10.png must not come before 2.png): the column is at x = f
    assert [int(a["video"][1, f, 0].argmax()) for f in range(4)] == [0, 1, 2, 3]
    assert motion_direction(c["video"])["direction"] == "right"  # black clip, green column
    strided = VideoFolderDataset(str(tmp_path), frames=4, size=(6, 8), stride=3)[0]["video"]
    assert [int(strided[1, f, 0].argmax()) for f in range(4)] == [0, 3, 6, 1]  # 9 % 8 = 1


def test_video_folder_random_start_is_seeded(tmp_path) -> None:
    _write_clip(tmp_path / "a", 8, 255)
    ds = VideoFolderDataset(str(tmp_path), frames=2, size=4, random_start=True, seed=1)
    starts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.append(int(ds[0]["video"][1, 0, 0].argmax()))
    ds.set_epoch(0)
    assert int(ds[0]["video"][1, 0, 0].argmax()) == starts[0]
    assert len(set(starts)) > 1
    with pytest.raises(ValueError, match="no clip folder"):
        VideoFolderDataset(str(tmp_path), frames=20)

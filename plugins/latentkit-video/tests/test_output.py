"""GIF and filmstrip writers."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from latentkit_video.output import clip_to_frames, load_gif, save_filmstrip, save_gif


def _clip() -> torch.Tensor:
    clip = -torch.ones(3, 4, 6, 8)
    for f in range(4):
        clip[0, f, 1:3, f : f + 2] = 1.0
    return clip


def test_gif_round_trip_keeps_every_frame(tmp_path) -> None:
    path = save_gif(_clip(), tmp_path / "clip.gif", fps=5)
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.size == (8, 6) and im.info["duration"] == 200
    back = load_gif(path)
    assert back.shape == (3, 4, 6, 8)
    torch.testing.assert_close(back, _clip(), atol=2 / 255, rtol=0)


def test_gif_of_a_batch_is_a_grid(tmp_path) -> None:
    batch = torch.stack([_clip(), _clip().flip(3)])
    path = save_gif(batch, tmp_path / "grid.gif", scale=2, pad=1)
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.size == (2 * (8 + 1 + 8), 2 * 6)


def test_filmstrip_lays_frames_left_to_right(tmp_path) -> None:
    batch = torch.stack([_clip(), -_clip()])
    path = save_filmstrip(batch, tmp_path / "strip.png", pad=2)
    with Image.open(path) as im:
        a = torch.from_numpy(np.array(im.convert("RGB")))
    assert tuple(a.shape) == (6 * 2 + 2, 8 * 4 + 2 * 3, 3)
    frames = clip_to_frames(_clip())
    for f in range(4):
        x = f * (8 + 2)
        assert (a[:6, x : x + 8].numpy() == frames[f]).all()
    assert (a[6:8] == 255).all()  # white padding between the rows

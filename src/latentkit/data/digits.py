"""``digits``: scikit-learn's 8x8 handwritten digits (Alpaydin & Kaynak 1998, the UCI optical
recognition set), upscaled, with labels and captions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latentkit.data.base import AugmentedDataset
from latentkit.specs import DataSpec

__all__ = ["DigitsDataset"]


class DigitsDataset(AugmentedDataset):
    """The 1797 digits of ``sklearn.datasets.load_digits``, bilinearly upscaled to ``size``.

    Items: ``image`` (channels, size, size) in [-1, 1] (ink bright on dark), ``label`` (the
    digit) and ``caption`` ("a handwritten digit 3"). ``split`` takes a fixed, seeded 80/20
    partition (``"train"`` / ``"test"``) or ``"all"``.
    """

    def __init__(
        self,
        size: int = 32,  # output side in pixels (the source is 8x8)
        channels: int = 1,  # 1 (grey) or 3 (grey repeated)
        split: str = "train",  # "train", "test" or "all"
        seed: int = 0,  # seeds the train/test partition
    ) -> None:
        super().__init__(DataSpec(channels=channels, layout="CHW"), seed=seed)
        if channels not in (1, 3):
            raise ValueError(f"digits: channels must be 1 or 3, got {channels}")
        if split not in ("train", "test", "all"):
            raise ValueError(f"digits: split must be 'train', 'test' or 'all', got {split!r}")
        if size < 8:
            raise ValueError(f"digits: size must be >= 8, got {size}")
        from sklearn.datasets import load_digits

        data = load_digits()
        images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
        labels = torch.from_numpy(data.target.astype(np.int64))
        order = torch.from_numpy(np.random.default_rng([seed, 11]).permutation(len(labels)))
        cut = int(0.8 * len(labels))
        keep = {"train": order[:cut], "test": order[cut:], "all": torch.arange(len(labels))}[split]
        images = F.interpolate(images[keep], size=(size, size), mode="bilinear", align_corners=False)
        self.images = (images.clamp(0, 1) * 2 - 1).repeat(1, channels, 1, 1).contiguous()
        self.labels = labels[keep]
        self.size, self.channels, self.split = int(size), int(channels), split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        label = int(self.labels[index])
        return {"image": self.images[index].clone(), "label": label, "caption": f"a handwritten digit {label}"}

    def describe(self) -> dict[str, Any]:
        """Options that determine the items."""
        return {"class": "DigitsDataset", "size": self.size, "channels": self.channels,
                "split": self.split, "seed": self.seed}

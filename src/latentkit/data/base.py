"""Helpers shared by the built-in datasets: per-item seeded randomness that is the same in
every process and worker, epochs, and image conversion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from latentkit import random
from latentkit.interfaces import Dataset
from latentkit.specs import DataSpec

__all__ = ["AugmentedDataset", "image_to_tensor", "item_rng"]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of item ``index`` in ``epoch``: a function of the three numbers only,
    so data-loader workers, processes and a resumed run all draw the same augmentations
    (:func:`latentkit.random.item_rng` with the keys ``epoch, index``)."""
    return random.item_rng(seed, epoch, index)


def image_to_tensor(array: np.ndarray, value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8 / bool / float array -> (C, H, W) float32 in ``value_range``."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    else:
        a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    lo, hi = float(value_range[0]), float(value_range[1])
    return t * (hi - lo) + lo


class AugmentedDataset(Dataset):
    """A dataset whose random augmentations depend on ``(seed, epoch, index)`` only.

    The trainer calls :meth:`set_epoch` before each epoch (as with ``DistributedSampler``), so
    each epoch gets fresh augmentations and an interrupted run resumes with the same ones.
    """

    def __init__(self, data_spec: DataSpec, *, seed: int = 0) -> None:
        super().__init__(data_spec)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch``."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of item ``index`` in the current epoch."""
        return item_rng(self.seed, self.epoch, index)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range for {n} items")
        return index % n

    def describe(self) -> dict[str, Any]:
        """Options that determine the items (used to fingerprint latent caches)."""
        return {"class": type(self).__name__, "seed": self.seed, "len": len(self)}

"""``photo_crops``: random crops of scikit-image's bundled sample photographs, for training
autoencoders without downloading anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latentkit.data.base import AugmentedDataset, image_to_tensor
from latentkit.random import item_rng
from latentkit.specs import DataSpec

__all__ = ["DEFAULT_PHOTOS", "PhotoCropsDataset"]

#: Colour photographs shipped with scikit-image (no download needed).
DEFAULT_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
)


class PhotoCropsDataset(AugmentedDataset):
    """``length`` random ``size`` x ``size`` crops (with random horizontal flips) of
    ``skimage.data`` photographs.

    The rightmost ``holdout`` fraction of every photo is reserved for ``split="test"``, so
    test crops never overlap training crops. Crop positions and flips depend on
    ``(seed, epoch, index)``: each epoch sees new crops and a resumed run the same ones.
    Pass ``fixed=True`` for the same crops in every epoch (evaluation).
    """

    def __init__(
        self,
        size: int = 32,  # crop side in pixels
        length: int = 2048,  # crops per epoch
        split: str = "train",  # "train" (left part of each photo), "test" (right part) or "all"
        holdout: float = 0.2,  # fraction of each photo's width reserved for "test"
        photos: Sequence[str] = DEFAULT_PHOTOS,  # skimage.data function names
        scale: float = 1.0,  # resize photos by this factor first (< 1 = coarser detail)
        flip: bool = True,  # random horizontal flips
        fixed: bool = False,  # same crops every epoch
        seed: int = 0,
    ) -> None:
        super().__init__(DataSpec(channels=3, layout="CHW"), seed=seed)
        if split not in ("train", "test", "all"):
            raise ValueError(f"photo_crops: split must be 'train', 'test' or 'all', got {split!r}")
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"photo_crops: holdout must lie in (0, 1), got {holdout}")
        import skimage.data
        from PIL import Image

        arrays = []
        for name in photos:
            fn = getattr(skimage.data, name, None)
            if fn is None:
                raise ValueError(f"photo_crops: skimage.data has no image {name!r}")
            a = np.asarray(fn())
            if a.ndim == 2:
                a = np.repeat(a[:, :, None], 3, axis=2)
            a = a[:, :, :3].astype(np.uint8)
            if scale != 1.0:
                h, w = a.shape[:2]
                a = np.asarray(Image.fromarray(a).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                         getattr(Image, "Resampling", Image).BICUBIC))
            h, w = a.shape[:2]
            cut = round(w * (1 - holdout))
            part = {"train": a[:, :cut], "test": a[:, cut:], "all": a}[split]
            if part.shape[0] < size or part.shape[1] < size:
                raise ValueError(f"photo_crops: the {split} part of {name!r} ({part.shape[1]}x"
                                 f"{part.shape[0]}) is smaller than the crop size {size}")
            arrays.append(np.ascontiguousarray(part))
        self.photos = arrays
        self.names = tuple(photos)
        self.size, self.length, self.split = int(size), int(length), split
        self.holdout, self.scale, self.flip, self.fixed = float(holdout), float(scale), bool(flip), bool(fixed)
        areas = np.array([p.shape[0] * p.shape[1] for p in arrays], dtype=np.float64)
        self.weights = areas / areas.sum()  # larger photos give more crops

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        rng = item_rng(self.seed, 0 if self.fixed else self.epoch, index)
        k = int(rng.choice(len(self.photos), p=self.weights))
        photo = self.photos[k]
        y = int(rng.integers(0, photo.shape[0] - self.size + 1))
        x = int(rng.integers(0, photo.shape[1] - self.size + 1))
        crop = photo[y : y + self.size, x : x + self.size]
        if self.flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        return {"image": image_to_tensor(crop), "caption": f"a crop of {self.names[k]}"}

    def describe(self) -> dict[str, Any]:
        """Options that determine the items."""
        return {"class": "PhotoCropsDataset", "size": self.size, "length": self.length,
                "split": self.split, "holdout": self.holdout, "photos": self.names,
                "scale": self.scale, "flip": self.flip, "fixed": self.fixed, "seed": self.seed}

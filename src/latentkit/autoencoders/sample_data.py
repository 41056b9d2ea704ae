"""Photo crops from scikit-image's bundled sample images, for tests, benchmarks and examples.

No download: only images shipped inside scikit-image are used. Each photo is split by rows
into a training part (the top 75 %) and a held-out part (the bottom 25 %), so held-out crops
never overlap training crops. Values are in [-1, 1] (``DataSpec``'s default range).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["PHOTOS", "bicubic_baseline", "photo_crops", "psnr"]

#: RGB photographs bundled with scikit-image (no network access needed).
PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def _photo(name: str) -> torch.Tensor:
    import skimage.data

    image = getattr(skimage.data, name)()
    x = torch.from_numpy(image[..., :3].copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    return x  # (3, H, W) in [-1, 1]


def photo_crops(
    count: int,
    size: int = 32,
    *,
    split: str = "train",  # "train" (top 75 % of each photo) or "heldout" (bottom 25 %)
    seed: int = 0,
    photos: tuple[str, ...] = PHOTOS,
) -> torch.Tensor:
    """``count`` random RGB crops (count, 3, size, size) in [-1, 1], spread evenly over the
    photos, from the rows of ``split``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    gen = torch.Generator().manual_seed(seed)
    crops = []
    images = [_photo(n) for n in photos]
    for i in range(count):
        img = images[i % len(images)]
        h, w = img.shape[1:]
        cut = int(h * 0.75)
        lo, hi = (0, cut - size) if split == "train" else (cut, h - size)
        top = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        crops.append(img[:, top : top + size, left : left + size])
    return torch.stack(crops)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch (``data_range`` = max - min)."""
    mse = float(F.mse_loss(x.clamp(-1, 1), y.clamp(-1, 1)))
    return 10.0 * math.log10(data_range**2 / max(mse, 1e-12))


def bicubic_baseline(x: torch.Tensor, floats_per_item: int) -> torch.Tensor:
    """Bicubic down- and up-sampling of images (B, C, H, W) keeping about ``floats_per_item``
    numbers per item: the fixed-compression baseline an autoencoder must beat."""
    _b, c, h, w = x.shape
    scale = math.sqrt(floats_per_item / (c * h * w))
    lh, lw = max(1, round(h * scale)), max(1, round(w * scale))
    low = F.interpolate(x, size=(lh, lw), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)

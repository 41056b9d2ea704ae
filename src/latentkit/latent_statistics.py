"""Latent statistics: estimate the latent normalisation of any autoencoder from data.

Rombach et al. 2022 (Sec. 4.3.2 and App. G) rescale the latents of the KL autoencoder by a
single component-wise factor ``1 / std(z)`` estimated on the first training batch, so that
the diffusion model sees unit-variance latents; later models also subtract a shift (the latent
mean). This module estimates both from as much data as one wants (streaming, float64 sums) and
stores them in the autoencoder's buffers, so ``normalize`` applies them and they travel with
the weights. It is part of the :class:`~latentkit.interfaces.Autoencoder` contract
(``Autoencoder.fit_latent_statistics``), so a third party's autoencoder gets it too; a config
asks for it with ``[autoencoder] fit_statistics`` (docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs
import torch

from latentkit.random import Generators
from latentkit.specs import DATA_KEYS

if TYPE_CHECKING:
    from latentkit.interfaces import Autoencoder

__all__ = ["LatentStatistics", "fit_latent_statistics"]

_DATA_KEYS = tuple(DATA_KEYS.values())  # the keys a dict batch's data may sit under


@attrs.frozen
class LatentStatistics:
    """Moments of the raw latents and the normalisation derived from them."""

    mean: float  # mean of all raw latent elements
    std: float  # standard deviation of all raw latent elements
    scaling_factor: float  # 1 / std
    shift_factor: float  # mean (or 0 when the shift is not fitted)
    count: int  # number of latent elements seen


def _batches(data: torch.Tensor | Iterable[Any], batch_size: int, data_key: str | None) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    for item in data:
        if isinstance(item, Mapping):
            keys = (data_key,) if data_key else _DATA_KEYS
            found = next((k for k in keys if k in item), None)
            if found is None:
                raise KeyError(f"fit_latent_statistics: batch has none of the keys {keys}; found {sorted(item)}")
            item = item[found]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"fit_latent_statistics: expected tensors or dicts of tensors, got {type(item).__name__}")
        yield item


@torch.no_grad()
def fit_latent_statistics(
    autoencoder: Autoencoder,
    data: torch.Tensor | Iterable[Any],  # (N, C, *spatial) tensor, or batches (tensors / dicts)
    *,
    batch_size: int = 16,  # when data is one tensor
    shift: bool = False,  # also fit shift_factor = mean (else 0, as in LDM / SD 1.x)
    sample: bool = True,  # statistics of posterior samples (what diffusion trains on)
    generator: Generators = None,
    max_batches: int | None = None,
    data_key: str | None = None,  # key of the data tensor in dict batches
    apply: bool = True,  # write the factors into the autoencoder's buffers
) -> LatentStatistics:
    """Estimate ``scaling_factor = 1 / std(z)`` (and ``shift_factor = mean(z)`` if ``shift``)
    over the raw latents of ``data`` (Rombach et al. 2022, Sec. 4.3.2), so that normalised
    latents ``(z - shift) * scale`` have unit variance; with ``apply`` the factors are stored
    in the autoencoder (``set_latent_statistics``)."""
    device = cast(torch.Tensor, autoencoder.scaling_factor).device
    total = torch.zeros((), dtype=torch.float64)
    total_sq = torch.zeros((), dtype=torch.float64)
    count = 0
    for i, x in enumerate(_batches(data, batch_size, data_key)):
        if max_batches is not None and i >= max_batches:
            break
        dist = autoencoder.encode(x.to(device))
        z = (dist.sample(generator) if sample else dist.mode()).double().cpu()
        total += z.sum()
        total_sq += z.pow(2).sum()
        count += z.numel()
    if count < 2:
        raise ValueError("fit_latent_statistics: need at least two latent elements of data")
    mean = float(total / count)
    var = float(total_sq / count) - mean * mean
    std = math.sqrt(max(var * count / (count - 1), 0.0))
    if not std > 0:
        raise ValueError("fit_latent_statistics: the latents have zero variance; cannot normalise")
    stats = LatentStatistics(
        mean=mean, std=std, scaling_factor=1.0 / std, shift_factor=mean if shift else 0.0, count=count
    )
    if apply:
        autoencoder.set_latent_statistics(stats.scaling_factor, stats.shift_factor)
    return stats

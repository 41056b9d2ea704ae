"""Seeded noise that does not depend on the batch.

A sampler that draws noise for a whole batch from one generator gives item ``i`` different
noise at batch size 1 and at batch size 4. latentkit accepts either one ``torch.Generator`` or
one generator per item; with per-item generators, item ``i``'s noise is the same whatever the
batch. :func:`generators_from_seed` makes such a list from one seed.

Datasets need the same property across processes: item ``i`` must get the same random draws in
every data-loader worker, every DDP rank and a resumed run. :func:`item_rng` gives each item
its own NumPy stream, a function of the seed and the item's keys (e.g. epoch and index) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch

from latentkit.errors import ShapeError

__all__ = ["Generators", "generators_from_seed", "item_rng", "rand", "randn", "randn_like"]

#: One generator for the whole batch, one per item, or ``None`` for torch's global RNG.
Generators: TypeAlias = "torch.Generator | Sequence[torch.Generator] | None"


def generators_from_seed(seed: int, batch_size: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per item, item ``i`` seeded with ``seed + i``."""
    return [torch.Generator(device).manual_seed(int(seed) + i) for i in range(batch_size)]


def item_rng(seed: int, *keys: int) -> np.random.Generator:
    """The NumPy random stream of one dataset item: ``numpy.random.default_rng([seed, *keys])``
    with ``seed`` reduced to 32 bits, e.g. ``item_rng(seed, index)`` or ``item_rng(seed,
    epoch, index)``. A function of the numbers only (no global state), so every worker,
    process and resumed run draws the same values for the same item; different keys give
    independent streams (NumPy's ``SeedSequence``)."""
    if not keys:
        raise ValueError("item_rng: give at least one key after the seed (e.g. the item index)")
    words = [int(k) for k in keys]
    if any(k < 0 for k in words):
        raise ValueError(f"item_rng: keys must be non-negative integers, got {list(keys)}")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *words])


def _draw(fn, shape, generator, device, dtype):  # type: ignore[no-untyped-def]
    shape = tuple(int(s) for s in shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = device if generator is None else generator.device
        out = fn(shape, generator=generator, device=gen_device, dtype=dtype)
        return out.to(device)
    generator = list(generator)
    if len(generator) != shape[0]:
        raise ShapeError(
            f"expected one generator per batch item ({shape[0]}), got {len(generator)} generators"
        )
    return torch.cat(
        [fn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device) for g in generator]
    )


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn per item when ``generator`` is a sequence."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) noise of ``shape``, drawn per item when ``generator`` is a sequence."""
    return _draw(torch.rand, shape, generator, device, dtype)


def randn_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped, typed and placed like ``x``."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)

"""Tiled encoding and decoding with blended overlaps, for inputs larger than memory allows.

The input is cut into overlapping tiles along every spatial axis; each tile goes through the
network on its own; the outputs are blended with weights that ramp linearly across each
overlap, so neighbouring tiles fade into one another instead of meeting at a hard edge
(the scheme of diffusers' tiled VAE and of MultiDiffusion, Bar-Tal et al. 2023, Eq. 3-5:
the result is the weighted average of the tile outputs, weights summing to one everywhere).
One implementation serves every number of spatial axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["seam_score", "tile_grid", "tiled_apply"]


def tile_grid(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of the tiles covering ``[0, size)`` along one axis.

    Tiles have length ``tile`` (or ``size`` when the axis is smaller), neighbours overlap by at
    least ``overlap``, and every start is a multiple of ``multiple`` (the downsampling factor,
    so that a tile's latent lines up with the full latent). Starts are spread evenly.
    """
    if size % multiple:
        raise ValueError(f"tile_grid: size {size} is not a multiple of {multiple}")
    tile = max(multiple, (min(tile, size) // multiple) * multiple)
    if tile >= size:
        return [(0, size)]
    overlap = min(math.ceil(overlap / multiple) * multiple, tile - multiple)
    count = math.ceil((size - overlap) / (tile - overlap))
    last = size - tile
    starts = sorted({round(i * last / (count - 1) / multiple) * multiple for i in range(count)})
    return [(s, s + tile) for s in starts]


def _ramp(length: int, left: int, right: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1-D blend weights: linear rise over the first ``left`` and fall over the last ``right``
    entries (strictly positive, so every output position has weight)."""
    w = torch.ones(length, dtype=dtype, device=device)
    if left > 0:
        w[:left] *= (torch.arange(left, dtype=dtype, device=device) + 0.5) / left
    if right > 0:
        w[length - right :] *= (torch.arange(right, 0, -1, dtype=dtype, device=device) - 0.5) / right
    return w


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tile_size: Sequence[int],  # per spatial axis, in input units
    overlap: Sequence[int],  # per spatial axis, in input units
    multiple: Sequence[int],  # tile starts/lengths are multiples of this (input units)
    scale: Sequence[tuple[int, int]],  # per axis (num, den): output size = input size * num / den
) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` (B, C, *spatial) and blend the outputs.

    ``fn`` maps a tile of spatial size ``s`` to an output of spatial size ``s * num / den`` per
    axis (``1/f`` for an encoder, ``f`` for a decoder). The blend is the weighted mean of the
    overlapping tile outputs with linear ramps across each overlap.
    """
    spatial = tuple(x.shape[2:])
    n = len(spatial)
    if not (len(tile_size) == len(overlap) == len(multiple) == len(scale) == n):
        raise ValueError(f"tiled_apply: need one tile size, overlap, multiple and scale per axis ({n})")
    grids = [tile_grid(spatial[a], tile_size[a], overlap[a], multiple[a]) for a in range(n)]

    def out_pos(a: int, p: int) -> int:
        num, den = scale[a]
        return p * num // den

    out: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None
    for combo in itertools.product(*(range(len(g)) for g in grids)):
        in_slices, out_slices, ramps = [], [], []
        for a, k in enumerate(combo):
            start, stop = grids[a][k]
            o_start, o_stop = out_pos(a, start), out_pos(a, stop)
            left = out_pos(a, grids[a][k - 1][1]) - o_start if k > 0 else 0
            right = o_stop - out_pos(a, grids[a][k + 1][0]) if k + 1 < len(grids[a]) else 0
            in_slices.append(slice(start, stop))
            out_slices.append(slice(o_start, o_stop))
            ramps.append((o_stop - o_start, max(left, 0), max(right, 0)))
        y = fn(x[tuple([slice(None), slice(None), *in_slices])])
        if out is None:
            out_spatial = tuple(out_pos(a, spatial[a]) for a in range(n))
            out = y.new_zeros((y.shape[0], y.shape[1], *out_spatial))
            weight_sum = y.new_zeros((1, 1, *out_spatial))
        w = y.new_ones((1, 1) + (1,) * n)
        for a, (length, left, right) in enumerate(ramps):
            shape = [1, 1] + [1] * n
            shape[2 + a] = length
            w = w * _ramp(length, left, right, y.dtype, y.device).view(shape)
        index = tuple([slice(None), slice(None), *out_slices])
        out[index] += y * w
        assert weight_sum is not None
        weight_sum[index] += w
    assert out is not None and weight_sum is not None
    return out / weight_sum


def seam_score(y: torch.Tensor, boundaries: Sequence[Sequence[int]]) -> float:
    """How visible tile seams are: the largest mean absolute jump across a tile boundary,
    divided by the median mean absolute jump between neighbouring lines along the same axis.

    ``boundaries[a]`` lists positions ``p`` along spatial axis ``a`` where a tile starts or
    stops (the jump measured is between ``p - 1`` and ``p``). About 1 means seams look like any
    other line; hard tile edges give values well above 1.
    """
    worst = 0.0
    for a, positions in enumerate(boundaries):
        axis = 2 + a
        jumps = (y.narrow(axis, 1, y.shape[axis] - 1) - y.narrow(axis, 0, y.shape[axis] - 1)).abs()
        dims = [d for d in range(y.ndim) if d != axis]
        per_line = jumps.mean(dim=dims)  # jump between line i and i + 1
        typical = float(per_line.median())
        for p in positions:
            if 0 < p < y.shape[axis]:
                worst = max(worst, float(per_line[p - 1]) / max(typical, 1e-12))
    return worst

"""Noise for the SDE samplers: a Brownian motion in sigma that depends only on the seed.

k-diffusion's SDE samplers (``dpmpp_sde``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``) draw their
noise from a Brownian tree (``torchsde.BrownianTree``, after Li et al. 2020, "Scalable
Gradients for Stochastic Differential Equations"): ``W(sigma)`` is a fixed function of the
seed, so the same seed gives close images at different step counts and the noise over
overlapping intervals is correctly correlated. :class:`BrownianTreeNoise` is such a tree
written without torchsde:

* ``W(sigma_min) = 0`` and ``W(sigma_max) = sqrt(sigma_max - sigma_min) z_0``;
* node ``k`` (heap numbering: children ``2k`` and ``2k+1``) on ``[a, b]`` fixes the midpoint by
  the Brownian bridge, ``W(m) = (W(a) + W(b)) / 2 + sqrt(b - a) / 2 * z_k``;
* ``z_k`` is drawn from a generator seeded with ``splitmix64(root_seed, k)``, so any node is
  reproducible without visiting the others; a query descends until it hits a node's midpoint
  or the interval is shorter than ``rtol * sigma`` (then it interpolates linearly, which loses
  at most a fraction ``rtol * sigma / h`` of the variance of an increment of length ``h``;
  ``rtol`` is 1e-2 of the grid's smallest relative step, so that fraction stays below 1%).

The root seed is drawn with :func:`latentkit.random.rand` from the caller's generator: one
tree for the whole batch given one generator, one tree per item given a list (so item ``i``'s
noise does not depend on the batch).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch

from latentkit.random import Generators, rand

__all__ = ["BrownianTreeNoise"]

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """One step of the SplitMix64 mixer (Steele et al. 2014): a well-spread 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class _Tree:
    """One Brownian tree over ``[t0, t1]`` drawing tensors of ``shape``."""

    #: Tree nodes kept (least recently used dropped): consecutive queries share most of their path.
    cache_size = 96

    def __init__(self, seed: int, t0: float, t1: float, rtol: float, shape: Sequence[int],
                 device: torch.device, gen_device: torch.device, dtype: torch.dtype) -> None:
        self.seed, self.t0, self.t1, self.rtol = seed, t0, t1, rtol
        self.shape, self.device, self.gen_device, self.dtype = tuple(shape), device, gen_device, dtype
        self.zero = torch.zeros(self.shape, device=device, dtype=dtype)
        self.w1 = math.sqrt(t1 - t0) * self._z(0) if t1 > t0 else self.zero  # node 0: the end point
        self._nodes: OrderedDict[int, torch.Tensor] = OrderedDict()  # LRU of recent nodes

    def _z(self, node: int) -> torch.Tensor:
        g = torch.Generator(device=self.gen_device).manual_seed(_splitmix64(self.seed ^ _splitmix64(node)))
        z = torch.randn(self.shape, generator=g, device=self.gen_device, dtype=torch.float32)
        return z.to(device=self.device, dtype=self.dtype)

    def __call__(self, t: float) -> torch.Tensor:
        t = min(max(t, self.t0), self.t1)
        a, b, wa, wb, node = self.t0, self.t1, self.zero, self.w1, 1
        if t <= a:
            return wa
        if t >= b:
            return wb
        eps = 1e-12 * (self.t1 - self.t0)
        leaf = self.rtol * t
        while True:
            m = 0.5 * (a + b)
            wm = self._nodes.get(node)
            if wm is None:
                wm = 0.5 * (wa + wb) + 0.5 * math.sqrt(b - a) * self._z(node)
                self._nodes[node] = wm
                if len(self._nodes) > self.cache_size:
                    self._nodes.popitem(last=False)
            else:
                self._nodes.move_to_end(node)
            if abs(t - m) <= eps:
                result = wm
                break
            if b - a <= leaf:  # leaf: linear interpolation inside it
                result = wa + (t - a) / (m - a) * (wm - wa) if t < m else wm + (t - m) / (b - m) * (wb - wm)
                break
            if t < m:
                b, wb, node = m, wm, 2 * node
            else:
                a, wa, node = m, wm, 2 * node + 1
        return result


class BrownianTreeNoise:
    """``noise(sigma, sigma_next) = (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``,
    standard normal, from a Brownian tree over ``[sigma_min, sigma_max]`` (see the module).

    ``x`` gives shape, dtype and device; ``sigmas`` is the sampler's grid (its smallest
    positive and largest levels bound the tree; see the module for ``rtol``).
    """

    def __init__(self, x: torch.Tensor, sigmas: Sequence[float], generator: Generators = None,
                 *, rtol: float | None = None) -> None:
        positive = sorted({float(s) for s in sigmas if s > 0})
        if not positive:
            raise ValueError("BrownianTreeNoise needs at least one positive sigma")
        t0, t1 = positive[0], positive[-1]
        rel_gaps = [(b - a) / b for a, b in itertools.pairwise(positive)]
        self.rtol = float(rtol) if rtol is not None else 1e-2 * min(rel_gaps, default=1.0)
        batch = x.shape[0]
        per_item = generator is not None and not isinstance(generator, torch.Generator)
        groups = batch if per_item else 1
        # Two uniform floats (53 random bits each) per tree make its 64-bit root seed.
        u = rand((groups, 2), generator, device="cpu" if generator is None else _device_of(generator),
                 dtype=torch.float64).cpu().tolist()
        shape = (1, *x.shape[1:]) if per_item else tuple(x.shape)
        gen_devices = ([g.device for g in generator] if per_item  # type: ignore[union-attr]
                       else [_device_of(generator) if generator is not None else x.device])
        self.trees = [
            _Tree(
                (int(a * 2**53) ^ (int(b * 2**53) << 11)) & _MASK, t0, t1, self.rtol, shape,
                x.device, gen_devices[i if per_item else 0], x.dtype,
            )
            for i, (a, b) in enumerate(u)
        ]
        self._cache: dict[float, torch.Tensor] = {}

    def w(self, sigma: float) -> torch.Tensor:
        """``W(sigma)`` for the whole batch (cached per level)."""
        out = self._cache.get(sigma)
        if out is None:
            parts = [tree(sigma) for tree in self.trees]
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
            if len(self._cache) > 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[sigma] = out
        return out

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """Standard normal noise of the Brownian increment between two levels."""
        if sigma == sigma_next:
            raise ValueError("BrownianTreeNoise: the two noise levels must differ")
        return (self.w(sigma_next) - self.w(sigma)) / math.sqrt(abs(sigma_next - sigma))


def _device_of(generator: Generators) -> torch.device:
    if isinstance(generator, torch.Generator):
        return generator.device
    return next(iter(generator)).device  # type: ignore[arg-type]
